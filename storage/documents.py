"""The store's documents: one folder per content hash (the uploaded bytes as ``source.*``, the
extracted text as ``text.txt``) and one row each in the index; the upload files that wait
for a worker's ingest.

Part of :class:`storage.store.Store` (a mixin: it uses the store's ``root``, ``db`` and
``tmp_dir``, and, to delete a document, the store's :meth:`caches`, :meth:`delete_cache`,
:meth:`checkpoint_folders` and :meth:`drop_checkpoints`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import db as dbmod
from .errors import StoreError
from .files import write_bytes_atomic
from .ids import check_document_id, check_upload_name, inside, is_document_id, is_link, remove_tree


class DocumentsMixin:
    """Documents by content hash: add, find, read, delete."""

    def document_dir(self, document_id: str) -> Path:
        """The folder of a document: only for a well-formed id (64 lowercase hex digits), and
        only when no folder on the way is a symbolic link — else :class:`StoreError`."""
        check_document_id(document_id)
        return inside(self.root, self.root / "documents" / document_id[:2] / document_id)

    def add_document(
        self,
        data: bytes | None,
        file_name: str,
        text: str,
        kind: str,
        page_starts: list[int] | None = None,
        token_count: int | None = None,
        title: str | None = None,
        passages: list | None = None,
        document_id: str | None = None,
        size: int | None = None,
        locations: list[str] | None = None,
    ) -> dict:
        """Store an uploaded document once per content (sha256 of ``data``); returns its row.
        Uploading the same bytes again returns the existing row. ``data`` may be None for a
        document imported without its source file: then ``document_id`` is required."""
        if data is not None:
            document_id = hashlib.sha256(data).hexdigest()
        elif not document_id:
            raise StoreError("a document needs its bytes or its content hash")
        check_document_id(document_id)  # before anything is looked up or written
        if locations is not None and len(locations) != len(page_starts or [0]):
            raise StoreError(f"{len(locations)} section labels for {len(page_starts or [0])} sections")
        existing = self.get_document(document_id)
        if existing is not None:
            return existing
        folder = self.document_dir(document_id)
        if is_link(folder):
            raise StoreError(f"the folder of document {document_id[:12]} is a symbolic link; refused")
        if data is not None:
            suffix = Path(file_name).suffix.lower()[:16]
            write_bytes_atomic(data, folder / f"source{suffix}", self.tmp_dir)
        write_bytes_atomic(text.encode("utf-8"), folder / "text.txt", self.tmp_dir)
        row = {
            "id": document_id,
            "title": title or Path(file_name).stem,
            "file_name": Path(file_name).name,
            "kind": kind,
            "pages": len(page_starts or [0]),
            "token_count": token_count,
            "chars": len(text),
            "bytes": len(data) if data is not None else size,
            "page_starts": json.dumps(page_starts or [0]),
            "passages": json.dumps(passages) if passages is not None else None,
            "created": dbmod.now(),
            "locations": json.dumps(list(locations)) if locations is not None else None,
        }
        self.db["documents"].insert(row, ignore=True)  # a concurrent writer may have won: same content
        return self.get_document(document_id)

    def set_passages(self, document_id: str, passages: list) -> None:
        """Record a stored document's token-counted passages (a document stored before they
        were counted: askable first, :mod:`app.read_ahead`)."""
        self.db["documents"].update(document_id, {"passages": json.dumps(passages)})

    def get_document(self, document_id: str) -> dict | None:
        rows = list(self.db["documents"].rows_where("id = ?", [document_id]))
        return rows[0] if rows else None

    def document(self, ref: str) -> dict:
        """A document by id, unique id prefix, file name or title; :class:`StoreError` if none.
        The prefix is compared as a string (not LIKE: ``%`` or ``_`` in ``ref`` match nothing)."""
        doc = self.get_document(ref)
        if doc is not None:
            return doc
        if not isinstance(ref, str) or not ref:
            raise StoreError(f"no document {ref!r} in the store")
        rows = list(
            self.db["documents"].rows_where(
                "substr(id, 1, length(:ref)) = :ref OR file_name = :ref OR title = :ref", {"ref": ref}
            )
        )
        if len(rows) == 1:
            return rows[0]
        if not rows:
            raise StoreError(f"no document {ref!r} in the store")
        raise StoreError(f"{ref!r} matches {len(rows)} documents; use more of the id")

    def documents(self) -> list[dict]:
        return list(self.db["documents"].rows_where(order_by="created"))

    def document_text(self, document_id: str) -> str:
        path = self._document_file(document_id, "text.txt")
        return path.read_text(encoding="utf-8")

    def source_path(self, document_id: str) -> Path | None:
        folder = self._document_file(document_id, "text.txt").parent
        files = sorted(p for p in folder.glob("source*") if not is_link(p))
        return files[0] if files else None

    def _document_file(self, document_id: str, name: str) -> Path:
        """A file in a document's folder, refused when the folder or the file is a link (a
        planted link would make the store read or serve a file from elsewhere)."""
        folder = self.document_dir(document_id)
        if is_link(folder) or is_link(folder / name):
            raise StoreError(f"the files of document {document_id[:12]} are symbolic links; refused")
        return folder / name

    def page_starts(self, document_id: str) -> list[int]:
        return json.loads(self.document(document_id)["page_starts"] or "[0]")

    def location_map(self, document_id: str):
        """The document's :class:`homer.reading.locations.LocationMap` (pages, or labelled sections)."""
        from homer.reading.locations import LocationMap

        doc = self.document(document_id)
        labels = json.loads(doc["locations"]) if doc.get("locations") else None
        return LocationMap.of(json.loads(doc["page_starts"] or "[0]"), labels)

    def delete_document(self, document_id: str) -> None:
        """Remove a document with its caches, conversations and finished jobs (rows and files).
        Only the document's own folder is removed, after proving it lies inside the store (a
        link is unlinked, never followed); a row whose id is not a document id (an old,
        poisoned index) loses its rows and touches no file."""
        doc = self.document(document_id)
        document_id = doc["id"]
        for cache in self.caches(document_id, status=None):
            self.delete_cache(cache["id"])
        self._delete_document_rows(document_id)
        for key, info in self.checkpoint_folders():
            if info.get("document_id") == document_id:
                self.drop_checkpoints(key)
        if not is_document_id(document_id):
            return
        folder = self.document_dir(document_id)
        remove_tree(self.root, folder)
        parent = folder.parent
        try:
            if not is_link(parent) and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        except OSError:
            pass  # a concurrent upload of a document of the same shard

    def _delete_document_rows(self, document_id) -> None:
        with self.db.atomic():
            self.db.execute("DELETE FROM conversations WHERE document_id = ?", [document_id])
            self.db.execute("DELETE FROM document_owners WHERE document_id = ?", [document_id])
            self.db.execute("DELETE FROM document_shares WHERE document_id = ?", [document_id])
            from . import passages

            passages.delete(self.db, document_id)  # its passage index, FTS rows included
            self.db.execute(
                "UPDATE jobs SET state = 'failed', error = 'the document was deleted', finished = ? "
                "WHERE document_id = ? AND state IN ('queued', 'running')",
                [dbmod.now(), document_id],
            )
            self.db.execute("DELETE FROM documents WHERE id = ?", [document_id])

    def upload_path(self, name: str) -> Path:
        """The file of a job's upload (``uploads/<document id><suffix>``), proven to be inside
        the store's uploads folder; :class:`StoreError` for any other name."""
        path = inside(self.root, self.root / check_upload_name(name))
        if is_link(path):
            raise StoreError(f"the upload {name[:40]!r} is a symbolic link; refused")
        return path

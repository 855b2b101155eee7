"""Helpers for the bundle safety and mutation tests: a store holding one read document,
bundles rebuilt member by member with their checksums kept consistent, and byte-exact
snapshots of folders that must survive an import."""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path

from conftest import tiny_tokenizer

from homer import HomerConfig, build_document_cache
from storage import Store

MANIFEST = "manifest.json"


def stored_document(store: Store, model, text: str, file_name: str = "keeper.txt", owner: str | None = None) -> dict:
    """Upload ``text`` as ``file_name`` the way the app does and build its cache; returns the
    document row."""
    from app.ingest import add_to_store, ingest_bytes
    from app.library import add_owner

    doc = add_to_store(store, ingest_bytes(text.encode(), file_name, tiny_tokenizer()))
    store.save_cache(
        doc["id"],
        build_document_cache(
            model, tiny_tokenizer(), store.document_text(doc["id"]), HomerConfig(significance="uncalibrated")
        ),
    )
    add_owner(store, doc["id"], owner)
    return doc


def members_of(bundle: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(bundle) as zf:
        return {info.filename: zf.read(info.filename) for info in zf.infolist()}


def write_zip(out: Path, members: dict[str, bytes] | list[tuple[str | zipfile.ZipInfo, bytes]]) -> Path:
    items = members.items() if isinstance(members, dict) else members
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in items:
            zf.writestr(name, data)
    return out


def rebuild(good: Path, out: Path, drop=(), replace=None, manifest=None, extra=(), fix: bool = True) -> Path:
    """Copy bundle ``good`` to ``out`` with members dropped or replaced (``name: bytes ->
    bytes``), the manifest edited (``dict -> dict`` or ``-> bytes``) and extra members added.
    With ``fix`` the manifest's checksums and sizes follow the changed members, so the
    change reaches the checks behind the checksums."""
    members = members_of(good)
    for name in drop:
        members.pop(name, None)
    for name, change in (replace or {}).items():
        members[name] = change(members[name])
    data = json.loads(members[MANIFEST])
    if fix:
        for name in list(data["members"]):
            if name in members:
                data["members"][name] = {
                    "sha256": hashlib.sha256(members[name]).hexdigest(),
                    "bytes": len(members[name]),
                }
            elif name in drop:
                del data["members"][name]
    if manifest is not None:
        data = manifest(data)
    members[MANIFEST] = data if isinstance(data, bytes) else json.dumps(data).encode()
    return write_zip(out, [*members.items(), *extra])


def set_field(path: list, value):
    """A manifest edit that sets one (nested) field."""

    def edit(manifest):
        node = manifest
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return manifest

    return edit


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder`` with its kind and content hash (files) — compared before
    and after to prove nothing there changed."""
    out = {}
    if not folder.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), folder)] = ("dir",)
        for name in filenames:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, folder)
            if os.path.islink(path):
                out[rel] = ("link", os.readlink(path))
            else:
                with open(path, "rb") as fh:
                    out[rel] = ("file", hashlib.sha256(fh.read()).hexdigest())
    return out


def store_rows(store: Store, document_id: str) -> tuple:
    """A document's rows (document, caches, owners) — to prove an import left them alone."""
    doc = store.get_document(document_id)
    caches = sorted(
        (row["id"], row["checksum"], row["file"], row["status"]) for row in store.caches(document_id, status=None)
    )
    owners = sorted(
        r[0] for r in store.db.execute("SELECT owner FROM document_owners WHERE document_id = ?", [document_id])
    )
    return doc, caches, owners


def make_victim(folder: Path) -> Path:
    """A folder of files beside the store that no import may touch."""
    (folder / "nested").mkdir(parents=True, exist_ok=True)
    (folder / "precious.txt").write_text("keep me")
    (folder / "nested" / "text.txt").write_text("also keep me")
    return folder

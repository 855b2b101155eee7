"""Adding a checked bundle to a store (:func:`import_bundle`): the document unless the store has
it, the cache unless the store has its key — nothing existing is replaced, and nothing but
the import's own temp files is ever deleted."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from .bundle_schema import CACHE_MEMBER, DEFAULT_BUNDLE_MB, DEFAULT_TEXT_MB, Limits
from .bundle_verify import CheckedBundle, Staging, TextFromSource, check_bundle
from .errors import BundleError, CacheExists, StoreError
from .store import Store


def import_bundle(
    store: Store,
    path: str | os.PathLike,
    model_fingerprint: str | None = None,
    max_bytes: int | None = None,
    tokenizer=None,
    text_from_source: TextFromSource | None = None,
    max_chars: int | None = None,
    admit: Callable[[str, bool], None] | None = None,
    *,
    bundle_max_mb: float = DEFAULT_BUNDLE_MB,
    bundle_max_text_mb: float = DEFAULT_TEXT_MB,
) -> dict:
    """Check ``path`` completely, then add its document (unless the store has it) and its
    cache (unless the store has that key) to ``store``. Returns the cache row with
    ``already_in_store`` (the key existed: nothing was installed) and ``rekeyed`` (a
    sourceless bundle: the document id was derived from its text).

    ``model_fingerprint``: refuse a cache of another model. ``max_bytes``: the bundle limit in
    bytes, else ``bundle_max_mb`` (512); ``bundle_max_text_mb``: text.txt's limit (16; both
    are the app's settings, ``HOMER_BUNDLE_MAX_MB`` and ``HOMER_BUNDLE_MAX_TEXT_MB``).
    ``tokenizer``: the model's, to tie the cache's tokens
    to the text. ``text_from_source``: the app's ingestion, without which a bundle carrying
    its source file is refused (its text could not be checked). ``max_chars``: the longest
    text a document may have (the app's ingestion limit). ``admit(document_id,
    proven_by_source)``: the caller's last word on the verified bundle before anything is
    written (the app's: who may own it); it raises to refuse, and nothing is written."""
    staging = Staging(store.staging_path)
    try:
        limits = Limits.of(max_bytes, bundle_max_mb=bundle_max_mb, bundle_max_text_mb=bundle_max_text_mb)
        checked = check_bundle(path, staging, model_fingerprint, limits, tokenizer, text_from_source, max_chars)
        if admit is not None:
            admit(checked.document_id, checked.source_file is not None)
        _add_document(store, checked)
        already = False
        try:
            row = store.install_cache_file(
                checked.document_id,
                checked.cache_file,
                build_seconds=checked.manifest["cache"]["build_seconds"],
                replace=False,
            )
        except CacheExists:
            already = True
            row = _existing_cache(store, checked.cache_key)
            if row is None:  # the key's file is on disk without a row: a crashed writer, or one still at work
                raise BundleError(
                    "refused: a cache file of this key is being installed by another import or was "
                    "left by a crash (run `homer store check --repair`)"
                ) from None
        else:
            if row["checksum"] != checked.manifest["members"][CACHE_MEMBER]["sha256"]:
                store.delete_cache(row["id"])  # ours, just created: the staged file changed under us
                raise BundleError("refused: the cache changed while it was being imported")
    finally:
        staging.cleanup()
    return {**row, "already_in_store": already, "rekeyed": checked.rekeyed, "file_name": checked.fields["file_name"]}


def _existing_cache(store: Store, key: str, wait: float = 5.0) -> dict | None:
    """The row of a cache key another writer has just linked in (its row follows the file
    within moments), or None when none appears."""
    deadline = time.monotonic() + wait
    while True:
        row = store.get_cache(key)
        if row is not None or time.monotonic() > deadline:
            return row
        time.sleep(0.05)


def _add_document(store: Store, checked: CheckedBundle) -> dict:
    """The verified document's row: created when the store lacks it, else left exactly as it
    is (its text must be the bundle's, or the cache would not fit it)."""
    fields = checked.fields
    if store.get_document(checked.document_id) is None:
        data = checked.source_file.read_bytes() if checked.source_file is not None else None
        store.add_document(
            data,
            fields["file_name"],
            checked.text,
            fields["kind"],
            fields["page_starts"],
            token_count=fields["token_count"],
            title=fields["title"],
            passages=fields["passages"],
            document_id=checked.document_id,
            size=fields["bytes"],
            locations=fields.get("locations"),
        )
    try:
        same = store.document_text(checked.document_id) == checked.text
    except (OSError, UnicodeDecodeError, StoreError):
        raise BundleError("refused: the store's copy of this document is damaged (run `homer store check`)") from None
    if not same:
        raise BundleError(
            "refused: the store holds this document with another text (read by another version); nothing was imported"
        )
    return store.get_document(checked.document_id)

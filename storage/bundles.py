"""Sharing bundles: one zip holding a document's cache, its text and (optionally) its
source file, with a manifest that carries the cache key and a checksum of every member.

A cache's leaf states (the optional companion file for deep reads, about 15 KB per document
token with the embedded model) are never put in a bundle: bundles stay small, and the
importer can read the document again with leaf states if it wants deep reads.

A bundle comes from someone else, so :func:`import_bundle` trusts none of it:

* sizes first: the zip file, its directory (member count), every member and all members
  together are bounded (``bundle_max_mb``, default 512 MB; text.txt by ``bundle_max_text_mb``,
  default 16 MB: the app's ``HOMER_BUNDLE_MAX_MB`` and ``HOMER_BUNDLE_MAX_TEXT_MB``; in
  characters, the caller's ``max_chars``) by counting what is actually inflated, so a
  member lying about its size stops at the limit; members are streamed to temp files in the
  store (hashed on the way), never read whole;
* every manifest field and the cache's safetensors header are checked against a schema
  (:mod:`storage.bundle_schema`); a malformed bundle gets a one-line :class:`BundleError`;
* the document's id is recomputed from the content: with a source file its sha256 must be
  the id and text.txt must be exactly what the app's own ingestion extracts from it (the
  ``text_from_source`` callable); without a source file the id cannot be proven, so the
  document is stored under an id derived from its text (:func:`text_document_id`, another
  hash function than the sha256 of uploads), which no upload can ever have. The cache key
  is computed from that verified id (a sourceless bundle's cache is re-keyed);
* the cache is tied to the text: with a tokenizer every kept document token must be the
  token the text has at that index and character offset; without one, offsets are bounded;
* nothing existing is replaced: an existing document keeps its row and files (its text must
  equal the bundle's), an existing cache key is kept as it is ("already in the store"), and
  the importer never deletes anything but its own temp files.

The parts: :mod:`storage.bundle_schema` (the format: member names, ids, limits, schema
checks), :mod:`storage.bundle_export`, :mod:`storage.bundle_verify` (every check of a bundle,
touching no store) and :mod:`storage.bundle_import`. This module gathers their public names."""

from __future__ import annotations

from .bundle_export import export_bundle
from .bundle_import import import_bundle
from .bundle_schema import FORMAT, FORMAT_VERSION, max_bundle_bytes, text_document_id
from .bundle_verify import inspect_bundle
from .errors import BundleError

__all__ = [
    "BundleError",
    "FORMAT",
    "FORMAT_VERSION",
    "export_bundle",
    "import_bundle",
    "inspect_bundle",
    "max_bundle_bytes",
    "text_document_id",
]

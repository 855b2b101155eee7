"""The app's MCP tools, and how an MCP client says who it is (the checks: :mod:`app.access`).

:class:`Access` is the one place that turns a request into the user key the library uses
(``owner``): the login name with ``--auth``; the Hugging Face username when sign-in with
Hugging Face is on (a Space with ``hf_oauth: true``, or ``HOMER_HF_OAUTH=1``) and ``--auth``
is not given (``--auth`` wins); nobody (every document is everyone's) without either. With
sign-in on and the visitor signed out, every library action is refused with
:data:`SIGN_IN` and the library shows empty: a signed-out visitor has no library.

The MCP tools (``launch(mcp_server=True)``, gradio's ``mcp`` extra) are five typed,
docstring'd API endpoints registered by :func:`add_tools`: ``list_documents``, ``upload``,
``build_status``, ``ask`` and ``export_bundle``. They do what the UI does, with the same
owner checks (:mod:`app.library`). :func:`restrict_tools` makes them the whole MCP tool list:
the UI's events stay API endpoints for ``gradio_client`` but are not MCP tools.

How an MCP client says who it is (gradio's MCP endpoint itself has no login):

* ``--auth``: HTTP basic credentials of an ``--auth`` user on every MCP request
  (``Authorization: Basic base64(user:password)``), or the app's login cookie;
* sign-in with Hugging Face: the user's Hugging Face token (``Authorization: Bearer hf_…``),
  which the app resolves to a username with the Hub's ``whoami`` (cached a few minutes);
* neither: no credentials are needed and every document is everyone's.

A request without valid credentials where they are needed is refused (:data:`SIGN_IN` or
:data:`LOG_IN`); nothing is served to it, and nothing is written to disk for it: gradio's MCP
server saves a ``data:`` URL given for a ``FileData`` parameter to its temp folder before the
tool runs (and fetches an http(s) URL), so the ``upload`` tool takes its file as a plain string
and decodes it itself, after the credentials are checked, stopping at the upload limit
(:func:`read_data_url`). It takes ``data:`` URLs only: the server does not fetch http(s) URLs
(the app often runs offline, and a fetch would let a user make the server reach other hosts);
a client that has a URL downloads it and sends the bytes. The MCP transport itself refuses a
request body over 4 MiB (the ``mcp`` library's default, kept: the body is read into memory
before anyone is known), so a file sent over MCP is at most about 3 MB; larger ones go through
the UI or ``gradio_client`` (``/upload_document``, behind the app's login like every API route).

Every model call of ``ask`` takes its turn with the UI's (:mod:`app.model_turns`).
``export_bundle`` answers a link to the app's own download route (:class:`Downloads`, mounted
by :func:`after_launch`) that serves the bundle to the user who exported it only, checking the
same credentials as the tools (or the app's login cookie). A bundle is not handed to gradio's
``/gradio_api/file=`` route: that route checks only gradio's login cookie, so an MCP client
with basic credentials got 401, and with a cookie any logged-in user could fetch the link."""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import inspect
import mimetypes
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, unquote_to_bytes

import gradio as gr
from gradio.data_classes import FileData

from storage.errors import StoreError

from . import library, model_turns, reader

# who is asking (app.access) and the download route (app.downloads); re-exported for callers
from .access import LOG_IN, SIGN_IN, Access, SignInRequired, oauth_wanted  # noqa: F401
from .downloads import Downloads
from .settings import load_settings

TOOLS = ("list_documents", "upload", "build_status", "ask", "export_bundle")
# the API names of the tools' endpoints (the UI has its own /upload and /ask events; gradio_client
# uploads a file with /upload_document, which is not a tool)
ENDPOINTS = {
    "list_documents": "list_documents",
    "upload": "upload_data_url",
    "build_status": "build_status",
    "ask": "ask_document",
    "export_bundle": "export_bundle",
}


def _upload_folders() -> list[Path]:
    """Where gradio writes the files a client uploads (``gradio_client``'s files included)."""
    folders = {load_settings().server.gradio_temp_dir or str(Path(tempfile.gettempdir()) / "gradio")}
    return [Path(f).resolve() for f in folders]


def _uploaded_path(file) -> tuple[Path, str | None]:
    """The server-side path of an uploaded file: only one in gradio's upload folder (an API
    caller cannot make the app read any other file of the server)."""
    if isinstance(file, FileData):
        path, name = file.path, file.orig_name
    elif isinstance(file, dict):
        path, name = file.get("path"), file.get("orig_name")
    else:
        path, name = file, None
    if not path:
        raise StoreError("no file given")
    resolved = Path(str(path)).resolve()
    if not any(resolved.is_relative_to(folder) for folder in _upload_folders()) or not resolved.is_file():
        raise StoreError("upload the file through the app (gradio_client's handle_file)")
    return resolved, name


NO_FETCH = (
    "the server does not fetch URLs: download the file and send its bytes as a data: URL (data:<type>;base64,<bytes>)"
)
DECODE_CHARS = 1 << 16  # a data: URL is decoded this many characters at a time


def read_data_url(url: str, limit: int) -> tuple[bytes, str, str | None]:
    """The bytes of a ``data:`` URL (RFC 2397), its media type and the file name it carries
    (a ``name=`` or ``filename=`` parameter, else None). Decoded a slice at a time and stopped
    as soon as the bytes pass ``limit`` (:class:`StoreError` naming the limit), so an oversized
    file is never held whole; an http(s) URL or anything else is refused in one line.

    Written here rather than taken from the standard library: ``urllib``'s data: handler
    decodes the whole payload at once, with no limit."""
    text = str(url or "").strip()
    head = text[:8].lower()
    if head.startswith(("http://", "https://")):
        raise StoreError(NO_FETCH)
    if not head.startswith("data:"):
        raise StoreError("send the file as a data: URL (data:<type>;base64,<bytes>)")
    header, comma, payload = text[5:].partition(",")
    if not comma:
        raise StoreError("the data: URL has no comma before its data")
    params = [p.strip() for p in header.split(";")]
    media = params[0].lower() or "text/plain"
    name = next(
        (p.partition("=")[2].strip('"') for p in params[1:] if p.lower().startswith(("name=", "filename="))), None
    )
    encoded = bool(params[1:]) and params[-1].lower() == "base64"
    over = f"the file is over the upload limit of {limit / 2**20:.1f} MB"
    parts, size, escape, base = [], 0, "", ""
    for start in range(0, len(payload), DECODE_CHARS):
        chunk, escape = escape + payload[start : start + DECODE_CHARS], ""
        if start + DECODE_CHARS < len(payload):  # a %XX escape cut by the slice waits for the next
            cut = chunk.rfind("%", max(0, len(chunk) - 2))
            if cut >= 0:
                chunk, escape = chunk[:cut], chunk[cut:]
        if encoded:  # base64, perhaps percent-encoded, with line breaks or spaces in it
            text = base + "".join((unquote(chunk) if "%" in chunk else chunk).split())
            whole = len(text) - len(text) % 4
            text, base = text[:whole], text[whole:]
            try:
                piece = base64.b64decode(text, validate=True)
            except (binascii.Error, ValueError):
                raise StoreError("the data: URL's base64 is not valid") from None
        else:
            piece = unquote_to_bytes(chunk)
        size += len(piece)
        if size > limit:
            raise StoreError(over)
        parts.append(piece)
    if base:
        raise StoreError("the data: URL's base64 is not valid (its length)")
    return b"".join(parts), media, name


def add_tools(
    store, queue, chat, model_name: str, access: Access, gpu: Callable | None = None, slices=None
) -> Downloads:
    """Register the five tools as API endpoints of the Blocks being built (call it inside
    ``with gr.Blocks():``). They are not queued, so an MCP call runs them directly with its
    own request (its credentials); ``ask`` takes its turn with every other model call
    (:mod:`app.model_turns`) and is wrapped by ``gpu`` (``spaces.GPU`` on ZeroGPU) inside
    that. Returns the :class:`Downloads` of ``export_bundle``, which :func:`after_launch`
    mounts on the running app. ``gradio_client`` also gets ``/upload_document``, the upload
    with a file it sends with ``handle_file`` (not an MCP tool: a ``FileData`` parameter
    would let gradio's MCP server write before the credentials are checked)."""
    gpu = gpu or (lambda fn: fn)
    downloads = Downloads(access)

    def fingerprint() -> str:
        return chat.model(model_name)[2]

    def signed_in(fn: Callable) -> Callable:
        """Refuse a request without the credentials it needs before anything else runs (before
        it waits for the model's turn): the tool itself still asks :meth:`Access.owner`."""
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            given = signature.bind_partial(*args, **kwargs).arguments
            access.owner(given.get("request"), given.get("profile"))
            return fn(*args, **kwargs)

        return checked

    def list_documents(request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> list[dict]:
        """List the documents in your library with their reading state for the model in use.

        Returns:
            one dict per document: id, name, state (queued, reading …, ready, failed: …), ready (true when it can be asked), pages, tokens, access (owner, or shared: read-only)
        """
        owner = access.owner(request, profile)
        return [
            {
                "id": e["id"],
                "name": e["name"],
                "state": e["state"],
                "ready": e["ready"],
                "pages": e["pages"],
                "tokens": e["tokens"],
                "access": e["access"],
            }
            for e in library.library(store, model_name, fingerprint(), owner)
        ]

    def add(owner: str | None, file_name: str, data: bytes) -> dict:
        lines = library.submit_uploads(queue, [(file_name, data)], model_name, None, owner)
        if slices is not None and lines[0].endswith("queued for reading"):
            slices.run_next(owner)  # the first slice, in this request (ZeroGPU)
        return {"id": hashlib.sha256(data).hexdigest(), "name": file_name, "status": lines[0].lstrip("✓✗ ")}

    def upload(file: str, name: str = "", request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
        """Add a document (PDF, EPUB, DOCX, HTML, TXT or Markdown) to your library and queue it for reading.

        Args:
            file: the document's bytes as a data: URL (data:<type>;base64,<bytes>; about 3 MB at most over MCP). The server does not fetch http(s) URLs: download the file and send its bytes.
            name: the file name to keep for it, with its extension (default: a name= in the data: URL, else upload.<type>)
        Returns:
            id (use it with build_status, ask and export_bundle), name and status (queued for reading, already read — ready, or why it was refused)
        """
        from .ingest import max_upload_bytes

        owner = access.owner(request, profile)  # before a byte is decoded
        data, media, carried = read_data_url(file, max_upload_bytes())
        file_name = Path(name or carried or f"upload{mimetypes.guess_extension(media) or '.txt'}").name
        return add(owner, file_name, data)

    def upload_document(
        file: FileData, name: str = "", request: gr.Request = None, profile: gr.OAuthProfile | None = None
    ) -> dict:
        """Add a document sent with gradio_client's handle_file to your library and queue it for reading.

        Args:
            file: the document (gradio_client's handle_file(path))
            name: the file name to keep for it, with its extension (default: the uploaded file's name)
        Returns:
            id, name and status (queued for reading, already read — ready, or why it was refused)
        """
        from .ingest import max_upload_bytes

        owner = access.owner(request, profile)
        path, original = _uploaded_path(file)
        file_name = Path(name or original or path.name).name
        limit = max_upload_bytes()
        if path.stat().st_size > limit:
            raise StoreError(f"{file_name}: the file is over the upload limit of {limit / 2**20:.1f} MB")
        return add(owner, file_name, path.read_bytes())

    def build_status(document: str, request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
        """How far the reading of a document is, for the model in use.

        Args:
            document: the document's id, a unique id prefix or its file name
        Returns:
            id, name, state (queued, reading 43 % · ETA …, ready, failed: reason) and ready (true when it can be asked)
        """
        owner = access.owner(request, profile)
        ref = str(document or "").strip()
        if slices is not None:
            slices.run_next(owner)  # builds in requests: each status call reads on
        entries = library.library(store, model_name, fingerprint(), owner)
        found = [e for e in entries if ref and (e["id"] == ref or e["name"] == ref)] or [
            e for e in entries if ref and e["id"].startswith(ref)
        ]
        if len(found) != 1:
            raise (
                library.not_found(ref)
                if not found
                else StoreError(f"{ref!r} matches {len(found)} documents in your library; use more of the id")
            )
        entry = found[0]
        return {"id": entry["id"], "name": entry["name"], "state": entry["state"], "ready": entry["ready"]}

    @signed_in
    @model_turns.takes_turns("mcp ask")
    @gpu
    def ask(
        document: str,
        question: str,
        max_new_tokens: int = 256,
        request: gr.Request = None,
        profile: gr.OAuthProfile | None = None,
    ) -> dict:
        """Ask a question about a document of your library; answered from its passages and its stored cache (a document still being read answers specific questions from its passages).

        Args:
            document: the document's id, a unique id prefix or its file name
            question: the question
            max_new_tokens: the longest answer, in tokens
        Returns:
            answer (the answer's text alone), sources (where in the document it was read: document, label, location, quote, start, end), sources_label (the sources as the app shows them under the answer), strategy (cache, passages, cache+passages, or waiting while the document is read), notes and reading (ready, or how far the reading is)
        """
        from homer.generation import GenerationSettings

        from . import answering

        owner = access.owner(request, profile)
        try:
            doc = library.check_access(store, document, owner)
        except StoreError:
            state = answering.pending_state(store, document, owner)  # an upload of theirs not read in yet
            if state and state.startswith("reading failed"):
                raise StoreError(f"{document}: {state}") from None
            if state:
                raise StoreError(
                    f"{document}: {state} — its text is not stored yet, ask again in a few seconds"
                ) from None
            raise
        key = f"mcp:{uuid.uuid4().hex}"  # each call is a conversation of its own
        answer, stats = "", {}
        try:
            generation = GenerationSettings(max_new_tokens=max(1, int(max_new_tokens)), temperature=0.0)
            for answer, stats in chat.ask(key, doc["id"], question, model_name, generation):
                pass
        finally:
            chat.clear(key, doc["id"])
        sources = [
            {
                "document": p.get("document") or doc["file_name"],
                "label": p.get("label") or "",
                "location": p.get("location"),
                "quote": p.get("quote") or "",
                "start": p.get("start"),
                "end": p.get("end"),
            }
            for p in reader.places_of(stats)
        ]
        return {
            "answer": stats.get("answer", answer),
            "sources": sources,
            "sources_label": stats.get("sources") or "",
            "strategy": stats.get("focus"),
            "notes": stats.get("notes") or [],
            "reading": stats.get("reading") or "ready",
            "report": {
                k: stats[k]
                for k in ("focus", "time_to_first_token", "seconds", "new_tokens", "retrieval_seconds", "coverage")
                if k in stats
            },
        }

    def export_bundle(document: str, request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> str:
        """Export a ready document's cache as a bundle (a zip) that another HOMER Chat imports without reading the document again.

        Args:
            document: the document's id, a unique id prefix or its file name
        Returns:
            the bundle's download URL: only you can download it (send the same credentials), for an hour
        """
        owner = access.owner(request, profile)
        path = library.export_document(store, document, fingerprint(), owner)  # a private folder, pruned
        return downloads.link(request, owner, path)

    for tool in (list_documents, upload, build_status, ask, export_bundle):
        gr.api(tool, api_name=ENDPOINTS[tool.__name__], queue=False)
    gr.api(upload_document, api_name="upload_document", queue=False)  # gradio_client only, behind the login
    blocks = gr.context.Context.root_block  # the Blocks being built: after_launch finds its downloads there
    if blocks is not None:
        blocks.mcp_downloads = downloads
    return downloads


def restrict_tools(demo) -> list[str]:
    """Make the five tools the whole MCP tool list (the UI's events stay API endpoints for
    ``gradio_client``). Call it after ``launch(mcp_server=True)``; returns the tool names
    (none when the MCP server is off)."""
    server = getattr(demo, "mcp_server_obj", None)
    if server is None:
        return []
    server.tool_to_endpoint = {server.tool_prefix + tool: "/" + ENDPOINTS[tool] for tool in TOOLS}
    return list(server.tool_to_endpoint)


def after_launch(demo) -> list[str]:
    """What can only be done once gradio has built its app: the tools' download route is
    mounted (the :class:`Downloads` :func:`add_tools` left on the Blocks) and the five tools
    become the MCP tool list (:func:`restrict_tools`, whose tool names it returns)."""
    downloads = getattr(demo, "mcp_downloads", None)
    if downloads is not None:
        downloads.mount(demo.server_app, getattr(demo, "root_path", "") or "")
    return restrict_tools(demo)


def mcp_available() -> bool:
    """gradio's ``mcp`` extra is installed."""
    import importlib.util

    return importlib.util.find_spec("mcp") is not None

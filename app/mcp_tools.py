"""Who is asking, and the app's MCP tools.

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
:data:`LOG_IN`); nothing is served to it."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from gradio.data_classes import FileData

from storage.errors import StoreError

from . import library, reader

TOOLS = ("list_documents", "upload", "build_status", "ask", "export_bundle")
# the API names of the tools' endpoints (the UI has its own /upload and /ask events)
ENDPOINTS = {"list_documents": "list_documents", "upload": "upload_document", "build_status": "build_status",
             "ask": "ask_document", "export_bundle": "export_bundle"}
SIGN_IN = "sign in with Hugging Face to use your library"
LOG_IN = "log in to use your library (MCP: send an --auth user's name and password as HTTP basic credentials)"
WHOAMI_SECONDS = 300.0


class SignInRequired(StoreError):
    """The request carries no user where the app needs one."""


def oauth_wanted() -> bool:
    """Sign-in with Hugging Face: on a Space (``SPACE_ID`` set) or with ``HOMER_HF_OAUTH=1``
    (``HOMER_HF_OAUTH=0`` turns it off on a Space)."""
    flag = os.environ.get("HOMER_HF_OAUTH", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    return flag in ("1", "true", "yes", "on") or bool(os.environ.get("SPACE_ID"))


class Access:
    """Turns a request (and the signed-in Hugging Face profile) into the library's owner key.

    ``login``: the app runs with ``--auth`` (``users``: its name → password pairs, for MCP
    clients' basic credentials); ``oauth``: sign-in with Hugging Face is on (ignored with
    ``login``: ``--auth`` wins). ``whoami``: resolves a Hugging Face token to its account
    (``huggingface_hub.whoami`` by default; tests pass their own)."""

    def __init__(self, login: bool = False, users: dict[str, str] | None = None, oauth: bool = False,
                 whoami: Callable[[str], dict] | None = None):
        self.login = bool(login)
        self.users = dict(users or {})
        self.oauth = bool(oauth) and not self.login
        self._whoami = whoami
        self._tokens: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    @property
    def team(self) -> bool:
        """Documents are per user (and can be shared)."""
        return self.login or self.oauth

    def owner(self, request=None, profile=None) -> str | None:
        """The user key for ``request``: None without login (every document is everyone's);
        raises :class:`SignInRequired` when the app needs a user and the request has none."""
        if self.login:
            name = getattr(request, "username", None) or self._basic(request)
            if not name:
                raise SignInRequired(LOG_IN)
            return name
        if self.oauth:
            name = getattr(profile, "username", None) or self._bearer(request)
            if not name:
                raise SignInRequired(SIGN_IN)
            return name
        return None

    def signed_out(self, request=None, profile=None) -> bool:
        try:
            self.owner(request, profile)
        except SignInRequired:
            return True
        return False

    @staticmethod
    def _authorization(request) -> tuple[str, str]:
        headers = getattr(request, "headers", None) if request is not None else None
        value = headers.get("authorization", "") if headers is not None else ""
        scheme, _, credentials = str(value).strip().partition(" ")
        return scheme.lower(), credentials.strip()

    def _basic(self, request) -> str | None:
        scheme, credentials = self._authorization(request)
        if scheme != "basic" or not self.users:
            return None
        try:
            user, sep, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        expected = self.users.get(user)
        if not sep or expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
            return None
        return user

    def _bearer(self, request) -> str | None:
        scheme, token = self._authorization(request)
        if scheme != "bearer" or not token:
            return None
        key = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        with self._lock:
            cached = self._tokens.get(key)
        if cached and now - cached[0] < WHOAMI_SECONDS:
            return cached[1]
        try:
            whoami = self._whoami
            if whoami is None:
                from huggingface_hub import whoami as hub_whoami

                whoami = lambda value: hub_whoami(token=value)  # noqa: E731
            info = whoami(token)
            name = info.get("name") if isinstance(info, dict) and info.get("type", "user") == "user" else None
        except Exception:  # an invalid or expired token, or the Hub unreachable: no user
            name = None
        with self._lock:
            self._tokens[key] = (now, name)
        return name


def _upload_folders() -> list[Path]:
    """Where gradio writes the files a client uploads (an MCP call's files included)."""
    folders = {os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")}
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
        raise StoreError("upload the file through the app (an http(s) or data: URL over MCP)")
    return resolved, name


def add_tools(store, queue, chat, model_name: str, access: Access, gpu: Callable | None = None,
              slices=None) -> None:
    """Register the five tools as API endpoints of the Blocks being built (call it inside
    ``with gr.Blocks():``). They are not queued, so an MCP call runs them directly with its
    own request (its credentials); ``gpu`` wraps ``ask`` (``spaces.GPU`` on ZeroGPU)."""
    gpu = gpu or (lambda fn: fn)

    def fingerprint() -> str:
        return chat.model(model_name)[2]

    def list_documents(request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> list[dict]:
        """List the documents in your library with their reading state for the model in use.

        Returns:
            one dict per document: id, name, state (queued, reading …, ready, failed: …), ready (true when it can be asked), pages, tokens, access (owner, or shared: read-only)
        """
        owner = access.owner(request, profile)
        return [{"id": e["id"], "name": e["name"], "state": e["state"], "ready": e["ready"], "pages": e["pages"],
                 "tokens": e["tokens"], "access": e["access"]}
                for e in library.library(store, model_name, fingerprint(), owner)]

    def upload(file: FileData, name: str = "", request: gr.Request = None,
               profile: gr.OAuthProfile | None = None) -> dict:
        """Add a document (PDF, EPUB, DOCX, HTML, TXT or Markdown) to your library and queue it for reading.

        Args:
            file: the document (an http(s) URL or a data: URL with the file's bytes)
            name: the file name to keep for it, with its extension (default: the uploaded file's name)
        Returns:
            id (use it with build_status, ask and export_bundle), name and status (queued for reading, already read — ready, or why it was refused)
        """
        owner = access.owner(request, profile)
        path, original = _uploaded_path(file)
        file_name = Path(name or original or path.name).name
        limit = library.max_request_bytes()
        if path.stat().st_size > limit:
            raise StoreError(f"{file_name}: the file is over the limit of {limit / 2**20:.1f} MB")
        data = path.read_bytes()
        lines = library.submit_uploads(queue, [(file_name, data)], model_name, None, owner)
        if slices is not None and lines[0].endswith("queued for reading"):
            slices.run_next(owner)  # the first slice, in this request (ZeroGPU)
        return {"id": hashlib.sha256(data).hexdigest(), "name": file_name, "status": lines[0].lstrip("✓✗ ")}

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
        found = [e for e in entries if ref and (e["id"] == ref or e["name"] == ref)] or \
                [e for e in entries if ref and e["id"].startswith(ref)]
        if len(found) != 1:
            raise library.not_found(ref) if not found else StoreError(
                f"{ref!r} matches {len(found)} documents in your library; use more of the id")
        entry = found[0]
        return {"id": entry["id"], "name": entry["name"], "state": entry["state"], "ready": entry["ready"]}

    @gpu
    def ask(document: str, question: str, max_new_tokens: int = 256, request: gr.Request = None,
            profile: gr.OAuthProfile | None = None) -> dict:
        """Ask a question about a ready document; the answer comes from its stored cache and passages.

        Args:
            document: the document's id, a unique id prefix or its file name
            question: the question
            max_new_tokens: the longest answer, in tokens
        Returns:
            answer (its text) and sources (where in the document it comes from: label, location, quote)
        """
        from homer.generation import GenerationSettings

        owner = access.owner(request, profile)
        doc = library.check_access(store, document, owner)
        key = f"mcp:{uuid.uuid4().hex}"  # each call is a conversation of its own
        answer, stats = "", {}
        try:
            generation = GenerationSettings(max_new_tokens=max(1, int(max_new_tokens)), temperature=0.0)
            for answer, stats in chat.ask(key, doc["id"], question, model_name, generation):
                pass
        finally:
            chat.clear(key, doc["id"])
        sources = [{"document": p.get("document") or doc["file_name"], "label": p.get("label") or "",
                    "location": p.get("location"), "quote": p.get("quote") or ""} for p in reader.places_of(stats)]
        return {"answer": answer, "sources": sources, "sources_label": stats.get("sources") or ""}

    def export_bundle(document: str, request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> FileData:
        """Export a ready document's cache as a bundle (a zip) that another HOMER Chat imports without reading the document again.

        Args:
            document: the document's id, a unique id prefix or its file name
        Returns:
            the bundle file (a download URL)
        """
        owner = access.owner(request, profile)
        root = _upload_folders()[0] / "homer-exports"  # served by the app (gradio's file cache)
        root.mkdir(parents=True, exist_ok=True)
        library.prune_exports(root)
        path = library.export_document(store, document, fingerprint(), owner,
                                       folder=tempfile.mkdtemp(prefix="export-", dir=root))
        return FileData(path=str(path), orig_name=path.name, size=path.stat().st_size,
                        mime_type="application/zip")

    for tool in (list_documents, upload, build_status, ask, export_bundle):
        gr.api(tool, api_name=ENDPOINTS[tool.__name__], queue=False)


def restrict_tools(demo) -> list[str]:
    """Make the five tools the whole MCP tool list (the UI's events stay API endpoints for
    ``gradio_client``). Call it after ``launch(mcp_server=True)``; returns the tool names
    (none when the MCP server is off)."""
    server = getattr(demo, "mcp_server_obj", None)
    if server is None:
        return []
    server.tool_to_endpoint = {server.tool_prefix + tool: "/" + ENDPOINTS[tool] for tool in TOOLS}
    return list(server.tool_to_endpoint)


def mcp_available() -> bool:
    """gradio's ``mcp`` extra is installed."""
    import importlib.util

    return importlib.util.find_spec("mcp") is not None

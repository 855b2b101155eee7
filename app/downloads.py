"""The app's own download route for exported bundles (:class:`Downloads`, mounted by
:func:`app.mcp_tools.after_launch`): a bundle is served to the user who exported it only, with
the same credentials as the MCP tools or the app's login cookie — never through gradio's
``/gradio_api/file=`` route, which checks only gradio's login cookie."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import gradio as gr
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response

from . import library
from .access import Access, SignInRequired


def _request_root(request, root_path: str = "") -> str:
    """The app's public root URL as the client reached it (behind a proxy too: gradio's own
    rules, the forwarded host and scheme), without a trailing slash."""
    from gradio import route_utils

    raw = getattr(request, "request", None) or request
    url = getattr(raw, "url", None)
    if url is None or not hasattr(raw, "headers"):
        return root_path.rstrip("/")
    return route_utils.get_root_url(raw, route_path=url.path, root_path=root_path or None)


class Downloads:
    """Bundles exported by the tools, each served to the user who exported it and nobody
    else, at ``/homer/exports/<token>/<file name>`` (the token: 192 random bits, so a link
    cannot be guessed; and the requester must still be its exporter).

    The requester is found as the tools find their caller (:meth:`Access.owner`): HTTP basic
    credentials of an ``--auth`` user or the app's login cookie; a Hugging Face token or the
    signed-in session; anyone without login (every document is everyone's). A request
    without them is answered 401, someone else's link or an unknown, expired or pruned one
    404 (the same: nobody learns which links exist). Links live as long as the bundle file
    (:data:`app.library.EXPORT_KEEP_SECONDS`) and within this process."""

    ROUTE = "/homer/exports"

    def __init__(self, access: Access, keep_seconds: float = library.EXPORT_KEEP_SECONDS):
        self.access = access
        self.keep_seconds = keep_seconds
        self.root_path = ""
        self._app = None
        self._files: dict[str, tuple[str | None, Path, float]] = {}
        self._lock = threading.Lock()

    def add(self, owner: str | None, path: Path) -> str:
        """Register an exported file; returns its link's path (under the app's root)."""
        token = secrets.token_urlsafe(24)
        now = time.time()
        with self._lock:
            self._files = {k: v for k, v in self._files.items() if now - v[2] <= self.keep_seconds}
            self._files[token] = (owner, Path(path), now)
        return f"{self.ROUTE}/{token}/{quote(Path(path).name)}"

    def link(self, request, owner: str | None, path: Path) -> str:
        return _request_root(request, self.root_path) + self.add(owner, path)

    def mount(self, app, root_path: str = "") -> None:
        """Add the download route to the running app (gradio builds its app at launch)."""
        self._app = app
        self.root_path = root_path or ""
        app.add_api_route(self.ROUTE + "/{token}/{name}", self.serve, methods=["GET"], include_in_schema=False)

    def _cookie_user(self, request) -> str | None:
        """The user of the app's own login cookie (``--auth``), as gradio's routes read it."""
        app = self._app
        tokens, cookie_id = getattr(app, "tokens", None) or {}, getattr(app, "cookie_id", None)
        if not cookie_id:
            return None
        token = request.cookies.get(f"access-token-{cookie_id}") or request.cookies.get(
            f"access-token-unsecure-{cookie_id}"
        )
        return tokens.get(token) if token else None

    def _session_profile(self, request):
        """The Hugging Face profile of a signed-in browser session (sign-in with Hugging Face)."""
        if not self.access.oauth or "session" not in request.scope:
            return None
        try:
            from gradio.oauth import _get_valid_oauth_info_from_session

            info = _get_valid_oauth_info_from_session(request.session)
            return gr.OAuthProfile(info["userinfo"]) if info else None
        except Exception:  # no or a broken session: not signed in
            return None

    def requester(self, request) -> str | None:
        """Who asks for a download; raises :class:`SignInRequired` when the app needs a user."""
        asking = SimpleNamespace(
            headers=request.headers, username=self._cookie_user(request) if self.access.login else None
        )
        return self.access.owner(asking, self._session_profile(request))

    def serve(self, token: str, name: str, request: Request) -> Response:
        try:
            user = self.requester(request)
        except SignInRequired as exc:
            headers = {"WWW-Authenticate": 'Basic realm="HOMER Chat"'} if self.access.login else None
            return PlainTextResponse(str(exc), status_code=401, headers=headers)
        with self._lock:
            found = self._files.get(token)
        if (
            found is None
            or found[0] != user
            or found[1].name != name
            or not found[1].is_file()
            or time.time() - found[2] > self.keep_seconds
        ):
            return PlainTextResponse("no such export (or it expired): export the document again", status_code=404)
        return FileResponse(found[1], filename=found[1].name, media_type="application/zip")

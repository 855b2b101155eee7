"""Who is asking: :class:`Access` turns a request (the login name with ``--auth``, the Hugging
Face username with sign-in on, a basic-credentials or bearer-token MCP request, the app's login
cookie) into the user key the library uses (``owner``); a signed-out visitor where sign-in is on
gets :class:`SignInRequired` with :data:`SIGN_IN` (or :data:`LOG_IN`) and has no library.
How MCP clients authenticate is described in :mod:`app.mcp_tools`."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import threading
import time
from collections.abc import Callable

from storage.errors import StoreError

from .settings import load_settings

SIGN_IN = "sign in with Hugging Face to use your library"
LOG_IN = "log in to use your library (MCP: send an --auth user's name and password as HTTP basic credentials)"
WHOAMI_SECONDS = 300.0


class SignInRequired(StoreError):
    """The request carries no user where the app needs one."""


def oauth_wanted() -> bool:
    """Sign-in with Hugging Face: on a Space (``SPACE_ID`` set) or with ``HOMER_HF_OAUTH=1``
    (``HOMER_HF_OAUTH=0`` turns it off on a Space)."""
    settings = load_settings()
    wanted = settings.server.hf_oauth
    return bool(settings.space.space_id) if wanted is None else wanted


class Access:
    """Turns a request (and the signed-in Hugging Face profile) into the library's owner key.

    ``login``: the app runs with ``--auth`` (``users``: its name → password pairs, for MCP
    clients' basic credentials); ``oauth``: sign-in with Hugging Face is on (ignored with
    ``login``: ``--auth`` wins). ``whoami``: resolves a Hugging Face token to its account
    (``huggingface_hub.whoami`` by default; tests pass their own)."""

    def __init__(
        self,
        login: bool = False,
        users: dict[str, str] | None = None,
        oauth: bool = False,
        whoami: Callable[[str], dict] | None = None,
    ):
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

"""What the UI's tabs share: the services their handlers work on (:class:`Services`), the
page's state (:class:`PageState`) and :func:`fail`.

A handler is a plain function whose first argument is the :class:`Services`
(``refresh(services, model, request, profile)``), so a reader sees what it works on and a test
can call it; :meth:`Services.bind` turns it into the event function gradio calls."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import gradio as gr

from ..access import Access, SignInRequired
from ..chat import ChatService
from ..multi_document import SeveralDocuments
from ..threads import Threads

if TYPE_CHECKING:
    from storage import Store

    from ..slices import Slices
    from ..worker import BuildQueue


def identity(fn):
    return fn


def fail(exc: Exception):
    """Show ``exc`` to the user as the event's error (no traceback in the log)."""
    raise gr.Error(str(exc), print_exception=False)


@dataclass
class Services:
    """What the handlers work on. ``queue``: the build queue (:class:`app.worker.BuildQueue`;
    None where builds are not queued from the UI); ``access``: who the user is (see
    :func:`app.ui.build_ui`); ``slices``: builds run inside requests, a slice at a time (None: a
    worker runs them); ``allow_model_change``: Settings may switch the model."""

    store: Store
    queue: BuildQueue | None
    chat: ChatService
    access: Access
    slices: Slices | None = None
    allow_model_change: bool = True
    several: SeveralDocuments = field(init=False)  # questions over several documents, on the same chat service
    threads: Threads = field(init=False)  # named conversation threads per user and document, kept in the store

    def __post_init__(self):
        self.several = SeveralDocuments(self.chat)
        self.threads = Threads(self.chat)

    @property
    def team(self) -> bool:
        """Documents are per user: the access column and sharing are shown."""
        return self.access.team

    def owner(self, request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str | None:
        """The user key (None: no login); raises SignInRequired (a StoreError) when signed out."""
        return self.access.owner(request, profile)

    def session(self, request: gr.Request | None, profile: gr.OAuthProfile | None = None) -> str:
        """The key of this user's (or, without one, this browser session's) conversations."""
        try:
            owner = self.owner(request, profile)
        except SignInRequired:
            owner = None
        if owner:
            return f"user:{owner}"  # a logged-in user's conversations survive a reload
        return f"session:{getattr(request, 'session_hash', None) or 'local'}"

    def bind(self, handler: Callable) -> Callable:
        """The event function gradio calls for ``handler(services, …)``: ``fn(…)``, with these
        services as the first argument. Written here because gradio reads the event function's
        own signature and type hints (to inject ``gr.Request`` and ``gr.OAuthProfile``, and to
        name the API's parameters) and streams it only when it is a generator function;
        ``functools.partial`` hides all of that. The name and docstring (the API's description)
        are the handler's."""
        if inspect.isgeneratorfunction(handler):

            @functools.wraps(handler)
            def event(*args, **kwargs):
                yield from handler(self, *args, **kwargs)
        else:

            @functools.wraps(handler)
            def event(*args, **kwargs):
                return handler(self, *args, **kwargs)

        signature = inspect.signature(handler)
        event.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
        return event


@dataclass
class PageState:
    """The page's state, shared by the tabs (gradio ``State``s, one per browser session)."""

    model: gr.State  # the name of the model in use
    settings: gr.State  # the HOMER settings for new builds ({}: the model's defaults)
    version: gr.State  # the pickers' choices at the last library refresh (JSON): a change updates the pickers
    waiting: gr.State  # uploads made in the chat, picked there once their text is stored: [[id, name], …]

    @classmethod
    def create(cls, model_name: str) -> PageState:
        """The states, created inside the page's ``gr.Blocks``."""
        return cls(model=gr.State(model_name), settings=gr.State({}), version=gr.State(""), waiting=gr.State([]))

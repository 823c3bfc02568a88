"""Feature store vs the official ReVision embedding cache (pickles loaded into one dict).

    python benchmarks/bench_store.py                 # 1M x 1280, as in the issue (~10 GB disk)
    python benchmarks/bench_store.py --rows 100000   # quick

Prints, for the store and for the baseline: time to open (baseline: load every pickle into
a dict, as the official data loader does), random lookup throughput (batches of 256 ids ->
float32 [256, dim]) and peak RSS of a fresh process doing only that. The store is measured
again at rows/10 to show its memory does not grow with N. Then ``embed_corpus`` with a tiny
CLIP on texts of mixed length: length-sorted vs input-order batches.

The baseline reproduces the official files (lists of {"id", "caption", "embed": float16}
records, 200k per pickle); pickle is used only here, to measure what it replaces. Lookups
first run on whatever the page cache holds (the files were just written, but the OS may have
evicted part), then ("warm") after one sequential pass over the store; nothing here drops
system caches, and the baseline always answers from RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RECORDS_PER_PICKLE = 200_000  # the official embed.py default (--records_per_pkl)
CHUNK = 65_536


def make_ids(rows: np.ndarray) -> list[str]:
    return [f"cap{i:09d}" for i in rows]


def vector_chunks(rows: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for lo in range(0, rows, CHUNK):
        x = rng.standard_normal((min(CHUNK, rows - lo), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        yield lo, x


def build_store(path: Path, rows: int, dim: int) -> float:
    from revision_plugin.store import StoreWriter

    started = time.perf_counter()
    with StoreWriter(path, "bench:random", dim, shard_rows=CHUNK) as writer:
        for lo, x in vector_chunks(rows, dim):
            writer.add(make_ids(np.arange(lo, lo + len(x))), x)
    return time.perf_counter() - started


def build_pickles(path: Path, rows: int, dim: int) -> float:
    """The official layout: part files of RECORDS_PER_PICKLE {"id", "caption", "embed"} records."""
    path.mkdir(parents=True, exist_ok=True)
    started, buffer, part = time.perf_counter(), [], 1
    for lo, x in vector_chunks(rows, dim):
        half = x.astype(np.float16)  # the official embed.py stores float16
        for j, item_id in enumerate(make_ids(np.arange(lo, lo + len(x)))):
            buffer.append({"id": item_id, "caption": f"a caption of sample {item_id} with a few words", "embed": half[j]})
            if len(buffer) == RECORDS_PER_PICKLE:
                with open(path / f"text_embeds_{part}.pkl", "wb") as f:
                    pickle.dump(buffer, f)
                buffer, part = [], part + 1
    if buffer:
        with open(path / f"text_embeds_{part}.pkl", "wb") as f:
            pickle.dump(buffer, f)
    return time.perf_counter() - started


def rss_mb() -> tuple[float, float]:
    """(current RSS, anonymous part) in MB, from /proc."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields.get("RssAnon", "0 kB").split()[0]) / 1024


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def child(kind: str, path: Path, rows: int, batches: int, batch: int) -> dict:
    """Runs in a fresh process: open, then ``batches`` random lookups of ``batch`` ids."""
    rng = np.random.default_rng(1)
    requests = [make_ids(rng.integers(0, rows, batch)) for _ in range(batches)]
    rss_before = rss_mb()[0]
    started = time.perf_counter()
    if kind == "store":
        from revision_plugin.store import open_store

        store = open_store(path)
        lookup = store.lookup
    else:
        embeddings = {}
        for name in os.listdir(path):  # the official LazySupervisedDataset.__init__
            if name.endswith(".pkl"):
                with open(path / name, "rb") as f:
                    for item in pickle.load(f):
                        embeddings[str(item.get("id"))] = item.get("embed")

        def lookup(ids):
            return np.stack([embeddings[i] for i in ids]).astype(np.float32)

    open_s = time.perf_counter() - started
    rss_open = rss_mb()[0]
    lookup(requests[0])
    started = time.perf_counter()
    for ids in requests:
        out = lookup(ids)
    lookup_s = time.perf_counter() - started
    warm_rows_per_s = None
    if kind == "store":
        # Again after one sequential pass has pulled the shards into the page cache (as far as
        # memory allows): the steady state of a training run on a machine with RAM to spare.
        for _ in store.chunks(1024):  # 5 MB buffer: keeps the peak RSS about the lookups
            pass
        started = time.perf_counter()
        for ids in requests:
            lookup(ids)
        warm_rows_per_s = batches * batch / (time.perf_counter() - started)
    assert out.shape == (batch, out.shape[1]) and out.dtype == np.float32
    rss_now, rss_anon = rss_mb()
    return {
        "open_s": open_s,
        "rows_per_s": batches * batch / lookup_s,
        "warm_rows_per_s": warm_rows_per_s,
        "rss_before_mb": rss_before,
        "rss_open_mb": rss_open,
        "rss_end_mb": rss_now,
        "rss_anon_end_mb": rss_anon,
        # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork + exec.
        "peak_rss_mb": peak_rss_mb(),
    }


def measure(kind: str, path: Path, rows: int, batches: int, batch: int) -> dict:
    command = [sys.executable, __file__, "--child", kind, str(path), "--rows", str(rows),
               "--lookup-batches", str(batches), "--batch", str(batch)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_embed(workdir: Path, texts: int, batch_size: int) -> dict:
    import torch

    from revision_plugin.encoders import load_encoder
    from revision_plugin.encoders.corpus import CorpusItem
    from revision_plugin.encoders.corpus_embedding import embed_corpus
    from revision_plugin.testing.tiny_clip import build_tiny_clip

    torch.set_num_threads(1)
    encoder = load_encoder("hf_clip", build_tiny_clip(workdir / "tiny-clip"))
    rng = np.random.default_rng(2)
    words = "a photo of the cat dog on in with and man red small large wooden table".split()
    # Caption lengths of a web corpus: mostly short, a long tail.
    lengths = np.minimum(rng.geometric(1 / 12, texts), 70)
    items = [CorpusItem(f"t{i}", " ".join(rng.choice(words, n)), f"bench:{i}") for i, n in enumerate(lengths)]
    results = {}
    for name, sort in (("unsorted", False), ("sorted", True)):
        summary = embed_corpus(encoder, items, workdir / f"embed-{name}", "text", batch_size=batch_size, sort_by_length=sort)
        results[name] = summary.rows_per_second
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lookup-batches", type=int, default=400)
    parser.add_argument("--workdir", type=Path, help="where to build (default: a temp dir, removed after)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="build in DIR and keep it; parts already built there are reused (repeat runs)")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--embed-texts", type=int, default=3000, help="0 skips the embedding benchmark")
    parser.add_argument("--embed-batch", type=int, default=64)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.rows, args.lookup_batches, args.batch)))
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp) if args.keep is None else args.keep / f"{args.rows}x{args.dim}"
        n, small = args.rows, max(args.rows // 10, args.batch)
        print(f"# {n:,} x {args.dim} float32 (batch {args.batch}, {args.lookup_batches} random batches)")
        for name in ("store", "store-small"):  # half-built by an interrupted run: start over
            if (workdir / name).exists() and not (workdir / name / "manifest.json").exists():
                shutil.rmtree(workdir / name)
        if not (workdir / "store" / "manifest.json").exists():
            print(f"build store            {build_store(workdir / 'store', n, args.dim):8.1f} s")
        if not (workdir / "store-small" / "manifest.json").exists():
            build_store(workdir / "store-small", small, args.dim)
        rows = {"store": measure("store", workdir / "store", n, args.lookup_batches, args.batch),
                f"store @ {small:,} rows": measure("store", workdir / "store-small", small, args.lookup_batches, args.batch)}
        if not args.skip_baseline:
            if not (workdir / "pickles" / "complete").exists():
                print(f"build pickles          {build_pickles(workdir / 'pickles', n, args.dim):8.1f} s")
                (workdir / "pickles" / "complete").touch()
            rows["pickle dict (official)"] = measure("pickle", workdir / "pickles", n, args.lookup_batches, args.batch)
        print(f"\n{'':26s}{'open s':>10s}{'rows/s':>12s}{'warm rows/s':>13s}{'peak RSS MB':>13s}{'RSS open MB':>13s}")
        for name, r in rows.items():
            warm = f"{r['warm_rows_per_s']:13,.0f}" if r["warm_rows_per_s"] else f"{'(in RAM)':>13s}"
            print(f"{name:26s}{r['open_s']:10.3f}{r['rows_per_s']:12,.0f}{warm}{r['peak_rss_mb']:13,.0f}{r['rss_open_mb']:13,.0f}")
        if not args.skip_baseline:
            s, b = rows["store"], rows["pickle dict (official)"]
            print(f"\nstore vs official: open {b['open_s'] / s['open_s']:,.0f}x faster, lookup "
                  f"{s['rows_per_s'] / b['rows_per_s']:.2f}x (warm {s['warm_rows_per_s'] / b['rows_per_s']:.2f}x), "
                  f"peak RSS {b['peak_rss_mb'] / s['peak_rss_mb']:.1f}x smaller")
        if args.embed_texts:
            speeds = bench_embed(workdir, args.embed_texts, args.embed_batch)
            print(f"\nembed {args.embed_texts} texts, tiny CLIP, batch {args.embed_batch}, 1 CPU thread: "
                  f"input order {speeds['unsorted']:,.0f} rows/s, length-sorted {speeds['sorted']:,.0f} rows/s "
                  f"({speeds['sorted'] / speeds['unsorted']:.2f}x)")


if __name__ == "__main__":
    main()

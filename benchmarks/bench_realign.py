"""ReAlign fit/apply speed and memory on N×1280 float32 `.npy` embeddings (issues 2 and 15).

Prints, for each N, medians of 3 runs measured in the same session:
  (a) proxy: one ``np.add.reduce`` pass over both memory-mapped arrays (memory-bandwidth proxy)
  (b) ``realign`` fit time (two moment passes + one centroid pass, float64 accumulation)
  (c) apply throughput (``revision align`` path: read, align, write a float32 .npy)
  (d) write floor: the same bytes written to the same place by one thread, nothing read or
      computed (what the file system allows apply at best)
  (e) peak RSS growth of each phase over its post-import baseline
and the ratios fit/proxy and apply/write. Targets (issue 15): fit ≤ 2.5× proxy, apply ≥ 500k
rows/s, RSS growth flat in N. Each phase runs in a fresh subprocess so one phase's pages never
count towards another's RSS; the load average is printed, since the machine may be shared.
Before apply and write the output's memory is touched once, untimed (``back_with_host_memory``).

    python benchmarks/bench_realign.py                        # N = 200k, 400k, 1M
    python benchmarks/bench_realign.py --rows 200k            # one size
    python benchmarks/bench_realign.py --rows 2M --device cuda
    python benchmarks/bench_realign.py --out-dir /dev/shm      # apply without the disk
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 1280
DATA_DIR = Path(__file__).parent / "_data"


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def generate(path: Path, rows: int, seed: int, alpha: float, chunk: int = 16384) -> None:
    """Unit rows with a power-law spectrum and an offset mean, written chunk by chunk."""
    if path.exists():
        return
    rng = np.random.default_rng(seed)
    spectrum = np.sqrt(np.arange(1, DIM + 1, dtype=np.float32) ** -alpha).astype(np.float32)
    mean = rng.normal(size=DIM).astype(np.float32)
    mean *= 1.5 / np.linalg.norm(mean)
    from revision_plugin.atomic import atomic_file, shared_mode

    with atomic_file(path, fsync=False, mode=shared_mode(path)) as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, DIM)})
        for lo in range(0, rows, chunk):
            block = mean + rng.standard_normal((min(chunk, rows - lo), DIM), dtype=np.float32) * spectrum
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            f.write(block.tobytes())


def parse_rows(text: str) -> int:
    """``200000``, ``200k`` or ``1M``."""
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:].lower(), 1)
    try:
        value = int(float(text[:-1] if scale > 1 else text) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a row count like 200000, 200k or 1M, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive row count, got {text!r}")
    return value


def back_with_host_memory(nbytes: int) -> None:
    """Touch and free ``nbytes`` of memory, untimed, and reset the peak-RSS mark.

    Virtual machines with free page reporting (virtio-balloon; this one has it) hand freed
    guest memory back to the host, and the next touch of each such page is a host fault: the
    page cache an output is written into then costs ~1.3 µs per 4 KiB page more than on bare
    metal (about 0.7 GB/s). Touching the memory first measures what a bare-metal machine does;
    ``--cold-memory`` skips it and measures the VM as it is.
    """
    np.ones(nbytes // 8)  # allocated, written and freed at once
    clear_refs = Path("/proc/self/clear_refs")
    if clear_refs.exists():
        clear_refs.write_text("5")  # VmHWM := VmRSS


def phase(name: str, text: str, image: str, workdir: str, device: str = "cpu", out_dir: str | None = None,
          cold_memory: bool = False) -> dict:
    """Run one measured phase in this process and return its figures."""
    import torch  # noqa: F401  (imported before the baseline so import cost is not counted)

    from revision_plugin.align import ArraySource, NpySource, fit_operator, load_operator
    from revision_plugin.align.commands_align import align_file

    aligned = Path(out_dir or workdir) / "aligned.npy"
    aligned.unlink(missing_ok=True)  # freeing a previous output is not timed
    if name in ("apply", "write"):
        os.sync()  # start from no dirty pages: earlier runs' writeback would throttle this one's writes
    if name in ("fit", "apply"):  # one-time kernel, thread-pool and allocator set-up is not timed either
        warm = np.random.default_rng(0).standard_normal((4096, DIM), dtype=np.float32)
        warm_op = fit_operator("realign", warm, warm[::-1].copy(), device=device)
        align_file(warm_op, ArraySource(warm), Path(workdir) / "warm.npy", progress=False, device=device)
    if name in ("apply", "write") and not cold_memory:
        back_with_host_memory(NpySource(Path(text)).num_rows * DIM * 4 * 11 // 10)
    baseline = _rss_kib("VmRSS")
    start = time.perf_counter()
    result: dict = {}
    if name == "proxy":
        for path in (text, image):
            np.add.reduce(np.load(path, mmap_mode="r"), axis=0)
    elif name == "fit":
        operator = fit_operator("realign", NpySource(Path(text)), NpySource(Path(image)), device=device)
        operator.save(Path(workdir) / "op")
    elif name == "apply":
        operator = load_operator(Path(workdir) / "op")
        result["rows"] = align_file(operator, NpySource(Path(text)), aligned, progress=False, device=device)
    elif name == "write":
        write_floor(aligned, NpySource(Path(text)).num_rows)
    result["seconds"] = time.perf_counter() - start
    aligned.unlink(missing_ok=True)
    result["rss_growth_mb"] = (_rss_kib("VmHWM") - baseline) / 1024
    return result


def write_floor(path: Path, rows: int, block_rows: int = 1024) -> None:
    """The bytes apply writes, written by one thread from one reused block: nothing read or computed."""
    block = memoryview(np.ones((block_rows, DIM), dtype=np.float32)).cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for lo in range(0, rows, block_rows):
            os.pwrite(fd, block[: min(block_rows, rows - lo) * DIM * 4], 128 + lo * DIM * 4)
    finally:
        os.close(fd)


def run_phase(name: str, text: Path, image: Path, workdir: str, flags: list[str]) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--text", str(text), "--image", str(image), "--workdir", workdir,
         *flags],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(rows: int, data_dir: Path, device: str, repeats: int, out_dir: Path | None = None,
            cold_memory: bool = False) -> dict:
    text, image = data_dir / f"text_{rows}.npy", data_dir / f"image_{rows}.npy"
    generate(text, rows, seed=0, alpha=1.3)
    generate(image, rows, seed=1, alpha=1.8)
    runs: dict[str, list[dict]] = {"proxy": [], "fit": [], "apply": [], "write": []}
    flags = ["--device", device] + ([] if out_dir is None else ["--out-dir", str(out_dir)])
    flags += ["--cold-memory"] if cold_memory else []
    with tempfile.TemporaryDirectory(dir=data_dir) as workdir:
        run_phase("proxy", text, image, workdir, flags)  # warm the page cache for both arrays
        for _ in range(repeats):  # interleaved, so a burst of load hits every phase alike
            for name in runs:
                runs[name].append(run_phase(name, text, image, workdir, flags))
    median = {name: statistics.median(r["seconds"] for r in results) for name, results in runs.items()}
    rss = {name: max(r["rss_growth_mb"] for r in results) for name, results in runs.items()}
    ratios = [f["seconds"] / p["seconds"] for f, p in zip(runs["fit"], runs["proxy"])]
    for name, results in runs.items():
        print(f"  {rows}: {name} s " + " ".join(f"{r['seconds']:.3f}" for r in results), file=sys.stderr)
    return {"rows": rows, "proxy": median["proxy"], "fit": median["fit"], "fit_over_proxy": statistics.median(ratios),
            "apply_rows_per_s": rows / median["apply"], "write_rows_per_s": rows / median["write"], "rss": rss}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=parse_rows, nargs="+", default=[200_000, 400_000, 1_000_000],
                        help="N values to measure (200000, 200k, 1M; default: 200k 400k 1M)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where generated arrays are cached")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: where fit and apply run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per phase (the median is printed)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="where apply writes its output (default: next to the data; e.g. /dev/shm to take the disk out)")
    parser.add_argument("--cold-memory", action="store_true",
                        help="do not touch the output's memory before apply/write (see back_with_host_memory)")
    parser.add_argument("--phase", choices=["proxy", "fit", "apply", "write"], help=argparse.SUPPRESS)
    parser.add_argument("--text", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(phase(args.phase, args.text, args.image, args.workdir, args.device, args.out_dir,
                                args.cold_memory)))
        return 0

    args.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"device {args.device}; median of {args.repeats}; load average at start {os.getloadavg()[0]:.2f}")
    print(f"{'N':>9} {'proxy s':>8} {'fit s':>7} {'fit/proxy':>9} {'apply rows/s':>13} {'write rows/s':>13} "
          f"{'apply/write':>11} {'RSS+ fit MB':>11} {'RSS+ apply MB':>13} {'load':>5}")
    for rows in args.rows:
        r = measure(rows, args.data_dir, args.device, args.repeats, args.out_dir, args.cold_memory)
        print(f"{rows:>9} {r['proxy']:>8.3f} {r['fit']:>7.3f} {r['fit_over_proxy']:>9.2f} {r['apply_rows_per_s']:>13,.0f} "
              f"{r['write_rows_per_s']:>13,.0f} {r['apply_rows_per_s'] / r['write_rows_per_s']:>11.2f} "
              f"{r['rss']['fit']:>11.0f} {r['rss']['apply']:>13.0f} {os.getloadavg()[0]:>5.2f}", flush=True)
    print("targets: fit/proxy ≤ 2.5; apply ≥ 500,000 rows/s; fit and apply RSS growth flat in N")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""ReAlign fit/apply speed and memory on N×1280 float32 `.npy` embeddings (issue 2).

Prints, for each N, in one run:
  (a) proxy: one ``np.add.reduce`` pass over both memory-mapped arrays (memory-bandwidth proxy)
  (b) ``realign`` fit time (two moment passes + one centroid pass, float64 accumulation)
  (c) apply throughput (``revision align`` path: read, align, write a float32 .npy)
  (d) peak RSS growth of each phase over its post-import baseline
and the ratio fit/proxy. Targets: fit ≤ 5× proxy; RSS growth ≤ 300 MB at any N.
Each phase runs in a fresh subprocess so one phase's pages never count towards another's RSS.

    python benchmarks/bench_realign.py                    # N = 200,000
    python benchmarks/bench_realign.py --rows 200000 1000000
"""

from __future__ import annotations

import argparse
import json
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
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (rows, DIM)})
        for lo in range(0, rows, chunk):
            block = mean + rng.standard_normal((min(chunk, rows - lo), DIM), dtype=np.float32) * spectrum
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            f.write(block.tobytes())
    tmp.rename(path)


def phase(name: str, text: str, image: str, workdir: str) -> dict:
    """Run one measured phase in this process and return its figures."""
    import torch  # noqa: F401  (imported before the baseline so import cost is not counted)

    from revision_plugin.align import NpySource, fit_operator, load_operator
    from revision_plugin.align.commands_align import align_file

    baseline = _rss_kib("VmRSS")
    start = time.perf_counter()
    result: dict = {}
    if name == "proxy":
        for path in (text, image):
            np.add.reduce(np.load(path, mmap_mode="r"), axis=0)
    elif name == "fit":
        operator = fit_operator("realign", NpySource(Path(text)), NpySource(Path(image)))
        operator.save(Path(workdir) / "op")
    elif name == "apply":
        operator = load_operator(Path(workdir) / "op")
        result["rows"] = align_file(operator, NpySource(Path(text)), Path(workdir) / "aligned.npy", progress=False)
    result["seconds"] = time.perf_counter() - start
    result["rss_growth_mb"] = (_rss_kib("VmHWM") - baseline) / 1024
    return result


def run_phase(name: str, text: Path, image: Path, workdir: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", name, "--text", str(text), "--image", str(image), "--workdir", workdir],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[200_000], help="N values to measure")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where generated arrays are cached")
    parser.add_argument("--phase", choices=["proxy", "fit", "apply"], help=argparse.SUPPRESS)
    parser.add_argument("--text", help=argparse.SUPPRESS)
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.phase:
        print(json.dumps(phase(args.phase, args.text, args.image, args.workdir)))
        return 0

    args.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"{'N':>9} {'proxy s':>8} {'fit s':>7} {'fit/proxy':>9} {'apply rows/s':>13} "
          f"{'RSS+ proxy MB':>13} {'RSS+ fit MB':>11} {'RSS+ apply MB':>13}")
    for rows in args.rows:
        text, image = args.data_dir / f"text_{rows}.npy", args.data_dir / f"image_{rows}.npy"
        generate(text, rows, seed=0, alpha=1.3)
        generate(image, rows, seed=1, alpha=1.8)
        with tempfile.TemporaryDirectory(dir=args.data_dir) as workdir:
            run_phase("proxy", text, image, workdir)  # warm the page cache for both arrays
            proxy = run_phase("proxy", text, image, workdir)
            fit = run_phase("fit", text, image, workdir)
            apply = run_phase("apply", text, image, workdir)
        print(f"{rows:>9} {proxy['seconds']:>8.2f} {fit['seconds']:>7.2f} {fit['seconds'] / proxy['seconds']:>9.2f} "
              f"{apply['rows'] / apply['seconds']:>13,.0f} {proxy['rss_growth_mb']:>13.0f} "
              f"{fit['rss_growth_mb']:>11.0f} {apply['rss_growth_mb']:>13.0f}")
    print("targets: fit/proxy ≤ 5; fit and apply RSS growth ≤ 300 MB and independent of N")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark scripts run as their users run them (tiny sizes; no time is asserted), so a
script a GPU session depends on cannot rot unnoticed on the CPU."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_realign_prints_every_ratio(tmp_path):
    out = run_script("bench_realign.py", "--rows", "3000", "--repeats", "1", "--data-dir", str(tmp_path))
    lines = out.splitlines()
    header = next(line for line in lines if "fit/proxy" in line)
    assert "apply rows/s" in header and "apply/write" in header
    row = next(line.split() for line in lines if line.split()[:1] == ["3000"])
    assert len(row) == 10 and all(float(value.replace(",", "")) >= 0 for value in row[1:])
    assert not list(tmp_path.glob("tmp*"))  # the phases' work folder is gone


def test_bench_embed_compares_embed_with_the_bare_forward():
    out = run_script("bench_embed.py", "--texts", "96", "--batch", "32", "--repeats", "1", "--threads", "1")
    assert "stand-in of shape tiny" in out and "tokens/s" in out
    ratio = float(out.split("embed / bare")[1].split()[0])
    assert 0 < ratio < 1.5  # the job contains the forward, so it cannot be much faster than it

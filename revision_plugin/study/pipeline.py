"""A cached step runner: each step writes into its own folder and, last, a ``.done.json``
marker holding the fingerprint of everything it depends on (settings and upstream steps).

A rerun with the same fingerprint skips the step (its recorded summary is reused); a
changed setting, a missing marker (an interrupted run) or ``--force`` redoes it from an
empty folder. Every step logs one line with its summary and wall time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from revision_plugin.store.layout import atomic_write_json

logger = logging.getLogger(__name__)

MARKER = ".done.json"


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StepResult:
    name: str
    folder: Path
    fingerprint: str
    summary: dict
    seconds: float
    cached: bool


@dataclass
class Runner:
    force: bool = False
    results: list[StepResult] = field(default_factory=list)

    def step(self, name: str, folder: Path, key, fn: Callable[[Path], dict]) -> StepResult:
        """Run ``fn(folder)`` unless ``folder`` holds a marker with the fingerprint of ``key``."""
        fp = fingerprint(name, key)
        marker = folder / MARKER
        if not self.force and marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("fingerprint") == fp:
                result = StepResult(name, folder, fp, done["summary"], 0.0, True)
                self.results.append(result)
                logger.info("%-28s cached  (%s)", name, _line(done["summary"]))
                return result
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        started = time.perf_counter()
        summary = fn(folder) or {}
        seconds = time.perf_counter() - started
        atomic_write_json(marker, {"fingerprint": fp, "seconds": seconds, "summary": summary}, fsync=False)
        result = StepResult(name, folder, fp, summary, seconds, False)
        self.results.append(result)
        logger.info("%-28s %6.1f s  %s", name, seconds, _line(summary))
        return result

    def timings(self) -> list[dict]:
        return [{"step": r.name, "seconds": round(r.seconds, 2), "cached": r.cached} for r in self.results]


def _line(summary: dict) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in summary.items() if not isinstance(v, (dict, list)))

"""A cached step runner: each step writes into its own folder and, last, a ``.done.json``
marker holding the fingerprint of everything it depends on (settings and upstream steps).

A rerun with the same fingerprint skips the step (its recorded summary and wall time are
reused); a changed setting, changed plugin source (:func:`code_version`), a missing marker
(an interrupted run) or ``--force`` redoes it from an empty folder. Every step logs one line
with its summary and wall time.
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


def code_version() -> str:
    """A hash of the plugin's own source: a cached step never outlives the code that made it."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")) + sorted((root / "hosts" / "patches").rglob("*.patch")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def revision(*argv) -> None:
    """A ``revision`` command, in-process, exactly as a user types it; a non-zero exit stops the study."""
    from revision_plugin.cli import main
    from revision_plugin.errors import RevisionError

    code = main([str(a) for a in argv])
    if code:
        raise RevisionError(f"`revision {' '.join(map(str, argv[:2]))} ...` failed with exit code {code}")


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
    code: str = field(default_factory=code_version)

    def step(self, name: str, folder: Path, key, fn: Callable[[Path], dict]) -> StepResult:
        """Run ``fn(folder)`` unless ``folder`` holds a marker with the fingerprint of ``key``."""
        fp = fingerprint(name, key, self.code)
        marker = folder / MARKER
        if not self.force and marker.is_file():
            try:
                done = json.loads(marker.read_text())
            except (OSError, ValueError):  # a damaged marker: the step is redone, never trusted
                done = {}
            if isinstance(done, dict) and done.get("fingerprint") == fp and isinstance(done.get("summary"), dict):
                result = StepResult(name, folder, fp, done["summary"], float(done.get("seconds", 0.0)), True)
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
        """Every step's wall time when it ran (a cached step keeps the time of the run that made it)."""
        return [{"step": r.name, "seconds": round(r.seconds, 2), "cached": r.cached} for r in self.results]


def _line(summary: dict) -> str:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in summary.items() if not isinstance(v, (dict, list)))

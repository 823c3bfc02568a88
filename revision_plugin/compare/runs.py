"""lmms-eval result folders → :class:`Run` (one per method), with each file's provenance.

Runs are keyed by their folder, never by the model name inside the files (lmms-eval names
runs after ``pretrained=``, so two methods can share a name). A task seen in several files
keeps the newest. Files written by ``revision eval`` carry a provenance block (package
versions, checkpoint path + fingerprint, tower, conversation template, judge, empty answers);
a run whose files name *different* checkpoint fingerprints is refused: one label, one model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from revision_plugin.errors import BadInputError, MissingFileError, RevisionError
from revision_plugin.lmms.args import parse_model_args
from revision_plugin.lmms.provenance import results_provenance


@dataclass
class Run:
    """All lmms-eval results found under one RUN path, merged task by task."""

    label: str
    path: Path
    results: dict[str, dict] = field(default_factory=dict)  # task -> metrics ("metric,filter" -> value)
    n_samples: dict[str, int] = field(default_factory=dict)  # task -> effective samples
    source: dict[str, Path] = field(default_factory=dict)  # task -> file it came from
    versions: dict[Path, str] = field(default_factory=dict)  # file -> lmms-eval version (real one when recorded)
    limits: dict[Path, object] = field(default_factory=dict)  # file -> --limit when one was used
    model_args: dict[Path, str] = field(default_factory=dict)
    provenance: dict[Path, dict] = field(default_factory=dict)  # file -> revision eval's provenance block
    superseded: list[tuple[str, Path]] = field(default_factory=list)

    def metric(self, task: str, key: str, maximum: float | None = None) -> float | None:
        """The metric's value; ``None`` when absent (not evaluated). A value that is present but
        not a finite number, or outside ``[0, maximum]`` (the metric's own scale, from
        :mod:`.benchmarks`), is an error naming the file and key: it is never printed, and
        never shown as "not evaluated"."""
        metrics = self.results.get(task, {})
        if key not in metrics:
            return None
        value = metrics[key]
        where = f"{self.source.get(task, self.path)}: results[{task!r}][{key!r}]"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadInputError(f"{where} is {value!r}, not a number; fix or re-run this task's evaluation")
        if value < 0 or (maximum is not None and value > maximum):
            scale = "a fraction in [0, 1]" if maximum == 1 else f"on a 0-{maximum:g} scale"
            hint = "; was it written as a percentage?" if maximum == 1 and value <= 100 else ""
            raise BadInputError(f"{where} is {value!r}, outside its range: this metric is {scale}{hint}")
        return float(value)

    def task_provenance(self, task: str) -> dict:
        file = self.source.get(task)
        return self.provenance.get(file, {}) if file is not None else {}

    def fingerprints(self) -> dict[str, list[Path]]:
        """checkpoint fingerprint -> the files that recorded it (superseded ones included)."""
        out: dict[str, list[Path]] = {}
        for file in sorted(self.provenance):
            fp = (self.provenance.get(file, {}).get("checkpoint") or {}).get("fingerprint")
            if fp:
                out.setdefault(fp, []).append(file)
        return out

    def limited_tasks(self) -> dict[str, object]:
        """task -> the ``--limit`` of the file its result comes from (superseded files left out)."""
        return {task: self.limits[file] for task, file in sorted(self.source.items()) if file in self.limits}

    def unattributed_checkpoints(self) -> dict[str, list[Path]]:
        """``pretrained=`` as recorded -> the files *without* a checkpoint fingerprint (plain
        lmms-eval) that name it: lmms-eval files two checkpoints whose paths end alike
        (``a/exp/final``, ``b/exp/final``) under the same ``exp__final`` folder."""
        out: dict[str, list[Path]] = {}
        for file in sorted(self.model_args):
            if (self.provenance.get(file, {}).get("checkpoint") or {}).get("fingerprint"):
                continue
            try:
                pretrained = parse_model_args(self.model_args[file]).get("pretrained")
            except RevisionError:
                continue
            if pretrained:
                out.setdefault(os.path.normpath(pretrained), []).append(file)
        return out

    def check_single_checkpoint(self) -> None:
        fps = self.fingerprints()
        if len(fps) > 1:
            detail = "; ".join(f"{fp}: {', '.join(str(f) for f in files[:3])}" for fp, files in fps.items())
            raise RevisionError(f"run {self.label!r} ({self.path}) mixes results of {len(fps)} different checkpoints "
                                f"({detail}); give each checkpoint its own folder/label")
        named = self.unattributed_checkpoints()
        if len(named) > 1:
            detail = "; ".join(f"pretrained={p}: {', '.join(str(f) for f in files[:3])}" for p, files in named.items())
            raise RevisionError(f"run {self.label!r} ({self.path}) mixes results of {len(named)} different pretrained= "
                                f"checkpoints, without fingerprints ({detail}); give each checkpoint its own "
                                "--output_path (`revision eval` records which checkpoint made each file)")


def _result_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise MissingFileError(f"run folder not found: {path}")
    files = sorted(p for p in path.rglob("*_results.json") if p.is_file())
    if not files:
        raise RevisionError(f"{path}: no lmms-eval *_results.json files under this folder")
    return files


def read_results_file(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInputError(f"{file}: not a readable lmms-eval results json ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise BadInputError(f"{file}: no 'results' object; is this an lmms-eval *_results.json?")
    return data


def load_run(path: str | Path, label: str | None = None, *, check_checkpoint: bool = True) -> Run:
    """Read every ``*_results.json`` under ``path``; a task seen twice keeps the newest file."""
    path = Path(path)
    run = Run(label=label or path.name, path=path)
    dated: dict[str, tuple[str, Path]] = {}
    for file in _result_files(path):
        data = read_results_file(file)
        stamp = str(data.get("date") or file.name.split("_results.json")[0])
        prov = results_provenance(data)
        run.provenance[file] = prov
        real = (prov.get("versions") or {}).get("lmms_eval")
        # lmms-eval's own field is `git branch@sha` of whatever repository encloses it (notes)
        run.versions[file] = str(real) if real else f"{data.get('lmms_eval_version', 'unknown')} (unverified)"
        config = data.get("config") or {}
        run.model_args[file] = str(config.get("model_args", ""))
        if config.get("limit") not in (None, -1, -1.0):
            run.limits[file] = config.get("limit")
        n_samples = data.get("n-samples") or {}
        for task, metrics in data["results"].items():
            if not isinstance(metrics, dict):
                raise BadInputError(f"{file}: results[{task!r}] is not an object")
            previous = dated.get(task)
            if previous is not None:
                if previous[0] > stamp:
                    run.superseded.append((task, file))
                    continue
                run.superseded.append((task, previous[1]))
            dated[task] = (stamp, file)
            run.results[task] = metrics
            run.source[task] = file
            count = (n_samples.get(task) or {}).get("effective")
            if isinstance(count, int):
                run.n_samples[task] = count
    if check_checkpoint:
        run.check_single_checkpoint()
    return run


def unique_labels(paths: list[Path]) -> list[str]:
    """Folder names, extended by parent folders until they are unique."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise RevisionError(f"the same run was given twice: {[str(p) for p in paths]}")


_unique_labels = unique_labels

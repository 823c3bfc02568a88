"""The miniature ReVision study (`revision demo --quick`) through the real components: PIL
scenes, a tiny CLIP trained here, `revision embed/fit/report`, LLaVA's own trainer through the
`revision:` tower, real lmms-eval through `revision_llava`, `revision compare`.

Asserts what must hold for the study to mean anything - never which alignment wins."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")
pytest.importorskip("llava")

from revision_plugin.compare.runs import load_run  # noqa: E402
from revision_plugin.study.settings import BLIND, PAIRED, default_settings, slug  # noqa: E402
from revision_plugin.study.table import scores  # noqa: E402

LABELS = [*default_settings().variants, BLIND]


def _demo(out: Path) -> int:
    from revision_plugin.cli import main

    return main(["demo", "--quick", "--out", str(out), "--threads", "1"])


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("study") / "demo_out"
    assert _demo(out) == 0
    return out


def _run(study: Path, stage: str, label: str) -> Path:
    """One `revision eval` output folder: a results file per task, each with its provenance."""
    folder = study / "seed-0" / "eval" / stage / slug(label)
    assert len(list(folder.rglob("*_results.json"))) == 4, (stage, label)
    return folder


def test_tiny_clip_retrieves_far_above_chance_and_has_a_modality_gap(study):
    metrics = json.loads((study / "seed-0" / "models" / "clip" / "clip_metrics.json").read_text())
    assert metrics["recall_at_1_text_to_image"] > 10 * metrics["chance"], metrics
    assert metrics["recall_at_1_image_to_text"] > 10 * metrics["chance"], metrics
    # a gap: paired texts and images are far from identical and their centroids differ
    assert metrics["paired_cosine"] < 0.95 and metrics["centroid_gap"] > 0.05, metrics
    report = json.loads((study / "seed-0" / "report" / "report.json").read_text())
    # the report refits every operator on its fit split: its held-out rows are never fit rows
    assert {"mean_shift", "c3", "blockwise", "realign"} <= set(report["operators"])
    assert all(entry["source"] == "fitted on the fit split" for label, entry in report["operators"].items()
               if label != "raw")


def test_with_image_after_stage_1_beats_blind(study):
    paired = scores(_run(study, "stage1", PAIRED))
    blind = scores(_run(study, "stage1", BLIND))
    assert paired["Caption"] > blind["Caption"], (paired, blind)


def test_every_variant_has_lmms_eval_results_and_a_table_row(study):
    settings = json.loads((study / "settings.json").read_text())
    assert settings["preset"] == "quick" and settings["seeds"] == 1 and settings["train"]["num_tokens"] == 1
    for stage in ("stage1", "stage2"):
        for label in LABELS:
            run = load_run(_run(study, stage, label))
            assert {"revision_pope", "mme", "mmstar", "revision_study_caption"} <= set(run.results), (stage, label)
            assert len(list(run.path.rglob("*_samples_*.jsonl"))) == 4
            # written by `revision eval`: the checkpoint and the template it was asked in are recorded
            provenance = run.task_provenance("revision_pope")
            assert provenance["checkpoint"]["fingerprint"] and provenance["conv_template"]["used"] == "llama_3"
        # `revision compare` of the seed's own eval folders, in the seed's folder
        with open(study / "seed-0" / f"table_{stage}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert [r["method"] for r in rows] == LABELS
        assert all(r["POPE"] and r["MME"] for r in rows)  # MME from lmms-eval's `mme` scores
        assert (study / "seed-0" / f"table_{stage}.png").stat().st_size > 0
    assert not list(study.glob("table_stage*"))
    table = (study / "study_table.md").read_text()
    assert all(f"| {label} |" in table for label in LABELS)
    data = json.loads((study / "study_table.json").read_text())
    assert list(data["stages"]["stage2"]["methods"]) == LABELS and (study / "study_table.csv").stat().st_size
    summary = (study / "summary.md").read_text()
    first = summary.split("\n\n")[0]
    assert "paper" in first and "one seed cannot separate" in first and "beats" not in summary
    # every folder the summary points to exists
    for path in re.findall(r"`(seed-K/[^`]+)`", summary):
        assert (study / path.replace("seed-K", "seed-0")).exists(), path
    probe = json.loads((study / "seed-0" / "models" / "llm_probe" / "llm_probe.json").read_text())
    assert all(0.0 <= probe[k] <= 1.0 for k in probe if k != "scenes"), probe


def test_a_cached_rerun_does_no_work(study):
    checkpoints = sorted((study / "seed-0" / "runs").rglob("*.safetensors")) + sorted(
        (study / "seed-0" / "runs").rglob("mm_projector.bin"))
    before = {p: p.stat().st_mtime_ns for p in checkpoints}
    results = {p: p.stat().st_mtime_ns for p in (study / "seed-0" / "eval").rglob("*_results.json")}
    assert checkpoints and results
    assert _demo(study) == 0
    timings = json.loads((study / "timings.json").read_text())["steps"]
    assert timings and all(step["cached"] for step in timings), [s for s in timings if not s["cached"]]
    # the wall times of the run that did the work survive a cached rerun
    assert sum(step["seconds"] for step in timings) > 0
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == before
    assert {p: p.stat().st_mtime_ns for p in (study / "seed-0" / "eval").rglob("*_results.json")} == results

"""The study's tables: ``revision compare`` per seed, and the study table over seeds.

``seed-K/table_stage{1,2}.{md,csv,png,json}``: ``revision compare`` of seed K's eval folders,
the paper's Table 1 layout (MME as (perception + cognition) / 2800, no Caption column, Avg
over the benchmarks present).

``study_table.{md,csv,json}``: every variant at both stages, per column the mean, the std and
the per-seed values. Columns (accuracy %): POPE (pooled; adv/pop/rand in the compare details),
MME (score / its maximum over the five categories asked here, not the full benchmark's 2800),
MMStar (mean over its l2 categories), Caption (objects named with the right colour and shape),
Avg of the four.
"""

from __future__ import annotations

import csv
import json
import logging
import statistics
from pathlib import Path

from revision_plugin.study.tasks import MME_COGNITION, MME_PERCEPTION

logger = logging.getLogger(__name__)

COLUMNS = ("POPE", "MME", "MMStar", "Caption")
ALL_COLUMNS = (*COLUMNS, "Avg")
STAGES = ("stage1", "stage2")
STAGE_TITLES = {
    "stage1": "after stage 1 (projector trained on text only; tested on real images)",
    "stage2": "after stage 2 (the same small real-image instruction set for every variant)",
}
# The demo's MME task is lmms-eval's `mme` (scores), not `revision_mme` (per-question accuracy,
# compare's default): "total" is the choice that fills the column from those scores.
COMPARE_MME = "total"
FORMATS = ("md", "csv", "png", "json")


def scores(run_folder: Path) -> dict[str, float]:
    """The study-table columns of one ``revision eval`` output folder (read as ``revision compare`` reads it)."""
    from revision_plugin.compare.runs import load_run

    r = load_run(run_folder).results
    mme_max = 200.0 * (len(MME_PERCEPTION) + len(MME_COGNITION))
    values = {
        "POPE": 100 * r["revision_pope"]["pope_accuracy,none"],
        "MME": 100 * (r["mme"]["mme_perception_score,none"] + r["mme"]["mme_cognition_score,none"]) / mme_max,
        "MMStar": 100 * r["mmstar"]["average,none"],
        "Caption": 100 * r["revision_study_caption"]["caption_attribute_accuracy,none"],
    }
    values["Avg"] = sum(values[c] for c in COLUMNS) / len(COLUMNS)
    return values


def write_compare_tables(out: Path, per_seed: list[dict]) -> list[Path]:
    """``revision compare`` of every seed's eval folders, both stages, into that seed's folder."""
    from revision_plugin.study.pipeline import revision

    written = []
    for k, seed in enumerate(per_seed):
        seed_dir = out / f"seed-{k}"
        for stage in STAGES:
            labels = list(seed["results"][stage])
            argv = ["compare", *(seed_dir / seed["results"][stage][label] for label in labels), "--mme", COMPARE_MME]
            for label in labels:
                argv += ["--label", label]
            paths = [seed_dir / f"table_{stage}.{suffix}" for suffix in FORMATS]
            for path in paths:
                argv += ["--out", path]
            revision(*argv)
            written += paths
    return written


def study_table(out: Path, per_seed: list[dict]) -> dict:
    """``{"seeds", "columns", "stages": {stage: {"title", "methods": {label: {column: {"mean", "std",
    "values"}}}}}}``; ``std`` is ``None`` with one seed (a std of one value does not exist)."""
    labels = list(per_seed[0]["results"]["stage2"])
    stages = {}
    for stage in STAGES:
        methods = {}
        for label in labels:
            rows = [scores(out / f"seed-{k}" / seed["results"][stage][label]) for k, seed in enumerate(per_seed)]
            methods[label] = {c: _stats([r[c] for r in rows]) for c in ALL_COLUMNS}
        stages[stage] = {"title": STAGE_TITLES[stage], "methods": methods}
    return {"seeds": len(per_seed), "columns": list(ALL_COLUMNS), "stages": stages}


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "values": values}


def cell(stats: dict) -> str:
    """``31.0 ± 3.7`` (one seed: ``31.0``), as the markdown table shows a column."""
    if stats["std"] is None:
        return f"{stats['mean']:.1f}"
    return f"{stats['mean']:.1f} ± {stats['std']:.1f}"


def table_markdown(table: dict) -> str:
    lines = []
    for stage in STAGES:
        lines += [f"**{table['stages'][stage]['title']}**", "", "| Method | " + " | ".join(ALL_COLUMNS) + " |",
                  "|---|" + "---|" * len(ALL_COLUMNS)]
        for label, columns in table["stages"][stage]["methods"].items():
            lines.append(f"| {label} | " + " | ".join(cell(columns[c]) for c in ALL_COLUMNS) + " |")
        lines.append("")
    n = table["seeds"]
    lines.append(f"Mean ± std over {n} seeds." if n > 1 else "One seed (run `revision demo --seeds N` for mean ± std).")
    lines.append("Per-seed `revision compare` tables: `seed-K/table_stage{1,2}.{md,csv,png,json}` (one seed each, "
                 "MME as (perception + cognition) / 2800, no Caption column, so their numbers differ from these).")
    return "\n".join(lines) + "\n"


def table_rows(table: dict) -> list[dict]:
    """One CSV row per stage, method and column: mean, std (empty with one seed), then each seed's value."""
    rows = []
    for stage in STAGES:
        for label, columns in table["stages"][stage]["methods"].items():
            for column in ALL_COLUMNS:
                stats = columns[column]
                row = {"stage": stage, "method": label, "column": column, "mean": f"{stats['mean']:.4f}",
                       "std": "" if stats["std"] is None else f"{stats['std']:.4f}"}
                row.update({f"seed-{k}": f"{v:.4f}" for k, v in enumerate(stats["values"])})
                rows.append(row)
    return rows


def write_study_table(out: Path, table: dict) -> str:
    """``study_table.md``, ``.csv`` and ``.json`` under ``out``; returns the markdown."""
    markdown = table_markdown(table)
    (out / "study_table.md").write_text(markdown)
    (out / "study_table.json").write_text(json.dumps(table, indent=1) + "\n")
    rows = table_rows(table)
    with open(out / "study_table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return markdown

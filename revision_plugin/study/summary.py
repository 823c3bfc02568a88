"""The study's outputs: ``revision compare`` tables per stage, the study table over seeds,
and a two-sentence ``summary.md`` that says where the result agrees with the paper and
where it contradicts it.

Study-table columns (accuracy %): POPE (pooled; adv/pop/rand in the compare details), MME
(score / its maximum over the five categories asked here; the paper-wide MME column of
``revision compare`` divides by the full benchmark's 2800 instead), MMStar (mean over its
l2 categories), Caption (objects named with the right colour and shape), Avg of the four.
"""

from __future__ import annotations

import logging
import statistics
from pathlib import Path

from revision_plugin.study.settings import ALIGN_VARIANTS, BLIND, PAIRED, StudySettings
from revision_plugin.study.tasks import MME_COGNITION, MME_PERCEPTION

logger = logging.getLogger(__name__)

COLUMNS = ("POPE", "MME", "MMStar", "Caption")
PAPER_ORDER = "ReAlign > C3 > W/o Align > Blind (Table 1; Mean Shift and BC in its geometry tables)"


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


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def study_table(out: Path, per_seed: list[dict]) -> tuple[str, dict]:
    """Markdown of every variant at both stages, and the per-label means used by the summary."""
    labels = list(per_seed[0]["results"]["stage2"])
    lines, means = [], {}
    for stage in ("stage1", "stage2"):
        title = "after stage 1 (projector trained on text only; tested on real images)" if stage == "stage1" \
            else "after stage 2 (the same small real-image instruction set for every variant)"
        lines += [f"**{title}**", "", "| Method | " + " | ".join((*COLUMNS, "Avg")) + " |",
                  "|---|" + "---|" * (len(COLUMNS) + 1)]
        avg, std, caption = means[stage], means[f"{stage} std"], means[f"{stage} caption"] = {}, {}, {}
        for label in labels:
            rows = [scores(out / f"seed-{k}" / seed["results"][stage][label]) for k, seed in enumerate(per_seed)]
            lines.append(f"| {label} | " + " | ".join(_cell([r[c] for r in rows]) for c in (*COLUMNS, "Avg")) + " |")
            avg[label] = statistics.mean(r["Avg"] for r in rows)
            std[label] = statistics.stdev(r["Avg"] for r in rows) if len(rows) > 1 else 0.0
            caption[label] = statistics.mean(r["Caption"] for r in rows)
        lines.append("")
    n = len(per_seed)
    lines.append(f"Mean ± std over {n} seeds." if n > 1 else "One seed (run `revision demo --seeds N` for mean ± std).")
    return "\n".join(lines) + "\n", means


def _mean(per_seed: list[dict], part: str, key: str) -> float:
    return statistics.mean(float(seed[part][key]) for seed in per_seed)


def _ranking(values: dict[str, float]) -> str:
    return " > ".join(f"{k} {values[k]:.1f}" for k in sorted(values, key=values.get, reverse=True))


def summary_text(means: dict, per_seed: list[dict]) -> str:
    def m(part: str, key: str) -> float:
        return _mean(per_seed, part, key)

    aligned = [label for label, _ in ALIGN_VARIANTS]
    s1, s2 = means["stage1"], means["stage2"]
    best1 = max(aligned, key=lambda k: s1[k])
    best2 = max(aligned, key=lambda k: s2[k])
    ranking = _ranking(s2)
    agree = []
    if best2 != "ReAlign" or best1 != "ReAlign":
        agree.append(f"it contradicts the paper's ReAlign-first ranking ({PAPER_ORDER}): "
                     f"the best alignment is {best1} after stage 1 and {best2} after stage 2")
    else:
        agree.append(f"it agrees with the paper ({PAPER_ORDER}) in putting ReAlign first at both stages")
    runner_up = max((k for k in aligned if k != best2), key=lambda k: s2[k])
    lead, spread = s2[best2] - s2[runner_up], means["stage2 std"][best2]
    if lead < spread:
        agree.append(f"but {best2}'s lead over {runner_up} after stage 2 is {lead:.1f} points against a std over seeds "
                     f"of {spread:.1f}: a tie, not a win")
    if s2.get("C3", 0) > s2["ReAlign"]:
        agree.append("C3 beats ReAlign")
    if s2["W/o Align"] >= s2["ReAlign"]:
        agree.append("raw text (W/o Align) is not worse than ReAlign")
    if s2[PAIRED] < max(s2[k] for k in aligned):
        agree.append("text-only pretraining beats the paired w/ Image run")
    return (
        f"After stage 2 the study ranks (Avg %) {ranking}; after stage 1 alone (text-only projector tested on pixels) "
        f"ReAlign scores {s1['ReAlign']:.1f} vs W/o Align {s1['W/o Align']:.1f}, w/ Image {s1[PAIRED]:.1f} and "
        f"Blind {s1[BLIND]:.1f}, with a tiny CLIP whose held-out recall@1 is {m('clip', 'recall@1'):.2f} "
        f"(chance {m('clip', 'chance'):.3f}) and modality gap {m('clip', 'gap'):.2f}. "
        f"Against the paper, {'; '.join(agree)}.\n\n"
        f"Why the alignments tie: on held-out rows the tiny CLIP's unpaired text-image centroid gap is "
        f"{m('geometry', 'gap_raw'):.3f}, against {m('geometry', 'gap_floor'):.3f} between two samples of one "
        f"modality (the geometry report's sampling floor), and ReAlign brings it to {m('geometry', 'gap_realign'):.3f}: "
        f"at this scale there is hardly a gap for any operator to close (`seed-K/report/`).\n\n"
        f"Why the yes/no and multiple-choice columns say little here: before any projector exists, the tiny Llama "
        f"answers POPE-style existence questions {100 * m('probe', 'existence_from_caption_text'):.0f}% right with the "
        f"scene's caption in the prompt and {100 * m('probe', 'existence_from_scene_vector'):.0f}% with the vector it "
        f"was pretrained to read (chance 50%), and its caption recall is "
        f"{100 * m('probe', 'caption_from_scene_vector'):.0f}% from the scene's vector vs "
        f"{100 * m('probe', 'caption_from_mean_vector'):.0f}% from the mean vector (`models/llm_probe/`); "
        f"the Caption column is the one that measures what the projector carries (after stage 1: "
        f"{_ranking(means['stage1 caption'])}), and differences smaller than the ± over seeds are noise.\n"
    )


def write_outputs(out: Path, per_seed: list[dict], settings: StudySettings, runner) -> str:
    from revision_plugin.study.pipeline import revision

    seed0 = out / "seed-0"
    for stage in ("stage1", "stage2"):
        labels = list(per_seed[0]["results"][stage])
        dirs = [seed0 / per_seed[0]["results"][stage][label] for label in labels]
        argv = ["compare", *dirs]
        for label in labels:
            argv += ["--label", label]
        for suffix in ("md", "csv", "png", "json"):
            argv += ["--out", out / f"table_{stage}.{suffix}"]
        revision(*argv)
    table, means = study_table(out, per_seed)
    (out / "study_table.md").write_text(table)
    (out / "summary.md").write_text(summary_text(means, per_seed))
    return table

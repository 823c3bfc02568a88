"""``summary.md``: the result in two sentences, then why the alignments tie and why the yes/no
columns say little at this scale.

Every comparison of two variants follows one rule (:class:`Difference`): a difference smaller
than the larger of the two variants' std over seeds is *within noise*; only a larger one is
reported as one variant *ahead of* the other; with one seed nothing is separated.
"""

from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from revision_plugin.study.settings import BLIND, PAIRED, StudySettings
from revision_plugin.study.table import cell, study_table, write_compare_tables, write_study_table

logger = logging.getLogger(__name__)

# The paper's Table 1 order of the variants the study has (Mean Shift and BC appear only in its
# geometry tables); checked pair by pair, each next to its neighbour, plus ReAlign vs w/ Image.
PAPER_RANKING = ("ReAlign", "C3", "W/o Align", BLIND)
PAPER_ORDER = " > ".join(PAPER_RANKING) + ", Table 1"


@dataclass(frozen=True)
class Difference:
    """``first − second`` in one column at one stage, judged against the noise over seeds."""

    first: str
    second: str
    diff: float
    noise: float | None  # the larger of the two stds over seeds; None with one seed

    @property
    def separated(self) -> bool:
        return self.noise is not None and abs(self.diff) >= self.noise

    def phrase(self) -> str:
        if self.noise is None:
            return f"{self.first} vs {self.second} is {self.diff:+.1f}, which one seed cannot separate"
        if self.separated:
            high, low = (self.first, self.second) if self.diff > 0 else (self.second, self.first)
            return f"{high} is ahead of {low} by {abs(self.diff):.1f} (std {self.noise:.1f})"
        return f"{self.first} vs {self.second} is within noise ({self.diff:+.1f}, std {self.noise:.1f})"


def difference(methods: dict, first: str, second: str, column: str = "Avg") -> Difference:
    """``methods``: one stage of the study table (``{label: {column: {"mean", "std", ...}}}``)."""
    a, b = methods[first][column], methods[second][column]
    noise = None if a["std"] is None or b["std"] is None else max(a["std"], b["std"])
    return Difference(first, second, a["mean"] - b["mean"], noise)


def _names(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def standing(methods: dict, column: str = "Avg") -> str:
    """Where the variant with the highest mean stands against every other one, by the rule."""
    order = sorted(methods, key=lambda k: methods[k][column]["mean"], reverse=True)
    best, others = order[0], order[1:]
    if methods[best][column]["std"] is None:
        return (f"{best} has the highest {column} ({cell(methods[best][column])}) and {order[-1]} the lowest "
                f"({cell(methods[order[-1]][column])}), but one seed cannot separate any two variants")
    diffs = [difference(methods, best, other, column) for other in others]
    near = [d.second for d in diffs if not d.separated]
    far = [d.phrase() for d in diffs if d.separated]
    text = f"{best} has the highest {column} ({cell(methods[best][column])})"
    if near:
        text += f" but {_names(near)} {'is' if len(near) == 1 else 'are'} within noise of it"
    if far:
        text += (", and " if near else ": ") + "; ".join(far)
    return text


def paper_comparison(methods: dict) -> str:
    """The paper's ranking checked pair by pair: agrees, contradicts, or neither (within noise)."""
    pairs = [(a, b) for a, b in zip(PAPER_RANKING, PAPER_RANKING[1:]) if a in methods and b in methods]
    if "ReAlign" in methods and PAIRED in methods:
        pairs.append(("ReAlign", PAIRED))  # the paper's text-only run against its paired baseline
    diffs = [difference(methods, a, b) for a, b in pairs]
    agree = [d.phrase() for d in diffs if d.separated and d.diff > 0]
    contradict = [d.phrase() for d in diffs if d.separated and d.diff < 0]
    neither = [d.phrase() for d in diffs if not d.separated]
    parts = []
    if agree:
        parts.append("it agrees where " + "; ".join(agree))
    if contradict:
        parts.append("it contradicts it where " + "; ".join(contradict))
    if neither:
        parts.append("; ".join(neither) + ": neither agreement nor contradiction")
    return f"Against the paper's ranking ({PAPER_ORDER}) after stage 2, " + "; ".join(parts) + "."


def _values(per_seed: list[dict], part: str, key: str) -> list[float]:
    return [float(seed[part][key]) for seed in per_seed]


def _pm(per_seed: list[dict], part: str, key: str, scale: float = 1.0, digits: int = 3) -> str:
    values = [scale * v for v in _values(per_seed, part, key)]
    text = f"{statistics.mean(values):.{digits}f}"
    return text + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def gap_paragraph(per_seed: list[dict]) -> str:
    """The three gap figures, named apart, and why ReAlign's may sit below the sampling floor."""
    def mean(part: str, key: str) -> float:
        return statistics.mean(_values(per_seed, part, key))

    geometry = per_seed[0]["geometry"]
    n_eval, n_fit = geometry["eval_rows"], geometry["fit_rows"]
    floor, realign = mean("geometry", "gap_floor"), mean("geometry", "gap_realign")
    # an operator refitted on n_fit rows carries its fit means' noise too: a perfect one shows about this
    perfect = floor * math.sqrt(1 + n_eval / n_fit)
    if realign < floor:
        # a root-mean-square, not a lower bound: with few effective dimensions one draw often lands under it
        why = ("below the floor only by sampling scatter: the floor is a root-mean-square, not a lower bound, "
               "and one draw often lands under it (the operator never saw these rows)")
    else:
        why = "at the level of that noise"
    return (
        f"Why the alignments tie: the tiny CLIP (held-out recall@1 {_pm(per_seed, 'clip', 'recall@1', digits=2)}, "
        f"chance {mean('clip', 'chance'):.3f}) has a paired gap of {_pm(per_seed, 'clip', 'gap')}, the centroid "
        f"distance of its {per_seed[0]['clip'].get('pairs', 'held-out')} held-out caption-image pairs of the same "
        f"scenes, where most sampling noise cancels (`seed-K/models/clip/clip_metrics.json`). The geometry report's "
        f"unpaired centroid gap compares {n_eval} held-out stage-1 captions with {n_eval} held-out operator images of "
        f"other scenes: {_pm(per_seed, 'geometry', 'gap_raw')} raw, against a sampling floor of "
        f"{_pm(per_seed, 'geometry', 'gap_floor')} (the root-mean-square gap of two independent samples of this "
        f"size from one population), and "
        f"{_pm(per_seed, 'geometry', 'gap_realign')} after ReAlign refitted on the other {n_fit} rows of each side, "
        f"{why}; an operator that closed the population gap exactly would show about {perfect:.3f} here, so at this "
        f"scale there is hardly a gap for any operator to close (`seed-K/report/`).\n"
    )


def probe_paragraph(per_seed: list[dict], table: dict) -> str:
    def pct(key: str) -> str:
        return _pm(per_seed, "probe", key, scale=100, digits=0) + "%"

    return (
        f"Why the yes/no and multiple-choice columns say little here: before any projector exists, the tiny Llama "
        f"answers POPE-style existence questions {pct('existence_from_caption_text')} right with the scene's caption "
        f"in the prompt and {pct('existence_from_scene_vector')} with the vector it was pretrained to read (chance "
        f"50%), and its caption recall is {pct('caption_from_scene_vector')} from the scene's vector vs "
        f"{pct('caption_from_mean_vector')} from the mean vector (`seed-K/models/llm_probe/llm_probe.json`); the "
        f"Caption column is the one that measures what the projector carries, and after stage 1 "
        f"{standing(table['stages']['stage1']['methods'], 'Caption')}.\n"
    )


def summary_text(table: dict, per_seed: list[dict]) -> str:
    """``table``: :func:`revision_plugin.study.table.study_table`; ``per_seed``: what ``run_seed`` returned."""
    s1, s2 = table["stages"]["stage1"]["methods"], table["stages"]["stage2"]["methods"]
    n = table["seeds"]
    over = f"mean ± std over {n} seeds" if n > 1 else "one seed"
    result = (f"After stage 2 (Avg % of the four columns, {over}) {standing(s2)}; after stage 1 alone "
              f"(text-only projector tested on pixels) {standing(s1)}. {paper_comparison(s2)}")
    return f"{result}\n\n{gap_paragraph(per_seed)}\n{probe_paragraph(per_seed, table)}"


def write_outputs(out: Path, per_seed: list[dict], settings: StudySettings, runner) -> str:
    """Per seed ``seed-K/table_stage{1,2}.{md,csv,png,json}`` (``revision compare``), then
    ``study_table.{md,csv,json}`` and ``summary.md`` under ``out``; returns the study table's markdown."""
    write_compare_tables(out, per_seed)
    table = study_table(out, per_seed)
    markdown = write_study_table(out, table)
    (out / "summary.md").write_text(summary_text(table, per_seed))
    return markdown

"""``revision compare``: lmms-eval result folders → the paper's comparison table.

One RUN per method (a folder holding lmms-eval ``*_results.json`` files, searched
recursively, or one such file). Runs are keyed by their folder, never by the model
name inside the files (lmms-eval names runs after ``pretrained=``, so two methods can
share a name). Every benchmark is turned into the paper's "accuracy %" by the mapping
in :data:`BENCHMARKS` (documented in ``eval/README.md``), then laid out as Tables 1–4:

    General: MME, MMStar, SQA, RealWorldQA | Reasoning: MMMU, MMMU-Pro, VisuLogic,
    LogicVista | Hallucination: CRPE, POPE, HallBench | Avg | (Cost)

Missing benchmarks are shown as missing ("–"), never as 0. **Avg** is the plain mean of
the 11 accuracies, as in the paper; a run missing any of them gets no Avg in the ``avg``
field, and the table shows the mean over what is present followed by the coverage, e.g.
``47.20 (9/11)``, so a partial mean can never pass for a full one (``--require-all``
turns any gap into an error instead).

Also reported, below the main table (user-needs #7/#8): MME perception and cognition
separately, every POPE split, HallusionBench's three scores and whether a GPT judge
scored them, ScienceQA dev/test, the lmms-eval version of every file, and any
``--limit`` runs.

The optional **Cost** column is the paper's data-acquisition cost model (app. H.4):
``C = P_in·T_in + P_out·T_out`` (prices per million tokens; defaults: the paper's GPT-5
rates $1.25 / $10.00), normalised to a baseline run (the paired "w/ image" run). Token
counts come from ``--tokens LABEL=IN,OUT`` or are counted in the run's training json
(``--train-json LABEL=FILE``) with the model's tokenizer (``--tokenizer``): human turns
are input, assistant turns output, each ``<image>`` adds ``--image-tokens`` input tokens.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from revision_plugin.errors import BadInputError, RevisionError

logger = logging.getLogger(__name__)

GROUPS = ("General", "Reasoning", "Hallucination")
MISSING = "–"
PAPER_PRICE_IN = 1.25  # USD per million input tokens (app. H.4, GPT-5)
PAPER_PRICE_OUT = 10.0  # USD per million output tokens


# --------------------------------------------------------------------------- runs


@dataclass
class Run:
    """All lmms-eval results found under one RUN path, merged task by task."""

    label: str
    path: Path
    results: dict[str, dict] = field(default_factory=dict)  # task -> metrics ("metric,filter" -> value)
    n_samples: dict[str, int] = field(default_factory=dict)  # task -> effective samples
    source: dict[str, Path] = field(default_factory=dict)  # task -> file it came from
    versions: dict[Path, str] = field(default_factory=dict)  # file -> lmms_eval_version
    limits: dict[Path, object] = field(default_factory=dict)  # file -> --limit when one was used
    model_args: dict[Path, str] = field(default_factory=dict)
    superseded: list[tuple[str, Path]] = field(default_factory=list)

    def metric(self, task: str, key: str) -> float | None:
        value = self.results.get(task, {}).get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)


def _result_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"run folder not found: {path}")
    files = sorted(p for p in path.rglob("*_results.json") if p.is_file())
    if not files:
        raise RevisionError(f"{path}: no lmms-eval *_results.json files under this folder")
    return files


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read every ``*_results.json`` under ``path``; a task seen twice keeps the newest file."""
    path = Path(path)
    run = Run(label=label or path.name, path=path)
    dated: dict[str, tuple[str, Path]] = {}
    for file in _result_files(path):
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BadInputError(f"{file}: not a readable lmms-eval results json ({err})") from err
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
            raise BadInputError(f"{file}: no 'results' object; is this an lmms-eval *_results.json?")
        stamp = str(data.get("date") or file.name.split("_results.json")[0])
        run.versions[file] = str(data.get("lmms_eval_version", "unknown"))
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
    return run


def _unique_labels(paths: list[Path]) -> list[str]:
    """Folder names, extended by parent folders until they are unique."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    raise RevisionError(f"the same run was given twice: {[str(p) for p in paths]}")


# --------------------------------------------------------------------------- metric -> accuracy %


@dataclass(frozen=True)
class Source:
    """One way to read a benchmark's accuracy % from a run (first match wins)."""

    metrics: tuple[tuple[str, str], ...]  # (task, "metric,filter") read by `read`
    read: Callable[[Run], float | None]
    note: str = ""  # shown as a footnote when this source was used


@dataclass(frozen=True)
class Benchmark:
    key: str
    group: str
    sources: tuple[Source, ...]

    def value(self, run: Run) -> tuple[float | None, Source | None]:
        for source in self.sources:
            value = source.read(run)
            if value is not None:
                return value, source
        return None, None


def _acc(task: str, key: str, scale: float = 100.0, note: str = "") -> Source:
    return Source(((task, key),), lambda run: None if (v := run.metric(task, key)) is None else v * scale, note)


MME_PERCEPTION_MAX = 2000.0  # 10 perception categories x (acc + acc+), each up to 200
MME_COGNITION_MAX = 800.0  # 4 cognition categories


def _mme(run: Run) -> float | None:
    p = run.metric("mme", "mme_perception_score,none")
    c = run.metric("mme", "mme_cognition_score,none")
    if p is None or c is None:
        return None
    return 100.0 * (p + c) / (MME_PERCEPTION_MAX + MME_COGNITION_MAX)


SQA_TEST, SQA_DEV = "scienceqa_img", "revision_scienceqa_img_dev"


def _sqa_pooled(run: Run) -> float | None:
    test, dev = run.metric(SQA_TEST, "exact_match,none"), run.metric(SQA_DEV, "exact_match,none")
    if test is None or dev is None:
        return None
    n_test, n_dev = run.n_samples.get(SQA_TEST), run.n_samples.get(SQA_DEV)
    if not n_test or not n_dev:
        return None
    return 100.0 * (test * n_test + dev * n_dev) / (n_test + n_dev)


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("MME", "General", (Source((("mme", "mme_perception_score,none"), ("mme", "mme_cognition_score,none")), _mme),)),
    Benchmark("MMStar", "General", (_acc("mmstar", "average,none"),)),
    Benchmark("SQA", "General", (
        Source(((SQA_TEST, "exact_match,none"), (SQA_DEV, "exact_match,none")), _sqa_pooled),
        _acc(SQA_TEST, "exact_match,none", note="SQA: test split only (dev missing)"),
        _acc(SQA_DEV, "exact_match,none", note="SQA: dev split only (test missing)"),
    )),
    Benchmark("RealWorldQA", "General", (_acc("realworldqa", "exact_match,none"),)),
    Benchmark("MMMU", "Reasoning", (_acc("mmmu_val", "mmmu_acc,none"),)),
    Benchmark("MMMU-Pro", "Reasoning", (_acc("mmmu_pro_standard", "mmmu_acc,none"),)),
    Benchmark("VisuLogic", "Reasoning", (_acc("visulogic", "visulogic_acc,none"),)),
    Benchmark("LogicVista", "Reasoning", (
        _acc("revision_logicvista", "accuracy,none"),
        _acc("logicvista_reasoning", "acc_score,none",
             note="LogicVista: lmms-eval's chain-of-thought task (logicvista_reasoning), not the direct-answer protocol"),
    )),
    Benchmark("CRPE", "Hallucination", (_acc("crpe_relation", "exact_match,flexible-extract"),)),
    Benchmark("POPE", "Hallucination", (
        _acc("revision_pope", "pope_accuracy,none"),
        _acc("pope", "pope_accuracy,none"),
    )),
    Benchmark("HallBench", "Hallucination", (
        _acc("revision_hallusion_bench_image", "aAcc,none"),
        _acc("hallusion_bench_image", "aAcc,none", scale=1.0,
             note=("HallBench: judged by GPT (lmms-eval's hallusion_bench_image, gpt-4 by default in 0.7.3); "
                   "the score moves with the judge model")),
    )),
)
BENCHMARK_KEYS = tuple(b.key for b in BENCHMARKS)

# The lmms-eval task names of the suite, in table order (eval/tasks/revision_suite.yaml;
# eval/runs/*.yaml run one entry per task). revision_* tasks live in eval/tasks.
SUITE_TASKS = (
    "mme", "mmstar", SQA_TEST, SQA_DEV, "realworldqa",
    "mmmu_val", "mmmu_pro_standard", "visulogic", "revision_logicvista",
    "crpe_relation", "revision_pope", "revision_hallusion_bench_image",
)
QUICK_TASKS = ("mme", "mmstar", "revision_pope")

POPE_SPLITS = ("adversarial", "popular", "random")
_POPE_SPLIT_TASKS = {"adversarial": "pope_adv", "popular": "pope_pop", "random": "pope_random"}


def _detail_columns() -> list[tuple[str, Callable[[Run], float | None], str]]:
    """(column, reader, format) for the details table."""
    cols: list[tuple[str, Callable[[Run], float | None], str]] = [
        ("MME-P score", lambda r: r.metric("mme", "mme_perception_score,none"), "{:.2f}"),
        ("MME-C score", lambda r: r.metric("mme", "mme_cognition_score,none"), "{:.2f}"),
        ("MME-P %", lambda r: None if (v := r.metric("mme", "mme_perception_score,none")) is None
         else 100 * v / MME_PERCEPTION_MAX, "{:.2f}"),
        ("MME-C %", lambda r: None if (v := r.metric("mme", "mme_cognition_score,none")) is None
         else 100 * v / MME_COGNITION_MAX, "{:.2f}"),
        ("SQA test", lambda r: _pct(r.metric(SQA_TEST, "exact_match,none")), "{:.2f}"),
        ("SQA dev", lambda r: _pct(r.metric(SQA_DEV, "exact_match,none")), "{:.2f}"),
    ]
    for split in POPE_SPLITS:
        for name, key in (("acc", "accuracy"), ("F1", "f1_score")):
            cols.append((f"POPE {split[:3]} {name}", _pope_split_reader(split, key), "{:.2f}"))
    for key in ("aAcc", "qAcc", "fAcc"):
        cols.append((f"HallBench {key}", _hallbench_reader(key), "{:.2f}"))
    return cols


# (task, "metric,filter") pairs the details table reads (checked against the task YAMLs by the tests)
DETAIL_METRICS: tuple[tuple[str, str], ...] = (
    ("mme", "mme_perception_score,none"), ("mme", "mme_cognition_score,none"),
    (SQA_TEST, "exact_match,none"), (SQA_DEV, "exact_match,none"),
    *(("revision_pope", f"pope_{s}_{k},none") for s in POPE_SPLITS for k in ("accuracy", "f1_score")),
    *((t, f"pope_{k},none") for t in _POPE_SPLIT_TASKS.values() for k in ("accuracy", "f1_score")),
    *((t, f"{k},none") for t in ("revision_hallusion_bench_image", "hallusion_bench_image") for k in ("aAcc", "qAcc", "fAcc")),
)


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _pope_split_reader(split: str, key: str) -> Callable[[Run], float | None]:
    def read(run: Run) -> float | None:
        value = run.metric("revision_pope", f"pope_{split}_{key},none")
        if value is None:
            value = run.metric(_POPE_SPLIT_TASKS[split], f"pope_{key},none")
        return _pct(value)

    return read


def _hallbench_reader(key: str) -> Callable[[Run], float | None]:
    def read(run: Run) -> float | None:
        value = run.metric("revision_hallusion_bench_image", f"{key},none")
        if value is not None:
            return 100.0 * value
        return run.metric("hallusion_bench_image", f"{key},none")  # GPT-judged, already in %

    return read


# --------------------------------------------------------------------------- cost (app. H.4)


@dataclass(frozen=True)
class TokenCount:
    input_tokens: float
    output_tokens: float
    origin: str = ""

    def dollars(self, price_in: float, price_out: float) -> float:
        return (price_in * self.input_tokens + price_out * self.output_tokens) / 1e6


_SUFFIX = {"": 1.0, "k": 1e3, "m": 1e6, "b": 1e9}


def parse_token_amount(text: str) -> float:
    """``"11.64M"`` → 11_640_000; plain numbers are token counts."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kKmMbB]?)\s*", text)
    if not match:
        raise RevisionError(f"not a token count: {text!r} (use e.g. 11640000 or 11.64M)")
    return float(match.group(1)) * _SUFFIX[match.group(2).lower()]


def _iter_samples(path: Path) -> Iterable[dict]:
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for line_no, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as err:
                            raise BadInputError(f"{path}:{line_no}: invalid json ({err})") from err
            return
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BadInputError(f"{path}: invalid json ({err})") from err
    if not isinstance(data, list):
        raise BadInputError(f"{path}: expected a list of LLaVA samples")
    yield from data


def count_training_tokens(paths: list[Path], tokenizer, image_tokens: int = 0, batch: int = 1024) -> TokenCount:
    """Input/output tokens of LLaVA-format training json(s).

    Human turns are the input (each ``<image>`` placeholder is replaced by ``image_tokens``
    tokens), assistant turns the output — what an API would read and write to synthesise
    the data. ``tokenizer`` is a Hugging Face tokenizer (or any callable returning
    ``{"input_ids": [[...], ...]}`` for a list of strings).
    """
    counts = {"human": 0, "gpt": 0}
    images = 0
    pending: dict[str, list[str]] = {"human": [], "gpt": []}

    def flush(role: str) -> None:
        if pending[role]:
            ids = tokenizer(pending[role], add_special_tokens=False)["input_ids"]
            counts[role] += sum(len(x) for x in ids)
            pending[role].clear()

    for path in paths:
        for index, sample in enumerate(_iter_samples(path)):
            turns = sample.get("conversations") if isinstance(sample, dict) else None
            if not isinstance(turns, list):
                raise BadInputError(f"{path}: sample {index} (id {sample.get('id') if isinstance(sample, dict) else '?'}) "
                                    "has no 'conversations' list")
            for turn in turns:
                role = "human" if turn.get("from") in ("human", "user") else "gpt"
                text = str(turn.get("value", ""))
                images += text.count("<image>")
                pending[role].append(text.replace("<image>", "").strip())
                if len(pending[role]) >= batch:
                    flush(role)
    flush("human")
    flush("gpt")
    return TokenCount(counts["human"] + images * image_tokens, counts["gpt"],
                      origin=f"counted in {', '.join(str(p) for p in paths)}")


# --------------------------------------------------------------------------- the table


@dataclass
class Row:
    label: str
    path: str
    values: dict[str, float | None]
    notes: list[str]
    details: dict[str, float | None]
    cost: float | None = None
    cost_dollars: float | None = None
    tokens: TokenCount | None = None

    @property
    def present(self) -> list[float]:
        return [v for v in self.values.values() if v is not None]

    @property
    def avg(self) -> float | None:
        """Mean of all 11 accuracies; None unless every benchmark is present."""
        return sum(self.present) / len(BENCHMARKS) if len(self.present) == len(BENCHMARKS) else None

    @property
    def avg_present(self) -> float | None:
        return sum(self.present) / len(self.present) if self.present else None


@dataclass
class Comparison:
    rows: list[Row]
    runs: list[Run]
    cost_baseline: str | None = None
    price_in: float = PAPER_PRICE_IN
    price_out: float = PAPER_PRICE_OUT
    decimals: int = 2

    @property
    def has_cost(self) -> bool:
        return any(r.tokens is not None for r in self.rows)

    def fmt(self, value: float | None) -> str:
        return MISSING if value is None else f"{value:.{self.decimals}f}"

    def avg_cell(self, row: Row) -> str:
        if row.avg is not None:
            return self.fmt(row.avg)
        if row.avg_present is None:
            return MISSING
        return f"{self.fmt(row.avg_present)} ({len(row.present)}/{len(BENCHMARKS)})"

    # ---- markdown
    def to_markdown(self) -> str:
        keys = list(BENCHMARK_KEYS)
        group_cells = []
        for group in GROUPS:
            members = [b.key for b in BENCHMARKS if b.group == group]
            group_cells += [f"**{group}**"] + [""] * (len(members) - 1)
        extra = ["Avg. ↑"] + (["Cost ↓"] if self.has_cost else [])
        lines = [
            "| | " + " | ".join(group_cells) + " |" + " |" * len(extra),
            "|---|" + "---|" * (len(keys) + len(extra)),
            "| **Method** | " + " | ".join(f"**{k}**" for k in keys) + " | " + " | ".join(f"**{e}**" for e in extra) + " |",
        ]
        for row in self.rows:
            cells = [self.fmt(row.values[k]) for k in keys] + [self.avg_cell(row)]
            if self.has_cost:
                cells.append(self.fmt(row.cost))
            lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
        out = ["\n".join(lines), ""]
        notes = self._footnotes()
        if notes:
            out += [f"- {n}" for n in notes] + [""]
        out += [self._details_markdown(), "", self._provenance_markdown()]
        return "\n".join(out).rstrip() + "\n"

    def _footnotes(self) -> list[str]:
        notes = []
        if any(r.avg is None and r.present for r in self.rows):
            notes.append(f"Avg. over the benchmarks present, with the count, when a run misses some; {MISSING} = not evaluated.")
        for row in self.rows:
            for note in row.notes:
                notes.append(f"{row.label}: {note}")
        if self.has_cost:
            notes.append(f"Cost: (P_in·T_in + P_out·T_out) with P_in=${self.price_in:g}, P_out=${self.price_out:g} per "
                         f"million tokens, normalised to {self.cost_baseline} (= 1.00); see the details below.")
        return notes

    def _details_markdown(self) -> str:
        cols = _detail_columns()
        lines = ["Details (accuracy % unless a score):", "",
                 "| Method | " + " | ".join(c[0] for c in cols) + " |",
                 "|---|" + "---|" * len(cols)]
        for row in self.rows:
            lines.append(f"| {row.label} | " + " | ".join(self.fmt(row.details[c[0]]) for c in cols) + " |")
        if self.has_cost:
            lines += ["", "| Method | input tokens | output tokens | cost ($) | relative | source |", "|---|---|---|---|---|---|"]
            for row in self.rows:
                if row.tokens is None:
                    lines.append(f"| {row.label} | {MISSING} | {MISSING} | {MISSING} | {MISSING} | |")
                else:
                    t = row.tokens
                    lines.append(f"| {row.label} | {t.input_tokens / 1e6:.2f}M | {t.output_tokens / 1e6:.2f}M | "
                                 f"{row.cost_dollars:.2f} | {self.fmt(row.cost)} | {t.origin} |")
        return "\n".join(lines)

    def _provenance_markdown(self) -> str:
        lines = ["Provenance:", ""]
        for run in self.runs:
            versions = sorted(set(run.versions.values()))
            lines.append(f"- {run.label}: `{run.path}` — {len(run.versions)} result file(s), "
                         f"lmms-eval {', '.join(versions)}")
            for file, limit in run.limits.items():
                lines.append(f"  - WARNING `{file}` ran with --limit {limit}: not a full evaluation")
            for task, file in run.superseded:
                lines.append(f"  - `{task}` in `{file}` superseded by a newer file")
        return "\n".join(lines)

    # ---- csv / json
    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        detail_names = [c[0] for c in _detail_columns()]
        writer.writerow(["method", "run", *BENCHMARK_KEYS, "avg", "avg_present", "n_present",
                         "cost", "cost_usd", "input_tokens", "output_tokens", *detail_names, "lmms_eval_version"])
        for row, run in zip(self.rows, self.runs):
            def num(v):
                return "" if v is None else repr(round(v, 6))
            writer.writerow([
                row.label, row.path, *(num(row.values[k]) for k in BENCHMARK_KEYS), num(row.avg), num(row.avg_present),
                len(row.present), num(row.cost), num(row.cost_dollars),
                num(row.tokens.input_tokens if row.tokens else None), num(row.tokens.output_tokens if row.tokens else None),
                *(num(row.details[n]) for n in detail_names), ";".join(sorted(set(run.versions.values()))),
            ])
        return buf.getvalue()

    def to_json(self) -> dict:
        return {
            "benchmarks": [{"key": b.key, "group": b.group} for b in BENCHMARKS],
            "avg_policy": "mean of all 11 accuracies; null when any is missing (avg_present = mean over present ones)",
            "price_in": self.price_in, "price_out": self.price_out, "cost_baseline": self.cost_baseline,
            "rows": [
                {"method": row.label, "run": row.path, "values": row.values, "avg": row.avg,
                 "avg_present": row.avg_present, "n_present": len(row.present), "cost": row.cost,
                 "cost_usd": row.cost_dollars, "details": row.details, "notes": row.notes,
                 "tokens": None if row.tokens is None else {"input": row.tokens.input_tokens,
                                                           "output": row.tokens.output_tokens,
                                                           "origin": row.tokens.origin},
                 "lmms_eval_versions": sorted(set(run.versions.values())),
                 "files": {task: str(f) for task, f in run.source.items()}}
                for row, run in zip(self.rows, self.runs)
            ],
        }

    # ---- chart
    def to_png(self, path: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        keys = list(BENCHMARK_KEYS) + ["Avg"]
        n = max(len(self.rows), 1)
        width = 0.8 / n
        fig, ax = plt.subplots(figsize=(max(10, 1.1 * len(keys)), 4.5))
        for i, row in enumerate(self.rows):
            values = [row.values[k] for k in BENCHMARK_KEYS] + [row.avg]
            xs = [j + (i - (n - 1) / 2) * width for j in range(len(keys))]
            ax.bar([x for x, v in zip(xs, values) if v is not None], [v for v in values if v is not None],
                   width=width, label=row.label)
            for x, v in zip(xs, values):
                if v is None:  # missing: a label, never a zero-height bar
                    ax.text(x, 1, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="gray")
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(keys, rotation=30, ha="right")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def write(self, path: Path) -> None:
        suffix = path.suffix.lower()
        if suffix == ".png":
            self.to_png(path)
            return
        writers = {".md": self.to_markdown, ".markdown": self.to_markdown, ".csv": self.to_csv,
                   ".json": lambda: json.dumps(self.to_json(), indent=2, default=str) + "\n"}
        if suffix not in writers:
            raise RevisionError(f"--out {path}: unknown format (use .md, .csv, .json or .png)")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(writers[suffix](), encoding="utf-8")


def build_row(run: Run) -> Row:
    values, notes = {}, []
    for bench in BENCHMARKS:
        value, source = bench.value(run)
        values[bench.key] = value
        if source is not None and source.note:
            notes.append(source.note)
    details = {name: read(run) for name, read, _ in _detail_columns()}
    if run.limits:
        notes.append("some results ran with --limit (see provenance): not comparable to full runs")
    return Row(label=run.label, path=str(run.path), values=values, notes=notes, details=details)


def compare(runs: list[Run], *, tokens: dict[str, TokenCount] | None = None, cost_baseline: str | None = None,
            price_in: float = PAPER_PRICE_IN, price_out: float = PAPER_PRICE_OUT, decimals: int = 2) -> Comparison:
    """Rows for ``runs`` (in order) plus the optional relative cost."""
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise RevisionError(f"duplicate method labels: {labels}")
    rows = [build_row(run) for run in runs]
    tokens = tokens or {}
    unknown = sorted(set(tokens) - set(labels))
    if unknown:
        raise RevisionError(f"token counts given for unknown methods {unknown}; methods are {labels}")
    if tokens:
        if cost_baseline is None:
            raise RevisionError("--cost-baseline LABEL is required with token counts (the paired 'w/ image' run)")
        if cost_baseline not in tokens:
            raise RevisionError(f"cost baseline {cost_baseline!r} has no token counts; give --tokens or --train-json for it")
        base = tokens[cost_baseline].dollars(price_in, price_out)
        if base <= 0:
            raise RevisionError(f"cost baseline {cost_baseline!r} costs $0; cannot normalise")
        for row in rows:
            if row.label in tokens:
                row.tokens = tokens[row.label]
                row.cost_dollars = row.tokens.dollars(price_in, price_out)
                row.cost = row.cost_dollars / base
    return Comparison(rows=rows, runs=runs, cost_baseline=cost_baseline, price_in=price_in,
                      price_out=price_out, decimals=decimals)


# --------------------------------------------------------------------------- CLI


def pending_entries(config: str | Path, output_path: str | Path | None = None) -> tuple[list[dict], list[dict]]:
    """Split an lmms-eval ``--config`` file into (done, pending) entries.

    An entry is done when its ``output_path`` (or ``output_path`` given here, as on lmms-eval's
    command line) holds a results file with every task it names, run without ``--limit``.
    Lets a crashed or interrupted suite resume without re-running finished benchmarks
    (lmms-eval itself writes results only at the end and re-runs everything).
    """
    import yaml

    path = Path(config)
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise BadInputError(f"{path}: not a readable lmms-eval config ({err})") from err
    entries = [entries] if isinstance(entries, dict) else entries
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise BadInputError(f"{path}: expected a mapping or a list of mappings (lmms-eval --config format)")
    runs: dict[str, Run | None] = {}
    done, pending = [], []
    for index, entry in enumerate(entries):
        out = str(output_path or entry.get("output_path") or "")
        tasks = [t.strip() for t in str(entry.get("tasks") or "").split(",") if t.strip()]
        if not out or not tasks:
            raise BadInputError(f"{path}: entry {index} needs 'tasks' and 'output_path' (or pass --output-path)")
        if out not in runs:
            try:
                runs[out] = load_run(out)
            except (FileNotFoundError, RevisionError):
                runs[out] = None
        run = runs[out]
        finished = run is not None and all(t in run.results and run.source[t] not in run.limits for t in tasks)
        (done if finished else pending).append(entry)
    return done, pending


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="*", type=Path, metavar="RUN",
                        help="lmms-eval output folder (searched recursively for *_results.json) or one results "
                             "file; one per method")
    parser.add_argument("--label", action="append", default=None, metavar="NAME",
                        help="method name for each RUN, in order (default: the folder name)")
    parser.add_argument("--out", action="append", type=Path, default=[], metavar="FILE",
                        help="write the table; format from the suffix: .md, .csv, .json, .png (repeatable)")
    parser.add_argument("--require-all", action="store_true",
                        help="exit with an error if any run misses any of the 11 benchmarks")
    parser.add_argument("--decimals", type=int, default=2)
    resume = parser.add_argument_group("resume a suite (instead of a table)")
    resume.add_argument("--pending", type=Path, metavar="CONFIG",
                        help="list the entries of an lmms-eval --config file whose results are not there yet")
    resume.add_argument("--output-path", default=None, metavar="DIR",
                        help="with --pending: the --output_path given to lmms-eval, if any")
    resume.add_argument("--write-config", type=Path, default=None, metavar="FILE",
                        help="with --pending: write the unfinished entries as a new --config file")
    cost = parser.add_argument_group("cost column (paper app. H.4)")
    cost.add_argument("--tokens", action="append", default=[], metavar="LABEL=IN,OUT",
                      help="data-acquisition token counts of a method, e.g. 'ReVision=11.64M,16.15M'")
    cost.add_argument("--train-json", action="append", default=[], metavar="LABEL=FILE[,FILE]",
                      help="count the tokens of a method's training json(s) (LLaVA format) with --tokenizer")
    cost.add_argument("--tokenizer", default=None, help="tokenizer (folder or hub id) of the model, for --train-json")
    cost.add_argument("--image-tokens", type=int, default=0,
                      help="input tokens charged per <image> in --train-json (default 0)")
    cost.add_argument("--price-in", type=float, default=PAPER_PRICE_IN, help="USD per million input tokens (default 1.25)")
    cost.add_argument("--price-out", type=float, default=PAPER_PRICE_OUT,
                      help="USD per million output tokens (default 10.00)")
    cost.add_argument("--cost-baseline", default=None, metavar="LABEL",
                      help="method whose cost is 1.00 (the paired 'w/ image' run)")


def _split_assignment(text: str, option: str) -> tuple[str, str]:
    label, sep, value = text.rpartition("=")
    if not sep or not label or not value:
        raise RevisionError(f"{option} {text!r}: expected LABEL=VALUE")
    return label, value


def _load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _run_pending(args: argparse.Namespace) -> int:
    import yaml

    done, pending = pending_entries(args.pending, args.output_path)
    print(f"{args.pending}: {len(done)} entries finished, {len(pending)} to run")
    for entry in pending:
        print(f"  pending: {entry.get('tasks')} -> {args.output_path or entry.get('output_path')}")
    if args.write_config is not None:
        args.write_config.parent.mkdir(parents=True, exist_ok=True)
        args.write_config.write_text(yaml.safe_dump(pending, sort_keys=False, width=200) if pending else "[]\n",
                                     encoding="utf-8")
        print(f"wrote {args.write_config}" + ("" if pending else " (nothing left to run)"))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.pending is not None:
        if args.runs:
            raise RevisionError("--pending takes a config file, not RUN folders")
        return _run_pending(args)
    if not args.runs:
        raise RevisionError("give at least one RUN folder (or --pending CONFIG)")
    if args.label is not None and len(args.label) != len(args.runs):
        raise RevisionError(f"--label given {len(args.label)} times for {len(args.runs)} runs")
    labels = args.label or _unique_labels(args.runs)
    runs = [load_run(path, label) for path, label in zip(args.runs, labels)]

    tokens: dict[str, TokenCount] = {}
    for item in args.tokens:
        label, value = _split_assignment(item, "--tokens")
        parts = value.split(",")
        if len(parts) != 2:
            raise RevisionError(f"--tokens {item!r}: expected LABEL=IN,OUT")
        tokens[label] = TokenCount(parse_token_amount(parts[0]), parse_token_amount(parts[1]), origin="--tokens")
    if args.train_json:
        if not args.tokenizer:
            raise RevisionError("--train-json needs --tokenizer (the model's tokenizer)")
        tokenizer = _load_tokenizer(args.tokenizer)
        for item in args.train_json:
            label, value = _split_assignment(item, "--train-json")
            paths = [Path(p) for p in value.split(",")]
            for p in paths:
                if not p.is_file():
                    raise FileNotFoundError(f"--train-json {label}: no such file: {p}")
            if label in tokens:
                raise RevisionError(f"{label}: both --tokens and --train-json given")
            tokens[label] = count_training_tokens(paths, tokenizer, image_tokens=args.image_tokens)

    table = compare(runs, tokens=tokens, cost_baseline=args.cost_baseline, price_in=args.price_in,
                    price_out=args.price_out, decimals=args.decimals)
    print(table.to_markdown())
    for out in args.out:
        table.write(out)
        print(f"wrote {out}")
    if args.require_all:
        gaps = {row.label: [k for k, v in row.values.items() if v is None] for row in table.rows}
        gaps = {k: v for k, v in gaps.items() if v}
        if gaps:
            raise RevisionError("missing benchmarks: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in gaps.items()))
    return 0

"""Benchmark → the paper's "accuracy %" (documented in eval/README.md), and the details table.

The paper reports "accuracy" for every column. Two readings are explicit choices here:

* **MME** (``mme=``): ``acc`` (default) = per-question accuracy over all MME test questions
  (``revision_mme``'s ``mme_acc``, MME's own "acc"); ``perception`` = perception score / 2000;
  ``total`` = (perception + cognition) / 2800. Why ``acc``: see eval/README.md.
* **MMMU / MMMU-Pro** (``mmmu=``): ``standard`` (lmms-eval's ``mmmu_val`` /
  ``mmmu_pro_standard``) or ``single`` (one merged image per question).

Every metric read here has a scale (accuracies are fractions in [0, 1], MME scores go up to
2000 / 800, GPT-judged HallusionBench is in %); a value outside it, or not a number, is an
error naming the file and key (``Run.metric``), never a 9500 % cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from revision_plugin.compare.runs import Run
from revision_plugin.compare.suite import MME_TASK, MMMU_VARIANTS, SQA_DEV, SQA_TEST
from revision_plugin.errors import RevisionError

GROUPS = ("General", "Reasoning", "Hallucination")
MME_PERCEPTION_MAX = 2000.0  # 10 perception categories x (acc + acc+), each up to 200
MME_COGNITION_MAX = 800.0  # 4 cognition categories
MME_CHOICES = {
    "acc": "per-question accuracy over all MME test questions (revision_mme mme_acc)",
    "perception": "perception score / 2000 (10 perception categories, acc + acc+)",
    "total": "(perception + cognition score) / 2800",
}
DEFAULT_MME = "acc"
DEFAULT_MMMU = "standard"


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
    """A metric in [0, 100 / scale]: a fraction times 100 (scale 100), or already a % (scale 1)."""
    maximum = 100.0 / scale
    return Source(((task, key),), lambda run: None if (v := run.metric(task, key, maximum)) is None else v * scale, note)


# the most each MME score can be: 10 perception / 4 cognition categories x (acc + acc+), each up to 200
_MME_SCORE_MAX = {"perception": MME_PERCEPTION_MAX, "cognition": MME_COGNITION_MAX}


def _mme_scores(task: str, halves: tuple[str, ...], maximum: float, note: str = "") -> Source:
    keys = tuple(f"mme_{h}_score,none" for h in halves)

    def read(run: Run) -> float | None:
        values = [run.metric(task, k, _MME_SCORE_MAX[h]) for k, h in zip(keys, halves)]
        return None if None in values else 100.0 * sum(values) / maximum

    return Source(tuple((task, k) for k in keys), read, note)


def mme_sources(choice: str) -> tuple[Source, ...]:
    if choice == "acc":
        return (_acc(MME_TASK, "mme_acc,none"),)
    halves, maximum = ((("perception",), MME_PERCEPTION_MAX) if choice == "perception"
                       else (("perception", "cognition"), MME_PERCEPTION_MAX + MME_COGNITION_MAX))
    if choice not in MME_CHOICES:
        raise RevisionError(f"--mme {choice!r}: use one of {', '.join(MME_CHOICES)}")
    return tuple(_mme_scores(task, halves, maximum, "" if task == MME_TASK else f"MME: lmms-eval's {task} task")
                 for task in (MME_TASK, "mme"))


def _sqa_pooled(run: Run) -> float | None:
    test, dev = run.metric(SQA_TEST, "exact_match,none", 1.0), run.metric(SQA_DEV, "exact_match,none", 1.0)
    if test is None or dev is None:
        return None
    n_test, n_dev = run.n_samples.get(SQA_TEST), run.n_samples.get(SQA_DEV)
    if not n_test or not n_dev:
        return None
    return 100.0 * (test * n_test + dev * n_dev) / (n_test + n_dev)


def _mmmu_sources(index: int, key: str, choice: str) -> tuple[Source, ...]:
    if choice not in MMMU_VARIANTS:
        raise RevisionError(f"--mmmu {choice!r}: use one of {', '.join(MMMU_VARIANTS)}")
    order = [choice] + [v for v in MMMU_VARIANTS if v != choice]
    name = "MMMU" if index == 0 else "MMMU-Pro"
    return tuple(_acc(MMMU_VARIANTS[v][index], key, note="" if v == choice else
                      f"{name}: the {v} variant ({MMMU_VARIANTS[v][index]}), not the chosen {choice}") for v in order)


def benchmarks(mme: str = DEFAULT_MME, mmmu: str = DEFAULT_MMMU) -> tuple[Benchmark, ...]:
    return (
        Benchmark("MME", "General", mme_sources(mme)),
        Benchmark("MMStar", "General", (_acc("mmstar", "average,none"),)),
        Benchmark("SQA", "General", (
            Source(((SQA_TEST, "exact_match,none"), (SQA_DEV, "exact_match,none")), _sqa_pooled),
            _acc(SQA_TEST, "exact_match,none", note="SQA: test split only (dev missing)"),
            _acc(SQA_DEV, "exact_match,none", note="SQA: dev split only (test missing)"),
        )),
        Benchmark("RealWorldQA", "General", (_acc("realworldqa", "exact_match,none"),)),
        Benchmark("MMMU", "Reasoning", _mmmu_sources(0, "mmmu_acc,none", mmmu)),
        Benchmark("MMMU-Pro", "Reasoning", _mmmu_sources(1, "mmmu_acc,none", mmmu)),
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


BENCHMARKS = benchmarks()
BENCHMARK_KEYS = tuple(b.key for b in BENCHMARKS)
# every (task, "metric,filter") any choice reads (checked against the task YAMLs by the tests)
ALL_SOURCE_METRICS = tuple(sorted({pair for m in MME_CHOICES for v in MMMU_VARIANTS for b in benchmarks(m, v)
                                   for s in b.sources for pair in s.metrics}))

POPE_SPLITS = ("adversarial", "popular", "random")
_POPE_SPLIT_TASKS = {"adversarial": "pope_adv", "popular": "pope_pop", "random": "pope_random"}


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


def _fraction(run: Run, task: str, key: str) -> float | None:
    return _pct(run.metric(task, key, 1.0))


def _mme_metric(key: str) -> Callable[[Run], float | None]:
    maximum = _MME_SCORE_MAX[key.split("_")[1]]

    def read(run: Run) -> float | None:
        value = run.metric(MME_TASK, key, maximum)
        return value if value is not None else run.metric("mme", key, maximum)

    return read


def _pope_split_reader(split: str, key: str) -> Callable[[Run], float | None]:
    def read(run: Run) -> float | None:
        value = run.metric("revision_pope", f"pope_{split}_{key},none", 1.0)
        if value is None:
            value = run.metric(_POPE_SPLIT_TASKS[split], f"pope_{key},none", 1.0)
        return _pct(value)

    return read


def _hallbench_reader(key: str) -> Callable[[Run], float | None]:
    def read(run: Run) -> float | None:
        value = run.metric("revision_hallusion_bench_image", f"{key},none", 1.0)
        if value is not None:
            return 100.0 * value
        return run.metric("hallusion_bench_image", f"{key},none", 100.0)  # GPT-judged, already in %

    return read


def detail_columns() -> list[tuple[str, Callable[[Run], float | None], str]]:
    """(column, reader, format) for the details table."""
    p, c = _mme_metric("mme_perception_score,none"), _mme_metric("mme_cognition_score,none")
    cols: list[tuple[str, Callable[[Run], float | None], str]] = [
        ("MME-P score", p, "{:.2f}"),
        ("MME-C score", c, "{:.2f}"),
        ("MME-P %", lambda r: None if (v := p(r)) is None else 100 * v / MME_PERCEPTION_MAX, "{:.2f}"),
        ("MME-C %", lambda r: None if (v := c(r)) is None else 100 * v / MME_COGNITION_MAX, "{:.2f}"),
        ("MME (P+C)/2800 %", lambda r: None if p(r) is None or c(r) is None
         else 100 * (p(r) + c(r)) / (MME_PERCEPTION_MAX + MME_COGNITION_MAX), "{:.2f}"),
        ("MME acc", lambda r: _fraction(r, MME_TASK, "mme_acc,none"), "{:.2f}"),
        ("MME-P acc", lambda r: _fraction(r, MME_TASK, "mme_perception_acc,none"), "{:.2f}"),
        ("MME-C acc", lambda r: _fraction(r, MME_TASK, "mme_cognition_acc,none"), "{:.2f}"),
        ("SQA test", lambda r: _fraction(r, SQA_TEST, "exact_match,none"), "{:.2f}"),
        ("SQA dev", lambda r: _fraction(r, SQA_DEV, "exact_match,none"), "{:.2f}"),
    ]
    for split in POPE_SPLITS:
        for name, key in (("acc", "accuracy"), ("F1", "f1_score")):
            cols.append((f"POPE {split[:3]} {name}", _pope_split_reader(split, key), "{:.2f}"))
    for key in ("aAcc", "qAcc", "fAcc"):
        cols.append((f"HallBench {key}", _hallbench_reader(key), "{:.2f}"))
    cols.append(("HallBench neither %", lambda r: _fraction(r, "revision_hallusion_bench_image", "neither,none"),
                 "{:.2f}"))
    return cols


_detail_columns = detail_columns

# (task, "metric,filter") pairs the details table reads (checked against the task YAMLs by the tests)
DETAIL_METRICS: tuple[tuple[str, str], ...] = (
    *((t, f"mme_{h}_score,none") for t in (MME_TASK, "mme") for h in ("perception", "cognition")),
    *((MME_TASK, f"{k},none") for k in ("mme_acc", "mme_perception_acc", "mme_cognition_acc")),
    (SQA_TEST, "exact_match,none"), (SQA_DEV, "exact_match,none"),
    *(("revision_pope", f"pope_{s}_{k},none") for s in POPE_SPLITS for k in ("accuracy", "f1_score")),
    *((t, f"pope_{k},none") for t in _POPE_SPLIT_TASKS.values() for k in ("accuracy", "f1_score")),
    *((t, f"{k},none") for t in ("revision_hallusion_bench_image", "hallusion_bench_image") for k in ("aAcc", "qAcc", "fAcc")),
    ("revision_hallusion_bench_image", "neither,none"),
)

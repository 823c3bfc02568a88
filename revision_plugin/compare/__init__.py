"""``revision compare``: lmms-eval result folders → the paper's comparison table.

One RUN per method (a folder holding lmms-eval ``*_results.json`` files, searched
recursively, or one such file), keyed by folder. Every benchmark becomes the paper's
"accuracy %" by the mapping in :mod:`.benchmarks` (documented in ``eval/README.md``), laid
out as Tables 1–4:

    General: MME, MMStar, SQA, RealWorldQA | Reasoning: MMMU, MMMU-Pro, VisuLogic,
    LogicVista | Hallucination: CRPE, POPE, HallBench | Avg | (Cost)

Modules: :mod:`.runs` (result files, provenance, one checkpoint per run), :mod:`.suite`
(task names), :mod:`.benchmarks` (metric → accuracy, details), :mod:`.cost` (app. H.4),
:mod:`.provenance` (a run's provenance and warnings, grouped), :mod:`.table` (rows,
rendering), :mod:`.commands` (the CLI, ``--pending``).
"""

from revision_plugin.compare.benchmarks import (
    ALL_SOURCE_METRICS,
    BENCHMARK_KEYS,
    BENCHMARKS,
    DETAIL_METRICS,
    GROUPS,
    MME_CHOICES,
    MME_COGNITION_MAX,
    MME_PERCEPTION_MAX,
    POPE_SPLITS,
    Benchmark,
    Source,
    benchmarks,
    detail_columns,
)
from revision_plugin.compare.commands import add_arguments, pending_entries, run
from revision_plugin.compare.cost import (
    PAPER_PRICE_IN,
    PAPER_PRICE_OUT,
    TokenCount,
    count_training_tokens,
    parse_token_amount,
)
from revision_plugin.compare.runs import Run, load_run, unique_labels
from revision_plugin.compare.suite import (
    JUDGES,
    MMMU_VARIANTS,
    QUICK_TASKS,
    SMOKE_TASKS,
    SQA_DEV,
    SQA_TEST,
    SUITE_TASKS,
    SUITES,
    suite_tasks,
)
from revision_plugin.compare.table import MISSING, Comparison, Row, build_row, compare

__all__ = [
    "ALL_SOURCE_METRICS", "BENCHMARKS", "BENCHMARK_KEYS", "DETAIL_METRICS", "GROUPS", "JUDGES", "MISSING",
    "MME_CHOICES", "MME_COGNITION_MAX", "MME_PERCEPTION_MAX", "MMMU_VARIANTS", "PAPER_PRICE_IN", "PAPER_PRICE_OUT",
    "POPE_SPLITS", "QUICK_TASKS", "SMOKE_TASKS", "SQA_DEV", "SQA_TEST", "SUITES", "SUITE_TASKS", "Benchmark",
    "Comparison", "Row", "Run", "Source", "TokenCount", "add_arguments", "benchmarks", "build_row", "compare",
    "count_training_tokens", "detail_columns", "load_run", "parse_token_amount", "pending_entries", "run",
    "suite_tasks", "unique_labels",
]

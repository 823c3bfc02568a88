"""The suite's lmms-eval task names (one table, used by ``revision eval``, ``revision compare``,
``eval/runs/make_runs.py`` and the task-group YAMLs in ``eval/tasks``, which the tests check
against each other)."""

from __future__ import annotations

from revision_plugin.errors import RevisionError

SQA_TEST, SQA_DEV = "scienceqa_img", "revision_scienceqa_img_dev"
MME_TASK = "revision_mme"  # lmms-eval's mme + per-question accuracy (eval/tasks/mme_accuracy)

# MMMU / MMMU-Pro variants. "standard" (default): lmms-eval's own mmmu_val / mmmu_pro_standard,
# the numbers every leaderboard reports; multi-image questions get one <image> per image.
# "single": every question gets ONE image (lmms-eval's mmmu_val_group_img merges the images
# of a question into one picture; revision_mmmu_pro_standard_single does the same for MMMU-Pro).
MMMU_VARIANTS = {
    "standard": ("mmmu_val", "mmmu_pro_standard"),
    "single": ("mmmu_val_group_img", "revision_mmmu_pro_standard_single"),
}


def suite_tasks(mmmu: str = "standard") -> tuple[str, ...]:
    """The full suite in table order (eval/tasks/revision_suite.yaml for ``standard``)."""
    if mmmu not in MMMU_VARIANTS:
        raise RevisionError(f"unknown MMMU variant {mmmu!r}; use one of {sorted(MMMU_VARIANTS)}")
    mmmu_task, pro_task = MMMU_VARIANTS[mmmu]
    return (MME_TASK, "mmstar", SQA_TEST, SQA_DEV, "realworldqa",
            mmmu_task, pro_task, "visulogic", "revision_logicvista",
            "crpe_relation", "revision_pope", "revision_hallusion_bench_image")


SUITE_TASKS = suite_tasks()
QUICK_TASKS = (MME_TASK, "mmstar", "revision_pope")
# revision_smoke (eval/tasks/smoke): the same tasks on a fixed, deterministic few dozen docs each
SMOKE_PREFIX = "revision_smoke_"
SMOKE_DOCS = 24
SMOKE_TASKS = tuple(SMOKE_PREFIX + t.removeprefix("revision_") for t in SUITE_TASKS)
SUITES = {"full": SUITE_TASKS, "quick": QUICK_TASKS, "smoke": SMOKE_TASKS}

# task -> the judge model that scores it ("none" for every task the suite runs). Recorded in
# every results file written by `revision eval` and shown by `revision compare`.
JUDGES = {"hallusion_bench_image": "gpt-4 (lmms-eval 0.7.3 default; OpenAI API)"}


def judge_of(task: str) -> str:
    return JUDGES.get(task, "none")


def base_task(task: str) -> str:
    """``revision_smoke_mme`` -> ``revision_mme``: the full task a smoke task subsets."""
    if not task.startswith(SMOKE_PREFIX):
        return task
    for full in (*SUITE_TASKS, *(t for pair in MMMU_VARIANTS.values() for t in pair)):
        if SMOKE_PREFIX + full.removeprefix("revision_") == task:
            return full
    return task

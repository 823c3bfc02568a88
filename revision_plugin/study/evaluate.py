"""Evaluation with the real lmms-eval through the ``revision_llava`` model.

:func:`run_lmms_eval` is the one place that calls lmms-eval (and the one place that names
the conversation template, until ``revision_llava`` reads it from the checkpoint's
``revision_conv_template``). Results are written by lmms-eval's own
``EvaluationTracker``, exactly where its command line writes them, so ``revision compare``
reads them as it reads any run.
"""

from __future__ import annotations

import logging
from pathlib import Path

from revision_plugin.study.tasks import TASKS

logger = logging.getLogger(__name__)

# Remove once revision_llava reads `revision_conv_template` from the checkpoint config.
CONV_TEMPLATE = "llama_3"


def model_args(checkpoint: Path, model_base: Path | None) -> str:
    args = [f"pretrained={checkpoint}", "device=cpu", "dtype=float32", f"conv_template={CONV_TEMPLATE}"]
    if model_base is not None:
        args.append(f"model_base={model_base}")
    return ",".join(args)


def run_lmms_eval(checkpoint: Path, task_folder: Path, output_path: Path, *, model_base: Path | None,
                  batch_size: int) -> Path:
    """``lmms-eval --model revision_llava --include_path TASK_FOLDER --tasks ...`` in-process; returns
    the ``*_results.json`` written under ``output_path``."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.loggers import EvaluationTracker
    from lmms_eval.tasks import TaskManager

    from revision_plugin.errors import RevisionError

    tracker = EvaluationTracker(output_path=str(output_path))
    manager = TaskManager("ERROR", include_path=[str(task_folder)], include_defaults=False)
    results = simple_evaluate(
        model="revision_llava", model_args=model_args(checkpoint, model_base), tasks=list(TASKS),
        task_manager=manager, batch_size=batch_size, log_samples=True, evaluation_tracker=tracker,
        verbosity="ERROR", bootstrap_iters=0, datetime_str="study",
    )
    samples = results.pop("samples")
    tracker.save_results_aggregated(results=results, samples=samples, datetime_str="study")
    for task in samples:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    files = sorted(output_path.rglob("*_results.json"))
    if not files:
        raise RevisionError(f"lmms-eval wrote no results under {output_path}")
    return files[-1]

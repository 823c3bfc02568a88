"""Evaluation exactly as a user runs it: ``revision eval`` (lmms-eval's own ``simple_evaluate``
through the ``revision_llava`` model, one results file per task, with provenance) on the
study's local task folders.

A stage-2 checkpoint is evaluated with the template it was trained with (LLaVA's
``--version``, recorded in its config as ``revision_conv_template``); a stage-1 checkpoint
was trained with ``plain`` captions, so its questions are asked in the stage-2 template
(``conv_template=`` override, which ``revision eval`` records in the provenance notes).
"""

from __future__ import annotations

import logging
from pathlib import Path

from revision_plugin.study.tasks import TASKS

logger = logging.getLogger(__name__)


def eval_argv(checkpoint: Path, task_folder: Path, output_path: Path, *, model_base: Path | None,
              conv_template: str | None, batch_size: int) -> list[str]:
    model_args = ["device=cpu", "dtype=float32"]
    if conv_template is not None:
        model_args.append(f"conv_template={conv_template}")
    if model_base is not None:
        model_args.append(f"model_base={model_base}")
    return ["eval", "--pretrained", str(checkpoint), "--output-path", str(output_path), "--tasks", ",".join(TASKS),
            "--include-path", str(task_folder), "--model-args", ",".join(model_args), "--batch-size", str(batch_size),
            "--log-samples", "--offline"]


def run_revision_eval(checkpoint: Path, task_folder: Path, output_path: Path, *, model_base: Path | None,
                      conv_template: str | None, batch_size: int) -> dict[str, dict]:
    """``revision eval ...`` in-process; returns ``{task: metrics}`` as ``revision compare`` reads them."""
    from revision_plugin.compare.runs import load_run
    from revision_plugin.errors import RevisionError
    from revision_plugin.study.pipeline import revision

    revision(*eval_argv(checkpoint, task_folder, output_path, model_base=model_base, conv_template=conv_template,
                    batch_size=batch_size))
    results = load_run(output_path).results
    missing = sorted(set(TASKS) - set(results))
    if missing:
        raise RevisionError(f"revision eval wrote no results for {missing} under {output_path}")
    return results

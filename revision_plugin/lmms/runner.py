"""``revision eval``: the suite, task by task, through lmms-eval's own ``simple_evaluate``.

    revision eval --pretrained CKPT --output-path eval_out/realign [--suite full|quick|smoke]
                  [--tasks a,b] [--mmmu standard|single] [--batch-size 8] [--offline]
    revision eval prefetch [--suite full] [--dry-run]        (on a machine with internet)

Thin on purpose: lmms-eval builds the tasks, prompts, scores and writes the results file
(its ``EvaluationTracker``); this loop adds what its command line lacks: the model is loaded
once and checked before anything runs; every task gets its own results file as soon as it
finishes, with provenance (real package versions, checkpoint path + fingerprint, tower,
template, judge, empty answers); tasks already finished for the *same checkpoint
fingerprint* and settings are skipped (:mod:`.resume`); a misspelt task, another checkpoint's
results folder or an unreadable results file stop the run before the model loads; a task that
raises, or ends without a numeric metric or a results file, is a failure; the exit status is 1
when any task failed; a summary table ends the run.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import math
import re
import traceback
from dataclasses import dataclass
from pathlib import Path

from revision_plugin.argtypes import positive_int
from revision_plugin.compare.suite import SUITES, judge_of, suite_tasks
from revision_plugin.errors import RevisionError
from revision_plugin.lmms import datasets as suite_data
from revision_plugin.lmms.args import parse_model_args, resolve_checkpoint
from revision_plugin.lmms.provenance import (
    PROVENANCE_FORMAT,
    RESULTS_KEY,
    package_versions,
)
from revision_plugin.lmms.resume import check_same_checkpoint, existing_results, finished_tasks, run_settings

logger = logging.getLogger(__name__)
EVAL_TASKS_DIR = Path(__file__).resolve().parents[2] / "eval" / "tasks"  # in a source checkout


@dataclass
class Outcome:
    task: str
    status: str  # ok | skipped | failed
    detail: str = ""
    file: Path | None = None


def check_task_names(task_manager, tasks: list[str], include: list[str]) -> None:
    """Every task is one lmms-eval knows (its own or the --include-path folders'), checked before the model loads."""
    known = set(task_manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        named = [f"{t} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(t, known, n=1)) else t
                 for t in unknown]
        raise RevisionError(f"unknown task(s): {', '.join(named)}; the tasks are lmms-eval's and those of "
                            f"--include-path ({', '.join(include) or 'none'})")


def _first_metric(metrics: dict) -> tuple[str, float] | None:
    for key, value in metrics.items():
        if "_stderr" in key or key == "alias" or isinstance(value, bool):
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            return key, float(value)
    return None


def task_spec(task: str, data: dict[str, str], snapshots: dict[str, Path]) -> str | dict:
    """The ``simple_evaluate(tasks=[...])`` entry: the task itself, or the task on local data
    (``--data``) / on its offline snapshot, overriding only the data source."""
    if task in data:
        path = Path(data[task]).resolve()
        kind = "json" if path.suffix in (".json", ".jsonl") else "parquet"
        return {"task": task, "dataset_path": kind, "dataset_name": None,
                "dataset_kwargs": {"data_files": {"test": str(path)}}, "test_split": "test"}
    if task in snapshots:
        return {"task": task, "dataset_path": str(snapshots[task])}
    return task


def _provenance(lm, task: str, versions: dict, data: str | None = None) -> dict:
    prov = lm.provenance()
    return {"format": PROVENANCE_FORMAT, "versions": versions, "checkpoint": prov["checkpoint"],
            "conv_template": prov["conv_template"], "tower": prov["tower"], "notes": prov["notes"],
            "tasks": {task: {"judge": judge_of(task), "empty_answers": prov["empty_answers"].get(task, 0),
                             "answers": prov["answers"].get(task, 0), "data": data,
                             "prompt_example": prov["prompt_examples"].get(task)}}}


def run_task(lm, task: str, spec, *, task_manager, output_path: Path, model_args: str, stamp: str,
             limit, log_samples: bool, versions: dict, data: str | None = None) -> Outcome:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.loggers import EvaluationTracker

    tracker = EvaluationTracker(output_path=str(output_path))
    results = simple_evaluate(model=lm, model_args=model_args, tasks=[spec], task_manager=task_manager, limit=limit,
                              log_samples=log_samples, evaluation_tracker=tracker, verbosity="WARNING",
                              datetime_str=stamp, bootstrap_iters=0)
    if not results or task not in (results.get("results") or {}):
        raise RevisionError(f"lmms-eval returned no results for {task}")
    metric = _first_metric(results["results"][task])
    if metric is None:
        raise RevisionError(f"{task}: no numeric metric in lmms-eval's results ({sorted(results['results'][task])})")
    results[RESULTS_KEY] = _provenance(lm, task, versions, data)
    samples = results.pop("samples", None)
    tracker.save_results_aggregated(results=results, samples=samples if log_samples else None, datetime_str=stamp)
    if log_samples and samples and task in samples:
        tracker.save_results_samples(task_name=task, samples=samples[task])
    files = sorted(output_path.rglob(f"{stamp}_results.json"))
    if not files:
        raise RevisionError(f"{task}: lmms-eval wrote no results file under {output_path}")
    return Outcome(task, "ok", f"{metric[0]} = {metric[1]:.4f}", files[-1])


LOCAL_BUILDERS = ("parquet", "json", "csv", "arrow", "text", "imagefolder")


def _reads_local_data(yaml_path: str) -> bool:
    """A task YAML whose ``dataset_path`` is a local file builder (``parquet`` + ``data_files``) or folder."""
    match = re.search(r"^dataset_path:\s*['\"]?([^'\"\s#]+)", Path(yaml_path).read_text(encoding="utf-8"), re.M)
    return bool(match) and (match.group(1) in LOCAL_BUILDERS or (Path(yaml_path).parent / match.group(1)).is_dir())


def _task_manager(task_manager_class, include: list[str], tasks: list[str]):
    """``(task manager, local tasks)``. A task of the ``--include-path`` folders whose data is a
    local file (its YAML's ``dataset_path`` a file builder such as ``parquet``) is local:
    ``--offline`` looks for no hub snapshot of it. When every requested task is local only the
    folders are indexed (lmms-eval's ~2000 task configs take seconds, and a local task may share
    a name with one of them); otherwise lmms-eval's tasks plus the folders, as its command line does."""
    if not include:
        return task_manager_class("WARNING", include_path=None), set()
    only_folders = task_manager_class("WARNING", include_path=include, include_defaults=False)
    index = only_folders.task_index
    local = {t for t in tasks if t in index and "yaml_path" in index[t] and _reads_local_data(index[t]["yaml_path"])}
    if local == set(tasks):
        return only_folders, local
    return task_manager_class("WARNING", include_path=include), local


def run_suite(args: argparse.Namespace) -> list[Outcome]:
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import get_datetime_str

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else list(
        suite_tasks(args.mmmu) if args.suite == "full" else SUITES[args.suite])
    data = dict(_assignment(item, "--data") for item in args.data)
    unknown = sorted(set(data) - set(tasks))
    if unknown:
        raise RevisionError(f"--data given for tasks not in this run: {unknown}")
    checkpoint = resolve_checkpoint(args.pretrained)
    extra = parse_model_args(args.model_args)
    if "pretrained" in extra:
        raise RevisionError("give the checkpoint with --pretrained, not in --model-args")
    model_args = ",".join([f"pretrained={checkpoint.resolve()}", *(f"{k}={v}" for k, v in extra.items())])
    output_path = Path(args.output_path)
    existing = existing_results(output_path)
    check_same_checkpoint(existing, checkpoint, output_path)
    include = [str(p) for p in (args.include_path or [])] or ([str(EVAL_TASKS_DIR)] if EVAL_TASKS_DIR.is_dir() else [])
    task_manager, local = _task_manager(TaskManager, include, tasks)
    check_task_names(task_manager, tasks, include)
    snapshots: dict[str, Path] = {}
    if args.offline:
        suite_data.go_offline()
        snapshots = suite_data.offline_snapshots([t for t in tasks if t not in data and t not in local])
    lm = get_model("revision_llava").create_from_arg_string(model_args, {"batch_size": args.batch_size})
    data_files = {task: str(Path(data[task]).resolve()) if task in data else None for task in tasks}
    settings = {task: run_settings(extra, lm.conv_template, data_files[task]) for task in tasks}
    done, changed = ({}, {}) if args.force else finished_tasks(existing, lm.fingerprint, settings)
    for task, what in changed.items():
        logger.warning("revision eval: %s: the result in %s was made with other settings (%s): running it again",
                       task, existing.source[task], what)
    versions = package_versions()
    base = get_datetime_str()
    outcomes = []
    for index, task in enumerate(tasks):
        if task in done:
            outcomes.append(Outcome(task, "skipped", "finished for this checkpoint and settings", done[task]))
            continue
        logger.info("revision eval: %s (%d/%d)", task, index + 1, len(tasks))
        try:
            outcomes.append(run_task(lm, task, task_spec(task, data, snapshots), task_manager=task_manager,
                                     output_path=output_path, model_args=model_args, stamp=f"{base}_{index:02d}",
                                     limit=args.limit, log_samples=args.log_samples, versions=versions,
                                     data=data_files[task]))
        except Exception as err:  # noqa: BLE001 - one task's failure must not hide the others; reported, counted, exit 1
            logger.debug("revision eval: %s failed:\n%s", task, traceback.format_exc())
            message = " ".join(str(err).split()) or type(err).__name__
            logger.error("revision eval: %s failed: %s: %s", task, type(err).__name__, message)
            outcomes.append(Outcome(task, "failed", f"{type(err).__name__}: {message}"[:300]))
    return outcomes


def summary(outcomes: list[Outcome]) -> str:
    lines = ["| task | status | result |", "|---|---|---|"]
    lines += [f"| {o.task} | {o.status} | {o.detail} |" for o in outcomes]
    n_failed = sum(o.status == "failed" for o in outcomes)
    lines.append(f"\n{len(outcomes)} task(s): {sum(o.status == 'ok' for o in outcomes)} ok, "
                 f"{sum(o.status == 'skipped' for o in outcomes)} skipped, {n_failed} failed")
    return "\n".join(lines)


def _assignment(text: str, option: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise RevisionError(f"{option} {text!r}: expected TASK=FILE")
    return key, value


DESCRIPTION = """\
Evaluate one checkpoint on the paper's suite through lmms-eval's own simple_evaluate, task by
task: the model is loaded once, each task writes its own results file (with provenance: package
versions, checkpoint path + fingerprint, tower, template, judge, empty answers) as soon as it
finishes, and a summary table ends the run. `revision eval prefetch` downloads the suite's
datasets into the HF cache (on a machine with internet) for --offline runs."""

EPILOG = """\
examples:
  revision eval --pretrained /ckpt/llava-realign --output-path eval_out/realign --suite smoke
  revision eval --pretrained /ckpt/llava-realign --output-path eval_out/realign --batch-size 8
  revision eval --pretrained /ckpt/llava-realign --output-path eval_out/realign --tasks revision_pope \\
      --model-args dtype=bfloat16,max_new_tokens=16
  revision eval prefetch --suite quick --dry-run

suites: full = the 11 benchmarks + ScienceQA dev (12 tasks; --mmmu picks the MMMU variant),
quick = MME, MMStar, POPE; smoke = the full suite on 24 fixed documents per task.

resume: rerun the same command. A task is skipped when --output-path holds a full (no --limit)
result of it made by the same checkpoint (same fingerprint) with the same model arguments
(device, device_map and empty_answers aside), template and --data file; otherwise it runs
again (the newer file wins in `revision compare`). An --output-path holding another
checkpoint's results, or an unreadable results file, is refused before the model loads.

--model-args (revision_llava's, docs/eval.md): model_base, model_name, conv_template, device,
device_map, dtype, attn_implementation, max_new_tokens, empty_answers, use_cache; an unknown
one is refused by name.

exit status: 0 every task ok or skipped; 1 a task failed (the others still ran, see the table);
2 bad input, before anything ran."""

# the options only `revision eval` (run) reads: prefetch refuses them when not at their defaults
RUN_OPTIONS = ("pretrained", "output_path", "batch_size", "model_args", "include_path", "data", "limit",
               "log_samples", "force", "offline")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' lines
    parser.add_argument("action", nargs="?", choices=("run", "prefetch"), default="run",
                        help="run (default): evaluate; prefetch: download the datasets of --suite/--tasks into "
                             "the HF cache (needs internet; default: every task of both --mmmu variants)")
    parser.add_argument("--pretrained", metavar="CKPT",
                        help="run: checkpoint folder LLaVA's training wrote ($VAR and ~ expanded; required)")
    parser.add_argument("--output-path", type=Path, metavar="DIR",
                        help="run: results folder, one *_results.json per task (required; one folder per "
                             "checkpoint: give `revision compare` this folder)")
    parser.add_argument("--suite", choices=sorted(SUITES), default="full",
                        help="task list, see 'suites' below (default full)")
    parser.add_argument("--tasks", default=None, metavar="A,B",
                        help="comma-separated lmms-eval task names instead of --suite (checked before the model "
                             "loads)")
    parser.add_argument("--mmmu", choices=("standard", "single"), default="standard",
                        help="MMMU/MMMU-Pro variant of the full suite: standard = lmms-eval's mmmu_val / "
                             "mmmu_pro_standard, single = one merged image per question (default standard; "
                             "eval/README.md)")
    parser.add_argument("--batch-size", type=positive_int, default=1, metavar="N",
                        help="run: prompts generated together per device, left-padded (default 1)")
    parser.add_argument("--model-args", default="", metavar="K=V,...",
                        help="run: more revision_llava model arguments, see below (not pretrained: use --pretrained)")
    parser.add_argument("--include-path", action="append", type=Path, default=None, metavar="DIR",
                        help="run: task folder(s), repeatable (default: the checkout's eval/tasks)")
    parser.add_argument("--data", action="append", default=[], metavar="TASK=FILE",
                        help="run: run TASK on a local parquet/json(l) file (its test split) instead of its hub "
                             "dataset (repeatable)")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N",
                        help="run: only the first N documents per task; such results never count as finished, "
                             "and `revision compare` marks them")
    parser.add_argument("--log-samples", action="store_true", help="run: also write per-sample jsonl files")
    parser.add_argument("--force", action="store_true",
                        help="run: re-run tasks already finished for this checkpoint and settings")
    parser.add_argument("--offline", action="store_true",
                        help="run: no network (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE); datasets from the HF cache, "
                             "filled by `revision eval prefetch`")
    parser.add_argument("--dry-run", action="store_true",
                        help="prefetch: list what would be downloaded, download nothing")


def _prefetch_tasks(args: argparse.Namespace) -> list[str]:
    if args.tasks:
        return [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.suite == "full":  # both variants: the cluster can then run either
        return [*suite_tasks("standard"), *suite_tasks("single")]
    return list(SUITES[args.suite])


def run(args: argparse.Namespace) -> int:
    if args.action == "prefetch":
        defaults = argparse.ArgumentParser()
        add_arguments(defaults)  # the defaults as declared there, not a copy of them
        given = ["--" + dest.replace("_", "-") for dest in RUN_OPTIONS if getattr(args, dest) != defaults.get_default(dest)]
        if given:
            raise RevisionError(f"{', '.join(given)}: options of `revision eval` (run); "
                                "`revision eval prefetch` only downloads datasets")
        for key, info in suite_data.prefetch(_prefetch_tasks(args), dry_run=args.dry_run).items():
            print(f"{key}: {info.get('commit', '(dry run)')}  <- {', '.join(info['tasks'])}")
        return 0
    if args.dry_run:
        raise RevisionError("--dry-run belongs to `revision eval prefetch`; `revision eval` would evaluate "
                            "(for a short trial run use --limit N)")
    if not args.pretrained or not args.output_path:
        raise RevisionError("revision eval needs --pretrained CKPT and --output-path DIR")
    outcomes = run_suite(args)
    print(summary(outcomes))
    return 1 if any(o.status == "failed" for o in outcomes) else 0

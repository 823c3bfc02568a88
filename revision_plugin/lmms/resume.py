"""Resume for ``revision eval``: which results under ``--output-path`` count as finished, and
what stops a run before its model loads (import-light: no torch, no lmms_eval).

A task is finished when the folder holds a full (no ``--limit``) result of it made by the same
checkpoint (:func:`~revision_plugin.lmms.provenance.checkpoint_fingerprint`) *the same way*
(:func:`run_settings`: model arguments, the template used, the ``--data`` file); a result made
another way runs again. A folder holding another checkpoint's results, or a results file that
cannot be read, is refused: ``revision compare`` would refuse the folder after the whole run.
"""

from __future__ import annotations

from pathlib import Path

from revision_plugin.compare.runs import Run, load_run
from revision_plugin.errors import BadInputError, RevisionError
from revision_plugin.lmms.args import parse_model_args
from revision_plugin.lmms.provenance import checkpoint_fingerprint

# model arguments that do not change what a task scores; every other one (dtype, max_new_tokens,
# model_base, ...) and the template actually used must match for a result to count as finished
RESUME_IGNORED_ARGS = ("pretrained", "device", "device_map", "empty_answers", "conv_template")


def run_settings(model_args: dict[str, str], conv_template: str | None, data: str | None) -> dict:
    """What a result was made with, as resume compares it: model arguments (less
    :data:`RESUME_IGNORED_ARGS`), the conversation template used, the ``--data`` file (or None)."""
    return {"model_args": {k: v for k, v in sorted(model_args.items()) if k not in RESUME_IGNORED_ARGS},
            "conv_template": conv_template, "data": data}


def recorded_settings(run: Run, task: str) -> dict:
    """:func:`run_settings` of the file ``task``'s result comes from."""
    file = run.source[task]
    prov = run.provenance.get(file, {})
    try:
        model_args = parse_model_args(run.model_args.get(file, ""))
    except RevisionError:
        model_args = {"model_args": run.model_args.get(file, "")}  # unparsable: never equal to a real one
    return run_settings(model_args, (prov.get("conv_template") or {}).get("used"),
                        ((prov.get("tasks") or {}).get(task) or {}).get("data"))


def _differences(old: dict, new: dict) -> str:
    flat_old = {**old["model_args"], "template": old["conv_template"], "data": old["data"]}
    flat_new = {**new["model_args"], "template": new["conv_template"], "data": new["data"]}
    return ", ".join(f"{k} {flat_old.get(k)} -> {flat_new.get(k)}" for k in sorted(set(flat_old) | set(flat_new))
                     if flat_old.get(k) != flat_new.get(k))


def finished_tasks(run: Run | None, fingerprint: str, settings: dict[str, dict]) -> tuple[dict[str, Path], dict[str, str]]:
    """``(finished, changed)``: tasks with a full (no ``--limit``) result in ``run`` for this
    checkpoint fingerprint made with ``settings[task]`` (:func:`run_settings`), and the tasks
    whose result was made with other settings (-> what differs): those run again."""
    finished, changed = {}, {}
    for task, file in (run.source.items() if run is not None else ()):
        if task not in settings or file in run.limits:
            continue
        if (run.provenance.get(file, {}).get("checkpoint") or {}).get("fingerprint") != fingerprint:
            continue
        old = recorded_settings(run, task)
        if old == settings[task]:
            finished[task] = file
        else:
            changed[task] = _differences(old, settings[task])
    return finished, changed


def existing_results(output_path: Path) -> Run | None:
    """The results already under ``--output-path`` (None when there are none). A file that
    cannot be read stops the run: which tasks it holds is unknown, and compare would refuse it."""
    if not output_path.is_dir() or not any(output_path.rglob("*_results.json")):
        return None
    try:
        return load_run(output_path, check_checkpoint=False)
    except BadInputError as err:
        raise BadInputError(f"{err}; revision eval cannot tell which task it holds: delete or move it (a results "
                            "file cut short by an interrupted save?) and rerun") from err


def check_same_checkpoint(run: Run | None, checkpoint: Path, output_path: Path) -> None:
    """One results folder, one checkpoint (``revision compare`` refuses a mixed one): refuse
    before loading anything when ``run`` holds results another checkpoint made."""
    recorded = run.fingerprints() if run is not None else {}
    if not recorded or not (checkpoint / "config.json").is_file():
        return  # nothing recorded, or not a checkpoint (the model's start-up check names that)
    mine = checkpoint_fingerprint(checkpoint)
    others = {fp: files for fp, files in recorded.items() if fp != mine}
    if others:
        fp, files = next(iter(others.items()))
        path = (run.provenance[files[0]].get("checkpoint") or {}).get("path")
        since = " (this folder, changed or retrained since)" if path == str(checkpoint.resolve()) else ""
        raise RevisionError(f"--output-path {output_path} holds results of another checkpoint ({path}{since}, "
                            f"fingerprint {fp}: {len(files)} file(s), e.g. {files[0]}), not of {checkpoint} (fingerprint "
                            f"{mine}); give each checkpoint its own --output-path, or move those results away")

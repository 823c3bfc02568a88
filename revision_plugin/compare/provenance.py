"""A run's provenance, as the comparison table shows it: per task, and the warnings grouped.

``revision eval`` writes one provenance block per results file (usually one file per task),
so a warning about the model (e.g. a conversation template override) is recorded once per
task. Shown as recorded, it would repeat under every task of a run; instead a warning every
task of the run recorded is shown once, with the run's checkpoint, and a warning only some
tasks recorded stays under each of those tasks. Nothing is dropped.
"""

from __future__ import annotations

from revision_plugin.compare.runs import Run

# A task's provenance block had no "tower" key at all: older files, or not `revision eval`'s.
_NOT_RECORDED = object()


def run_provenance(run: Run) -> dict:
    """Per task: checkpoint, fingerprint, versions, tower, template, judge, empty answers, notes."""
    out = {}
    for task, file in sorted(run.source.items()):
        prov = run.provenance.get(file, {})
        task_info = (prov.get("tasks") or {}).get(task, {})
        out[task] = {"file": str(file), "checkpoint": prov.get("checkpoint"), "versions": prov.get("versions"),
                     "tower": prov.get("tower", _NOT_RECORDED), "conv_template": prov.get("conv_template"),
                     "judge": task_info.get("judge"), "empty_answers": task_info.get("empty_answers"),
                     # the same note twice in one file says nothing more
                     "notes": list(dict.fromkeys(prov.get("notes") or []))}
    return out


def json_provenance(run: Run) -> dict:
    """:func:`run_provenance` as JSON (each task's ``notes`` complete, as its file recorded them)."""
    return {task: {**info, "tower": None if info["tower"] is _NOT_RECORDED else info["tower"]}
            for task, info in run_provenance(run).items()}


def grouped_warnings(run: Run) -> dict:
    """``{"all_tasks": [...], "by_task": {task: [...]}}``: the notes every task of ``run``
    recorded, and per task the rest (tasks with none left out)."""
    per_task = {task: info["notes"] for task, info in run_provenance(run).items()}
    shared = [n for n in next(iter(per_task.values()), []) if all(n in notes for notes in per_task.values())]
    by_task = {task: [n for n in notes if n not in shared] for task, notes in per_task.items()}
    return {"all_tasks": shared, "by_task": {task: notes for task, notes in by_task.items() if notes}}


def tower_text(tower) -> str:
    """What fed the LLM's visual tokens, from the recorded ``tower_summary``."""
    if tower is _NOT_RECORDED:
        return "tower not recorded"
    if not tower:
        # tower_summary is None when config.json has no revision tower: the host's own
        # vision tower ran, and its name is not part of the recorded provenance.
        return "host's own vision tower (no revision tower)"
    where = f"encoder {tower.get('encoder_id')}, num_tokens {tower.get('num_tokens')}"
    if tower.get("alignment_method"):
        return f"tower {tower['alignment_method']} ({where})"
    if tower.get("operator"):
        return f"tower operator `{tower['operator']}` ({where})"
    # No operator: the encoder's embeddings go in as they are (the paired "w/ Image" baseline).
    return f"revision tower without an alignment operator, raw encoder embeddings ({where})"


def _checkpoint_line(info: dict) -> str:
    ckpt = info["checkpoint"]
    versions = ", ".join(f"{k} {v}" for k, v in (info["versions"] or {}).items() if v)
    template = (info["conv_template"] or {}).get("used")
    parts = [f"checkpoint `{ckpt.get('path')}` fingerprint `{ckpt.get('fingerprint')}`", versions,
             tower_text(info["tower"]), f"template {template}"]
    return "; ".join(p for p in parts if p)


def provenance_lines(run: Run) -> list[tuple[int, str]]:
    """``(depth, text)`` bullets for ``run``: checkpoint line(s) with the run-wide warnings
    right after the first, then each task with its own warnings nested under it."""
    infos = run_provenance(run)
    warnings = grouped_warnings(run)
    shared = [f"WARNING (all {len(infos)} tasks) {n}" for n in warnings["all_tasks"]]
    lines: list[tuple[int, str]] = []
    seen: set[tuple] = set()
    for task, info in infos.items():
        if not info["checkpoint"]:
            lines.append((0, f"`{task}`: no provenance (not written by `revision eval`): checkpoint unknown"))
        else:
            key = (info["checkpoint"].get("fingerprint"), tuple(sorted((info["versions"] or {}).items())),
                   str(info["tower"]), str(info["conv_template"]))
            if key not in seen:
                seen.add(key)
                lines.append((0, _checkpoint_line(info)))
                lines += [(1, text) for text in shared]
                shared = []
            lines.append((0, f"`{task}`: judge {info['judge'] or 'unknown'}, empty answers {info['empty_answers']}"))
        lines += [(1, f"WARNING {n}") for n in warnings["by_task"].get(task, [])]
    # every task recorded the warning but none named a checkpoint: still shown, first
    return [(0, text) for text in shared] + lines

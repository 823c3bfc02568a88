"""The suite's datasets at pinned revisions: ``revision eval prefetch`` (online) and offline runs.

:data:`DATASETS` is the one table of hub datasets the suite reads (the ``dataset_path`` of
each task's YAML) and the revision to use. **No revision here is verified**: this project is
built without hub access, and a commit hash that cannot be checked must not be invented. So
every entry is ``None`` = *unpinned* (the hub's ``main`` at prefetch time), and prefetch
says so loudly, prints the commit each one resolved to, and writes them to
``<cache>/revision_eval_datasets.json``; paste those hashes into :data:`DATASETS` to pin.

Offline (``revision eval --offline``, e.g. a cluster without internet): ``HF_HUB_OFFLINE=1`` and
``HF_DATASETS_OFFLINE=1`` are set, every dataset is resolved from the HF cache with
``snapshot_download(..., local_files_only=True)`` and the task reads that local snapshot
folder (``dataset_path`` override), so nothing touches the network. VisuLogic's lmms-eval
module calls ``snapshot_download("VisuLogic/VisuLogic")`` (no revision) when imported; that
finds the cached ``main`` snapshot offline, which prefetch downloads when VisuLogic is
unpinned (if you pin it, prefetch also fetches ``main`` and the runner refuses to start when
the two differ).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from revision_plugin.compare.suite import base_task
from revision_plugin.errors import RevisionError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    repo_id: str
    revision: str | None = None  # None: unpinned (main); fill with a verified commit hash to pin
    import_time_main: bool = False  # the task's lmms-eval module downloads `main` when imported


# task -> its hub dataset (dataset_path of the task YAML; eval/README.md)
DATASETS: dict[str, Dataset] = {
    "revision_mme": Dataset("lmms-lab-encoder/MME"),
    "mme": Dataset("lmms-lab-encoder/MME"),
    "mmstar": Dataset("Lin-Chen/MMStar"),
    "scienceqa_img": Dataset("lmms-lab-encoder/ScienceQA"),
    "revision_scienceqa_img_dev": Dataset("lmms-lab-encoder/ScienceQA"),
    "realworldqa": Dataset("lmms-lab-encoder/RealWorldQA"),
    "mmmu_val": Dataset("lmms-lab-encoder/MMMU"),
    "mmmu_val_group_img": Dataset("lmms-lab-encoder/MMMU"),
    "mmmu_pro_standard": Dataset("MMMU/MMMU_Pro"),
    "revision_mmmu_pro_standard_single": Dataset("MMMU/MMMU_Pro"),
    "visulogic": Dataset("VisuLogic/VisuLogic", import_time_main=True),
    "revision_logicvista": Dataset("lscpku/LogicVista"),
    "crpe_relation": Dataset("nv-njb/CRPE"),
    "revision_pope": Dataset("lmms-lab-encoder/POPE"),
    "revision_hallusion_bench_image": Dataset("lmms-lab-encoder/HallusionBench"),
}
LOCK_NAME = "revision_eval_datasets.json"
OFFLINE_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")


def dataset_of(task: str) -> Dataset:
    try:
        return DATASETS[base_task(task)]
    except KeyError:
        raise RevisionError(f"task {task!r} has no entry in revision_plugin.lmms.datasets.DATASETS") from None


def plan(tasks) -> dict[tuple[str, str | None], list[str]]:
    """(repo_id, revision) -> tasks reading it; VisuLogic-like repos add their `main`."""
    out: dict[tuple[str, str | None], list[str]] = {}
    for task in tasks:
        ds = dataset_of(task)
        out.setdefault((ds.repo_id, ds.revision), []).append(task)
        if ds.import_time_main and ds.revision is not None:
            out.setdefault((ds.repo_id, None), []).append(f"{task} (imported module)")
    return out


def _snapshot_download(repo_id: str, revision: str | None, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, repo_type="dataset", revision=revision, local_files_only=local_only))


def prefetch(tasks, cache_dir: str | Path | None = None, dry_run: bool = False) -> dict[str, dict]:
    """Download every dataset of ``tasks`` into the HF cache; returns repo -> {revision, commit, path}."""
    entries = plan(tasks)
    unpinned = sorted({repo for (repo, rev) in entries if rev is None})
    if unpinned:
        logger.warning("revision eval prefetch: UNPINNED datasets (no verified revision in "
                       "revision_plugin.lmms.datasets.DATASETS): %s -- downloading the hub's current main; "
                       "the resolved commits are printed and saved so you can pin them", ", ".join(unpinned))
    resolved: dict[str, dict] = {}
    for (repo, rev), users in entries.items():
        if dry_run:
            resolved[f"{repo}@{rev or 'main'}"] = {"repo_id": repo, "revision": rev, "tasks": users}
            continue
        path = _snapshot_download(repo, rev, local_only=False)
        resolved[f"{repo}@{rev or 'main'}"] = {"repo_id": repo, "revision": rev, "commit": path.name,
                                               "path": str(path), "tasks": users}
        logger.info("revision eval prefetch: %s@%s -> commit %s", repo, rev or "main", path.name)
    if not dry_run and resolved:
        from huggingface_hub.constants import HF_HUB_CACHE

        lock = Path(cache_dir or HF_HUB_CACHE) / LOCK_NAME
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(json.dumps(resolved, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        logger.info("revision eval prefetch: wrote %s", lock)
    return resolved


def go_offline() -> None:
    for name in OFFLINE_ENV:
        os.environ[name] = "1"
    try:  # huggingface_hub / datasets read the variables at import; refresh what was imported already
        import huggingface_hub.constants as hub_constants

        hub_constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover
        pass
    try:
        import datasets.config as datasets_config

        datasets_config.HF_HUB_OFFLINE = True
        datasets_config.HF_DATASETS_OFFLINE = True
    except (ImportError, AttributeError):  # pragma: no cover
        pass


def offline_snapshots(tasks) -> dict[str, Path]:
    """task -> its dataset's local snapshot folder in the HF cache; one error listing every miss."""
    out, missing = {}, []
    for task in tasks:
        ds = dataset_of(task)
        try:
            out[task] = _snapshot_download(ds.repo_id, ds.revision, local_only=True)
            if ds.import_time_main and ds.revision is not None:
                main = _snapshot_download(ds.repo_id, None, local_only=True)
                if main.name != out[task].name:
                    raise RevisionError(f"{ds.repo_id}: lmms-eval's {task} module reads the cached main "
                                        f"snapshot {main.name}, not the pinned {ds.revision}")
        except RevisionError as err:  # our own finding above: its message says what is wrong
            missing.append(f"{task}: {err}")
        except (OSError, ValueError) as err:  # LocalEntryNotFoundError is an OSError
            missing.append(f"{task}: {ds.repo_id}@{ds.revision or 'main'} ({type(err).__name__})")
    if missing:
        raise RevisionError("offline: not in the HF cache: " + "; ".join(missing)
                            + " -- run `revision eval prefetch` on a machine with internet (same HF_HOME)")
    return out

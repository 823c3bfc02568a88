"""What a results file must say about where its numbers came from (import-light: no torch,
no lmms_eval, no llava, so ``revision compare`` can use it).

* :func:`package_versions` - the installed versions (``importlib.metadata``, never git).
* :func:`checkpoint_fingerprint` - the one definition of "the same checkpoint": a hash of
  the checkpoint's ``config.json`` (minus keys that only say where it was saved) and of the
  metadata *and sampled content* of every weight / tower file. Cheap on a 16 GB
  checkpoint (a few MiB read), and a retrained checkpoint with identical shapes still
  gets a new fingerprint (weights differ everywhere, so sampled bytes differ).
* :func:`checkpoint_conv_template` / :func:`tower_summary` - read from ``config.json``.

Results written by ``revision eval`` carry all of it under :data:`RESULTS_KEY`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import struct
from pathlib import Path

from revision_plugin.errors import BadInputError, MissingFileError

RESULTS_KEY = "revision"  # top-level key of an lmms-eval results json holding our provenance
PROVENANCE_FORMAT = 1
# config.json key naming the conversation template the checkpoint was trained with (LLaVA's
# --version); written by revision_plugin.hosts.llava.finalize_checkpoint.
CONV_TEMPLATE_KEY = "revision_conv_template"
DEFAULT_CONV_TEMPLATE = "vicuna_v1"
# config.json keys that only record *where* a checkpoint was saved (hosts.llava.SAVED_AT_KEY):
# moving or copying a checkpoint must not change its fingerprint.
LOCATION_KEYS = ("revision_tower_saved_at", "_name_or_path")
TOWER_CONFIG_KEY = "revision_tower"  # revision_plugin.tower.MODEL_CONFIG_KEY
VERSIONED_PACKAGES = ("lmms_eval", "transformers", "torch", "revision_plugin", "llava-torch", "datasets")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".npy", ".json")
_SAMPLE_BYTES = 64 * 1024
_SAMPLES = 16
FINGERPRINT_CHARS = 16


def package_versions() -> dict[str, str | None]:
    """Installed distribution versions (``None`` when not installed)."""
    out: dict[str, str | None] = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def read_config(checkpoint: str | Path) -> dict:
    path = Path(checkpoint) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingFileError(f"{path}: no config.json; is {checkpoint} a LLaVA checkpoint folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadInputError(f"{path}: unreadable config.json ({err})") from err
    if not isinstance(config, dict):
        raise BadInputError(f"{path}: config.json is not an object")
    return config


def _file_digest(path: Path) -> str:
    """Size + safetensors header (if any) + ``_SAMPLES`` evenly spaced 64 KiB samples (whole
    file when small)."""
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as fh:
        if path.suffix == ".safetensors" and size >= 8:
            (n,) = struct.unpack("<Q", fh.read(8))
            if 0 < n <= size - 8:
                h.update(fh.read(n))
        if size <= _SAMPLE_BYTES * _SAMPLES:
            fh.seek(0)
            h.update(fh.read())
        else:
            step = (size - _SAMPLE_BYTES) // (_SAMPLES - 1)
            for i in range(_SAMPLES):
                fh.seek(i * step)
                h.update(fh.read(_SAMPLE_BYTES))
    return h.hexdigest()


def checkpoint_fingerprint(checkpoint: str | Path) -> str:
    """The checkpoint's identity (hex, :data:`FINGERPRINT_CHARS` long); see the module doc."""
    root = Path(checkpoint)
    config = {k: v for k, v in read_config(root).items() if k not in LOCATION_KEYS}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and p.name != "config.json" and not any(part.startswith(".") for part in p.relative_to(root).parts)
                   and "checkpoint-" not in p.relative_to(root).parts[0])
    for path in files:
        h.update(f"\0{path.relative_to(root).as_posix()}\0{_file_digest(path)}".encode())
    return h.hexdigest()[:FINGERPRINT_CHARS]


def checkpoint_conv_template(config: dict) -> str | None:
    value = config.get(CONV_TEMPLATE_KEY)
    return str(value) if value not in (None, "") else None


def tower_summary(config: dict) -> dict | None:
    """Operator method, encoder ids and num_tokens of the checkpoint's revision tower."""
    tower = config.get(TOWER_CONFIG_KEY)
    if not isinstance(tower, dict):
        return None
    return {"alignment_method": tower.get("alignment_method"), "operator": tower.get("operator"),
            "encoder": tower.get("encoder"), "encoder_id": tower.get("encoder_id"),
            "encoder_model": tower.get("encoder_model"), "num_tokens": tower.get("num_tokens"), "dim": tower.get("dim")}


def choose_conv_template(requested: str | None, from_checkpoint: str | None, known) -> tuple[str, list[str]]:
    """The template to prompt with, and the warnings to record (see the module doc)."""
    for name, what in ((requested, "conv_template"), (from_checkpoint, f"the checkpoint's {CONV_TEMPLATE_KEY}")):
        if name is not None and name not in known:
            raise BadInputError(f"revision_llava: {what}={name!r} is not one of LLaVA's templates: {', '.join(sorted(known))}")
    if from_checkpoint is None:
        used = requested or DEFAULT_CONV_TEMPLATE
        how = "as given" if requested else "the default"
        return used, [(f"checkpoint config.json has no {CONV_TEMPLATE_KEY}: prompting with {used} ({how}); "
                      "it must be the --version the checkpoint was trained with")]
    if requested is None or requested == from_checkpoint:
        return from_checkpoint, []
    return requested, [(f"conv_template={requested} overrides the template the checkpoint was trained with "
                       f"({from_checkpoint}): prompts are not in the training format")]


def results_provenance(data: dict) -> dict:
    """The :data:`RESULTS_KEY` block of a loaded results json (``{}`` when absent)."""
    block = data.get(RESULTS_KEY)
    return block if isinstance(block, dict) else {}

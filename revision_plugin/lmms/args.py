"""Model-argument parsing for ``revision_llava`` (import-light: torch only inside functions)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from revision_plugin.errors import BadInputError, MissingFileError, RevisionError
from revision_plugin.parsing import assignments
from revision_plugin.runtime import DTYPE_NAMES, default_device, dtype_named

DTYPES = DTYPE_NAMES  # (re-exported: revision_plugin.lmms.DTYPES)
_UNSET_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def resolve_checkpoint(pretrained: Any, what: str = "pretrained") -> Path:
    """Expand ``~``/``$VAR`` and check the folder exists (start-up check, user-needs #1)."""
    if pretrained is None or not str(pretrained).strip():
        raise BadInputError(f"revision_llava: {what}= is required (the checkpoint folder)")
    text = os.path.expanduser(os.path.expandvars(str(pretrained).strip()))
    unset = _UNSET_VAR.findall(text)
    if unset:
        raise BadInputError(f"revision_llava: {what}={pretrained!r}: environment variable(s) "
                            f"{', '.join('$' + v for v in unset)} not set")
    path = Path(text)
    if not path.is_dir():
        raise MissingFileError(f"revision_llava: {what}={pretrained!r}: no such checkpoint folder ({path})")
    return path


# config.json key every LLaVA checkpoint has (LLaVA builds its vision tower from it)
VISION_TOWER_KEY = "mm_vision_tower"
# Files that hold an LLM's own weights (a full or merged checkpoint); a folder without any of
# them is a projector-only (stage 1) or LoRA checkpoint, which LLaVA loads on a model_base.
FULL_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_loadable(checkpoint: Path, model_base: str | None, config: dict) -> None:
    """Name what is missing before LLaVA builds anything (``config``: the checkpoint's
    ``config.json``, already read by the caller): without ``config.json`` transformers
    would allocate a default-sized model and fail on its weights; a projector-only folder loaded
    without ``model_base`` fails in the tokenizer with an error about sentencepiece; a folder
    that is not a LLaVA checkpoint (a base LLM, an encoder) fails with an ``AttributeError``."""
    if not (checkpoint / "config.json").is_file():
        raise BadInputError(f"revision_llava: pretrained={checkpoint}: no config.json, so not a complete saved "
                            "checkpoint (a save interrupted midway?); use the run's final folder or a complete checkpoint-N")
    if model_base is None and not any((checkpoint / name).is_file() for name in FULL_WEIGHTS):
        kind = "LoRA" if (checkpoint / "adapter_config.json").is_file() else "projector-only (stage 1)"
        raise BadInputError(f"revision_llava: pretrained={checkpoint} holds no LLM weights (a {kind} checkpoint): "
                            "pass model_base=<the base LLM it was trained on>")
    if not config.get(VISION_TOWER_KEY):  # LLaVA's loader would fail on `None.is_loaded` or deeper
        raise BadInputError(f"revision_llava: pretrained={checkpoint}: its config.json (model_type "
                            f"{config.get('model_type')!r}) has no {VISION_TOWER_KEY}, so it is not a LLaVA checkpoint "
                            "(a base LLM or an encoder?); give the folder LLaVA's training wrote (its --output_dir)")


def resolve_device(device: Any) -> str:
    import torch

    if device in (None, "", "auto"):
        return default_device(0)
    device = str(device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RevisionError(f"revision_llava: device={device} but CUDA is not available (use device=cpu)")
        return "cuda:0" if device == "cuda" else device
    if device not in ("cpu", "mps") and not device.startswith(("xpu", "npu")):
        raise BadInputError(f"revision_llava: unknown device {device!r}")
    return device


def resolve_dtype(dtype: Any, device: str):
    import torch

    if dtype in (None, "", "auto"):
        return torch.float32 if device == "cpu" else torch.float16
    if isinstance(dtype, torch.dtype):
        return dtype
    named = dtype_named(dtype)
    if named is None:
        raise BadInputError(f"revision_llava: dtype={dtype!r}; use one of auto, {', '.join(sorted(set(DTYPES)))}")
    return named


def cut_at_stop(text: str, until: list[str]) -> str:
    """Everything before the first stop string (lmms-eval's ``until``)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def parse_model_args(text: str) -> dict[str, str]:
    """``"pretrained=/x,dtype=float32"`` -> dict, as lmms-eval splits ``--model_args``."""
    def not_key_value(part: str) -> BadInputError:
        return BadInputError(f"model_args: {part!r} is not key=value")

    return dict(assignments(str(text or ""), not_key_value))

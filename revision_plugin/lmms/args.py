"""Model-argument parsing for ``revision_llava`` (import-light: torch only inside functions)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from revision_plugin.errors import BadInputError, RevisionError

DTYPES = {"float16": "float16", "fp16": "float16", "half": "float16", "bfloat16": "bfloat16",
          "bf16": "bfloat16", "float32": "float32", "fp32": "float32", "float": "float32"}
# generation settings lmms-eval tasks pass that are understood here; anything else is reported once
_KNOWN_GEN_KWARGS = {"until", "max_new_tokens", "temperature", "top_p", "top_k", "num_beams", "do_sample",
                     "repetition_penalty", "image_aspect_ratio", "max_gen_toks"}
_UNSET_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.strip().lower() in ("1", "true", "yes", "y", "on"):
            return True
        if value.strip().lower() in ("0", "false", "no", "n", "off", ""):
            return False
        raise BadInputError(f"revision_llava: expected a boolean, got {value!r}")
    return bool(value)


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
        raise FileNotFoundError(f"revision_llava: {what}={pretrained!r}: no such checkpoint folder ({path})")
    return path


def resolve_device(device: Any) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda:0" if torch.cuda.is_available() else "cpu"
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
    key = str(dtype).lower().replace("torch.", "")
    if key not in DTYPES:
        raise BadInputError(f"revision_llava: dtype={dtype!r}; use one of auto, {', '.join(sorted(set(DTYPES)))}")
    return getattr(torch, DTYPES[key])


def cut_at_stop(text: str, until: list[str]) -> str:
    """Everything before the first stop string (lmms-eval's ``until``)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


def parse_model_args(text: str) -> dict[str, str]:
    """``"pretrained=/x,dtype=float32"`` -> dict, as lmms-eval splits ``--model_args``."""
    out: dict[str, str] = {}
    for part in (p for p in str(text or "").split(",") if p.strip()):
        key, sep, value = part.partition("=")
        if not sep:
            raise BadInputError(f"model_args: {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out

"""Text/image encoders of a joint embedding space: ``load_encoder(kind, model)``.

Kinds: ``hf_clip`` (any transformers ``CLIPModel``) and ``llm2clip`` (LLM2CLIP image tower +
LLM2Vec-style bidirectional Llama text path, see ``docs/encoders.md``). Every encoder returns
float32, L2-normalised ``[B, dim]`` CPU tensors.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from revision_plugin.encoders.base import Encoder, unit_rows
from revision_plugin.errors import RevisionError

# kind -> "module:class"; imported on use so `import revision_plugin.encoders` stays light.
ENCODER_KINDS: dict[str, str] = {
    "hf_clip": "revision_plugin.encoders.hf_clip:HFClipEncoder",
    "llm2clip": "revision_plugin.encoders.llm2clip:LLM2CLIPEncoder",
}


def load_encoder(
    kind: str,
    model: str | Path,
    *,
    device="cpu",
    dtype=None,
    offline: bool = False,
    **options,
) -> Encoder:
    """Load an encoder of ``kind`` from a local directory or hub id.

    ``dtype``: torch dtype or name ("bf16", "fp32"); default bf16 on CUDA, fp32 on CPU.
    ``offline``: never touch the network (local directories and the local hub cache only).
    ``options``: kind-specific (llm2clip: ``text_model``, ``max_length``, ``chat_template``...).
    """
    if kind not in ENCODER_KINDS:
        raise RevisionError(f"unknown encoder kind {kind!r}; choose one of {sorted(ENCODER_KINDS)}")
    module_name, class_name = ENCODER_KINDS[kind].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(model, device=device, dtype=dtype, offline=offline, **options)


__all__ = ["ENCODER_KINDS", "Encoder", "load_encoder", "unit_rows"]

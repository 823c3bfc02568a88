"""LLaVA's entry points called from Python, with the plugin registered first:
:func:`train_llava` (LLaVA's own ``train()``) and :func:`load_pretrained_model`."""

from __future__ import annotations

from pathlib import Path

from revision_plugin.errors import BadInputError
from revision_plugin.hosts.llava.registration import register


def load_pretrained_model(model_path, model_base=None, model_name=None, **kwargs):
    """LLaVA's ``load_pretrained_model`` (``model_name`` defaults to the path's name; LLaVA
    only builds the vision tower when that name contains 'llava')."""
    register()
    from llava.model.builder import load_pretrained_model as llava_load

    model_name = model_name or Path(str(model_path).rstrip("/")).name
    if "llava" not in model_name.lower():
        raise BadInputError(f"model_name {model_name!r}: LLaVA only builds the vision tower when the name contains 'llava'")
    return llava_load(model_path, model_base, model_name, **kwargs)


def train_llava(argv: list[str], attn_implementation: str | None = None) -> None:
    """LLaVA's own ``llava.train.train.train()`` in this process, with ``argv`` as its flags:
    the Python way to run stage 1 or stage 2 (the command-line way is
    ``python -m llava.train.train FLAGS``, or ``deepspeed --module llava.train.train FLAGS``).
    ``attn_implementation``: what LLaVA's ``train_mem.py`` passes (``flash_attention_2``);
    ``None`` is transformers' default (sdpa), which works on CPU."""
    import sys

    register()
    import llava.train.train as llava_train

    saved = sys.argv
    sys.argv = ["llava.train.train", *argv]
    try:
        llava_train.train(attn_implementation=attn_implementation)
    finally:
        sys.argv = saved

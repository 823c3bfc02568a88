"""``register()``: hooks the plugin into LLaVA by rebinding a few of its functions and
classes (a table, restored by the returned ``undo``), and adds the ``llama_3`` template.
The registration state (``_STATE``) lives here and nowhere else."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from revision_plugin.errors import RevisionError
from revision_plugin.hosts.llava.checkpoints import (
    initialize_vision_modules,
    safe_save_model_for_hf_trainer,
    save_pretrained,
)
from revision_plugin.hosts.llava.constants import SUPPORTED_HOST_VERSION
from revision_plugin.hosts.llava.data import make_supervised_data_module
from revision_plugin.hosts.llava.templates import LLAMA3_VERSION, llama3_conversation, preprocess
from revision_plugin.hosts.llava.trainer import _make_trainer_class

logger = logging.getLogger(__name__)

_STATE: dict[str, Any] = {"undo": None}


def _check_host() -> None:
    from importlib import metadata

    try:
        version = metadata.version("llava-torch")
    except metadata.PackageNotFoundError:
        version = None
    if version is not None and version != SUPPORTED_HOST_VERSION:
        raise RevisionError(f"revision_plugin.hosts.llava supports llava-torch {SUPPORTED_HOST_VERSION}, found {version}")


def _host_not_patched(err: Exception | None = None) -> RevisionError:
    detail = f"cannot import llava ({err}); " if err is not None else ""
    return RevisionError(f"{detail}LLaVA is not patched for this plugin and transformers version: run `revision patch-host`")


def _model_classes() -> list[type]:
    import llava.model as llava_model

    names = ("LlavaLlamaForCausalLM", "LlavaMistralForCausalLM", "LlavaMptForCausalLM")
    return [getattr(llava_model, name) for name in names if hasattr(llava_model, name)]


_MISSING = object()


def register() -> Callable[[], None]:
    """Hook the plugin into LLaVA; idempotent. Returns ``undo`` (restores LLaVA's functions).

    The patched LLaVA calls it itself (its tower builder on the first ``revision:`` spec, and
    ``llava.train.train.train()`` before parsing its flags); calling it directly is harmless."""
    if _STATE["undo"] is not None:
        return _STATE["undo"]
    _check_host()
    try:
        import llava.model.multimodal_encoder.builder as encoder_builder
        import llava.train.train as llava_train
        from llava import conversation as conversation_lib
        from llava.model import llava_arch
    except ImportError as err:
        raise _host_not_patched(err) from err
    if not hasattr(encoder_builder, "checkpoint_being_loaded"):
        raise _host_not_patched()

    def bind(fn, original):
        def wrapper(*args, **kwargs):
            return fn(*args, _original=original, **kwargs)

        wrapper.__wrapped__ = original
        wrapper.__name__ = getattr(original, "__name__", fn.__name__)
        wrapper.__doc__ = fn.__doc__
        return wrapper

    meta_model = llava_arch.LlavaMetaModel
    templates = conversation_lib.conv_templates
    added_template = LLAMA3_VERSION not in templates
    if added_template:
        templates[LLAMA3_VERSION] = llama3_conversation()
    rebinds = [
        (llava_train, "preprocess", bind(preprocess, llava_train.preprocess)),
        (llava_train, "make_supervised_data_module", bind(make_supervised_data_module, llava_train.make_supervised_data_module)),
        (llava_train, "safe_save_model_for_hf_trainer",
         bind(safe_save_model_for_hf_trainer, llava_train.safe_save_model_for_hf_trainer)),
        (llava_train, "LLaVATrainer", _make_trainer_class()),
        (meta_model, "initialize_vision_modules", bind(initialize_vision_modules, meta_model.initialize_vision_modules)),
    ]
    rebinds += [(cls, "save_pretrained", bind(save_pretrained, cls.save_pretrained)) for cls in _model_classes()]
    saved = [(owner, name, owner.__dict__.get(name, _MISSING) if isinstance(owner, type) else getattr(owner, name))
             for owner, name, _ in rebinds]
    for owner, name, new in rebinds:
        setattr(owner, name, new)

    def undo() -> None:
        if _STATE["undo"] is not undo:
            return
        for owner, name, old in saved:
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)
        if added_template:
            templates.pop(LLAMA3_VERSION, None)
        _STATE["undo"] = None

    _STATE["undo"] = undo
    logger.debug("revision: registered with llava %s", SUPPORTED_HOST_VERSION)
    return undo

"""Self-contained checkpoints: every checkpoint LLaVA saves (stage 1, stage 2, step
checkpoints, LoRA, merged LoRA) gets ``revision_tower/`` (tower config + operator copy), a
``config.json`` pointing at it and naming the conversation template, and projector
metadata. Also the ``save_pretrained`` / ``safe_save_model_for_hf_trainer`` /
``initialize_vision_modules`` hooks that ``register()`` installs."""

from __future__ import annotations

import json
from pathlib import Path

from revision_plugin.atomic import atomic_write_bytes, shared_mode
from revision_plugin.hosts.llava.constants import CONV_TEMPLATE_KEY, PROJECTOR_FILE, SAVED_AT_KEY
from revision_plugin.hosts.llava.projector import add_projector_metadata, check_projector_metadata, projector_metadata
from revision_plugin.hosts.llava.tower import LlavaRevisionTower, _resolve_spec, is_revision_spec, tower_of
from revision_plugin.runtime import unwrap_model
from revision_plugin.tower import (
    MODEL_CONFIG_KEY,
    SPEC_PREFIX,
    TOWER_DIR_NAME,
    resolve_tower_config,
    save_tower_artifacts,
)


def conv_template_of(model) -> str | None:
    """The conversation template (LLaVA's ``--version``) ``model`` was trained with: what
    :func:`initialize_vision_modules` recorded, else the name of LLaVA's current default."""
    name = getattr(getattr(unwrap_model(model), "config", None), CONV_TEMPLATE_KEY, None)
    if name:
        return str(name)
    from llava import conversation as conversation_lib

    current = conversation_lib.default_conversation
    return next((key for key, conv in conversation_lib.conv_templates.items() if conv is current), None)


def checkpoint_config_entries(model, tower: LlavaRevisionTower) -> dict:
    """The ``config.json`` keys of a self-contained checkpoint: the tower spec relative to the
    checkpoint, the resolved tower settings, the conversation template."""
    op = tower.operator
    entries = {
        "mm_vision_tower": f"{SPEC_PREFIX}{TOWER_DIR_NAME}",
        MODEL_CONFIG_KEY: {
            **tower.inference_config().to_dict(),
            "operator": None if op is None else f"{TOWER_DIR_NAME}/operator",
            "alignment_method": None if op is None else op.info.method,
        },
    }
    template = conv_template_of(model)
    if template:
        entries[CONV_TEMPLATE_KEY] = template
    return entries


def finalize_checkpoint(output_dir: str | Path, model) -> None:
    """Make ``output_dir`` self-contained: tower artifacts, ``config.json`` pointing at them
    (and naming the conversation template), projector metadata. Call on the main process
    after the host saved the checkpoint; idempotent."""
    tower = tower_of(model)
    if tower is None:
        return
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_tower_artifacts(tower, output_dir)
    config_path = output_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config.update(checkpoint_config_entries(model, tower))
        config.pop(SAVED_AT_KEY, None)  # no absolute paths: the checkpoint is found where it is
        text = json.dumps(config, indent=2, sort_keys=True) + "\n"
        atomic_write_bytes(config_path, text.encode(), mode=shared_mode(config_path))
    projector = output_dir / PROJECTOR_FILE
    if projector.is_file():
        add_projector_metadata(projector, projector_metadata(unwrap_model(model), tower))


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(unwrap_model(model), PeftModel)


def _is_main_process(trainer) -> bool:
    return bool(getattr(trainer.args, "should_save", True)) and trainer.args.local_rank in (-1, 0)


def safe_save_model_for_hf_trainer(trainer, output_dir: str, _original=None) -> None:
    _original(trainer=trainer, output_dir=output_dir)
    if tower_of(trainer.model) is not None and _is_main_process(trainer):
        finalize_checkpoint(output_dir, trainer.model)


def save_pretrained(self, save_directory, *args, _original=None, **kwargs):
    """LLaVA model ``save_pretrained`` (Trainer saves, ``merge_lora_weights.py``): + the tower artifacts."""
    out = _original(self, save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True) and tower_of(self) is not None:
        finalize_checkpoint(save_directory, self)
    return out


def initialize_vision_modules(self, model_args, fsdp=None, _original=None):
    spec = getattr(model_args, "vision_tower", None)
    if is_revision_spec(spec):
        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if adapter and self.get_vision_tower() is not None:
            # The tower came with the model (a LLaVA checkpoint), so build_vision_tower did not
            # see the adapter: check it here.
            tower_config = resolve_tower_config(_resolve_spec(spec, model_args))
            check_projector_metadata(adapter, tower_config, self.config, model_args)
        if getattr(model_args, "version", None):
            setattr(self.config, CONV_TEMPLATE_KEY, model_args.version)
    return _original(self, model_args, fsdp=fsdp)

"""LLaVA's ``LLaVATrainer`` with resumable, self-contained checkpoints: step checkpoints
also carry the tower artifacts and projector metadata, a projector-only (stage-1) run
saves and resumes its optimizer state, and LoRA step checkpoints hold the non-LoRA weights."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from revision_plugin.errors import ArtifactMismatchError, BadInputError
from revision_plugin.hosts.llava.checkpoints import (
    _is_main_process,
    _is_peft,
    checkpoint_config_entries,
    finalize_checkpoint,
)
from revision_plugin.hosts.llava.constants import NON_LORA_FILE, PROJECTOR_FILE
from revision_plugin.hosts.llava.tower import tower_of
from revision_plugin.runtime import unwrap_model
from revision_plugin.tower import save_tower_artifacts

logger = logging.getLogger(__name__)


def _save_lora_extras(trainer, folder: str) -> None:
    """What LLaVA writes next to a final LoRA adapter, for a ``checkpoint-N`` too: the
    trained non-LoRA weights (projector) and ``config.json``, so the step checkpoint resumes
    with its projector and loads with ``--model-base``. Every rank (ZeRO-3 gathers)."""
    import llava.train.train as llava_train

    weights = llava_train.get_peft_state_non_lora_maybe_zero_3(trainer.model.named_parameters())
    if _is_main_process(trainer):
        os.makedirs(folder, exist_ok=True)
        unwrap_model(trainer.model).config.save_pretrained(folder)
        torch.save(weights, os.path.join(folder, NON_LORA_FILE))


def check_resumable(output_dir: str) -> None:
    """Refuse to resume from a step checkpoint whose save was cut short. transformers resumes
    from the highest ``checkpoint-N`` whatever it holds, and one without ``trainer_state.json``
    (the last file the Trainer writes) ends in a traceback; the user only has to delete it."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

    last = get_last_checkpoint(output_dir)
    if last is None or os.path.isfile(os.path.join(last, "trainer_state.json")):
        return
    complete = [p for p in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    latest = max(complete, key=lambda p: int(p.name.split("-")[-1]), default=None)
    then = f"resume from {latest.name}" if latest else "start from step 0"
    raise BadInputError(f"{last}: incomplete step checkpoint (no trainer_state.json: the run stopped while saving "
                        f"it); delete that folder and rerun the same command to {then}")


def _make_trainer_class():
    from llava.train.llava_trainer import LLaVATrainer
    from transformers import Trainer

    class RevisionLLaVATrainer(LLaVATrainer):
        """LLaVA's trainer; checkpoints also carry the tower artifacts and projector metadata,
        and projector-only (stage-1) and LoRA checkpoints can be resumed."""

        def _save_checkpoint(self, model, trial, *args, **kwargs):
            super()._save_checkpoint(model, trial, *args, **kwargs)
            adapter_only = getattr(self.args, "tune_mm_mlp_adapter", False)
            if adapter_only:
                # LLaVA writes only mm_projector.bin here: no optimizer, scheduler, RNG or
                # trainer state, so a killed stage 1 restarted from zero. The base Trainer adds
                # them (its model save is a no-op: LLaVA's _save skips adapter mode).
                Trainer._save_checkpoint(self, model, trial)
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            if not adapter_only and _is_peft(self.model):
                _save_lora_extras(self, folder)
            if tower_of(self.model) is None or not _is_main_process(self):
                return
            if os.path.isdir(folder):
                finalize_checkpoint(folder, self.model)

        def train(self, resume_from_checkpoint=None, *args, **kwargs):
            if resume_from_checkpoint is True:  # what LLaVA's train() passes when checkpoint-* exist
                check_resumable(self.args.output_dir)
            return super().train(resume_from_checkpoint, *args, **kwargs)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            target = unwrap_model(model if model is not None else self.model)
            projector = os.path.join(resume_from_checkpoint, PROJECTOR_FILE)
            if getattr(self.args, "tune_mm_mlp_adapter", False) and os.path.isfile(projector):
                weights = torch.load(projector, map_location="cpu", weights_only=True)
                weights = {k: v for k, v in weights.items() if "mm_projector" in k}
                missing = [k for k in target.state_dict() if "mm_projector" in k and k not in weights]
                if missing or not weights:
                    raise ArtifactMismatchError(f"{projector}: projector keys missing: {missing or 'all'}")
                target.load_state_dict(weights, strict=False)
                logger.info("revision: resumed the projector from %s", projector)
                return
            out = super()._load_from_checkpoint(resume_from_checkpoint, model)
            extras = os.path.join(resume_from_checkpoint, NON_LORA_FILE)
            if _is_peft(target) and os.path.isfile(extras):
                weights = torch.load(extras, map_location="cpu", weights_only=True)
                unexpected = [k for k in weights if k not in target.state_dict()]
                if unexpected:
                    raise ArtifactMismatchError(f"{extras}: weights this model does not have: {unexpected[:5]}")
                target.load_state_dict(weights, strict=False)
                logger.info("revision: resumed %d non-LoRA weights (projector) from %s", len(weights), extras)
            return out

        def save_state(self):
            super().save_state()
            tower = tower_of(self.model)
            if tower is None or not _is_peft(self.model):
                return
            # LLaVA's train() saves a LoRA run itself right after this (config.json, adapter,
            # non_lora_trainables.bin), bypassing every save hook: put the checkpoint's keys in
            # the config it writes, and the tower artifacts next to it.
            config = unwrap_model(self.model).config
            for key, value in checkpoint_config_entries(self.model, tower).items():
                setattr(config, key, value)
            if _is_main_process(self):
                save_tower_artifacts(tower, self.args.output_dir)

    return RevisionLLaVATrainer

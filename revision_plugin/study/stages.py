"""Stage 1 and stage 2 through LLaVA's own trainer (``llava.train.train.train``).

Every training run of the study goes through :func:`run_llava` - the one place to switch
when LLaVA's own ``python -m llava.train.train`` accepts ``revision:`` specs directly. The
argument builders mirror ``scripts/stage1_pretrain.sh`` / ``scripts/stage2_finetune.sh``:
stage 1 trains the projector only (LLM frozen, ``plain`` template) on pseudo-visual text
(or, for w/ Image, on real image-caption pairs through the same tower); stage 2 fine-tunes
LLM + projector on the same small real-image instruction set for every variant.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

from revision_plugin.study.settings import TrainSettings

logger = logging.getLogger(__name__)


def tower_spec(encoder: Path, operator: Path | None, text_store: Path | None, num_tokens: int) -> str:
    parts = ["encoder=hf_clip", f"encoder_model={encoder}", f"operator={operator or 'none'}"]
    if text_store is not None:
        parts.append(f"text_store={text_store}")
    return "revision:" + ",".join(parts + [f"num_tokens={num_tokens}", "offline=true"])


# tokens of text per sample; the image tokens come on top (576 in the num_tokens ablation: with a
# fixed 256 every label of that run was truncated away and LLaVA trained on a loss of 0)
TEXT_TOKENS = 256


def _common(output_dir: Path, epochs: float, batch_size: int, lr: float, seed: int, num_tokens: int) -> list[str]:
    return [
        "--mm_projector_type", "mlp2x_gelu", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        "--output_dir", str(output_dir), "--num_train_epochs", str(epochs),
        "--per_device_train_batch_size", str(batch_size), "--gradient_accumulation_steps", "1",
        "--learning_rate", str(lr), "--weight_decay", "0.", "--warmup_ratio", "0.03",
        "--lr_scheduler_type", "cosine", "--logging_steps", "5", "--save_steps", "100000",
        "--model_max_length", str(TEXT_TOKENS + num_tokens), "--dataloader_num_workers", "0", "--lazy_preprocess", "True",
        "--report_to", "none", "--seed", str(seed), "--disable_tqdm", "False",
    ]


def stage1_args(llm: Path, data_json: Path, image_folder: Path, spec: str, output_dir: Path, t: TrainSettings,
                seed: int, num_tokens: int) -> list[str]:
    return ["--model_name_or_path", str(llm), "--version", "plain", "--data_path", str(data_json),
            "--image_folder", str(image_folder), "--vision_tower", spec, "--tune_mm_mlp_adapter", "True",
            *_common(output_dir, t.stage1_epochs, t.stage1_batch_size, t.stage1_lr, seed, num_tokens)]


def stage2_args(llm: Path, data_json: Path, image_folder: Path, spec: str, projector: Path, output_dir: Path,
                t: TrainSettings, seed: int, num_tokens: int) -> list[str]:
    return ["--model_name_or_path", str(llm), "--version", t.version, "--data_path", str(data_json),
            "--image_folder", str(image_folder), "--vision_tower", spec, "--pretrain_mm_mlp_adapter", str(projector),
            "--image_aspect_ratio", "pad", "--group_by_modality_length", "False",
            *_common(output_dir, t.stage2_epochs, t.stage2_batch_size, t.stage2_lr, seed, num_tokens)]


def run_llava(args: list[str]) -> dict:
    """LLaVA's ``train()`` in this process with the plugin registered; returns a loss summary.

    LLaVA prints (does not log) its data warnings; they are captured into
    ``<output_dir>/train_stdout.txt`` and a ``tokenization mismatch`` stops the study.
    """
    from revision_plugin.errors import RevisionError
    from revision_plugin.hosts.llava import train_llava

    output_dir = Path(args[args.index("--output_dir") + 1])
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        train_llava(list(args), attn_implementation="eager")
    (output_dir / "train_stdout.txt").write_text(buffer.getvalue())
    if "tokenization mismatch" in buffer.getvalue():
        raise RevisionError(f"{output_dir}: LLaVA reported a tokenization mismatch (see train_stdout.txt)")
    return loss_summary(output_dir)


def loss_summary(output_dir: Path) -> dict:
    """Steps and first/last logged loss from the Trainer's ``trainer_state.json``; a run whose
    every logged loss is 0 trained on nothing (all labels truncated away) and stops the study."""
    from revision_plugin.errors import RevisionError

    state = output_dir / "trainer_state.json"
    history = json.loads(state.read_text())["log_history"] if state.is_file() else []
    losses = [h["loss"] for h in history if "loss" in h]
    if losses and not any(losses):
        raise RevisionError(f"{output_dir}: every logged loss is 0 - no label survived truncation to --model_max_length")
    return {"steps": len(losses) and history[-1].get("step", 0), "loss_first": losses[0] if losses else None,
            "loss_last": losses[-1] if losses else None}

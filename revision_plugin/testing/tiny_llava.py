"""A tiny LLaVA trained with the real ReVision pipeline, offline, in well under a minute on CPU.

Pieces (all built locally, saved with ``save_pretrained`` so the real loaders run):

* ``build_tiny_tokenizer`` / ``build_tiny_llama`` (:mod:`revision_plugin.testing.tiny_llama`) -
  a trained byte-fallback BPE Llama tokenizer and a 2-layer, briefly pretrained Llama;
* ``build_tiny_clip`` (:mod:`revision_plugin.testing.tiny_clip`) - the joint embedding model;
* ``build_tiny_llava_data`` (:mod:`revision_plugin.testing.tiny_llava_inputs`) - coloured-shape
  PNGs (:mod:`revision_plugin.testing.shapes`), captions, a text feature store, a ReAlign
  operator fitted on unpaired text/image embeddings, stage-1 (pseudo text), paired baseline
  and stage-2 (image instruction) json files, and tower specs;
* :func:`build_tiny_llava_checkpoint` (here) - LLaVA's own ``train()`` for stage 1 (projector
  on pseudo text) and stage 2 (full fine-tune on images), returning a checkpoint directory that
  ``llava.model.builder.load_pretrained_model(path, None, path.name)`` loads after
  ``revision_plugin.hosts.llava.register()``. Cached: a second call with the same
  ``workdir`` returns the finished checkpoint immediately.

The names of those modules are re-exported here, where tests import them from.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import threading
from pathlib import Path

from revision_plugin.testing.common import file_lock, torch_threads
from revision_plugin.testing.shapes import COLOURS, QUESTIONS, SHAPES, answer_for, caption_for, draw_shape
from revision_plugin.testing.tiny_llama import build_tiny_llama, build_tiny_tokenizer
from revision_plugin.testing.tiny_llava_inputs import TinyLlavaData, build_tiny_llava_data, tiny_llava_data

CHECKPOINT_NAME = "tiny-llava-revision"
STAGE1_NAME = "tiny-llava-revision-stage1"

_LOCK = threading.Lock()


def _training_args(output_dir: str | Path, epochs: float, batch_size: int, learning_rate: float,
                   save_steps: int) -> list[str]:
    """The training settings both tiny stages share (LLaVA's scripts' schedule and saving)."""
    return [
        "--output_dir", str(output_dir), "--num_train_epochs", str(epochs),
        "--per_device_train_batch_size", str(batch_size), "--gradient_accumulation_steps", "1",
        "--learning_rate", str(learning_rate), "--weight_decay", "0.", "--warmup_ratio", "0.03",
        "--lr_scheduler_type", "cosine", "--logging_steps", "1",
        # LLaVA's scripts' saving: step checkpoints (every save_steps, and always at the end) + the final save.
        "--save_strategy", "steps", "--save_steps", str(save_steps), "--save_total_limit", "1",
        "--model_max_length", "256", "--dataloader_num_workers", "0", "--lazy_preprocess", "True",
        "--report_to", "none", "--seed", "0", "--disable_tqdm", "True",
    ]


def stage1_args(data: TinyLlavaData, output_dir: str | Path, *, spec: str | None = None, data_path: str | Path | None = None,
                epochs: float = 1, batch_size: int = 8, learning_rate: float = 5e-3, save_steps: int = 50000,
                extra: list[str] | None = None) -> list[str]:
    """LLaVA ``train()`` arguments of a tiny stage 1 (projector only, LLM frozen, ``plain``)."""
    return [
        "--model_name_or_path", str(data.llm), "--version", "plain",
        "--data_path", str(data_path or data.stage1_json), "--image_folder", str(data.image_folder),
        "--vision_tower", spec or data.spec_cached, "--mm_projector_type", "mlp2x_gelu",
        "--tune_mm_mlp_adapter", "True", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        *_training_args(output_dir, epochs, batch_size, learning_rate, save_steps),
        *(extra or []),
    ]


def stage2_args(data: TinyLlavaData, output_dir: str | Path, projector: str | Path, *, spec: str | None = None,
                epochs: float = 1, batch_size: int = 4, learning_rate: float = 1e-3, save_steps: int = 50000,
                extra: list[str] | None = None) -> list[str]:
    """LLaVA ``train()`` arguments of a tiny stage 2 (full fine-tune, ``v1``, stage-1 projector)."""
    return [
        "--model_name_or_path", str(data.llm), "--version", "v1",
        "--data_path", str(data.stage2_json), "--image_folder", str(data.image_folder),
        "--vision_tower", spec or data.spec_cached, "--pretrain_mm_mlp_adapter", str(projector),
        "--mm_projector_type", "mlp2x_gelu", "--mm_use_im_start_end", "False", "--mm_use_im_patch_token", "False",
        "--image_aspect_ratio", "pad", "--group_by_modality_length", "True",
        *_training_args(output_dir, epochs, batch_size, learning_rate, save_steps),
        *(extra or []),
    ]


class TrainOutput:
    """What an in-process LLaVA ``train()`` run printed, and its logged losses."""

    def __init__(self, output_dir: Path, stdout: str) -> None:
        self.output_dir = output_dir
        self.stdout = stdout

    @property
    def log_history(self) -> list[dict]:
        path = self.output_dir / "trainer_state.json"
        return json.loads(path.read_text())["log_history"] if path.is_file() else []

    @property
    def losses(self) -> list[float]:
        return [entry["loss"] for entry in self.log_history if "loss" in entry]


def run_llava_train(args: list[str], *, attn_implementation: str | None = "eager", threads: int | None = 1) -> TrainOutput:
    """Run LLaVA's own ``llava.train.train.train()`` in this process with ``args`` as argv
    (:func:`revision_plugin.hosts.llava.train_llava`; the patched ``train()`` registers the plugin).

    LLaVA prints (it does not log) its data warnings, e.g. ``WARNING: tokenization mismatch``;
    stdout is captured (and echoed) so callers can assert on it.
    """
    from revision_plugin.hosts.llava import train_llava

    output_dir = Path(args[args.index("--output_dir") + 1])
    buffer = io.StringIO()
    with _LOCK, torch_threads(threads), contextlib.redirect_stdout(_Tee(buffer, sys.stdout)):
        train_llava(args, attn_implementation=attn_implementation)
    return TrainOutput(output_dir, buffer.getvalue())


class _Tee(io.TextIOBase):
    def __init__(self, *streams) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def build_tiny_llava_checkpoint(workdir: str | Path, *, stage1_epochs: float = 8, stage2_epochs: float = 8) -> Path:
    """Stage 1 + stage 2 of the tiny ReVision LLaVA; returns the stage-2 checkpoint directory.

    ``<workdir>/tiny-llava-revision`` (the name contains "llava", which LLaVA's loader needs).
    A finished checkpoint in ``workdir`` is reused; concurrent callers (pytest-xdist workers
    sharing ``workdir``) wait for the first one instead of training twice. The stage-1
    directory (``tiny-llava-revision-stage1``: ``mm_projector.bin``, evaluable with
    ``model_base`` = :attr:`TinyLlavaData.llm`) and both runs' stdout
    (``stage1_stdout.txt``, ``stage2_stdout.txt``) are kept next to it.
    """
    workdir = Path(workdir)
    checkpoint = workdir / CHECKPOINT_NAME
    workdir.mkdir(parents=True, exist_ok=True)
    with file_lock(workdir / ".tiny-llava.lock"):
        if (checkpoint / ".complete").is_file():
            return checkpoint
        data = tiny_llava_data(workdir)
        stage1 = workdir / STAGE1_NAME
        out1 = run_llava_train(stage1_args(data, stage1, epochs=stage1_epochs))
        (workdir / "stage1_stdout.txt").write_text(out1.stdout)
        out2 = run_llava_train(stage2_args(data, checkpoint, stage1 / "mm_projector.bin", epochs=stage2_epochs))
        (workdir / "stage2_stdout.txt").write_text(out2.stdout)
        (checkpoint / ".complete").write_text("ok\n")
    return checkpoint


def pytest_shared_dir(tmp_path_factory, name: str = "revision-tiny-llava") -> Path:
    """A directory shared by every pytest-xdist worker of one test session (and private to
    that session), for :func:`build_tiny_llava_checkpoint` to train once per session."""
    import os

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    return base / name


__all__ = [
    "CHECKPOINT_NAME",
    "COLOURS",
    "QUESTIONS",
    "SHAPES",
    "STAGE1_NAME",
    "TinyLlavaData",
    "TrainOutput",
    "answer_for",
    "build_tiny_llama",
    "build_tiny_llava_checkpoint",
    "build_tiny_llava_data",
    "build_tiny_tokenizer",
    "caption_for",
    "draw_shape",
    "file_lock",
    "pytest_shared_dir",
    "run_llava_train",
    "stage1_args",
    "stage2_args",
    "tiny_llava_data",
    "torch_threads",
]

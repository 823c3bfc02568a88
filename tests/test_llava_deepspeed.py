"""DeepSpeed on CPU through the shipped scripts (stage1_pretrain.sh, stage2_finetune.sh,
launching LLaVA's own llava.train.train) and configs, saving as the scripts save:
ZeRO-2 stage 1, and ZeRO-3 loading a stage-1 projector into a *partitioned* projector
(LLaVA #1878: `torch.Size([0])`), which the host patch fixes with GatheredParameters.

The first DeepSpeed run on a machine compiles its CPU communication op (~1 min, cached in
~/.cache/torch_extensions); later runs take ~20 s each."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from revision_plugin.testing.tiny_llava import (
    CHECKPOINT_NAME,
    STAGE1_NAME,
    build_tiny_llava_checkpoint,
    pytest_shared_dir,
    tiny_llava_data,
)

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("deepspeed")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    workdir = pytest_shared_dir(tmp_path_factory)
    build_tiny_llava_checkpoint(workdir)
    return workdir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_script(script: str, flags: list[str], log: Path, timeout: int = 420) -> str:
    """Run a shipped launch script for real, through torchrun (one CPU process) and DeepSpeed,
    with tiny-model overrides after ``--`` (CPU: no bf16/tf32, no gradient checkpointing)."""
    launcher = f"{sys.executable} -m torch.distributed.run --nproc_per_node 1 --master_addr 127.0.0.1 --master_port {_free_port()}"
    cmd = ["bash", str(REPO / "scripts" / script), *flags, "--tf32", "False", "--workers", "0", "--offline", "1", "--",
           "--bf16", "False", "--gradient_checkpointing", "False", "--model_max_length", "256",
           "--disable_tqdm", "True", "--seed", "0"]
    env = {**os.environ, "LAUNCHER": launcher, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "TRAIN_MODULE": "llava.train.train"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False, timeout=timeout)
    output = result.stdout + result.stderr
    log.write_text(output)
    assert result.returncode == 0, output[-6000:]
    assert "tokenization mismatch" not in output
    return output


def _tiny_flags(data) -> list[str]:
    return ["--llm", str(data.llm), "--encoder", "hf_clip", "--encoder-model", str(data.encoder),
            "--operator", str(data.operator)]


def test_zero2_stage1_on_cpu(workdir, tmp_path):
    data = tiny_llava_data(workdir)
    out = tmp_path / "zero2-stage1"
    _run_script("stage1_pretrain.sh", [*_tiny_flags(data), "--text-store", str(data.text_store), "--data",
                str(data.stage1_json), "--output-dir", str(out), "--batch-size", "8", "--epochs", "2", "--lr", "5e-3"],
                tmp_path / "zero2.log")
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) == 12 and losses[-1] < losses[0]
    from revision_plugin.hosts.llava import read_projector_metadata

    assert read_projector_metadata(out / "mm_projector.bin")["encoder_id"] == data.encoder_id
    assert (out / "revision_tower" / "operator" / "operator.safetensors").is_file()


def test_zero3_loads_the_stage1_projector_into_a_partitioned_projector(workdir, tmp_path):
    """Start stage 2 from a checkpoint that already has a projector (so ZeRO-3 partitions it
    at construction) with lr 0: the saved projector must be exactly the stage-1 one."""
    data = tiny_llava_data(workdir)
    projector = workdir / STAGE1_NAME / "mm_projector.bin"
    out = tmp_path / "zero3-llava"
    flags = _tiny_flags(data)
    flags[flags.index("--llm") + 1] = str(workdir / CHECKPOINT_NAME)
    _run_script("stage2_finetune.sh", [*flags, "--projector-file", str(projector), "--data", str(data.stage2_json),
                "--image-folder", str(data.image_folder), "--output-dir", str(out), "--version", "v1",
                "--batch-size", "4", "--lr", "0"], tmp_path / "zero3.log")
    from safetensors.torch import load_file

    saved = load_file(str(out / "model.safetensors"))
    expected = torch.load(projector, map_location="cpu", weights_only=True)
    for key in ("model.mm_projector.0.weight", "model.mm_projector.2.bias"):
        torch.testing.assert_close(saved[key].float(), expected[key].float(), rtol=0, atol=0)
    assert json.loads((out / "config.json").read_text())["mm_vision_tower"] == "revision:revision_tower"

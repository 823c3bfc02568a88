"""The shipped launch scripts and DeepSpeed configs are accepted by the code that reads them:
LLaVA's own HfArgumentParser, the tower spec parser and transformers' DeepSpeed config."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from revision_plugin.testing.tiny_llava import (
    pytest_shared_dir,
    tiny_llava_data,
)

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_llava_data(pytest_shared_dir(tmp_path_factory))


def _dry_run(script: str, *args: str, launcher: str = "deepspeed") -> list[str]:
    env = {**os.environ, "LAUNCHER": launcher, "TRAIN_MODULE": ""}
    result = subprocess.run(["bash", str(SCRIPTS / script), "--dry-run", *args], capture_output=True, text=True, check=False,
                            cwd=REPO, env=env)
    assert result.returncode == 0, result.stderr
    command = result.stdout.splitlines()
    flag = "--module" if launcher == "deepspeed" else "-m"
    index = command.index(flag)
    assert command[:index] == launcher.split()
    assert command[index + 1] in ("llava.train.train", "llava.train.train_mem")  # LLaVA's own entry points
    return command[index + 2:]


def _parse(args: list[str]):
    import transformers

    from revision_plugin.hosts.llava import register

    register()
    import llava.train.train as llava_train

    parser = transformers.HfArgumentParser((llava_train.ModelArguments, llava_train.DataArguments, llava_train.TrainingArguments))
    import torch

    if not torch.cuda.is_available():  # the scripts target GPUs: tf32/bf16 need one, or use_cpu
        args = [a if a != "True" or args[i - 1] != "--tf32" else "False" for i, a in enumerate(args)] + ["--use_cpu", "True"]
    return parser.parse_args_into_dataclasses(args, return_remaining_strings=False)


def test_stage1_script_defaults_are_the_papers_and_parse(data):
    args = _dry_run("stage1_pretrain.sh", "--operator", str(data.operator), "--text-store", str(data.text_store),
                    "--data", str(data.stage1_json))
    model, _, training = _parse(args)
    assert model.model_name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert model.version == "plain" and model.tune_mm_mlp_adapter and model.mm_projector_type == "mlp2x_gelu"
    assert training.learning_rate == 5e-4 and training.num_train_epochs == 1 and training.bf16
    assert training.warmup_steps == pytest.approx(0.03)  # --warmup_ratio, kept working on transformers 5
    assert Path(training.deepspeed).name == "zero2.json"
    from revision_plugin.tower import parse_tower_spec

    tower = parse_tower_spec(model.vision_tower)
    assert tower.encoder == "llm2clip" and tower.encoder_model == "microsoft/LLM2CLIP-Openai-L-14-336"
    assert tower.operator == str(data.operator) and tower.text_store == str(data.text_store) and tower.num_tokens == 1


def test_stage2_and_baseline_scripts_parse(data, tmp_path):
    projector = tmp_path / "mm_projector.bin"
    projector.write_bytes(b"")
    args = _dry_run("stage2_finetune.sh", "--operator", str(data.operator), "--projector-file", str(projector),
                    "--data", str(data.stage2_json), "--image-folder", str(data.image_folder), "--num-tokens", "4")
    model, data_args, training = _parse(args)
    assert model.version == "llama_3" and model.pretrain_mm_mlp_adapter == str(projector)
    assert training.learning_rate == 1e-5 and Path(training.deepspeed).name == "zero3.json"
    assert training.per_device_train_batch_size == 16 and training.gradient_accumulation_steps == 2  # official ReVision
    assert training.num_train_epochs == 1
    assert data_args.image_aspect_ratio == "pad" and training.group_by_modality_length
    from llava.conversation import conv_templates

    assert "llama_3" in conv_templates  # registered by the plugin
    from revision_plugin.tower import parse_tower_spec

    assert parse_tower_spec(model.vision_tower).num_tokens == 4

    baseline = _dry_run("stage1_paired_baseline.sh", "--operator", str(data.operator), "--data", str(data.paired_json),
                        "--image-folder", str(data.image_folder))
    pseudo = _dry_run("stage1_pretrain.sh", "--operator", str(data.operator), "--data", str(data.paired_json),
                      "--image-folder", str(data.image_folder))
    differing = {a for a, b in zip(baseline, pseudo) if a != b}
    assert len(baseline) == len(pseudo) and all("stage1-paired" in a for a in differing)  # only the output dir differs
    _parse(baseline)


@pytest.mark.parametrize("args, message", [
    (["--text-store", "x"], "--data is required"),
    (["--data", "/no/such/file.json", "--operator", "none"], "--data not found"),
    (["--data", "{stage1}", "--operator", "/no/such/operator"], "--operator not found"),
    (["--data", "{stage1}", "--operator", "none", "--bogus", "1"], "unknown option --bogus"),
    (["--data", "{stage1}", "--operator", "none", "--mode", "paired"], "--image-folder or --image-store"),
])
def test_stage1_script_checks_its_inputs_at_start_up(data, args, message):
    args = [a.replace("{stage1}", str(data.stage1_json)) for a in args]
    result = subprocess.run(["bash", str(SCRIPTS / "stage1_pretrain.sh"), "--dry-run", *args], capture_output=True,
                            text=True, cwd=REPO, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr


@pytest.mark.parametrize("name, stage", [("zero2.json", 2), ("zero3.json", 3)])
def test_deepspeed_configs_resolve_with_transformers(name, stage, tmp_path):
    import transformers
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    config = json.loads((SCRIPTS / name).read_text())
    assert config["zero_optimization"]["stage"] == stage
    import torch

    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                                          gradient_accumulation_steps=2, learning_rate=1e-5, bf16=True,
                                          use_cpu=not torch.cuda.is_available())
    hf_config = HfTrainerDeepSpeedConfig(str(SCRIPTS / name))
    hf_config.trainer_config_process(args)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2))
    hf_config.trainer_config_finalize(args, model, num_training_steps=10)
    resolved = json.dumps(hf_config.config)
    assert '"auto"' not in resolved
    assert hf_config.config["bf16"]["enabled"] is True and hf_config.config["train_micro_batch_size_per_gpu"] == 4
    assert hf_config.is_zero3() == (stage == 3)


def test_scripts_launch_llavas_own_module_with_any_launcher(data, tmp_path):
    """No wrapper: deepspeed --module / torchrun -m / python -m llava.train.train (train_mem with flash_attn)."""
    args = ["--operator", str(data.operator), "--text-store", str(data.text_store), "--data", str(data.stage1_json)]
    (tmp_path / "mm_projector.bin").write_bytes(b"")
    stage2_args = ["--operator", str(data.operator), "--projector-file", str(tmp_path / "mm_projector.bin"),
                   "--data", str(data.stage2_json), "--image-folder", str(data.image_folder)]
    for launcher in ("deepspeed", "torchrun --nproc_per_node 8"):
        assert "--deepspeed" in _dry_run("stage1_pretrain.sh", *args, launcher=launcher)
    # one plain process has no torch.distributed environment for DeepSpeed: --deepspeed none
    assert "--deepspeed" not in _dry_run("stage1_pretrain.sh", *args, "--deepspeed", "none", launcher="python")
    result = subprocess.run(["bash", str(SCRIPTS / "stage1_pretrain.sh"), "--dry-run", *args, "--train-module",
                             "llava.train.train_mem", "--launcher", "python", "--deepspeed", "none"],
                            capture_output=True, text=True, check=False, cwd=REPO)
    assert result.stdout.splitlines()[:3] == ["python", "-m", "llava.train.train_mem"], result.stderr
    for script, script_args in (("stage1_pretrain.sh", args), ("stage2_finetune.sh", stage2_args)):
        refused = subprocess.run(["bash", str(SCRIPTS / script), "--dry-run", *script_args, "--launcher", "python"],
                                 capture_output=True, text=True, check=False, cwd=REPO)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert "pass --deepspeed none" in refused.stderr


def test_stage2_help_says_where_defaults_differ_from_the_official_script():
    result = subprocess.run(["bash", str(SCRIPTS / "stage2_finetune.sh"), "--help"], capture_output=True, text=True, check=True)
    assert "--grad-accum N (2)" in result.stdout and "official ReVision fine-tune" in result.stdout
    assert "--num-tokens 1" in result.stdout and "576" in result.stdout


def test_tower_overrides_from_the_environment(monkeypatch, data):
    from revision_plugin.hosts.llava import apply_overrides
    from revision_plugin.tower import parse_tower_spec

    config = parse_tower_spec(data.spec_online)
    monkeypatch.setenv("REVISION_TOWER_OVERRIDES", "encoder_model=/elsewhere/clip,k=4")
    changed = apply_overrides(config)
    assert changed.encoder_model == "/elsewhere/clip" and changed.num_tokens == 4 and changed.operator == config.operator


def test_llava_data_turns_caption_records_into_pseudo_records(tmp_path, capsys):
    from revision_plugin.cli import main

    records = [
        {"id": "004539375", "image": "00453/004539375.jpg", "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"}]},
        {"image": "x.jpg", "conversations": [{"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": "a cat."}]},
    ]
    source = tmp_path / "blip_laion.json"
    source.write_text(json.dumps(records))
    out_json, out_texts = tmp_path / "stage1.json", tmp_path / "captions.jsonl"
    assert main(["llava-data", "--input", str(source), "--out-json", str(out_json), "--out-texts", str(out_texts)]) == 0
    stage1 = json.loads(out_json.read_text())
    assert [r["text_id"] for r in stage1] == ["004539375", "rec-1"] and all("image" not in r for r in stage1)
    assert stage1[0]["conversations"] == records[0]["conversations"]
    texts = [json.loads(line) for line in out_texts.read_text().splitlines()]
    assert texts[1] == {"id": "rec-1", "text": "a cat."}
    assert main(["llava-data", "--input", str(source), "--out-json", str(out_json), "--out-texts", str(out_texts)]) == 2
    records.append(dict(records[0]))
    source.write_text(json.dumps(records))
    assert main(["llava-data", "--input", str(source), "--out-json", str(tmp_path / "a.json"),
                 "--out-texts", str(tmp_path / "b.jsonl")]) == 2
    assert "duplicate id '004539375'" in capsys.readouterr().err

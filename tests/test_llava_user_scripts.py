"""LLaVA's own v1_5 scripts, as a LLaVA user runs them, with only the model paths,
``--vision_tower revision:...`` and CPU flags changed (bf16/tf32 off, no DeepSpeed, no
flash-attention: ``llava.train.train`` instead of ``train_mem.py``; tiny sizes and steps):

pretrain.sh -> finetune.sh (full) and finetune_lora.sh -> merge_lora_weights.py ->
finetune_task_lora.sh -> llava.eval.model_vqa_loader, each run saving as users save (step
checkpoints, the final save) and resumed from a step checkpoint; then every checkpoint kind
is moved away from the operator, store and encoder it was trained with, and loaded.

No wrapper anywhere: the patched LLaVA registers the plugin itself (subprocesses prove it).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from revision_plugin.testing.tiny_llava import (
    TrainOutput,
    file_lock,
    pytest_shared_dir,
    run_llava_train,
    tiny_llava_data,
)

REPO = Path(__file__).resolve().parents[1]

# The upstream scripts' flags (haotian-liu/LLaVA scripts/v1_5/*.sh), verbatim but for the launcher line.
PRETRAIN = """
    --deepspeed ./scripts/zero2.json --model_name_or_path lmsys/vicuna-13b-v1.5 --version plain
    --data_path ./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json
    --image_folder ./playground/data/LLaVA-Pretrain/images --vision_tower openai/clip-vit-large-patch14-336
    --mm_projector_type mlp2x_gelu --tune_mm_mlp_adapter True --mm_vision_select_layer -2
    --mm_use_im_start_end False --mm_use_im_patch_token False --bf16 True
    --output_dir ./checkpoints/llava-v1.5-13b-pretrain --num_train_epochs 1 --per_device_train_batch_size 32
    --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 --evaluation_strategy "no"
    --save_strategy "steps" --save_steps 24000 --save_total_limit 1 --learning_rate 1e-3 --weight_decay 0.
    --warmup_ratio 0.03 --lr_scheduler_type "cosine" --logging_steps 1 --tf32 True --model_max_length 2048
    --gradient_checkpointing True --dataloader_num_workers 4 --lazy_preprocess True --report_to wandb
"""
FINETUNE = """
    --deepspeed ./scripts/zero3.json --model_name_or_path lmsys/vicuna-13b-v1.5 --version v1
    --data_path ./playground/data/llava_v1_5_mix665k.json --image_folder ./playground/data
    --vision_tower openai/clip-vit-large-patch14-336
    --pretrain_mm_mlp_adapter ./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin
    --mm_projector_type mlp2x_gelu --mm_vision_select_layer -2 --mm_use_im_start_end False
    --mm_use_im_patch_token False --image_aspect_ratio pad --group_by_modality_length True --bf16 True
    --output_dir ./checkpoints/llava-v1.5-13b --num_train_epochs 1 --per_device_train_batch_size 16
    --per_device_eval_batch_size 4 --gradient_accumulation_steps 1 --evaluation_strategy "no"
    --save_strategy "steps" --save_steps 50000 --save_total_limit 1 --learning_rate 2e-5 --weight_decay 0.
    --warmup_ratio 0.03 --lr_scheduler_type "cosine" --logging_steps 1 --tf32 True --model_max_length 2048
    --gradient_checkpointing True --dataloader_num_workers 4 --lazy_preprocess True --report_to wandb
"""
LORA = "--lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 " + FINETUNE.replace(
    "--learning_rate 2e-5", "--learning_rate 2e-4").replace("llava-v1.5-13b ", "llava-v1.5-13b-lora ")
TASK_LORA = LORA.replace("--model_name_or_path lmsys/vicuna-13b-v1.5", "--model_name_or_path liuhaotian/llava-v1.5-13b").replace(
    "--pretrain_mm_mlp_adapter ./checkpoints/llava-v1.5-13b-pretrain/mm_projector.bin", "")


def user_flags(script: str, **changes) -> list[str]:
    """``script``'s flags with ``changes`` (flag -> value; ``None`` drops the flag) and the CPU
    changes every run needs: no DeepSpeed config, bf16/tf32 off, tiny batches, no wandb."""
    tokens = shlex.split(script)
    flags: dict[str, str] = {}
    for name, value in zip(tokens[::2], tokens[1::2]):
        assert name.startswith("--"), name
        flags[name[2:]] = value
    cpu = {"deepspeed": None, "bf16": "False", "tf32": "False", "per_device_train_batch_size": "4",
           "model_max_length": "256", "dataloader_num_workers": "2", "report_to": "none", "disable_tqdm": "True",
           "seed": "0", "lora_r": "8" if "lora_r" in flags else None, "lora_alpha": "16" if "lora_alpha" in flags else None}
    for key, value in {**cpu, **changes}.items():
        if value is None:
            flags.pop(key, None)
        else:
            flags[key] = str(value)
    return [part for key, value in flags.items() for part in (f"--{key}", value)]


def _steps(run) -> list[int]:
    return [h["step"] for h in run.log_history if "loss" in h]


KINDS = ("stage1", "stage2", "lora", "task", "merged")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every user run, once per test session (pytest-xdist workers share it); at the end the
    operator, store and encoder copies the runs used are moved away (``artifacts-gone``)."""
    shared = pytest_shared_dir(tmp_path_factory)
    data = tiny_llava_data(shared)
    root = shared / "llava-user"
    with file_lock(shared / ".llava-user.lock"):
        if not (root / "done.json").is_file():
            if root.exists():
                shutil.rmtree(root)
            _run_everything(data, root)
    r = {name: root / "checkpoints" / path for name, path in json.loads((root / "done.json").read_text()).items()}
    for kind in ("stage1", "stage2", "lora"):
        r[f"{kind}_resumed"] = TrainOutput(r[kind], (root / f"{kind}_resumed.txt").read_text())
    r.update(data=data, root=root, gone=root / "artifacts-gone", arts=root / "artifacts",
             encoder_loads=(root / "encoder-loads.txt").read_text().split(),
             lora_checkpoint2=torch.load(root / "lora-checkpoint-2-non-lora.bin", weights_only=True))
    return r


def _run_everything(data, root: Path) -> None:
    arts = root / "artifacts"  # private copies: removed before the checkpoints are loaded
    shutil.copytree(data.operator, arts / "operator")
    shutil.copytree(data.text_store, arts / "text_store")
    shutil.copytree(data.encoder, arts / "tiny-clip")
    tower = f"encoder=hf_clip,encoder_model={arts / 'tiny-clip'},operator={arts / 'operator'},num_tokens=1,offline=true"
    out = root / "checkpoints"
    common = {"image_folder": data.image_folder, "num_train_epochs": None}

    # -- pretrain.sh, as `python -m llava.train.train` in its own process (no wrapper, nothing registered by us)
    stage1 = out / "llava-v1.5-tiny-pretrain"
    flags = user_flags(PRETRAIN, model_name_or_path=data.llm, data_path=data.stage1_json, output_dir=stage1,
                       vision_tower=f"revision:{tower},text_store={arts / 'text_store'}", learning_rate="5e-3",
                       max_steps=2, save_steps=2, **common)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", "llava.train.train", *flags], cwd=root, env=env, capture_output=True,
                          text=True, timeout=400, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    resumed = {"stage1": run_llava_train(_with(flags, max_steps=3), attn_implementation=None)}

    # -- finetune.sh (full), then resumed from its step checkpoint; counts encoder loads per process
    stage2 = out / "llava-v1.5-tiny"
    loads = root / "encoder-load-pids.txt"
    from revision_plugin import encoders

    original_load = encoders.load_encoder

    def counting_load(*args, **kwargs):
        with open(loads, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return original_load(*args, **kwargs)

    encoders.load_encoder = counting_load
    try:
        flags2 = user_flags(FINETUNE, model_name_or_path=data.llm, data_path=data.stage2_json, output_dir=stage2,
                            vision_tower=f"revision:{tower}", pretrain_mm_mlp_adapter=stage1 / "mm_projector.bin",
                            learning_rate="1e-3", max_steps=2, save_steps=2, **common)
        run_llava_train(flags2, attn_implementation=None)
        resumed["stage2"] = run_llava_train(_with(flags2, max_steps=3), attn_implementation=None)
    finally:
        encoders.load_encoder = original_load
    pids = loads.read_text().split() if loads.exists() else []
    (root / "encoder-loads.txt").write_text("".join("main\n" if pid == str(os.getpid()) else f"worker {pid}\n" for pid in pids))

    # -- finetune_lora.sh, then resumed; finetune_task_lora.sh from the full stage-2 model
    lora = out / "llava-v1.5-tiny-lora"
    flags3 = user_flags(LORA, model_name_or_path=data.llm, data_path=data.stage2_json, output_dir=lora,
                        vision_tower=f"revision:{tower}", pretrain_mm_mlp_adapter=stage1 / "mm_projector.bin",
                        learning_rate="1e-3", mm_projector_lr="1e-3", max_steps=2, save_steps=2, **common)
    run_llava_train(flags3, attn_implementation=None)
    shutil.copy(lora / "checkpoint-2" / "non_lora_trainables.bin", root / "lora-checkpoint-2-non-lora.bin")
    resumed["lora"] = run_llava_train(_with(flags3, max_steps=3), attn_implementation=None)
    task = out / "llava-v1.5-tiny-task-lora"
    run_llava_train(user_flags(TASK_LORA, model_name_or_path=stage2, data_path=data.stage2_json, output_dir=task,
                                           vision_tower=f"revision:{tower}", learning_rate="1e-3", max_steps=1, save_steps=1,
                                           **common), attn_implementation=None)

    # -- scripts/merge_lora_weights.py (its merge_lora(), line for line)
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    merged = out / "llava-v1.5-tiny-merged"
    tokenizer, model, _, _ = load_pretrained_model(str(lora), str(data.llm), get_model_name_from_path(str(lora)), device_map="cpu")
    model.save_pretrained(str(merged))
    tokenizer.save_pretrained(str(merged))
    del model
    for kind, run in resumed.items():
        (root / f"{kind}_resumed.txt").write_text(run.stdout)
    shutil.move(str(arts), str(root / "artifacts-gone"))
    (root / "done.json").write_text(json.dumps({k: p.name for k, p in zip(KINDS, (stage1, stage2, lora, task, merged))}))


def _with(flags: list[str], **changes) -> list[str]:
    values = dict(zip(flags[::2], flags[1::2]))
    values.update({f"--{k}": str(v) for k, v in changes.items()})
    return [part for item in values.items() for part in item]


# ----------------------------------------------------------------------------- 1. saving, resuming


@pytest.mark.parametrize("kind", ["stage1", "stage2", "lora"])
def test_runs_save_step_checkpoints_and_the_final_model_and_resume(runs, kind):
    out, resumed = runs[kind], runs[f"{kind}_resumed"]
    assert _steps(resumed) == [1, 2, 3]  # 1-2 from checkpoint-2's state, 3 trained after resuming
    assert resumed.stdout.count("'loss'") == 1
    assert "tokenization mismatch" not in resumed.stdout
    final = {"stage1": ["mm_projector.bin"], "stage2": ["model.safetensors"],
             "lora": ["adapter_model.safetensors", "adapter_config.json", "non_lora_trainables.bin"]}[kind]
    state = ["optimizer.pt", "scheduler.pt", "trainer_state.json"]
    for folder, names in ((out / "checkpoint-3", final + state), (out, final)):
        for name in [*names, "config.json", "revision_tower/revision_tower.json", "revision_tower/operator/operator.json"]:
            assert (folder / name).is_file(), (folder, name)
        config = json.loads((folder / "config.json").read_text())
        assert config["mm_vision_tower"] == "revision:revision_tower"
        assert config["revision_conv_template"] == ("plain" if kind == "stage1" else "v1")
        assert "revision_tower_saved_at" not in config
    assert not (out / "checkpoint-2").exists()  # --save_total_limit 1, as LLaVA's scripts ask


def test_lora_step_checkpoints_keep_and_restore_the_trained_projector(runs):
    stage1 = torch.load(runs["stage1"] / "mm_projector.bin", weights_only=True)
    key = "model.mm_projector.0.weight"
    saved = runs["lora_checkpoint2"][f"base_model.model.{key}"]
    assert not torch.equal(saved, stage1[key])  # the step checkpoint holds the *trained* projector
    final = torch.load(runs["lora"] / "non_lora_trainables.bin", weights_only=True)[f"base_model.model.{key}"]
    # one more step from checkpoint-2's projector (not from stage 1's): a small move away from it
    assert (final - saved).abs().max() < (final - stage1[key]).abs().max()


# ----------------------------------------------------------------------------- 6. encoder loads


def test_dataloader_workers_never_load_the_encoder(runs):
    """Two stage-2 runs with --dataloader_num_workers 2: one encoder per run, in this process."""
    assert runs["encoder_loads"] == ["main"] * 2


# ----------------------------------------------------------------------------- 3, 4. LoRA, merge, travel


@pytest.fixture(scope="module")
def moved(runs, tmp_path_factory):
    """Every checkpoint copied elsewhere (the operator, store and encoder copies they were
    trained with are gone); the user re-points the encoder weights with the override."""
    target = tmp_path_factory.mktemp("elsewhere")
    paths = {}
    for kind in KINDS:
        paths[kind] = target / runs[kind].name
        shutil.copytree(runs[kind], paths[kind], ignore=shutil.ignore_patterns("checkpoint-*"))
    assert not runs["arts"].exists()
    os.environ["REVISION_TOWER_OVERRIDES"] = f"encoder_model={runs['gone'] / 'tiny-clip'}"
    yield paths
    os.environ.pop("REVISION_TOWER_OVERRIDES", None)


@pytest.mark.parametrize("kind, base", [("stage1", "llm"), ("stage2", None), ("lora", "llm"), ("merged", None),
                                        ("task", "stage2")])
def test_every_checkpoint_kind_loads_after_a_move(runs, moved, kind, base):
    from llava.mm_utils import get_model_name_from_path
    from llava.model.builder import load_pretrained_model

    from revision_plugin.hosts.llava import tower_of

    path = moved[kind]
    assert (path / "revision_tower" / "operator" / "operator.safetensors").is_file()
    assert str(runs["arts"]) not in (path / "revision_tower" / "revision_tower.json").read_text().replace(
        str(runs["arts"] / "tiny-clip"), "")  # only the encoder weights path, which the override re-points
    model_base = {"llm": str(runs["data"].llm), "stage2": str(moved["stage2"]), None: None}[base]
    tokenizer, model, processor, _ = load_pretrained_model(str(path), model_base, get_model_name_from_path(str(path)),
                                                           device_map="cpu", device="cpu")
    tower = tower_of(model)
    assert tower is not None and Path(tower.tower_config.operator).is_relative_to(path)
    from llava.mm_utils import process_images, tokenizer_image_token
    from PIL import Image

    image = Image.open(runs["data"].image_folder / "red_square.png").convert("RGB")
    pixels = process_images([image], processor, model.config).to(model.dtype)
    ids = tokenizer_image_token("<image>\nWhat colour is the shape?", tokenizer, return_tensors="pt").unsqueeze(0)
    with torch.inference_mode():
        out = model.generate(ids, images=pixels, image_sizes=[image.size], do_sample=False, max_new_tokens=3)
    assert out.shape[-1] > 0


def test_merged_lora_matches_lora_loaded_with_its_base(runs, moved):
    from llava.model.builder import load_pretrained_model

    _, merged, _, _ = load_pretrained_model(str(moved["merged"]), None, "llava-merged", device_map="cpu", device="cpu")
    _, lora, _, _ = load_pretrained_model(str(moved["lora"]), str(runs["data"].llm), "llava-lora", device_map="cpu", device="cpu")
    key = "model.mm_projector.0.weight"
    torch.testing.assert_close(merged.state_dict()[key], lora.state_dict()[key], rtol=0, atol=0)
    config = json.loads((moved["merged"] / "config.json").read_text())
    assert config["mm_vision_tower"] == "revision:revision_tower" and config["revision_conv_template"] == "v1"


# ----------------------------------------------------------------------------- 2. LLaVA's own eval entry point

CUDA_ON_CPU = '''
import torch
_to = torch.Tensor.to
def _cpu(d):
    return "cpu" if (isinstance(d, str) and d.startswith("cuda")) or (isinstance(d, torch.device) and d.type == "cuda") else d
def _to_cpu(self, *args, **kwargs):
    if "device" in kwargs:
        kwargs["device"] = _cpu(kwargs["device"])
    return _to(self, *(_cpu(a) for a in args), **kwargs)
torch.Tensor.to = _to_cpu
torch.Tensor.cuda = lambda self, *args, **kwargs: self
'''


def test_llava_model_vqa_loader_evaluates_a_moved_lora_with_model_base(runs, moved, tmp_path):
    """`python -m llava.eval.model_vqa_loader` unchanged, in its own process. Only CUDA is
    simulated (a sitecustomize maps LLaVA's hard-coded .cuda()/device='cuda' to the CPU)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(CUDA_ON_CPU)
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps({"question_id": i, "image": name, "text": "What colour is the shape?"}) + "\n"
                                 for i, name in enumerate(["red_square.png", "blue_circle.png"])))
    answers = tmp_path / "answers" / "tiny.jsonl"
    cmd = [sys.executable, "-m", "llava.eval.model_vqa_loader", "--model-path", str(moved["lora"]),
           "--model-base", str(runs["data"].llm), "--image-folder", str(runs["data"].image_folder),
           "--question-file", str(questions), "--answers-file", str(answers), "--conv-mode", "vicuna_v1",
           "--temperature", "0", "--max_new_tokens", "4"]
    env = {**os.environ, "PYTHONPATH": str(shim), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [row["question_id"] for row in rows] == [0, 1] and all(row["model_id"] == "llava-v1.5-tiny-lora" for row in rows)

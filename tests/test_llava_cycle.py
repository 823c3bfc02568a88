"""The whole ReVision cycle through LLaVA 1.2.2's own code (real llava-torch, tiny models, CPU):
stage 1 on pseudo text -> mm_projector.bin -> stage 2 on PNG images -> load_pretrained_model
-> generate on a real image; the paired baseline; mixed pseudo/real batches."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from revision_plugin.errors import ArtifactMismatchError, BadInputError
from revision_plugin.testing.tiny_llava import (
    CHECKPOINT_NAME,
    STAGE1_NAME,
    build_tiny_llava_checkpoint,
    pytest_shared_dir,
    run_llava_train,
    stage1_args,
    tiny_llava_data,
)

MISMATCH = "tokenization mismatch"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    workdir = pytest_shared_dir(tmp_path_factory)
    build_tiny_llava_checkpoint(workdir)
    return workdir


@pytest.fixture(scope="module")
def data(workdir):
    return tiny_llava_data(workdir)


def _load(path: Path, model_base=None, name=None):
    from revision_plugin.hosts.llava import load_pretrained_model

    return load_pretrained_model(str(path), None if model_base is None else str(model_base), name or path.name,
                                 device="cpu", device_map="cpu")


def _prompt_ids(tokenizer, question: str = "What colour is the shape?", template: str = "vicuna_v1"):
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import conv_templates
    from llava.mm_utils import tokenizer_image_token

    conv = conv_templates[template].copy()
    conv.append_message(conv.roles[0], f"<image>\n{question}")
    conv.append_message(conv.roles[1], None)
    return tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)


def _pixels(data, processor, model, name="red_square.png"):
    from llava.mm_utils import process_images
    from PIL import Image

    image = Image.open(data.image_folder / name).convert("RGB")
    return process_images([image], processor, model.config).to(model.dtype), image


# ----------------------------------------------------------------------------- stage 1


def test_stage1_learns_from_pseudo_text(workdir):
    stage1 = workdir / STAGE1_NAME
    stdout = (workdir / "stage1_stdout.txt").read_text() + (workdir / "stage2_stdout.txt").read_text()
    assert MISMATCH not in stdout  # LLaVA's silent "train on nothing" warning
    history = json.loads((stage1 / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) >= 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.75 * first, losses  # the projector learned to convey the caption


def test_stage1_projector_file_carries_metadata(workdir, data):
    from revision_plugin.hosts.llava import read_projector_metadata

    path = workdir / STAGE1_NAME / "mm_projector.bin"
    weights = torch.load(path, map_location="cpu", weights_only=True)
    assert {k for k in weights if "mm_projector" in k} == {
        "model.mm_projector.0.weight", "model.mm_projector.0.bias", "model.mm_projector.2.weight", "model.mm_projector.2.bias"}
    meta = read_projector_metadata(path)
    assert meta["encoder_id"] == data.encoder_id and meta["mm_hidden_size"] == 32 and meta["hidden_size"] == 64
    assert meta["mm_projector_type"] == "mlp2x_gelu" and meta["alignment_method"] == "realign" and meta["num_tokens"] == 1


def test_projector_for_another_encoder_is_refused(workdir):
    from types import SimpleNamespace

    from revision_plugin.hosts.llava import check_projector_metadata
    from revision_plugin.tower import TowerConfig

    path = workdir / STAGE1_NAME / "mm_projector.bin"
    model_config = SimpleNamespace(hidden_size=64)
    args = SimpleNamespace(mm_projector_type="mlp2x_gelu")
    check_projector_metadata(path, TowerConfig(encoder_id=None, dim=32), model_config, args)
    with pytest.raises(ArtifactMismatchError, match="encoder_id"):
        check_projector_metadata(path, TowerConfig(encoder_id="llm2clip:other", dim=32), model_config, args)
    with pytest.raises(ArtifactMismatchError, match="mm_projector_type"):
        check_projector_metadata(path, TowerConfig(dim=32), model_config, SimpleNamespace(mm_projector_type="linear"))


def test_stage1_only_checkpoint_is_evaluable(workdir, data):
    tokenizer, model, processor, _ = _load(workdir / STAGE1_NAME, model_base=data.llm)
    pixels, image = _pixels(data, processor, model)
    out = model.generate(_prompt_ids(tokenizer, template="plain"), images=pixels, image_sizes=[image.size],
                         do_sample=False, max_new_tokens=4)
    assert out.shape[-1] > 0


# ----------------------------------------------------------------------------- stage 2 + inference


def test_stage2_checkpoint_loads_and_generates_on_a_real_image(workdir, data):
    from revision_plugin.hosts.llava import tower_of

    checkpoint = workdir / CHECKPOINT_NAME
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["mm_vision_tower"] == "revision:revision_tower"
    assert config["revision_tower"]["encoder_id"] == data.encoder_id and config["revision_tower"]["num_tokens"] == 1
    tokenizer, model, processor, _ = _load(checkpoint)
    tower = tower_of(model)
    assert tower is not None and tower.tower_config.text_store is None
    pixels, image = _pixels(data, processor, model)
    out = model.generate(_prompt_ids(tokenizer), images=pixels, image_sizes=[image.size], do_sample=False, max_new_tokens=8)
    answer = tokenizer.decode(out[0], skip_special_tokens=True).strip()
    assert answer
    # The image matters: another picture changes the next-token distribution.
    ids = _prompt_ids(tokenizer)
    other, _ = _pixels(data, processor, model, "blue_circle.png")
    with torch.no_grad():
        a = model(input_ids=ids, images=pixels).logits[0, -1]
        b = model(input_ids=ids, images=other).logits[0, -1]
    assert not torch.allclose(a, b)


def test_reloaded_and_moved_checkpoint_gives_the_same_logits(workdir, data, tmp_path):
    checkpoint = workdir / CHECKPOINT_NAME
    tokenizer, model, processor, _ = _load(checkpoint)
    pixels, _ = _pixels(data, processor, model)
    ids = _prompt_ids(tokenizer)
    with torch.no_grad():
        reference = model(input_ids=ids, images=pixels).logits
    moved = tmp_path / "moved-llava-checkpoint"
    shutil.copytree(checkpoint, moved)
    config = json.loads((moved / "config.json").read_text())
    assert "revision_tower_saved_at" not in config  # no absolute save path: it resolves next to itself
    assert config["revision_conv_template"] == "v1"
    tokenizer2, model2, processor2, _ = _load(moved)
    with torch.no_grad():
        again = model2(input_ids=_prompt_ids(tokenizer2), images=_pixels(data, processor2, model2)[0]).logits
    torch.testing.assert_close(again, reference, rtol=0, atol=0)


def test_a_checkpoint_that_lost_its_tower_never_takes_the_one_in_the_working_directory(workdir, tmp_path,
                                                                                       monkeypatch):
    broken = tmp_path / "llava-no-tower"
    shutil.copytree(workdir / CHECKPOINT_NAME, broken)
    shutil.rmtree(broken / "revision_tower")
    elsewhere = tmp_path / "elsewhere"  # another run's tower, where the user happens to be
    shutil.copytree(workdir / CHECKPOINT_NAME / "revision_tower", elsewhere / "revision_tower")
    monkeypatch.chdir(elsewhere)
    with pytest.raises(FileNotFoundError, match="revision tower 'revision:revision_tower': not found") as raised:
        _load(broken)
    tried = str(raised.value).split("(tried ")[1].split("); set")[0].split(", ")
    assert len(tried) == len(set(tried)) and str(broken / "revision_tower") in tried, tried


def test_operator_stays_frozen_through_training(workdir, data):
    from revision_plugin.align.base import load_operator
    from revision_plugin.hosts.llava import tower_of

    original = load_operator(data.operator)
    for saved_dir in (workdir / STAGE1_NAME, workdir / CHECKPOINT_NAME):
        saved = load_operator(saved_dir / "revision_tower" / "operator")
        for (name, a), (_, b) in zip(original.named_buffers(), saved.named_buffers()):
            assert torch.equal(a, b), (saved_dir, name)
    tokenizer, model, processor, _ = _load(workdir / CHECKPOINT_NAME)
    model.float().train()
    tower = tower_of(model)
    assert not any(True for _ in tower.parameters())
    pixels, _ = _pixels(data, processor, model)
    ids = _prompt_ids(tokenizer)
    loss = model(input_ids=ids, images=pixels.float(), labels=ids.masked_fill(ids < 0, -100)).loss
    loss.backward()
    assert model.get_model().mm_projector[0].weight.grad is not None
    assert tower.operator.training  # follows the host
    for name, buf in tower.operator.named_buffers():
        assert buf.grad is None and not buf.requires_grad
        assert torch.equal(buf, dict(original.named_buffers())[name].to(buf.device))


def test_pseudo_and_image_features_share_the_projector(workdir, data):
    import numpy as np

    from revision_plugin.align.base import load_operator
    from revision_plugin.store import open_store
    from revision_plugin.tower import (
        KIND_PIXELS,
        KIND_TEXT_FEATURE,
        TowerSample,
        collate_tower_inputs,
    )

    _, model, processor, _ = _load(workdir / CHECKPOINT_NAME)
    model.float().eval()
    pixels, image = _pixels(data, processor, model)
    text_emb = open_store(data.text_store).lookup(["cap-red-square"])[0]
    batch = collate_tower_inputs([TowerSample(KIND_TEXT_FEATURE, text_emb), TowerSample(KIND_PIXELS, pixels[0].float())])
    with torch.no_grad():
        features = model.encode_images(batch)  # LLaVA's own tower -> projector path
    projector = model.get_model().mm_projector
    op = load_operator(data.operator)
    from revision_plugin.encoders import load_encoder

    image_emb = load_encoder("hf_clip", data.encoder, offline=True).encode_images([image])
    with torch.no_grad():
        expected_text = projector(op(torch.from_numpy(np.asarray(text_emb))).float())
        expected_image = projector(op.align_image(image_emb)[0].float())
    torch.testing.assert_close(features[0, 0], expected_text, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features[1, 0], expected_image, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- baseline, mixed data, records


def test_paired_baseline_learns_through_the_same_tower(workdir, data, tmp_path):
    out = run_llava_train(stage1_args(data, tmp_path / "paired-stage1", spec=data.spec_online,
                                      data_path=data.paired_json, epochs=6))
    assert MISMATCH not in out.stdout
    losses = out.losses
    assert len(losses) >= 30 and sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5, losses
    assert (tmp_path / "paired-stage1" / "mm_projector.bin").is_file()


def test_mixed_pseudo_and_real_batches(workdir, data, tmp_path):
    records = json.loads(data.stage1_json.read_text())[:6]  # cached pseudo (text_id)
    records += json.loads(data.stage1_online_json.read_text())[:6]  # online pseudo (text)
    records += json.loads(data.paired_json.read_text())[:6]  # real images
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(records))
    spec = data.spec_cached  # text store + encoder for texts and images
    out = run_llava_train(stage1_args(data, tmp_path / "mixed", spec=spec, data_path=mixed, epochs=1, batch_size=6,
                                      extra=["--group_by_modality_length", "False"]))
    assert MISMATCH not in out.stdout
    assert len(out.losses) == 3 and all(loss > 0 for loss in out.losses)


def _dataset(data, records, tmp_path, tokenizer=None, version="plain", image_folder=None, raw=None, **tower_overrides):
    import llava.train.train as llava_train
    from llava import conversation as conversation_lib
    from transformers import AutoTokenizer

    from revision_plugin.hosts.llava import RevisionImageProcessor, register
    from revision_plugin.tower import parse_tower_spec, resolve_tower_config

    register()
    path = tmp_path / "records.json"
    path.write_bytes(json.dumps(records).encode() if raw is None else raw)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(str(data.llm), use_fast=False, model_max_length=256,
                                                           padding_side="right")
    tokenizer.pad_token = tokenizer.unk_token
    conversation_lib.default_conversation = conversation_lib.conv_templates[version]
    config = resolve_tower_config(parse_tower_spec(data.spec_cached))
    for key, value in tower_overrides.items():
        setattr(config, key, value)
    data_args = llava_train.DataArguments(data_path=str(path), lazy_preprocess=True, is_multimodal=True,
                                          image_folder=str(image_folder or data.image_folder))
    data_args.image_processor = RevisionImageProcessor(None, config)
    data_args.mm_use_im_start_end = False
    return llava_train.make_supervised_data_module(tokenizer=tokenizer, data_args=data_args)["train_dataset"]


def test_tokenization_mismatch_is_an_error_not_a_silent_zero_loss(data, tmp_path, capsys):
    from transformers import AutoTokenizer

    records = [{"id": "two-rounds", "text_id": "cap-red-square", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": "The shape is red."},
        {"from": "human", "value": "What shape is in the picture?"}, {"from": "gpt", "value": "It is a square."}]}]
    good = _dataset(data, records, tmp_path, version="vicuna_v1")
    item = good[0]
    assert (item["labels"] != -100).any()
    assert MISMATCH not in capsys.readouterr().out
    # A tokenizer whose `legacy` flag does not describe how it tokenises (the classic cause of
    # LLaVA's mismatch) makes LLaVA's v1 masking count rounds wrong and mask everything:
    # found by the start-up scan, before any training step.
    wrong = AutoTokenizer.from_pretrained(str(data.llm), use_fast=False, model_max_length=256, padding_side="right")
    wrong.legacy = True
    with pytest.raises(BadInputError, match="record 0 \\(id 'two-rounds'\\): every label is masked"):
        _dataset(data, records, tmp_path, tokenizer=wrong, version="vicuna_v1")
    assert MISMATCH in capsys.readouterr().out


BAD_RECORDS = [
    ({"id": "two-keys", "image": "red_square.png", "text_id": "cap-red-square"}, "at most one visual input"),
    ({"id": "no-caption", "text_id": "no-such-caption"}, "'no-such-caption' is not in the text_store"),
    ({"id": "no-token", "text_id": "cap-red-square", "first": "describe"}, "0 <image> tokens"),
    ({"id": "two-tokens", "text_id": "cap-red-square", "first": "<image>\n<image>"}, "2 <image> tokens"),
    ({"id": "token-no-input", "first": "<image>\n"}, "but no visual input"),
    ({"id": "empty-text", "text": ""}, "non-empty string"),
    ({"id": "no-file", "image": "missing.png"}, "missing.png not found"),
    ({"id": "broken-file", "image": "broken.png"}, "cannot be read"),
    ({"id": "cut-png", "image": "cut.png"}, "cut.png cannot be read (OSError: image file is truncated"),
    ({"id": "cut-jpeg", "image": "cut.jpg"}, "cut.jpg cannot be read (OSError: image file is truncated"),
    ({"id": "no-conversations", "conversations": None}, "no 'conversations' list"),
]


def _records_with_bad_ones(data, tmp_path):
    shutil.copytree(data.image_folder, tmp_path / "images")
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    # Downloads cut short: the header reads fine, the pixels do not (LLaVA would fail mid-training).
    for name, fmt in (("cut.png", "PNG"), ("cut.jpg", "JPEG")):
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, fmt)
        (tmp_path / "images" / name).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    # A complete JPEG followed by padding after its end marker is a good image.
    Image.open(tmp_path / "images" / "red_square.png").convert("RGB").save(tmp_path / "images" / "padded.jpg")
    with open(tmp_path / "images" / "padded.jpg", "ab") as fh:
        fh.write(b"\0" * 4096)
    good = {"id": "ok", "text_id": "cap-red-square", "conversations": [
        {"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": "a red square."}]}
    records = [good]
    for spec, _ in BAD_RECORDS:
        spec = dict(spec)
        first = spec.pop("first", "<image>\n")
        spec.setdefault("conversations", [{"from": "human", "value": first}, {"from": "gpt", "value": "a red square."}])
        records.append(spec)
    padded = {**{k: v for k, v in good.items() if k != "text_id"}, "id": "ok-padded", "image": "padded.jpg"}
    return records + [dict(good, id="ok-2"), padded]


@pytest.mark.parametrize("lenient_pil", [False, True])  # lmms-eval sets LOAD_TRUNCATED_IMAGES on import
def test_every_bad_record_is_reported_before_training(data, tmp_path, monkeypatch, lenient_pil):
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient_pil)
    records = _records_with_bad_ones(data, tmp_path)
    with pytest.raises(BadInputError) as info:
        _dataset(data, records, tmp_path, image_folder=tmp_path / "images")
    lines = str(info.value).splitlines()
    assert f"{len(BAD_RECORDS)} of {len(records)} records" in lines[0] and "training was not started" in lines[0]
    assert len(lines) == 1 + len(BAD_RECORDS)
    for index, ((spec, reason), line) in enumerate(zip(BAD_RECORDS, lines[1:]), start=1):
        assert line.startswith(f"{tmp_path / 'records.json'}: record {index} (id {spec['id']!r}): "), line
        assert reason in line, (reason, line)


@pytest.mark.parametrize("raw, message", [
    (b"[]", "records.json: no records (an empty list); nothing to train on"),
    (b'[{"id": "a",', "records.json: invalid JSON (Expecting"),
    ('[{"id": "caf\u00e9"}]'.encode("latin-1"), "records.json: not a UTF-8 JSON file (invalid"),
])
def test_an_unreadable_records_file_is_one_line(data, tmp_path, raw, message):
    with pytest.raises(BadInputError, match=re.escape(message)):
        _dataset(data, [], tmp_path, raw=raw)


def test_bad_records_can_be_left_out_explicitly(data, tmp_path, monkeypatch):
    records = _records_with_bad_ones(data, tmp_path)
    listing = tmp_path / "left-out" / "bad.jsonl"
    monkeypatch.setenv("REVISION_SKIP_BAD_RECORDS", str(listing))
    dataset = _dataset(data, records, tmp_path, image_folder=tmp_path / "images")
    assert [r["id"] for r in dataset.list_data_dict] == ["ok", "ok-2", "ok-padded"] and len(dataset) == 3
    left_out = [json.loads(line) for line in listing.read_text().splitlines()]
    assert [(r["index"], r["id"]) for r in left_out] == [(i, spec["id"]) for i, (spec, _) in enumerate(BAD_RECORDS, start=1)]
    assert all(r["file"] == str(tmp_path / "records.json") and r["reason"] for r in left_out)
    assert (dataset[1]["labels"] != -100).any()


def test_register_is_idempotent_and_undoable():
    import llava.train.train as llava_train
    from llava.model import LlavaLlamaForCausalLM

    from revision_plugin.hosts.llava import register

    undo = register()
    assert register() is undo
    hooked = llava_train.make_supervised_data_module
    assert "save_pretrained" in LlavaLlamaForCausalLM.__dict__
    undo()
    assert llava_train.make_supervised_data_module is hooked.__wrapped__
    assert "save_pretrained" not in LlavaLlamaForCausalLM.__dict__  # inherited from transformers again
    assert not hasattr(llava_train.make_supervised_data_module, "__wrapped__")
    undo()  # a second undo is harmless
    assert register() is not undo
    assert llava_train.make_supervised_data_module is not hooked.__wrapped__


def test_llama_3_template_masks_exactly_the_answers(data, tmp_path, capsys):
    """The paper's LLM is Llama-3-Instruct; LLaVA 1.2.2 has no template for it (`--version llama_3`)."""
    from llava.conversation import conv_templates
    from transformers import AutoTokenizer

    records = [{"id": "l3", "text_id": "cap-red-square", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is the shape?"}, {"from": "gpt", "value": "The shape is red."},
        {"from": "human", "value": "What shape is in the picture?"}, {"from": "gpt", "value": "It is a square."}]}]
    tokenizer = AutoTokenizer.from_pretrained(str(data.llm), use_fast=False, model_max_length=256, padding_side="right")
    item = _dataset(data, records, tmp_path, tokenizer=tokenizer, version="llama_3")[0]
    learned = item["labels"][item["labels"] != -100]
    text = tokenizer.decode(learned)
    assert text.replace(" ", "") == "Theshapeisred.<|eot_id|>Itisasquare.<|eot_id|>", text
    assert (item["input_ids"] == -200).sum() == 1  # one <image> slot, LLaVA's own marker
    prompt = conv_templates["llama_3"].copy()
    prompt.append_message(prompt.roles[0], "<image>\nHi")
    prompt.append_message(prompt.roles[1], None)
    assert prompt.get_prompt().endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert MISMATCH not in capsys.readouterr().out


def test_stage1_follows_its_seed(data, tmp_path):
    """LLaVA builds the projector before its Trainer seeds anything: without the patch that seeds
    when the arguments are parsed, two runs with the same --seed started from different weights."""
    def projector(name: str, seed: str) -> dict:
        run = run_llava_train(stage1_args(data, tmp_path / name, extra=["--max_steps", "1", "--seed", seed]))
        return torch.load(run.output_dir / "mm_projector.bin", weights_only=True)

    first, again, other = projector("a", "3"), projector("b", "3"), projector("c", "4")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.mm_projector.0.weight"], other["model.mm_projector.0.weight"])


def test_stage1_can_be_resumed(data, tmp_path):
    """LLaVA saves only mm_projector.bin in stage-1 checkpoints; resuming needs the optimizer,
    scheduler and trainer state too (IntelLabs/multimodal_cognitive_ai PR #31)."""
    out = tmp_path / "resumable"
    save = ["--save_strategy", "steps", "--save_steps", "3", "--max_steps", "3"]
    first = run_llava_train(stage1_args(data, out, extra=save))
    checkpoint = out / "checkpoint-3"
    for name in ("mm_projector.bin", "optimizer.pt", "scheduler.pt", "trainer_state.json", "revision_tower"):
        assert (checkpoint / name).exists(), name
    saved = torch.load(checkpoint / "mm_projector.bin", weights_only=True)
    resumed = run_llava_train(stage1_args(data, out, extra=[*save[:-1], "6"]))  # LLaVA resumes from checkpoint-*
    assert MISMATCH not in first.stdout + resumed.stdout
    steps = [h["step"] for h in resumed.log_history if "loss" in h]
    assert steps == [1, 2, 3, 4, 5, 6]  # 1-3 restored from the checkpoint's state, 4-6 trained now
    assert resumed.stdout.count("'loss'") == 3 and first.stdout.count("'loss'") == 3
    final = torch.load(out / "mm_projector.bin", weights_only=True)
    assert not torch.equal(final["model.mm_projector.0.weight"], saved["model.mm_projector.0.weight"])

    # A later save cut short (killed while writing checkpoint-7): the same command names it
    # and what to do, instead of failing inside transformers on its missing trainer_state.json.
    cut = out / "checkpoint-7"
    shutil.copytree(out / "checkpoint-6", cut)
    (cut / "trainer_state.json").unlink()
    with pytest.raises(BadInputError, match="checkpoint-7: incomplete step checkpoint .* to resume from checkpoint-6"):
        run_llava_train(stage1_args(data, out, extra=[*save[:-1], "9"]))


def test_text_only_stage1_transfers_to_real_images(workdir, data):
    """ReVision's claim in miniature: a projector trained on pseudo-visual *text* only, fed
    *real* images through the same tower (op.align_image), already captions them far above
    chance (1 in 12)."""
    from itertools import product

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    from revision_plugin.testing.tiny_llava import COLOURS, SHAPES, caption_for

    tokenizer, model, processor, _ = _load(workdir / STAGE1_NAME, model_base=data.llm)
    model.float()
    ids = tokenizer_image_token("<image>", tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt").unsqueeze(0)
    exact = colour = 0
    for c, s in product(COLOURS, SHAPES):
        pixels, _ = _pixels(data, processor, model, f"{c}_{s}.png")
        out = model.generate(ids, images=pixels.float(), do_sample=False, max_new_tokens=10)
        text = tokenizer.decode(out[0], skip_special_tokens=True).strip()
        exact += text.startswith(caption_for(c, s).rstrip("."))
        colour += text.startswith(f"a {c} ")
    assert exact >= 3 and colour >= 6, (exact, colour)


def test_stage1_on_cached_text_never_loads_the_encoder(data, tmp_path, monkeypatch):
    """A text_id-only stage 1 needs no image encoder (LLM2CLIP's is 0.6B parameters)."""
    import pickle

    from revision_plugin import encoders

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder was loaded")

    monkeypatch.setattr(encoders, "load_encoder", refuse)
    out = run_llava_train(stage1_args(data, tmp_path / "cached-only", epochs=1))
    assert len(out.losses) == 6
    from revision_plugin.hosts.llava import LlavaRevisionTower
    from revision_plugin.tower import parse_tower_spec

    processor = LlavaRevisionTower(parse_tower_spec(data.spec_cached)).image_processor
    monkeypatch.undo()
    restored = pickle.loads(pickle.dumps(processor))  # DataLoader workers (spawn)
    assert restored.crop_size["height"] == 32

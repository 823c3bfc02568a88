"""PseudoVisionTower on its own (no host): specs, pseudo/image modes, cached/online inputs,
dtype rules, a frozen operator that follows train/eval, and artifact checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import revision_plugin.align  # noqa: F401  (registers the operators)
from revision_plugin.align.base import fit_operator, load_operator
from revision_plugin.errors import ArtifactMismatchError, BadInputError
from revision_plugin.tower import (
    KIND_IMAGE_FEATURE,
    KIND_NONE,
    KIND_PIXELS,
    KIND_TEXT,
    KIND_TEXT_FEATURE,
    PseudoVisionTower,
    TowerBatch,
    TowerConfig,
    TowerSample,
    collate_tower_inputs,
    parse_tower_spec,
    resolve_tower_config,
    save_tower_artifacts,
)

CAPTIONS = ["a red square.", "a blue circle.", "a green triangle.", "a yellow square.", "a red circle.", "a blue square."]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    from revision_plugin.encoders import load_encoder
    from revision_plugin.store import write_store
    from revision_plugin.testing.tiny_clip import build_tiny_clip
    from revision_plugin.testing.tiny_llava import COLOURS, draw_shape

    root = tmp_path_factory.mktemp("tower")
    clip_dir = build_tiny_clip(root / "clip")
    encoder = load_encoder("hf_clip", clip_dir, offline=True)
    images = [draw_shape(c, s) for c in ("red", "blue", "green") for s in ("square", "circle")]
    assert set(COLOURS) >= {"red", "blue", "green"}
    text_emb = encoder.encode_texts(CAPTIONS).numpy()
    image_emb = encoder.encode_images(images).numpy()
    ids = [f"t{i}" for i in range(len(CAPTIONS))]
    text_store = write_store(root / "text_store", ids, text_emb, encoder.encoder_id, fsync=False)
    image_ids = [f"img{i}.png" for i in range(len(images))]
    image_store = write_store(root / "image_store", image_ids, image_emb, encoder.encoder_id, fsync=False)
    realign = fit_operator("realign", text_emb.astype(np.float64), image_emb.astype(np.float64), encoder_id=encoder.encoder_id)
    c3 = fit_operator("c3", text_emb.astype(np.float64), image_emb.astype(np.float64), encoder_id=encoder.encoder_id, seed=0)
    return {"root": root, "clip": clip_dir, "encoder": encoder, "images": images, "text_emb": text_emb,
            "image_emb": image_emb, "ids": ids, "image_ids": image_ids, "text_store": text_store,
            "image_store": image_store, "realign": realign.save(root / "op-realign"), "c3": c3.save(root / "op-c3")}


def _config(env, **overrides) -> TowerConfig:
    values = {"encoder": "hf_clip", "encoder_model": str(env["clip"]), "operator": str(env["realign"]),
              "text_store": str(env["text_store"]), "image_store": str(env["image_store"]), "offline": True}
    values.update(overrides)
    return TowerConfig(**values)


# ----------------------------------------------------------------------------- specs


def test_spec_key_value_json_and_directory_forms(env, tmp_path, monkeypatch):
    spec = (f"revision:encoder=hf_clip,model={env['clip']},op={env['realign']},store={env['text_store']},"
            "k=4,offline=true")
    config = parse_tower_spec(spec)
    assert config.encoder_model == str(env["clip"]) and config.operator == str(env["realign"])
    assert config.text_store == str(env["text_store"]) and config.num_tokens == 4 and config.offline is True

    # JSON file: relative paths are relative to the file, not to the current directory.
    import shutil

    shutil.copytree(env["realign"], tmp_path / "ops" / "op")
    (tmp_path / "sub").mkdir()
    json_path = tmp_path / "sub" / "tower.json"
    json_path.write_text(json.dumps({"operator": "../ops/op", "num_tokens": 2}))
    monkeypatch.chdir(env["root"])
    from_json = parse_tower_spec(f"revision:{json_path}")
    assert from_json.num_tokens == 2
    assert load_operator(from_json.operator).info.method == "realign"

    # A directory holding revision_tower.json (what checkpoints carry).
    (tmp_path / "ckpt").mkdir()
    config.save(tmp_path / "ckpt" / "revision_tower.json")
    assert parse_tower_spec(f"revision:{tmp_path / 'ckpt'}") == config


@pytest.mark.parametrize("spec, message", [
    ("revision:", "empty"),
    ("revision:foo=1", "unknown key"),
    ("revision:k=2,k=3", "given twice"),
    ("revision:k=0", "num_tokens"),
    ("revision:offline=maybe", "true/false"),
    ("revision:operator", "not found"),
])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises((BadInputError, FileNotFoundError), match=message):
        parse_tower_spec(spec)


def test_resolve_fills_and_checks_encoder_and_dim(env, tmp_path):
    config = resolve_tower_config(_config(env))
    assert config.encoder_id == env["encoder"].encoder_id and config.dim == env["encoder"].dim
    with pytest.raises(ArtifactMismatchError, match="encoder"):
        resolve_tower_config(_config(env, encoder_id="hf_clip:another-model"))
    with pytest.raises(ArtifactMismatchError, match="dimension"):
        resolve_tower_config(_config(env, dim=env["encoder"].dim + 1))
    # An operator fitted on embeddings of another model cannot meet this store.
    rng = np.random.default_rng(0)
    other = fit_operator("mean_shift", rng.normal(size=(20, env["encoder"].dim)), rng.normal(size=(20, env["encoder"].dim)),
                         encoder_id="hf_clip:other")
    with pytest.raises(ArtifactMismatchError, match="encoder"):
        PseudoVisionTower(_config(env, operator=str(other.save(tmp_path / "other"))))


# ----------------------------------------------------------------------------- features


def test_pseudo_and_image_modes_online_and_cached_agree(env):
    tower = PseudoVisionTower(_config(env, num_tokens=3)).eval()
    op = load_operator(env["realign"])
    text_emb = torch.from_numpy(env["text_emb"])
    expected_pseudo = op(text_emb)
    torch.testing.assert_close(tower.pseudo_features(ids=env["ids"]), expected_pseudo)
    torch.testing.assert_close(tower.pseudo_features(texts=CAPTIONS), expected_pseudo, atol=1e-5, rtol=1e-5)
    expected_image = op.align_image(torch.from_numpy(env["image_emb"]))
    torch.testing.assert_close(tower.image_features(ids=env["image_ids"]), expected_image)
    torch.testing.assert_close(tower.image_features(images=env["images"]), expected_image, atol=1e-5, rtol=1e-5)
    pixels = env["encoder"].preprocess_images(env["images"])
    out = tower(pixels)
    assert out.shape == (len(env["images"]), 3, tower.dim)
    torch.testing.assert_close(out[:, 0], expected_image, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[:, 0], out[:, 2])  # one vector, replicated k times


def test_mixed_batch_keeps_sample_order(env):
    tower = PseudoVisionTower(_config(env, num_tokens=1)).eval()
    pixels = env["encoder"].preprocess_images(env["images"][:2])
    samples = [
        TowerSample(KIND_TEXT_FEATURE, env["text_emb"][0]),
        TowerSample(KIND_PIXELS, pixels[0]),
        TowerSample.none(),
        TowerSample(KIND_TEXT, CAPTIONS[2]),
        TowerSample(KIND_IMAGE_FEATURE, env["image_emb"][3]),
        TowerSample(KIND_PIXELS, pixels[1]),
    ]
    out = tower(collate_tower_inputs(samples))
    assert out.shape == (6, 1, tower.dim)
    op = load_operator(env["realign"])
    torch.testing.assert_close(out[0, 0], op(torch.from_numpy(env["text_emb"][0])))
    torch.testing.assert_close(out[1, 0], op.align_image(torch.from_numpy(env["image_emb"][0])), atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(out[2]) == 0
    torch.testing.assert_close(out[3, 0], op(torch.from_numpy(env["text_emb"][2])), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[4, 0], op.align_image(torch.from_numpy(env["image_emb"][3])))
    torch.testing.assert_close(out[5, 0], op.align_image(torch.from_numpy(env["image_emb"][1])), atol=1e-5, rtol=1e-5)


def test_dtype_follows_input_and_embeddings_survive_host_casts(env):
    tower = PseudoVisionTower(_config(env)).eval()
    batch = collate_tower_inputs([TowerSample(KIND_TEXT_FEATURE, env["text_emb"][i]) for i in range(3)])
    assert isinstance(batch, TowerBatch) and batch.ndim == 4  # what LLaVA checks on `images`
    # A host casting every floating input to bf16 (DeepSpeed) must not round the raw embeddings.
    cast = batch.to("cpu", dtype=torch.bfloat16)
    assert cast["pixel_values"].dtype == torch.bfloat16 and cast["text_features"].dtype == torch.int32
    out = tower(cast)
    assert out.dtype == torch.bfloat16
    exact = load_operator(env["realign"])(torch.from_numpy(env["text_emb"][:3]))
    torch.testing.assert_close(out[:, 0].float(), exact.to(torch.bfloat16).float())
    # The host casting the tower to fp16 must leave the operator's float64 statistics alone.
    tower.to(dtype=torch.float16)
    assert tower.dtype == torch.float16
    assert all(b.dtype == torch.float64 for b in tower.operator.buffers())
    pixels = env["encoder"].preprocess_images(env["images"][:1]).half()
    assert tower(pixels).dtype == torch.float16


def test_operator_is_frozen_out_of_state_dict_and_follows_train_mode(env):
    host = torch.nn.Module()
    host.tower = PseudoVisionTower(_config(env, operator=str(env["c3"])))
    assert list(host.parameters()) == [] and host.state_dict() == {}
    op = host.tower.operator
    before = {name: buf.clone() for name, buf in op.named_buffers()}
    assert not any(b.requires_grad for b in op.buffers())
    host.train()
    assert op.training
    noisy = [host.tower.pseudo_features(ids=env["ids"][:2]) for _ in range(2)]
    assert not torch.allclose(noisy[0], noisy[1])  # C3 noise: training only
    host.eval()
    assert not op.training
    clean = [host.tower.pseudo_features(ids=env["ids"][:2]) for _ in range(2)]
    torch.testing.assert_close(clean[0], clean[1])
    # Gradients flow to whatever consumes the features, never into the operator.
    projector = torch.nn.Linear(host.tower.dim, 4)
    projector(host.tower(collate_tower_inputs([TowerSample(KIND_TEXT_FEATURE, env["text_emb"][0])]))).sum().backward()
    assert projector.weight.grad is not None
    for name, buf in op.named_buffers():
        assert buf.grad is None and torch.equal(buf, before[name])


def test_no_operator_means_raw_unit_embeddings(env):
    tower = PseudoVisionTower(_config(env, operator="none"))
    emb = torch.from_numpy(env["text_emb"][:2]) * 3.0
    torch.testing.assert_close(tower.pseudo_features(embeddings=emb), emb / emb.norm(dim=-1, keepdim=True))


def test_missing_inputs_are_named(env):
    tower = PseudoVisionTower(_config(env))
    from revision_plugin.errors import RevisionError

    with pytest.raises(RevisionError, match="no-such-id"):
        tower.pseudo_features(ids=["t0", "no-such-id"])
    cached_only = PseudoVisionTower(_config(env, encoder=None, encoder_model=None))
    with pytest.raises(BadInputError, match="encoder"):
        cached_only.pseudo_features(texts=["a red square."])
    with pytest.raises(BadInputError, match="cannot read"):
        tower("not a batch")


def test_saved_artifacts_reload_to_the_same_features(env, tmp_path):
    tower = PseudoVisionTower(_config(env, num_tokens=2)).eval()
    tower_dir = save_tower_artifacts(tower, tmp_path / "ckpt")
    reloaded = PseudoVisionTower(parse_tower_spec(f"revision:{tower_dir}")).eval()
    assert reloaded.tower_config.text_store is None  # training stores are not part of a checkpoint
    assert reloaded.num_tokens == 2 and reloaded.tower_config.encoder_id == env["encoder"].encoder_id
    pixels = env["encoder"].preprocess_images(env["images"][:3])
    torch.testing.assert_close(reloaded(pixels), tower(pixels))
    for (name, a), (_, b) in zip(tower.operator.named_buffers(), reloaded.operator.named_buffers()):
        assert torch.equal(a, b), name
    none_kind = collate_tower_inputs([TowerSample(KIND_NONE)], pixel_shape=(3, 32, 32))
    assert none_kind["pixel_values"].shape == (0, 3, 32, 32)

"""Operator artifacts: registry, save/load round trips, refusal of mismatched artifacts."""

import json

import numpy as np
import pytest
import torch
from align_data import clouds
from safetensors.torch import load_file
from torch.testing import assert_close

from revision_plugin import __version__
from revision_plugin.align import (
    OPERATOR_CONFIG_NAME,
    OPERATOR_REGISTRY,
    OPERATOR_WEIGHTS_NAME,
    Operator,
    fit_operator,
    load_operator,
    register_operator,
)
from revision_plugin.errors import ArtifactMismatchError

METHOD_OPTIONS = {
    "identity": {},
    "mean_shift": {"add_image_mean": True, "renormalize": True},
    "c3": {"seed": 3},
    "realign": {"centroid_iters": 2},
    "blockwise": {"energy": 0.8},
}


def test_every_registered_method_is_covered_here():
    assert set(OPERATOR_REGISTRY) == set(METHOD_OPTIONS)


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_save_load_round_trip(tmp_path, method):
    text, image = clouds()
    operator = fit_operator(method, text, image, encoder_id="enc-A", **METHOD_OPTIONS[method])
    operator.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [OPERATOR_CONFIG_NAME, OPERATOR_WEIGHTS_NAME]
    tensors = load_file(str(tmp_path / OPERATOR_WEIGHTS_NAME))
    assert set(tensors) == set(type(operator).buffer_names)
    assert all(t.dtype == torch.float64 for t in tensors.values())
    meta = json.loads((tmp_path / OPERATOR_CONFIG_NAME).read_text())
    assert meta["method"] == method and meta["dim"] == 12 and meta["encoder_id"] == "enc-A"
    assert meta["counts"] == {"text": 600, "image": 500}
    assert meta["package_version"] == __version__ and meta["format_version"] == 1
    assert len(meta["fingerprint"]) == 64
    for key, value in METHOD_OPTIONS[method].items():
        assert meta["options"][key] == value

    loaded = load_operator(tmp_path, expected_dim=12, encoder_id="enc-A")
    assert type(loaded) is type(operator) and not loaded.training
    assert list(loaded.parameters()) == []
    assert_close(loaded(text), operator(text), rtol=0, atol=0)
    assert_close(loaded.align_image(image), operator.align_image(image), rtol=0, atol=0)


def test_fingerprint_tracks_the_fit_data():
    text, image = clouds()
    a = fit_operator("realign", text, image)
    b = fit_operator("realign", text, image, chunk_rows=7)
    c = fit_operator("realign", text[:-1], image)
    assert a.info.fingerprint == b.info.fingerprint != c.info.fingerprint


def test_load_refuses_mismatches(tmp_path):
    text, image = clouds()
    fit_operator("realign", text, image, encoder_id="enc-A").save(tmp_path)
    with pytest.raises(ArtifactMismatchError, match="fitted for 12-dim embeddings, these are 16-dim"):
        load_operator(tmp_path, expected_dim=16)
    with pytest.raises(ArtifactMismatchError, match="encoder 'enc-A', not 'enc-B'"):
        load_operator(tmp_path, encoder_id="enc-B")

    config = tmp_path / OPERATOR_CONFIG_NAME
    meta = json.loads(config.read_text())
    config.write_text(json.dumps({**meta, "method": "no_such_method"}))
    with pytest.raises(ValueError, match="unknown operator method 'no_such_method'"):
        load_operator(tmp_path)
    config.write_text(json.dumps({k: v for k, v in meta.items() if k != "method"}))
    with pytest.raises(ArtifactMismatchError, match="no 'method' field"):
        load_operator(tmp_path)
    config.write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ArtifactMismatchError, match="format version 99"):
        load_operator(tmp_path)
    config.write_text(json.dumps({**meta, "dim": 13}))
    with pytest.raises(ArtifactMismatchError, match=r"buffer '\w+' has shape \(.*operator dim is 13"):
        load_operator(tmp_path)
    config.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_operator(tmp_path)


def test_load_refuses_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="operator.json missing"):
        load_operator(tmp_path)
    text, image = clouds()
    fit_operator("c3", text, image).save(tmp_path)
    (tmp_path / OPERATOR_WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="operator.safetensors missing"):
        load_operator(tmp_path)


def test_load_refuses_missing_buffers(tmp_path):
    text, image = clouds()
    fit_operator("realign", text, image).save(tmp_path)
    config = tmp_path / OPERATOR_CONFIG_NAME
    config.write_text(config.read_text().replace('"realign"', '"c3"'))
    with pytest.raises(ArtifactMismatchError, match="expected buffers"):
        load_operator(tmp_path)


def test_registry_rejects_duplicates_and_bad_names():
    class Again(Operator):
        method = "realign"

    with pytest.raises(ValueError, match="already registered"):
        register_operator(Again)

    class BadName(Operator):
        method = "ReAlign"

    with pytest.raises(ValueError, match="lowercase"):
        register_operator(BadName)
    assert OPERATOR_REGISTRY["realign"].__name__ == "ReAlign"


def test_unknown_options_and_methods_are_refused():
    text, image = clouds()
    with pytest.raises(ValueError, match=r"unknown options \['centroid_iter'\]"):
        fit_operator("realign", text, image, centroid_iter=2)
    with pytest.raises(ValueError, match="unknown operator method 'realigned'"):
        fit_operator("realigned", text, image)


def test_operator_is_frozen():
    text, image = clouds()
    operator = fit_operator("realign", text, image)
    x = torch.from_numpy(text).requires_grad_(True)
    out = operator(x)
    assert not out.requires_grad
    assert all(not b.requires_grad for b in operator.buffers())
    assert isinstance(operator(np.asarray(text, dtype=np.float32)), np.ndarray)

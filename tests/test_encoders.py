"""hf_clip encoder and the tiny CLIP builder: the real from_pretrained path, offline."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from revision_plugin.encoders import load_encoder
from revision_plugin.errors import RevisionError

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["a photo of a cat", "dog", "héllo wörld 🙂, a much longer sentence with the red man and a dog on a mat"]


@pytest.fixture(scope="module")
def encoder(tiny_clip_dir):
    return load_encoder("hf_clip", tiny_clip_dir, offline=True)


def test_identity_shapes_and_unit_norm(encoder):
    assert encoder.encoder_id == "hf_clip:tiny-clip" and encoder.dim == 32
    texts = encoder.encode_texts(TEXTS)
    assert texts.shape == (3, 32) and texts.dtype == torch.float32
    torch.testing.assert_close(texts.norm(dim=1), torch.ones(3))
    assert encoder.encode_texts([]).shape == (0, 32)
    assert encoder.encode_images([]).shape == (0, 32)


def test_batch_of_one_equals_batch_of_n(encoder):
    together = encoder.encode_texts(TEXTS)
    alone = torch.cat([encoder.encode_texts([t]) for t in TEXTS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_images_all_entry_points_agree(encoder):
    images = [Image.new("RGB", (40, 50), (255, 0, 0)), Image.new("L", (64, 32), 128), Image.new("RGBA", (33, 33))]
    direct = encoder.encode_images(images)
    pixels = encoder.preprocess_images(images)
    assert pixels.shape == (3, 3, 32, 32)
    torch.testing.assert_close(encoder.encode_pixels(pixels), direct)
    torch.testing.assert_close(direct.norm(dim=1), torch.ones(3))
    assert not torch.allclose(direct[0], direct[1])


def test_tokenizer_is_real_clip_bpe(encoder):
    assert type(encoder.tokenizer).__name__ == "CLIPTokenizer"
    assert encoder.tokenizer.tokenize("A Photo of THE cat") == ["a</w>", "photo</w>", "of</w>", "the</w>", "cat</w>"]


def test_texts_are_truncated_to_the_model_limit(encoder):
    long = encoder.encode_texts(["word " * 500])
    assert long.shape == (1, 32) and torch.isfinite(long).all()


def test_errors(tmp_path):
    with pytest.raises(RevisionError, match="unknown encoder kind 'nope'"):
        load_encoder("nope", tmp_path)
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_encoder("hf_clip", tmp_path / "absent")
    with pytest.raises(OSError):
        load_encoder("hf_clip", "nobody/not-a-cached-model", offline=True)


def test_bf16_dtype_option(tiny_clip_dir):
    encoder = load_encoder("hf_clip", tiny_clip_dir, dtype="bf16")
    assert encoder.model.dtype == torch.bfloat16
    out = encoder.encode_texts(TEXTS[:2])
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))

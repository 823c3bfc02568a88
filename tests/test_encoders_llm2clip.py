"""llm2clip encoder on tiny local stand-ins: LLM2Vec equivalence, padding, template, remote code."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from revision_plugin.cli import main
from revision_plugin.encoders import load_encoder
from revision_plugin.encoders.llm2vec_text import LLM2VecTextModel
from revision_plugin.errors import RevisionError
from revision_plugin.store import open_store
from revision_plugin.testing.tiny_llm2clip import build_tiny_llm2clip

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = [
    "a photo of the cat",
    "dog",
    "  leading spaces stay, trailing go   ",
    "the red dog with the cat and a man on a mat in the photo, a rather longer caption " * 2,
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llm2clip(tmp_path_factory.mktemp("llm2clip"))


@pytest.fixture(scope="module")
def encoder(tiny):
    return load_encoder("llm2clip", tiny.model, text_model=tiny.text_model, offline=True, trust_remote_code=True)


def llm2vec_reference(text_model: LLM2VecTextModel, texts, llama3_template=True):
    """llm2vec 0.2.3 ``LLM2Vec.encode`` for plain strings, mean pooling, transcribed literally.

    ``_convert_to_str`` -> ``prepare_for_tokenization`` -> ``tokenize`` (separator split,
    embed mask of the last n tokens) -> LlamaBiModel forward (full attention over real tokens,
    positions 0..L-1 *including* left padding, as LlamaModel numbers them) -> mean of the
    last n hidden states. doc_max_length == max_length makes the word-reduction loop a no-op.
    """
    separator, tok, max_length = "!@#$%^&*()", text_model.tokenizer, text_model.max_length
    prepared = []
    for text in texts:
        text = f"{separator}{text}"
        if llama3_template:
            text = "<|start_header_id|>user<|end_header_id|>\n\n" + text.strip() + "<|eot_id|>"
        prepared.append(text)
    pooled_parts = [p.split(separator)[1] for p in prepared]
    originals = ["".join(p.split(separator)) for p in prepared]
    batch = tok(originals, return_tensors="pt", padding=True, truncation=True, max_length=max_length, padding_side="left")
    embed_mask = torch.zeros_like(batch["attention_mask"])
    for i, part in enumerate(pooled_parts):
        n = len(tok([part], truncation=True, max_length=max_length, add_special_tokens=False)["input_ids"][0])
        embed_mask[i, -n:] = 1
    keys = batch["attention_mask"][:, None, None, :].bool()
    L = keys.shape[-1]
    mask = torch.zeros(keys.shape).masked_fill(~keys, torch.finfo(torch.float32).min).expand(-1, 1, L, -1)
    with torch.no_grad():
        hidden = text_model.model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state
    pooled = torch.stack([hidden[i, -int(n):].mean(0) for i, n in enumerate(embed_mask.sum(-1))])
    return pooled, batch, embed_mask


def test_text_path_equals_llm2vec(encoder):
    ours = encoder.text.encode(TEXTS)
    reference, batch, embed_mask = llm2vec_reference(encoder.text, TEXTS)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    mine = encoder.text.tokenize(TEXTS, padding_side="left")
    assert torch.equal(mine["input_ids"], batch["input_ids"])
    assert torch.equal(mine["pool_mask"], embed_mask.bool())  # the same tokens are averaged, exactly


def test_truncation_quirk_matches_llm2vec(tiny):
    # Texts longer than max_length: the tokenizer cuts the end (and <|eot_id|>), and LLM2Vec
    # still averages the last n positions, which then include the chat header. Reproduced.
    short = LLM2VecTextModel(tiny.text_model, device=torch.device("cpu"), dtype=torch.float32, max_length=12)
    texts = ["dog", "the cat with the red dog and the man in the photo"]
    reference, batch, embed_mask = llm2vec_reference(short, texts)
    assert batch["input_ids"].shape[1] == 12 and int(embed_mask[1].sum()) == 12
    assert torch.equal(short.tokenize(texts, padding_side="left")["pool_mask"], embed_mask.bool())
    torch.testing.assert_close(short.encode(texts), reference, atol=1e-5, rtol=1e-5)


def test_left_right_padding_and_batch_size_agree(encoder):
    left = encoder.text.encode(TEXTS, padding_side="left")
    right = encoder.text.encode(TEXTS, padding_side="right")
    alone = torch.cat([encoder.text.encode([t]) for t in TEXTS])
    torch.testing.assert_close(left, right, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)
    full = encoder.encode_texts(TEXTS)
    torch.testing.assert_close(full, torch.cat([encoder.encode_texts([t]) for t in TEXTS]), atol=1e-5, rtol=0)
    torch.testing.assert_close(full.norm(dim=1), torch.ones(len(TEXTS)))
    assert full.shape == (4, 24) and encoder.encoder_id == "llm2clip:tiny-llm2clip-openai"


def test_attention_is_bidirectional(encoder):
    """Changing the last word changes the first text token's state: no causal mask."""
    text_model = encoder.text
    batch = text_model.tokenize(["cat dog", "cat red"])
    from revision_plugin.encoders.llm2vec_text import bidirectional_mask

    with torch.no_grad():
        hidden = text_model.model(input_ids=batch["input_ids"], attention_mask=bidirectional_mask(batch["attention_mask"], torch.float32)).last_hidden_state
    first_text_token = 6  # after <|begin_of_text|>, the 3 header tokens and "\n\n"
    assert not torch.allclose(hidden[0, first_text_token], hidden[1, first_text_token], atol=1e-4)


def test_chat_template_wrapping(encoder, tiny):
    text_model = encoder.text
    assert text_model.chat_template == "llama3"  # auto: the tokenizer has the Llama-3 chat tokens
    tok = text_model.tokenizer
    batch = text_model.tokenize(["dog  "])
    tokens = tok.convert_ids_to_tokens(batch["input_ids"][0])
    assert tokens == ["<|begin_of_text|>", "<|start_header_id|>", "user", "<|end_header_id|>", "Ċ", "Ċ", "dog", "<|eot_id|>"]
    assert batch["pool_mask"][0].tolist() == [False] * 6 + [True, True]  # text + <|eot_id|>

    plain = LLM2VecTextModel(tiny.text_model, device=torch.device("cpu"), dtype=torch.float32, chat_template="none")
    batch = plain.tokenize(["dog  "])
    assert tok.convert_ids_to_tokens(batch["input_ids"][0]) == ["<|begin_of_text|>", "dog", "Ġ", "Ġ"]
    assert batch["pool_mask"][0].tolist() == [False, True, True, True]  # the text only, kept as given
    reference, _, _ = llm2vec_reference(plain, TEXTS, llama3_template=False)
    torch.testing.assert_close(plain.encode(TEXTS), reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain.encode(["dog"]), text_model.encode(["dog"]), atol=1e-3)
    with pytest.raises(RevisionError, match="chat_template must be one of"):
        LLM2VecTextModel(tiny.text_model, device=torch.device("cpu"), dtype=torch.float32, chat_template="chatml")


def test_images_and_remote_code_trap(encoder, tiny):
    images = [Image.new("RGB", (50, 40), (200, 10, 10)), Image.new("L", (20, 30), 90)]
    features = encoder.encode_images(images)
    assert features.shape == (2, 24)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(encoder.encode_pixels(encoder.preprocess_images(images)), features)
    assert "transformers.onnx" in (tiny.model / "configuration_clip.py").read_text()
    with pytest.raises(ImportError):  # the stand-in module is gone again after loading
        import transformers.onnx  # noqa: F401


def test_image_only_use_and_processor_fallback(tiny, tmp_path):
    copy = tmp_path / "no-processor"
    shutil.copytree(tiny.model, copy)
    (copy / "preprocessor_config.json").unlink()
    image_only = load_encoder("llm2clip", copy, offline=True, trust_remote_code=True)
    assert image_only.image_processor.crop_size["height"] == 32
    assert image_only.encode_images([Image.new("RGB", (64, 48))]).shape == (1, 24)
    with pytest.raises(RevisionError, match="needs the LLM2Vec text model"):
        image_only.encode_texts(["cat"])


def test_embed_command_with_llm2clip(tiny, encoder, tmp_path, capsys):
    (tmp_path / "texts.jsonl").write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)))
    common = ["embed", "--no-progress", "--encoder", "llm2clip", "--model", str(tiny.model), "--offline", "--trust-remote-code",
              "--texts", str(tmp_path / "texts.jsonl"), "--out", str(tmp_path / "out")]
    assert main(common) == 2
    assert "needs --text-model" in capsys.readouterr().err
    assert main([*common, "--text-model", str(tiny.text_model), "--batch-size", "3"]) == 0
    store = open_store(tmp_path / "out" / "text")
    assert store.encoder_id == "llm2clip:tiny-llm2clip-openai" and store.dim == 24
    assert store.manifest["meta"]["chat_template"] == "llama3"
    expected = encoder.encode_texts(TEXTS).numpy()
    torch.testing.assert_close(torch.from_numpy(store.lookup([f"t{i}" for i in range(4)])), torch.from_numpy(expected), atol=1e-5, rtol=0)

"""Tiny stand-ins of the two LLM2CLIP checkpoints, built and saved locally (no download).

* ``text/``: a Llama with the layout of ``LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned``
  (``LlamaModel`` weights, ``architectures: ["LlamaEncoderModel"]`` + ``auto_map`` to remote
  code that is deliberately absent, a byte-level BPE tokenizer with the Llama-3 special
  tokens prepending ``<|begin_of_text|>``);
* ``clip/``: a ``trust_remote_code`` model with the layout of ``LLM2CLIP-Openai-L-14-336``:
  ``configuration_clip.py`` that imports ``transformers.onnx`` (the 5.x trap, on purpose),
  ``modeling_clip.py`` with ``LLM2CLIPModel`` (``vision_model``, ``visual_projection``,
  ``text_adapter``; ``get_image_features(pixel_values)``, ``get_text_features(llm_feats)``),
  the CLIP image processor, weights written by ``save_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
)
_MERGED_WORDS = ("the", "photo", "cat", "dog", "user", "with", "and", "red")

CONFIGURATION_CLIP_PY = '''"""Stand-in of LLM2CLIP's remote configuration_clip.py (revision_plugin tests)."""
from transformers.models.clip.configuration_clip import CLIPConfig as _CLIPConfig
from transformers.onnx import OnnxConfig  # as in the released file; removed in transformers 5


class CLIPConfig(_CLIPConfig):
    """CLIP config plus the width of the LLM features the text adapter takes."""

    def __init__(self, llm_hidden_size=4096, **kwargs):
        super().__init__(**kwargs)
        self.llm_hidden_size = llm_hidden_size


class CLIPOnnxConfig(OnnxConfig):
    pass
'''

MODELING_CLIP_PY = '''"""Stand-in of LLM2CLIP's remote modeling_clip.py (revision_plugin tests)."""
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import CLIPVisionModel

from .configuration_clip import CLIPConfig


class ResidualBlock(nn.Module):
    def __init__(self, dim, expansion=2):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fn = nn.Sequential(nn.Linear(dim, dim * expansion), nn.GELU(), nn.Dropout(0.0), nn.Linear(dim * expansion, dim))

    def forward(self, x):
        return x + self.fn(self.ln(x))


class LLM2CLIP_Adapter(nn.Module):
    """L2-normalise, 4 residual blocks, LayerNorm, Linear: LLM2CLIP's TextProj layout."""

    def __init__(self, input_dim, output_dim):
        super().__init__()
        self.adaptor = nn.Sequential(*[ResidualBlock(input_dim) for _ in range(4)], nn.LayerNorm(input_dim), nn.Linear(input_dim, output_dim))

    def forward(self, x):
        return self.adaptor(nn.functional.normalize(x, dim=-1))


class LLM2CLIPModel(PreTrainedModel):
    config_class = CLIPConfig
    main_input_name = "pixel_values"
    base_model_prefix = "llm2clip"

    def __init__(self, config):
        super().__init__(config)
        self.vision_model = CLIPVisionModel(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_adapter = LLM2CLIP_Adapter(config.llm_hidden_size, config.projection_dim)
        self.post_init()

    def get_image_features(self, pixel_values):
        return self.visual_projection(self.vision_model(pixel_values=pixel_values).pooler_output)

    def get_text_features(self, inputs):
        return self.text_adapter(inputs)
'''


class TinyLLM2CLIP(NamedTuple):
    model: Path  # the image + text-adapter model (``--model``)
    text_model: Path  # the bidirectional Llama (``--text-model``)


class LlamaShape(NamedTuple):
    """The text model's size; the tokenizer and the layout stay the tiny stand-in's."""

    hidden_size: int = 48
    layers: int = 2
    intermediate_size: int = 96
    heads: int = 4
    kv_heads: int = 2


# LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned's text model (Llama-3-8B) with random weights: for
# throughput measurements on a GPU without the hub (benchmarks/bench_embed.py --shape llama3-8b).
TINY_LLAMA_SHAPE = LlamaShape()
LLAMA3_8B_SHAPE = LlamaShape(hidden_size=4096, layers=32, intermediate_size=14336, heads=32, kv_heads=8)
LLM2CLIP_OPENAI_L14_DIM = 1280  # LLM2CLIP-Openai-L-14-336's projection width


def build_tiny_llm2clip(
    directory: str | Path, *, dim: int = 24, llm_hidden_size: int = 48, image_size: int = 32, seed: int = 0,
    shape: LlamaShape | None = None, device: str | None = None, dtype=None,
) -> TinyLLM2CLIP:
    """Save both stand-ins under ``directory`` and return their paths (``shape`` overrides
    ``llm_hidden_size``; the text model is initialised on ``device`` and saved in ``dtype``,
    default float32)."""
    directory = Path(directory)
    shape = shape or LlamaShape(hidden_size=llm_hidden_size, intermediate_size=2 * llm_hidden_size)
    text_dir = build_tiny_llm2vec_llama(directory / "tiny-llm2clip-llama", shape=shape, seed=seed,
                                        device=device, dtype=dtype)
    clip_dir = directory / "tiny-llm2clip-openai"
    _build_clip_with_adapter(clip_dir, dim=dim, llm_hidden_size=shape.hidden_size, image_size=image_size, seed=seed)
    return TinyLLM2CLIP(clip_dir, text_dir)


def build_tiny_llm2vec_llama(directory: str | Path, *, shape: LlamaShape = TINY_LLAMA_SHAPE, seed: int = 0,
                             device: str | None = None, dtype=None) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaModel

    directory = Path(directory)
    tokenizer = tiny_llama3_tokenizer()
    vocab = tokenizer.get_vocab()
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.kv_heads,
        max_position_embeddings=1024, rope_theta=500000.0,
        bos_token_id=vocab["<|begin_of_text|>"], eos_token_id=vocab["<|eot_id|>"],
    )
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):  # an 8B-sized init takes minutes on a CPU, seconds on a GPU
        model = LlamaModel(config).eval().to(dtype or torch.float32)
    # Random init leaves hidden states nearly position-blind; scale up so tests see real effects.
    with torch.no_grad():
        model.embed_tokens.weight.mul_(50.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    config_path = directory / "config.json"
    saved = json.loads(config_path.read_text())
    # As on the hub: inference class in remote code (absent here; our loader must not need it).
    saved["architectures"] = ["LlamaEncoderModel"]
    saved["auto_map"] = {"AutoModel": "modeling_llama_encoder.LlamaEncoderModel"}
    config_path.write_text(json.dumps(saved, indent=2))
    return directory


def tiny_llama3_tokenizer():
    """Byte-level BPE with Llama-3's special tokens; prepends ``<|begin_of_text|>`` like Llama-3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from revision_plugin.testing.tiny_clip import byte_chars

    chars = byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    merges = []
    for word in _MERGED_WORDS:
        for text in (word, "Ġ" + word):
            pieces = list(text)
            while len(pieces) > 1:
                merges.append((pieces[0], pieces[1]))
                pieces = [pieces[0] + pieces[1]] + pieces[2:]
                vocab.setdefault(pieces[0], len(vocab))
    merges = list(dict.fromkeys(merges))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(LLAMA3_SPECIAL_TOKENS))
    bos = "<|begin_of_text|>"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=bos, eos_token="<|eot_id|>", model_max_length=1024
    )


def _build_clip_with_adapter(directory: Path, *, dim: int, llm_hidden_size: int, image_size: int, seed: int) -> None:
    import torch
    from transformers import AutoConfig, AutoModel

    from revision_plugin.encoders.remote_code import transformers_onnx_available
    from revision_plugin.testing.tiny_clip import clip_image_processor

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "configuration_clip.py").write_text(CONFIGURATION_CLIP_PY)
    (directory / "modeling_clip.py").write_text(MODELING_CLIP_PY)
    config = {
        "model_type": "clip",
        "architectures": ["LLM2CLIPModel"],
        "auto_map": {"AutoConfig": "configuration_clip.CLIPConfig", "AutoModel": "modeling_clip.LLM2CLIPModel"},
        "projection_dim": dim,
        "llm_hidden_size": llm_hidden_size,
        "text_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        "vision_config": {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": image_size, "patch_size": 8,
        },
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    with transformers_onnx_available():
        loaded_config = AutoConfig.from_pretrained(directory, trust_remote_code=True)
        torch.manual_seed(seed)
        model = AutoModel.from_config(loaded_config, trust_remote_code=True).eval()
    model.save_pretrained(directory)
    clip_image_processor(image_size).save_pretrained(directory)

"""Tiny, randomly initialised CLIP-family models saved locally (no download) for tests and CI.

``build_tiny_clip`` writes a transformers ``CLIPModel`` with the real CLIP tokenizer class
and image processor, loadable by ``load_encoder("hf_clip", dir)``. The llm2clip pair is
``revision_plugin.testing.tiny_llm2clip.build_tiny_llm2clip`` (which builds on this module's
vocabulary and image processor; imports run that way only).
"""

from __future__ import annotations

from pathlib import Path

# Words that get their own BPE merges, so tokenisation is not purely per character.
_MERGED_WORDS = ("a", "the", "of", "photo", "cat", "dog", "on", "in", "with", "and", "man", "red")


def byte_chars() -> list[str]:
    """GPT-2/CLIP byte-to-unicode table: every byte has a printable stand-in character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars


def clip_bpe_vocab(merges: list[tuple[str, str]]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of a complete byte-level CLIP BPE (any text tokenises): every byte,
    alone and with CLIP's ``</w>``, then the merged tokens in rank order, then CLIP's specials."""
    chars = byte_chars()
    tokens = [*chars, *(c + "</w>" for c in chars), *(a + b for a, b in merges), "<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}, list(dict.fromkeys(merges))


def tiny_clip_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """:func:`clip_bpe_vocab` with a few merges, each word merged left to right."""
    merges: list[tuple[str, str]] = []
    for word in _MERGED_WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append((pieces[0], pieces[1]))
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
    return clip_bpe_vocab(merges)


def build_tiny_clip(
    directory: str | Path,
    *,
    dim: int = 32,
    image_size: int = 32,
    seed: int = 0,
    max_text_length: int = 77,
) -> Path:
    """Save a tiny ``CLIPModel`` + ``CLIPTokenizer`` + CLIP image processor to ``directory``."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    directory = Path(directory)
    vocab, merges = tiny_clip_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_text_length)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=max_text_length,
            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=image_size, patch_size=8,
        ),
        projection_dim=dim,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    clip_image_processor(image_size).save_pretrained(directory)
    return directory


def clip_image_processor(image_size: int):
    """CLIP's processor (resize shortest edge, centre crop, CLIP mean/std), PIL backend.

    The PIL backend needs no torchvision; transformers 4.x only has that one.
    """
    try:
        from transformers import CLIPImageProcessorPil as processor_class
    except ImportError:  # transformers < 5
        from transformers import CLIPImageProcessor as processor_class
    return processor_class(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


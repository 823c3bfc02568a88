"""A tiny Llama for the tiny LLaVA, built locally:

* :func:`build_tiny_tokenizer` - a Llama tokenizer (transformers' ``LlamaTokenizer``: byte
  fallback BPE, ``legacy=False``, BOS added) whose merges are *trained* with the
  ``tokenizers`` library on a small corpus containing LLaVA's conversation templates, so
  LLaVA's per-round token counting behaves exactly as with real Llama-2/Vicuna tokenizers
  (no ``tokenization mismatch``);
* :func:`build_tiny_llama` - a 2-layer Llama built from a config, briefly pretrained on the
  captions and answers.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from revision_plugin.testing.common import torch_threads
from revision_plugin.testing.shapes import COLOURS, QUESTIONS, SHAPES, answer_for, caption_for

logger = logging.getLogger(__name__)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def tiny_corpus() -> list[str]:
    """Training text for the tiny tokenizer: LLaVA's templates, captions, answers, ASCII."""
    lines = [VICUNA_SYSTEM]
    for colour in COLOURS:
        for shape in SHAPES:
            caption = caption_for(colour, shape)
            for question in QUESTIONS:
                lines.append(f"{VICUNA_SYSTEM} USER: <image>\n{question} ASSISTANT: {answer_for(question, colour, shape)}</s>")
            lines.append(caption)
    lines.append("USER: ASSISTANT: ### Human: Assistant: <image> <im_patch> <im_start> <im_end>")
    lines.append("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}<>/\\-_+=*&^%$#@~`|")
    return lines * 4


def pretraining_lines() -> list[str]:
    """Captions and answers, ended as LLaVA's ``plain`` and ``v1`` templates end them (a
    newline, ``</s>``): the tiny LLM's language-model pretraining."""
    lines = []
    for index, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        lines.append(caption_for(colour, shape) + "\n")
        lines.append(f"{hint_token(index)}{caption_for(colour, shape)}\n")
        lines.extend(f"{q} {answer_for(q, colour, shape)}</s>" for q in QUESTIONS)
    return lines


def hint_token(index: int) -> str:
    """One added token per picture. The tiny LLM is pretrained to continue ``<picN>`` with
    picture N's caption: the stand-in for what a real LLM brings to stage 1, the ability to
    be steered by a prefix. Stage 1 must then teach the projector to steer it from the
    pseudo-visual vector alone (LLaVA never feeds these tokens)."""
    return f"<pic{index}>"


def _llama2_role_tokens(vocab: dict[str, int], merges: list[tuple[str, str]]):
    """Give the role word ``USER`` the split Llama-2's vocabulary gives it: one token after
    ``</s>`` (``USER``) but two at the start of a text (``▁`` + ``USER``).

    LLaVA's v1 label masking tokenises each round on its own and subtracts one token per
    later round when ``tokenizer.legacy`` is False: a correction that holds for exactly this
    property of the Llama-2/Vicuna vocabulary. With it, multi-round conversations count
    right, as with the real tokenizer; without it they are masked (``tokenization mismatch``).
    """
    merges = [m for m in merges if not (m[0] + m[1]).startswith("▁U")]
    for pair in (("U", "S"), ("E", "R"), ("US", "ER")):
        if pair not in merges:
            merges.append(pair)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if not t.startswith("▁U")]
    for token in ("▁", "U", "S", "E", "R", "US", "ER", "USER"):
        if token not in tokens:
            tokens.append(token)
    return {t: i for i, t in enumerate(tokens)}, merges


# Llama's byte-fallback specials: <unk>, <s>, </s> and one token per byte
LLAMA_SPECIALS = ("<unk>", "<s>", "</s>", *(f"<0x{i:02X}>" for i in range(256)))


def train_llama_bpe(texts, vocab_size: int) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``(vocab, merges)`` of a byte-fallback BPE trained on ``texts``, SentencePiece-style, with
    :data:`LLAMA_SPECIALS` first (``vocab_size`` counts them)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Training-time splitting only decides which merges exist: never across spaces (like
    # SentencePiece), punctuation or newlines (a newline becomes the <0x0A> byte, as in Llama).
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s*\n\s*"), behavior="removed"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(LLAMA_SPECIALS), show_progress=False)
    bpe.train_from_iterator(texts, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return model["vocab"], merges


def build_tiny_tokenizer(directory: str | Path, vocab_size: int = 700):
    """Train a byte-fallback BPE on :func:`tiny_corpus` and save it as a ``LlamaTokenizer``."""
    from transformers import LlamaTokenizer

    vocab, merges = _llama2_role_tokens(*train_llama_bpe(tiny_corpus(), vocab_size))
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, legacy=False, add_bos_token=True,
                               add_eos_token=False, model_max_length=2048)
    tokenizer.add_tokens([hint_token(i) for i in range(len(COLOURS) * len(SHAPES))], special_tokens=True)
    # Llama-3-Instruct's chat tokens, for the llama_3 conversation template.
    tokenizer.add_tokens(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], special_tokens=True)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def build_tiny_llama(directory: str | Path, *, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4,
                     seed: int = 0, pretrain_steps: int = 150) -> Path:
    """A tiny ``LlamaForCausalLM`` + the tiny tokenizer, saved to ``directory``.

    ``pretrain_steps`` of language modelling on :func:`tiny_corpus` give it the captions'
    vocabulary, as a real LLM knows language before projector pretraining: stage 1 then has
    to convey *which* caption (colour and shape) through the projector, a clear learning signal.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    tokenizer = build_tiny_tokenizer(directory)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
        max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=None, tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if pretrain_steps:
        lines = pretraining_lines()
        batch = tokenizer(lines, return_tensors="pt", padding=True) if tokenizer.pad_token else None
        if batch is None:
            tokenizer.pad_token = tokenizer.unk_token
            batch = tokenizer(lines, return_tensors="pt", padding=True)
            tokenizer.pad_token = None
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
        model.train()
        with torch_threads(1):
            for _ in range(pretrain_steps):
                loss = model(**batch, labels=labels).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        model.eval()
        logger.debug("tiny llama: pretraining loss %.3f after %d steps", float(loss.detach()), pretrain_steps)
    model.save_pretrained(directory)
    return directory

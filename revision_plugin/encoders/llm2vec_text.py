"""LLM2Vec-style text embeddings from a bidirectional Llama, on current transformers.

The ``llm2vec`` package pins transformers <= 4.44 (its import breaks from 4.48), so this is
our own implementation of the path LLM2CLIP's text side uses, ``LLM2Vec(model, tokenizer,
pooling_mode="mean", max_length=512, doc_max_length=512).encode(texts)`` with the Llama-3
chat wrapping. Per text (see docs/encoders.md for the derivation):

1. wrap: ``"<|start_header_id|>user<|end_header_id|>\\n\\n" + text.rstrip() + "<|eot_id|>"``
   (LLM2Vec's ``text.strip()`` acts on ``"!@#$%^&*()" + text``, so only trailing whitespace
   goes); without the template the text is used as is;
2. tokenize with special tokens (Llama-3 prepends ``<|begin_of_text|>``), truncated to
   ``max_length``;
3. pool over the last ``n`` real tokens, ``n`` = token count of the pooled part alone
   (``text + "<|eot_id|>"``, or ``text``), no special tokens, truncated to ``max_length``;
4. the Llama runs with full (bidirectional) attention over real tokens only;
5. mean of the final hidden states over the pooled tokens.

Differences that do not change the result: LLM2Vec left-pads and numbers positions
``0..L-1`` including the padding; we number real tokens from 0 in either padding side.
Rotary attention scores depend only on position differences, so both are the same function;
they agree to floating-point round-off, and our result no longer depends on the batch.
The mean is taken in float32 (LLM2Vec: in the model dtype, then cast to float32).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from revision_plugin.encoders.base import check_model_source
from revision_plugin.errors import RevisionError

logger = logging.getLogger(__name__)

LLAMA3_USER_PREFIX = "<|start_header_id|>user<|end_header_id|>\n\n"
LLAMA3_TURN_END = "<|eot_id|>"
CHAT_TEMPLATES = ("auto", "llama3", "none")


class LLM2VecTextModel:
    """Mean-pooled bidirectional Llama encoder producing ``[B, hidden_size]`` float32 features."""

    def __init__(
        self,
        model: str | Path,
        *,
        device: torch.device,
        dtype: torch.dtype,
        offline: bool = False,
        max_length: int = 512,
        chat_template: str = "auto",
        batch_size: int = 32,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer, LlamaModel

        if chat_template not in CHAT_TEMPLATES:
            raise RevisionError(f"chat_template must be one of {CHAT_TEMPLATES}, not {chat_template!r}")
        check_model_source(model)
        self.device, self.dtype, self.max_length, self.batch_size = device, dtype, int(max_length), batch_size
        # No trust_remote_code: the hub's LlamaEncoderModel is a LlamaModel with the causal mask
        # removed, which we do ourselves; its remote code also needs files missing offline.
        config = AutoConfig.from_pretrained(str(model), local_files_only=offline)
        if config.model_type != "llama":
            raise RevisionError(f"{model}: text model has model_type {config.model_type!r}, expected a Llama")
        # Flash-attention kernels take no custom 4-D mask; sdpa/eager do.
        attn = "eager" if getattr(config, "_attn_implementation", None) == "eager" else "sdpa"
        self.model = LlamaModel.from_pretrained(
            str(model), config=config, dtype=dtype, local_files_only=offline, attn_implementation=attn
        )
        self.model.to(device).eval().requires_grad_(False)
        for module in self.model.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False
        self.hidden_size = int(config.hidden_size)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=offline)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # as LLM2Vec does; masked anyway
        self.tokenizer.padding_side = "left"  # LLM2Vec's side; the result does not depend on it
        self.chat_template = self._resolve_template(chat_template, model)

    def _resolve_template(self, requested: str, model) -> str:
        vocab = self.tokenizer.get_vocab()
        has_llama3_tokens = all(t in vocab for t in ("<|start_header_id|>", "<|end_header_id|>", LLAMA3_TURN_END))
        if requested == "auto":
            # LLM2Vec applies the wrapping only when config._name_or_path is exactly
            # "meta-llama/Meta-Llama-3-8B-Instruct" (why ReVision overwrites it); LLM2CLIP's
            # Llama-3 encoder was trained with it, so any Llama-3 chat tokenizer gets it.
            resolved = "llama3" if has_llama3_tokens else "none"
            logger.info("%s: chat template %s (auto)", model, resolved)
            return resolved
        if requested == "llama3" and not has_llama3_tokens:
            raise RevisionError(f"{model}: tokenizer lacks the Llama-3 chat tokens; use chat_template='none'")
        return requested

    def wrap(self, text: str) -> tuple[str, str]:
        """``(full input text, pooled part)`` of one text, as LLM2Vec builds them."""
        if self.chat_template == "llama3":
            text = text.rstrip()
            return LLAMA3_USER_PREFIX + text + LLAMA3_TURN_END, text + LLAMA3_TURN_END
        return text, text

    def tokenize(self, texts: Sequence[str], padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``pool_mask`` (the tokens averaged)."""
        full, pooled = zip(*(self.wrap(t) for t in texts))
        batch = self.tokenizer(
            list(full), return_tensors="pt", padding=True, truncation=True, max_length=self.max_length,
            padding_side=padding_side or self.tokenizer.padding_side,
        )
        pooled_counts = [
            len(ids) for ids in self.tokenizer(
                list(pooled), truncation=True, max_length=self.max_length, add_special_tokens=False
            )["input_ids"]
        ]
        attention = batch["attention_mask"]
        # Rank of each real token counted from the end of its sequence (1 = last real token).
        from_end = attention.flip(-1).cumsum(-1).flip(-1) * attention
        counts = torch.tensor(pooled_counts).clamp(max=attention.sum(-1)).unsqueeze(-1)
        batch["pool_mask"] = (from_end >= 1) & (from_end <= counts)
        return batch

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], padding_side: str | None = None) -> torch.Tensor:
        """``[B, hidden_size]`` float32 mean-pooled features (not normalised)."""
        if not len(texts):
            return torch.empty(0, self.hidden_size)
        return torch.cat(
            [
                self._encode_batch(texts[lo : lo + self.batch_size], padding_side)
                for lo in range(0, len(texts), self.batch_size)
            ]
        )

    def _encode_batch(self, texts: Sequence[str], padding_side: str | None) -> torch.Tensor:
        batch = {k: v.to(self.device) for k, v in self.tokenize(texts, padding_side).items()}
        attention = batch["attention_mask"]
        hidden = self.model(
            input_ids=batch["input_ids"],
            attention_mask=bidirectional_mask(attention, self.model.dtype),
            position_ids=(attention.cumsum(-1) - 1).clamp(min=0),
            use_cache=False,
        ).last_hidden_state
        weights = batch["pool_mask"].to(torch.float32).unsqueeze(-1)
        pooled = (hidden.float() * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return pooled.cpu()


def bidirectional_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive ``[B, 1, L, L]`` mask: every token sees every real token, none sees padding.

    A 4-D mask is passed through unchanged by transformers' mask builders, so no causal
    triangle is added; additive form works for both the sdpa and eager attention paths.
    """
    keys = attention_mask[:, None, None, :].bool()
    mask = torch.zeros(keys.shape, dtype=dtype, device=attention_mask.device)
    mask = mask.masked_fill(~keys, torch.finfo(dtype).min)
    return mask.expand(-1, 1, attention_mask.shape[-1], -1)

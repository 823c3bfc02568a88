"""``hf_clip``: any transformers ``CLIPModel`` (both towers), e.g. openai/clip-vit-large-patch14-336.

Used by the tests and the embedded default with tiny locally saved models
(``revision_plugin.testing.tiny_clip``), and by users who run ReVision with a plain CLIP.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from revision_plugin.encoders.base import (
    Encoder,
    check_model_source,
    model_name,
    pooled_features,
    resolve_device_dtype,
    unit_rows,
)

logger = logging.getLogger(__name__)


class HFClipEncoder(Encoder):
    kind = "hf_clip"

    def __init__(self, model: str | Path, *, device="cpu", dtype=None, offline: bool = False) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        check_model_source(model)
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self.model = CLIPModel.from_pretrained(str(model), dtype=self.dtype, local_files_only=offline)
        self.model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model), local_files_only=offline)
        # CLIP pools the first end-of-text token; left padding would put a pad (= eos) first.
        self.tokenizer.padding_side = "right"
        self.image_processor = AutoImageProcessor.from_pretrained(str(model), local_files_only=offline)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.dim = int(self.model.config.projection_dim)
        self.encoder_id = f"{self.kind}:{model_name(model)}"
        self.model_source = str(model)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if not len(texts):
            return torch.empty(0, self.dim)
        tokens = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(self.device)
        output = self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return unit_rows(pooled_features(output)).cpu()

    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.device, self.dtype)
        return unit_rows(pooled_features(self.model.get_image_features(pixel_values=pixel_values))).cpu()

    def text_length(self, text: str) -> int:
        # Character count is a good enough proxy of token count for sorting and costs nothing.
        return len(text)

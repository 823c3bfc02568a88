"""What every encoder offers, and the helpers they share.

An ``Encoder`` maps texts and images into one joint embedding space. ``encoder_id`` names
that space (the same string for both sides) and is written into every feature store and
operator, so embeddings of different models are never mixed. ``fingerprint(modality)`` tells
two models apart whatever their directories are called (``encoders/fingerprint.py``); a
feature store records it and holds one encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from revision_plugin.errors import MissingFileError, RevisionError
from revision_plugin.runtime import DTYPE_NAMES, dtype_named

logger = logging.getLogger(__name__)


class Encoder:
    """Base class: subclasses implement ``encode_texts``, ``preprocess_images``, ``encode_pixels``."""

    kind: str = ""
    encoder_id: str
    model_source: str | None = None  # the directory or hub id the model was loaded from
    dim: int
    device: torch.device
    dtype: torch.dtype
    image_processor = None

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        raise NotImplementedError

    def preprocess_images(self, images: Sequence) -> torch.Tensor:
        """PIL images -> pixel tensor ``[B, 3, H, W]`` with the model's own image processor."""
        if self.image_processor is None:
            raise RevisionError(f"{self.encoder_id}: this encoder has no image side")
        pixels = self.image_processor(images=[img.convert("RGB") for img in images], return_tensors="pt")
        return pixels["pixel_values"]

    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_images(self, images: Sequence) -> torch.Tensor:
        if not len(images):
            return torch.empty(0, self.dim)
        return self.encode_pixels(self.preprocess_images(images))

    def prepare(self, modality: str) -> None:
        """Load whatever encoding ``modality`` ("text"/"image") needs, before a run records ``info()``."""

    def text_length(self, text: str) -> int:
        """Cheap proxy of a text's padded cost, used to sort batches by length."""
        return len(text)

    def fingerprint_inputs(self, modality: str) -> tuple[dict[str, str | None], dict]:
        """``(models, settings)`` that decide the vectors of ``modality``: the model sources
        whose files are hashed, and the encoding settings (after ``prepare(modality)``)."""
        return {"model": self.model_source}, {}

    def fingerprint(self, modality: str) -> str | None:
        """The identity of the model(s) and settings behind ``modality``'s vectors; ``None`` when
        the encoder cannot say (no ``model_source``)."""
        from revision_plugin.encoders.fingerprint import encoder_fingerprint

        models, settings = self.fingerprint_inputs(modality)
        if not any(models.values()):
            return None
        return encoder_fingerprint(self.kind, models, {"modality": modality, "dim": self.dim, **settings})

    def info(self) -> dict:
        """Settings recorded in the feature store's manifest."""
        return {"kind": self.kind, "encoder_id": self.encoder_id, "dim": self.dim, "dtype": str(self.dtype)}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(encoder_id={self.encoder_id!r}, dim={self.dim}, device={self.device})"


def unit_rows(features: torch.Tensor) -> torch.Tensor:
    """float32 rows scaled to unit L2 norm (normalised in float32 even for bf16 models)."""
    features = features.float()
    return features / features.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def pooled_features(output) -> torch.Tensor:
    """``get_*_features`` returns a tensor up to transformers 4.x and a model output in 5.x."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise RevisionError(f"unexpected feature output {type(output).__name__} without pooler_output")
    return pooled


def resolve_device_dtype(device: str | torch.device, dtype) -> tuple[torch.device, torch.dtype]:
    """bf16 on CUDA by default (half the memory, the precision the models were trained in), else fp32."""
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str):
        named = dtype_named(dtype)
        if named is None:
            raise RevisionError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPE_NAMES)}")
        dtype = named
    return device, dtype


def model_name(model: str | Path) -> str:
    """The name used in ``encoder_id``: a local directory's basename, or the hub id as given."""
    text = str(model).rstrip("/")
    path = Path(text)
    if path.exists():
        return path.name
    return text


def check_model_source(model: str | Path) -> None:
    """Fail early with a clear message when ``model`` looks like a path that does not exist.

    Hub ids (``owner/name``) pass through; ``local_files_only`` decides whether they may be
    downloaded or must already be in the local cache (``--offline``).
    """
    text = str(model)
    if Path(text).expanduser().exists():
        return
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:
        raise MissingFileError(f"{text}: model directory not found")

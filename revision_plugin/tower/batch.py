"""The batch wire format between a host's data pipeline and the tower: per-sample
:class:`TowerSample` inputs collated by :func:`collate_tower_inputs` into a
:class:`TowerBatch` (a ``dict`` of tensors the host moves and casts like any other input)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from revision_plugin.errors import BadInputError
from revision_plugin.tower.integrations import parse_to

# Per-sample input kinds inside a tower batch.
KIND_NONE = 0  # the sample has no visual input (text-only conversation): zeros, unused by the host
KIND_PIXELS = 1  # real image, online: pixels -> image encoder -> op.align_image
KIND_TEXT_FEATURE = 2  # pseudo, cached: stored text embedding -> op
KIND_IMAGE_FEATURE = 3  # real image, cached: stored image embedding -> op.align_image
KIND_TEXT = 4  # pseudo, online: raw text -> text encoder -> op
KIND_NAMES = {KIND_NONE: "none", KIND_PIXELS: "pixels", KIND_TEXT_FEATURE: "text_feature",
              KIND_IMAGE_FEATURE: "image_feature", KIND_TEXT: "text"}

# Keys of a collated tower batch (a dict, so hosts' input handling moves it to the device).
BATCH_KINDS = "revision_kinds"
BATCH_PIXELS = "pixel_values"  # always present (maybe empty): carries the host's compute dtype
BATCH_TEXT_FEATURES = "text_features"  # float32 bit-cast to int32: never rounded by host casts
BATCH_IMAGE_FEATURES = "image_features"
BATCH_TEXTS = "texts"


class TowerBatch(dict):
    """A collated tower batch: a ``dict`` (so hosts' input handling - ``Trainer._prepare_input``,
    accelerate's ``send_to_device`` - moves its tensors and rebuilds it with its own type)
    that also answers ``ndim`` like the 4-D pixel tensor hosts expect in that argument."""

    ndim = 4

    def to(self, *args, **kwargs) -> TowerBatch:
        """Move every tensor; a dtype applies to floating tensors only (ids and packed
        embeddings keep theirs)."""
        device, dtype, non_blocking = parse_to(*args, **kwargs)
        out = TowerBatch()
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                cast = dtype if dtype is not None and value.is_floating_point() else None
                value = value.to(device=device, dtype=cast, non_blocking=non_blocking)
            out[key] = value
        return out


@dataclass
class TowerSample:
    """One sample's visual input, as a host's dataset produces it (see ``collate_tower_inputs``)."""

    kind: int
    value: Any = None  # pixels [3, H, W] | raw embedding [dim] | text str | None

    @classmethod
    def none(cls) -> TowerSample:
        return cls(KIND_NONE)


def collate_tower_inputs(samples: Sequence[TowerSample], pixel_shape: Sequence[int] | None = None) -> dict:
    """Collate per-sample inputs into the dict the tower reads.

    Embeddings travel as float32 bit patterns in int32 tensors: hosts cast every floating
    input to their compute dtype (e.g. DeepSpeed bf16), which must not round raw
    embeddings before the operator sees them. The pixel tensor is always present (empty
    when the batch has no images) so that the host's cast tells the tower its compute dtype.
    """
    kinds = torch.tensor([s.kind for s in samples], dtype=torch.long)
    pixels = [s.value for s in samples if s.kind == KIND_PIXELS]
    text_feats = [torch.as_tensor(np.asarray(s.value, dtype=np.float32)) for s in samples if s.kind == KIND_TEXT_FEATURE]
    image_feats = [torch.as_tensor(np.asarray(s.value, dtype=np.float32)) for s in samples if s.kind == KIND_IMAGE_FEATURE]
    texts = [s.value for s in samples if s.kind == KIND_TEXT]
    unknown = set(kinds.tolist()) - set(KIND_NAMES)
    if unknown:
        raise BadInputError(f"revision tower: unknown sample kind(s) {sorted(unknown)}")
    if pixels:
        shapes = {tuple(p.shape) for p in pixels}
        if len(shapes) > 1:
            raise BadInputError(f"revision tower: images of different shapes in one batch {sorted(shapes)}; "
                                "use a fixed-size image processor (image_aspect_ratio square/pad)")
        pixel_values = torch.stack([p.float() for p in pixels])
    else:
        pixel_values = torch.zeros((0, *(pixel_shape or (3, 1, 1))), dtype=torch.float32)
    return TowerBatch({
        BATCH_KINDS: kinds,
        BATCH_PIXELS: pixel_values,
        BATCH_TEXT_FEATURES: _pack(text_feats),
        BATCH_IMAGE_FEATURES: _pack(image_feats),
        BATCH_TEXTS: list(texts),
    })


def _pack(rows: list[torch.Tensor]) -> torch.Tensor:
    if not rows:
        return torch.zeros((0, 0), dtype=torch.int32)
    dims = {r.shape[-1] for r in rows}
    if len(dims) > 1 or any(r.ndim != 1 for r in rows):
        raise BadInputError(f"revision tower: embeddings of different shapes in one batch: {sorted(dims)}")
    return torch.stack(rows).contiguous().view(torch.int32)


def unpack_features(packed: torch.Tensor) -> torch.Tensor:
    """The float32 embeddings of a packed batch field (see :func:`collate_tower_inputs`)."""
    if packed.dtype == torch.int32:
        return packed.contiguous().view(torch.float32)
    return packed.float()


def is_tower_batch(x: Any) -> bool:
    return isinstance(x, Mapping) and BATCH_KINDS in x

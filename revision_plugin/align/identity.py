"""The paper's "W/o Align" baseline: raw (unit-normalised) text embeddings."""

from __future__ import annotations

import torch

from revision_plugin.align.base import FitContext, Operator, register_operator
from revision_plugin.align.sources import ChunkSource


@register_operator
class Identity(Operator):
    method = "identity"

    @classmethod
    def fit(cls, text: ChunkSource, image: ChunkSource, ctx: FitContext, **options) -> Identity:
        # The pass validates the data and records counts and a fingerprint like every method.
        text_stats = ctx.moments(text, "identity: text")
        image_stats = ctx.moments(image, "identity: image")
        return cls(cls.make_info(text_stats, image_stats, cls.check_options(options)))

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        return u

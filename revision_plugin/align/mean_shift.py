"""Mean shift (Unicorn's baseline): subtract the global text mean.

Unicorn's recipe (Yu-xm/Unicorn, data/embed_mean.py) only subtracts the text mean and does not
re-normalise, so with the default options the output is *not* on the unit sphere; the options
``add_image_mean`` and ``renormalize`` give the natural "shift onto the image mean" variant.
Real images pass through unchanged, as in Unicorn.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from revision_plugin.align.base import (
    FitContext,
    Operator,
    Opt,
    register_operator,
    unit,
)
from revision_plugin.align.sources import ChunkSource


@register_operator
class MeanShift(Operator):
    method = "mean_shift"
    buffer_names = ("mu_text", "mu_image")
    default_options = {"add_image_mean": False, "renormalize": False}
    option_specs: ClassVar[dict[str, Opt]] = {"add_image_mean": Opt(bool), "renormalize": Opt(bool)}

    @classmethod
    def fit(cls, text: ChunkSource, image: ChunkSource, ctx: FitContext, **options) -> MeanShift:
        return cls.fit_two_means(text, image, ctx, options)

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        y = u - self.buffer("mu_text", u)
        if self.options["add_image_mean"]:
            y = y + self.buffer("mu_image", u)
        return unit(y) if self.options["renormalize"] else y

"""Mean shift (Unicorn's baseline): subtract the global text mean.

Unicorn's recipe (Yu-xm/Unicorn, data/embed_mean.py) only subtracts the text mean and does not
re-normalise, so with the default options the output is *not* on the unit sphere; the options
``add_image_mean`` and ``renormalize`` give the natural "shift onto the image mean" variant.
Real images pass through unchanged, as in Unicorn.
"""

from __future__ import annotations

import torch

from revision_plugin.align.base import FitContext, Operator, register_operator, unit
from revision_plugin.align.sources import ChunkSource


@register_operator
class MeanShift(Operator):
    method = "mean_shift"
    buffer_names = ("mu_text", "mu_image")
    default_options = {"add_image_mean": False, "renormalize": False}

    @classmethod
    def fit(cls, text: ChunkSource, image: ChunkSource, ctx: FitContext, **options) -> "MeanShift":
        options = cls.check_options(options)
        text_stats = ctx.moments(text, "mean_shift: text")
        image_stats = ctx.moments(image, "mean_shift: image")
        info = cls.make_info(text_stats, image_stats, options)
        return cls(info, mu_text=text_stats.mean, mu_image=image_stats.mean)

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        y = u - self.buffer("mu_text", u)
        if self.options["add_image_mean"]:
            y = y + self.buffer("mu_image", u)
        return unit(y) if self.options["renormalize"] else y

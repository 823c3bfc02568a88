"""C3 (yuhui-zh15/C3): centre each modality on its own mean, add isotropic Gaussian noise to
the text side during training, re-normalise.

Noise follows ``nn.Module`` mode: present in ``train()`` mode (the host's training loop puts
the tower, hence the operator, in training mode, so every stage-1 step draws fresh noise, as
in C3), absent in ``eval()`` mode (inference, ``load_operator`` returns eval mode). Images are
centred on the image mean and never receive noise. ``seed`` makes the noise stream
reproducible (one generator per device).
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

C3_NOISE_VARIANCE = 0.016


@register_operator
class C3(Operator):
    method = "c3"
    buffer_names = ("mu_text", "mu_image")
    default_options = {"noise_variance": C3_NOISE_VARIANCE, "renormalize": True, "seed": None}
    option_specs: ClassVar[dict[str, Opt]] = {"noise_variance": Opt(float, 0.0, 100.0), "renormalize": Opt(bool),
                    "seed": Opt(int, 0, 2**63 - 1, optional=True)}

    def __init__(self, info, **buffers) -> None:
        super().__init__(info, **buffers)
        self._generators: dict[torch.device, torch.Generator] = {}

    @classmethod
    def fit(cls, text: ChunkSource, image: ChunkSource, ctx: FitContext, **options) -> C3:
        return cls.fit_two_means(text, image, ctx, options)

    def _generator(self, device: torch.device) -> torch.Generator | None:
        seed = self.options["seed"]
        if seed is None:
            return None
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(int(seed))
        return self._generators[device]

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        y = u - self.buffer("mu_text", u)
        if self.training and self.options["noise_variance"] > 0:
            # Drawn in float32 whatever the compute dtype, so a seed gives one stream everywhere.
            noise = torch.randn(y.shape, generator=self._generator(y.device), device=y.device, dtype=torch.float32)
            y = y + noise.to(y.dtype) * self.options["noise_variance"] ** 0.5
        return unit(y) if self.options["renormalize"] else y

    def transform_target(self, x: torch.Tensor) -> torch.Tensor:
        y = x - self.buffer("mu_image", x)
        return unit(y) if self.options["renormalize"] else y

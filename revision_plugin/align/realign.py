"""ReAlign (sec. 4, eqs. 18–24): anchor, trace and centroid alignment of text to image.

Fit = one pass over each modality for the means and traces, then one pass over the text per
centroid step for the drift μ' = E[e'] (eq. 23). ``centroid_iters`` > 1 repeats the centroid
step, each time re-estimating the drift of the previous output over the corpus; 1 is the paper.

The drift passes never materialise the aligned rows: every intermediate vector of a row is
``α·u + Σ_j β_j·w_j`` (u the unit input, w_j a handful of fixed vectors), so a pass costs one
thin matmul and one matrix–vector product per block. ``transform`` computes the same thing
directly; the tests check the two agree.
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
from revision_plugin.errors import ArtifactMismatchError

# Each step costs one pass over the text; past a few the drift is round-off (sec. 4.3).
MAX_CENTROID_ITERS = 64


@register_operator
class ReAlign(Operator):
    method = "realign"
    buffer_names = ("mu_text", "mu_image", "scale", "trace_text", "trace_image", "drifts")
    buffer_shapes: ClassVar[dict[str, tuple[int | str, ...]]] = {"scale": (), "trace_text": (), "trace_image": (), "drifts": ("centroid_iters", "d")}
    default_options = {"centroid_iters": 1, "eps": 1e-8}
    option_specs: ClassVar[dict[str, Opt]] = {"centroid_iters": Opt(int, 0, MAX_CENTROID_ITERS), "eps": Opt(float, 0.0, 1e-3)}

    @classmethod
    def fit(cls, text: ChunkSource, image: ChunkSource, ctx: FitContext, **options) -> ReAlign:
        options = cls.check_options(options)
        iters = options["centroid_iters"]
        text_stats = ctx.moments(text, "realign: text moments")
        image_stats = ctx.moments(image, "realign: image moments")
        cls.require_spread(text_stats, text.name, "ReAlign's trace scale (eq. 21)")
        cls.require_spread(image_stats, image.name, "ReAlign's trace scale (eq. 21)")
        mu_y, mu_x = text_stats.mean, image_stats.mean  # eq. 18
        trace_y, trace_x = text_stats.trace, image_stats.trace  # eq. 20
        scale = (trace_x / (trace_y + options["eps"])) ** 0.5  # eq. 21
        # eq. 22 as α·u + w_0 with w_0 = μ_x − s·μ_y; each centroid step adds w_j = μ_x − μ'_j.
        fixed = [mu_x - scale * mu_y]
        drifts = []
        for step in range(iters):
            drift = _drift_pass(text, ctx, scale, torch.stack(fixed), f"realign: centroid pass {step + 1}/{iters}")
            drifts.append(drift)
            fixed.append(mu_x - drift)
        info = cls.make_info(text_stats, image_stats, options)
        return cls(
            info,
            mu_text=mu_y,
            mu_image=mu_x,
            scale=torch.tensor(scale, dtype=torch.float64),
            trace_text=torch.tensor(trace_y, dtype=torch.float64),
            trace_image=torch.tensor(trace_x, dtype=torch.float64),
            drifts=torch.stack(drifts) if drifts else torch.zeros(0, text.dim, dtype=torch.float64),
        )

    def check_buffers(self) -> None:
        super().check_buffers()
        for name in ("scale", "trace_text", "trace_image"):
            if not float(getattr(self, name)) > 0:
                raise ArtifactMismatchError(f"realign: buffer {name!r} is {float(getattr(self, name))}, must be > 0; refit")

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        mu_x = self.buffer("mu_image", u)
        y = unit(mu_x + self.buffer("scale", u) * (u - self.buffer("mu_text", u)))  # eq. 22 + projection
        for drift in self.buffer("drifts", u):
            y = unit(y - drift + mu_x)  # eqs. 23–24
        return y


def _drift_pass(text: ChunkSource, ctx: FitContext, scale: float, fixed: torch.Tensor, desc: str) -> torch.Tensor:
    """E[y] over the corpus, where y = normalize(s·u + w_0) followed by y ← normalize(y + w_j)."""
    gram = fixed @ fixed.T
    total = torch.zeros(text.dim, dtype=torch.float64)
    count = 0
    for x, norm, inv_norm in ctx.blocks(text, desc):
        u_dot_w = (x @ fixed.T) * inv_norm[:, None]  # [n, J]
        u_sq = (norm * inv_norm).square()
        alpha = torch.full_like(inv_norm, scale)
        beta = torch.zeros_like(u_dot_w)
        for j in range(fixed.shape[0]):
            beta[:, j] += 1.0
            norm_sq = alpha.square() * u_sq + 2 * alpha * (beta * u_dot_w).sum(1) + ((beta @ gram) * beta).sum(1)
            inv = norm_sq.rsqrt()
            alpha, beta = alpha * inv, beta * inv[:, None]
        total += x.T @ (alpha * inv_norm) + fixed.T @ beta.sum(0)
        count += x.shape[0]
    return ctx.mean_over_ranks(total, count)

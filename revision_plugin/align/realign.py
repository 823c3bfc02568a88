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
from revision_plugin.runtime import resolve_device

# Each step costs one pass over the text; past a few the drift is round-off (sec. 4.3).
MAX_CENTROID_ITERS = 64
# Up to this many fixed vectors the apply map adds them one by one (measured faster than a GEMM).
_RANK_ONE_UPDATES = 4


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

    def affine_vectors(self) -> torch.Tensor:
        """``[w_0; w_1; …]`` (float64): w_0 = μ_x − s·μ_y, w_j = μ_x − μ'_j (see ``_drift_pass``)."""
        first = self.mu_image - self.scale * self.mu_text
        return torch.cat([first[None], self.mu_image[None] - self.drifts])

    def map_rows(self, x: torch.Tensor, norm: torch.Tensor, image: bool = False,
                 out: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 rows: every output is ``α·u + Σ_j β_j·w_j`` (eqs. 22–24 unrolled, as in the
        fit), so a block costs one thin matrix product for ``u·w_j``, float64 recurrences on
        ``[n, J]`` scalars, and one fused ``α·x + β·W`` write: no per-step renormalisation."""
        if image or x.dtype != torch.float32:
            return super().map_rows(x, norm, image, out)
        fixed64 = self.affine_vectors().to(x.device)
        fixed = fixed64.to(torch.float32)
        gram = fixed64 @ fixed64.T
        inv_norm = norm.to(torch.float64).reciprocal()
        u_dot_w = (fixed @ x.T).T.to(torch.float64) * inv_norm[:, None]  # [n, J]; faster than x @ fixed.T
        alpha = torch.full_like(inv_norm, float(self.scale))
        beta = torch.zeros_like(u_dot_w)
        for j in range(fixed.shape[0]):  # ‖u‖ = 1 up to float32 rounding
            beta[:, j] += 1.0
            norm_sq = alpha.square() + 2 * alpha * (beta * u_dot_w).sum(1) + ((beta @ gram) * beta).sum(1)
            inv = norm_sq.rsqrt()
            alpha, beta = alpha * inv, beta * inv[:, None]
        scaled = (alpha * inv_norm).to(torch.float32)
        out = torch.empty_like(x) if out is None else out
        torch.mul(x, scaled[:, None], out=out)
        beta = beta.to(torch.float32)
        if fixed.shape[0] > _RANK_ONE_UPDATES:
            return out.addmm_(beta, fixed)
        for j, w in enumerate(fixed):  # a k=1..4 GEMM is slower than as many fused multiply-adds
            out.addcmul_(beta[:, j : j + 1], w[None])
        return out

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        mu_x = self.buffer("mu_image", u)
        y = unit(mu_x + self.buffer("scale", u) * (u - self.buffer("mu_text", u)))  # eq. 22 + projection
        for drift in self.buffer("drifts", u):
            y = unit(y - drift + mu_x)  # eqs. 23–24
        return y


class _DriftSums:
    """Per-thread sums of one centroid pass: Σ α_i·inv_i·x_i, Σ β_i and the row count."""

    def __init__(self, scale: float, fixed: torch.Tensor) -> None:
        self.scale, self.fixed, self.gram = scale, fixed, fixed @ fixed.T
        self.total = torch.zeros(fixed.shape[1], dtype=torch.float64, device=fixed.device)
        self.beta = torch.zeros(fixed.shape[0], dtype=torch.float64, device=fixed.device)
        self.count = 0

    def add(self, x: torch.Tensor, norm: torch.Tensor, inv_norm: torch.Tensor) -> None:
        # u·w_j, one matrix–vector product per w_j (a skinny GEMM is several times slower).
        u_dot_w = torch.stack([torch.mv(x, w) for w in self.fixed], dim=1) * inv_norm[:, None]  # [n, J]
        u_sq = (norm * inv_norm).square()
        alpha = torch.full_like(inv_norm, self.scale)
        beta = torch.zeros_like(u_dot_w)
        for j in range(self.fixed.shape[0]):
            beta[:, j] += 1.0
            norm_sq = alpha.square() * u_sq + 2 * alpha * (beta * u_dot_w).sum(1) + ((beta @ self.gram) * beta).sum(1)
            inv = norm_sq.rsqrt()
            alpha, beta = alpha * inv, beta * inv[:, None]
        self.total.addmv_(x.T, alpha * inv_norm)
        self.beta += beta.sum(0)
        self.count += x.shape[0]

    def merge(self, other: _DriftSums) -> _DriftSums:
        self.total += other.total
        self.beta += other.beta
        self.count += other.count
        return self


def _drift_pass(text: ChunkSource, ctx: FitContext, scale: float, fixed: torch.Tensor, desc: str) -> torch.Tensor:
    """E[y] over the corpus, where y = normalize(s·u + w_0) followed by y ← normalize(y + w_j)."""
    fixed = fixed.to(resolve_device(ctx.device))
    sums = ctx.reduce(text, desc, lambda: _DriftSums(scale, fixed), _DriftSums.add, _DriftSums.merge)
    return ctx.mean_over_ranks(sums.total + fixed.T @ sums.beta, sums.count)

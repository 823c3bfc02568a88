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
RANK_ONE_UPDATES = 4


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

    def row_mapper(self, image: bool = False):
        """Float32 rows: every output is ``α·u + Σ_j β_j·w_j`` (eqs. 22–24 unrolled, as in the
        fit), so a block costs one thin matrix product for ``u·w_j``, a few float64 operations
        on ``[n]`` vectors (``unit_weights``) and one ``α·x + β·W`` write: no per-step
        renormalisation. The vectors and their Gram matrix are computed once, here."""
        generic = super().row_mapper(image)
        if image:
            return generic
        fixed64 = self.affine_vectors()
        fixed, gram = fixed64.to(torch.float32), (fixed64 @ fixed64.T).tolist()
        scale = float(self.scale)

        def map_rows(x: torch.Tensor, norm: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
            if x.dtype != torch.float32:
                return generic(x, norm, out)
            w = fixed if fixed.device == x.device else fixed.to(x.device)
            inv_norm = norm.to(torch.float64).reciprocal_()
            dots = (w @ x.T).to(torch.float64).mul_(inv_norm)  # [J, n] u·w_j; faster than x @ w.T
            alpha, betas = unit_weights(scale, list(dots), gram)  # ‖u‖ = 1 up to float32 rounding
            out = torch.empty_like(x) if out is None else out
            torch.mul(x, alpha.mul_(inv_norm).to(torch.float32)[:, None], out=out)
            if len(betas) > RANK_ONE_UPDATES:
                return out.addmm_(torch.stack(betas, 1).to(torch.float32), w)
            for beta, w_j in zip(betas, w):  # a k=1..4 GEMM is slower than as many fused multiply-adds
                out.addcmul_(beta.to(torch.float32)[:, None], w_j[None])
            return out

        return map_rows

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        mu_x = self.buffer("mu_image", u)
        y = unit(mu_x + self.buffer("scale", u) * (u - self.buffer("mu_text", u)))  # eq. 22 + projection
        for drift in self.buffer("drifts", u):
            y = unit(y - drift + mu_x)  # eqs. 23–24
        return y


def unit_weights(scale: float, dots: list[torch.Tensor], gram: list[list[float]],
                 u_sq: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``α, [β_j]`` with ``y = α·u + Σ_j β_j·w_j`` for the chain ``y_0 = unit(s·u + w_0)``,
    ``y_j = unit(y_{j-1} + w_j)`` (eqs. 22–24), from ``dots[j] = u·w_j`` (float64 ``[n]``),
    the Gram matrix ``w_j·w_k`` and ``u_sq = ‖u‖²`` (``None``: 1).

    Unnormalised, the chain is ``z_0 = s·u + w_0``, ``z_j = z_{j-1} + N_{j-1}·w_j`` with
    ``N_j = ‖z_j‖`` and ``y_j = z_j / N_j``; so ``α = s / N``, ``β_0 = 1 / N``,
    ``β_j = N_{j-1} / N`` (N the last norm), and each step updates ``N²`` from ``D_j = z_{j-1}·w_j``:
    ``N_j² = N_{j-1}²·(1 + G_jj) + 2·N_{j-1}·D_j``. A handful of ``[n]`` operations per step.
    """
    steps = len(dots)
    # D_k = z_0·w_k = s·(u·w_k) + G_0k
    d = [dots[k] * scale + gram[0][k] for k in range(1, steps)]
    norm_sq = dots[0] * (2 * scale) + gram[0][0]
    norm_sq += scale * scale if u_sq is None else u_sq * (scale * scale)
    norms = [norm_sq.sqrt_()]
    for j in range(1, steps):
        prev = norms[-1]
        dj = d.pop(0)
        norm_sq = prev.square() * (1 + gram[j][j]) + 2 * prev * dj
        for k in range(len(d)):  # z_j·w_k gains N_{j-1}·G_jk
            d[k] += prev * gram[j][j + 1 + k]
        norms.append(norm_sq.sqrt_())
    inv_last = norms[-1].reciprocal()
    betas = [inv_last] + [n * inv_last for n in norms[:-1]]
    return inv_last * scale, betas


class _DriftSums:
    """Per-thread sums of one centroid pass: Σ α_i·inv_i·x_i, Σ β_i and the row count."""

    def __init__(self, scale: float, fixed: torch.Tensor) -> None:
        self.scale, self.fixed, self.gram = scale, fixed, (fixed @ fixed.T).tolist()
        self.total = torch.zeros(fixed.shape[1], dtype=torch.float64, device=fixed.device)
        self.beta = torch.zeros(fixed.shape[0], dtype=torch.float64, device=fixed.device)
        self.count = 0

    def add(self, x: torch.Tensor, norm: torch.Tensor, inv_norm: torch.Tensor) -> None:
        # u·w_j, one matrix–vector product per w_j (a skinny GEMM is several times slower).
        dots = [torch.mv(x, w).mul_(inv_norm) for w in self.fixed]
        alpha, betas = unit_weights(self.scale, dots, self.gram, (norm * inv_norm).square_())
        self.total.addmv_(x.T, alpha.mul_(inv_norm))
        self.beta += torch.stack([beta.sum() for beta in betas])
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

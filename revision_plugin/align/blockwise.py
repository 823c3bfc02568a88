"""Blockwise covariance alignment (appendix F), the paper's "BC Align" failure baseline.

1. Anchor (eq. 57):  ẽ = normalize(e − μ_text + μ_image).
2. Geometry (eqs. 58–61): in the fixed frame U ⊕ V (top eigenvectors of Cov(text)+Cov(image)
   by an energy threshold), whiten–colour each block, T = (Σ*)^{1/2} Σ^{-1/2}, with the image
   block covariances as target; ê = normalize(T_U P_U ẽ + T_V P_V ẽ). Block covariances are
   shrunk towards a scaled identity, Σ ← (1−λ)Σ + λ·tr(Σ)/k·I, before the matrix roots.
3. Centroid (eq. 62): e = normalize(ê − E[ê] + μ_image).

T_U and T_V are stored combined as one d×d matrix M = Q_U T_U Q_Uᵀ + Q_V T_V Q_Vᵀ.
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
from revision_plugin.align.frame import DEFAULT_ENERGY, reference_frame
from revision_plugin.align.sources import ChunkSource
from revision_plugin.align.stats import MomentStats
from revision_plugin.errors import ArtifactMismatchError, BadInputError
from revision_plugin.runtime import resolve_device


def shrink(cov: torch.Tensor, shrinkage: float) -> torch.Tensor:
    k = cov.shape[0]
    return (1 - shrinkage) * cov + shrinkage * (torch.trace(cov) / k) * torch.eye(k, dtype=cov.dtype)


def matrix_power_sym(cov: torch.Tensor, power: float, floor: float = 1e-12) -> torch.Tensor:
    """``cov^power`` for a symmetric PSD matrix (eigenvalues floored for negative powers)."""
    eigenvalues, eigenvectors = torch.linalg.eigh((cov + cov.T) / 2)
    return (eigenvectors * eigenvalues.clamp(min=floor).pow(power)) @ eigenvectors.T


def whiten_colour(source_cov: torch.Tensor, target_cov: torch.Tensor) -> torch.Tensor:
    """Eq. 60: ``T = (Σ*)^{1/2} Σ^{-1/2}``."""
    return matrix_power_sym(target_cov, 0.5) @ matrix_power_sym(source_cov, -0.5)


@register_operator
class Blockwise(Operator):
    method = "blockwise"
    buffer_names = ("mu_text", "mu_image", "matrix", "drift")
    buffer_shapes: ClassVar[dict[str, tuple[int | str, ...]]] = {"matrix": ("d", "d")}
    default_options = {"energy": DEFAULT_ENERGY, "shrinkage": 0.01}
    option_specs: ClassVar[dict[str, Opt]] = {"energy": Opt(float, 0.0, 1.0, low_open=True), "shrinkage": Opt(float, 0.0, 1.0)}

    @classmethod
    def fit(cls, text: ChunkSource, image: ChunkSource, ctx: FitContext, **options) -> Blockwise:
        options = cls.check_options(options)
        if text.dim < 2:
            raise BadInputError(f"{text.name}: dim {text.dim}; the blockwise U ⊕ V frame needs dim ≥ 2")
        text_stats = ctx.moments(text, "blockwise: text moments", second_moment=True)
        image_stats = ctx.moments(image, "blockwise: image moments", second_moment=True)
        cls.require_spread(text_stats, text.name, "the blockwise covariance map")
        cls.require_spread(image_stats, image.name, "the blockwise covariance map")
        mu_a, mu_b = text_stats.mean, image_stats.mean
        frame = reference_frame(text_stats.covariance + image_stats.covariance, options["energy"])

        device = resolve_device(ctx.device)
        mu_a_dev, mu_b_dev = mu_a.to(device), mu_b.to(device)
        anchored = MomentStats.empty(text.dim, second_moment=True, device=device)
        for x, _, inv_norm in ctx.blocks(text, "blockwise: anchored covariance"):
            z = x * inv_norm[:, None] - mu_a_dev + mu_b_dev
            z_norm = torch.linalg.vector_norm(z, dim=1)
            anchored.update_block(z, z_norm, z_norm.reciprocal())
        anchored.to_cpu().all_reduce()
        cov_a, cov_b = anchored.covariance, image_stats.covariance

        matrix = torch.zeros(text.dim, text.dim, dtype=torch.float64)
        for basis in (frame.basis_u, frame.basis_v):
            block_a = shrink(basis.T @ cov_a @ basis, options["shrinkage"])
            block_b = shrink(basis.T @ cov_b @ basis, options["shrinkage"])
            matrix += basis @ whiten_colour(block_a, block_b) @ basis.T

        total, count = torch.zeros(text.dim, dtype=torch.float64, device=device), 0
        on_device = mu_a_dev, mu_b_dev, matrix.to(device)
        for x, _, inv_norm in ctx.blocks(text, "blockwise: centroid pass"):
            total += _geometry_aligned(x * inv_norm[:, None], *on_device).sum(0)
            count += x.shape[0]
        drift = ctx.mean_over_ranks(total, count)

        options = {**options, "rank_u": frame.rank}
        info = cls.make_info(text_stats, image_stats, options)
        return cls(info, mu_text=mu_a, mu_image=mu_b, matrix=matrix, drift=drift)

    def check_buffers(self) -> None:
        super().check_buffers()
        if not bool(self.matrix.abs().sum() > 0):
            raise ArtifactMismatchError("blockwise: buffer 'matrix' is all zeros; refit the operator")

    def transform(self, u: torch.Tensor) -> torch.Tensor:
        mu_b = self.buffer("mu_image", u)
        aligned = _geometry_aligned(u, self.buffer("mu_text", u), mu_b, self.buffer("matrix", u))
        return unit(aligned - self.buffer("drift", u) + mu_b)


def _geometry_aligned(u: torch.Tensor, mu_a: torch.Tensor, mu_b: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Steps 1–2: ê = normalize(M · normalize(u − μ_a + μ_b))."""
    return unit(unit(u - mu_a + mu_b) @ matrix.T)

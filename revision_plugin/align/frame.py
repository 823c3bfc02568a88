"""The fixed reference frame of sec. 3.1: U = top-r eigenvectors of a covariance, V = U⊥.

``r`` is the smallest rank whose eigenvalues hold at least ``energy`` of the total variance
(the paper's "energy threshold"). Shared by the blockwise operator and the geometry toolkit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_ENERGY = 0.9


@dataclass
class ReferenceFrame:
    basis_u: torch.Tensor  # [d, r] orthonormal columns spanning U
    basis_v: torch.Tensor  # [d, d - r] orthonormal columns spanning V
    eigenvalues: torch.Tensor  # [d] descending

    @property
    def rank(self) -> int:
        return self.basis_u.shape[1]

    def project_u(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.basis_u) @ self.basis_u.T

    def project_v(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.basis_v) @ self.basis_v.T


def energy_rank(eigenvalues: torch.Tensor, energy: float) -> int:
    """Smallest r with Σ_{k≤r} λ_k ≥ energy · Σ λ (eigenvalues sorted descending)."""
    if not 0.0 < energy <= 1.0:
        raise ValueError(f"energy threshold must be in (0, 1], got {energy}")
    clipped = eigenvalues.clamp(min=0)
    cumulative = torch.cumsum(clipped, 0) / clipped.sum()
    r = int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=cumulative.dtype) - 1e-12)) + 1
    return min(max(r, 1), len(eigenvalues) - 1)


def reference_frame(covariance, energy: float = DEFAULT_ENERGY) -> ReferenceFrame:
    """Frame from a symmetric covariance (e.g. Cov(e_x) + Cov(e_y), eq. 1); V keeps ≥ 1 dim."""
    cov = torch.as_tensor(np.asarray(covariance) if not torch.is_tensor(covariance) else covariance)
    cov = cov.to(torch.float64)
    eigenvalues, eigenvectors = torch.linalg.eigh((cov + cov.T) / 2)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    r = energy_rank(eigenvalues, energy)
    return ReferenceFrame(eigenvectors[:, :r].contiguous(), eigenvectors[:, r:].contiguous(), eigenvalues)

"""Synthetic but realistic embedding clouds for the demo, benchmarks and tests.

Both modalities live on the unit sphere with power-law covariance spectra (λ_k ∝ k^-α; the
paper measures α ≈ 1.33 for text and ≈ 1.83 for images, app. D.1), heavy-tailed elliptical
residuals, modality-specific mean offsets (the gap) and bases that are related by a small
random rotation (shared semantics, different encoders). ``paired=True`` draws text and image
rows from the same latent factors (a paired corpus); otherwise the two are independent
(the unpaired setting ReAlign is fitted in). Deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SyntheticEmbeddings:
    text: np.ndarray  # [n_text, dim] float32, unit rows
    image: np.ndarray  # [n_image, dim] float32, unit rows


def _random_rotation(rng: np.random.Generator, dim: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def _small_rotation(rng: np.random.Generator, dim: int, angle: float) -> np.ndarray:
    """exp(angle·A) for a random unit-norm skew-symmetric A, via its eigendecomposition."""
    a = rng.normal(size=(dim, dim))
    skew = (a - a.T) / np.linalg.norm(a - a.T, 2)
    eigenvalues, eigenvectors = np.linalg.eig(skew * angle)
    return np.real(eigenvectors @ np.diag(np.exp(eigenvalues)) @ np.linalg.inv(eigenvectors))


def synthetic_embeddings(
    n_text: int = 20_000,
    n_image: int = 20_000,
    dim: int = 256,
    seed: int = 0,
    alpha_text: float = 1.3,
    alpha_image: float = 1.8,
    spread: float = 1.2,
    tail_dof: float = 6.0,
    basis_angle: float = 0.3,
    paired: bool = False,
) -> SyntheticEmbeddings:
    if paired and n_text != n_image:
        raise ValueError("paired data needs n_text == n_image")
    rng = np.random.default_rng(seed)
    basis_image = _random_rotation(rng, dim)
    basis_text = _small_rotation(rng, dim, basis_angle) @ basis_image
    ranks = np.arange(1, dim + 1, dtype=np.float64)
    centre = rng.normal(size=dim)
    centre /= np.linalg.norm(centre)

    def offset() -> np.ndarray:
        v = rng.normal(size=dim)
        return 0.45 * v / np.linalg.norm(v)

    mean_image, mean_text = centre + offset(), centre + offset()

    def cloud(n: int, latent: np.ndarray, alpha: float, basis: np.ndarray, mean: np.ndarray) -> np.ndarray:
        spectrum = ranks**-alpha
        spectrum *= spread**2 / spectrum.sum()
        radial = np.sqrt(tail_dof / rng.chisquare(tail_dof, size=(n, 1)))  # elliptical, heavy-tailed
        rows = mean + radial * (latent[:n] * np.sqrt(spectrum)) @ basis.T
        return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)

    latent_image = rng.normal(size=(n_image, dim))
    if paired:
        latent_text = 0.8 * latent_image + 0.6 * rng.normal(size=(n_text, dim))
    else:
        latent_text = rng.normal(size=(n_text, dim))
    return SyntheticEmbeddings(
        text=cloud(n_text, latent_text, alpha_text, basis_text, mean_text),
        image=cloud(n_image, latent_image, alpha_image, basis_image, mean_image),
    )

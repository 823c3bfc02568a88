"""Small deterministic embedding clouds shared by the core tests."""

import numpy as np


def anisotropic_cloud(rng, n, dim, alpha, offset_scale=1.0):
    """Unit rows with a power-law spectrum in a random basis and a random mean offset."""
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    spectrum = np.arange(1, dim + 1, dtype=np.float64) ** -alpha
    mean = rng.normal(size=dim)
    rows = offset_scale * mean / np.linalg.norm(mean) + (rng.normal(size=(n, dim)) * np.sqrt(spectrum)) @ basis.T
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def clouds(seed=1234, n_text=600, n_image=500, dim=12):
    """Small float64 text/image clouds with different spectra and means."""
    rng = np.random.default_rng(seed)
    return anisotropic_cloud(rng, n_text, dim, 1.3), anisotropic_cloud(rng, n_image, dim, 1.8)

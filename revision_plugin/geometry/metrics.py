"""Distribution-level geometry metrics of the paper (sec. 6 RQ1, app. D, F.4, G.2).

Every function takes ``[n, d]`` embeddings (numpy or torch, any float dtype), works on the
L2-normalised rows in float64 (float32 for the kNN matmuls) and returns plain Python
numbers or small arrays. Pairwise statistics (kNN, cosine KDE, MMD) never build an
``N × N`` matrix of the full data: they work on a seeded subsample of at most
``max_points`` rows (kNN in query batches, O(batch · n) memory) and report the sample size
they used, so results at large N are reproducible and honest about what was measured.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from revision_plugin.errors import BadInputError

DEFAULT_MAX_POINTS = 4000
DEFAULT_COSINE_PAIRS = 20000
KDE_GRID = 512
_BATCH = 1024


# --- helpers ------------------------------------------------------------------------------
def to_numpy(x: Any, dtype=np.float64) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    array = np.asarray(x, dtype=dtype)
    if array.ndim != 2:
        raise BadInputError(f"expected a 2-D [rows, dim] array, got shape {array.shape}")
    return array


def unit_rows(x: Any, dtype=np.float64) -> np.ndarray:
    """Rows scaled to unit L2 norm; refuses NaN/Inf and zero rows (naming the first one)."""
    array = to_numpy(x, dtype)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] <= 1e-12)
    if bad.any():
        raise BadInputError(f"row {int(np.flatnonzero(bad)[0])} has NaN/Inf values or zero norm")
    return array / norms


def subsample_rows(n: int, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subsample of ``min(n, max_points)`` rows (all rows if fewer)."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


# --- first moment -------------------------------------------------------------------------
def modality_gap(text: Any, image: Any, normalize: bool = True) -> float:
    """Centroid distance ‖E[e_text] − E[e_image]‖ on unit vectors (sec. 6 RQ1, Fig. 4).

    With ``normalize`` (default) rows are L2-normalised first; pass ``False`` when both inputs
    already are what the model sees (e.g. an operator's outputs).
    """
    a = unit_rows(text) if normalize else to_numpy(text)
    b = unit_rows(image) if normalize else to_numpy(image)
    if a.shape[1] != b.shape[1]:
        raise BadInputError(f"dimension mismatch: text {a.shape[1]}, image {b.shape[1]}")
    return float(np.linalg.norm(a.mean(0) - b.mean(0)))


def gap_sampling_floor(text: Any, image: Any, normalize: bool = True) -> float:
    """The gap two finite samples show even when their populations coincide:
    ``sqrt(tr Σ_text / n_text + tr Σ_image / n_image)`` (the RMS of ‖mean_a − mean_b‖ under
    equal means). A held-out gap at this level is as small as that sample can show; an
    in-sample gap can go below it because the operator was fitted on the same rows.
    """
    a = unit_rows(text) if normalize else to_numpy(text)
    b = unit_rows(image) if normalize else to_numpy(image)
    trace_a = float(np.sum(a.var(0, ddof=1)))
    trace_b = float(np.sum(b.var(0, ddof=1)))
    return math.sqrt(trace_a / len(a) + trace_b / len(b))


# --- second moment: spectrum ----------------------------------------------------------------
def covariance(x: Any, normalize: bool = True) -> np.ndarray:
    """Float64 covariance ``[d, d]`` of the (unit) rows, accumulated in row blocks."""
    a = unit_rows(x) if normalize else to_numpy(x)
    mean = a.mean(0)
    cov = np.zeros((a.shape[1], a.shape[1]))
    for lo in range(0, len(a), 8192):
        block = a[lo : lo + 8192] - mean
        cov += block.T @ block
    return cov / max(len(a) - 1, 1)


def spectrum(x: Any, target_trace: float | None = None, normalize: bool = True) -> np.ndarray:
    """Eigenvalues of the covariance, descending (app. D.1, Fig. 5a).

    ``target_trace``: rescale so the eigenvalues sum to it — the paper normalises the global
    trace of every method to the target (image) modality before comparing spectra. The
    rescaling moves the curve on a log–log plot but does not change the exponent α.
    """
    eigenvalues = np.linalg.eigvalsh(covariance(x, normalize))[::-1].clip(min=0.0)
    if target_trace is not None:
        total = eigenvalues.sum()
        if total > 0:
            eigenvalues = eigenvalues * (target_trace / total)
    return eigenvalues


def power_law_fit(
    eigenvalues: np.ndarray, k_min: int = 1, k_max: int | None = None, rel_floor: float = 1e-10
) -> dict[str, float]:
    """Least-squares fit of ``log λ_k = c − α log k`` over ``k ∈ [k_min, k_max]`` (app. D.1).

    ``k_max`` defaults to the last eigenvalue above ``rel_floor · λ_1`` (eigenvalues at round-off
    level, e.g. beyond the sample rank, would dominate a log fit). Returns α, the intercept c,
    the fit's R² in log space and the k range used. A flat (isotropic) spectrum gives α ≈ 0.
    """
    lam = np.asarray(eigenvalues, dtype=np.float64)
    if lam.ndim != 1 or len(lam) < 2:
        raise ValueError("need at least two eigenvalues")
    lam = np.sort(lam)[::-1]
    if lam[0] <= 0:
        raise ValueError("all eigenvalues are zero")
    usable = int(np.sum(lam > rel_floor * lam[0]))
    k_max = usable if k_max is None else min(k_max, usable)
    if k_max - k_min + 1 < 2:
        raise ValueError(f"power-law fit needs ≥ 2 eigenvalues in [{k_min}, {k_max}]")
    k = np.arange(k_min, k_max + 1, dtype=np.float64)
    log_k, log_lam = np.log(k), np.log(lam[k_min - 1 : k_max])
    slope, intercept = np.polyfit(log_k, log_lam, 1)
    residual = log_lam - (slope * log_k + intercept)
    total = np.sum((log_lam - log_lam.mean()) ** 2)
    r2 = 1.0 - float(np.sum(residual**2) / total) if total > 0 else 1.0
    return {"alpha": float(-slope), "intercept": float(intercept), "r2": r2, "k_min": int(k_min), "k_max": int(k_max)}


def power_law_alpha(eigenvalues: np.ndarray, k_min: int = 1, k_max: int | None = None) -> float:
    """Power-law exponent α of ``λ_k ∝ k^-α`` (app. D.1); see ``power_law_fit``."""
    return power_law_fit(eigenvalues, k_min, k_max)["alpha"]


def effective_rank(eigenvalues: np.ndarray) -> float:
    """Effective rank ``exp(H(p))``, ``p_k = λ_k / Σλ`` (Roy & Vetterli 2007; app. G.2, Fig. 11a).

    Equals d for an isotropic covariance and 1 for a rank-one one.
    """
    lam = np.clip(np.asarray(eigenvalues, dtype=np.float64), 0.0, None)
    total = lam.sum()
    if total <= 0:
        raise ValueError("all eigenvalues are zero")
    p = lam[lam > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def spectrum_summary(x: Any, target_trace: float | None = None, normalize: bool = True) -> dict[str, Any]:
    """Trace, α fit, effective rank and the (trace-normalised) eigenvalues of ``x``."""
    raw = spectrum(x, None, normalize)
    trace = float(raw.sum())
    scaled = raw * (target_trace / trace) if target_trace is not None and trace > 0 else raw
    fit = power_law_fit(scaled)
    return {
        "trace": trace,
        "alpha": fit["alpha"],
        "alpha_fit_r2": fit["r2"],
        "alpha_k_range": [fit["k_min"], fit["k_max"]],
        "effective_rank": effective_rank(raw),
        "eigenvalues": scaled,
    }


# --- angular topology ---------------------------------------------------------------------
def pairwise_cosines(x: Any, num_pairs: int = DEFAULT_COSINE_PAIRS, seed: int = 0, normalize: bool = True) -> np.ndarray:
    """Cosine similarities of ``num_pairs`` random pairs ``i ≠ j`` of rows (seeded), O(num_pairs) memory."""
    a = unit_rows(x) if normalize else to_numpy(x)
    n = len(a)
    if n < 2:
        raise ValueError("need at least two rows for pairwise cosines")
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=num_pairs)
    j = (i + rng.integers(1, n, size=num_pairs)) % n  # uniform over j ≠ i
    return np.einsum("ij,ij->i", a[i], a[j])


def cosine_kde(
    samples: np.ndarray, grid: np.ndarray | None = None, bandwidth: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian KDE of cosine samples on a grid over [−1, 1] (app. D.2).

    Bandwidth: Scott's rule (``σ̂ · n^(-1/5)``, as ``scipy.stats.gaussian_kde``) unless given.
    Evaluated by linear binning on a fine grid and an FFT convolution with the Gaussian,
    O(n + G log G) instead of O(n · G); the binning error is far below the bandwidth.
    """
    grid = np.linspace(-1.0, 1.0, KDE_GRID) if grid is None else np.asarray(grid, dtype=np.float64)
    x = np.asarray(samples, dtype=np.float64)
    if bandwidth is None:
        bandwidth = float(x.std(ddof=1)) * len(x) ** (-0.2) if len(x) > 1 else 0.0
    bandwidth = max(bandwidth, float(grid[1] - grid[0]))  # a spike still gets a resolvable density
    lo, hi = min(grid[0], x.min()) - 4 * bandwidth, max(grid[-1], x.max()) + 4 * bandwidth
    bins = 4096
    step = (hi - lo) / (bins - 1)
    pos = (x - lo) / step
    left = np.clip(np.floor(pos).astype(np.int64), 0, bins - 2)
    frac = pos - left
    counts = np.bincount(left, 1.0 - frac, minlength=bins) + np.bincount(left + 1, frac, minlength=bins)
    offsets = np.arange(-bins + 1, bins) * step
    kernel = np.exp(-0.5 * (offsets / bandwidth) ** 2) / (bandwidth * np.sqrt(2 * np.pi))
    size = 1 << int(np.ceil(np.log2(len(counts) + len(kernel) - 1)))
    full = np.fft.irfft(np.fft.rfft(counts, size) * np.fft.rfft(kernel, size), size)
    density = full[bins - 1 : 2 * bins - 1] / len(x)  # the "valid" part: kernel centred on each bin
    return grid, np.interp(grid, lo + step * np.arange(bins), np.clip(density, 0.0, None))


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen–Shannon divergence (natural log, in [0, ln 2]) of two densities on one grid."""
    from scipy.spatial.distance import jensenshannon

    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    q = np.clip(np.asarray(q, dtype=np.float64), 0.0, None)
    if p.sum() <= 0 or q.sum() <= 0:
        raise ValueError("densities must have positive mass")
    return float(jensenshannon(p / p.sum(), q / q.sum()) ** 2)


def cosine_js(
    text: Any, image: Any, num_pairs: int = DEFAULT_COSINE_PAIRS, seed: int = 0, normalize: bool = True
) -> dict[str, Any]:
    """JS divergence between the KDEs of within-modality pairwise cosines (app. D.2, Fig. 5b).

    Returns ``js`` plus the grid and both densities (for plotting) and the pair count.
    """
    cos_t = pairwise_cosines(text, num_pairs, seed, normalize)
    cos_i = pairwise_cosines(image, num_pairs, seed + 1, normalize)
    grid, dens_t = cosine_kde(cos_t)
    _, dens_i = cosine_kde(cos_i, grid)
    return {
        "js": js_divergence(dens_t, dens_i),
        "mean_cosine_text": float(cos_t.mean()),
        "mean_cosine_image": float(cos_i.mean()),
        "num_pairs": int(num_pairs),
        "grid": grid,
        "density_text": dens_t,
        "density_image": dens_i,
    }


# --- neighbourhoods -----------------------------------------------------------------------
def knn_indices(x: Any, k: int, normalize: bool = True, batch: int = _BATCH) -> np.ndarray:
    """Indices ``[n, k]`` of each row's k most cosine-similar other rows (self excluded).

    Batched float32 matmul: memory O(batch · n), never O(n²).
    """
    a = torch.from_numpy(unit_rows(x, np.float32) if normalize else to_numpy(x, np.float32))
    n = a.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} needs 1 ≤ k < number of rows ({n})")
    out = np.empty((n, k), dtype=np.int64)
    with torch.no_grad():
        for lo in range(0, n, batch):
            sims = a[lo : lo + batch] @ a.T
            rows = torch.arange(lo, min(lo + batch, n))
            sims[rows - lo, rows] = -math.inf
            out[lo : lo + batch] = torch.topk(sims, k, dim=1).indices.numpy()
    return out


def knn_mixing_rate(
    text: Any, image: Any, k: int = 20, max_points: int = DEFAULT_MAX_POINTS, seed: int = 0, normalize: bool = True
) -> dict[str, Any]:
    """k-NN mixing rate (app. D.3, k = 20): the mean fraction of a point's k nearest
    neighbours (cosine, in the pooled set, self excluded) that come from the other modality.

    Both sides are subsampled (seeded) to the same size ``n ≤ max_points / 2`` so the rate is
    comparable across methods; perfect mixing gives ``n / (2n − 1) ≈ 0.5`` (``ideal``),
    separated clouds give 0. ``text``/``image`` are the per-side rates.
    """
    a = unit_rows(text) if normalize else to_numpy(text)
    b = unit_rows(image) if normalize else to_numpy(image)
    n = min(len(a), len(b), max(max_points // 2, 1))
    a = a[subsample_rows(len(a), n, seed)]
    b = b[subsample_rows(len(b), n, seed + 1)]
    pooled = np.concatenate([a, b])
    labels = np.repeat([0, 1], n)
    neighbours = knn_indices(pooled, k, normalize=False)
    other = labels[neighbours] != labels[:, None]
    per_point = other.mean(1)
    return {
        "rate": float(per_point.mean()),
        "text": float(per_point[:n].mean()),
        "image": float(per_point[n:].mean()),
        "ideal": n / (2 * n - 1),
        "k": int(k),
        "n_per_side": int(n),
    }


def knn_overlap(
    before: Any,
    after: Any,
    k: int = 10,
    max_points: int = DEFAULT_MAX_POINTS,
    seed: int = 0,
    before_neighbours: np.ndarray | None = None,
) -> dict[str, Any]:
    """Mean k-NN neighbourhood overlap ``|N_k(before) ∩ N_k(after)| / k`` of the same rows
    before and after a map (app. F.4, k = 10, semantic preservation). 1 = all neighbourhoods kept.

    ``before_neighbours``: the result of ``knn_indices(before[rows], k)`` for the same seeded
    subsample, to reuse it across several maps of the same rows.
    """
    a, b = to_numpy(before), to_numpy(after)
    if len(a) != len(b):
        raise BadInputError(f"knn_overlap needs the same rows before and after ({len(a)} vs {len(b)})")
    rows = subsample_rows(len(a), max_points, seed)
    na = knn_indices(a[rows], k) if before_neighbours is None else before_neighbours
    nb = knn_indices(b[rows], k)
    shared = int((na[:, :, None] == nb[:, None, :]).any(-1).sum())  # rows have distinct indices
    return {"overlap": float(shared / (k * len(rows))), "k": int(k), "n": int(len(rows))}


# --- distribution test --------------------------------------------------------------------
def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.clip(d, 0.0, None)


def mmd_rbf(
    text: Any,
    image: Any,
    max_points: int = 2000,
    seed: int = 0,
    bandwidth: float | None = None,
    permutations: int = 0,
    normalize: bool = True,
) -> dict[str, Any]:
    """Unbiased MMD² with an RBF kernel ``exp(−‖x−y‖²/(2σ²))``, σ by the median heuristic.

    An extra two-sample test beside the paper's metrics. Each side is subsampled (seeded) to
    at most ``max_points / 2`` rows, so the kernel matrix is bounded. ``permutations > 0``
    adds a permutation p-value. Identical distributions give MMD² ≈ 0 (it may be slightly
    negative: the estimator is unbiased).
    """
    a = unit_rows(text) if normalize else to_numpy(text)
    b = unit_rows(image) if normalize else to_numpy(image)
    half = max(max_points // 2, 2)
    a = a[subsample_rows(len(a), half, seed)]
    b = b[subsample_rows(len(b), half, seed + 1)]
    n, m = len(a), len(b)
    if n < 2 or m < 2:
        raise ValueError("MMD needs at least two rows per side")
    pooled = np.concatenate([a, b])
    d2 = _sq_dists(pooled, pooled)
    if bandwidth is None:
        upper = d2[np.triu_indices(len(pooled), 1)]
        bandwidth = float(np.sqrt(np.median(upper))) or 1.0
    kernel = np.exp(-d2 / (2.0 * bandwidth**2))
    del d2
    ind = np.zeros((n + m, 1))
    ind[:n] = 1.0

    def statistic(indicators: np.ndarray) -> np.ndarray:
        x, y = indicators, 1.0 - indicators
        kx = kernel @ x
        sxx = (x * kx).sum(0) - n  # diagonal of an RBF kernel is 1
        syy = (y * (kernel @ y)).sum(0) - m
        sxy = (y * kx).sum(0)
        return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2.0 * sxy / (n * m)

    mmd2 = float(statistic(ind)[0])
    result: dict[str, Any] = {
        "mmd2": mmd2,
        "mmd": math.sqrt(max(mmd2, 0.0)),
        "bandwidth": float(bandwidth),
        "n_per_side": [int(n), int(m)],
    }
    if permutations > 0:
        rng = np.random.default_rng(seed + 2)
        perms = np.zeros((n + m, permutations))
        for p in range(permutations):
            perms[rng.permutation(n + m)[:n], p] = 1.0
        null = statistic(perms)
        result["p_value"] = float((1 + np.sum(null >= mmd2)) / (1 + permutations))
        result["permutations"] = int(permutations)
    return result

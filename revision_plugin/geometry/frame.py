"""Fixed-frame decomposition of the modality gap (sec. 3, app. B, C).

For paired unit embeddings ``e_x`` (image, the target) and ``e_y`` (text, the source) of the
same samples, the paired difference ``Δ = e_x − e_y`` is split in the fixed reference frame
``R^d = U ⊕ V`` (U = top-r eigenvectors of Cov(e_x) + Cov(e_y) by an energy threshold, eq. 1–3;
built by ``revision_plugin.align.frame.reference_frame``) into

* PMB ``β = P_U E[Δ]`` and COB ``γ = P_V E[Δ]`` (eq. 4–5),
* zero-mean residuals ``δ = P_U(Δ − E[Δ])`` and ``ζ = P_V(Δ − E[Δ])`` (eq. 6–7),

and characterised by condition numbers κ(Σ_U), κ(Σ_V) (Σ_V's shape by Tyler's M-estimator,
eq. 45), the angle between γ and Σ_V's principal direction (Fig. 2d), the gradient leakage
ratio ‖P_V g‖/‖g‖ against sin θ(U_t, U) (eq. 10–11), the ridge coupling map L: U → V
(eq. 50) and a phantom-drift demonstration (eq. 39). Coordinates of δ and ζ are taken in the
frame's orthonormal bases, so Σ_U is ``r × r`` and Σ_V is ``(d−r) × (d−r)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from revision_plugin.align.frame import DEFAULT_ENERGY, ReferenceFrame, reference_frame
from revision_plugin.errors import BadInputError
from revision_plugin.geometry.metrics import covariance, subsample_rows, unit_rows

__all__ = [
    "Decomposition",
    "build_frame",
    "decompose",
    "condition_number",
    "tyler_shape",
    "angle_to_principal",
    "leakage_ratio",
    "sin_theta",
    "infonce_embedding_gradients",
    "ridge_coupling",
    "phantom_drift",
    "frame_analysis",
]


# --- frame ---------------------------------------------------------------------------------
def build_frame(image: Any, text: Any, energy: float = DEFAULT_ENERGY) -> ReferenceFrame:
    """Reference frame from ``Cov(e_x) + Cov(e_y)`` of unit rows (eq. 1–3) and an energy threshold."""
    return reference_frame(covariance(image) + covariance(text), energy)


def _bases(frame: ReferenceFrame) -> tuple[np.ndarray, np.ndarray]:
    return frame.basis_u.double().numpy(), frame.basis_v.double().numpy()


@dataclass
class Decomposition:
    """``Δ = β + δ + γ + ζ`` (eq. 8) of paired differences in a fixed frame."""

    beta: np.ndarray  # [d], in U
    gamma: np.ndarray  # [d], in V
    delta: np.ndarray  # [n, r]   coordinates of δ in the U basis
    zeta: np.ndarray  # [n, d-r] coordinates of ζ in the V basis
    basis_u: np.ndarray
    basis_v: np.ndarray

    @property
    def gamma_coords(self) -> np.ndarray:
        return self.basis_v.T @ self.gamma


def decompose(image: Any, text: Any, frame: ReferenceFrame, normalize: bool = True) -> Decomposition:
    """PMB β, COB γ and residuals δ, ζ of ``Δ = e_x − e_y`` for paired rows (eq. 4–8)."""
    x = unit_rows(image) if normalize else np.asarray(image, dtype=np.float64)
    y = unit_rows(text) if normalize else np.asarray(text, dtype=np.float64)
    if x.shape != y.shape:
        raise BadInputError(f"paired decomposition needs equal shapes, got image {x.shape} and text {y.shape}")
    bu, bv = _bases(frame)
    if bu.shape[0] != x.shape[1]:
        raise BadInputError(f"frame dim {bu.shape[0]} != embedding dim {x.shape[1]}")
    diff = x - y
    mean = diff.mean(0)
    centred = diff - mean
    return Decomposition(
        beta=bu @ (bu.T @ mean),
        gamma=bv @ (bv.T @ mean),
        delta=centred @ bu,
        zeta=centred @ bv,
        basis_u=bu,
        basis_v=bv,
    )


# --- shape statistics ----------------------------------------------------------------------
def condition_number(matrix: np.ndarray, rel_floor: float = 1e-12) -> float:
    """κ = λ_max / λ_min of a symmetric PSD matrix; ``inf`` when λ_min ≤ rel_floor · λ_max."""
    lam = np.linalg.eigvalsh((np.asarray(matrix) + np.asarray(matrix).T) / 2)
    top, bottom = float(lam[-1]), float(lam[0])
    if top <= 0:
        return math.inf
    return math.inf if bottom <= rel_floor * top else top / bottom


def tyler_shape(
    samples: Any, max_iter: int = 500, tol: float = 1e-7, shrinkage: float = 0.0
) -> tuple[np.ndarray, dict[str, Any]]:
    """Tyler's M-estimator of scatter (app. B.6, eq. 45): the fixed point of

        Σ ← (p/n) Σ_i v_i v_iᵀ / (v_iᵀ Σ⁻¹ v_i),   tr Σ = p,

    i.e. the MLE of the angular central Gaussian; robust to the radial law of an elliptical
    distribution, so it recovers the *shape* of the scatter up to scale. ``samples`` are
    (zero-mean) rows ``[n, p]``; zero rows are ignored. ``shrinkage = ρ > 0`` uses the
    regularised fixed point ``(1−ρ)·(…) + ρ·I`` (needed when n ≤ p). Returns the shape
    (trace p) and ``{"iterations", "converged", "shrinkage"}``.
    """
    v = np.asarray(samples.detach().cpu().numpy() if torch.is_tensor(samples) else samples, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1)
    v = v[norms > 1e-300]
    n, p = v.shape
    if not 0.0 <= shrinkage < 1.0:
        raise ValueError(f"shrinkage must be in [0, 1), got {shrinkage}")
    if n <= p and shrinkage == 0.0:
        raise ValueError(f"Tyler's estimator needs more samples than dimensions (n={n}, p={p}); pass shrinkage > 0")
    v = v / np.linalg.norm(v, axis=1, keepdims=True)  # scale-free: only directions matter
    shape = np.eye(p)
    converged, iteration = False, 0
    for iteration in range(1, max_iter + 1):  # noqa: B007  (reported after the loop)
        chol = np.linalg.cholesky(shape)
        w = np.linalg.solve(chol, v.T)  # L⁻¹ vᵢ; vᵢᵀ Σ⁻¹ vᵢ = ‖L⁻¹ vᵢ‖²
        quad = np.einsum("ij,ij->j", w, w)
        new = (v / quad[:, None]).T @ v * (p / n)
        if shrinkage:
            new = (1.0 - shrinkage) * new + shrinkage * np.eye(p)
        new = new * (p / np.trace(new))
        new = (new + new.T) / 2
        change = np.linalg.norm(new - shape) / np.linalg.norm(shape)
        shape = new
        if change < tol:
            converged = True
            break
    return shape, {"iterations": iteration, "converged": converged, "shrinkage": float(shrinkage)}


def angle_to_principal(vector: np.ndarray, matrix: np.ndarray) -> float:
    """Angle in degrees (0–90, sign-free) between ``vector`` and the top eigenvector of ``matrix`` (Fig. 2d)."""
    vector = np.asarray(vector, dtype=np.float64)
    norm = np.linalg.norm(vector)
    if norm <= 0:
        return math.nan
    _, vecs = np.linalg.eigh(matrix)
    cos = abs(float(vecs[:, -1] @ vector)) / norm
    return math.degrees(math.acos(min(cos, 1.0)))


# --- leakage ------------------------------------------------------------------------------
def leakage_ratio(gradients: Any, frame: ReferenceFrame) -> dict[str, float]:
    """Reference leakage ``‖P_V g‖ / ‖g‖`` (eq. 10) of gradient rows, per sample summarised
    (mean, median, max) and aggregated (``‖P_V G‖_F / ‖G‖_F``)."""
    g = np.asarray(gradients.detach().cpu().numpy() if torch.is_tensor(gradients) else gradients, dtype=np.float64)
    _, bv = _bases(frame)
    norms = np.linalg.norm(g, axis=1)
    keep = norms > 0
    if not keep.any():
        raise ValueError("all gradient rows are zero")
    pv = np.linalg.norm(g[keep] @ bv, axis=1)
    ratios = pv / norms[keep]
    return {
        "mean": float(ratios.mean()),
        "median": float(np.median(ratios)),
        "max": float(ratios.max()),
        "aggregate": float(np.linalg.norm(pv) / np.linalg.norm(norms[keep])),
        "n": int(keep.sum()),
    }


def sin_theta(basis_t: Any, frame_or_basis: ReferenceFrame | Any, rms: bool = False) -> float:
    """``sin θ(U_t, U) = ‖P_V P_{U_t}‖₂`` (eq. 11, Lemma B.3): the sine of the largest principal
    angle from span(``basis_t``) to the reference U (bases: orthonormal columns ``[d, r]``).
    ``rms``: the root-mean-square sine over all principal angles instead (``‖P_V P_{U_t}‖_F/√r_t``),
    less sensitive to one near-degenerate direction at the energy cut-off."""
    ut = np.asarray(basis_t.double().numpy() if torch.is_tensor(basis_t) else basis_t, dtype=np.float64)
    if isinstance(frame_or_basis, ReferenceFrame):
        u = frame_or_basis.basis_u.double().numpy()
    else:
        u = np.asarray(frame_or_basis.double().numpy() if torch.is_tensor(frame_or_basis) else frame_or_basis, dtype=np.float64)
    residual = ut - u @ (u.T @ ut)
    if rms:
        return float(min(np.linalg.norm(residual) / math.sqrt(max(ut.shape[1], 1)), 1.0))
    return float(min(np.linalg.norm(residual, 2), 1.0))


def infonce_embedding_gradients(
    image: Any, text: Any, temperature: float = 0.07, batch_size: int = 256, max_batches: int = 8, seed: int = 0
) -> np.ndarray:
    """Embedding-level gradients of the symmetric InfoNCE loss (eq. 30–33, app. B.1) on random
    minibatches of the pairs: rows ``∂L/∂e_x,i`` and ``∂L/∂e_y,j``. By Lemma B.1 they lie in the
    span of the batch's embeddings — the "probe gradients" of eq. 10."""
    x = torch.from_numpy(unit_rows(image))
    y = torch.from_numpy(unit_rows(text))
    n = len(x)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    batch_size = min(batch_size, n)
    grads = []
    for b in range(min(max_batches, max(n // batch_size, 1))):
        idx = torch.from_numpy(order[b * batch_size : (b + 1) * batch_size])
        ex = x[idx].clone().requires_grad_(True)
        ey = y[idx].clone().requires_grad_(True)
        logits = ex @ ey.T / temperature
        labels = torch.arange(len(idx))
        loss = (torch.nn.functional.cross_entropy(logits, labels) + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        gx, gy = torch.autograd.grad(loss, (ex, ey))
        grads.extend([gx.numpy(), gy.numpy()])
    return np.concatenate(grads)


# --- coupling -----------------------------------------------------------------------------
def ridge_coupling(delta: np.ndarray, zeta: np.ndarray, ridge: float = 1e-3) -> dict[str, Any]:
    """Ridge estimate of the coupling map L: U → V (app. C.2, eq. 50):

        L̂_λ = Z Dᵀ (D Dᵀ + λ I_r)⁻¹,   D = [δ_i] ∈ R^{r×n},  Z = [ζ_i] ∈ R^{(d−r)×n},

    with ``λ = ridge · tr(D Dᵀ) / r`` (scale-free). Returns L̂ (``[d−r, r]``), its spectral
    norm and ``R²_{ζ←δ} = 1 − ‖Z − L̂D‖²_F / ‖Z‖²_F``.
    """
    d_mat = np.asarray(delta, dtype=np.float64).T
    z_mat = np.asarray(zeta, dtype=np.float64).T
    if d_mat.shape[1] != z_mat.shape[1]:
        raise BadInputError(f"δ and ζ need the same number of samples ({d_mat.shape[1]} vs {z_mat.shape[1]})")
    gram = d_mat @ d_mat.T
    r = gram.shape[0]
    lam = ridge * float(np.trace(gram)) / max(r, 1)
    coupling = np.linalg.solve(gram + lam * np.eye(r), d_mat @ z_mat.T).T  # (DDᵀ+λI)⁻¹ symmetric
    total = float(np.sum(z_mat**2))
    r2 = 1.0 - float(np.sum((z_mat - coupling @ d_mat) ** 2)) / total if total > 0 else math.nan
    return {"L": coupling, "norm": float(np.linalg.norm(coupling, 2)), "r2": r2, "lambda": lam}


# --- phantom drift ------------------------------------------------------------------------
def phantom_drift(zeta: np.ndarray, bias: np.ndarray) -> dict[str, float]:
    """Phantom drift (app. B.4, eq. 39): for ``z = m + ζ`` with centrally symmetric noise ζ,

        E[(m+ζ)/‖m+ζ‖] ≈ A m,   A = E[(I − ζζᵀ/‖ζ‖²) / ‖ζ‖].

    Isotropic ζ makes A a multiple of I (no rotation of m); anisotropic ζ rotates the mean
    direction. Uses antithetic samples ±ζ so E[ζ/‖ζ‖] = 0 holds exactly. Returns the angle
    (degrees) between m and the empirical projected mean, between m and A m, the relative
    error of the first-order prediction, and κ(A).
    """
    z = np.asarray(zeta, dtype=np.float64)
    m = np.asarray(bias, dtype=np.float64)
    z = z[np.linalg.norm(z, axis=1) > 1e-300]
    z = np.concatenate([z, -z])
    shifted = z + m
    empirical = (shifted / np.linalg.norm(shifted, axis=1, keepdims=True)).mean(0)
    norms = np.linalg.norm(z, axis=1)
    p = z.shape[1]
    a_mat = np.eye(p) * np.mean(1.0 / norms) - (z / norms[:, None] ** 3).T @ z / len(z)
    predicted = a_mat @ m

    def angle(u: np.ndarray, v: np.ndarray) -> float:
        c = float(u @ v) / (np.linalg.norm(u) * np.linalg.norm(v))
        return math.degrees(math.acos(max(-1.0, min(1.0, c))))

    return {
        "bias_norm": float(np.linalg.norm(m)),
        "noise_rms_norm": float(np.sqrt(np.mean(norms**2))),
        "angle_empirical_deg": angle(m, empirical),
        "angle_predicted_deg": angle(m, predicted),
        "prediction_rel_error": float(np.linalg.norm(empirical - predicted) / np.linalg.norm(empirical)),
        "kappa_A": condition_number(a_mat),
    }


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# --- everything for one set of pairs ---------------------------------------------------------
def frame_analysis(
    image: Any,
    text: Any,
    frame: ReferenceFrame | None = None,
    energy: float = DEFAULT_ENERGY,
    max_points: int = 4000,
    seed: int = 0,
    ridge: float = 1e-3,
    gradients: bool = True,
    temperature: float = 0.07,
    normalize: bool = True,
) -> dict[str, Any]:
    """All sec. 3 / app. B–C statistics for paired ``image`` (e_x) and ``text`` (e_y) rows.

    ``frame``: the fixed reference frame (built from these pairs when ``None``). Tyler's
    estimator and the coupling regression use a seeded subsample of ≤ ``max_points`` pairs.
    With ``gradients``, InfoNCE probe gradients (``temperature``) give the leakage ratio and
    a split-half frame gives ``sin θ(U_t, U)``; the phantom-drift check uses m = γ and the
    measured ζ. Non-finite numbers (e.g. κ of a singular matrix) are reported as ``None``.
    """
    x = unit_rows(image) if normalize else np.asarray(image, dtype=np.float64)
    y = unit_rows(text) if normalize else np.asarray(text, dtype=np.float64)
    if x.shape != y.shape:
        raise BadInputError(f"pairs need equal shapes, got image {x.shape} and text {y.shape}")
    n, d = x.shape
    own_frame = frame is None
    if own_frame:
        frame = build_frame(x, y, energy)
    dec = decompose(x, y, frame, normalize=False)
    r = dec.delta.shape[1]
    rows = subsample_rows(n, max_points, seed)
    sigma_u = np.cov(dec.delta, rowvar=False).reshape(r, r)
    sigma_v = np.cov(dec.zeta, rowvar=False).reshape(d - r, d - r)
    p = d - r
    sub = dec.zeta[rows]
    shrink = 0.0 if len(sub) > 2 * p else 0.1
    shape_v, tyler_info = tyler_shape(sub, shrinkage=shrink)
    coupling = ridge_coupling(dec.delta[rows], dec.zeta[rows], ridge)
    result: dict[str, Any] = {
        "n_pairs": int(n),
        "rank_u": int(r),
        "dim_v": int(p),
        "energy": float(energy) if own_frame else None,
        "beta_norm": float(np.linalg.norm(dec.beta)),
        "gamma_norm": float(np.linalg.norm(dec.gamma)),
        "mean_gap_norm": float(np.linalg.norm(dec.beta + dec.gamma)),
        "trace_u": float(np.trace(sigma_u)),
        "trace_v": float(np.trace(sigma_v)),
        "kappa_u": _finite(condition_number(sigma_u)),
        "kappa_v_sample": _finite(condition_number(sigma_v)),
        "kappa_v_tyler": _finite(condition_number(shape_v)),
        "tyler": {**tyler_info, "n": int(len(sub))},
        "gamma_principal_angle_deg": _finite(angle_to_principal(dec.gamma_coords, shape_v)),
        "coupling_norm": coupling["norm"],
        "coupling_r2": coupling["r2"],
        "coupling_lambda": coupling["lambda"],
        "subsample": {"n": int(len(rows)), "seed": int(seed)},
    }
    if gradients:
        grads = infonce_embedding_gradients(x, y, temperature=temperature, seed=seed)
        half = np.random.default_rng(seed + 3).permutation(n)
        first, second = half[: n // 2], half[n // 2 :]
        frame_a = build_frame(x[first], y[first], energy if own_frame else _energy_of(frame))
        frame_b = build_frame(x[second], y[second], energy if own_frame else _energy_of(frame))
        result["leakage"] = {**leakage_ratio(grads, frame), "temperature": float(temperature)}
        result["sin_theta_split_half"] = sin_theta(frame_a.basis_u, frame_b)
        result["sin_theta_split_half_rms"] = sin_theta(frame_a.basis_u, frame_b, rms=True)
        result["sin_theta_half_vs_frame"] = sin_theta(frame_a.basis_u, frame)
        gamma_norm = float(np.linalg.norm(dec.gamma_coords))
        if gamma_norm > 0 and p >= 2:
            # as measured (m = γ), and in eq. 39's regime ‖m‖ ≪ ‖ζ‖ (γ's direction, 0.1 × RMS ‖ζ‖)
            result["phantom_drift"] = phantom_drift(sub, dec.gamma_coords)
            small = dec.gamma_coords / gamma_norm * 0.1 * float(np.sqrt(np.mean(np.sum(sub**2, 1))))
            result["phantom_drift_small_bias"] = phantom_drift(sub, small)
    return result


def _energy_of(frame: ReferenceFrame) -> float:
    lam = frame.eigenvalues.clamp(min=0)
    return float(lam[: frame.rank].sum() / lam.sum())

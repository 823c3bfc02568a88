"""Known-answer tests of revision_plugin.geometry.frame (sec. 3, app. B, C)."""

import math

import numpy as np
import pytest
import torch

from revision_plugin.align.frame import ReferenceFrame
from revision_plugin.geometry import frame as gf


@pytest.fixture(autouse=True)
def _one_blas_thread():
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _axis_frame(d, r):
    eye = torch.eye(d, dtype=torch.float64)
    return ReferenceFrame(eye[:, :r], eye[:, r:], torch.arange(d, 0, -1, dtype=torch.float64))


def _spd(rng, p, kappa):
    q, _ = np.linalg.qr(rng.normal(size=(p, p)))
    return (q * np.geomspace(kappa, 1.0, p)) @ q.T


# --- frame and decomposition -------------------------------------------------------------------
def test_frame_is_the_shared_reference_frame():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 10)) * np.r_[3, 2, 1, 0.1 * np.ones(7)]
    y = rng.normal(size=(3000, 10)) * np.r_[3, 2, 1, 0.1 * np.ones(7)]
    fr = gf.build_frame(x, y, energy=0.9)
    assert fr.rank == 3
    assert gf.sin_theta(fr.basis_u, np.eye(10)[:, :3]) < 0.1


def test_decomposition_recovers_planted_biases_and_is_exact():
    rng = np.random.default_rng(1)
    d, r, n = 12, 4, 2000
    fr = _axis_frame(d, r)
    beta = np.r_[0.3, -0.2, 0, 0, np.zeros(d - r)]
    gamma = np.r_[np.zeros(r), 0.1, 0, -0.05, np.zeros(d - r - 3)]
    y = rng.normal(size=(n, d))
    noise = rng.normal(size=(n, d)) * 0.01
    noise -= noise.mean(0)
    x = y + beta + gamma + noise
    dec = gf.decompose(x, y, fr, normalize=False)
    assert np.allclose(dec.beta, beta) and np.allclose(dec.gamma, gamma)
    assert np.allclose(dec.delta.mean(0), 0) and np.allclose(dec.zeta.mean(0), 0)
    rebuilt = dec.beta + dec.gamma + dec.delta @ dec.basis_u.T + dec.zeta @ dec.basis_v.T  # eq. 8
    assert np.allclose(rebuilt, x - y)


# --- condition numbers and Tyler ---------------------------------------------------------------
def test_condition_number():
    assert gf.condition_number(np.diag([1.0, 10.0, 100.0])) == pytest.approx(100.0)
    assert gf.condition_number(np.diag([1.0, 0.0])) == math.inf
    iso = np.cov(np.random.default_rng(2).normal(size=(40_000, 8)), rowvar=False)
    assert gf.condition_number(iso) < 1.15  # isotropic Gaussian: κ ≈ 1


def test_tyler_recovers_planted_shape_under_heavy_tails():
    rng = np.random.default_rng(3)
    p, n = 8, 20_000
    shape = _spd(rng, p, 30.0)
    shape *= p / np.trace(shape)
    gauss = rng.multivariate_normal(np.zeros(p), shape, size=n)
    radial = 1.0 / np.abs(rng.standard_cauchy(size=(n, 1)))  # wildly heavy-tailed radius
    est, info = gf.tyler_shape(gauss * radial)
    assert info["converged"]
    assert np.trace(est) == pytest.approx(p)
    assert np.linalg.norm(est - shape) / np.linalg.norm(shape) < 0.05
    assert gf.condition_number(est) == pytest.approx(30.0, rel=0.15)
    # scale-free: any positive scaling of samples gives the same estimate
    again, _ = gf.tyler_shape(gauss * radial * 1e3)
    assert np.allclose(again, est, atol=1e-6)


def test_tyler_isotropic_and_small_n():
    rng = np.random.default_rng(4)
    est, _ = gf.tyler_shape(rng.normal(size=(20_000, 6)))
    assert gf.condition_number(est) < 1.15
    with pytest.raises(ValueError, match="shrinkage"):
        gf.tyler_shape(rng.normal(size=(5, 10)))
    reg, info = gf.tyler_shape(rng.normal(size=(5, 10)), shrinkage=0.5)
    assert np.isfinite(reg).all() and info["shrinkage"] == 0.5


def test_angle_to_principal():
    m = np.diag([5.0, 1.0, 0.5])
    assert gf.angle_to_principal(np.array([2.0, 0, 0]), m) == pytest.approx(0.0, abs=1e-6)
    assert gf.angle_to_principal(np.array([-2.0, 0, 0]), m) == pytest.approx(0.0, abs=1e-6)
    assert gf.angle_to_principal(np.array([0, 1.0, 1.0]), m) == pytest.approx(90.0)
    assert gf.angle_to_principal(np.array([1.0, 1.0, 0]), m) == pytest.approx(45.0)


# --- leakage and subspace angles ---------------------------------------------------------------
def test_leakage_ratio_known_angles():
    fr = _axis_frame(6, 2)
    theta = 0.3
    g = np.array([[math.cos(theta), 0, math.sin(theta), 0, 0, 0], [1.0, 1.0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 2.0]])
    res = gf.leakage_ratio(g, fr)
    assert res["max"] == pytest.approx(1.0)
    assert res["median"] == pytest.approx(math.sin(theta))
    assert res["mean"] == pytest.approx((math.sin(theta) + 0 + 1) / 3)


def test_sin_theta_of_a_rotated_subspace():
    d, theta = 7, 0.4
    u = np.eye(d)[:, :3]
    ut = u.copy()
    ut[:, 0] = math.cos(theta) * np.eye(d)[:, 0] + math.sin(theta) * np.eye(d)[:, 5]
    assert gf.sin_theta(ut, u) == pytest.approx(math.sin(theta))
    assert gf.sin_theta(ut, _axis_frame(d, 3)) == pytest.approx(math.sin(theta))
    assert gf.sin_theta(ut, u, rms=True) == pytest.approx(math.sin(theta) / math.sqrt(3))
    assert gf.sin_theta(u, u) == pytest.approx(0.0, abs=1e-12)


def test_infonce_gradients_lie_in_the_contrastive_span():
    """Lemma B.1 / eq. 9: with all embeddings in a 4-dim subspace, no gradient leaks out of it."""
    rng = np.random.default_rng(5)
    d, k = 16, 4
    basis = np.linalg.qr(rng.normal(size=(d, k)))[0]
    x = rng.normal(size=(512, k)) @ basis.T
    y = (rng.normal(size=(512, k)) + 0.5 * (x @ basis)) @ basis.T
    grads = gf.infonce_embedding_gradients(x, y, temperature=0.1, batch_size=128, max_batches=3)
    assert grads.shape == (2 * 3 * 128, d)
    comp = np.linalg.svd(np.eye(d) - basis @ basis.T)[0][:, : d - k]
    frame = ReferenceFrame(torch.from_numpy(basis), torch.from_numpy(comp), torch.ones(d, dtype=torch.float64))
    assert gf.leakage_ratio(grads, frame)["max"] < 1e-10
    assert np.linalg.norm(grads) > 0


# --- coupling and phantom drift ----------------------------------------------------------------
def test_ridge_coupling_recovers_planted_map():
    rng = np.random.default_rng(6)
    r, p, n = 5, 9, 20_000
    true = rng.normal(size=(p, r)) * 0.2
    delta = rng.normal(size=(n, r)) * np.r_[3, 2, 1, 1, 0.5]
    zeta0 = rng.normal(size=(n, p)) * 0.3
    zeta = zeta0 + delta @ true.T
    res = gf.ridge_coupling(delta, zeta, ridge=1e-6)
    assert np.linalg.norm(res["L"] - true) / np.linalg.norm(true) < 0.02
    assert res["norm"] == pytest.approx(np.linalg.norm(true, 2), rel=0.02)
    explained = np.sum((delta @ true.T) ** 2) / np.sum(zeta**2)
    assert res["r2"] == pytest.approx(explained, abs=0.01)
    none = gf.ridge_coupling(delta, zeta0)
    assert none["r2"] < 0.01 and none["norm"] < 0.05  # sampling noise only


def test_phantom_drift_isotropic_vs_anisotropic():
    rng = np.random.default_rng(7)
    p, n = 6, 200_000
    m = np.ones(p) * 0.02
    iso = gf.phantom_drift(rng.normal(size=(n, p)), m)
    assert iso["angle_empirical_deg"] < 1.0 and iso["kappa_A"] < 1.05
    scales = np.sqrt(np.geomspace(100.0, 1.0, p))
    aniso = gf.phantom_drift(rng.normal(size=(n, p)) * scales, m)
    assert aniso["angle_empirical_deg"] > 5.0  # A rotates the mean direction (eq. 39)
    assert aniso["angle_predicted_deg"] == pytest.approx(aniso["angle_empirical_deg"], abs=1.0)
    assert aniso["prediction_rel_error"] < 0.05


def test_frame_analysis_on_paired_data_runs_and_is_finite():
    rng = np.random.default_rng(8)
    d, n = 16, 3000
    lat = rng.normal(size=(n, d)) * np.geomspace(1.0, 0.05, d)
    y = lat + 0.02 * rng.normal(size=(n, d)) + np.r_[1.0, np.zeros(d - 1)]
    x = lat + 0.02 * rng.normal(size=(n, d)) + np.r_[0.6, 0.6, np.zeros(d - 2)]
    res = gf.frame_analysis(x, y, energy=0.9, max_points=1500, seed=0)
    for key in ("beta_norm", "gamma_norm", "kappa_u", "kappa_v_tyler", "coupling_norm", "coupling_r2",
                "gamma_principal_angle_deg", "sin_theta_split_half"):
        assert res[key] is not None and math.isfinite(res[key]), key
    assert res["rank_u"] + res["dim_v"] == d
    assert res["kappa_u"] >= 1 and res["tyler"]["n"] == 1500
    assert 0 <= res["leakage"]["mean"] <= 1
    assert "phantom_drift" in res
    assert res["mean_gap_norm"] == pytest.approx(np.linalg.norm(gf.unit_rows(x).mean(0) - gf.unit_rows(y).mean(0)))

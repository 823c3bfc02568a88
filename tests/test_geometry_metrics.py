"""Known-answer tests of revision_plugin.geometry.metrics (gap, spectrum, α, JS, kNN, MMD)."""

import math

import numpy as np
import pytest
import torch

from revision_plugin.errors import BadInputError
from revision_plugin.geometry import metrics as gm


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # 2-core CI runs two xdist workers; multi-threaded BLAS on top of that thrashes.
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _symmetric_cloud(rng, n, d, centre_coef, axis=0):
    """Unit rows ``a·e_axis ± b·w`` (antithetic ±w ⟂ e_axis): the mean is exactly ``a·e_axis``."""
    w = rng.normal(size=(n, d))
    w[:, axis] = 0.0
    w = _unit(w)
    b = math.sqrt(1 - centre_coef**2)
    rows = np.concatenate([w, -w]) * b
    rows[:, axis] = centre_coef
    return rows


# --- gap ---------------------------------------------------------------------------------------
def test_gap_of_planted_centroids_is_exact():
    rng = np.random.default_rng(0)
    text = _symmetric_cloud(rng, 500, 16, 0.3)
    image = _symmetric_cloud(rng, 700, 16, -0.25)
    assert gm.modality_gap(text, image) == pytest.approx(0.55, abs=1e-12)
    # scaling rows does not change unit-vector gaps; torch input works too
    assert gm.modality_gap(torch.from_numpy(text * 7.0), image * 0.1) == pytest.approx(0.55, abs=1e-12)
    assert gm.modality_gap(text, text) == 0.0


def test_gap_refuses_bad_rows_and_mismatched_dims():
    x = np.ones((4, 3))
    bad = x.copy()
    bad[2] = 0.0
    with pytest.raises(BadInputError, match="row 2"):
        gm.modality_gap(bad, x)
    bad[2] = np.nan
    with pytest.raises(BadInputError, match="row 2"):
        gm.modality_gap(x, bad)
    with pytest.raises(BadInputError, match="dimension"):
        gm.modality_gap(x, np.ones((4, 5)))


def test_gap_sampling_floor_is_the_rms_gap_of_one_population():
    rng = np.random.default_rng(1)
    population = _unit(rng.normal(size=(200_000, 12)) + np.r_[2.0, np.zeros(11)])
    gaps, floors = [], []
    for _ in range(300):
        a = population[rng.choice(len(population), 150)]
        b = population[rng.choice(len(population), 250)]
        gaps.append(gm.modality_gap(a, b) ** 2)
        floors.append(gm.gap_sampling_floor(a, b) ** 2)
    assert np.mean(gaps) / np.mean(floors) == pytest.approx(1.0, abs=0.15)


# --- spectrum ----------------------------------------------------------------------------------
def test_isotropic_gaussian_has_flat_spectrum():
    x = np.random.default_rng(2).normal(size=(40_000, 24))
    lam = gm.spectrum(x, normalize=False)
    assert np.all(np.diff(lam) <= 0)
    assert abs(gm.power_law_alpha(lam)) < 0.06
    assert gm.effective_rank(lam) > 0.99 * 24


def test_planted_power_law_exponent_is_recovered():
    d, alpha = 48, 1.5
    k = np.arange(1, d + 1)
    x = np.random.default_rng(3).normal(size=(60_000, d)) * np.sqrt(k**-alpha)
    lam = gm.spectrum(x, normalize=False)
    assert gm.power_law_alpha(lam) == pytest.approx(alpha, abs=0.05)


def test_power_law_fit_exact_and_trace_normalisation_keeps_alpha():
    k = np.arange(1, 101)
    fit = gm.power_law_fit(3.0 * k**-1.2)
    assert fit["alpha"] == pytest.approx(1.2, abs=1e-12) and fit["r2"] == pytest.approx(1.0)
    assert fit["k_min"] == 1 and fit["k_max"] == 100
    # eigenvalues at round-off level are left out of the fit
    lam = np.r_[k[:10] ** -1.0, np.full(5, 1e-20)]
    assert gm.power_law_fit(lam)["k_max"] == 10 and gm.power_law_alpha(lam) == pytest.approx(1.0)

    x = np.random.default_rng(4).normal(size=(5000, 20)) * np.sqrt(np.arange(1, 21) ** -1.0)
    raw = gm.spectrum_summary(x)
    scaled = gm.spectrum_summary(x, target_trace=0.37)
    assert sum(scaled["eigenvalues"]) == pytest.approx(0.37)
    assert scaled["alpha"] == pytest.approx(raw["alpha"], abs=1e-12)
    assert scaled["trace"] == pytest.approx(raw["trace"])


def test_effective_rank_known_values():
    assert gm.effective_rank(np.array([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert gm.effective_rank(np.ones(37)) == pytest.approx(37.0)
    assert gm.effective_rank(np.array([1.0, 1.0, 0.0, 0.0])) == pytest.approx(2.0)


# --- angular topology --------------------------------------------------------------------------
def test_js_divergence_bounds():
    p = np.array([1.0, 0.0, 0.0])
    q = np.array([0.0, 0.0, 2.0])
    assert gm.js_divergence(p, q) == pytest.approx(math.log(2))
    assert gm.js_divergence(p, 3 * p) == pytest.approx(0.0, abs=1e-15)


def test_cosine_kde_matches_scipy_and_integrates_to_one():
    from scipy.stats import gaussian_kde

    samples = np.random.default_rng(5).normal(0.3, 0.2, 5000).clip(-1, 1)
    grid, dens = gm.cosine_kde(samples)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=2e-3)
    assert np.max(np.abs(dens - gaussian_kde(samples)(grid))) < 1e-3 * dens.max()


def test_identical_clouds_have_js_near_zero_and_different_ones_do_not():
    rng = np.random.default_rng(6)
    cloud = _unit(rng.normal(size=(3000, 16)) + np.r_[3.0, np.zeros(15)])
    other_sample = _unit(rng.normal(size=(3000, 16)) + np.r_[3.0, np.zeros(15)])
    isotropic = _unit(rng.normal(size=(3000, 16)))
    assert gm.cosine_js(cloud, cloud)["js"] < 1e-3
    assert gm.cosine_js(cloud, other_sample)["js"] < 2e-3
    assert gm.cosine_js(cloud, isotropic)["js"] > 0.1


def test_pairwise_cosines_never_pair_a_row_with_itself():
    x = _unit(np.random.default_rng(7).normal(size=(3, 50)))
    cos = gm.pairwise_cosines(x, num_pairs=5000, seed=0)
    assert cos.max() < 0.999


# --- neighbourhoods ----------------------------------------------------------------------------
def test_knn_indices_match_brute_force():
    x = _unit(np.random.default_rng(8).normal(size=(300, 8)))
    got = gm.knn_indices(x, 5, batch=64)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    expected = np.argsort(-sims, axis=1)[:, :5]
    assert np.array_equal(np.sort(got, 1), np.sort(expected, 1))


def test_mixing_rate_separated_vs_mixed():
    rng = np.random.default_rng(9)
    a = _unit(rng.normal(size=(1000, 8)) * 0.1 + np.r_[1.0, np.zeros(7)])
    b = _unit(rng.normal(size=(1000, 8)) * 0.1 - np.r_[1.0, np.zeros(7)])
    same = _unit(rng.normal(size=(1000, 8)) * 0.1 + np.r_[1.0, np.zeros(7)])
    assert gm.knn_mixing_rate(a, b)["rate"] == 0.0
    mixed = gm.knn_mixing_rate(a, same, k=20)
    assert mixed["ideal"] == pytest.approx(1000 / 1999)
    assert mixed["rate"] == pytest.approx(mixed["ideal"], abs=0.05)
    capped = gm.knn_mixing_rate(a, same, max_points=400)
    assert capped["n_per_side"] == 200


def test_knn_overlap_rotation_keeps_neighbourhoods_noise_destroys_them():
    rng = np.random.default_rng(10)
    x = _unit(rng.normal(size=(1500, 16)))
    q, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert gm.knn_overlap(x, x @ q)["overlap"] == pytest.approx(1.0)
    assert gm.knn_overlap(x, 3.0 * x)["overlap"] == pytest.approx(1.0)
    scrambled = gm.knn_overlap(x, rng.normal(size=x.shape))
    assert scrambled["overlap"] < 0.03  # chance level is k / n ≈ 0.007
    with pytest.raises(BadInputError):
        gm.knn_overlap(x, x[:10])


# --- MMD ---------------------------------------------------------------------------------------
def test_mmd_identical_vs_shifted():
    rng = np.random.default_rng(11)
    a = _unit(rng.normal(size=(600, 8)) + np.r_[2.0, np.zeros(7)])
    b = _unit(rng.normal(size=(600, 8)) + np.r_[2.0, np.zeros(7)])
    c = _unit(rng.normal(size=(600, 8)) + np.r_[0.0, 2.0, np.zeros(6)])
    same = gm.mmd_rbf(a, b, permutations=200)
    assert abs(same["mmd2"]) < 5e-3 and same["p_value"] > 0.01
    exact = gm.mmd_rbf(a, a)
    assert abs(exact["mmd2"]) < 5e-3
    diff = gm.mmd_rbf(a, c, permutations=200)
    assert diff["mmd2"] > 0.1 and diff["p_value"] == pytest.approx(1 / 201)
    assert diff["n_per_side"] == [600, 600] and diff["bandwidth"] > 0
    assert gm.mmd_rbf(a, c, max_points=100)["n_per_side"] == [50, 50]


def test_mmd_statistic_matches_direct_formula():
    rng = np.random.default_rng(12)
    a, b = rng.normal(size=(40, 3)), rng.normal(size=(30, 3)) + 0.5
    res = gm.mmd_rbf(a, b, normalize=False, bandwidth=1.3)

    def k(x, y):
        return np.exp(-((x[:, None] - y[None]) ** 2).sum(-1) / (2 * 1.3**2))

    kaa, kbb = k(a, a), k(b, b)
    expected = ((kaa.sum() - 40) / (40 * 39) + (kbb.sum() - 30) / (30 * 29) - 2 * k(a, b).mean())
    assert res["mmd2"] == pytest.approx(expected, rel=1e-10)

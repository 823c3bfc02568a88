"""Every operator's math against an independent dense float64 computation (to 1e-10)."""

import numpy as np
import pytest
import torch
from align_data import clouds
from reference_ops import blockwise as blockwise_reference
from reference_ops import normalize
from reference_ops import realign as realign_reference
from torch.testing import assert_close

from revision_plugin.align import fit_operator, train_mode
from revision_plugin.align.frame import energy_rank, reference_frame

TOL = dict(rtol=0, atol=1e-10)


@pytest.mark.parametrize("iters", [1, 2, 4])
def test_realign_matches_paper_equations(iters):
    text, image = clouds()
    operator = fit_operator("realign", text, image, centroid_iters=iters, chunk_rows=97)
    assert_close(operator(text), realign_reference(text, image, iters), **TOL)


def test_realign_statistics_are_eqs_18_to_21():
    text, image = clouds()
    operator = fit_operator("realign", text, image)
    y, x = normalize(text), normalize(image)
    t_y = np.mean(np.sum((y - y.mean(0)) ** 2, axis=1))
    t_x = np.mean(np.sum((x - x.mean(0)) ** 2, axis=1))
    assert_close(operator.mu_text.numpy(), y.mean(0), **TOL)
    assert_close(operator.mu_image.numpy(), x.mean(0), **TOL)
    assert_close(float(operator.trace_text), t_y, **TOL)
    assert_close(float(operator.scale), np.sqrt(t_x / (t_y + 1e-8)), **TOL)


def test_realign_zero_centroid_iters_is_affine_plus_projection():
    text, image = clouds()
    operator = fit_operator("realign", text, image, centroid_iters=0)
    y, x = normalize(text), normalize(image)
    s = float(operator.scale)
    assert_close(operator(text), normalize(x.mean(0) + s * (y - y.mean(0))), **TOL)


def test_realign_closes_the_centroid_gap_and_iterating_keeps_reducing_it():
    text, image = clouds(n_text=4000, n_image=4000, dim=24)
    target = normalize(image).mean(0)
    gaps = [np.linalg.norm(fit_operator("realign", text, image, centroid_iters=k)(text).mean(0) - target)
            for k in range(0, 5)]
    raw_gap = np.linalg.norm(normalize(text).mean(0) - target)
    assert gaps[1] < 0.05 * raw_gap
    assert all(later < earlier for earlier, later in zip(gaps[1:], gaps[2:])), gaps


def test_realign_is_applied_per_row_so_new_rows_use_the_frozen_statistics():
    text, image = clouds()
    operator = fit_operator("realign", text, image)
    new_rows = clouds(seed=99)[0][:7]
    batch = operator(new_rows)
    one_by_one = np.stack([operator(row[None])[0] for row in new_rows])
    assert_close(batch, one_by_one, **TOL)


def test_realign_float32_path_agrees_with_float64():
    text, image = clouds()
    operator = fit_operator("realign", text, image)
    out32 = operator(torch.from_numpy(text.astype(np.float32)))
    assert out32.dtype == torch.float32
    assert_close(out32.double(), torch.from_numpy(operator(text)), rtol=0, atol=1e-5)


def test_identity_is_normalisation_only():
    text, image = clouds()
    operator = fit_operator("identity", text * 3.0, image)
    assert_close(operator(text * 3.0), normalize(text), **TOL)
    assert_close(operator.align_image(image), normalize(image), **TOL)


@pytest.mark.parametrize("add_image_mean,renormalize", [(False, False), (True, True), (True, False)])
def test_mean_shift_matches_reference(add_image_mean, renormalize):
    text, image = clouds()
    operator = fit_operator("mean_shift", text, image, add_image_mean=add_image_mean, renormalize=renormalize)
    y, x = normalize(text), normalize(image)
    expected = y - y.mean(0) + (x.mean(0) if add_image_mean else 0)
    if renormalize:
        expected = normalize(expected)
    assert_close(operator(text), expected, **TOL)
    assert_close(operator.align_image(image), x, **TOL)


def test_c3_eval_mode_centres_each_modality():
    text, image = clouds()
    operator = fit_operator("c3", text, image)
    assert not operator.training
    y, x = normalize(text), normalize(image)
    assert_close(operator(text), normalize(y - y.mean(0)), **TOL)
    assert_close(operator.align_image(image), normalize(x - x.mean(0)), **TOL)
    assert_close(operator(text), operator(text), rtol=0, atol=0)


def test_c3_noise_only_in_training_mode_with_the_c3_variance_and_seed():
    text, image = clouds(n_text=3000, dim=64)
    operator = fit_operator("c3", text, image, renormalize=False, seed=7)
    centred = normalize(text) - normalize(text).mean(0)
    with train_mode(operator):
        noisy = operator(text)
    assert not operator.training
    noise = noisy - centred
    assert abs(noise.var() - 0.016) < 0.016 * 0.02
    assert abs(noise.mean()) < 1e-3
    assert_close(operator(text), centred, **TOL)
    with train_mode(operator):
        assert_close(operator.align_image(image), normalize(image) - normalize(image).mean(0), **TOL)
    replay = fit_operator("c3", text, image, renormalize=False, seed=7)
    with train_mode(replay):
        assert_close(replay(text), noisy, rtol=0, atol=0)
        second_draw = replay(text)
    assert not np.allclose(second_draw, noisy)


def test_c3_noise_default_renormalises_to_unit_vectors():
    text, image = clouds()
    operator = fit_operator("c3", text, image, seed=0)
    with train_mode(operator):
        out = operator(text)
    assert_close(np.linalg.norm(out, axis=1), np.ones(len(out)), **TOL)


@pytest.mark.parametrize("energy,shrinkage", [(0.9, 0.01), (0.6, 0.2), (0.99, 0.0)])
def test_blockwise_matches_appendix_f(energy, shrinkage):
    text, image = clouds()
    operator = fit_operator("blockwise", text, image, energy=energy, shrinkage=shrinkage, chunk_rows=128)
    expected, rank = blockwise_reference(text, image, energy, shrinkage)
    assert operator.info.options["rank_u"] == rank
    assert_close(operator(text), expected, rtol=0, atol=1e-9)


def test_reference_frame_energy_threshold():
    eigenvalues = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    assert energy_rank(eigenvalues, 0.7) == 2  # (4+3)/10 = 0.7
    assert energy_rank(eigenvalues, 0.71) == 3
    assert energy_rank(eigenvalues, 1.0) == 3  # V always keeps one dimension
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    frame = reference_frame(q @ np.diag([5.0, 4, 0.5, 0.3, 0.2]) @ q.T, energy=0.85)
    assert frame.rank == 2
    x = torch.from_numpy(rng.normal(size=(3, 5)))
    assert_close(frame.project_u(x) + frame.project_v(x), x, **TOL)
    assert_close(frame.basis_u.T @ frame.basis_v, torch.zeros(2, 3, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("method", ["identity", "realign", "c3", "blockwise"])
def test_outputs_are_unit_vectors_and_shapes_preserved(method):
    text, image = clouds()
    operator = fit_operator(method, text, image)
    batch = torch.from_numpy(text[:6].reshape(2, 3, -1))
    out = operator(batch)
    assert out.shape == batch.shape
    assert_close(torch.linalg.vector_norm(out, dim=-1), torch.ones(2, 3, dtype=torch.float64), **TOL)

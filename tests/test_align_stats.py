"""Streaming statistics: fp64 moments, shard merging and 2-process torch.distributed fitting."""

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from align_data import clouds
from reference_ops import normalize
from torch.testing import assert_close

from revision_plugin.align import ArraySource, MomentStats, NpySource, fit_operator, load_operator
from revision_plugin.align.stats import accumulate

TOL = dict(rtol=0, atol=1e-12)


def test_moments_match_dense_computation():
    text, _ = clouds()
    stats = accumulate(ArraySource(text * 5.0), second_moment=True, chunk_rows=33)
    y = normalize(text)
    assert stats.count == len(text)
    assert_close(stats.mean.numpy(), y.mean(0), **TOL)
    assert_close(stats.trace, float(np.mean(np.sum((y - y.mean(0)) ** 2, axis=1))), **TOL)
    assert_close(stats.covariance.numpy(), np.cov(y.T, bias=True), **TOL)


def test_merging_shards_equals_the_whole(tmp_path):
    text, _ = clouds()
    whole = accumulate(ArraySource(text), second_moment=True)
    cuts = [0, 1, 250, 251, 600]
    parts = [accumulate(ArraySource(text[a:b]), second_moment=True) for a, b in zip(cuts, cuts[1:])]
    merged = parts[0]
    for i, part in enumerate(parts[1:]):
        path = tmp_path / f"part{i}.safetensors"
        part.save(path)
        merged = merged.merge(MomentStats.load(path))
    assert merged.count == whole.count
    assert_close(merged.sum, whole.sum, **TOL)
    assert_close(merged.sq_norm, whole.sq_norm, **TOL)
    assert_close(merged.outer, whole.outer, **TOL)


def test_merge_refuses_incompatible_stats():
    a = MomentStats.empty(4)
    with pytest.raises(ValueError, match="dim 5 into dim 4"):
        a.merge(MomentStats.empty(5))
    with pytest.raises(ValueError, match="with and without second moments"):
        a.merge(MomentStats.empty(4, second_moment=True))


def test_float64_accumulation_beats_float32_on_long_streams():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(200_000, 4)).astype(np.float32) + 3
    exact = normalize(rows.astype(np.float64)).mean(0)
    ours = accumulate(ArraySource(rows)).mean.numpy()
    naive = np.zeros(4, dtype=np.float32)
    for row in normalize(rows).astype(np.float32):
        naive += row
    assert np.abs(ours - exact).max() < 1e-13
    assert np.abs(naive / len(rows) - exact).max() > 1e-6


def _distributed_worker(rank, world_size, init_file, text_path, image_path, out_dir, method, options):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        operator = fit_operator(method, text_path, image_path, chunk_rows=50, **options)
        if rank == 0:
            operator.save(out_dir)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("method,options", [("realign", {"centroid_iters": 2}), ("blockwise", {})])
def test_two_process_gloo_fit_equals_single_process(tmp_path, method, options):
    text, image = clouds()
    text_path, image_path = tmp_path / "text.npy", tmp_path / "image.npy"
    np.save(text_path, text)
    np.save(image_path, image)
    out_dir = tmp_path / "op"
    mp.start_processes(_distributed_worker, nprocs=2, start_method="spawn",
                       args=(2, tmp_path / "init", str(text_path), str(image_path), str(out_dir), method, options))
    distributed = load_operator(out_dir)
    single = fit_operator(method, NpySource(text_path), NpySource(image_path), **options)
    assert distributed.info.counts == single.info.counts == {"text": 600, "image": 500}
    assert distributed.info.fingerprint == single.info.fingerprint
    for name in type(single).buffer_names:
        assert_close(getattr(distributed, name), getattr(single, name), rtol=0, atol=1e-12)

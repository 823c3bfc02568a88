"""The fast paths of issue 15, on the CPU: threaded passes, the staged (accelerator) code path,
ReAlign's float32 map, threaded `revision align`, and `--device` validation.

Every fast path is checked against the plain float64 computation (tests/reference_ops.py) to
the accuracy contract: 1e-10 on the operator's buffers and outputs, 1e-6 on float32 outputs.
No wall-clock time is asserted here; benchmarks/bench_realign.py measures speed.
"""

import numpy as np
import pytest
import torch
from align_data import clouds
from reference_ops import normalize
from reference_ops import realign as realign_reference
from torch.testing import assert_close

from revision_plugin.align import ArraySource, NpySource, commands_align, fit_operator, load_operator, passes
from revision_plugin.align.commands_align import align_file
from revision_plugin.align.stats import BadRows, accumulate
from revision_plugin.cli import main
from revision_plugin.errors import BadInputError, RevisionError
from revision_plugin.runtime import resolve_device

TOL = dict(rtol=0, atol=1e-10)
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")


@pytest.fixture
def threaded(monkeypatch):
    """Let passes split even the small test clouds over threads."""
    monkeypatch.setattr(passes, "MIN_ROWS_PER_THREAD", 1)


@pytest.fixture
def staged(monkeypatch):
    """Run the accelerator's staging code (pinned copy, whole-chunk blocks) on the CPU."""
    monkeypatch.setattr(passes, "uses_staging", lambda device: True)
    monkeypatch.setattr(commands_align, "uses_staging", lambda device: True)


def _float32_clouds():
    text, image = clouds()
    return text.astype(np.float32) * 3.0, image.astype(np.float32)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threaded_moments_match_the_dense_float64_computation(threaded, threads):
    text, _ = _float32_clouds()
    stats = accumulate(ArraySource(text), second_moment=True, chunk_rows=37, threads=threads)
    y = normalize(text.astype(np.float64))
    assert stats.count == len(text)
    assert_close(stats.mean.numpy(), y.mean(0), rtol=0, atol=1e-12)
    assert_close(stats.covariance.numpy(), np.cov(y.T, bias=True), rtol=0, atol=1e-12)
    assert isinstance(stats.sq_norm, float)


@pytest.mark.parametrize("iters", [0, 1, 3])
def test_threaded_and_staged_realign_fits_match_the_paper_reference(threaded, staged, iters, tmp_path):
    text, image = _float32_clouds()
    np.save(tmp_path / "text.npy", text)
    np.save(tmp_path / "image.npy", image)
    for kwargs in ({"threads": 1}, {"threads": 2}, {"device": "cpu"}):
        operator = fit_operator("realign", tmp_path / "text.npy", tmp_path / "image.npy", chunk_rows=64,
                                centroid_iters=iters, **kwargs)
        expected = realign_reference(text.astype(np.float64), image.astype(np.float64), centroid_iters=iters)
        assert_close(operator(text.astype(np.float64)), expected, **TOL)
        assert all(getattr(operator, name).device.type == "cpu" for name in operator.buffer_names)


def test_thread_count_does_not_change_the_buffers(threaded):
    text, image = _float32_clouds()
    one = fit_operator("realign", text, image, centroid_iters=2, threads=1)
    two = fit_operator("realign", text, image, centroid_iters=2, threads=2)
    for name in one.buffer_names:
        assert_close(getattr(two, name), getattr(one, name), rtol=0, atol=1e-13)
    assert one.info.fingerprint == two.info.fingerprint


def test_threads_report_bad_rows_in_row_order(threaded):
    text, image = _float32_clouds()
    text[[7, 450]] = np.nan
    text[100] = 0.0
    with pytest.raises(BadInputError, match="row 7 has NaN or Inf"):
        fit_operator("realign", text, image, threads=2)
    report = BadRows()
    accumulate(ArraySource(text), skip_bad=report, threads=2)
    assert report.count == 3
    assert [(row, why) for _, row, why in report.examples] == [(7, "NaN or Inf values"), (100, "zero norm"),
                                                                (450, "NaN or Inf values")]


@pytest.mark.parametrize("iters", [0, 1, 4])
def test_realign_float32_map_rows_matches_the_float64_transform(iters):
    text, image = _float32_clouds()
    operator = fit_operator("realign", text, image, centroid_iters=iters)
    x = torch.from_numpy(text)
    fast = operator.map_rows(x, torch.linalg.vector_norm(x, dim=1))
    assert fast.dtype == torch.float32
    expected = realign_reference(text.astype(np.float64), image.astype(np.float64), centroid_iters=iters)
    assert_close(fast.double().numpy(), expected, rtol=0, atol=1e-6)
    out = torch.empty_like(x)
    assert operator.map_rows(x, torch.linalg.vector_norm(x, dim=1), out=out) is out


@pytest.mark.parametrize("method", ["realign", "blockwise", "mean_shift", "c3"])
def test_threaded_and_staged_align_file_match_the_operator(tmp_path, monkeypatch, method):
    text, image = _float32_clouds()
    np.save(tmp_path / "text.npy", text)
    operator = fit_operator(method, text, image)
    expected = operator(text.astype(np.float64)).astype(np.float32)
    monkeypatch.setattr(commands_align, "APPLY_BLOCK_ROWS", 16)
    outputs = {}
    for name, threads in (("one", 1), ("two", 2), ("three", 3)):
        out = tmp_path / f"{name}.npy"
        assert align_file(operator, NpySource(tmp_path / "text.npy"), out, chunk_rows=50, progress=False, threads=threads) == 600
        outputs[name] = np.load(out)
        assert_close(outputs[name], expected, rtol=0, atol=1e-6)
    assert np.array_equal(outputs["one"], outputs["two"]) and np.array_equal(outputs["one"], outputs["three"])
    monkeypatch.setattr(commands_align, "uses_staging", lambda device: True)
    align_file(operator, NpySource(tmp_path / "text.npy"), tmp_path / "staged.npy", chunk_rows=50, progress=False)
    assert_close(np.load(tmp_path / "staged.npy"), expected, rtol=0, atol=1e-6)


def test_threaded_align_file_reports_the_first_bad_row_and_writes_nothing(tmp_path, monkeypatch):
    text, image = _float32_clouds()
    operator = fit_operator("realign", text, image)
    text[[20, 40]] = np.inf  # blocks of 16: row 20 in worker 1's first block, row 40 in worker 0's second
    np.save(tmp_path / "bad.npy", text)
    monkeypatch.setattr(commands_align, "APPLY_BLOCK_ROWS", 16)
    with pytest.raises(BadInputError, match="row 20 has NaN or Inf"):
        align_file(operator, NpySource(tmp_path / "bad.npy"), tmp_path / "out.npy", chunk_rows=64, progress=False, threads=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npy"]


def test_float64_and_float16_inputs_keep_their_precision_in_align_file(tmp_path):
    text, image = _float32_clouds()
    operator = fit_operator("realign", text, image)
    for dtype, atol in ((np.float64, 1e-7), (np.float16, 1e-6)):
        rows = text.astype(dtype)
        np.save(tmp_path / "in.npy", rows)
        align_file(operator, NpySource(tmp_path / "in.npy"), tmp_path / "out.npy", progress=False)
        expected = operator(rows.astype(np.float64)).astype(np.float32)
        assert_close(np.load(tmp_path / "out.npy"), expected, rtol=0, atol=atol)


def test_resolve_device():
    assert resolve_device(None) == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(BadInputError, match="not a device"):
        resolve_device("gpu0")
    with pytest.raises(BadInputError, match="only cpu and cuda"):
        resolve_device("meta")


@NO_CUDA
def test_cuda_is_refused_in_one_line_when_unavailable(tmp_path):
    text, image = _float32_clouds()
    with pytest.raises(BadInputError, match="CUDA is not available"):
        fit_operator("realign", text, image, device="cuda")


@NO_CUDA
@pytest.mark.parametrize("command", ["fit", "align"])
def test_cli_device_cuda_without_cuda_exits_2_and_writes_nothing(tmp_path, capsys, command):
    text, image = _float32_clouds()
    np.save(tmp_path / "text.npy", text)
    np.save(tmp_path / "image.npy", image)
    fit_operator("realign", text, image).save(tmp_path / "op")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    if command == "fit":
        argv = ["fit", "--method", "realign", "--text", str(tmp_path / "text.npy"), "--image", str(tmp_path / "image.npy"),
                "--out", str(tmp_path / "new_op"), "--device", "cuda", "--no-progress"]
    else:
        argv = ["align", "--operator", str(tmp_path / "op"), "--in", str(tmp_path / "text.npy"),
                "--out", str(tmp_path / "aligned.npy"), "--device", "cuda", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA is not available" in err, err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("command", ["fit", "align"])
def test_cli_refuses_an_unknown_device_while_parsing(tmp_path, capsys, command):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--device", "tpu"])
    assert exit_.value.code == 2
    assert "expected cpu, cuda or cuda:N" in capsys.readouterr().err


def test_cli_fit_and_align_on_cpu_device(tmp_path):
    text, image = _float32_clouds()
    np.save(tmp_path / "text.npy", text)
    np.save(tmp_path / "image.npy", image)
    assert main(["fit", "--method", "realign", "--text", str(tmp_path / "text.npy"), "--image", str(tmp_path / "image.npy"),
                 "--out", str(tmp_path / "op"), "--device", "cpu", "--no-progress"]) == 0
    assert main(["align", "--operator", str(tmp_path / "op"), "--in", str(tmp_path / "text.npy"),
                 "--out", str(tmp_path / "aligned.npy"), "--device", "cpu", "--no-progress"]) == 0
    expected = realign_reference(text.astype(np.float64), image.astype(np.float64))
    assert_close(np.load(tmp_path / "aligned.npy").astype(np.float64), expected, rtol=0, atol=1e-6)
    assert load_operator(tmp_path / "op").info.counts == {"text": 600, "image": 500}


def test_align_file_refuses_an_output_that_cannot_fit_before_any_work(tmp_path, monkeypatch):
    text, image = _float32_clouds()
    operator = fit_operator("realign", text, image)
    np.save(tmp_path / "text.npy", text)
    real = commands_align.os.fstatvfs

    def nearly_full(fd):
        fs = real(fd)
        return type("StatVfs", (), {"f_bavail": 1, "f_frsize": fs.f_frsize})()

    monkeypatch.setattr(commands_align.os, "fstatvfs", nearly_full)
    with pytest.raises(RevisionError, match=r"out\.npy: the output needs [0-9.,]+ MiB, only [0-9.,]+ MiB free there"):
        align_file(operator, NpySource(tmp_path / "text.npy"), tmp_path / "out.npy", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.npy"]

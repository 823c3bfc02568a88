"""Bad input gets a clear error naming the file and row, or an explicit --skip-bad report."""

import logging

import numpy as np
import pytest
from align_data import clouds
from torch.testing import assert_close

from revision_plugin.align import NpySource, fit_operator, open_source
from revision_plugin.errors import ArtifactMismatchError, BadInputError


def _save(tmp_path, name, array):
    path = tmp_path / name
    np.save(path, array)
    return path


@pytest.mark.parametrize("bad_value,reason", [(np.nan, "NaN or Inf"), (np.inf, "NaN or Inf"), (0.0, "zero norm")])
def test_bad_rows_are_named(tmp_path, bad_value, reason):
    text, image = clouds()
    text = text.astype(np.float32)
    text[321] = bad_value if bad_value == 0.0 else text[321]
    if bad_value != 0.0:
        text[321, 4] = bad_value
    path = _save(tmp_path, "text.npy", text)
    with pytest.raises(BadInputError, match=rf"text\.npy: row 321 has {reason}.*--skip-bad"):
        fit_operator("realign", path, image, chunk_rows=100)


def test_skip_bad_reports_and_equals_fitting_on_clean_rows(tmp_path, caplog):
    text, image = clouds()
    dirty = text.copy()
    dirty[[5, 77]] = np.nan
    dirty[300] = 0.0
    path = _save(tmp_path, "text.npy", dirty)
    with caplog.at_level(logging.WARNING):
        operator = fit_operator("realign", path, image, skip_bad=True, chunk_rows=64)
    assert "skipped 3 bad rows" in caplog.text and "row 77 (NaN or Inf values)" in caplog.text
    assert "row 300 (zero norm)" in caplog.text
    assert operator.info.options["skipped_bad_rows"] == 3
    clean = fit_operator("realign", np.delete(text, [5, 77, 300], axis=0), image)
    assert operator.info.counts["text"] == len(text) - 3
    assert_close(operator(text[:20]), clean(text[:20]), rtol=0, atol=1e-12)


def test_dimension_mismatch(tmp_path):
    text, image = clouds()
    with pytest.raises(BadInputError, match="embedding dim 8, expected 12"):
        fit_operator("realign", text, image[:, :8])
    operator = fit_operator("realign", text, image)
    with pytest.raises(BadInputError, match="expects dim 12"):
        operator(text[:, :10])


def test_empty_input(tmp_path):
    text, image = clouds()
    path = _save(tmp_path, "empty.npy", np.zeros((0, 12), dtype=np.float32))
    with pytest.raises(BadInputError, match="empty.npy: no usable rows"):
        fit_operator("realign", path, image)


def test_all_rows_bad_under_skip_bad_is_still_an_error():
    text, image = clouds()
    with pytest.raises(BadInputError, match="no usable rows"):
        fit_operator("c3", np.full_like(text, np.nan), image, skip_bad=True)


def test_truncated_npy(tmp_path):
    path = _save(tmp_path, "text.npy", np.ones((100, 12), dtype=np.float32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 4 * 12 * 10 - 5])
    with pytest.raises(BadInputError, match=r"truncated file: header says 100 rows of dim 12, only 89 complete rows"):
        NpySource(path)


def test_wrong_shapes_and_types(tmp_path):
    with pytest.raises(BadInputError, match="expected a 2-D"):
        NpySource(_save(tmp_path, "vec.npy", np.ones(12, dtype=np.float32)))
    with pytest.raises(BadInputError, match="dtype int64"):
        NpySource(_save(tmp_path, "ints.npy", np.ones((3, 12), dtype=np.int64)))
    (tmp_path / "garbage.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(BadInputError, match="not a readable .npy"):
        NpySource(tmp_path / "garbage.npy")
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(BadInputError, match="expected a .npy file or a feature-store directory"):
        open_source(tmp_path / "table.csv")
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        open_source(tmp_path / "missing.npy")


def test_nonfinite_or_zero_input_to_a_fitted_operator():
    text, image = clouds()
    operator = fit_operator("realign", text, image)
    bad = text[:3].copy()
    bad[1] = 0
    with pytest.raises(BadInputError, match="NaN/Inf or zero-norm"):
        operator(bad)


def test_encoder_mismatch_between_inputs():
    text, image = clouds()
    with pytest.raises(ArtifactMismatchError, match="different encoders"):
        fit_operator("realign", _tagged(text, "enc-A"), _tagged(image, "enc-B"))
    operator = fit_operator("realign", _tagged(text, "enc-A"), _tagged(image, "enc-A"))
    assert operator.info.encoder_id == "enc-A"
    with pytest.raises(ArtifactMismatchError, match="--encoder-id 'enc-B' is not the inputs' encoder"):
        fit_operator("realign", _tagged(text, "enc-A"), _tagged(image, "enc-A"), encoder_id="enc-B")
    assert fit_operator("realign", text, image, encoder_id="enc-B").info.encoder_id == "enc-B"  # untagged inputs


def _tagged(array, encoder_id):
    from revision_plugin.align import ArraySource

    return ArraySource(array, name=f"<{encoder_id}>", encoder_id=encoder_id)


def test_npy_source_reads_every_row_once_in_any_chunking(tmp_path):
    array = np.arange(37 * 3, dtype=np.float32).reshape(37, 3)
    source = NpySource(_save(tmp_path, "a.npy", array))
    rows = [(first, chunk.copy()) for first, chunk in source.chunks(chunk_rows=5)]
    assert [first for first, _ in rows] == list(range(0, 37, 5))
    assert np.array_equal(np.concatenate([c for _, c in rows]), array)
    shards = [source.shard(r, 3) for r in range(3)]
    assert [s.num_rows for s in shards] == [13, 12, 12]
    assert np.array_equal(np.concatenate([c.copy() for s in shards for _, c in s.chunks(4)]), array)

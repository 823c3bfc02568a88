"""The shared helpers (one home each, issue 14): booleans, KEY=VALUE items, dtype names, atomic writes."""

from __future__ import annotations

import os

import pytest

from revision_plugin.atomic import atomic_directory, atomic_write_bytes, shared_mode
from revision_plugin.errors import BadInputError
from revision_plugin.parsing import FALSE_WORDS, TRUE_WORDS, assignments, json_or_text, parse_bool
from revision_plugin.runtime import DTYPE_NAMES, dtype_named, shard_bounds


def test_every_bool_word_any_option_accepted_is_accepted():
    for word in ("1", "true", "yes", "y", "on", " TRUE "):
        assert parse_bool(word, "x") is True and word.strip().lower() in TRUE_WORDS
    for word in ("0", "false", "no", "n", "off", "Off"):
        assert parse_bool(word, "x") is False and word.strip().lower() in FALSE_WORDS
    assert parse_bool("", "x", empty=False) is False
    with pytest.raises(BadInputError, match="flag: expected true/false"):
        parse_bool("maybe", "flag")
    with pytest.raises(BadInputError):
        parse_bool("", "flag")


def test_assignments_and_values():
    def bad(item):
        return BadInputError(f"bad {item}")

    assert list(assignments(" a=1 ,, b = x=y ", bad)) == [("a", "1"), ("b", "x=y")]
    with pytest.raises(BadInputError, match="bad c"):
        list(assignments("a=1,c", bad))
    with pytest.raises(BadInputError, match="bad =1"):
        list(assignments("=1", bad))
    assert json_or_text("4") == 4 and json_or_text("true") is True and json_or_text("path/x") == "path/x"


def test_dtype_names():
    import torch

    assert dtype_named("BF16") is torch.bfloat16 and dtype_named("torch.float16") is torch.float16
    assert dtype_named("half") is torch.float16 and dtype_named("int8") is None
    assert {"bf16", "fp16", "fp32", "float32", "float"} <= set(DTYPE_NAMES)


def test_shard_bounds_cover_every_row_once():
    bounds = [shard_bounds(10, r, 3) for r in range(3)]
    assert bounds == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError):
        shard_bounds(10, 3, 3)


def test_atomic_writes_keep_modes_and_leave_no_temp_files(tmp_path):
    target = tmp_path / "f.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"new", mode=shared_mode(target))
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o640
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "d") as tmp:
        (tmp / "x").write_text("partial")
        raise RuntimeError("killed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]
    with atomic_directory(tmp_path / "d") as tmp:
        (tmp / "x").write_text("done")
    assert (tmp_path / "d" / "x").read_text() == "done" and sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.txt"]

"""Issue 13, class 2: checksums recorded at write time; `revision store verify`; damaged
manifests refused at open (never a hang, never another id's row)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from revision_plugin.cli import main
from revision_plugin.errors import RevisionError
from revision_plugin.store import open_store, write_store
from revision_plugin.store.layout import file_sha256
from revision_plugin.store.verify import verify_store


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "s"
    write_store(path, [f"id{k}" for k in range(20)], unit(20), "enc", shard_rows=8, fsync=False)
    return path


def test_every_shard_has_its_sha256_in_the_manifest(store, capsys):
    shards = json.loads((store / "manifest.json").read_text())["shards"]
    assert [s["sha256"] for s in shards] == [file_sha256(store / s["file"]) for s in shards]
    assert main(["store", "verify", str(store)]) == 0
    assert "OK: 20 rows in 3 shards, 3 of 3 shards checked against recorded sha256" in capsys.readouterr().out


def test_swapped_or_edited_shards_are_found(store, capsys):
    a, b = store / "shards/r00000-000000.npy", store / "shards/r00000-000001.npy"
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    report = verify_store(store)
    assert not report.ok and len(report.problems) == 2
    assert all("does not match the recorded" in p for p in report.problems)
    assert main(["store", "verify", "--json", str(store)]) == 2
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_store_without_checksums_says_so_and_still_checks_rows(store):
    manifest = json.loads((store / "manifest.json").read_text())
    for shard in manifest["shards"]:  # as written before checksums and probes were recorded
        del shard["sha256"], shard["probe"]
    (store / "manifest.json").write_text(json.dumps(manifest))
    report = verify_store(store)
    assert report.ok and report.checksummed == 0
    assert "3 shard(s) have no recorded sha256" in report.notes[0]
    shard = store / "shards/r00000-000001.npy"
    data = bytearray(shard.read_bytes())
    data[-4:] = np.array([np.nan], dtype="<f4").tobytes()  # last value of row 15
    shard.write_bytes(bytes(data))
    report = verify_store(store)
    assert report.problems == ["shards/r00000-000001.npy: row 15 has NaN or Inf values"]


def test_index_pointing_at_other_rows_is_found(store):
    index = store / json.loads((store / "manifest.json").read_text())["index"]
    rows = np.load(index / "rows.npy")
    rows[[0, 1]] = rows[[1, 0]]  # two ids now resolve to each other's rows
    np.save(index / "rows.npy", rows)
    report = verify_store(store)
    assert not report.ok and "resolves to row" in report.problems[0]


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["shards"][1].update(first_row=10), "leave a gap"),
    (lambda m: _swap_files(m["shards"][0], m["shards"][1]), "out of commit order"),
    (lambda m: m.update(count=3), "shards hold 20 rows, but 'count' says 3"),
])
def test_damaged_manifest_is_refused_at_open_so_no_lookup_returns_another_row(store, edit, message, capsys):
    manifest = json.loads((store / "manifest.json").read_text())
    edit(manifest)
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RevisionError, match=message):
        open_store(store)
    # nor can `fit` read (and hang on) it: one line, nothing written
    assert main(["fit", "--method", "identity", "--text", str(store), "--image", str(store), "--out",
                 str(store.parent / "op"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (store.parent / "op").exists()


def _swap_files(a: dict, b: dict) -> None:
    a["file"], b["file"] = b["file"], a["file"]

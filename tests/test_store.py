"""Feature store: write/open/lookup/chunks, resume, multi-writer, damaged files."""

from __future__ import annotations

import json
import os
import pickle
import shutil

import numpy as np
import pytest

from revision_plugin.errors import ArtifactMismatchError, BadInputError, RevisionError
from revision_plugin.store import StoreWriter, finalize_store, open_store, write_store


def unit_rows(n, dim=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def store_dir(tmp_path):
    vectors = unit_rows(1000)
    ids = [f"id{i}" for i in range(1000)]
    write_store(tmp_path / "s", ids, vectors, "enc:test", shard_rows=300, fsync=False)
    return tmp_path / "s", ids, vectors


def test_roundtrip_manifest_lookup_and_ids(store_dir):
    path, ids, vectors = store_dir
    with open_store(path) as store:
        assert (store.dim, store.num_rows, store.encoder_id, store.normalized) == (16, 1000, "enc:test", True)
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["count"] == 1000 and manifest["dtype"] == "float32"
        assert [s["rows"] for s in manifest["shards"]] == [300, 300, 300, 100]
        wanted = ["id5", "id999", "id300", "id5", "id299"]
        np.testing.assert_array_equal(store.lookup(wanted), vectors[[5, 999, 300, 5, 299]])
        np.testing.assert_array_equal(store.lookup(ids[250:350]), vectors[250:350])  # coalesced run across a shard edge
        assert store.lookup([]).shape == (0, 16)
        assert store.ids() == ids and store.ids(10, 12) == ["id10", "id11"]
        assert "id3" in store and "nope" not in store and 3 not in store


def test_missing_ids_are_named(store_dir):
    path, _, _ = store_dir
    with open_store(path) as store, pytest.raises(RevisionError, match=r"2 id\(s\) not in the store: 'a', 'b'"):
        store.lookup(["id1", "a", "b"])


def test_chunks_cross_shards_and_shard_views(store_dir):
    path, _, vectors = store_dir
    store = open_store(path)
    pieces = list(store.chunks(128))
    assert [first for first, _ in pieces] == list(range(0, 1000, 128))
    np.testing.assert_array_equal(np.concatenate([c.copy() for _, c in store.chunks(128)]), vectors)
    parts = [store.shard(rank, 3) for rank in range(3)]
    assert sum(p.num_rows for p in parts) == 1000 and parts[1].encoder_id == "enc:test"
    np.testing.assert_array_equal(np.concatenate([c.copy() for p in parts for _, c in p.chunks(77)]), vectors)


def test_fit_operator_reads_store_directories(tmp_path):
    import revision_plugin.align  # noqa: F401
    from revision_plugin.align import base  # noqa: F401 - registers operators
    from revision_plugin.align.base import fit_operator

    text, image = unit_rows(400, seed=1) + 0.3, unit_rows(500, seed=2)
    write_store(tmp_path / "t", [f"t{i}" for i in range(400)], text, "enc:x", shard_rows=128, fsync=False)
    write_store(tmp_path / "i", [f"i{i}" for i in range(500)], image, "enc:x", shard_rows=128, fsync=False)
    from_store = fit_operator("mean_shift", tmp_path / "t", tmp_path / "i")
    from_arrays = fit_operator("mean_shift", text, image)
    assert from_store.info.encoder_id == "enc:x"
    probe = unit_rows(5, seed=3)
    np.testing.assert_allclose(from_store(probe), from_arrays(probe), atol=1e-10)
    write_store(tmp_path / "other", ["o"], unit_rows(1), "enc:y", fsync=False)
    with pytest.raises(ArtifactMismatchError):
        fit_operator("mean_shift", tmp_path / "t", tmp_path / "other")


def test_duplicate_and_bad_rows_are_refused(tmp_path):
    with StoreWriter(tmp_path / "s", "enc", 4, fsync=False) as writer:
        writer.add(["a", "b"], np.ones((2, 4)))
        with pytest.raises(BadInputError, match="duplicate id 'a'"):
            writer.add(["c", "a"], np.ones((2, 4)))
        with pytest.raises(BadInputError, match="duplicate id 'd'"):
            writer.add(["d", "d"], np.ones((2, 4)))
        with pytest.raises(BadInputError, match="'e' has NaN"):
            writer.add(["e"], np.full((1, 4), np.nan))
        with pytest.raises(BadInputError, match=r"expected \[n, 4\]"):
            writer.add(["f"], np.ones((1, 3)))
    store = open_store(tmp_path / "s")
    assert store.ids() == ["a", "b"] and not store.normalized


def test_interrupted_writer_resumes_without_gaps_or_duplicates(tmp_path):
    vectors = unit_rows(100)
    ids = [f"id{i}" for i in range(100)]
    writer = StoreWriter(tmp_path / "s", "enc", 16, shard_rows=30, fsync=False)
    writer.add(ids[:70], vectors[:70])  # commits 70 rows (one shard: all pending rows)
    writer.add(ids[70:80], vectors[70:80])  # pending, lost with the "kill"
    del writer
    with pytest.raises(RevisionError, match="incomplete feature store"):
        open_store(tmp_path / "s")
    with StoreWriter(tmp_path / "s", "enc", 16, shard_rows=30, fsync=False) as writer:
        assert writer.done_ids == set(ids[:70])
        todo = [i for i in range(100) if ids[i] not in writer.done_ids]
        writer.add([ids[i] for i in todo], vectors[todo])
    store = open_store(tmp_path / "s")
    assert sorted(store.ids()) == sorted(ids)
    np.testing.assert_array_equal(store.lookup(ids), vectors)


def test_resume_refuses_another_encoder(store_dir):
    path, _, _ = store_dir
    with pytest.raises(ArtifactMismatchError, match="refusing to add 'other' embeddings of dim 16"):
        StoreWriter(path, "other", 16)
    with pytest.raises(ArtifactMismatchError):
        StoreWriter(path, "enc:test", 8)


def test_appending_to_a_complete_store_keeps_old_state_readable(store_dir):
    path, ids, vectors = store_dir
    writer = StoreWriter(path, "enc:test", 16, shard_rows=10, fsync=False)
    writer.add(["new1"], unit_rows(1, seed=9))
    writer.commit()
    assert open_store(path).count == 1000  # previous finalized state until finalize
    writer.close()
    store = open_store(path)
    assert store.count == 1001 and store.lookup(["new1"]).shape == (1, 16)
    np.testing.assert_array_equal(store.lookup(ids), vectors)


def test_several_writers_one_store(tmp_path):
    vectors = unit_rows(90)
    ids = [f"id{i}" for i in range(90)]
    writers = [StoreWriter(tmp_path / "s", "enc", 16, rank=r, world_size=3, shard_rows=7, fsync=False) for r in range(3)]
    for r, writer in enumerate(writers):
        writer.add(ids[r::3], vectors[r::3])
        writer.reject(f"bad{r}", "empty text")
        writer.close()
    assert not (tmp_path / "s" / "manifest.json").exists()  # world_size > 1: caller finalizes
    manifest = finalize_store(tmp_path / "s")
    assert manifest["writers"] == [0, 1, 2] and manifest["rejected"] == 3
    store = open_store(tmp_path / "s")
    np.testing.assert_array_equal(store.lookup(ids), vectors)
    assert sorted(r["id"] for r in store.rejected()) == ["bad0", "bad1", "bad2"]


def test_duplicate_across_writers_is_named_at_finalize(tmp_path):
    # Concurrent writers only see each other's commits when they start, so a shared id
    # slips past both; finalize catches it.
    writers = [StoreWriter(tmp_path / "s", "enc", 4, rank=r, world_size=2, fsync=False) for r in range(2)]
    for rank, writer in enumerate(writers):
        writer.add([f"only{rank}", "shared"], np.ones((2, 4)))
        writer.close()
    with pytest.raises(BadInputError, match=r"duplicate ids across writers: 'shared' in shards/r00000-000000.npy, shards/r00001-000000.npy"):
        finalize_store(tmp_path / "s")


def test_truncated_shard_is_named(store_dir):
    path, _, _ = store_dir
    shard = path / "shards" / "r00000-000002.npy"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(RevisionError, match=r"r00000-000002.npy: truncated or damaged shard"):
        open_store(path)
    shard.write_bytes(b"\x93NUMPY")
    with pytest.raises(RevisionError, match="r00000-000002.npy: shard header unreadable"):
        open_store(path)
    shard.unlink()
    with pytest.raises(RevisionError, match="r00000-000002.npy: shard listed in the store is missing"):
        open_store(path)


def test_not_a_store_and_newer_format(tmp_path, store_dir):
    path, _, _ = store_dir
    with pytest.raises(FileNotFoundError):
        open_store(tmp_path / "missing")
    (tmp_path / "parent" / "text").mkdir(parents=True)
    write_store(tmp_path / "parent" / "text", ["a"], unit_rows(1), "enc", fsync=False)
    with pytest.raises(RevisionError, match=r"not a feature store .* it contains the stores .*parent/text"):
        open_store(tmp_path / "parent")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 99
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RevisionError, match="format version 99 is newer"):
        open_store(path)


def test_damaged_index_is_named_and_refinalize_keeps_open_readers_working(store_dir):
    path, ids, vectors = store_dir
    reader = open_store(path)
    old_index = path / reader.manifest["index"]
    with StoreWriter(path, "enc:test", 16, fsync=False) as writer:
        writer.add(["extra"], unit_rows(1, seed=5))
    assert not old_index.exists()  # replaced by a new generation...
    np.testing.assert_array_equal(reader.lookup(ids[:50]), vectors[:50])  # ...the open reader still works
    new = open_store(path)
    assert new.count == 1001 and "extra" in new and "extra" not in reader
    index_dir = path / new.manifest["index"]
    (index_dir / "ids.bin").write_bytes((index_dir / "ids.bin").read_bytes()[:-3])
    with pytest.raises(RevisionError, match=r"ids.bin: truncated"):
        open_store(path)
    shutil.rmtree(index_dir)
    with pytest.raises(RevisionError, match="index file missing"):
        open_store(path)


def test_hash_collisions_never_return_the_wrong_row(tmp_path, monkeypatch):
    from revision_plugin.store import id_index

    # A deliberately terrible hash: only 3 values, so nearly every id collides.
    monkeypatch.setattr(id_index, "hash_ids", lambda encoded: np.array([len(b) % 3 for b in encoded], dtype=np.uint64))
    ids = [f"item-{i}" * (1 + i % 4) for i in range(60)]
    vectors = unit_rows(60)
    write_store(tmp_path / "s", ids, vectors, "enc", fsync=False)
    store = open_store(tmp_path / "s")
    order = list(range(59, -1, -3))
    np.testing.assert_array_equal(store.lookup([ids[i] for i in order]), vectors[order])
    assert "item-0item-0" not in store and "item-1item-1" in store
    with pytest.raises(RevisionError, match="not in the store: 'item-0item-0'"):
        store.lookup(["item-0item-0"])
    with StoreWriter(tmp_path / "d", "enc", 16, rank=0, world_size=2, fsync=False) as w0, \
            StoreWriter(tmp_path / "d", "enc", 16, rank=1, world_size=2, fsync=False) as w1:
        w0.add(["aaa", "bbb"], vectors[:2])
        w1.add(["ccc", "bbb"], vectors[:2])  # "aaa"/"bbb"/"ccc" share a hash; only "bbb" repeats
    with pytest.raises(BadInputError, match=r"duplicate ids across writers: 'bbb' in shards/r00000-000000.npy, shards/r00001-000000.npy"):
        finalize_store(tmp_path / "d")


def test_read_rows_runs_and_shard_edges(store_dir):
    path, _, vectors = store_dir
    store = open_store(path)
    for rows in ([299, 300, 301], [5, 6, 7, 3, 4, 999, 0], list(range(250, 650)), [7, 7, 8, 8], list(range(900, 800, -1))):
        np.testing.assert_array_equal(store.read_rows(rows), vectors[rows])
    with pytest.raises(IndexError):
        store.read_rows([1000])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads RssFile from /proc")
def test_memory_stays_flat_over_many_lookups(tmp_path):
    """Positioned reads: looking up every row leaves no mapped shard pages behind."""
    vectors = unit_rows(20000, dim=256)
    ids = [f"r{i}" for i in range(20000)]
    write_store(tmp_path / "s", ids, vectors, "enc", fsync=False)
    store = open_store(tmp_path / "s")

    def rss_file_kb():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("RssFile"))

    before = rss_file_kb()
    for lo in range(0, 20000, 256):
        store.lookup(ids[lo : lo + 256])
    assert rss_file_kb() - before < 5 * 1024  # the 20 MB of vectors were never mapped


def test_store_survives_pickling_and_fork(store_dir):
    """DataLoader workers get the store by pickling (spawn) or fork; handles are per process."""
    import torch

    path, ids, vectors = store_dir
    store = open_store(path)
    store.lookup(["id1"])  # open handles in the parent first
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.lookup(["id7"]), vectors[[7]])

    class ById(torch.utils.data.Dataset):
        def __len__(self):
            return 40

        def __getitem__(self, i):
            return store.lookup([ids[i * 7]])[0]

    loader = torch.utils.data.DataLoader(ById(), batch_size=8, num_workers=2, multiprocessing_context="fork")
    got = torch.cat(list(loader)).numpy()
    np.testing.assert_array_equal(got, vectors[[i * 7 for i in range(40)]])


def test_store_import_stays_light_and_matches_align_defaults():
    import subprocess
    import sys

    from revision_plugin.align.sources import DEFAULT_CHUNK_ROWS
    from revision_plugin.store import reader

    assert reader.DEFAULT_CHUNK_ROWS == DEFAULT_CHUNK_ROWS
    probe = "import sys, revision_plugin.store; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"

"""Issue 13, class 4: one writing job per store; ranks of one job share it; stale locks are taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from revision_plugin.store import StoreWriter, open_store, write_store
from revision_plugin.store.lock import LOCK_NAME, StoreLockedError, job_token


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


HOLDER = """
import sys, time
from pathlib import Path
import numpy as np
from revision_plugin.store import StoreWriter
store, ready, release = map(Path, sys.argv[1:4])
with StoreWriter(store, "enc", 4, shard_rows=2, fsync=False) as writer:
    writer.add(["h0", "h1"], np.eye(4, dtype=np.float32)[:2])
    ready.write_text("x")
    while not release.exists():
        time.sleep(0.02)
    writer.add(["h2"], np.eye(4, dtype=np.float32)[2:3])
"""


def test_second_writer_refuses_at_once_naming_the_holder_and_loses_nothing(tmp_path):
    store, ready, release = tmp_path / "s", tmp_path / "ready", tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(store), str(ready), str(release)])
    try:
        for _ in range(1500):
            if ready.exists() or holder.poll() is not None:
                break
            time.sleep(0.02)
        assert ready.exists(), "holder did not start"
        journal_before = (store / "parts" / "rank-00000.json").read_bytes()
        with pytest.raises(StoreLockedError, match=rf"being written by another job \(pid {holder.pid} on host "
                                                   rf"{socket.gethostname()}"):
            StoreWriter(store, "enc", 4, fsync=False)
        with pytest.raises(StoreLockedError):
            write_store(store, ["mine"], unit(1), "enc", fsync=False)
        assert (store / "parts" / "rank-00000.json").read_bytes() == journal_before  # nothing of theirs touched
    finally:
        release.write_text("x")
        assert holder.wait(timeout=60) == 0
    assert not (store / LOCK_NAME).exists()  # released on close
    assert sorted(open_store(store).ids()) == ["h0", "h1", "h2"]  # every row of the holder kept
    write_store(store, ["mine"], unit(1), "enc", fsync=False)  # free again
    assert open_store(store).count == 4


def test_stale_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = tmp_path / "s"
    store.mkdir()
    (store / LOCK_NAME).write_text(json.dumps({"job": f"process:{socket.gethostname()}:{dead.pid}:1", "host": socket.gethostname(),
                                                "pid": dead.pid, "start": "1", "since": "earlier"}))
    write_store(store, ["a", "b"], unit(2), "enc", fsync=False)
    assert "taking over a stale write lock of pid" in caplog.text
    assert open_store(store).count == 2 and not (store / LOCK_NAME).exists()


def test_lock_from_another_host_is_not_guessed_stale(tmp_path):
    store = tmp_path / "s"
    store.mkdir()
    lock = {"job": "process:elsewhere:1:1", "host": "some-other-host", "pid": 1, "since": "earlier"}
    (store / LOCK_NAME).write_text(json.dumps(lock))
    with pytest.raises(StoreLockedError, match=rf"pid 1 on host some-other-host.*delete {store / LOCK_NAME}"):
        StoreWriter(store, "enc", 4, fsync=False)
    assert json.loads((store / LOCK_NAME).read_text()) == lock  # not ours to remove


def test_ranks_of_one_torchrun_job_share_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29511")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    store = tmp_path / "s"
    store.mkdir()
    # Rank 0 of this job (another, live process: our parent) took the lock first.
    (store / LOCK_NAME).write_text(json.dumps({"job": job_token(), "host": socket.gethostname(), "pid": os.getppid(), "since": "now"}))
    with StoreWriter(store, "enc", 4, rank=1, world_size=2, fsync=False) as writer:
        writer.add(["r1"], unit(1))
    assert (store / LOCK_NAME).exists()  # a distributed job's lock is dropped by its finalizer, not rank 1
    monkeypatch.setenv("MASTER_PORT", "29512")  # another job
    with pytest.raises(StoreLockedError):
        StoreWriter(store, "enc", 4, rank=0, world_size=2, fsync=False)


def test_a_failed_open_does_not_leave_the_lock_behind(tmp_path):
    write_store(tmp_path / "s", ["a"], unit(1), "enc", fsync=False)
    with pytest.raises(Exception, match="refusing to add 'other'"):
        StoreWriter(tmp_path / "s", "other", 4)
    assert not (Path(tmp_path / "s") / LOCK_NAME).exists()

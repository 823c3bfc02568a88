"""Utilities shared by the tiny-model builders: torch thread limits and a cross-process file lock."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def torch_threads(count: int | None = 1):
    """Run with ``count`` torch threads (tiny models gain nothing from more, and parallel
    test workers on few cores slow each other down badly when each takes every core)."""
    import torch

    if not count:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive ``flock`` on ``path`` (created if missing): concurrent builders (pytest-xdist
    workers sharing a directory) wait for the first one instead of building twice."""
    import fcntl

    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

"""Atomic writes (stdlib only): readers see the old file or the new one, never a mix, and a
failed write leaves no temp file behind. The one implementation the plugin's writers share;
``store/layout.py`` keeps the store's own helpers on top of it (``atomic_write_npy`` ...), and
``revision patch-host`` uses it without numpy or torch installed."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def shared_mode(path: Path) -> int:
    """The permission bits a plain ``open(path, "w")`` would leave: ``path``'s own if it exists,
    else ``0o666`` less the umask (for files other users read: checkpoints, patched sources)."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        umask = os.umask(0o022)
        os.umask(umask)
        return 0o666 & ~umask


@contextmanager
def atomic_file(path: Path, fsync: bool = True, mode: int | None = None) -> Iterator[BinaryIO]:
    """Write ``path`` through a temp file in the same directory, renamed into place only
    when the block completes; on any error the temp file is removed and ``path`` untouched.
    ``mode``: the file's permission bits (default: the temp file's, owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True, mode: int | None = None) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix."""
    with atomic_file(path, fsync, mode) as f:
        f.write(data)


@contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Fill a temp directory next to ``path``; when the block completes it replaces ``path``
    (a previous ``path`` is removed first); on any error the temp directory is removed."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    if tmp.exists():  # left by a killed run of this process id
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass

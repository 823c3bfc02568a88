"""On-disk layout of a feature store, and the atomic-write helpers every part of it uses.

A store is one directory::

    manifest.json            merged description (format, encoder_id, dim, count, shards ...)
    index-<token>/           id -> row index (sorted id hashes + ids, memory-mapped; id_index.py)
    rejected.jsonl           inputs that were refused (unreadable image, empty text) + reason
    shards/r00000-000000.npy float32 [rows, dim], C order, one per commit
    shards/r00000-000000.ids.json  {"ids": [...], "rejected": [{"id", "reason"}]}
    parts/rank-00000.json    per-writer journal: the commits of writer (rank) 0, rewritten
                             atomically after every shard - the resume point of a killed run
    writer.lock              present while a job writes (store/lock.py)

Every shard's sha256 is recorded at write time (journal, then manifest) for
``revision store verify``.

Writers never share a file: each rank owns its journal and its shard names, so any number
of processes can write one store without locks. ``manifest.json`` and the index are
(re)built from the journals by ``finalize_store`` once all writers are done; until then the
previous complete state (if any) stays readable.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FORMAT_NAME = "revision-feature-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX_PREFIX = "index-"
REJECTED = "rejected.jsonl"
SHARD_DIR = "shards"
PART_DIR = "parts"
DTYPE = np.dtype("<f4")


def part_path(store_dir: Path, rank: int) -> Path:
    return Path(store_dir) / PART_DIR / f"rank-{rank:05d}.json"


def shard_stem(rank: int, seq: int) -> str:
    return f"r{rank:05d}-{seq:06d}"


@contextmanager
def atomic_file(path: Path, fsync: bool = True) -> Iterator[BinaryIO]:
    """Write ``path`` through a temp file in the same directory, renamed into place only
    when the block completes; on any error the temp file is removed and ``path`` untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix."""
    with atomic_file(path, fsync) as f:
        f.write(data)


def atomic_write_json(path: Path, obj: Any, fsync: bool = True) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode(), fsync)


class _HashingWriter:
    """Forwards writes to ``f`` and hashes them: the checksum of exactly the bytes on disk."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.digest = f, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.f.write(data)


def atomic_write_npy(path: Path, array: np.ndarray, fsync: bool = True) -> str:
    """Save a float32 C-ordered ``.npy`` atomically (temp file in the same dir + rename);
    return the sha256 of the file's bytes (recorded in the journal and the manifest)."""
    with atomic_file(path, fsync) as f:
        hashing = _HashingWriter(f)
        np.lib.format.write_array(hashing, np.ascontiguousarray(array, dtype=DTYPE), allow_pickle=False)
    return hashing.digest.hexdigest()


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def npy_data_offset(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    """Header length, shape and dtype of a ``.npy`` file, reading only its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        return f.tell(), shape, dtype


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def remove_stale_temp_files(directory: Path, prefix: str = "") -> None:
    """Delete temp files a killed writer left behind (only names it could have created)."""
    if not Path(directory).is_dir():
        return
    for entry in Path(directory).iterdir():
        if entry.name.startswith("." + prefix) and entry.name.endswith(".tmp"):
            _remove_quietly(entry)


def _remove_quietly(path) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass

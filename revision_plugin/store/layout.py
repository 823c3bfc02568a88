"""On-disk layout of a feature store, and the atomic-write helpers every part of it uses
(``atomic_file`` / ``atomic_write_bytes`` from ``revision_plugin.atomic``, the store's own on top).

A store is one directory::

    manifest.json            merged description (format, encoder_id, dim, count, shards ...)
    index-<token>/           id -> row index (sorted id hashes + ids, memory-mapped; id_index.py)
    rejected.jsonl           inputs that were refused (unreadable image, empty text) + reason
    shards/r00000-000000.npy float32 [rows, dim], C order, one per commit
    shards/r00000-000000.ids.json  {"ids": [...], "hashes": [...], "rejected": [{"id", "reason", "run"}]}
    parts/rank-00000.json    per-writer journal: the commits of writer (rank) 0, rewritten
                             atomically after every shard - the resume point of a killed run
    writer.lock              present while a job writes (store/lock.py)

Every shard's sha256 is recorded at write time (journal, then manifest) for
``revision store verify``, and so is its ``probe`` (a hash of its first and last rows), which
opening a store checks: a shard file swapped for another is named at open, never read as
another id's rows. ``hashes`` are the content hashes of the stored ids' inputs (text or image
bytes), which a resuming ``revision embed`` compares with its input.

Writers never share a file: each rank owns its journal and its shard names, so any number
of processes can write one store without locks. ``manifest.json`` and the index are
(re)built from the journals by ``finalize_store`` once all writers are done; until then the
previous complete state (if any) stays readable.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

# The one implementation of atomic writes (revision_plugin/atomic.py), re-exported for the
# store's writers; the store keeps its default: temp files, hence stored files, owner-only (0600).
from revision_plugin.atomic import atomic_file, atomic_write_bytes, remove_quietly

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


PROBE_CHARS = 32


def shard_probe(first_row: np.ndarray, last_row: np.ndarray) -> str:
    """blake2b-128 of a shard's first and last rows (float32 bytes): its cheap identity."""
    rows = np.ascontiguousarray(np.stack([first_row, last_row]), dtype=DTYPE)
    return hashlib.blake2b(rows.tobytes(), digest_size=PROBE_CHARS // 2).hexdigest()


def read_shard_probe(path: Path, data_offset: int, rows: int, dim: int) -> str:
    """:func:`shard_probe` of a shard file, reading two rows."""
    row_bytes = dim * DTYPE.itemsize
    with open(path, "rb") as f:
        first = os.pread(f.fileno(), row_bytes, data_offset)
        last = os.pread(f.fileno(), row_bytes, data_offset + (rows - 1) * row_bytes)
    if len(first) != row_bytes or len(last) != row_bytes:
        raise ValueError(f"{path}: shorter than its header says")
    return shard_probe(np.frombuffer(first, dtype=DTYPE), np.frombuffer(last, dtype=DTYPE))


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def npy_data_offset(path: Path) -> tuple[int, tuple[int, ...], bool, np.dtype]:
    """Header length, shape, Fortran-order flag and dtype of a ``.npy`` file, reading only its
    header; ``ValueError`` for a file that is not ``.npy`` format version 1.0 or 2.0."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
        return f.tell(), shape, fortran, dtype


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def remove_stale_temp_files(directory: Path, prefix: str = "") -> None:
    """Delete temp files a killed writer left behind (only names it could have created)."""
    if not Path(directory).is_dir():
        return
    for entry in Path(directory).iterdir():
        if entry.name.startswith("." + prefix) and entry.name.endswith(".tmp"):
            remove_quietly(entry)


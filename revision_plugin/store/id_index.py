"""The id -> row index of a store: sorted 64-bit id hashes, memory-mapped.

Files (in one directory per finalize generation, ``index-<token>/``):

    hashes.npy   uint64 [n]   blake2b-64 of each id's UTF-8 bytes, sorted
    rows.npy     int64  [n]   the row of each entry of hashes.npy
    offsets.npy  int64  [n+1] byte range of row r's id in ids.bin
    ids.bin      UTF-8 ids, concatenated in row order

A lookup hashes the requested ids, binary-searches ``hashes.npy`` (vectorised) and then
compares the candidate's stored id bytes with the requested id, so a hash collision can
never return the wrong row. Nothing is loaded at open: every file is memory-mapped and only
the pages a lookup touches are read. Measured against sqlite (the first design), this is
about 3x faster per id, which decided it.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from revision_plugin.errors import BadInputError, RevisionError


def hash_ids(encoded: Sequence[bytes]) -> np.ndarray:
    """uint64 blake2b-64 of each UTF-8 id (stable across processes, unlike ``hash()``)."""
    return np.fromiter(
        (int.from_bytes(hashlib.blake2b(b, digest_size=8).digest(), "little") for b in encoded),
        dtype=np.uint64, count=len(encoded),
    )


def build_index(directory: Path, ids: Iterable[str], count: int) -> None:
    """Write the index files of ``ids`` (in row order) to ``directory``; refuse duplicates."""
    directory.mkdir(parents=True)
    encoded = [i.encode("utf-8") for i in ids]
    if len(encoded) != count:
        raise RevisionError(f"{directory}: {len(encoded)} ids for {count} rows")
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=count)
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    hashes = hash_ids(encoded)
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    duplicates = _duplicates(encoded, order, sorted_hashes)
    if duplicates:
        rows = []
        for duplicate in duplicates[:5]:
            wanted = duplicate.encode("utf-8")
            same_hash = np.flatnonzero(hashes == hash_ids([wanted])[0]).tolist()
            rows.append([r for r in same_hash if encoded[r] == wanted])
        raise DuplicateIdsError(duplicates, rows)
    with open(directory / "ids.bin", "wb") as f:
        f.write(b"".join(encoded))
    np.save(directory / "offsets.npy", offsets)
    np.save(directory / "hashes.npy", sorted_hashes)
    np.save(directory / "rows.npy", order.astype(np.int64))
    for name in ("ids.bin", "offsets.npy", "hashes.npy", "rows.npy"):
        with open(directory / name, "rb") as f:
            os.fsync(f.fileno())


def _duplicates(encoded: list[bytes], order: np.ndarray, sorted_hashes: np.ndarray) -> list[str]:
    """Ids present more than once; only runs of equal hashes need a closer look."""
    equal_next = np.flatnonzero(sorted_hashes[1:] == sorted_hashes[:-1])
    if not len(equal_next):
        return []
    found: set[str] = set()
    run_starts = equal_next[np.r_[True, np.diff(equal_next) > 1]]
    for start in run_starts.tolist():
        stop = start + 1
        while stop < len(sorted_hashes) and sorted_hashes[stop] == sorted_hashes[start]:
            stop += 1
        seen: set[bytes] = set()
        for k in order[start:stop].tolist():
            if encoded[k] in seen:
                found.add(encoded[k].decode("utf-8"))
            seen.add(encoded[k])
    return sorted(found)


class DuplicateIdsError(BadInputError):
    def __init__(self, ids: list[str], rows: list[list[int]]):
        self.ids, self.rows = ids, rows
        super().__init__(f"duplicate ids: {ids[:5]}")


class IdIndex:
    """Read side of the index; cheap to open (memory maps only)."""

    def __init__(self, directory: Path, count: int) -> None:
        self.directory, self.count = directory, count
        try:
            self.hashes = _load(directory / "hashes.npy", count)
            self.rows = _load(directory / "rows.npy", count)
            self.offsets = _load(directory / "offsets.npy", count + 1)
            size = os.path.getsize(directory / "ids.bin")
        except FileNotFoundError as err:
            raise RevisionError(
                f"{directory}: index file missing ({Path(err.filename).name}); the store may have been "
                "finalized again while opening - reopen it"
            ) from err
        if size != int(self.offsets[-1]):
            raise RevisionError(f"{directory / 'ids.bin'}: truncated ({size} bytes, expected {int(self.offsets[-1])})")
        self._blob = b""
        if size:
            with open(directory / "ids.bin", "rb") as f:
                self._blob = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)

    def ids(self, start: int, stop: int) -> list[str]:
        bounds = self.offsets[start : stop + 1].tolist()
        blob = self._blob[bounds[0] : bounds[-1]] if bounds else b""
        base = bounds[0] if bounds else 0
        return [blob[a - base : b - base].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])]

    def find(self, ids: Sequence[str]) -> np.ndarray:
        """Row of each id, ``-1`` where absent."""
        found = np.full(len(ids), -1, dtype=np.int64)
        if not self.count or not len(ids):
            return found
        encoded = [i.encode("utf-8") for i in ids]
        keys = hash_ids(encoded)
        position = np.searchsorted(self.hashes, keys).clip(max=self.count - 1)
        hit = self.hashes[position] == keys
        candidate = np.where(hit, self.rows[position], 0)
        starts, stops = self.offsets[candidate].tolist(), self.offsets[candidate + 1].tolist()
        blob = self._blob
        for k, (is_hit, a, b) in enumerate(zip(hit.tolist(), starts, stops)):
            if is_hit:
                if blob[a:b] == encoded[k]:
                    found[k] = candidate[k]
                else:  # another id with the same 64-bit hash: check the whole run
                    found[k] = self._scan_run(int(position[k]), keys[k], encoded[k])
        return found

    def _scan_run(self, position: int, key, wanted: bytes) -> int:
        while position < self.count and self.hashes[position] == key:
            row = int(self.rows[position])
            if self._blob[int(self.offsets[row]) : int(self.offsets[row + 1])] == wanted:
                return row
            position += 1
        return -1

    def close(self) -> None:
        if isinstance(self._blob, mmap.mmap):
            self._blob.close()


def _load(path: Path, length: int) -> np.ndarray:
    # np.load cannot memory-map a zero-length array; those are tiny anyway.
    array = np.load(path, mmap_mode="r" if length else None)
    if array.shape != (length,):
        raise RevisionError(f"{path}: holds {array.shape[0]} entries, expected {length}")
    return array

"""Read a finalized feature store: look rows up by id, or stream them in chunks.

Opening reads the manifest, checks every shard's header and size (a truncated shard is
named at open, not discovered mid-training) and its first and last rows against the
``probe`` recorded when it was written (two small reads per shard: a shard file swapped for
another of the same size is named at open instead of answering lookups with another id's
rows), and memory-maps the small id index. Vectors are read with positioned reads (``os.preadv``) straight into the output
array, one call per run of consecutive rows. Memory-mapping the shards was measured and
rejected: every touched page of a mapping counts towards the process RSS, and with the
large page-cache folios of current kernels one random row maps up to megabytes, so RSS
climbed to the store size within a few hundred lookups; positioned reads keep it flat at
any store size and were as fast (~300k rows/s for random rows on a warm cache).
Handles are per process: reopened after ``fork``, dropped when pickled, so a store can be
used from DataLoader workers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from revision_plugin.errors import RevisionError
from revision_plugin.runtime import shard_bounds
from revision_plugin.store import layout
from revision_plugin.store.id_index import IdIndex
from revision_plugin.store.journal import check_shard_file
from revision_plugin.store.manifest import check_shard_probe, read_manifest

# Same value as revision_plugin.align.sources.DEFAULT_CHUNK_ROWS (checked by a test); not
# imported, because importing revision_plugin.align loads torch, which store readers (e.g.
# DataLoader workers, benchmarks) should not pay for.
DEFAULT_CHUNK_ROWS = 8192


@dataclass(frozen=True)
class _Shard:
    path: Path
    first_row: int
    rows: int
    data_offset: int


class _Handles:
    """Per-process index and shard descriptors, opened lazily.

    Lookups and ``chunks()`` use separate descriptors: the kernel keeps read-ahead state per
    open file, and lookups switch it off (``POSIX_FADV_RANDOM``) - on a cold cache each
    5 KB row read otherwise pulls in ~128 KB of neighbours it will not use - while the
    sequential chunk reads keep it.
    """

    def __init__(self, index_dir: Path, count: int, shards: list[_Shard], dim: int) -> None:
        self.index_dir, self.count, self.shards, self.dim = index_dir, count, shards, dim
        self.pid = None
        self.lock = threading.Lock()

    def _ensure(self) -> None:
        if self.pid != os.getpid():
            self._index = IdIndex(self.index_dir, self.count)
            self._fds: list[int | None] = [None] * len(self.shards)
            self._random_fds: list[int | None] = [None] * len(self.shards)
            self.pid = os.getpid()

    @property
    def index(self) -> IdIndex:
        with self.lock:
            self._ensure()
            return self._index

    def fd(self, shard_no: int) -> int:
        with self.lock:
            self._ensure()
            if self._fds[shard_no] is None:
                self._fds[shard_no] = os.open(self.shards[shard_no].path, os.O_RDONLY)
            return self._fds[shard_no]

    def random_access_fds(self) -> list[int]:
        """One descriptor per shard, read-ahead off, for lookups."""
        with self.lock:
            self._ensure()
            for shard_no, fd in enumerate(self._random_fds):
                if fd is None:
                    fd = os.open(self.shards[shard_no].path, os.O_RDONLY)
                    if hasattr(os, "posix_fadvise"):
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
                    self._random_fds[shard_no] = fd
            return list(self._random_fds)

    def __reduce__(self):
        # Descriptors and memory maps do not cross processes; the copy reopens its own.
        return (_Handles, (self.index_dir, self.count, self.shards, self.dim))

    def close(self) -> None:
        with self.lock:
            if self.pid == os.getpid():
                for fd in self._fds + self._random_fds:
                    if fd is not None:
                        os.close(fd)
                self._index.close()
            self.pid = None

    def __del__(self) -> None:
        # Stores are often dropped without close(); do not leak one descriptor per shard.
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have torn down os/threading
            pass


class FeatureStore:
    """A finalized store (see ``revision_plugin.store.layout``); a chunk source for ``revision fit``."""

    def __init__(self, store_dir: str | Path, *, check_probes: bool = True) -> None:
        self.store_dir = Path(store_dir)
        self.manifest = read_manifest(self.store_dir)
        self.dim = int(self.manifest["dim"])
        self.encoder_id = self.manifest["encoder_id"]
        self.count = int(self.manifest["count"])
        self.normalized = bool(self.manifest["normalized"])
        self.modality = self.manifest.get("modality")
        self._row_bytes = self.dim * layout.DTYPE.itemsize
        self._shards = []
        for entry in self.manifest["shards"]:
            path = self.store_dir / entry["file"]
            offset = check_shard_file(path, entry["rows"], self.dim)
            if check_probes and "probe" in entry:
                check_shard_probe(path, entry, offset, self.dim)
            self._shards.append(_Shard(path, int(entry["first_row"]), int(entry["rows"]), offset))
        self._shard_starts = np.array([s.first_row for s in self._shards] + [self.count], dtype=np.int64)
        self._handles = _Handles(self.store_dir / self.manifest["index"], self.count, self._shards, self.dim)
        self._handles.index  # noqa: B018 - open (and so validate) the index now
        self._shard_offsets = np.array([s.data_offset for s in self._shards], dtype=np.int64)

    # -------------------------------------------------------------- chunk-source protocol

    @property
    def name(self) -> str:
        return str(self.store_dir)

    @property
    def num_rows(self) -> int:
        return self.count

    def __len__(self) -> int:
        return self.count

    def chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        return _iter_rows(self, 0, self.count, chunk_rows)

    def shard(self, rank: int, world_size: int) -> StoreRows:
        lo, hi = shard_bounds(self.count, rank, world_size)
        return StoreRows(self, lo, hi)

    # -------------------------------------------------------------- lookup by id

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Global row of each id (int64, request order); RevisionError naming missing ids."""
        ids = list(ids)
        for item_id in ids:
            if not isinstance(item_id, str):
                raise RevisionError(f"{self.store_dir}: ids are strings, got {item_id!r}")
        rows = self._handles.index.find(ids)
        if len(rows) and rows.min() < 0:
            missing = list(dict.fromkeys(ids[k] for k in np.flatnonzero(rows < 0)))
            shown = ", ".join(repr(i) for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise RevisionError(f"{self.store_dir}: {len(missing)} id(s) not in the store: {shown}")
        return rows

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """Vectors of ``ids`` as float32 ``[len(ids), dim]``, in request order."""
        return self.read_rows(self.rows_of(ids))

    def read_rows(self, rows) -> np.ndarray:
        """Vectors at global ``rows`` (any order, repeats allowed) as float32 ``[n, dim]``."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.dim), dtype=layout.DTYPE)
        if not len(rows):
            return out
        if rows.min() < 0 or rows.max() >= self.count:
            raise IndexError(f"{self.store_dir}: row outside [0, {self.count})")
        # Sorted by file position; a run of rows consecutive in the file *and* in the output
        # is one read (sequential lookups cost one call per run, random ones one per row).
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        shard_nos = np.searchsorted(self._shard_starts, sorted_rows, side="right") - 1
        file_offsets = self._shard_offsets[shard_nos] + (sorted_rows - self._shard_starts[shard_nos]) * self._row_bytes
        run_starts = np.flatnonzero(
            np.r_[True, (np.diff(sorted_rows) != 1) | (np.diff(order) != 1) | (np.diff(shard_nos) != 0)]
        )
        run_lengths = np.diff(np.r_[run_starts, len(rows)])
        fds = self._handles.random_access_fds()
        out_bytes = memoryview(out).cast("B")
        row_bytes, preadv = self._row_bytes, os.preadv
        for length, shard_no, offset, dest_row in zip(
            run_lengths.tolist(), shard_nos[run_starts].tolist(),
            file_offsets[run_starts].tolist(), order[run_starts].tolist(),
        ):
            dest = out_bytes[dest_row * row_bytes : (dest_row + length) * row_bytes]
            if preadv(fds[shard_no], [dest], offset) != len(dest):
                _pread_fully(fds[shard_no], dest, offset, self._shards[shard_no].path)
        return out

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and bool(self._handles.index.find([item_id])[0] >= 0)

    def ids(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Ids of rows ``[start, stop)`` in row order (all by default)."""
        stop = self.count if stop is None else min(stop, self.count)
        return self._handles.index.ids(start, max(start, stop))

    def rejected(self) -> list[dict]:
        """The ``{"id", "reason"}`` records of inputs refused when the store was written."""
        import json

        path = self.store_dir / layout.REJECTED
        if not path.exists():
            return []
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    # -------------------------------------------------------------- housekeeping

    def close(self) -> None:
        self._handles.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.store_dir)!r}, encoder_id={self.encoder_id!r}, dim={self.dim}, count={self.count})"


@dataclass
class StoreRows:
    """Rows ``[start, stop)`` of a store: a chunk source for one rank of a distributed fit."""

    store: FeatureStore
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"{self.store.name}[{self.start}:{self.stop}]"

    @property
    def dim(self) -> int:
        return self.store.dim

    @property
    def encoder_id(self) -> str:
        return self.store.encoder_id

    @property
    def num_rows(self) -> int:
        return self.stop - self.start

    def chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        return _iter_rows(self.store, self.start, self.stop, chunk_rows)

    def shard(self, rank: int, world_size: int) -> StoreRows:
        lo, hi = shard_bounds(self.num_rows, rank, world_size)
        return StoreRows(self.store, self.start + lo, self.start + hi)


def _iter_rows(store: FeatureStore, start: int, stop: int, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, view)`` of ``chunk_rows`` rows across shard boundaries.

    One buffer is reused, so memory stays flat; a view is valid until the next iteration.
    """
    if chunk_rows <= 0:
        raise ValueError("chunk_rows must be positive")
    buffer = np.empty((min(chunk_rows, max(stop - start, 1)), store.dim), dtype=layout.DTYPE)
    row = start
    while row < stop:
        n = min(chunk_rows, stop - row)
        view = buffer[:n]
        view_bytes = memoryview(view).cast("B")
        filled = 0
        while filled < n:
            shard_no = int(np.searchsorted(store._shard_starts, row + filled, side="right") - 1)
            shard = store._shards[shard_no]
            take = min(n - filled, shard.first_row + shard.rows - (row + filled))
            if take <= 0 or shard_no < 0:  # impossible for a validated manifest; never spin
                raise RevisionError(f"{store.store_dir}: no shard holds row {row + filled}; the manifest is damaged")
            offset = shard.data_offset + (row + filled - shard.first_row) * store._row_bytes
            dest = view_bytes[filled * store._row_bytes : (filled + take) * store._row_bytes]
            _pread_fully(store._handles.fd(shard_no), dest, offset, shard.path)
            filled += take
        yield row, view
        row += n


def _pread_fully(fd: int, dest: memoryview, offset: int, path: Path) -> None:
    """Fill ``dest`` from ``offset``; one call suffices except past ~2 GB (Linux caps a read)."""
    done = 0
    while done < len(dest):
        got = os.preadv(fd, [dest[done:]], offset + done)
        if got <= 0:
            raise RevisionError(f"{path}: shard shrank while reading (at byte {offset + done})")
        done += got


def open_store(store_dir: str | Path) -> FeatureStore:
    """Open the finalized feature store at ``store_dir`` (< 1 s at any size; reads two rows per shard)."""
    return FeatureStore(store_dir)

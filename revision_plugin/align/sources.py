"""Chunked, memory-flat readers for embedding matrices.

A *chunk source* is anything with ``name``, ``dim``, ``num_rows``, ``encoder_id``,
``chunks(chunk_rows)`` yielding ``(first_row, float array [n, dim])`` and
``shard(rank, world_size)``. Fitting iterates a source several times, so sources are
re-iterable. ``.npy`` files are memory-mapped (no copy out of the page cache) and each chunk's
pages are released from the process once the consumer moves on, so RSS stays flat at any N.

The feature store (``revision_plugin.store``) implements the same protocol.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from revision_plugin.errors import BadInputError, MissingFileError
from revision_plugin.runtime import shard_bounds
from revision_plugin.store.layout import npy_data_offset

DEFAULT_CHUNK_ROWS = 8192
_FLOAT_DTYPES = (np.dtype("<f4"), np.dtype("<f8"), np.dtype("<f2"))


@runtime_checkable
class ChunkSource(Protocol):
    name: str
    dim: int
    num_rows: int
    encoder_id: str | None

    def chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]: ...

    def shard(self, rank: int, world_size: int) -> ChunkSource: ...


@dataclass
class NpySource:
    """Rows ``[start, stop)`` of a 2-D float ``.npy`` file, read chunk by chunk through a memory map."""

    path: Path
    start: int = 0
    stop: int | None = None
    encoder_id: str | None = None
    dim: int = field(init=False)
    num_rows: int = field(init=False)
    _data_offset: int = field(init=False, repr=False)
    _dtype: np.dtype = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.path.is_file():
            raise MissingFileError(f"{self.path}: no such file")
        try:
            self._data_offset, shape, fortran, dtype = npy_data_offset(self.path)
        except ValueError as err:
            raise BadInputError(f"{self.path}: not a readable .npy file ({err})") from err
        if len(shape) != 2:
            raise BadInputError(f"{self.path}: expected a 2-D [rows, dim] array, got shape {shape}")
        if fortran:
            raise BadInputError(f"{self.path}: Fortran-ordered arrays are not supported; save C-ordered")
        if dtype not in _FLOAT_DTYPES:
            raise BadInputError(f"{self.path}: dtype {dtype} is not a little-endian float16/32/64")
        self._dtype = dtype
        rows, self.dim = shape
        expected = self._data_offset + rows * self.dim * dtype.itemsize
        actual = os.path.getsize(self.path)
        if actual < expected:
            complete = (actual - self._data_offset) // max(1, self.dim * dtype.itemsize)
            raise BadInputError(
                f"{self.path}: truncated file: header says {rows} rows of dim {self.dim}, "
                f"only {complete} complete rows present ({actual} of {expected} bytes)"
            )
        stop = rows if self.stop is None else self.stop
        if not 0 <= self.start <= stop <= rows:
            raise ValueError(f"{self.path}: row range [{self.start}, {stop}) outside [0, {rows})")
        self.stop = stop
        self.num_rows = stop - self.start

    @property
    def name(self) -> str:
        return str(self.path)

    def chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_row, view)``; the view is only valid until the next iteration.

        Rows are read through a memory map (no copy out of the page cache) and the pages of
        each chunk are released from this process with ``MADV_DONTNEED`` once the consumer
        moves on: the kernel keeps them cached, but they stop counting towards our RSS.
        """
        row_bytes = self.dim * self._dtype.itemsize
        page = mmap.PAGESIZE
        with open(self.path, "rb") as f:
            mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        rows = np.frombuffer(mapped, self._dtype, count=self.stop * self.dim, offset=self._data_offset)
        rows = rows.reshape(self.stop, self.dim)
        for row in range(self.start, self.stop, chunk_rows):
            begin = self._data_offset + row * row_bytes
            end = self._data_offset + min(row + chunk_rows, self.stop) * row_bytes
            yield row, rows[row : row + chunk_rows]
            mapped.madvise(mmap.MADV_DONTNEED, begin - begin % page, end - (begin - begin % page))
        # The map closes when the last view into it (possibly held by the caller) is released.

    def shard(self, rank: int, world_size: int) -> NpySource:
        lo, hi = shard_bounds(self.num_rows, rank, world_size)
        return NpySource(self.path, self.start + lo, self.start + hi, self.encoder_id)


@dataclass
class ArraySource:
    """An in-memory array as a chunk source (tests, notebooks, small data)."""

    array: np.ndarray
    name: str = "<array>"
    encoder_id: str | None = None
    first_row: int = 0

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 2:
            raise BadInputError(f"{self.name}: expected a 2-D [rows, dim] array, got shape {array.shape}")
        if not np.issubdtype(array.dtype, np.floating):
            raise BadInputError(f"{self.name}: dtype {array.dtype} is not floating point")
        self.array = array

    @property
    def dim(self) -> int:
        return self.array.shape[1]

    @property
    def num_rows(self) -> int:
        return self.array.shape[0]

    def chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        for lo in range(0, self.num_rows, chunk_rows):
            yield self.first_row + lo, self.array[lo : lo + chunk_rows]

    def shard(self, rank: int, world_size: int) -> ArraySource:
        lo, hi = shard_bounds(self.num_rows, rank, world_size)
        return ArraySource(self.array[lo:hi], self.name, self.encoder_id, self.first_row + lo)


def open_source(obj, encoder_id: str | None = None) -> ChunkSource:
    """Turn a path (``.npy`` file or feature-store directory), array or source into a source."""
    if isinstance(obj, ChunkSource) and not isinstance(obj, (str, os.PathLike)):
        return obj
    if isinstance(obj, np.ndarray):
        return ArraySource(obj, encoder_id=encoder_id)
    if hasattr(obj, "detach"):
        return ArraySource(obj.detach().cpu().numpy(), encoder_id=encoder_id)
    path = Path(obj)
    if path.is_dir():
        from revision_plugin.store import open_store

        return open_store(path)
    if path.suffix == ".npy":
        return NpySource(path, encoder_id=encoder_id)
    if not path.exists():
        raise MissingFileError(f"{path}: no such file or directory")
    raise BadInputError(f"{path}: expected a .npy file or a feature-store directory")

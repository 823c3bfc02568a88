"""Validated, blocked passes over a chunk source, on the CPU (threaded) or an accelerator.

A pass reads each row once as float32/16/64, converts it into one reused float64 block on the
compute device, checks it (non-finite or zero-norm rows raise, or are skipped and reported)
and hands ``(x, norm, inv_norm)`` to the caller; nothing allocated per row, memory flat in N.

Where the time goes (N×1280 float32, page cache warm): reading the file costs about what one
``np.add.reduce`` costs; the float64 conversion, the norm and the weighted column sum are
three sweeps over a cache-resident block. On the CPU the rows are split into one contiguous
shard per worker thread (torch kernels release the GIL), each with single-threaded kernels,
and the per-thread partial sums are added in shard order, so results do not depend on the
scheduling. On an accelerator the float32 rows are staged through one pinned buffer and the
whole chunk is one block.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import numpy as np
import torch

from revision_plugin.align.sources import DEFAULT_CHUNK_ROWS, ChunkSource
from revision_plugin.errors import BadInputError
from revision_plugin.runtime import resolve_device

# Rows per float64 block on the CPU: 512×1280×8 B = 5 MB per thread stays in L3; smaller
# blocks pay per-call overhead, larger ones spill to memory (measured, issue 15).
CPU_BLOCK_ROWS = 512
# Rows per chunk (= per block) on an accelerator: 32768×1280 float32 = 168 MB staged at once.
DEVICE_CHUNK_ROWS = 32768
ZERO_NORM = 1e-12
# Below this many rows per thread, threads cost more than they save.
MIN_ROWS_PER_THREAD = 16384
_THREADS_LOCK = threading.Lock()
_WARN_LOCK = threading.Lock()
_READONLY_WARNED = False

A = TypeVar("A")


def default_threads() -> int:
    """Worker threads for CPU passes: torch's intra-op thread count (honours OMP_NUM_THREADS)."""
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def uses_staging(device: torch.device) -> bool:
    """Whether rows reach ``device`` through a staging buffer (accelerators) or are read in place."""
    return device.type != "cpu"


def bad_row_masks(norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(non-finite, zero-norm)`` row masks, or ``None`` when every row is fine (one sync)."""
    if norm.numel() == 0:
        return None
    smallest, largest = torch.aminmax(norm)  # NaN propagates into both
    if float(smallest) > ZERO_NORM and float(largest) < float("inf"):
        return None
    return ~torch.isfinite(norm), norm <= ZERO_NORM


SKIP_BAD_HINT = "fix the data or pass --skip-bad"


def raise_or_skip(name: str, first_row: int, masks, skip_bad, hint: str = SKIP_BAD_HINT) -> torch.Tensor:
    """Raise the first bad row's error (``skip_bad`` None) or record them; the keep mask."""
    bad_nonfinite, bad_zero = masks
    nonfinite = (torch.nonzero(bad_nonfinite).flatten().cpu() + first_row).numpy()
    zero = (torch.nonzero(bad_zero).flatten().cpu() + first_row).numpy()
    if skip_bad is None:
        row, reason = (nonfinite[0], "NaN or Inf values") if len(nonfinite) else (zero[0], "zero norm")
        raise BadInputError(f"{name}: row {row} has {reason}; {hint}")
    skip_bad.add(name, nonfinite, "NaN or Inf values")
    skip_bad.add(name, zero, "zero norm")
    return ~(bad_nonfinite | bad_zero)


class BlockReader:
    """Reused buffers that turn source chunks into validated float64 blocks on ``device``."""

    def __init__(self, dim: int, device: torch.device, block_rows: int | None = None) -> None:
        self.device = device
        self.on_cpu = not uses_staging(device)
        self.block_rows = block_rows or CPU_BLOCK_ROWS
        self._x = torch.empty(0, dim, dtype=torch.float64, device=device)
        self._norm = torch.empty(0, dtype=torch.float64, device=device)
        self._inv = torch.empty(0, dtype=torch.float64, device=device)
        self._staged: torch.Tensor | None = None
        self.dim = dim

    def _room(self, rows: int) -> None:
        if self._x.shape[0] < rows:
            self._x = torch.empty(rows, self.dim, dtype=torch.float64, device=self.device)
            self._norm = torch.empty(rows, dtype=torch.float64, device=self.device)
            self._inv = torch.empty(rows, dtype=torch.float64, device=self.device)

    def load(self, rows: np.ndarray) -> torch.Tensor:
        """``rows`` (any float dtype) as float64 in the reused block buffer on the device."""
        n = len(rows)
        self._room(n)
        x = self._x[:n]
        if self.on_cpu:
            x.copy_(as_tensor(rows))
            return x
        if self._staged is None or self._staged.shape[0] < n or self._staged.dtype != _torch_dtype(rows.dtype):
            pin = self.device.type == "cuda"  # page-locked host memory: one DMA per block
            self._staged = torch.empty(max(n, self.block_rows), self.dim, dtype=_torch_dtype(rows.dtype), pin_memory=pin)
        staged = self._staged[:n]
        np.copyto(staged.numpy(), rows)
        x.copy_(staged.to(self.device, non_blocking=True))
        return x

    def blocks(self, name: str, first_row: int, chunk: np.ndarray, skip_bad) -> Iterator[tuple[torch.Tensor, ...]]:
        step = self.block_rows if self.on_cpu else max(len(chunk), 1)  # an accelerator takes the whole chunk
        for lo in range(0, len(chunk), step):
            x = self.load(chunk[lo : lo + step])
            n = len(x)
            norm, inv = self._norm[:n], self._inv[:n]
            torch.linalg.vector_norm(x, dim=1, out=norm)
            masks = bad_row_masks(norm)
            if masks is not None:
                keep = raise_or_skip(name, first_row + lo, masks, skip_bad)
                x, norm = x[keep], norm[keep]
                inv = inv[: len(norm)]
            torch.reciprocal(norm, out=inv)
            yield x, norm, inv


def as_tensor(rows: np.ndarray) -> torch.Tensor:
    """A tensor view of ``rows``, read-only memory maps included (we only read from them).

    torch warns once per process about non-writable arrays; that one warning is silenced
    here, once, under a lock (``catch_warnings`` is not thread-safe).
    """
    global _READONLY_WARNED
    if rows.flags.writeable or _READONLY_WARNED:
        return torch.from_numpy(rows)
    with _WARN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(rows)
        _READONLY_WARNED = True
    return tensor


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return {np.dtype("float16"): torch.float16, np.dtype("float32"): torch.float32}.get(np.dtype(dtype), torch.float64)


def normalized_blocks(
    source: ChunkSource,
    skip_bad=None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
    device: str | torch.device | None = None,
    block_rows: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(x, norm, inv_norm)``: float64 raw rows ``x``, ``‖x‖`` and ``1/‖x‖``, validated.

    The unit vectors are ``x * inv_norm[:, None]``; callers fold the scaling into their
    reductions instead of materialising them. The tensors are reused buffers, valid until the
    next iteration. A non-finite row has a non-finite norm (float32/16 values cannot overflow
    float64), so one reduction checks both conditions. Without ``skip_bad`` the first bad row
    raises an error naming the source and row.
    """
    device = resolve_device(device)
    reader = BlockReader(source.dim, device, block_rows)
    if uses_staging(device):
        chunk_rows = max(chunk_rows, DEVICE_CHUNK_ROWS)
    for first_row, chunk in source.chunks(chunk_rows):
        yield from reader.blocks(source.name, first_row, chunk, skip_bad)
        if progress is not None:
            progress(len(chunk))


@contextmanager
def single_threaded_kernels():
    """Intra-op threads off while our own worker threads run (restored afterwards)."""
    with _THREADS_LOCK:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)


def reduce_pass(
    source: ChunkSource,
    init: Callable[[], A],
    step: Callable[[A, torch.Tensor, torch.Tensor, torch.Tensor], None],
    merge: Callable[[A, A], A],
    *,
    skip_bad=None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: Callable[[int], None] | None = None,
    device: str | torch.device | None = None,
    threads: int | None = None,
) -> A:
    """One validated pass: ``step(acc, x, norm, inv_norm)`` on every block, partials merged.

    On the CPU the rows are split into ``threads`` contiguous shards (fixed by the count, so
    the result is reproducible); the partials are merged in shard order and bad rows are
    reported in row order. Accelerators use one stream and no threads.
    """
    device = resolve_device(device)
    threads = default_threads() if threads is None else threads
    threads = max(1, min(threads, source.num_rows // MIN_ROWS_PER_THREAD))
    if device.type != "cpu":
        acc = init()
        for x, norm, inv_norm in normalized_blocks(source, skip_bad, chunk_rows, progress, device):
            step(acc, x, norm, inv_norm)
        return acc
    if threads == 1:
        # Blocks are cache-sized: intra-op threads only add barriers (stalls on a busy machine).
        with single_threaded_kernels():
            acc = init()
            for x, norm, inv_norm in normalized_blocks(source, skip_bad, chunk_rows, progress, device):
                step(acc, x, norm, inv_norm)
        return acc

    chunk_rows = max(1, chunk_rows // threads)  # rows mapped at once stay ``chunk_rows`` in all
    reports = [None if skip_bad is None else type(skip_bad)() for _ in range(threads)]

    def work(k: int, shard: ChunkSource) -> A:
        acc = init()
        for x, norm, inv_norm in normalized_blocks(shard, reports[k], chunk_rows, progress, device):
            step(acc, x, norm, inv_norm)
        return acc

    shards = [source.shard(k, threads) for k in range(threads)]
    results = run_workers(threads, lambda k: work(k, shards[k]))
    for report in reports:
        if report is not None:
            skip_bad.merge(report)
    total = results[0]
    for part in results[1:]:
        total = merge(total, part)
    return total


def run_workers(threads: int, work: Callable[[int], A]) -> list[A]:
    """``work(k)`` for ``k < threads`` on worker threads, torch's intra-op threads off
    meanwhile; the results in order of ``k``, and the lowest ``k``'s error raised if any fail
    (with contiguous shards in row order, that is the first bad row)."""
    with single_threaded_kernels(), ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(work, k) for k in range(threads)]
        errors = [f.exception() for f in futures]
    for err in errors:
        if err is not None:
            raise err
    return [f.result() for f in futures]

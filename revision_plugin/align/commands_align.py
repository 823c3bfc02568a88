"""``revision align``: apply a fitted operator to an embedding file, chunk by chunk.

Memory stays flat: rows are mapped block by block into reused buffers (on the CPU by a few
worker threads, each taking every n-th chunk and writing each block at its own offset with
``pwrite``; on a GPU one large block at a time) into a temporary ``.npy``
(``revision_plugin.atomic``) that is renamed into place when complete, so an interrupted run
leaves no partial output behind. ReAlign maps float32 rows in float32 (one affine map, see
``ReAlign.row_mapper``); the other methods keep their float64 map. Every input row gives
exactly one output row, so bad rows stop the run (there is no ``--skip-bad`` here); the
error names the file and row."""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from revision_plugin.align import load_operator, open_source, train_mode
from revision_plugin.align.device import device_arg
from revision_plugin.align.passes import (
    DEVICE_CHUNK_ROWS,
    as_tensor,
    bad_row_masks,
    default_threads,
    raise_or_skip,
    run_workers,
    single_threaded_kernels,
    uses_staging,
)
from revision_plugin.align.sources import DEFAULT_CHUNK_ROWS
from revision_plugin.argtypes import positive_int
from revision_plugin.atomic import atomic_file, shared_mode
from revision_plugin.errors import ArtifactMismatchError, BadInputError, RevisionError, check_writable
from revision_plugin.runtime import resolve_device, shard_bounds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--operator", required=True, type=Path, help="directory written by `revision fit`")
    parser.add_argument("--in", dest="inputs", required=True, help="embeddings to align: .npy or feature store")
    parser.add_argument("--out", required=True, type=Path, help="output .npy (float32, same row order)")
    parser.add_argument("--image", action="store_true",
                        help="the input holds real image embeddings: apply the operator's image-side map")
    parser.add_argument("--train-mode", action="store_true",
                        help="apply training-time behaviour (C3: draw the noise once; seed with -o seed=… at fit)")
    parser.add_argument("--chunk-rows", type=positive_int, default=DEFAULT_CHUNK_ROWS, help="rows read per chunk")
    parser.add_argument("--device", type=device_arg, default="cpu",
                        help="where the map runs: cpu (default), cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# align writes one output row per input row, so it has no --skip-bad to suggest.
NO_SKIP_HINT = "fix or remove that row first: revision align maps every row, in order"

# Rows per block on the CPU: 1024×1280 float32 in and out (10 MB) stay in L3.
APPLY_BLOCK_ROWS = 1024


def align_file(operator, source, out: Path, image: bool = False, chunk_rows: int = DEFAULT_CHUNK_ROWS,
               progress: bool = True, device: str | torch.device | None = None, threads: int | None = None) -> int:
    """Write ``operator`` applied to every row of ``source`` to ``out`` (float32 .npy).

    Rows go through ``operator.row_mapper`` in blocks (float32 for ReAlign, float64 for the
    others) on ``device`` (the operator's buffers are moved there). The rows are cut into
    chunks of ``chunk_rows`` and blocks within them by the row count alone, so the output does
    not depend on the thread count. On the CPU ``threads`` workers (default: torch's thread
    count; one in training mode, so a seeded noise stream stays in row order) take every
    ``threads``-th chunk, each with its own reused buffers, and write every block at its
    offset with ``pwrite``: no barrier between them, one computes while another writes, and
    nothing grows with N.
    """
    device = resolve_device(device)
    operator = operator.to(device)
    threads = default_threads() if threads is None else max(1, threads)
    if device.type != "cpu" or operator.training:
        threads = 1
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
              "shape": (source.num_rows, source.dim)}
    if uses_staging(device):  # an accelerator maps a whole (large) chunk at once
        chunk_rows = max(chunk_rows, DEVICE_CHUNK_ROWS)
    block_rows = chunk_rows if uses_staging(device) else APPLY_BLOCK_ROWS
    chunk_rows = max(chunk_rows, block_rows)  # each chunk is a shard of the source: not too many
    # A temp file next to ``out``, renamed into place only when every row is written.
    with atomic_file(out, fsync=False, mode=shared_mode(out)) as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.flush()  # the blocks below go straight to the descriptor
        _check_space(f.fileno(), source.num_rows * source.dim * 4, out)
        job = _AlignJob(operator.row_mapper(image), operator.method, source, f.fileno(), f.tell(),
                        chunk_rows, block_rows, device)
        with torch.no_grad(), tqdm(total=source.num_rows, unit="row", unit_scale=True,
                                   disable=not progress, desc="align") as job.bar:
            threads = min(threads, job.num_chunks)
            if threads > 1:
                written = run_workers(threads, lambda k: job.run(k, threads))
            else:
                with single_threaded_kernels() if device.type == "cpu" else contextlib.nullcontext():
                    written = [job.run(0, 1)]
        if job.failure is not None:
            raise job.failure[1]
        if sum(written) != source.num_rows:
            raise RevisionError(f"{source.name}: wrote {sum(written)} rows, expected {source.num_rows}")
    return source.num_rows


class _AlignJob:
    """One ``align_file`` run: chunk ``c`` is ``source.shard(c, num_chunks)``; a worker maps its
    chunks' blocks with its own buffers and writes each at its row's offset. After a failure
    no chunk past it is started, and the earliest failing chunk's error is the one raised."""

    def __init__(self, mapper, method: str, source, fd: int, data_offset: int, chunk_rows: int,
                 block_rows: int, device) -> None:
        self.mapper, self.method, self.source, self.fd = mapper, method, source, fd
        self.data_offset, self.row_bytes = data_offset, source.dim * 4
        self.block_rows, self.device = block_rows, device
        self.num_chunks = max(1, -(-source.num_rows // chunk_rows))
        self.failure: tuple[int, Exception] | None = None
        self.bar = None
        self._lock = threading.Lock()

    def run(self, k: int, threads: int) -> int:
        """Map and write chunks ``k, k + threads, …``; the number of rows written."""
        buffers = _Buffers(self.source.dim, self.block_rows, self.device)
        written = 0
        for c in range(k, self.num_chunks, threads):
            if self.failure is not None and self.failure[0] < c:
                break
            part = self.source if self.num_chunks == 1 else self.source.shard(c, self.num_chunks)
            out_row = shard_bounds(self.source.num_rows, c, self.num_chunks)[0]
            try:
                for first_row, chunk in part.chunks(max(1, part.num_rows)):
                    for lo in range(0, len(chunk), self.block_rows):
                        self.block(buffers, chunk[lo : lo + self.block_rows], first_row + lo, out_row + lo)
                    out_row += len(chunk)
                    written += len(chunk)
            except Exception as err:  # raised by align_file once every worker has stopped
                with self._lock:
                    if self.failure is None or c < self.failure[0]:
                        self.failure = (c, err)
                break
            with self._lock:
                self.bar.update(part.num_rows)
        return written

    def block(self, buffers: _Buffers, rows: np.ndarray, first_row: int, out_row: int) -> None:
        x = buffers.load(rows)
        aligned = _map_block(self.mapper, self.source.name, first_row, x, buffers.out(len(x)))
        host = buffers.to_host(aligned)
        if not _all_finite(aligned):
            row = out_row + int(np.flatnonzero(~np.isfinite(host).all(axis=1))[0])
            raise RevisionError(
                f"{self.source.name}: the {self.method} operator produced NaN/Inf for row {row}; no output written"
            )
        _pwrite_all(self.fd, host, self.data_offset + out_row * self.row_bytes)


class _Buffers:
    """Reused float32 input/output blocks on the device (and a pinned host copy for CUDA)."""

    def __init__(self, dim: int, rows: int, device: torch.device) -> None:
        self.device, self.on_cpu = device, not uses_staging(device)
        self.output = torch.empty(rows, dim, dtype=torch.float32, device=device)
        if self.on_cpu:  # rows are read in place and written from ``output``
            self.input, self.host = None, self.output
        else:
            self.input = torch.empty(rows, dim, dtype=torch.float32, device=device)
            self.host = torch.empty(rows, dim, dtype=torch.float32, pin_memory=device.type == "cuda")

    def load(self, rows: np.ndarray) -> torch.Tensor:
        """float32 rows as a float32 tensor on the device (a view on the CPU); float64 rows stay
        float64 (the operator's float64 map), float16 rows widen exactly to float32."""
        if rows.dtype == np.float64:
            return as_tensor(rows).to(self.device)
        if self.on_cpu:
            return as_tensor(rows) if rows.dtype == np.float32 else as_tensor(rows).to(torch.float32)
        staged = self.host[: len(rows)]  # pinned: the copy to the device is one DMA
        np.copyto(staged.numpy(), rows, casting="safe")
        x = self.input[: len(rows)]
        return x.copy_(staged, non_blocking=True)

    def out(self, rows: int) -> torch.Tensor:
        return self.output[:rows]

    def to_host(self, aligned: torch.Tensor) -> np.ndarray:
        if self.on_cpu:
            return aligned.to(torch.float32).numpy()
        host = self.host[: len(aligned)]
        host.copy_(aligned)  # synchronous: the pinned block is refilled by the next load
        return host.numpy()


def _map_block(mapper, name: str, first_row: int, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Validate the rows (float32 norms; float64 to tell overflow from NaN/Inf) and map them."""
    norm = torch.linalg.vector_norm(x, dim=1)
    if bad_row_masks(norm) is not None:
        x = x.to(torch.float64)
        norm = torch.linalg.vector_norm(x, dim=1)
        masks = bad_row_masks(norm)
        if masks is not None:
            raise_or_skip(name, first_row, masks, None, hint=NO_SKIP_HINT)
    return mapper(x, norm, out if x.dtype == torch.float32 else None)


def _all_finite(aligned: torch.Tensor) -> bool:
    return bool(torch.isfinite(aligned.sum()))


def _check_space(fd: int, size: int, out: Path) -> None:
    """Fail before any work when the output cannot fit. (Space is checked, not reserved with
    ``posix_fallocate``: on tmpfs that zero-fills every page up front, a quarter of the run.)"""
    fs = os.fstatvfs(fd)
    free = fs.f_bavail * fs.f_frsize
    if size > free:
        raise RevisionError(f"{out}: the output needs {size / 2**20:,.1f} MiB, only {free / 2**20:,.1f} MiB free there")


def _pwrite_all(fd: int, rows: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(rows)).cast("B")
    while view:
        done = os.pwrite(fd, view, offset)
        view, offset = view[done:], offset + done


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)  # before anything is read or written
    if args.out.suffix != ".npy":  # also catches `--out dir/`, which Path reads as `dir`
        raise RevisionError(f"--out {args.out}: the output is one .npy file; give a path ending in .npy")
    check_writable(args.out)
    if args.out.exists() and not args.overwrite:
        raise RevisionError(f"{args.out} exists; pass --overwrite to replace it")
    if Path(args.inputs).exists() and os.path.realpath(args.inputs) == os.path.realpath(args.out):
        raise RevisionError(f"--out {args.out} is the --in file; write to another path")
    source = open_source(args.inputs)
    if source.num_rows == 0:
        raise BadInputError(f"{source.name}: no rows to align")
    try:
        operator = load_operator(args.operator, expected_dim=source.dim, encoder_id=source.encoder_id)
    except ArtifactMismatchError as err:  # name the input too: either side may be the wrong one
        raise ArtifactMismatchError(f"--in {source.name}: {err}") from err
    with train_mode(operator, args.train_mode):
        rows = align_file(operator, source, args.out, args.image, args.chunk_rows, not args.no_progress, device)
    print(f"aligned {rows} rows with {operator.method} -> {args.out}")
    return 0

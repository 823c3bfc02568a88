"""Streaming, mergeable float64 moments of L2-normalised embeddings.

Every statistic is a plain sum (count, Σe, Σ‖e‖², optionally Σeeᵀ), so merging shards is
addition and multi-process fitting is one ``all_reduce``: stats of shards merged equal the
stats of the whole to fp64 round-off. Rows are validated and normalised on the way in
(``passes``): cache-sized float64 blocks, threads on the CPU, one stream on an accelerator,
so memory never depends on N.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from revision_plugin.align.device import all_reduce_sum_
from revision_plugin.align.passes import ZERO_NORM, normalized_blocks, reduce_pass
from revision_plugin.align.sources import DEFAULT_CHUNK_ROWS, ChunkSource
from revision_plugin.errors import BadInputError

logger = logging.getLogger(__name__)

__all__ = ["ZERO_NORM", "BadRows", "MomentStats", "accumulate", "check_dim", "normalized_blocks"]
MAX_REPORTED_BAD_ROWS = 20


@dataclass
class BadRows:
    """Rows excluded under ``skip_bad``: total count and the first few (row, reason)."""

    count: int = 0
    examples: list[tuple[str, int, str]] = field(default_factory=list)

    def add(self, name: str, rows: np.ndarray, reason: str) -> None:
        self.count += len(rows)
        room = MAX_REPORTED_BAD_ROWS - len(self.examples)
        self.examples.extend((name, int(r), reason) for r in rows[:room])

    def merge(self, other: BadRows) -> None:
        """Append ``other``'s report (a later shard's rows) to this one."""
        self.count += other.count
        room = MAX_REPORTED_BAD_ROWS - len(self.examples)
        self.examples.extend(other.examples[:room])

    def summary(self) -> str:
        shown = ", ".join(f"{n} row {r} ({why})" for n, r, why in self.examples)
        more = "" if self.count <= len(self.examples) else f", … {self.count - len(self.examples)} more"
        return f"skipped {self.count} bad rows: {shown}{more}"


def check_dim(source: ChunkSource, dim: int) -> None:
    if source.dim != dim:
        raise BadInputError(f"{source.name}: embedding dim {source.dim}, expected {dim}")


@dataclass
class MomentStats:
    """Sums over unit vectors: ``count``, ``sum`` (Σe), ``sq_norm`` (Σ‖e‖²), ``outer`` (Σeeᵀ)."""

    dim: int
    count: int = 0
    sum: torch.Tensor = None
    sq_norm: float = 0.0
    outer: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.sum is None:
            self.sum = torch.zeros(self.dim, dtype=torch.float64)

    @classmethod
    def empty(cls, dim: int, second_moment: bool = False, device: torch.device | str | None = None) -> MomentStats:
        outer = torch.zeros(dim, dim, dtype=torch.float64, device=device) if second_moment else None
        return cls(dim=dim, sum=torch.zeros(dim, dtype=torch.float64, device=device), outer=outer)

    def update_block(self, x: torch.Tensor, norm: torch.Tensor, inv_norm: torch.Tensor) -> None:
        """Add float64 raw rows ``x`` (norms ``norm``) as unit vectors ``x * inv_norm[:, None]``.

        ``sq_norm`` may hold a 0-d tensor on the stats' device while accumulating (no sync per
        block); ``to_cpu`` turns it back into a float.
        """
        self.count += x.shape[0]
        self.sum.addmv_(x.T, inv_norm)
        self.sq_norm = self.sq_norm + (norm * inv_norm).square().sum()
        if self.outer is not None:
            unit = x * inv_norm[:, None]
            self.outer.addmm_(unit.T, unit)

    def to_cpu(self) -> MomentStats:
        """The same sums as CPU float64 tensors and a float ``sq_norm``."""
        self.sum = self.sum.to("cpu", torch.float64)
        self.sq_norm = float(self.sq_norm)
        if self.outer is not None:
            self.outer = self.outer.to("cpu", torch.float64)
        return self

    def merge(self, other: MomentStats) -> MomentStats:
        if other.dim != self.dim:
            raise BadInputError(f"cannot merge stats of dim {other.dim} into dim {self.dim}")
        if (self.outer is None) != (other.outer is None):
            raise ValueError("cannot merge stats with and without second moments")
        outer = None if self.outer is None else self.outer + other.outer
        return MomentStats(self.dim, self.count + other.count, self.sum + other.sum,
                           self.sq_norm + other.sq_norm, outer)

    def all_reduce(self) -> MomentStats:
        """Sum over torch.distributed ranks (no-op outside a process group)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        scalars = torch.tensor([float(self.count), self.sq_norm], dtype=torch.float64)
        for t in (scalars, self.sum) + (() if self.outer is None else (self.outer,)):
            all_reduce_sum_(t)
        self.count, self.sq_norm = int(round(scalars[0].item())), float(scalars[1])
        return self

    def require_rows(self, name: str) -> None:
        if self.count == 0:
            raise BadInputError(f"{name}: no usable rows (empty input)")

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count

    @property
    def trace(self) -> float:
        """``E‖e − μ‖² = E‖e‖² − ‖μ‖²`` (eq. 20)."""
        return float(self.sq_norm) / self.count - float(self.mean @ self.mean)

    @property
    def covariance(self) -> torch.Tensor:
        """Population covariance ``E[eeᵀ] − μμᵀ``."""
        if self.outer is None:
            raise ValueError("these stats were accumulated without second moments")
        mean = self.mean
        return self.outer / self.count - torch.outer(mean, mean)

    def save(self, path: str | Path) -> None:
        tensors = {"sum": self.sum, "scalars": torch.tensor([float(self.count), self.sq_norm], dtype=torch.float64)}
        if self.outer is not None:
            tensors["outer"] = self.outer
        save_file(tensors, str(path), metadata={"format": "revision-moment-stats", "dim": str(self.dim)})

    @classmethod
    def load(cls, path: str | Path) -> MomentStats:
        try:
            tensors = load_file(str(path))
        except Exception as err:  # safetensors raises its own error type for bad files
            if isinstance(err, FileNotFoundError):
                raise
            raise BadInputError(f"{path}: not a readable safetensors file ({err})") from err
        if "sum" not in tensors or "scalars" not in tensors:
            raise BadInputError(f"{path}: not a moment-stats file (missing 'sum'/'scalars')")
        total, scalars, outer = tensors["sum"].to(torch.float64), tensors["scalars"].to(torch.float64), tensors.get("outer")
        dim = total.numel()
        if total.shape != (dim,) or scalars.shape != (2,) or (outer is not None and outer.shape != (dim, dim)):
            shapes = {k: tuple(v.shape) for k, v in tensors.items()}
            raise BadInputError(f"{path}: moment-stats tensors of shapes {shapes}; expected sum [d], scalars [2], outer [d, d]")
        values = [total, scalars] + ([] if outer is None else [outer])
        if not all(bool(torch.isfinite(v).all()) for v in values):
            raise BadInputError(f"{path}: moment stats hold NaN or Inf values")
        count, sq_norm = scalars.tolist()
        if count < 0 or count != round(count) or sq_norm < 0:
            raise BadInputError(f"{path}: invalid moment-stats count {count} / squared norm {sq_norm}")
        return cls(dim, int(round(count)), total, sq_norm, None if outer is None else outer.to(torch.float64))


def accumulate(
    source: ChunkSource,
    second_moment: bool = False,
    skip_bad: BadRows | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    device: torch.device | str | None = None,
    threads: int | None = None,
) -> MomentStats:
    """One streaming pass over ``source`` (this process's rows only); CPU float64 stats back."""
    stats = reduce_pass(
        source,
        lambda: MomentStats.empty(source.dim, second_moment, device),
        MomentStats.update_block,
        MomentStats.merge,
        skip_bad=skip_bad, chunk_rows=chunk_rows, progress=progress, device=device, threads=threads,
    )
    return stats.to_cpu()

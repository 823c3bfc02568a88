"""Fitting: the context a method's ``fit`` gets (bad-row policy, progress, chunking, device,
threads) and ``fit_operator``, the entry point behind ``revision fit``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from revision_plugin.align.base import Operator, get_operator_class
from revision_plugin.align.device import all_reduce_sum_
from revision_plugin.align.passes import normalized_blocks, reduce_pass
from revision_plugin.align.sources import DEFAULT_CHUNK_ROWS, ChunkSource, open_source
from revision_plugin.align.stats import BadRows, MomentStats, accumulate, check_dim
from revision_plugin.errors import ArtifactMismatchError
from revision_plugin.runtime import resolve_device

logger = logging.getLogger(__name__)

A = TypeVar("A")


@dataclass
class FitContext:
    """What a method's ``fit`` needs besides the data: bad-row policy, progress, chunking, and
    where the passes run (``device``: "cpu", "cuda", …; ``threads``: CPU worker threads, ``None``
    for torch's thread count). Statistics come back as CPU float64 whatever the device."""

    skip_bad: BadRows | None = None
    progress: bool = True
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    device: torch.device | str | None = None
    threads: int | None = None
    _passed: set[str] = field(default_factory=set, repr=False)

    def _bad_rows(self, source: ChunkSource) -> BadRows | None:
        """The report on a source's first pass; a throwaway one on later passes (same rows)."""
        if self.skip_bad is None:
            return None
        if source.name in self._passed:
            return BadRows()
        self._passed.add(source.name)
        return self.skip_bad

    def _bar(self, source: ChunkSource, desc: str):
        return tqdm(total=source.num_rows, desc=desc, unit="row", unit_scale=True,
                    disable=not self.progress, leave=False)

    def blocks(self, source: ChunkSource, desc: str) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One validated pass over this process's rows of ``source`` (see ``normalized_blocks``)."""
        with self._bar(source, desc) as bar:
            yield from normalized_blocks(source, self._bad_rows(source), self.chunk_rows, bar.update, self.device)

    def reduce(
        self,
        source: ChunkSource,
        desc: str,
        init: Callable[[], A],
        step: Callable[[A, torch.Tensor, torch.Tensor, torch.Tensor], None],
        merge: Callable[[A, A], A],
    ) -> A:
        """One validated pass folding every block into an accumulator (threaded on the CPU;
        see ``passes.reduce_pass``). ``init`` makes accumulators on ``self.device``."""
        with self._bar(source, desc) as bar:
            return reduce_pass(source, init, step, merge, skip_bad=self._bad_rows(source), chunk_rows=self.chunk_rows,
                               progress=bar.update, device=self.device, threads=self.threads)

    def moments(self, source: ChunkSource, desc: str, second_moment: bool = False) -> MomentStats:
        """Moments of ``source`` over all ranks."""
        with self._bar(source, desc) as bar:
            stats = accumulate(source, second_moment, self._bad_rows(source), bar.update, self.chunk_rows,
                               self.device, self.threads)
        stats.all_reduce()
        stats.require_rows(source.name)
        return stats

    def mean_over_ranks(self, total: torch.Tensor, count: int) -> torch.Tensor:
        """``Σ / n`` where both the vector sum and the count are summed over ranks."""
        packed = torch.cat([total.to("cpu", torch.float64), torch.tensor([float(count)], dtype=torch.float64)])
        all_reduce_sum_(packed)
        return packed[:-1] / packed[-1]


def fit_operator(
    method: str,
    text,
    image,
    *,
    encoder_id: str | None = None,
    skip_bad: bool = False,
    progress: bool = False,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    device: torch.device | str | None = None,
    threads: int | None = None,
    **options: Any,
) -> Operator:
    """Fit ``method`` on text (source) and image (target) embeddings.

    ``text``/``image``: ``.npy`` paths, feature-store directories, arrays or chunk sources.
    Under torch.distributed each rank reads its own contiguous slice of the rows and the
    statistics are all-reduced, so every rank ends with the same operator. ``device`` runs the
    passes there ("cuda": float32 rows staged to the GPU, float64 sums on it); the operator's
    buffers are CPU float64 either way. ``threads``: CPU worker threads (default: torch's).
    """
    cls = get_operator_class(method)
    device = resolve_device(device)
    options = cls.check_options(options)
    text_src, image_src = open_source(text), open_source(image)
    check_dim(image_src, text_src.dim)
    encoder_id = _resolve_encoder_id(encoder_id, text_src, image_src)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        text_src, image_src = text_src.shard(rank, world), image_src.shard(rank, world)
    ctx = FitContext(BadRows() if skip_bad else None, progress, chunk_rows, device, threads)
    operator = cls.fit(text_src, image_src, ctx, **options)
    operator.info.encoder_id = encoder_id
    if ctx.skip_bad is not None and ctx.skip_bad.count:
        logger.warning(ctx.skip_bad.summary())
        operator.info.options["skipped_bad_rows"] = ctx.skip_bad.count
    return operator.eval()


def _resolve_encoder_id(given: str | None, *sources: ChunkSource) -> str | None:
    ids = {s.encoder_id for s in sources if s.encoder_id is not None}
    described = ", ".join(f"{s.name}: {s.encoder_id!r}" for s in sources)
    if len(ids) > 1:
        raise ArtifactMismatchError(f"inputs come from different encoders ({described})")
    if given is not None and ids and given not in ids:
        raise ArtifactMismatchError(f"--encoder-id {given!r} is not the inputs' encoder ({described})")
    return given if given is not None else (ids.pop() if ids else None)

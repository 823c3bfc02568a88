"""Embed a corpus into a feature store: resumable, multi-process, nothing zero-filled.

Every input id ends in exactly one place: the store, or the store's ``rejected.jsonl`` with a
reason (empty text, missing/unreadable/corrupt image, non-finite embedding). A rerun after a
kill skips every id a previous run committed (stored or rejected) and continues. Process
``rank`` of ``world_size`` takes inputs ``rank, rank + world_size, ...``: a fixed split that
does not depend on what other ranks have done, so ranks never race for the same id, and a
resume may use a different number of processes.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from revision_plugin.encoders.base import Encoder
from revision_plugin.encoders.corpus import CorpusItem
from revision_plugin.errors import BadInputError
from revision_plugin.store import DEFAULT_SHARD_ROWS, StoreWriter, finalize_store, lock

logger = logging.getLogger(__name__)

# Testing hook: SIGKILL this process after N batches, to prove resumption on a real kill.
KILL_AFTER_BATCHES_ENV = "REVISION_EMBED_KILL_AFTER_BATCHES"
IMAGE_BATCHES_IN_FLIGHT = 2


@dataclass
class EmbedSummary:
    modality: str
    store_dir: Path
    assigned: int = 0  # inputs assigned to this rank
    already_done: int = 0  # of those, committed by an earlier run
    embedded: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def rows_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0


def embed_corpus(
    encoder: Encoder,
    items: Sequence[CorpusItem],
    store_dir: str | Path,
    modality: str,
    *,
    batch_size: int = 64,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    sort_by_length: bool = True,
    strict: bool = False,
    progress: bool = False,
    rank: int = 0,
    world_size: int = 1,
    image_workers: int = 4,
    finalize: bool = True,
) -> EmbedSummary:
    """Embed this rank's share of ``items`` into ``store_dir``; see the module docstring.

    With ``finalize`` the store is made readable at the end; under an initialised
    torch.distributed group all ranks wait for each other and rank 0 finalizes.
    """
    if modality not in ("text", "image"):
        raise ValueError(f"modality must be 'text' or 'image', not {modality!r}")
    store_dir = Path(store_dir)
    summary = EmbedSummary(modality, store_dir)
    started = time.perf_counter()
    encoder.prepare(modality)
    writer = StoreWriter(
        store_dir, encoder.encoder_id, encoder.dim, rank=rank, world_size=world_size,
        shard_rows=shard_rows, modality=modality, meta=encoder.info(), finalize=False,
    )
    try:
        _embed_into(writer, encoder, items, summary, modality, batch_size, sort_by_length, strict, progress,
                    rank, world_size, image_workers)
        summary.seconds = time.perf_counter() - started
        if finalize:
            _finalize_across_ranks(store_dir, rank, world_size)
    finally:
        # A single process drops its write lock however it ends; a distributed job's lock is
        # dropped by rank 0 once the store is finalized (or by the next run, as stale).
        if world_size == 1:
            lock.release(store_dir)
    return summary


def _embed_into(writer, encoder, items, summary, modality, batch_size, sort_by_length, strict, progress,
                rank, world_size, image_workers) -> None:
    store_dir = writer.store_dir
    mine = list(items[rank::world_size])
    todo = [item for item in mine if item.id not in writer.done_ids]
    summary.assigned, summary.already_done = len(mine), len(mine) - len(todo)
    if summary.already_done:
        logger.info("%s: %d of %d inputs already done, resuming", store_dir, summary.already_done, len(mine))

    def reject(item: CorpusItem, reason: str) -> None:
        if strict:
            raise BadInputError(f"{item.where}: id {item.id!r}: {reason} (rejected under --strict)")
        writer.reject(item.id, reason)
        summary.rejected += 1
        summary.reasons[reason.split(":")[0]] += 1

    def store(batch_items: list[CorpusItem], vectors) -> None:
        vectors = vectors.numpy() if hasattr(vectors, "numpy") else np.asarray(vectors)
        finite = np.isfinite(vectors).all(axis=1)
        for item in (it for it, ok in zip(batch_items, finite) if not ok):
            reject(item, "non-finite embedding: the encoder returned NaN/Inf")
        kept = [it.id for it, ok in zip(batch_items, finite) if ok]
        writer.add(kept, vectors[finite])
        summary.embedded += len(kept)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"embed {modality}", unit="row", disable=not progress, dynamic_ncols=True)
    kill_after = int(os.environ.get(KILL_AFTER_BATCHES_ENV, "0") or 0)
    batches_done = 0
    try:
        batches = (
            _text_batches(encoder, todo, batch_size, sort_by_length, reject)
            if modality == "text"
            else _image_batches(encoder, todo, batch_size, image_workers, reject)
        )
        for batch_items, vectors, handled in batches:
            if batch_items:
                store(batch_items, vectors)
            bar.update(handled)
            batches_done += 1
            if kill_after and batches_done >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    finally:
        bar.close()
        # Commit what was embedded even on error; finalizing waits for a clean finish.
        writer.close(finalize=False, release=False)


def _text_batches(encoder: Encoder, todo: list[CorpusItem], batch_size: int, sort_by_length: bool, reject):
    """Yield ``(items, vectors, inputs_handled)``; empty texts are rejected, never encoded."""
    valid = []
    for item in todo:
        if not isinstance(item.value, str):
            reject(item, f"empty text: value is {type(item.value).__name__}, not a string")
        elif not item.value.strip():
            reject(item, "empty text")
        else:
            valid.append(item)
    if len(todo) > len(valid):
        yield [], None, len(todo) - len(valid)
    if sort_by_length:
        # Longest first: batches of similar length waste little on padding, and an
        # out-of-memory batch size shows up in the first step instead of hours later.
        valid.sort(key=lambda item: encoder.text_length(item.value), reverse=True)
    for lo in range(0, len(valid), batch_size):
        batch = valid[lo : lo + batch_size]
        yield batch, encoder.encode_texts([item.value for item in batch]), len(batch)


def _image_batches(encoder: Encoder, todo: list[CorpusItem], batch_size: int, workers: int, reject):
    """Yield ``(items, vectors, inputs_handled)``; decoding runs ahead in a thread pool."""
    import torch

    batches = [todo[lo : lo + batch_size] for lo in range(0, len(todo), batch_size)]
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="revision-image") as pool:
        in_flight: deque = deque()

        def submit(k: int) -> None:
            in_flight.append([pool.submit(load_pixels, encoder, item.value) for item in batches[k]])

        for k in range(min(IMAGE_BATCHES_IN_FLIGHT, len(batches))):
            submit(k)
        for k, batch in enumerate(batches):
            results = [future.result() for future in in_flight.popleft()]
            if k + IMAGE_BATCHES_IN_FLIGHT < len(batches):
                submit(k + IMAGE_BATCHES_IN_FLIGHT)
            kept, pixels = [], []
            for item, (pixel_values, reason) in zip(batch, results):
                if reason is not None:
                    reject(item, reason)
                else:
                    kept.append(item)
                    pixels.append(pixel_values)
            vectors = encoder.encode_pixels(torch.cat(pixels)) if pixels else None
            yield kept, vectors, len(batch)


def load_pixels(encoder: Encoder, path: str):
    """``(pixel_values [1, 3, H, W], None)`` or ``(None, reason)`` for one image file."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        return None, f"image file not found: {path}"
    try:
        with Image.open(path) as image:
            # Decode fully now: a truncated file raises here instead of yielding grey pixels.
            image.load()
            image = image.convert("RGB")
    except UnidentifiedImageError:
        return None, f"unreadable image: not an image file: {path}"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return None, f"unreadable image: {type(err).__name__}: {err}: {path}"
    if min(image.size) < 1:
        return None, f"unreadable image: empty ({image.size[0]}x{image.size[1]}): {path}"
    try:
        return encoder.preprocess_images([image]), None
    except Exception as err:  # noqa: BLE001 - any processor failure is a property of this image
        return None, f"unreadable image: preprocessing failed ({type(err).__name__}: {err}): {path}"


def _finalize_across_ranks(store_dir: Path, rank: int, world_size: int) -> None:
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    if world_size > 1 and not distributed:
        # Other writers may still be running; whoever knows they are done calls finalize_store.
        logger.info("%s: rank %d done; finalize_store() once all %d writers are done", store_dir, rank, world_size)
        return
    if distributed:
        dist.barrier()
    if rank == 0:
        finalize_store(store_dir)
        lock.release(store_dir)
    if distributed:
        dist.barrier()

"""Embed a corpus into a feature store: resumable, multi-process, nothing zero-filled.

Every input id ends in exactly one place: the store, or the store's ``rejected.jsonl`` with a
reason (empty text, missing/unreadable/corrupt image, non-finite embedding). A rerun after a
kill continues where it stopped, keyed on content, not on ids alone:

* an id stored with the same content hash (text, or image file bytes) is skipped;
* an id stored with *other* content is an error naming it, unless ``update`` (``--update``):
  then its row is taken out and re-embedded (``StoreWriter.drop``);
* an id rejected by an earlier run is tried again (a fixed ``--image-root``, a repaired file);
* the store holds one encoder: a model with another fingerprint (``encoders/fingerprint.py``)
  is refused, even when its directory has the same name. Rows written before fingerprints
  and content hashes were recorded cannot be checked: the run refuses to add to them
  unless ``update``, which re-embeds them all (every one must be in the input).

Process
``rank`` of ``world_size`` takes inputs ``rank, rank + world_size, ...``: a fixed split that
does not depend on what other ranks have done, so ranks never race for the same id, and a
resume may use a different number of processes.
"""

from __future__ import annotations

import io
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
from revision_plugin.encoders.corpus import CorpusItem, bytes_hash, content_hash
from revision_plugin.errors import BadInputError, RevisionError
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
    already_done: int = 0  # of those, stored by an earlier run with the same content
    retried: int = 0  # of those, rejected by an earlier run and tried again
    updated: int = 0  # of those, stored by an earlier run with other content, re-embedded (update)
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
    update: bool = False,
) -> EmbedSummary:
    """Embed this rank's share of ``items`` into ``store_dir``; see the module docstring.

    With ``finalize`` the store is made readable at the end; under an initialised
    torch.distributed group all ranks wait for each other and rank 0 finalizes.
    """
    if modality not in ("text", "image"):
        raise ValueError(f"modality must be 'text' or 'image', not {modality!r}")
    if update and world_size != 1:
        raise RevisionError("--update re-embeds changed rows in one process; run it without torchrun")
    store_dir = Path(store_dir)
    summary = EmbedSummary(modality, store_dir)
    started = time.perf_counter()
    encoder.prepare(modality)
    writer = StoreWriter(
        store_dir, encoder.encoder_id, encoder.dim, rank=rank, world_size=world_size,
        shard_rows=shard_rows, modality=modality, meta=encoder.info(), finalize=False,
        encoder_fingerprint=encoder.fingerprint(modality), adopt_unfingerprinted=update,
    )
    try:
        _embed_into(writer, encoder, items, summary, modality, batch_size, sort_by_length, strict, progress,
                    rank, world_size, image_workers, update)
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
                rank, world_size, image_workers, update) -> None:
    store_dir = writer.store_dir
    mine = list(items[rank::world_size])
    try:
        problem = _reconcile(writer, items, mine, modality, update, image_workers, summary)
    except BaseException:
        writer.close(finalize=False, release=False)
        raise
    if _any_rank(problem is not None, encoder.device):
        # Every rank stops here, before writing anything: the job's shared lock can go now.
        writer.close(finalize=False, release=rank == 0)
        raise problem or RevisionError(f"{store_dir}: another process of this run found inputs changed since they "
                                       "were embedded (see its error); nothing was embedded")
    todo = [item for item in mine if item.id not in writer.done_ids]
    summary.assigned, summary.already_done = len(mine), len(mine) - len(todo)
    summary.retried = sum(1 for item in todo if item.id in writer.rejected)
    if summary.already_done or summary.retried:
        logger.info("%s: %d of %d inputs already done, %d rejected before and tried again", store_dir,
                    summary.already_done, len(mine), summary.retried)

    def reject(item: CorpusItem, reason: str) -> None:
        if strict:
            raise BadInputError(f"{item.where}: id {item.id!r}: {reason} (rejected under --strict)")
        writer.reject(item.id, reason)
        summary.rejected += 1
        summary.reasons[reason.split(":")[0]] += 1

    def store(batch_items: list[CorpusItem], vectors, hashes: list[str]) -> None:
        vectors = vectors.numpy() if hasattr(vectors, "numpy") else np.asarray(vectors)
        finite = np.isfinite(vectors).all(axis=1)
        for item in (it for it, ok in zip(batch_items, finite) if not ok):
            reject(item, "non-finite embedding: the encoder returned NaN/Inf")
        kept = [it.id for it, ok in zip(batch_items, finite) if ok]
        writer.add(kept, vectors[finite], hashes=[h for h, ok in zip(hashes, finite) if ok])
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
        for batch_items, vectors, handled, hashes in batches:
            if batch_items:
                store(batch_items, vectors, hashes)
            bar.update(handled)
            batches_done += 1
            if kill_after and batches_done >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
    finally:
        bar.close()
        # Commit what was embedded even on error; finalizing waits for a clean finish.
        writer.close(finalize=False, release=False)


def _reconcile(writer, items, mine, modality, update, workers, summary) -> BadInputError | None:
    """Compare this rank's inputs stored before with what they hold now; under ``update`` take
    changed rows out (to be re-embedded), else return the error that stops the run."""
    stored = writer.stored
    if not stored:
        return None
    done = [item for item in mine if item.id in stored]
    if modality == "text":
        now = [content_hash("text", item.value) for item in done]
    else:
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="revision-hash") as pool:
            now = list(pool.map(lambda item: content_hash("image", item.value), done))
    changed = [(item, content) for item, content in zip(done, now) if stored[item.id] is None or stored[item.id] != content]
    if changed and not update:
        first, content = changed[0]
        if stored[first.id] is None:
            why = "was stored without a content hash (by an older revision_plugin), so whether it changed is unknown"
        elif content is None:
            why = f"is stored, but its image file {first.value} is now missing or unreadable"
        else:
            why = f"is stored with other {'text' if modality == 'text' else 'image content'} than it has now"
        return BadInputError(
            f"{first.where}: id {first.id!r} {why} ({len(changed)} such input(s) for {writer.store_dir}); pass "
            "--update to re-embed changed inputs, or write to another --out"
        )
    if update:
        in_input = {item.id for item in items}
        left = [item_id for item_id in writer.unfingerprinted if item_id not in in_input]
        if left:
            raise RevisionError(
                f"{writer.store_dir}: {len(left)} row(s) written without an encoder fingerprint are not in this input "
                f"(e.g. {left[0]!r}), so --update cannot re-embed them; give the complete input or write to another --out"
            )
        drop = {item.id for item, _ in changed} | set(writer.unfingerprinted)
        writer.drop(drop)
        summary.updated = len(drop)
    return None


def _any_rank(flag: bool, device) -> bool:
    """``flag`` of any process of a torch.distributed run (so that all stop together); NCCL
    reduces on this rank's GPU (the encoder's device)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    import torch

    device = torch.device(device)
    if dist.get_backend() != "nccl":
        device = torch.device("cpu")
    elif device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    value = torch.tensor([int(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _text_batches(encoder: Encoder, todo: list[CorpusItem], batch_size: int, sort_by_length: bool, reject):
    """Yield ``(items, vectors, inputs_handled, content_hashes)``; empty texts are rejected, never encoded."""
    valid = []
    for item in todo:
        if not isinstance(item.value, str):
            reject(item, f"empty text: value is {type(item.value).__name__}, not a string")
        elif not item.value.strip():
            reject(item, "empty text")
        else:
            valid.append(item)
    if len(todo) > len(valid):
        yield [], None, len(todo) - len(valid), []
    if sort_by_length:
        # Longest first: batches of similar length waste little on padding, and an
        # out-of-memory batch size shows up in the first step instead of hours later.
        valid.sort(key=lambda item: encoder.text_length(item.value), reverse=True)
    for lo in range(0, len(valid), batch_size):
        batch = valid[lo : lo + batch_size]
        yield (batch, encoder.encode_texts([item.value for item in batch]), len(batch),
               [content_hash("text", item.value) for item in batch])


def _image_batches(encoder: Encoder, todo: list[CorpusItem], batch_size: int, workers: int, reject):
    """Yield ``(items, vectors, inputs_handled, content_hashes)``; decoding runs ahead in a thread pool."""
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
            kept, pixels, hashes = [], [], []
            for item, (pixel_values, reason, content) in zip(batch, results):
                if reason is not None:
                    reject(item, reason)
                else:
                    kept.append(item)
                    pixels.append(pixel_values)
                    hashes.append(content)
            vectors = encoder.encode_pixels(torch.cat(pixels)) if pixels else None
            yield kept, vectors, len(batch), hashes


def load_pixels(encoder: Encoder, path: str):
    """``(pixel_values [1, 3, H, W], None, content_hash)`` or ``(None, reason, None)`` for one
    image file; the file is read once, for both the hash and the pixels."""
    pixels, reason, data = _load_pixels(encoder, path)
    return pixels, reason, None if reason is not None else bytes_hash(data)


def _load_pixels(encoder: Encoder, path: str):
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        return None, f"image file not found: {path}", None
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        return None, f"unreadable image: {type(err).__name__}: {err}: {path}", None
    try:
        with Image.open(io.BytesIO(data)) as image:
            # Decode fully now: a truncated file raises here instead of yielding grey pixels.
            image.load()
            image = image.convert("RGB")
    except UnidentifiedImageError:
        return None, f"unreadable image: not an image file: {path}", None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return None, f"unreadable image: {type(err).__name__}: {err}: {path}", None
    if min(image.size) < 1:
        return None, f"unreadable image: empty ({image.size[0]}x{image.size[1]}): {path}", None
    try:
        return encoder.preprocess_images([image]), None, data
    except Exception as err:  # noqa: BLE001 - any processor failure is a property of this image
        return None, f"unreadable image: preprocessing failed ({type(err).__name__}: {err}): {path}", None


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

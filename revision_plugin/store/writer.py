"""Write a feature store shard by shard, so that a killed writer resumes without gaps or duplicates.

Every ``commit`` writes the shard's ids file, then its ``.npy`` (each by temp file + rename),
then rewrites this writer's journal ``parts/rank-XXXXX.json``. The journal is the commit
point: files of a shard that never reached the journal are leftovers of a kill and get
overwritten by the next run, which reuses their name. A writer opened on an existing store
reads every journal, so ``done_ids`` tells its caller what to skip.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from revision_plugin.errors import ArtifactMismatchError, BadInputError, RevisionError
from revision_plugin.store import layout, lock
from revision_plugin.store.journal import read_commit_ids, read_journals

logger = logging.getLogger(__name__)

DEFAULT_SHARD_ROWS = 65536
UNIT_NORM_TOLERANCE = 1e-3


class StoreWriter:
    """Append ``(ids, vectors)`` to the store at ``store_dir``; use as a context manager.

    ``rank``/``world_size``: one writer per process of a distributed run; each owns its
    journal and shard names. With ``finalize=None`` the store is finalized on a clean exit
    when ``world_size == 1``; distributed callers finalize once, on one rank, after a barrier
    (``revision_plugin.store.finalize_store``).
    """

    def __init__(
        self,
        store_dir: str | Path,
        encoder_id: str,
        dim: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shard_rows: int = DEFAULT_SHARD_ROWS,
        modality: str | None = None,
        meta: dict | None = None,
        finalize: bool | None = None,
        fsync: bool = True,
    ) -> None:
        if not encoder_id:
            raise ValueError("encoder_id must be a non-empty string")
        if dim <= 0 or shard_rows <= 0:
            raise ValueError(f"dim ({dim}) and shard_rows ({shard_rows}) must be positive")
        self.store_dir = Path(store_dir)
        self.encoder_id, self.dim, self.rank = encoder_id, int(dim), int(rank)
        self.shard_rows, self.modality, self.meta = int(shard_rows), modality, dict(meta or {})
        self.finalize_on_close = (world_size == 1) if finalize is None else finalize
        self.fsync = fsync
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.world_size = int(world_size)
        created = lock.acquire(self.store_dir)  # before reading journals: another job may be mid-commit
        try:
            self._open_journals()
        except BaseException:
            if created:
                lock.release(self.store_dir)
            raise

    def _open_journals(self) -> None:
        self._check_existing_store()
        journals = read_journals(self.store_dir)
        for journal in journals.values():
            self._check_compatible(journal, layout.part_path(self.store_dir, journal["rank"]))
        self._journal = journals.get(self.rank) or self._new_journal()
        # Ids committed by any writer so far (stored or rejected): skipped by resuming callers,
        # refused by add() so one writer never stores an id twice.
        self.done_ids: set[str] = set()
        for journal in journals.values():
            for commit in journal["commits"]:
                ids, rejected = read_commit_ids(self.store_dir, commit)
                self.done_ids.update(ids)
                self.done_ids.update(r["id"] for r in rejected)
        self.resumed_count = len(self.done_ids)
        self._pending_ids: list[str] = []
        self._pending_vectors: list[np.ndarray] = []
        self._pending_rows = 0
        self._pending_rejected: list[dict] = []
        self.rows_written = 0
        self.rejected_count = 0
        layout.remove_stale_temp_files(self.store_dir / layout.SHARD_DIR, f"r{self.rank:05d}-")
        layout.remove_stale_temp_files(self.store_dir / layout.PART_DIR, f"rank-{self.rank:05d}")
        if self.resumed_count:
            logger.info("%s: resuming; %d ids already committed", self.store_dir, self.resumed_count)


    # ------------------------------------------------------------------ public API

    def add(self, ids: Sequence[str], vectors) -> None:
        """Queue rows; a shard is committed each time ``shard_rows`` rows are pending."""
        ids = list(ids)
        if hasattr(vectors, "detach"):
            vectors = vectors.detach().float().cpu().numpy()
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise BadInputError(f"{self.store_dir}: vectors of shape {vectors.shape}, expected [n, {self.dim}]")
        if len(ids) != len(vectors):
            raise BadInputError(f"{self.store_dir}: {len(ids)} ids for {len(vectors)} vectors")
        vectors = vectors.astype(layout.DTYPE, copy=False)
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            bad = ids[int(np.flatnonzero(~finite)[0])]
            raise BadInputError(f"{self.store_dir}: vector for id {bad!r} has NaN or Inf values")
        self._claim(ids)
        self._pending_ids.extend(ids)
        self._pending_vectors.append(np.array(vectors, dtype=layout.DTYPE, order="C"))
        self._pending_rows += len(ids)
        if self._pending_rows >= self.shard_rows:
            self.commit()

    def reject(self, item_id: str, reason: str) -> None:
        """Record an input that must not be stored (unreadable image, empty text)."""
        self._claim([item_id])
        self._pending_rejected.append({"id": item_id, "reason": str(reason)})

    def commit(self) -> None:
        """Write pending rows/rejections as one shard and record it in the journal."""
        if not self._pending_rows and not self._pending_rejected:
            return
        seq = len(self._journal["commits"])
        stem = layout.shard_stem(self.rank, seq)
        shard_dir = self.store_dir / layout.SHARD_DIR
        layout.atomic_write_json(
            shard_dir / f"{stem}.ids.json",
            {"ids": self._pending_ids, "rejected": self._pending_rejected},
            self.fsync,
        )
        normalized, sha256 = True, None
        if self._pending_rows:
            data = np.concatenate(self._pending_vectors) if len(self._pending_vectors) > 1 else self._pending_vectors[0]
            norms = np.linalg.norm(data.astype(np.float64), axis=1)
            normalized = bool(np.all(np.abs(norms - 1.0) < UNIT_NORM_TOLERANCE))
            sha256 = layout.atomic_write_npy(shard_dir / f"{stem}.npy", data, self.fsync)
        commit = {
            "stem": stem,
            "rows": self._pending_rows,
            "rejected": len(self._pending_rejected),
            "normalized": normalized,
        }
        if sha256 is not None:
            commit["sha256"] = sha256
        self._journal["commits"].append(commit)
        layout.atomic_write_json(layout.part_path(self.store_dir, self.rank), self._journal, self.fsync)
        logger.debug("%s: committed %s (%d rows)", self.store_dir, stem, self._pending_rows)
        self.rows_written += self._pending_rows
        self.rejected_count += len(self._pending_rejected)
        self._pending_ids, self._pending_vectors, self._pending_rows = [], [], 0
        self._pending_rejected = []

    def close(self, finalize: bool | None = None, release: bool | None = None) -> None:
        """Commit what is pending; finalize (default: ``finalize`` of the constructor); drop the
        write lock (default: single-process writers; a distributed job's finalizer drops it)."""
        try:
            self.commit()
            if self.finalize_on_close if finalize is None else finalize:
                from revision_plugin.store.finalize import finalize_store

                finalize_store(self.store_dir)
        finally:
            if self.world_size == 1 if release is None else release:
                lock.release(self.store_dir)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # Pending rows were validated when added, so they are kept even if the caller failed
        # later; the store is only finalized (made readable) after a clean exit.
        self.close(finalize=None if exc_type is None else False)

    # ------------------------------------------------------------------ internals

    def _claim(self, ids: Iterable[str]) -> None:
        seen: set[str] = set()
        for item_id in ids:
            if not isinstance(item_id, str) or not item_id:
                raise BadInputError(f"{self.store_dir}: ids must be non-empty strings, got {item_id!r}")
            if item_id in self.done_ids or item_id in seen:
                raise BadInputError(f"{self.store_dir}: duplicate id {item_id!r}")
            seen.add(item_id)
        self.done_ids.update(seen)

    def _new_journal(self) -> dict:
        return {
            "format": layout.FORMAT_NAME,
            "format_version": layout.FORMAT_VERSION,
            "encoder_id": self.encoder_id,
            "dim": self.dim,
            "dtype": "float32",
            "modality": self.modality,
            "meta": self.meta,
            "rank": self.rank,
            "commits": [],
        }

    def _check_existing_store(self) -> None:
        manifest_path = self.store_dir / layout.MANIFEST
        if manifest_path.exists():
            self._check_compatible(layout.read_json(manifest_path), manifest_path)

    def _check_compatible(self, described: dict, path: Path) -> None:
        if described.get("format") != layout.FORMAT_NAME:
            raise RevisionError(f"{path}: not a revision feature store")
        if described.get("format_version", 0) > layout.FORMAT_VERSION:
            raise RevisionError(
                f"{path}: store format version {described['format_version']} is newer than this "
                f"revision_plugin understands ({layout.FORMAT_VERSION}); upgrade revision_plugin"
            )
        if described.get("encoder_id") != self.encoder_id or described.get("dim") != self.dim:
            raise ArtifactMismatchError(
                f"{path}: store holds {described.get('encoder_id')!r} embeddings of dim "
                f"{described.get('dim')}, refusing to add {self.encoder_id!r} embeddings of dim "
                f"{self.dim}; write to another directory"
            )
        if self.modality and described.get("modality") not in (None, self.modality):
            raise ArtifactMismatchError(
                f"{path}: store holds {described.get('modality')} embeddings, not {self.modality}"
            )


def write_store(
    store_dir: str | Path,
    ids: Sequence[str],
    vectors,
    encoder_id: str,
    *,
    shard_rows: int = DEFAULT_SHARD_ROWS,
    modality: str | None = None,
    fsync: bool = True,
) -> Path:
    """Write ``ids``/``vectors`` [n, dim] as a complete store in one call; returns the directory."""
    if hasattr(vectors, "detach"):
        vectors = vectors.detach().float().cpu().numpy()
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise BadInputError(f"{store_dir}: vectors of shape {vectors.shape}, expected [n, dim]")
    if len(ids) != len(vectors):
        raise BadInputError(f"{store_dir}: {len(ids)} ids for {len(vectors)} vectors")
    with StoreWriter(
        store_dir, encoder_id, vectors.shape[1], shard_rows=shard_rows, modality=modality, fsync=fsync
    ) as writer:
        for lo in range(0, len(vectors), shard_rows):
            writer.add(ids[lo : lo + shard_rows], vectors[lo : lo + shard_rows])
    return Path(store_dir)

"""Write a feature store shard by shard, so that a killed writer resumes without gaps or duplicates.

Every ``commit`` writes the shard's ids file, then its ``.npy`` (each by temp file + rename),
then rewrites this writer's journal ``parts/rank-XXXXX.json``. The journal is the commit
point: files of a shard that never reached the journal are leftovers of a kill and get
overwritten by the next run, which reuses their name. A writer opened on an existing store
reads every journal: ``stored`` (id -> content hash of its input, ``None`` where none was
recorded) tells its caller what to skip or compare, ``rejected`` what an earlier run refused
(to be retried: a rejection is not a result), and ``drop(ids)`` takes stored rows out again
(``revision embed --update``). One store holds one encoder: a writer whose
``encoder_fingerprint`` differs from the one the stored rows were written with is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from revision_plugin.errors import ArtifactMismatchError, BadInputError, RevisionError
from revision_plugin.store import layout, lock
from revision_plugin.store.journal import check_shard_file, live_commits, read_commit, read_journals, shard_file

logger = logging.getLogger(__name__)

DEFAULT_SHARD_ROWS = 65536
UNIT_NORM_TOLERANCE = 1e-3


class StoreWriter:
    """Append ``(ids, vectors)`` to the store at ``store_dir``; use as a context manager.

    ``rank``/``world_size``: one writer per process of a distributed run; each owns its
    journal and shard names. With ``finalize=None`` the store is finalized on a clean exit
    when ``world_size == 1``; distributed callers finalize once, on one rank, after a barrier
    (``revision_plugin.store.finalize_store``).

    ``encoder_fingerprint`` (``revision_plugin.encoders.fingerprint``) identifies the model by
    its files, not its name; rows written under another fingerprint refuse the writer
    (``ArtifactMismatchError``). Rows written without one (older stores, ``write_store``) are
    listed in ``unfingerprinted``; the writer refuses them too unless ``adopt_unfingerprinted``
    (``--update``: the caller re-embeds or drops them).
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
        encoder_fingerprint: str | None = None,
        adopt_unfingerprinted: bool = False,
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
        self.encoder_fingerprint = encoder_fingerprint
        self.adopt_unfingerprinted = adopt_unfingerprinted
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
        self._journals = journals
        self._journal = journals.get(self.rank) or self._new_journal()
        # Ids stored by any writer so far (id -> content hash): skipped or compared by resuming
        # callers, refused by add() so one store never holds an id twice. Rejections are not
        # results: ``rejected`` (id -> reason) lists them for the caller to retry.
        self.stored: dict[str, str | None] = {}
        self.rejected: dict[str, str] = {}
        self._commit_of: dict[str, str] = {}  # stored id -> stem of its live commit
        self._live: dict[str, tuple[int, dict]] = {}
        self.unfingerprinted: list[str] = []  # stored ids written without an encoder fingerprint
        last_run = 0
        for rank, commit in live_commits(journals):
            ids, hashes, rejected = read_commit(self.store_dir, commit)
            self._live[commit["stem"]] = (rank, commit)
            last_run = max(last_run, int(commit.get("run", 0)))
            for item_id, content_hash in zip(ids, hashes):
                self.stored[item_id] = content_hash
                self._commit_of[item_id] = commit["stem"]
            for record in rejected:
                self.rejected[record["id"]] = record["reason"]
            if ids and journals[rank].get("encoder_fingerprint") is None:
                self.unfingerprinted.extend(ids)
        for item_id in self.stored:
            self.rejected.pop(item_id, None)  # rejected once, stored by a later run
        self._check_fingerprints(journals)
        # This rank's journal is stamped with the writer's fingerprint on its next commit, once
        # it holds no live rows written without one (those stay marked until dropped).
        self._own_legacy_stems = (
            {stem for stem, (rank, commit) in self._live.items() if rank == self.rank and commit["rows"]}
            if self._journal.get("encoder_fingerprint") is None else set()
        )
        # Runs are numbered so that finalize keeps the latest rejection of an id retried twice.
        self.run = last_run + 1
        # Ids claimed so far: stored ones plus this writer's additions and rejections.
        self.done_ids: set[str] = set(self.stored)
        self.resumed_count = len(self.stored)
        self._pending_ids: list[str] = []
        self._pending_hashes: list[str | None] = []
        self._pending_vectors: list[np.ndarray] = []
        self._pending_rows = 0
        self._pending_rejected: list[dict] = []
        self._pending_supersedes: list[str] = []
        self.rows_written = 0
        self.rejected_count = 0
        layout.remove_stale_temp_files(self.store_dir / layout.SHARD_DIR, f"r{self.rank:05d}-")
        layout.remove_stale_temp_files(self.store_dir / layout.PART_DIR, f"rank-{self.rank:05d}")
        if self.resumed_count:
            logger.info("%s: resuming; %d ids already stored, %d rejected before (retried)",
                        self.store_dir, self.resumed_count, len(self.rejected))

    def _check_fingerprints(self, journals: dict[int, dict]) -> None:
        """One store, one encoder: every journal with stored rows names this writer's model."""
        if self.encoder_fingerprint is None:
            return
        with_rows = {rank for rank, commit in self._live.values() if commit["rows"]}
        for rank in sorted(with_rows):
            theirs = journals[rank].get("encoder_fingerprint")
            if theirs is not None and theirs != self.encoder_fingerprint:
                raise ArtifactMismatchError(
                    f"{self.store_dir}: holds {self.encoder_id!r} embeddings of another model (encoder fingerprint "
                    f"{theirs[:12]}, this model's is {self.encoder_fingerprint[:12]}: its weights, config or encoding "
                    "settings differ, whatever the directory is called); one store holds one encoder: write to "
                    "another --out"
                )
        if self.unfingerprinted and not self.adopt_unfingerprinted:
            raise RevisionError(
                f"{self.store_dir}: {len(self.unfingerprinted)} stored row(s) (e.g. {self.unfingerprinted[0]!r}) were "
                "written without an encoder fingerprint (by an older revision_plugin, or write_store), so adding to "
                "this store cannot check they come from the same model; pass --update to re-embed them with this "
                "model, or write to another --out"
            )

    # ------------------------------------------------------------------ public API

    def add(self, ids: Sequence[str], vectors, hashes: Sequence[str | None] | None = None) -> None:
        """Queue rows; a shard is committed each time ``shard_rows`` rows are pending.

        ``hashes``: the content hash of each row's input, recorded so that a resume can tell
        an unchanged input from an edited one."""
        ids = list(ids)
        hashes = [None] * len(ids) if hashes is None else list(hashes)
        if len(hashes) != len(ids):
            raise BadInputError(f"{self.store_dir}: {len(hashes)} content hashes for {len(ids)} ids")
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
        self._pending_hashes.extend(hashes)
        self._pending_vectors.append(np.array(vectors, dtype=layout.DTYPE, order="C"))
        self._pending_rows += len(ids)
        if self._pending_rows >= self.shard_rows:
            self.commit()

    def reject(self, item_id: str, reason: str) -> None:
        """Record an input that must not be stored (unreadable image, empty text)."""
        self._claim([item_id])
        self._pending_rejected.append({"id": item_id, "reason": str(reason), "run": self.run})

    def drop(self, ids: Iterable[str]) -> None:
        """Take stored rows out of the store (to re-embed them: ``revision embed --update``).

        Each shard holding one of ``ids`` is rewritten without those rows as one new commit
        that supersedes the old one, so every step is atomic: after a kill the store holds
        either the old shard or its copy, never both, never neither. Single process only
        (other ranks could be rewriting the same shard)."""
        wanted = {i for i in ids if i in self.stored}
        if not wanted:
            return
        if self.world_size != 1:
            raise RevisionError(f"{self.store_dir}: rows can only be replaced by a single process (not under torchrun)")
        self.commit()
        for stem in sorted({self._commit_of[i] for i in wanted}):
            _, old = self._live.pop(stem)
            self._own_legacy_stems.discard(stem)
            old_ids, old_hashes, old_rejected = read_commit(self.store_dir, old)
            keep = [k for k, item_id in enumerate(old_ids) if item_id not in wanted]
            if keep:
                path = shard_file(self.store_dir, stem)
                check_shard_file(path, old["rows"], self.dim)
                vectors = np.load(path, mmap_mode="r")[keep]
                self._pending_ids = [old_ids[k] for k in keep]
                self._pending_hashes = [old_hashes[k] for k in keep]
                self._pending_vectors, self._pending_rows = [np.ascontiguousarray(vectors)], len(keep)
            # Rejections of the old shard stay history (with their run); only stored rows move.
            self._pending_rejected = [r for r in old_rejected if r["id"] not in self.stored]
            self._pending_supersedes = [stem]
            self.commit()
            self.rows_written -= len(keep)
            self.rejected_count -= len(self._last_commit_rejected)
            for item_id in old_ids:
                if item_id in wanted:
                    del self.stored[item_id], self._commit_of[item_id]
                    self.done_ids.discard(item_id)
                else:
                    self._commit_of[item_id] = self._journal["commits"][-1]["stem"]
        self.unfingerprinted = [item_id for item_id in self.unfingerprinted if item_id not in wanted]
        logger.info("%s: %d stored row(s) taken out to be re-embedded", self.store_dir, len(wanted))

    def commit(self) -> None:
        """Write pending rows/rejections as one shard and record it in the journal."""
        if not self._pending_rows and not self._pending_rejected and not self._pending_supersedes:
            return
        seq = len(self._journal["commits"])
        stem = layout.shard_stem(self.rank, seq)
        shard_dir = self.store_dir / layout.SHARD_DIR
        layout.atomic_write_json(
            shard_dir / f"{stem}.ids.json",
            {"ids": self._pending_ids, "hashes": self._pending_hashes, "rejected": self._pending_rejected},
            self.fsync,
        )
        normalized, sha256, probe = True, None, None
        if self._pending_rows:
            data = np.concatenate(self._pending_vectors) if len(self._pending_vectors) > 1 else self._pending_vectors[0]
            norms = np.linalg.norm(data.astype(np.float64), axis=1)
            normalized = bool(np.all(np.abs(norms - 1.0) < UNIT_NORM_TOLERANCE))
            sha256 = layout.atomic_write_npy(shard_dir / f"{stem}.npy", data, self.fsync)
            probe = layout.shard_probe(data[0], data[-1])
        commit = {
            "stem": stem,
            "rows": self._pending_rows,
            "rejected": len(self._pending_rejected),
            "normalized": normalized,
            "run": self.run,
        }
        if sha256 is not None:
            commit["sha256"], commit["probe"] = sha256, probe
        if self._pending_supersedes:
            commit["supersedes"] = self._pending_supersedes
        self._journal["commits"].append(commit)
        if self.encoder_fingerprint is not None and not self._own_legacy_stems:
            self._journal["encoder_fingerprint"] = self.encoder_fingerprint
        elif self.encoder_fingerprint is None and self._pending_rows:
            self._journal["encoder_fingerprint"] = None  # rows of an unnamed model: the journal can vouch for none
        layout.atomic_write_json(layout.part_path(self.store_dir, self.rank), self._journal, self.fsync)
        logger.debug("%s: committed %s (%d rows)", self.store_dir, stem, self._pending_rows)
        self.rows_written += self._pending_rows
        self.rejected_count += len(self._pending_rejected)
        self._live[stem] = (self.rank, commit)
        self._last_commit_rejected = self._pending_rejected
        self._pending_ids, self._pending_hashes, self._pending_vectors, self._pending_rows = [], [], [], 0
        self._pending_rejected, self._pending_supersedes = [], []

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
            "encoder_fingerprint": self.encoder_fingerprint,
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

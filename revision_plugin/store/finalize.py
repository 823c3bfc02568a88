"""Merge writer journals into ``manifest.json`` + the id index + ``rejected.jsonl``.

Run once all writers are done (single process: on ``StoreWriter`` exit; distributed: one
rank after a barrier). Idempotent: re-running rebuilds the same content. Each run writes a
new ``index-<token>/`` directory (built under a temp name, then renamed) before the manifest
that names it, so a reader never pairs a manifest with an index of another generation.

Only live commits count (``journal.live_commits``): files of superseded ones are deleted once
the new manifest is in place. A rejection is a past attempt: an id stored by any commit is
not listed as rejected, and an id rejected by several runs keeps its latest reason.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from revision_plugin import __version__
from revision_plugin.errors import ArtifactMismatchError, BadInputError, RevisionError
from revision_plugin.store import layout
from revision_plugin.store.id_index import DuplicateIdsError, build_index
from revision_plugin.store.journal import (
    check_shard_file,
    live_commits,
    read_commit_ids,
    read_journals,
    shard_file,
    superseded_stems,
)

logger = logging.getLogger(__name__)


def finalize_store(store_dir: str | Path) -> dict:
    """Validate every committed shard, build the id index and write the manifest; return it."""
    store_dir = Path(store_dir)
    journals = read_journals(store_dir)
    if not journals:
        raise RevisionError(f"{store_dir}: nothing to finalize (no writer journals under {layout.PART_DIR}/)")
    first = next(iter(journals.values()))
    for journal in journals.values():
        if (journal["encoder_id"], journal["dim"]) != (first["encoder_id"], first["dim"]):
            raise ArtifactMismatchError(
                f"{store_dir}: writers disagree on the encoder: rank {first['rank']} wrote "
                f"{first['encoder_id']!r}/{first['dim']}, rank {journal['rank']} wrote "
                f"{journal['encoder_id']!r}/{journal['dim']}"
            )
    dim = int(first["dim"])
    shards, all_ids, latest_rejection = [], [], {}
    count, normalized = 0, True
    fingerprints: dict[str | None, int] = {}
    for rank, commit in live_commits(journals):
        ids, rejected = read_commit_ids(store_dir, commit)
        for record in rejected:  # a later run's reason wins (records without a run: older stores)
            run, previous = int(record.get("run", 0)), latest_rejection.get(record["id"])
            if previous is None or run >= previous[0]:
                latest_rejection[record["id"]] = (run, record)
        if not commit["rows"]:
            continue
        fingerprints.setdefault(journals[rank].get("encoder_fingerprint"), rank)
        path = shard_file(store_dir, commit["stem"])
        offset = check_shard_file(path, commit["rows"], dim)
        all_ids.extend(ids)
        entry = {"file": f"{layout.SHARD_DIR}/{path.name}", "rows": commit["rows"], "first_row": count}
        if commit.get("sha256"):
            entry["sha256"] = commit["sha256"]
        entry["probe"] = commit.get("probe") or layout.read_shard_probe(path, offset, commit["rows"], dim)
        shards.append(entry)
        count += commit["rows"]
        normalized = normalized and commit["normalized"]
    known = [fp for fp in fingerprints if fp is not None]
    if len(known) > 1:
        raise ArtifactMismatchError(
            f"{store_dir}: writers disagree on the model: rank {fingerprints[known[0]]} wrote with encoder fingerprint "
            f"{known[0][:12]}, rank {fingerprints[known[1]]} with {known[1][:12]}; one store holds one encoder"
        )
    stored = set(all_ids)
    rejected_records = [{"id": r["id"], "reason": r["reason"]} for _, r in latest_rejection.values() if r["id"] not in stored]
    del stored
    token = uuid.uuid4().hex[:16]
    index_dir = store_dir / f"{layout.INDEX_PREFIX}{token}"
    tmp_dir = store_dir / f".{index_dir.name}.tmp"
    try:
        build_index(tmp_dir, all_ids, count)
        os.replace(tmp_dir, index_dir)
    except DuplicateIdsError as err:
        raise _duplicate_error(store_dir, err, shards) from None
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir)
    layout.atomic_write_bytes(
        store_dir / layout.REJECTED,
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejected_records).encode(),
    )
    manifest = {
        "format": layout.FORMAT_NAME,
        "format_version": layout.FORMAT_VERSION,
        "encoder_id": first["encoder_id"],
        # the model's identity when every stored row recorded the same one, else null (unknown)
        "encoder_fingerprint": known[0] if known and None not in fingerprints else None,
        "dim": dim,
        "dtype": "float32",
        "count": count,
        "normalized": bool(normalized and count > 0),
        "modality": first.get("modality"),
        "meta": first.get("meta") or {},
        "rejected": len(rejected_records),
        "shards": shards,
        "index": index_dir.name,
        "writers": sorted(journals),
        "created_by": f"revision_plugin {__version__}",
    }
    layout.atomic_write_json(store_dir / layout.MANIFEST, manifest)
    # Older index generations: readers that already opened one keep their memory maps.
    for old in store_dir.glob(f"{layout.INDEX_PREFIX}*"):
        if old.name != index_dir.name:
            shutil.rmtree(old, ignore_errors=True)
    for stem in superseded_stems(journals):  # rewritten by `revision embed --update`
        for suffix in (".npy", ".ids.json"):
            (store_dir / layout.SHARD_DIR / f"{stem}{suffix}").unlink(missing_ok=True)
    logger.info("%s: finalized %d rows in %d shards (%d rejected)", store_dir, count, len(shards), len(rejected_records))
    return manifest


def _duplicate_error(store_dir: Path, err: DuplicateIdsError, shards: list[dict]) -> BadInputError:
    described = []
    for item_id, rows in zip(err.ids, err.rows):
        files = [next(s["file"] for s in shards if s["first_row"] <= r < s["first_row"] + s["rows"]) for r in rows]
        described.append(f"{item_id!r} in {', '.join(files)}")
    more = f" (and {len(err.ids) - len(described)} more)" if len(err.ids) > len(described) else ""
    return BadInputError(f"{store_dir}: duplicate ids across writers: {'; '.join(described)}{more}")

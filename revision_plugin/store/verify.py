"""``verify_store``: a full content check of a finalized feature store.

Opening a store already checks the manifest's structure and every shard's header and size;
this reads every byte: each shard against the sha256 recorded when it was written, every
row finite (and unit-norm when the manifest says so), the id index against the per-shard
ids files (each id maps back to its own row), and the rejected count. Stores written before
checksums were recorded are checked for everything else, and the report says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from revision_plugin.store import layout
from revision_plugin.store.reader import FeatureStore

UNIT_NORM_TOLERANCE = 1e-3
MAX_PROBLEMS = 20


@dataclass
class VerifyReport:
    store_dir: Path
    shards: int = 0
    rows: int = 0
    checksummed: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        state = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return (f"{self.store_dir}: {state}: {self.rows} rows in {self.shards} shards, "
                f"{self.checksummed} of {self.shards} shards checked against recorded sha256")


def verify_store(store_dir: str | Path, chunk_rows: int = 8192) -> VerifyReport:
    """Check every shard, row and id of the store at ``store_dir``; structural damage that
    prevents opening it raises ``RevisionError`` (from ``FeatureStore``)."""
    store_dir = Path(store_dir)
    report = VerifyReport(store_dir)
    # Probes are compared below as problems of their own, not refused at open.
    with FeatureStore(store_dir, check_probes=False) as store:
        shards = store.manifest["shards"]
        report.shards, report.rows = len(shards), store.count
        index = store._handles.index
        for entry in shards:
            if len(report.problems) >= MAX_PROBLEMS:
                report.problems.append("(stopped after the first problems)")
                break
            _check_shard(store, index, entry, report, chunk_rows)
        _check_index_order(index, report)
        if "rejected" in store.manifest:
            rejected = len(store.rejected()) if (store_dir / layout.REJECTED).exists() else 0
            if rejected != store.manifest["rejected"]:
                report.problems.append(f"{layout.REJECTED}: {rejected} records, the manifest says {store.manifest['rejected']}")
    missing = report.shards - report.checksummed
    if missing:
        report.notes.append(
            f"{missing} shard(s) have no recorded sha256 (written by an older revision_plugin): their bytes "
            "were checked for finiteness and ids only; re-create the store to get checksums"
        )
    return report


def _check_shard(store, index, entry: dict, report: VerifyReport, chunk_rows: int) -> None:
    path = store.store_dir / entry["file"]
    name, first, rows = entry["file"], entry["first_row"], entry["rows"]
    if "sha256" in entry:
        report.checksummed += 1
        actual = layout.file_sha256(path)
        if actual != entry["sha256"]:
            report.problems.append(f"{name}: sha256 {actual[:12]}… does not match the recorded "
                                   f"{entry['sha256'][:12]}… (the file was changed, swapped or damaged)")
    if "probe" in entry and "sha256" not in entry:  # the sha256 above already covers it
        shard = store._shards[store.manifest["shards"].index(entry)]
        if layout.read_shard_probe(path, shard.data_offset, rows, store.dim) != entry["probe"]:
            report.problems.append(f"{name}: first/last rows do not match the recorded probe (the file was swapped, "
                                   "replaced or damaged)")
    ids_path = path.with_name(path.name[: -len(".npy")] + ".ids.json")
    try:
        listed = layout.read_json(ids_path)["ids"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        report.problems.append(f"{ids_path.name}: unreadable ids file ({type(err).__name__}: {err})")
    else:
        indexed = index.ids(first, first + rows)
        if listed != indexed:
            report.problems.append(f"{name}: the id index does not list this shard's ids in order (rows {first}..{first + rows - 1})")
        else:
            found = index.find(listed)
            wrong = np.flatnonzero(found != np.arange(first, first + rows))
            if len(wrong):
                report.problems.append(f"{name}: id {listed[int(wrong[0])]!r} resolves to row {int(found[wrong[0]])}, "
                                       f"not its own row {first + int(wrong[0])}")
    for lo in range(first, first + rows, chunk_rows):
        block = store.read_rows(np.arange(lo, min(lo + chunk_rows, first + rows)))
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            report.problems.append(f"{name}: row {lo + int(np.flatnonzero(~finite)[0])} has NaN or Inf values")
            return
        if store.normalized:
            off = np.flatnonzero(np.abs(np.linalg.norm(block.astype(np.float64), axis=1) - 1) > UNIT_NORM_TOLERANCE)
            if len(off):
                report.problems.append(f"{name}: row {lo + int(off[0])} is not unit-norm, the manifest says normalized")
                return


def _check_index_order(index, report: VerifyReport) -> None:
    hashes = np.asarray(index.hashes)
    if len(hashes) > 1 and not bool((hashes[1:] >= hashes[:-1]).all()):
        report.problems.append(f"{index.directory.name}/hashes.npy: not sorted; lookups would miss ids")
    rows = np.asarray(index.rows)
    if len(rows) and not np.array_equal(np.sort(rows), np.arange(len(rows))):
        report.problems.append(f"{index.directory.name}/rows.npy: not a permutation of the rows")


def report_json(report: VerifyReport) -> str:
    return json.dumps({"store": str(report.store_dir), "ok": report.ok, "rows": report.rows, "shards": report.shards,
                       "checksummed": report.checksummed, "problems": report.problems, "notes": report.notes})

"""A finalized store's ``manifest.json``: read and checked field by field (typed fields,
contiguous rows, unique shard files in commit order), and each shard's recorded probe rows,
so a damaged, hand-edited or swapped artifact is named at open instead of answering lookups
with another id's rows. Metadata only: no vectors are read here except the two probe rows."""

from __future__ import annotations

import re
from pathlib import Path

from revision_plugin.errors import MissingFileError, RevisionError
from revision_plugin.store import layout
from revision_plugin.store.journal import read_journals


def read_manifest(store_dir: str | Path) -> dict:
    """The checked ``manifest.json`` of a finalized feature store (its metadata; no shard is read)."""
    store_dir = Path(store_dir)
    manifest_path = store_dir / layout.MANIFEST
    if not store_dir.exists():
        raise MissingFileError(f"{store_dir}: no such feature store")
    if not manifest_path.exists():
        if read_journals(store_dir):
            raise RevisionError(
                f"{store_dir}: incomplete feature store (its writer was interrupted or is still "
                "running); rerun the same `revision embed` command to resume and finish it"
            )
        subs = [p.name for p in sorted(store_dir.iterdir()) if (p / layout.MANIFEST).exists()] if store_dir.is_dir() else []
        hint = f"; it contains the stores {', '.join(str(store_dir / s) for s in subs)}" if subs else ""
        raise RevisionError(f"{store_dir}: not a feature store (no {layout.MANIFEST}){hint}")
    try:
        manifest = layout.read_json(manifest_path)
    except (ValueError, OSError) as err:  # JSONDecodeError / UnicodeDecodeError are ValueErrors
        raise RevisionError(f"{manifest_path}: unreadable manifest ({err}); re-finalize or re-create the store") from err
    if not isinstance(manifest, dict) or manifest.get("format") != layout.FORMAT_NAME:
        raise RevisionError(f"{manifest_path}: not a revision feature store manifest")
    version = manifest.get("format_version", 0)
    if not _is_int(version):
        raise RevisionError(f"{manifest_path}: field 'format_version' must be an integer, got {version!r}")
    if version > layout.FORMAT_VERSION:
        raise RevisionError(
            f"{manifest_path}: format version {manifest['format_version']} is newer than this "
            f"revision_plugin understands ({layout.FORMAT_VERSION}); upgrade revision_plugin"
        )
    validate_manifest(manifest, manifest_path)
    return manifest


def check_shard_probe(path: Path, entry: dict, offset: int, dim: int) -> None:
    """Refuse a shard whose first/last rows are not the ones recorded for it (stores written
    before probes were recorded have none: ``revision store verify`` checks those)."""
    try:
        actual = layout.read_shard_probe(path, offset, entry["rows"], dim)
    except (OSError, ValueError) as err:
        raise RevisionError(f"{path}: unreadable shard ({err})") from err
    if actual != entry["probe"]:
        raise RevisionError(
            f"{path}: does not hold the rows the store recorded for {entry['file']} (its first/last rows differ): "
            "shard files were swapped, replaced or damaged; restore them or re-create the store "
            "(`revision store verify` checks every byte)"
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PROBE = re.compile(rf"^[0-9a-f]{{{layout.PROBE_CHARS}}}$")
_SHARD_FILE = re.compile(rf"^{layout.SHARD_DIR}/r(\d{{5}})-(\d{{6}})\.npy$")
_INDEX_NAME = re.compile(rf"^{layout.INDEX_PREFIX}[0-9a-f]+$")


def validate_manifest(manifest: dict, manifest_path: Path) -> None:
    """Typed fields, contiguous rows, unique in-store shard files in commit order, counts that add
    up: a damaged or hand-edited manifest is refused here instead of hanging a reader or
    returning another id's row."""
    def bad(what: str) -> RevisionError:
        return RevisionError(f"{manifest_path}: {what}; re-finalize or re-create the store")

    if manifest.get("encoder_fingerprint") is not None and not isinstance(manifest["encoder_fingerprint"], str):
        raise bad(f"field 'encoder_fingerprint' must be a string or null, got {manifest['encoder_fingerprint']!r}")
    for key, check, described in (
        ("dim", lambda v: _is_int(v) and v >= 1, "a positive integer"),
        ("count", lambda v: _is_int(v) and v >= 0, "a non-negative integer"),
        ("encoder_id", lambda v: isinstance(v, str) and v, "a non-empty string"),
        ("normalized", lambda v: isinstance(v, bool), "true or false"),
        ("shards", lambda v: isinstance(v, list), "a list"),
        ("index", lambda v: isinstance(v, str) and _INDEX_NAME.match(v), f"an {layout.INDEX_PREFIX}<hex> directory name"),
    ):
        if key not in manifest:
            raise bad(f"no {key!r} field")
        if not check(manifest[key]):
            raise bad(f"field {key!r} must be {described}, got {manifest[key]!r}")
    if "rejected" in manifest and not (_is_int(manifest["rejected"]) and manifest["rejected"] >= 0):
        raise bad(f"field 'rejected' must be a non-negative integer, got {manifest['rejected']!r}")
    expected_row, previous, seen = 0, None, set()
    for k, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict):
            raise bad(f"shards[{k}] is not an object")
        name = entry.get("file")
        match = _SHARD_FILE.match(name) if isinstance(name, str) else None
        if match is None:
            raise bad(f"shards[{k}].file must be {layout.SHARD_DIR}/rNNNNN-NNNNNN.npy inside the store, got {name!r}")
        if name in seen:
            raise bad(f"shard file {name} listed twice")
        seen.add(name)
        order = (int(match.group(1)), int(match.group(2)))
        if previous is not None and order <= previous:
            raise bad(f"shards[{k}] ({name}) is out of commit order: shard entries were reordered or swapped")
        previous = order
        rows, first = entry.get("rows"), entry.get("first_row")
        if not (_is_int(rows) and rows >= 1):
            raise bad(f"shards[{k}].rows must be a positive integer, got {rows!r}")
        if not _is_int(first) or first != expected_row:
            raise bad(f"shards[{k}] ({name}) starts at row {first!r}, expected {expected_row}: rows overlap or leave a gap")
        if "sha256" in entry and not (isinstance(entry["sha256"], str) and _SHA256.match(entry["sha256"])):
            raise bad(f"shards[{k}].sha256 is not a sha256 hex digest: {entry['sha256']!r}")
        if "probe" in entry and not (isinstance(entry["probe"], str) and _PROBE.match(entry["probe"])):
            raise bad(f"shards[{k}].probe is not a {layout.PROBE_CHARS}-digit hex digest: {entry['probe']!r}")
        expected_row += rows
    if expected_row != manifest["count"]:
        raise bad(f"shards hold {expected_row} rows, but 'count' says {manifest['count']}")

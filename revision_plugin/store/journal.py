"""Reading the per-writer journals (``parts/rank-XXXXX.json``) and the files they commit.

A commit may name earlier commits it ``supersedes`` (``revision embed --update`` rewrites a
shard without its changed rows as one new commit); superseded commits stay listed in their
journal but are ignored everywhere (:func:`live_commits`), and their files are deleted by
the next finalize.
"""

from __future__ import annotations

import json
from pathlib import Path

from revision_plugin.errors import RevisionError
from revision_plugin.store import layout


def read_journals(store_dir: Path) -> dict[int, dict]:
    """All writer journals of a store, keyed by rank (empty for a new store)."""
    part_dir = Path(store_dir) / layout.PART_DIR
    journals: dict[int, dict] = {}
    if not part_dir.is_dir():
        return journals
    for path in sorted(part_dir.glob("rank-*.json")):
        try:
            journal = layout.read_json(path)
        except (OSError, json.JSONDecodeError) as err:
            # Journals are replaced atomically, so a broken one was damaged after the fact.
            raise RevisionError(f"{path}: unreadable store journal ({err})") from err
        journals[int(journal["rank"])] = journal
    return journals


def live_commits(journals: dict[int, dict]) -> list[tuple[int, dict]]:
    """``(rank, commit)`` of every commit no later commit supersedes, by rank then commit order."""
    superseded = superseded_stems(journals)
    return [(rank, commit) for rank in sorted(journals) for commit in journals[rank]["commits"]
            if commit["stem"] not in superseded]


def superseded_stems(journals: dict[int, dict]) -> set[str]:
    return {stem for journal in journals.values() for commit in journal["commits"] for stem in commit.get("supersedes", ())}


def read_commit_ids(store_dir: Path, commit: dict) -> tuple[list[str], list[dict]]:
    """The stored ids and the rejected ``{"id", "reason"}`` records of one commit."""
    ids, _, rejected = read_commit(store_dir, commit)
    return ids, rejected


def read_commit(store_dir: Path, commit: dict) -> tuple[list[str], list[str | None], list[dict]]:
    """The stored ids, their content hashes (``None`` each when the writer recorded none, as
    stores written before content hashes) and the rejected ``{"id", "reason"}`` records."""
    path = Path(store_dir) / layout.SHARD_DIR / f"{commit['stem']}.ids.json"
    try:
        content = layout.read_json(path)
    except FileNotFoundError as err:
        raise RevisionError(f"{path}: missing ids file of committed shard {commit['stem']}") from err
    except (OSError, json.JSONDecodeError) as err:
        raise RevisionError(f"{path}: unreadable ids file of shard {commit['stem']} ({err})") from err
    ids, rejected = content["ids"], content["rejected"]
    hashes = content.get("hashes") or [None] * len(ids)
    if len(ids) != commit["rows"] or len(rejected) != commit["rejected"] or len(hashes) != len(ids):
        raise RevisionError(
            f"{path}: lists {len(ids)} ids / {len(rejected)} rejections, the journal says "
            f"{commit['rows']} / {commit['rejected']}"
            + (f" ({len(hashes)} content hashes)" if len(hashes) != len(ids) else "")
        )
    return ids, hashes, rejected


def shard_file(store_dir: Path, stem: str) -> Path:
    return Path(store_dir) / layout.SHARD_DIR / f"{stem}.npy"


def check_shard_file(path: Path, rows: int, dim: int) -> int:
    """Validate a shard's header and size; return the byte offset of its data."""
    if not path.is_file():
        raise RevisionError(f"{path}: shard listed in the store is missing")
    try:
        offset, shape, _, dtype = layout.npy_data_offset(path)
    except (ValueError, OSError, SyntaxError) as err:
        raise RevisionError(f"{path}: shard header unreadable ({err})") from err
    if tuple(shape) != (rows, dim) or dtype != layout.DTYPE:
        raise RevisionError(
            f"{path}: shard holds {dtype} {tuple(shape)}, the store lists float32 ({rows}, {dim})"
        )
    expected = offset + rows * dim * layout.DTYPE.itemsize
    actual = path.stat().st_size
    if actual != expected:
        raise RevisionError(
            f"{path}: truncated or damaged shard ({actual} bytes, expected {expected}); "
            "re-create the store or restore this file"
        )
    return offset

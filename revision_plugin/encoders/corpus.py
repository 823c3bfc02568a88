"""Read the inputs of ``revision embed``: ``(id, text)`` or ``(id, image path)`` records.

Accepted files: JSON lines (``.jsonl``), Parquet (``.parquet``), and JSON (``.json``): either
a list of records or the official ReVision ``dataset.json`` layout
``{"images": [{"id", "image"}], "texts": [{"id", "text"}]}``, from which the list matching the
modality is taken. Ids are stored as strings (``7`` and ``"7"`` are the same id, so a file
holding both is refused as a duplicate). Structural problems (missing id/field, duplicate
id, unparsable line) are errors naming the file and row; a present-but-empty text is not an
error here but is rejected later with a reason, so one bad caption does not stop a corpus.

``content_hash`` is what a feature store records per row so that a resumed ``revision
embed`` can tell an unchanged input from an edited one: blake2b-128 of the text's UTF-8
bytes, or of the image file's bytes (not its path: a moved image is the same input).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from revision_plugin.errors import BadInputError, MissingFileError

CONTENT_HASH_BYTES = 16

# dataset.json list name and default value field per modality.
_DATASET_JSON_KEYS = {"text": ("texts", "text"), "image": ("images", "image")}


@dataclass(frozen=True)
class CorpusItem:
    id: str
    value: Any  # the text (may be empty/None: rejected later) or the resolved image path
    where: str  # "file:row" for error messages


def read_corpus(
    path: str | Path,
    modality: str,
    *,
    id_key: str = "id",
    value_key: str | None = None,
    image_root: str | Path | None = None,
    allow_outside_root: bool = False,
) -> list[CorpusItem]:
    """All records of ``path`` for ``modality`` ("text" or "image"), ids checked unique.

    Image paths are relative to ``image_root`` (default: the input file's directory) and must
    stay inside it: an absolute path, a ``..`` or a symlink leading outside is refused (naming
    the row) unless ``allow_outside_root``."""
    if modality not in _DATASET_JSON_KEYS:
        raise ValueError(f"modality must be 'text' or 'image', not {modality!r}")
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such input file")
    value_key = value_key or _DATASET_JSON_KEYS[modality][1]
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif suffix == ".parquet":
        rows = _parquet_rows(path, id_key, value_key)
    elif suffix == ".json":
        rows = _json_rows(path, modality)
    else:
        raise BadInputError(f"{path}: unsupported input type {suffix!r}; use .jsonl, .parquet or .json")
    root = Path(image_root) if image_root is not None else path.parent
    real_root = os.path.realpath(root)
    items: list[CorpusItem] = []
    first_seen: dict[str, str] = {}
    for where, record in rows:
        if not isinstance(record, dict):
            raise BadInputError(f"{where}: expected an object with {id_key!r} and {value_key!r}, got {type(record).__name__}")
        if id_key not in record or record[id_key] is None or str(record[id_key]) == "":
            raise BadInputError(f"{where}: record has no {id_key!r}")
        if value_key not in record:
            raise BadInputError(f"{where}: record {record[id_key]!r} has no {value_key!r} field")
        item_id = str(record[id_key])
        if item_id in first_seen:
            raise BadInputError(f"{where}: duplicate id {item_id!r} (first at {first_seen[item_id]})")
        first_seen[item_id] = where
        value = record[value_key]
        if modality == "image":
            if not isinstance(value, str) or not value:
                raise BadInputError(f"{where}: record {item_id!r} has no image path")
            if not allow_outside_root:
                _check_inside(where, item_id, value, root, real_root)
            value = str(root / value)
        items.append(CorpusItem(item_id, value, where))
    return items


def bytes_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=CONTENT_HASH_BYTES).hexdigest()


def content_hash(modality: str, value: Any) -> str | None:
    """Hash of a record's content (text, or image file bytes); ``None`` when there is none to
    hash (not a string, or an image file that cannot be read: such inputs are rejected)."""
    if not isinstance(value, str):
        return None
    if modality == "text":
        return bytes_hash(value.encode("utf-8", "surrogatepass"))
    digest = hashlib.blake2b(digest_size=CONTENT_HASH_BYTES)
    try:
        with open(value, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _check_inside(where: str, item_id: str, value: str, root: Path, real_root: str) -> None:
    """Refuse an image path that leaves ``root`` (absolute, ``..``, or through a symlink)."""
    if os.path.isabs(value):
        why = "is absolute"
    elif ".." in Path(value).parts:
        why = "contains '..'"
    else:
        real = os.path.realpath(root / value)
        if os.path.commonpath([real_root, real]) == real_root:
            return
        why = f"leads outside through a symlink (to {real})"
    raise BadInputError(
        f"{where}: image path {value!r} of record {item_id!r} {why}; image paths must stay inside the image "
        f"root {root} (pass --allow-outside-root to open it anyway)"
    )


def _jsonl_rows(path: Path) -> Iterable[tuple[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{line_no}", json.loads(line)
            except json.JSONDecodeError as err:
                raise BadInputError(f"{path}:{line_no}: not valid JSON ({err.msg})") from err


def _json_rows(path: Path, modality: str) -> Iterable[tuple[str, Any]]:
    with open(path, encoding="utf-8") as f:
        try:
            content = json.load(f)
        except json.JSONDecodeError as err:
            raise BadInputError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if isinstance(content, dict):
        list_key = _DATASET_JSON_KEYS[modality][0]
        if list_key not in content:
            raise BadInputError(f"{path}: dataset.json layout without a {list_key!r} list (keys: {sorted(content)})")
        content, label = content[list_key], f"{path}:{list_key}"
    else:
        label = str(path)
    if not isinstance(content, list):
        raise BadInputError(f"{path}: expected a list of records")
    return ((f"{label}[{i}]", record) for i, record in enumerate(content))


def _parquet_rows(path: Path, id_key: str, value_key: str) -> Iterable[tuple[str, Any]]:
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    missing = [k for k in (id_key, value_key) if k not in schema.names]
    if missing:
        raise BadInputError(f"{path}: parquet file has no column(s) {missing} (columns: {schema.names})")
    table = pq.read_table(path, columns=[id_key, value_key])
    ids, values = table.column(id_key).to_pylist(), table.column(value_key).to_pylist()
    return ((f"{path}:row {i}", {id_key: ids[i], value_key: values[i]}) for i in range(len(ids)))

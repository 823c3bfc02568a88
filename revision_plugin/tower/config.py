"""The tower's configuration (:class:`TowerConfig`, saved as ``revision_tower.json``) and the
names a tower artifact and a host model's config use."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from revision_plugin.errors import ArtifactMismatchError, BadInputError
from revision_plugin.parsing import parse_bool

SPEC_PREFIX = "revision:"
TOWER_CONFIG_NAME = "revision_tower.json"
TOWER_DIR_NAME = "revision_tower"
TOWER_FORMAT_VERSION = 1
# Key under which a host model's config records the resolved tower (see hosts/llava/).
MODEL_CONFIG_KEY = "revision_tower"


@dataclass
class TowerConfig:
    """Everything the tower needs; serialisable to JSON (``revision_tower.json``).

    ``operator``: directory of a fitted operator (``revision fit``), or ``None`` for raw
    (unit-normalised) embeddings, the paper's "w/o align" baseline.
    ``encoder``/``encoder_model``: encoder kind and weights for online inputs (texts,
    pixels); not needed when every input comes from a store.
    ``text_store``/``image_store``: feature stores of raw (un-aligned) embeddings, keyed by
    the ids named in the data records (``text_id``; the record's ``image`` path).
    ``encoder_id``/``dim``: expected joint-embedding model and width; filled in from the
    artifacts and checked against every one of them.
    """

    encoder: str | None = None
    encoder_model: str | None = None
    encoder_options: dict[str, Any] = field(default_factory=dict)
    operator: str | None = None
    text_store: str | None = None
    image_store: str | None = None
    num_tokens: int = 1
    encoder_id: str | None = None
    dim: int | None = None
    offline: bool = False
    # Refuse samples whose labels are all masked (LLaVA's silent "tokenization mismatch").
    strict_labels: bool = True
    # Check at start-up that every text_id / image id of the data is in its store.
    check_ids: bool = True
    format_version: int = TOWER_FORMAT_VERSION

    _PATH_FIELDS = ("encoder_model", "operator", "text_store", "image_store")

    def __post_init__(self) -> None:
        if int(self.num_tokens) < 1:
            raise BadInputError(f"revision tower: num_tokens must be >= 1, got {self.num_tokens}")
        self.num_tokens = int(self.num_tokens)
        if self.dim is not None:
            self.dim = int(self.dim)
        if self.operator in ("", "none", "None"):
            self.operator = None
        if "trust_remote_code" in self.encoder_options:
            raise BadInputError(
                "revision tower: encoder_options.trust_remote_code cannot come from a tower config or "
                "checkpoint; consent is the user's: trust_remote_code=true in the revision: spec"
            )
        if self.format_version > TOWER_FORMAT_VERSION:
            raise ArtifactMismatchError(
                f"revision tower config format {self.format_version} is newer than this package ({TOWER_FORMAT_VERSION})"
            )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], base_dir: str | Path | None = None, source: str = "tower config") -> TowerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise BadInputError(f"{source}: unknown key(s) {unknown}; known: {sorted(known)}")
        values = dict(raw)
        if isinstance(values.get("encoder_options"), str):
            values["encoder_options"] = json.loads(values["encoder_options"])
        for key in ("offline", "strict_labels", "check_ids"):
            if isinstance(values.get(key), str):
                values[key] = parse_bool(values[key], f"{source}: {key}")
        config = cls(**values)
        if base_dir is not None:
            config = config.resolved_paths(Path(base_dir))
        return config

    def resolved_paths(self, base_dir: Path) -> TowerConfig:
        """A copy whose relative local paths are made absolute against ``base_dir``."""
        values = asdict(self)
        for key in self._PATH_FIELDS:
            value = values.get(key)
            if value and not os.path.isabs(value):
                candidate = base_dir / value
                # encoder_model may be a hub id ("org/name"): keep it unless it exists locally.
                if key != "encoder_model" or candidate.exists():
                    values[key] = str(candidate.resolve())
        return TowerConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

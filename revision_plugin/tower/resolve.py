"""Artifact resolution: fill a :class:`~revision_plugin.tower.config.TowerConfig`'s
``encoder_id``/``dim`` from its operator and feature stores, and refuse artifacts that disagree.

Only the metadata files are read (``operator.json``, the store's ``manifest.json``) through
the readers of the packages that write them (``align.artifact.read_operator_info``,
``store.manifest.read_manifest``), never weights or vectors.
"""

from __future__ import annotations

from pathlib import Path

from revision_plugin.errors import ArtifactMismatchError, MissingFileError
from revision_plugin.tower.config import TowerConfig


def resolve_tower_config(config: TowerConfig) -> TowerConfig:
    """Fill ``encoder_id``/``dim`` from the operator and stores (cheap: manifests only) and
    check that every artifact agrees. Raises ``ArtifactMismatchError`` naming the culprit."""
    from revision_plugin.align.artifact import read_operator_info  # (lazy: align registers every method)
    from revision_plugin.align.base import OPERATOR_CONFIG_NAME
    from revision_plugin.store.layout import MANIFEST
    from revision_plugin.store.manifest import read_manifest

    sources: list[tuple[str, str | None, int | None]] = []
    if config.operator:
        _require(config.operator, OPERATOR_CONFIG_NAME, "an operator directory")
        info = read_operator_info(config.operator)
        sources.append((f"operator {config.operator}", info.encoder_id, info.dim))
    for key in ("text_store", "image_store"):
        store_dir = getattr(config, key)
        if store_dir:
            _require(store_dir, MANIFEST, "a feature store")
            manifest = read_manifest(store_dir)
            sources.append((f"{key} {store_dir}", manifest.get("encoder_id"), manifest.get("dim")))
    encoder_id, dim = config.encoder_id, config.dim
    described = [("tower config", config.encoder_id, config.dim)] + sources
    for _name, eid, d in sources:
        if eid is not None:
            if encoder_id is not None and eid != encoder_id:
                raise ArtifactMismatchError(_mismatch("encoder", described, 1))
            encoder_id = eid
        if d is not None:
            if dim is not None and int(d) != dim:
                raise ArtifactMismatchError(_mismatch("dimension", described, 2))
            dim = int(d)
    values = config.to_dict()
    values.update(encoder_id=encoder_id, dim=dim)
    return TowerConfig(**values)


def _mismatch(what: str, described, index: int) -> str:
    parts = ", ".join(f"{entry[0]}: {entry[index]!r}" for entry in described if entry[index] is not None)
    return f"revision tower: the artifacts disagree on the {what} ({parts})"


def _require(directory: str, name: str, what: str) -> None:
    """Refuse a ``directory`` without its metadata file ``name`` in the tower's own words."""
    if not (Path(directory) / name).is_file():
        raise MissingFileError(f"revision tower: {directory} is not {what} ({name} missing)")

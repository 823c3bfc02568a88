"""The metadata a stage-1 ``mm_projector.bin`` carries (encoder, widths, projector type,
operator), written with every checkpoint and checked before stage 2 loads the projector."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from revision_plugin import __version__
from revision_plugin.atomic import atomic_file, shared_mode
from revision_plugin.errors import ArtifactMismatchError
from revision_plugin.hosts.llava.constants import PROJECTOR_FORMAT, PROJECTOR_METADATA_KEY
from revision_plugin.tower import TowerConfig

if TYPE_CHECKING:
    from revision_plugin.hosts.llava.tower import LlavaRevisionTower

logger = logging.getLogger(__name__)


def projector_metadata(model, tower: LlavaRevisionTower) -> dict:
    config = model.config
    op = tower.operator
    return {
        "format": PROJECTOR_FORMAT,
        "format_version": 1,
        "package_version": __version__,
        "mm_projector_type": getattr(config, "mm_projector_type", "linear"),
        "mm_hidden_size": int(getattr(config, "mm_hidden_size", tower.dim)),
        "hidden_size": int(config.hidden_size),
        "encoder": tower.tower_config.encoder,
        "encoder_id": tower.tower_config.encoder_id,
        "num_tokens": tower.num_tokens,
        "alignment_method": None if op is None else op.info.method,
        "operator_fingerprint": None if op is None else op.info.fingerprint,
    }


def add_projector_metadata(path: str | Path, metadata: dict) -> None:
    """Embed ``metadata`` in a LLaVA ``mm_projector.bin`` (a uint8 tensor of JSON: LLaVA's own
    loaders only read keys containing 'mm_projector', so the file stays loadable by them)."""
    path = Path(path)
    weights = torch.load(path, map_location="cpu", weights_only=True)
    weights[PROJECTOR_METADATA_KEY] = torch.tensor(list(json.dumps(metadata, sort_keys=True).encode()), dtype=torch.uint8)
    with atomic_file(path, mode=shared_mode(path)) as f:
        torch.save(weights, f)


def read_projector_metadata(path: str | Path) -> dict | None:
    """The metadata embedded by :func:`add_projector_metadata`, or ``None`` (a stock LLaVA file)."""
    weights = torch.load(Path(path), map_location="cpu", weights_only=True)
    raw = weights.get(PROJECTOR_METADATA_KEY)
    if raw is None:
        return None
    return json.loads(bytes(raw.to(torch.uint8).tolist()).decode())


def check_projector_metadata(path: str | Path, tower_config: TowerConfig, model_config, model_args) -> None:
    """Refuse a stage-1 projector made for another encoder, width or projector type."""
    meta = read_projector_metadata(path)
    if meta is None:
        logger.warning("revision: %s has no projector metadata (not written by revision_plugin); not checked", path)
        return
    expected = {
        "encoder_id": tower_config.encoder_id,
        "mm_hidden_size": tower_config.dim,
        "hidden_size": getattr(model_config, "hidden_size", None),
        "mm_projector_type": getattr(model_args, "mm_projector_type", None),
    }
    problems = [f"{key}: projector {meta.get(key)!r} vs now {value!r}"
                for key, value in expected.items() if value is not None and meta.get(key) is not None and meta.get(key) != value]
    if problems:
        raise ArtifactMismatchError(f"{path}: pretrained projector does not match this run ({'; '.join(problems)})")
    if meta.get("num_tokens") not in (None, tower_config.num_tokens):
        logger.warning("revision: %s was trained with num_tokens=%s, this run uses %s", path, meta["num_tokens"],
                       tower_config.num_tokens)
    method, fingerprint = None, None
    if tower_config.operator:
        info = json.loads((Path(tower_config.operator) / "operator.json").read_text())
        method, fingerprint = info.get("method"), info.get("fingerprint")
    if (meta.get("alignment_method"), meta.get("operator_fingerprint")) != (method, fingerprint):
        logger.warning("revision: %s was trained with operator %s (fingerprint %s); this run uses %s (%s). "
                       "Images go through op.align_image: use the stage-1 operator unless this is intended.",
                       path, meta.get("alignment_method"), str(meta.get("operator_fingerprint"))[:12], method,
                       str(fingerprint)[:12])

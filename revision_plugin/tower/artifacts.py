"""What a host checkpoint carries for its tower: ``revision_tower/`` (the inference config and
a copy of the operator), so the checkpoint loads without the training command line."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from revision_plugin.atomic import atomic_directory
from revision_plugin.tower.config import TOWER_CONFIG_NAME, TOWER_DIR_NAME

if TYPE_CHECKING:
    from revision_plugin.tower.module import PseudoVisionTower

logger = logging.getLogger(__name__)


def save_tower_artifacts(tower: PseudoVisionTower, directory: str | Path) -> Path:
    """Write ``<directory>/revision_tower/`` (config + a copy of the operator) so the checkpoint
    loads without the training command line. Returns the tower directory."""
    tower_dir = Path(directory) / TOWER_DIR_NAME
    with atomic_directory(tower_dir) as tmp:
        values = tower.inference_config().to_dict()
        if tower.operator is not None:
            tower.operator.save(tmp / "operator")
            values["operator"] = "operator"
        # encoder_model is kept as recorded (an absolute local path or a hub id): weights are not copied.
        (tmp / TOWER_CONFIG_NAME).write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    logger.info("revision tower: wrote %s", tower_dir)
    return tower_dir

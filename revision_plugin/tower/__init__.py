"""The host-agnostic pseudo-vision tower (see :mod:`.module` for what it does).

One concept per module; everything public is re-exported here, so
``from revision_plugin.tower import ...`` keeps working:

* :mod:`.config` - :class:`TowerConfig` and the artifact / model-config names;
* :mod:`.spec` - :func:`parse_tower_spec` (``revision:`` specs, prefix parsing apart from loading);
* :mod:`.resolve` - :func:`resolve_tower_config` (encoder id and width from the artifacts, checked);
* :mod:`.batch` - the batch wire format (:class:`TowerSample`, :func:`collate_tower_inputs`, ``KIND_*``);
* :mod:`.module` - :class:`PseudoVisionTower`;
* :mod:`.artifacts` - :func:`save_tower_artifacts` (what a host checkpoint carries);
* :mod:`.integrations` - the torch / transformers-DeepSpeed private APIs used, fenced.

The tower is configured by a :class:`TowerConfig`, written as a *spec* (see
:func:`parse_tower_spec` and ``docs/llava.md``). Host adapters (``revision_plugin.hosts.*``)
turn a host's data records into the batches the tower reads (:func:`collate_tower_inputs`)
and save what inference needs next to the host's checkpoint (:func:`save_tower_artifacts`).
"""

from revision_plugin.tower.artifacts import save_tower_artifacts
from revision_plugin.tower.batch import (
    BATCH_IMAGE_FEATURES,
    BATCH_KINDS,
    BATCH_PIXELS,
    BATCH_TEXT_FEATURES,
    BATCH_TEXTS,
    KIND_IMAGE_FEATURE,
    KIND_NAMES,
    KIND_NONE,
    KIND_PIXELS,
    KIND_TEXT,
    KIND_TEXT_FEATURE,
    TowerBatch,
    TowerSample,
    collate_tower_inputs,
    is_tower_batch,
)
from revision_plugin.tower.config import (
    MODEL_CONFIG_KEY,
    SPEC_PREFIX,
    TOWER_CONFIG_NAME,
    TOWER_DIR_NAME,
    TOWER_FORMAT_VERSION,
    TowerConfig,
)
from revision_plugin.tower.module import PseudoVisionTower
from revision_plugin.tower.resolve import resolve_tower_config
from revision_plugin.tower.spec import SPEC_ALIASES, parse_tower_spec, spec_field

__all__ = [
    "BATCH_IMAGE_FEATURES",
    "BATCH_KINDS",
    "BATCH_PIXELS",
    "BATCH_TEXTS",
    "BATCH_TEXT_FEATURES",
    "KIND_IMAGE_FEATURE",
    "KIND_NAMES",
    "KIND_NONE",
    "KIND_PIXELS",
    "KIND_TEXT",
    "KIND_TEXT_FEATURE",
    "MODEL_CONFIG_KEY",
    "SPEC_ALIASES",
    "SPEC_PREFIX",
    "TOWER_CONFIG_NAME",
    "TOWER_DIR_NAME",
    "TOWER_FORMAT_VERSION",
    "PseudoVisionTower",
    "TowerBatch",
    "TowerConfig",
    "TowerSample",
    "collate_tower_inputs",
    "is_tower_batch",
    "parse_tower_spec",
    "resolve_tower_config",
    "save_tower_artifacts",
    "spec_field",
]

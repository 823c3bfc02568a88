"""The revision tower as LLaVA sees it: :class:`LlavaRevisionTower` (the attributes LLaVA
reads from a vision tower), :class:`RevisionImageProcessor` (what LLaVA's dataset gets as
``image_processor``), and :func:`build_vision_tower`, which the patched LLaVA tower builder
calls for ``revision:`` specs (relative specs are looked up next to the checkpoint)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from revision_plugin.errors import BadInputError, MissingFileError, RevisionError
from revision_plugin.hosts.llava.constants import OVERRIDES_ENV, SAVED_AT_KEY, TOWER_DIR_ENV
from revision_plugin.hosts.llava.projector import check_projector_metadata
from revision_plugin.tower import (
    SPEC_PREFIX,
    TOWER_CONFIG_NAME,
    PseudoVisionTower,
    TowerConfig,
    parse_tower_spec,
    resolve_tower_config,
    spec_field,
)

logger = logging.getLogger(__name__)


def is_revision_spec(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SPEC_PREFIX)


class RevisionImageProcessor:
    """The encoder's image processor, plus the tower config for LLaVA's data pipeline.

    LLaVA hands ``vision_tower.image_processor`` to its dataset (``data_args``); this
    wrapper lets the plugin's dataset find the tower config there, and loads the encoder
    only when an image is actually processed (a stage 1 on cached text never loads it).
    Everything else is delegated (``preprocess``, ``image_mean``, ``crop_size`` ...).
    Picklable (DataLoader workers): the processor is resolved before pickling.
    """

    def __init__(self, inner, tower_config: TowerConfig, loader: Callable[[], Any] | None = None) -> None:
        self._inner = inner
        self._loader = loader
        self.tower_config = tower_config

    @property
    def inner(self):
        if self._inner is None and self._loader is not None:
            self._inner = self._loader()
            self._loader = None
        return self._inner

    def resolve(self) -> RevisionImageProcessor:
        """Load the processor now, in the main process, before DataLoader workers start (they
        then only read image files; encoding happens in the tower, once per rank)."""
        self.inner  # noqa: B018
        return self

    def __getstate__(self) -> dict:
        return {"_inner": self.inner, "_loader": None, "tower_config": self.tower_config}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("inner", "tower_config"):
            raise AttributeError(name)
        inner = self.inner
        if inner is None:
            raise BadInputError(
                "revision tower: this run has no image encoder (no encoder_model in the tower spec), "
                f"so image processing ({name}) is unavailable; records must use text_id/text or the image_store"
            )
        return getattr(inner, name)

    def __call__(self, *args, **kwargs):
        return self.__getattr__("__call__")(*args, **kwargs) if self.inner is None else self.inner(*args, **kwargs)

    def __repr__(self) -> str:
        return f"RevisionImageProcessor({self._inner!r})"


def _in_dataloader_worker() -> bool:
    from torch.utils.data import get_worker_info

    return get_worker_info() is not None


class LlavaRevisionTower(PseudoVisionTower):
    """:class:`PseudoVisionTower` with the attributes LLaVA's code reads from a vision tower."""

    def __init__(self, tower_config: TowerConfig, args=None, delay_load: bool = False, **kwargs) -> None:
        super().__init__(tower_config, delay_load=True, **kwargs)
        self.is_loaded = False
        if not delay_load:
            self.load_model()

    def load_model(self, device_map=None) -> None:
        if self.is_loaded:
            return
        self.load()
        if isinstance(device_map, str) and device_map not in ("auto", "balanced", "sequential"):
            self.to(device=device_map)
        self.is_loaded = True

    @property
    def image_processor(self):
        loaded = self._encoder.image_processor if self._encoder is not None else None
        return RevisionImageProcessor(loaded, self.tower_config, loader=self._load_image_processor)

    def _load_image_processor(self):
        """The encoder's image processor: from its config files alone when they exist (cheap,
        no weights: what a DataLoader worker may do), else through the loaded encoder (main
        process only: workers never load the encoder)."""
        model = self.tower_config.encoder_model
        if self._encoder is None and model:
            from transformers import AutoImageProcessor

            try:
                return AutoImageProcessor.from_pretrained(str(model), local_files_only=self.tower_config.offline)
            except (OSError, ValueError) as err:
                if _in_dataloader_worker():
                    raise RevisionError(
                        f"revision tower: {model} has no image processor config ({type(err).__name__}), and a "
                        "DataLoader worker must not load the encoder to get one; resolve the processor in the main "
                        "process first (RevisionImageProcessor.resolve())"
                    ) from err
        return PseudoVisionTower.image_processor.fget(self)

    @property
    def hidden_size(self) -> int:
        return self.dim

    @property
    def num_patches(self) -> int:
        return self.num_tokens

    @property
    def num_patches_per_side(self) -> int:
        side = round(self.num_tokens ** 0.5)
        if side * side != self.num_tokens:
            raise RevisionError(f"revision tower: num_tokens={self.num_tokens} is not a square grid (anyres needs one)")
        return side

    @property
    def dummy_feature(self) -> torch.Tensor:
        return torch.zeros(1, self.hidden_size, device=self.device, dtype=self.dtype)

    @property
    def config(self):
        """CLIP-config look-alike for LLaVA code paths that read ``vision_tower.config``."""
        processor = self._encoder.image_processor if self._encoder is not None else None
        size = None
        if processor is not None:
            crop = getattr(processor, "crop_size", None) or {}
            size = crop.get("height") if isinstance(crop, dict) else None
        return SimpleNamespace(hidden_size=self.dim, image_size=size, patch_size=size, tower=self.tower_config)

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        encoder = self._encoder
        model = getattr(encoder, "model", None)
        if model is not None:
            param = next(model.parameters(), None)
            if param is not None and param.device != self.device:
                model.to(self.device)
                encoder.device = self.device
        return out


def build_vision_tower(vision_tower_cfg, checkpoint_dir: str | None = None, delay_load: bool = False,
                       **kwargs) -> LlavaRevisionTower:
    """LLaVA's ``build_vision_tower`` for ``revision:`` specs (the patched
    ``llava/model/multimodal_encoder/builder.py`` calls it). ``vision_tower_cfg``: LLaVA's
    model args (training) or model config (loading); ``checkpoint_dir``: the checkpoint
    ``load_pretrained_model`` is loading, where a relative spec (``revision:revision_tower``,
    what checkpoints record) is looked up first. Registers the plugin on first use."""
    from revision_plugin.hosts.llava.registration import register  # imported here: registration imports this module

    register()
    spec = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    tower_config = apply_overrides(_resolve_spec(spec, vision_tower_cfg, checkpoint_dir))
    adapter = getattr(vision_tower_cfg, "pretrain_mm_mlp_adapter", None)
    if adapter:  # stage 2 from a stage-1 projector: check it before LLaVA loads it
        check_projector_metadata(adapter, resolve_tower_config(tower_config), None, vision_tower_cfg)
    return LlavaRevisionTower(tower_config, args=vision_tower_cfg, delay_load=delay_load)


def apply_overrides(config: TowerConfig, overrides: str | None = None) -> TowerConfig:
    """``$REVISION_TOWER_OVERRIDES`` (``key=value,...``, the spec syntax) replaces fields of
    every tower built, e.g. ``encoder_model=/local/copy,offline=true`` for a checkpoint that
    recorded a hub id or a path of another machine."""
    overrides = os.environ.get(OVERRIDES_ENV, "") if overrides is None else overrides
    if not overrides.strip():
        return config
    values = config.to_dict()
    given = parse_tower_spec(overrides)
    for key in {spec_field(k.split("=", 1)[0]) for k in overrides.split(",") if "=" in k}:
        values[key] = getattr(given, key)
    logger.info("revision: tower settings overridden by $%s: %s", OVERRIDES_ENV, overrides)
    return TowerConfig(**values)


def _resolve_spec(spec: str, cfg, checkpoint_dir: str | None = None) -> TowerConfig:
    """Parse ``spec``; a relative path spec (what checkpoints record) is looked up in
    ``$REVISION_TOWER_DIR``, the checkpoint being loaded, the config's ``_name_or_path``, and,
    for a spec given on the command line (training), the working directory. A checkpoint being
    loaded never takes its tower from the working directory: a checkpoint that lost its
    ``revision_tower/`` would silently run with whichever one sits there."""
    body = spec[len(SPEC_PREFIX):]
    if "=" in body or os.path.isabs(os.path.expanduser(body)):
        return parse_tower_spec(spec)
    bases = []
    if os.environ.get(TOWER_DIR_ENV):
        bases.append(Path(os.environ[TOWER_DIR_ENV]))
    if checkpoint_dir:
        bases.append(Path(os.path.expanduser(str(checkpoint_dir))))
    name_or_path = getattr(cfg, "_name_or_path", None)
    if name_or_path:
        bases.append(Path(name_or_path))
    saved_at = getattr(cfg, SAVED_AT_KEY, None)  # checkpoints of older versions
    if saved_at:
        bases.append(Path(saved_at))
    loading = checkpoint_dir is not None or getattr(cfg, "mm_vision_tower", None) is not None
    if not loading:
        bases.append(Path.cwd())
    tried = []
    for base in dict.fromkeys(bases):  # the checkpoint is often its own _name_or_path: try it once
        candidate = base / body
        target = candidate / TOWER_CONFIG_NAME if candidate.is_dir() else candidate
        if target.is_file():
            return parse_tower_spec(str(candidate))
        tried.append(str(target))
    raise MissingFileError(
        f"revision tower {spec!r}: not found (tried {', '.join(tried)}); set ${TOWER_DIR_ENV} to the "
        "checkpoint directory that holds it"
    )


def tower_of(model) -> LlavaRevisionTower | None:
    """The revision tower of a LLaVA model (unwrapping DeepSpeed/DDP/PEFT), or ``None``."""
    seen = 0
    while model is not None and seen < 5:
        get_model = getattr(model, "get_model", None)
        if callable(get_model):
            inner = get_model()
            tower = inner.get_vision_tower() if hasattr(inner, "get_vision_tower") else None
            return tower if isinstance(tower, LlavaRevisionTower) else None
        model = getattr(model, "module", None) or getattr(getattr(model, "base_model", None), "model", None)
        seen += 1
    return None

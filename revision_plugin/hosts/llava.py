"""LLaVA 1.2.2 adapter: ``--vision_tower revision:<spec>`` in LLaVA's own entry points
(``llava/train/train_mem.py``, ``python -m llava.train.train``, ``deepspeed --module
llava.train.train``, ``llava.eval.*``, ``llava.serve.cli``, ``scripts/merge_lora_weights.py``).

This is the only module of the plugin that imports ``llava``. After ``revision patch-host``,
LLaVA's tower builder hands ``revision:`` specs to :func:`build_vision_tower` here, and
LLaVA's ``train()`` calls :func:`register` before it parses its flags, so nothing else has to
change in a LLaVA user's scripts. ``register()`` rebinds (all reversible with the returned
``undo``; calling it again is a no-op):

* ``llava.train.train.make_supervised_data_module``: when the model's tower is a revision
  tower, the dataset also accepts *pseudo* records that name a text instead of an image::

      {"id": "cap-1", "text_id": "cap-1", "conversations": [{"from": "human", "value": "<image>\\n"},
                                                           {"from": "gpt", "value": "A red square."}]}
      {"id": "cap-2", "text": "A red square.", "conversations": [...]}     (online encoding)

  ``text_id`` is looked up in the tower's ``text_store``; ``text`` is encoded by the
  encoder's text side in the training loop; ``image`` records go through LLaVA's own image
  loading (or the ``image_store``). Every record is checked before step 1 (see
  :func:`scan_records`): bad records are reported all at once and training does not start,
  unless ``$REVISION_SKIP_BAD_RECORDS`` names a file for the list of records left out.
* ``llava.train.train.preprocess``: the ``llama_3`` template (added to ``conv_templates``).
* ``llava.train.train.LLaVATrainer`` and ``safe_save_model_for_hf_trainer``, and
  ``save_pretrained`` of LLaVA's model classes: every saved checkpoint (stage 1, stage 2,
  every ``checkpoint-N``, LoRA, merged LoRA) carries ``revision_tower/`` (tower config + a
  copy of the operator), its ``config.json`` points at it and records the conversation
  template (``revision_conv_template``); ``mm_projector.bin`` carries its metadata; LoRA
  step checkpoints also hold ``non_lora_trainables.bin`` and ``config.json`` (resumable,
  loadable with ``--model-base``).
* ``LlavaMetaModel.initialize_vision_modules``: the projector metadata check, and the
  conversation template (``--version``) recorded in the model config.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from revision_plugin import __version__
from revision_plugin.errors import ArtifactMismatchError, BadInputError, RevisionError
from revision_plugin.tower import (
    KIND_IMAGE_FEATURE,
    KIND_PIXELS,
    KIND_TEXT,
    KIND_TEXT_FEATURE,
    MODEL_CONFIG_KEY,
    SPEC_PREFIX,
    TOWER_CONFIG_NAME,
    TOWER_DIR_NAME,
    PseudoVisionTower,
    TowerConfig,
    TowerSample,
    collate_tower_inputs,
    parse_tower_spec,
    resolve_tower_config,
    save_tower_artifacts,
)

logger = logging.getLogger(__name__)

SUPPORTED_HOST_VERSION = "1.2.2.post1"
PROJECTOR_FILE = "mm_projector.bin"
PROJECTOR_METADATA_KEY = "revision.projector_metadata"
PROJECTOR_FORMAT = "revision-projector"
# Older checkpoints recorded their absolute save path here; read (as a last resort), never written.
SAVED_AT_KEY = "revision_tower_saved_at"
# config.json key of the conversation template (LLaVA's --version) a checkpoint was trained with.
CONV_TEMPLATE_KEY = "revision_conv_template"
NON_LORA_FILE = "non_lora_trainables.bin"
# Set to a file path: records that fail the start-up scan are left out (and listed there).
SKIP_BAD_RECORDS_ENV = "REVISION_SKIP_BAD_RECORDS"
# Overrides where a checkpoint's relative ``revision:revision_tower`` is looked up.
TOWER_DIR_ENV = "REVISION_TOWER_DIR"
OVERRIDES_ENV = "REVISION_TOWER_OVERRIDES"

_STATE: dict[str, Any] = {"undo": None}


def is_revision_spec(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(SPEC_PREFIX)


# ============================================================================ the tower


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
    register()
    spec = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
    tower_config = apply_overrides(_resolve_spec(spec, vision_tower_cfg, checkpoint_dir))
    adapter = getattr(vision_tower_cfg, "pretrain_mm_mlp_adapter", None)
    if adapter:  # stage 2 from a stage-1 projector: check it before LLaVA loads it
        check_projector_metadata(adapter, resolve_tower_config(tower_config), None, vision_tower_cfg)
    return LlavaRevisionTower(tower_config, args=vision_tower_cfg, delay_load=delay_load)


def build_tower_from_config(cfg, delay_load: bool = False) -> LlavaRevisionTower:
    """:func:`build_vision_tower` without a checkpoint directory (kept for callers)."""
    return build_vision_tower(cfg, delay_load=delay_load)


def apply_overrides(config: TowerConfig, overrides: str | None = None) -> TowerConfig:
    """``$REVISION_TOWER_OVERRIDES`` (``key=value,...``, the spec syntax) replaces fields of
    every tower built, e.g. ``encoder_model=/local/copy,offline=true`` for a checkpoint that
    recorded a hub id or a path of another machine."""
    overrides = os.environ.get(OVERRIDES_ENV, "") if overrides is None else overrides
    if not overrides.strip():
        return config
    values = config.to_dict()
    given = parse_tower_spec(overrides)
    for key in {k.strip().split("=", 1)[0] for k in overrides.split(",") if "=" in k}:
        key = {"model": "encoder_model", "k": "num_tokens", "op": "operator", "store": "text_store"}.get(key, key)
        if key.startswith("encoder_options."):
            key = "encoder_options"
        values[key] = getattr(given, key)
    logger.info("revision: tower settings overridden by $%s: %s", OVERRIDES_ENV, overrides)
    return TowerConfig(**values)


def _resolve_spec(spec: str, cfg, checkpoint_dir: str | None = None) -> TowerConfig:
    """Parse ``spec``; a relative path spec (what checkpoints record) is looked up in
    ``$REVISION_TOWER_DIR``, the checkpoint being loaded, the config's ``_name_or_path``,
    then the working directory."""
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
    bases.append(Path.cwd())
    tried = []
    for base in bases:
        candidate = base / body
        target = candidate / TOWER_CONFIG_NAME if candidate.is_dir() else candidate
        if target.is_file():
            return parse_tower_spec(str(candidate))
        tried.append(str(target))
    raise FileNotFoundError(
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


# ============================================================================ data


def _ensure_pad_token(tokenizer) -> None:
    """LLaVA sets ``pad = unk``; tokenizers without unk (Llama-3) get a reserved token instead."""
    if tokenizer.pad_token_id is not None:
        return
    vocab = tokenizer.get_vocab()
    for candidate in ("<|finetune_right_pad_id|>", "<|reserved_special_token_0|>", "<pad>", "<unk>"):
        if candidate in vocab and candidate not in (tokenizer.eos_token, tokenizer.bos_token):
            tokenizer.pad_token = candidate
            logger.info("revision: tokenizer has no unk/pad token; padding with %s", candidate)
            return
    raise BadInputError(
        "the tokenizer has neither a pad nor an unk token, and none of the reserved pad tokens; "
        "add a pad token to the tokenizer before training"
    )


def _record_name(data_path: str, index: int, record: dict) -> str:
    rid = record.get("id") if isinstance(record, dict) else None
    return f"{data_path}: record {index}" + (f" (id {rid!r})" if rid is not None else "")


MAX_REPORTED_RECORDS = 50


def _bad_records_message(data_path: str, total: int, problems: list[dict]) -> str:
    shown = [f"{data_path}: record {p['index']}" + (f" (id {p['id']!r})" if p.get("id") is not None else "")
             + f": {p['reason']}" for p in problems[:MAX_REPORTED_RECORDS]]
    more = len(problems) - len(shown)
    return (f"{data_path}: {len(problems)} of {total} records cannot be trained on; training was not started. "
            f"Fix them, or set ${SKIP_BAD_RECORDS_ENV}=<file> to train on the rest and list those left out in <file>.\n"
            + "\n".join(shown) + (f"\n... and {more} more" if more > 0 else ""))


def scan_records(dataset) -> list[dict]:
    """Check every record of a :class:`RevisionSupervisedDataset` before step 1; returns one
    ``{"file", "index", "id", "reason"}`` per bad record (all of them, not the first).

    Checked: the record's shape (a ``conversations`` list, at most one visual key, a non-empty
    value), the ``<image>`` count (exactly one with a visual input, none without), ``text_id``s
    missing from the ``text_store`` (and image ids from the ``image_store``), image files
    that are missing or unreadable, and samples whose labels end up fully masked (LLaVA's
    silent ``WARNING: tokenization mismatch``: the sample would train on nothing; skipped
    with ``strict_labels=false``). Tokenisation is LLaVA's own, as in training."""
    from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
    from PIL import Image

    config = dataset.tower_config
    problems: list[dict] = []
    pending_ids: dict[str, list[tuple[int, str]]] = {"text_store": [], "image_store": []}
    tokenize: list[tuple[int, bool]] = []

    def bad(index: int, record, reason: str) -> None:
        rid = record.get("id") if isinstance(record, dict) else None
        problems.append({"file": dataset.data_path, "index": index, "id": rid, "reason": reason})

    for index, record in enumerate(dataset.list_data_dict):
        if not isinstance(record, dict) or not isinstance(record.get("conversations"), list) or not record["conversations"]:
            bad(index, record, "no 'conversations' list")
            continue
        try:
            key = dataset._visual_key(index, record)
        except BadInputError as err:
            bad(index, record, str(err).split(": ", 2)[-1])
            continue
        n_tokens = sum(str(turn.get("value", "")).count(DEFAULT_IMAGE_TOKEN) for turn in record["conversations"]
                       if isinstance(turn, dict))
        if key is None:
            if n_tokens:
                bad(index, record, f"{n_tokens} {DEFAULT_IMAGE_TOKEN} token(s) but no visual input (image, text_id or text)")
                continue
            tokenize.append((index, False))
            continue
        value = record[key]
        if not isinstance(value, str) or not value.strip():
            bad(index, record, f"{key!r} must be a non-empty string")
            continue
        if n_tokens != 1:
            bad(index, record, f"has a visual input ({key}) but {n_tokens} {DEFAULT_IMAGE_TOKEN} tokens in its "
                               "conversations; exactly one is needed")
            continue
        if key == "text_id":
            if not config.text_store:
                bad(index, record, "names a text_id, but the revision tower has no text_store (add text_store=... to the spec)")
                continue
            if config.check_ids:
                pending_ids["text_store"].append((index, value))
        elif key == "image" and config.image_store:
            if config.check_ids:
                pending_ids["image_store"].append((index, value))
        elif key == "image":
            folder = getattr(dataset.data_args, "image_folder", None) or ""
            path = os.path.join(folder, value)
            try:
                with Image.open(path) as image:
                    image.size  # noqa: B018  (header only: cheap)
            except FileNotFoundError:
                bad(index, record, f"image {path} not found")
                continue
            except OSError as err:
                bad(index, record, f"image {path} cannot be read ({type(err).__name__}: {err})")
                continue
        tokenize.append((index, True))

    missing: set[int] = set()
    for key, entries in pending_ids.items():
        if not entries:
            continue
        store = dataset._store(key)
        logger.info("revision: checking %d ids against %s", len(entries), getattr(config, key))
        try:
            store.rows_of([value for _, value in entries])
        except RevisionError:
            for index, value in entries:
                if value not in store:
                    bad(index, dataset.list_data_dict[index], f"{'text_id' if key == 'text_store' else 'image'} "
                                                              f"{value!r} is not in the {key} {getattr(config, key)}")
                    missing.add(index)

    if config.strict_labels:
        limit = dataset.tokenizer.model_max_length
        for index, has_visual in tokenize:
            if index in missing:
                continue
            record = dataset.list_data_dict[index]
            try:
                data = dataset._tokenize(record, has_visual)
            except Exception as err:  # noqa: BLE001  (LLaVA's preprocess on a malformed conversation)
                bad(index, record, f"cannot be tokenised ({type(err).__name__}: {err})")
                continue
            if not bool((data["labels"] != IGNORE_INDEX).any()) and len(data["input_ids"]) < limit:
                bad(index, record, "every label is masked, so this sample would train on nothing (LLaVA's "
                                   "'WARNING: tokenization mismatch': the --version conversation template does not "
                                   "match this tokenizer, or the answer is empty); strict_labels=false in the tower "
                                   "spec lets LLaVA skip such samples silently")
    problems.sort(key=lambda p: p["index"])
    return problems


def _make_dataset_class():
    import llava.train.train as llava_train
    from llava.constants import IGNORE_INDEX

    class RevisionSupervisedDataset(llava_train.LazySupervisedDataset):
        """LLaVA's lazy dataset + pseudo records (``text_id`` / ``text``) and cached images."""

        def __init__(self, data_path: str, tokenizer, data_args, tower_config: TowerConfig) -> None:
            super().__init__(data_path=data_path, tokenizer=tokenizer, data_args=data_args)
            self.data_path = str(data_path)
            self.tower_config = tower_config
            self._stores: dict[str, Any] = {}
            self.left_out: list[dict] = []
            self._apply_scan(scan_records(self))

        # -- the start-up scan -------------------------------------------------------------
        def _visual_key(self, index: int, record: dict) -> str | None:
            keys = [k for k in ("image", "text_id", "text") if k in record]
            if len(keys) > 1:
                raise BadInputError(f"{_record_name(self.data_path, index, record)}: has {' and '.join(keys)}; "
                                    "a record names at most one visual input (image, text_id or text)")
            return keys[0] if keys else None

        def _apply_scan(self, problems: list[dict]) -> None:
            if not problems:
                return
            skip_to = os.environ.get(SKIP_BAD_RECORDS_ENV, "").strip()
            if not skip_to:
                raise BadInputError(_bad_records_message(self.data_path, len(self.list_data_dict), problems))
            bad = {p["index"] for p in problems}
            path = Path(skip_to)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(p, ensure_ascii=False, sort_keys=True) + "\n" for p in problems)
            self.left_out = problems
            self.list_data_dict = [r for i, r in enumerate(self.list_data_dict) if i not in bad]
            logger.warning("revision: %s: %d of %d records left out ($%s); the list is in %s",
                           self.data_path, len(bad), len(bad) + len(self.list_data_dict), SKIP_BAD_RECORDS_ENV, path)
            if not self.list_data_dict:
                raise BadInputError(f"{self.data_path}: every record is bad ({len(bad)}; listed in {path}); nothing to train on")

        def _store(self, key: str):
            if key not in self._stores:
                from revision_plugin.store import open_store

                self._stores[key] = open_store(getattr(self.tower_config, key))
            return self._stores[key]

        # -- LLaVA's length hints: pseudo samples are multimodal -----------------------
        @property
        def lengths(self):
            return [sum(len(c["value"].split()) for c in s["conversations"]) + (128 if self._has_visual(s) else 0)
                    for s in self.list_data_dict]

        @property
        def modality_lengths(self):
            out = []
            for s in self.list_data_dict:
                n = sum(len(c["value"].split()) for c in s["conversations"])
                out.append(n if self._has_visual(s) else -n)
            return out

        @staticmethod
        def _has_visual(record) -> bool:
            return any(k in record for k in ("image", "text_id", "text"))

        # -- items -----------------------------------------------------------------------
        def _tokenize(self, record: dict, has_visual: bool) -> dict:
            conversations = copy.deepcopy([record["conversations"]])
            if has_visual:
                conversations = llava_train.preprocess_multimodal(conversations, self.data_args)
            data = llava_train.preprocess(conversations, self.tokenizer, has_image=has_visual)
            return {"input_ids": data["input_ids"][0], "labels": data["labels"][0]}

        def __getitem__(self, i) -> dict:
            record = self.list_data_dict[i]
            key = self._visual_key(i, record)
            if key == "image" and not self.tower_config.image_store:
                data = super().__getitem__(i)  # LLaVA's own image loading and preprocessing
                data["revision"] = TowerSample(KIND_PIXELS, data.pop("image"))
            elif key is None:
                data = self._tokenize(record, has_visual=False)
                data["revision"] = TowerSample.none()
            else:
                data = self._tokenize(record, has_visual=True)
                if key == "text":
                    data["revision"] = TowerSample(KIND_TEXT, record["text"])
                elif key == "text_id":
                    data["revision"] = TowerSample(KIND_TEXT_FEATURE, self._store("text_store").lookup([record["text_id"]])[0])
                else:
                    data["revision"] = TowerSample(KIND_IMAGE_FEATURE, self._store("image_store").lookup([record["image"]])[0])
            data.pop("image", None)
            if self.tower_config.strict_labels:
                self._check_labels(i, record, data)
            return data

        def _check_labels(self, i: int, record: dict, data: dict) -> None:
            labels = data["labels"]
            if bool((labels != IGNORE_INDEX).any()):
                return
            if len(data["input_ids"]) >= self.tokenizer.model_max_length:
                return  # truncated: LLaVA masks those on purpose
            raise BadInputError(
                f"{_record_name(self.data_path, i, record)}: every label is masked, so this sample would train "
                "on nothing (LLaVA's 'WARNING: tokenization mismatch': the --version conversation template "
                "does not match this tokenizer, or the answer is empty). Fix the template/tokenizer, or set "
                "strict_labels=false in the tower spec to let LLaVA skip such samples silently."
            )

    return RevisionSupervisedDataset


class RevisionDataCollator:
    """LLaVA's collator for text/labels + the tower batch (``images``) built from the samples."""

    def __init__(self, base, pixel_shape=None) -> None:
        self.base = base
        self.pixel_shape = pixel_shape

    def __call__(self, instances):
        samples = []
        plain = []
        for inst in instances:
            inst = dict(inst)
            samples.append(inst.pop("revision"))
            plain.append(inst)
        batch = self.base(plain)
        batch["images"] = collate_tower_inputs(samples, self.pixel_shape)
        return batch


def make_supervised_data_module(tokenizer, data_args, _original=None) -> dict:
    processor = getattr(data_args, "image_processor", None)
    tower_config = getattr(processor, "tower_config", None) if isinstance(processor, RevisionImageProcessor) else None
    if tower_config is None:
        return _original(tokenizer=tokenizer, data_args=data_args)
    import llava.train.train as llava_train

    _ensure_pad_token(tokenizer)
    dataset_cls = _make_dataset_class()
    dataset = dataset_cls(data_args.data_path, tokenizer, data_args, tower_config)
    if not tower_config.image_store and any("image" in r for r in dataset.list_data_dict):
        # Pixels are made in the workers, encoded in the tower (main process, once per rank):
        # load the processor here, before workers start, so that no worker loads the encoder.
        processor.resolve()
    collator = RevisionDataCollator(llava_train.DataCollatorForSupervisedDataset(tokenizer=tokenizer))
    return {"train_dataset": dataset, "eval_dataset": None, "data_collator": collator}


# ============================================================================ Llama-3 template

LLAMA3_VERSION = "llama_3"
LLAMA3_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that "
    "the user provides, and assist the user with a variety of tasks using natural language."
)


def llama3_conversation():
    """Llama-3-Instruct's chat format as a LLaVA ``Conversation`` (``--version llama_3``).

    LLaVA 1.2.2 has no template for Llama-3 (the paper's LLM), and its ``v1`` masking needs a
    ``tokenizer.legacy`` attribute Llama-3's tokenizer does not have. Prompts come from
    ``get_prompt()`` as for any template (``<|start_header_id|>role<|end_header_id|>\n\n ...
    <|eot_id|>``); training labels come from :func:`preprocess_llama_3`.
    """
    from llava import conversation as conversation_lib

    return conversation_lib.Conversation(
        system=f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA3_SYSTEM}",
        roles=("<|start_header_id|>user<|end_header_id|>\n\n", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
        version=LLAMA3_VERSION,
        messages=[],
        offset=0,
        sep_style=conversation_lib.SeparatorStyle.MPT,
        sep="<|eot_id|>",
    )


def preprocess_llama_3(sources, tokenizer, has_image: bool = False) -> dict:
    """Tokenise ``llama_3`` conversations segment by segment, so the label mask is exact by
    construction (no per-round re-counting that can drift): system and user turns and the
    assistant headers are masked, assistant answers and their ``<|eot_id|>`` are learned."""
    from llava import conversation as conversation_lib
    from llava.constants import IGNORE_INDEX
    from llava.mm_utils import tokenizer_image_token

    conv = conversation_lib.default_conversation
    roles = {"human": conv.roles[0], "gpt": conv.roles[1]}
    bos = tokenizer.bos_token_id

    def encode(text: str) -> list[int]:
        ids = tokenizer_image_token(text, tokenizer) if has_image else tokenizer(text).input_ids
        return ids[1:] if ids and bos is not None and ids[0] == bos else ids

    all_ids, all_labels = [], []
    for i, source in enumerate(sources):
        if roles[source[0]["from"]] != conv.roles[0]:
            source = source[1:]  # skip a leading assistant turn, as LLaVA does
        ids = [bos] if bos is not None else []
        labels = [IGNORE_INDEX] * len(ids)
        system = encode(conv.system + conv.sep)
        ids += system
        labels += [IGNORE_INDEX] * len(system)
        for j, sentence in enumerate(source):
            role = roles[sentence["from"]]
            if role != conv.roles[j % 2]:
                raise BadInputError(f"conversation {i}: turn {j} is from {sentence['from']!r}; turns must alternate human/gpt")
            if j % 2 == 0:
                part = encode(role + sentence["value"] + conv.sep)
                ids += part
                labels += [IGNORE_INDEX] * len(part)
            else:
                head, body = encode(role), encode(sentence["value"] + conv.sep)
                ids += head + body
                labels += [IGNORE_INDEX] * len(head) + body
        limit = tokenizer.model_max_length
        all_ids.append(torch.tensor(ids[:limit], dtype=torch.long))
        all_labels.append(torch.tensor(labels[:limit], dtype=torch.long))
    return {"input_ids": all_ids, "labels": all_labels}


def preprocess(sources, tokenizer, has_image: bool = False, _original=None) -> dict:
    from llava import conversation as conversation_lib

    if conversation_lib.default_conversation.version == LLAMA3_VERSION:
        return preprocess_llama_3(sources, tokenizer, has_image=has_image)
    return _original(sources, tokenizer, has_image=has_image)


# ============================================================================ checkpoints


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
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(weights, tmp)
    os.replace(tmp, path)


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
        logger.warning("revision: %s was trained with num_tokens=%s, this run uses %s", path, meta["num_tokens"], tower_config.num_tokens)
    method, fingerprint = None, None
    if tower_config.operator:
        info = json.loads((Path(tower_config.operator) / "operator.json").read_text())
        method, fingerprint = info.get("method"), info.get("fingerprint")
    if (meta.get("alignment_method"), meta.get("operator_fingerprint")) != (method, fingerprint):
        logger.warning("revision: %s was trained with operator %s (fingerprint %s); this run uses %s (%s). "
                       "Images go through op.align_image: use the stage-1 operator unless this is intended.",
                       path, meta.get("alignment_method"), str(meta.get("operator_fingerprint"))[:12], method,
                       str(fingerprint)[:12])


def conv_template_of(model) -> str | None:
    """The conversation template (LLaVA's ``--version``) ``model`` was trained with: what
    :func:`initialize_vision_modules` recorded, else the name of LLaVA's current default."""
    name = getattr(getattr(_unwrap(model), "config", None), CONV_TEMPLATE_KEY, None)
    if name:
        return str(name)
    from llava import conversation as conversation_lib

    current = conversation_lib.default_conversation
    return next((key for key, conv in conversation_lib.conv_templates.items() if conv is current), None)


def checkpoint_config_entries(model, tower: LlavaRevisionTower) -> dict:
    """The ``config.json`` keys of a self-contained checkpoint: the tower spec relative to the
    checkpoint, the resolved tower settings, the conversation template."""
    op = tower.operator
    entries = {
        "mm_vision_tower": f"{SPEC_PREFIX}{TOWER_DIR_NAME}",
        MODEL_CONFIG_KEY: {
            **tower.inference_config().to_dict(),
            "operator": None if op is None else f"{TOWER_DIR_NAME}/operator",
            "alignment_method": None if op is None else op.info.method,
        },
    }
    template = conv_template_of(model)
    if template:
        entries[CONV_TEMPLATE_KEY] = template
    return entries


def finalize_checkpoint(output_dir: str | Path, model) -> None:
    """Make ``output_dir`` self-contained: tower artifacts, ``config.json`` pointing at them
    (and naming the conversation template), projector metadata. Call on the main process
    after the host saved the checkpoint; idempotent."""
    tower = tower_of(model)
    if tower is None:
        return
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_tower_artifacts(tower, output_dir)
    config_path = output_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config.update(checkpoint_config_entries(model, tower))
        config.pop(SAVED_AT_KEY, None)  # no absolute paths: the checkpoint is found where it is
        tmp = config_path.with_name(f".config.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, config_path)
    projector = output_dir / PROJECTOR_FILE
    if projector.is_file():
        add_projector_metadata(projector, projector_metadata(_unwrap(model), tower))


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


def _is_peft(model) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(_unwrap(model), PeftModel)


def _is_main_process(trainer) -> bool:
    return bool(getattr(trainer.args, "should_save", True)) and trainer.args.local_rank in (-1, 0)


def _save_lora_extras(trainer, folder: str) -> None:
    """What LLaVA writes next to a final LoRA adapter, for a ``checkpoint-N`` too: the
    trained non-LoRA weights (projector) and ``config.json``, so the step checkpoint resumes
    with its projector and loads with ``--model-base``. Every rank (ZeRO-3 gathers)."""
    import llava.train.train as llava_train

    weights = llava_train.get_peft_state_non_lora_maybe_zero_3(trainer.model.named_parameters())
    if _is_main_process(trainer):
        os.makedirs(folder, exist_ok=True)
        _unwrap(trainer.model).config.save_pretrained(folder)
        torch.save(weights, os.path.join(folder, NON_LORA_FILE))


def _make_trainer_class():
    from llava.train.llava_trainer import LLaVATrainer
    from transformers import Trainer

    class RevisionLLaVATrainer(LLaVATrainer):
        """LLaVA's trainer; checkpoints also carry the tower artifacts and projector metadata,
        and projector-only (stage-1) and LoRA checkpoints can be resumed."""

        def _save_checkpoint(self, model, trial, *args, **kwargs):
            super()._save_checkpoint(model, trial, *args, **kwargs)
            adapter_only = getattr(self.args, "tune_mm_mlp_adapter", False)
            if adapter_only:
                # LLaVA writes only mm_projector.bin here: no optimizer, scheduler, RNG or
                # trainer state, so a killed stage 1 restarted from zero. The base Trainer adds
                # them (its model save is a no-op: LLaVA's _save skips adapter mode).
                Trainer._save_checkpoint(self, model, trial)
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            if not adapter_only and _is_peft(self.model):
                _save_lora_extras(self, folder)
            if tower_of(self.model) is None or not _is_main_process(self):
                return
            if os.path.isdir(folder):
                finalize_checkpoint(folder, self.model)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            target = _unwrap(model if model is not None else self.model)
            projector = os.path.join(resume_from_checkpoint, PROJECTOR_FILE)
            if getattr(self.args, "tune_mm_mlp_adapter", False) and os.path.isfile(projector):
                weights = torch.load(projector, map_location="cpu", weights_only=True)
                weights = {k: v for k, v in weights.items() if "mm_projector" in k}
                missing = [k for k in target.state_dict() if "mm_projector" in k and k not in weights]
                if missing or not weights:
                    raise ArtifactMismatchError(f"{projector}: projector keys missing: {missing or 'all'}")
                target.load_state_dict(weights, strict=False)
                logger.info("revision: resumed the projector from %s", projector)
                return
            out = super()._load_from_checkpoint(resume_from_checkpoint, model)
            extras = os.path.join(resume_from_checkpoint, NON_LORA_FILE)
            if _is_peft(target) and os.path.isfile(extras):
                weights = torch.load(extras, map_location="cpu", weights_only=True)
                unexpected = [k for k in weights if k not in target.state_dict()]
                if unexpected:
                    raise ArtifactMismatchError(f"{extras}: weights this model does not have: {unexpected[:5]}")
                target.load_state_dict(weights, strict=False)
                logger.info("revision: resumed %d non-LoRA weights (projector) from %s", len(weights), extras)
            return out

        def save_state(self):
            super().save_state()
            tower = tower_of(self.model)
            if tower is None or not _is_peft(self.model):
                return
            # LLaVA's train() saves a LoRA run itself right after this (config.json, adapter,
            # non_lora_trainables.bin), bypassing every save hook: put the checkpoint's keys in
            # the config it writes, and the tower artifacts next to it.
            config = _unwrap(self.model).config
            for key, value in checkpoint_config_entries(self.model, tower).items():
                setattr(config, key, value)
            if _is_main_process(self):
                save_tower_artifacts(tower, self.args.output_dir)

    return RevisionLLaVATrainer


def safe_save_model_for_hf_trainer(trainer, output_dir: str, _original=None) -> None:
    _original(trainer=trainer, output_dir=output_dir)
    if tower_of(trainer.model) is not None and _is_main_process(trainer):
        finalize_checkpoint(output_dir, trainer.model)


def save_pretrained(self, save_directory, *args, _original=None, **kwargs):
    """LLaVA model ``save_pretrained`` (Trainer saves, ``merge_lora_weights.py``): + the tower artifacts."""
    out = _original(self, save_directory, *args, **kwargs)
    if kwargs.get("is_main_process", True) and tower_of(self) is not None:
        finalize_checkpoint(save_directory, self)
    return out


def initialize_vision_modules(self, model_args, fsdp=None, _original=None):
    spec = getattr(model_args, "vision_tower", None)
    if is_revision_spec(spec):
        adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
        if adapter and self.get_vision_tower() is not None:
            # The tower came with the model (a LLaVA checkpoint), so build_vision_tower did not
            # see the adapter: check it here.
            tower_config = resolve_tower_config(_resolve_spec(spec, model_args))
            check_projector_metadata(adapter, tower_config, self.config, model_args)
        if getattr(model_args, "version", None):
            setattr(self.config, CONV_TEMPLATE_KEY, model_args.version)
    return _original(self, model_args, fsdp=fsdp)


# ============================================================================ registration


def _check_host() -> None:
    from importlib import metadata

    try:
        version = metadata.version("llava-torch")
    except metadata.PackageNotFoundError:
        version = None
    if version is not None and version != SUPPORTED_HOST_VERSION:
        raise RevisionError(f"revision_plugin.hosts.llava supports llava-torch {SUPPORTED_HOST_VERSION}, found {version}")


def _host_not_patched(err: Exception | None = None) -> RevisionError:
    detail = f"cannot import llava ({err}); " if err is not None else ""
    return RevisionError(f"{detail}LLaVA is not patched for this plugin and transformers version: run `revision patch-host`")


def _model_classes() -> list[type]:
    import llava.model as llava_model

    names = ("LlavaLlamaForCausalLM", "LlavaMistralForCausalLM", "LlavaMptForCausalLM")
    return [getattr(llava_model, name) for name in names if hasattr(llava_model, name)]


_MISSING = object()


def register() -> Callable[[], None]:
    """Hook the plugin into LLaVA; idempotent. Returns ``undo`` (restores LLaVA's functions).

    The patched LLaVA calls it itself (its tower builder on the first ``revision:`` spec, and
    ``llava.train.train.train()`` before parsing its flags); calling it directly is harmless."""
    if _STATE["undo"] is not None:
        return _STATE["undo"]
    _check_host()
    try:
        import llava.model.multimodal_encoder.builder as encoder_builder
        import llava.train.train as llava_train
        from llava import conversation as conversation_lib
        from llava.model import llava_arch
    except ImportError as err:
        raise _host_not_patched(err) from err
    if not hasattr(encoder_builder, "checkpoint_being_loaded"):
        raise _host_not_patched()

    def bind(fn, original):
        def wrapper(*args, **kwargs):
            return fn(*args, _original=original, **kwargs)

        wrapper.__wrapped__ = original
        wrapper.__name__ = getattr(original, "__name__", fn.__name__)
        wrapper.__doc__ = fn.__doc__
        return wrapper

    meta_model = llava_arch.LlavaMetaModel
    templates = conversation_lib.conv_templates
    added_template = LLAMA3_VERSION not in templates
    if added_template:
        templates[LLAMA3_VERSION] = llama3_conversation()
    rebinds = [
        (llava_train, "preprocess", bind(preprocess, llava_train.preprocess)),
        (llava_train, "make_supervised_data_module", bind(make_supervised_data_module, llava_train.make_supervised_data_module)),
        (llava_train, "safe_save_model_for_hf_trainer", bind(safe_save_model_for_hf_trainer, llava_train.safe_save_model_for_hf_trainer)),
        (llava_train, "LLaVATrainer", _make_trainer_class()),
        (meta_model, "initialize_vision_modules", bind(initialize_vision_modules, meta_model.initialize_vision_modules)),
    ]
    rebinds += [(cls, "save_pretrained", bind(save_pretrained, cls.save_pretrained)) for cls in _model_classes()]
    saved = [(owner, name, owner.__dict__.get(name, _MISSING) if isinstance(owner, type) else getattr(owner, name))
             for owner, name, _ in rebinds]
    for owner, name, new in rebinds:
        setattr(owner, name, new)

    def undo() -> None:
        if _STATE["undo"] is not undo:
            return
        for owner, name, old in saved:
            if old is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, old)
        if added_template:
            templates.pop(LLAMA3_VERSION, None)
        _STATE["undo"] = None

    _STATE["undo"] = undo
    logger.debug("revision: registered with llava %s", SUPPORTED_HOST_VERSION)
    return undo


def load_pretrained_model(model_path, model_base=None, model_name=None, **kwargs):
    """LLaVA's ``load_pretrained_model`` (``model_name`` defaults to the path's name; LLaVA
    only builds the vision tower when that name contains 'llava')."""
    register()
    from llava.model.builder import load_pretrained_model as llava_load

    model_name = model_name or Path(str(model_path).rstrip("/")).name
    if "llava" not in model_name.lower():
        raise BadInputError(f"model_name {model_name!r}: LLaVA only builds the vision tower when the name contains 'llava'")
    return llava_load(model_path, model_base, model_name, **kwargs)


def train_llava(argv: list[str], attn_implementation: str | None = None) -> None:
    """LLaVA's own ``llava.train.train.train()`` in this process, with ``argv`` as its flags:
    the Python way to run stage 1 or stage 2 (the command-line way is
    ``python -m llava.train.train FLAGS``, or ``deepspeed --module llava.train.train FLAGS``).
    ``attn_implementation``: what LLaVA's ``train_mem.py`` passes (``flash_attention_2``);
    ``None`` is transformers' default (sdpa), which works on CPU."""
    import sys

    register()
    import llava.train.train as llava_train

    saved = sys.argv
    sys.argv = ["llava.train.train", *argv]
    try:
        llava_train.train(attn_implementation=attn_implementation)
    finally:
        sys.argv = saved


__all__ = [
    "LlavaRevisionTower",
    "RevisionImageProcessor",
    "add_projector_metadata",
    "build_vision_tower",
    "finalize_checkpoint",
    "is_revision_spec",
    "load_pretrained_model",
    "read_projector_metadata",
    "register",
    "scan_records",
    "tower_of",
    "train_llava",
]

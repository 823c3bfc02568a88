"""LLaVA 1.2.2 adapter: ``register()`` makes ``--vision_tower revision:<spec>`` work in
LLaVA's own ``train()``, ``load_pretrained_model`` and evaluation code, unchanged.

This is the only module of the plugin that imports ``llava``. What ``register()`` rebinds
(all reversible with the returned ``undo``; calling ``register()`` again is a no-op):

* ``build_vision_tower`` (in ``llava.model.multimodal_encoder.builder`` and in
  ``llava.model.llava_arch``, which imported it by name): ``revision:`` specs build a
  :class:`LlavaRevisionTower`, anything else goes to LLaVA's CLIP builder.
* ``llava.train.train.make_supervised_data_module``: when the model's tower is a revision
  tower, the dataset also accepts *pseudo* records that name a text instead of an image::

      {"id": "cap-1", "text_id": "cap-1", "conversations": [{"from": "human", "value": "<image>\\n"},
                                                           {"from": "gpt", "value": "A red square."}]}
      {"id": "cap-2", "text": "A red square.", "conversations": [...]}     (online encoding)

  ``text_id`` is looked up in the tower's ``text_store`` (no per-caption files on disk);
  ``text`` is encoded by the encoder's text side in the training loop. Records with an
  ``image`` go through the image side (or the ``image_store`` when configured). Pseudo and
  real records can be mixed in one file and one batch; LLaVA's ``<image>`` token handling,
  tokenisation and label masking run unchanged (its own ``preprocess`` functions).
  Samples whose labels end up fully masked (LLaVA's silent ``WARNING: tokenization
  mismatch``, which trains on nothing) raise an error naming the record.
* ``llava.train.train.LLaVATrainer`` and ``safe_save_model_for_hf_trainer``: every saved
  checkpoint carries ``revision_tower/`` (tower config + a copy of the operator) and its
  ``config.json`` points at it, so loading needs nothing from the training command line;
  ``mm_projector.bin`` carries its metadata (encoder, dims, projector type, alignment
  method), checked when stage 2 loads it with ``--pretrain_mm_mlp_adapter``.
* ``LlavaMetaModel.initialize_vision_modules``: that check.
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
SAVED_AT_KEY = "revision_tower_saved_at"
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


def build_tower_from_config(cfg, delay_load: bool = False) -> LlavaRevisionTower:
    """LLaVA ``build_vision_tower`` for ``revision:`` specs (``cfg``: model args or model config)."""
    spec = getattr(cfg, "mm_vision_tower", getattr(cfg, "vision_tower", None))
    tower_config = apply_overrides(_resolve_spec(spec, cfg))
    return LlavaRevisionTower(tower_config, args=cfg, delay_load=delay_load)


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


def _resolve_spec(spec: str, cfg) -> TowerConfig:
    """Parse ``spec``; a relative path spec (what checkpoints record) is looked up next to the
    checkpoint: ``$REVISION_TOWER_DIR``, the config's ``_name_or_path``, where it was saved."""
    body = spec[len(SPEC_PREFIX):]
    if "=" in body or os.path.isabs(os.path.expanduser(body)):
        return parse_tower_spec(spec)
    bases = []
    if os.environ.get(TOWER_DIR_ENV):
        bases.append(Path(os.environ[TOWER_DIR_ENV]))
    name_or_path = getattr(cfg, "_name_or_path", None)
    if name_or_path:
        bases.append(Path(name_or_path))
    saved_at = getattr(cfg, SAVED_AT_KEY, None)
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


def _make_dataset_class():
    import llava.train.train as llava_train
    from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX

    class RevisionSupervisedDataset(llava_train.LazySupervisedDataset):
        """LLaVA's lazy dataset + pseudo records (``text_id`` / ``text``) and cached images."""

        def __init__(self, data_path: str, tokenizer, data_args, tower_config: TowerConfig) -> None:
            super().__init__(data_path=data_path, tokenizer=tokenizer, data_args=data_args)
            self.data_path = str(data_path)
            self.tower_config = tower_config
            self._stores: dict[str, Any] = {}
            self._validate()

        # -- validation --------------------------------------------------------------
        def _visual_key(self, index: int, record: dict) -> str | None:
            keys = [k for k in ("image", "text_id", "text") if k in record]
            if len(keys) > 1:
                raise BadInputError(f"{_record_name(self.data_path, index, record)}: has {' and '.join(keys)}; "
                                    "a record names at most one visual input (image, text_id or text)")
            return keys[0] if keys else None

        def _validate(self) -> None:
            text_ids, image_ids = [], []
            for index, record in enumerate(self.list_data_dict):
                if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
                    raise BadInputError(f"{_record_name(self.data_path, index, record)}: no 'conversations' list")
                key = self._visual_key(index, record)
                if key is None:
                    continue
                value = record[key]
                if not isinstance(value, str) or not value.strip():
                    raise BadInputError(f"{_record_name(self.data_path, index, record)}: {key!r} must be a non-empty string")
                n_tokens = sum(str(turn.get("value", "")).count(DEFAULT_IMAGE_TOKEN) for turn in record["conversations"])
                if n_tokens != 1:
                    raise BadInputError(
                        f"{_record_name(self.data_path, index, record)}: has a visual input ({key}) but "
                        f"{n_tokens} {DEFAULT_IMAGE_TOKEN} tokens in its conversations; exactly one is needed"
                    )
                if key == "text_id":
                    text_ids.append(value)
                elif key == "image" and self.tower_config.image_store:
                    image_ids.append(value)
            if text_ids and not self.tower_config.text_store:
                raise BadInputError(f"{self.data_path}: {len(text_ids)} records name a text_id, but the revision "
                                    "tower has no text_store (add text_store=... to the spec)")
            if self.tower_config.check_ids:
                for key, ids in (("text_store", text_ids), ("image_store", image_ids)):
                    if ids:
                        logger.info("revision: checking %d ids against %s", len(ids), getattr(self.tower_config, key))
                        self._store(key).rows_of(ids)  # raises naming the missing ids

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


def finalize_checkpoint(output_dir: str | Path, model) -> None:
    """Make ``output_dir`` self-contained: tower artifacts, config.json pointing at them,
    projector metadata. Call on the main process after the host saved the checkpoint."""
    tower = tower_of(model)
    if tower is None:
        return
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_tower_artifacts(tower, output_dir)
    config_path = output_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        config["mm_vision_tower"] = f"{SPEC_PREFIX}{TOWER_DIR_NAME}"
        op = tower.operator
        config[MODEL_CONFIG_KEY] = {
            **tower.inference_config().to_dict(),
            "operator": None if op is None else f"{TOWER_DIR_NAME}/operator",
            "alignment_method": None if op is None else op.info.method,
        }
        config[SAVED_AT_KEY] = str(output_dir.resolve())
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


def _is_main_process(trainer) -> bool:
    return bool(getattr(trainer.args, "should_save", True)) and trainer.args.local_rank in (-1, 0)


def _make_trainer_class():
    from llava.train.llava_trainer import LLaVATrainer
    from transformers import Trainer

    class RevisionLLaVATrainer(LLaVATrainer):
        """LLaVA's trainer; checkpoints also carry the tower artifacts and projector metadata,
        and projector-only (stage-1) checkpoints can be resumed."""

        def _save_checkpoint(self, model, trial, *args, **kwargs):
            super()._save_checkpoint(model, trial, *args, **kwargs)
            if getattr(self.args, "tune_mm_mlp_adapter", False):
                # LLaVA writes only mm_projector.bin here: no optimizer, scheduler, RNG or
                # trainer state, so a killed stage 1 restarted from zero. The base Trainer adds
                # them (its model save is a no-op: LLaVA's _save skips adapter mode).
                Trainer._save_checkpoint(self, model, trial)
            if tower_of(self.model) is None or not _is_main_process(self):
                return
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            if os.path.isdir(folder):
                finalize_checkpoint(folder, self.model)

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            projector = os.path.join(resume_from_checkpoint, PROJECTOR_FILE)
            if getattr(self.args, "tune_mm_mlp_adapter", False) and os.path.isfile(projector):
                target = _unwrap(model if model is not None else self.model)
                weights = torch.load(projector, map_location="cpu", weights_only=True)
                weights = {k: v for k, v in weights.items() if "mm_projector" in k}
                missing = [k for k in target.state_dict() if "mm_projector" in k and k not in weights]
                if missing or not weights:
                    raise ArtifactMismatchError(f"{projector}: projector keys missing: {missing or 'all'}")
                target.load_state_dict(weights, strict=False)
                logger.info("revision: resumed the projector from %s", projector)
                return
            return super()._load_from_checkpoint(resume_from_checkpoint, model)

    return RevisionLLaVATrainer


def safe_save_model_for_hf_trainer(trainer, output_dir: str, _original=None) -> None:
    _original(trainer=trainer, output_dir=output_dir)
    if tower_of(trainer.model) is not None and _is_main_process(trainer):
        finalize_checkpoint(output_dir, trainer.model)


def initialize_vision_modules(self, model_args, fsdp=None, _original=None):
    spec = getattr(model_args, "vision_tower", None)
    adapter = getattr(model_args, "pretrain_mm_mlp_adapter", None)
    if is_revision_spec(spec) and adapter:
        tower_config = resolve_tower_config(_resolve_spec(spec, model_args))
        check_projector_metadata(adapter, tower_config, self.config, model_args)
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


def register() -> Callable[[], None]:
    """Hook the plugin into LLaVA; idempotent. Returns ``undo`` (restores LLaVA's functions)."""
    if _STATE["undo"] is not None:
        return _STATE["undo"]
    _check_host()
    try:
        import llava.model.multimodal_encoder.builder as encoder_builder
        import llava.train.train as llava_train
        from llava.model import llava_arch
    except ImportError as err:
        from revision_plugin.hosts.patch import host_status

        status = host_status()
        hint = "" if status.applied else " LLaVA is not patched for this transformers version: run `revision patch-host`."
        raise RevisionError(f"cannot import llava ({err}).{hint}") from err

    original_build = encoder_builder.build_vision_tower

    def build_vision_tower(vision_tower_cfg, **kwargs):
        spec = getattr(vision_tower_cfg, "mm_vision_tower", getattr(vision_tower_cfg, "vision_tower", None))
        if is_revision_spec(spec):
            return build_tower_from_config(vision_tower_cfg, delay_load=kwargs.get("delay_load", False))
        return original_build(vision_tower_cfg, **kwargs)

    build_vision_tower.__wrapped__ = original_build

    def bind(fn, original):
        def wrapper(*args, **kwargs):
            return fn(*args, _original=original, **kwargs)

        wrapper.__wrapped__ = original
        wrapper.__name__ = getattr(original, "__name__", fn.__name__)
        wrapper.__doc__ = fn.__doc__
        return wrapper

    from llava import conversation as conversation_lib

    meta_model = llava_arch.LlavaMetaModel
    templates = conversation_lib.conv_templates
    added_template = LLAMA3_VERSION not in templates
    if added_template:
        templates[LLAMA3_VERSION] = llama3_conversation()
    rebinds = [
        (llava_train, "preprocess", bind(preprocess, llava_train.preprocess)),
        (encoder_builder, "build_vision_tower", build_vision_tower),
        (llava_arch, "build_vision_tower", build_vision_tower),
        (llava_train, "make_supervised_data_module", bind(make_supervised_data_module, llava_train.make_supervised_data_module)),
        (llava_train, "safe_save_model_for_hf_trainer", bind(safe_save_model_for_hf_trainer, llava_train.safe_save_model_for_hf_trainer)),
        (llava_train, "LLaVATrainer", _make_trainer_class()),
        (meta_model, "initialize_vision_modules", bind(initialize_vision_modules, meta_model.initialize_vision_modules)),
    ]
    saved = [(owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)) for owner, name, _ in rebinds]
    for owner, name, new in rebinds:
        setattr(owner, name, new)

    def undo() -> None:
        if _STATE["undo"] is not undo:
            return
        for owner, name, old in saved:
            setattr(owner, name, old)
        if added_template:
            templates.pop(LLAMA3_VERSION, None)
        _STATE["undo"] = None

    _STATE["undo"] = undo
    logger.debug("revision: registered with llava %s", SUPPORTED_HOST_VERSION)
    return undo


def load_pretrained_model(model_path, model_base=None, model_name=None, **kwargs):
    """``register()`` + LLaVA's ``load_pretrained_model`` (``model_name`` defaults to the path's
    name; LLaVA only builds the vision tower when that name contains 'llava')."""
    register()
    from llava.model.builder import load_pretrained_model as llava_load

    model_name = model_name or Path(str(model_path).rstrip("/")).name
    if "llava" not in model_name.lower():
        raise BadInputError(f"model_name {model_name!r}: LLaVA only builds the vision tower when the name contains 'llava'")
    return llava_load(model_path, model_base, model_name, **kwargs)


__all__ = [
    "LlavaRevisionTower",
    "RevisionImageProcessor",
    "add_projector_metadata",
    "finalize_checkpoint",
    "is_revision_spec",
    "load_pretrained_model",
    "read_projector_metadata",
    "register",
    "tower_of",
]


# ============================================================================ launcher


def default_attn_implementation() -> str:
    """flash-attention 2 where LLaVA's train_mem.py would use it (CUDA + flash_attn), else sdpa."""
    import importlib.util

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def train_main(argv: list[str] | None = None) -> None:
    """``scripts/train.py``: LLaVA's ``train()`` with the plugin registered (cf. LLaVA's
    ``train_mem.py``). Takes LLaVA's own flags plus ``--attn_implementation`` (default:
    flash_attention_2 with CUDA and flash_attn installed, else sdpa;
    ``$REVISION_ATTN_IMPLEMENTATION`` overrides)."""
    import argparse
    import sys

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--attn_implementation", default=os.environ.get("REVISION_ATTN_IMPLEMENTATION"))
    known, rest = pre.parse_known_args(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    register()
    import llava.train.train as llava_train

    sys.argv = [sys.argv[0], *rest]
    llava_train.train(attn_implementation=known.attn_implementation or default_attn_implementation())


def run_module(argv: list[str] | None = None) -> None:
    """``python -m revision_plugin.hosts.llava MODULE [ARGS...]``: ``register()``, then run a
    LLaVA entry point as ``__main__`` (e.g. ``llava.eval.model_vqa``, ``llava.serve.cli``,
    ``llava.train.train``), so its own code loads ``revision:`` towers."""
    import runpy
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(run_module.__doc__)
        raise SystemExit(0 if argv else 2)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    register()
    sys.argv = [argv[0], *argv[1:]]
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    # Run through the imported module, not this __main__ copy, so there is one set of classes.
    import importlib

    importlib.import_module("revision_plugin.hosts.llava").run_module()

"""The pseudo-vision tower: a host-agnostic ``nn.Module`` that stands where an MLLM's vision
encoder stands.

Two modes, per sample, in one batch:

* **pseudo** (stage 1): a text, or the id of its embedding in a feature store, goes through
  the contrastive encoder's *text* side and the frozen alignment operator ``op(x)``, which
  moves it into the image embedding distribution (ReVision eq. 25);
* **image** (stage 2, inference, the paired "w/ image" baseline): a real image, or the id of
  its cached embedding, goes through the same encoder's *image* side and
  ``op.align_image(x)`` (identity on unit vectors for ReAlign, centring for C3).

Either way the tower returns ``[B, k, dim]``: one aligned vector per sample, repeated
``k = num_tokens`` times (the official ReVision code replicates it 576 times; ``1`` feeds the
same information at a fraction of the cost, see ``benchmarks/bench_stage1.py``).

*Online* inputs (texts, pixels) run the encoder inside the training loop; *cached* inputs
(ids) are read from feature stores written by ``revision embed``. The operator is frozen
(buffers only, kept out of the host's ``state_dict`` and out of its dtype casts, so its
float64 statistics are never rounded to fp16) and follows the host's train/eval mode (C3's
noise is drawn in training only).

The tower is configured by a :class:`TowerConfig`, written as a *spec* (see
:func:`parse_tower_spec` and ``docs/llava.md``)::

    encoder=llm2clip,encoder_model=/models/LLM2CLIP-Openai-L-14-336,operator=/runs/op,text_store=/feats/text
    /path/to/tower.json            (the same keys as JSON; relative paths are relative to the file)
    /path/to/dir                   (a directory holding revision_tower.json, e.g. a checkpoint's)

Host adapters (``revision_plugin.hosts.*``) turn a host's data records into the batches this
module reads (:func:`collate_tower_inputs`) and save what inference needs next to the host's
checkpoint (:func:`save_tower_artifacts`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from revision_plugin.errors import ArtifactMismatchError, BadInputError, RevisionError

logger = logging.getLogger(__name__)

SPEC_PREFIX = "revision:"
TOWER_CONFIG_NAME = "revision_tower.json"
TOWER_DIR_NAME = "revision_tower"
TOWER_FORMAT_VERSION = 1
# Key under which a host model's config records the resolved tower (see hosts/llava.py).
MODEL_CONFIG_KEY = "revision_tower"

# Per-sample input kinds inside a tower batch.
KIND_NONE = 0  # the sample has no visual input (text-only conversation): zeros, unused by the host
KIND_PIXELS = 1  # real image, online: pixels -> image encoder -> op.align_image
KIND_TEXT_FEATURE = 2  # pseudo, cached: stored text embedding -> op
KIND_IMAGE_FEATURE = 3  # real image, cached: stored image embedding -> op.align_image
KIND_TEXT = 4  # pseudo, online: raw text -> text encoder -> op
KIND_NAMES = {KIND_NONE: "none", KIND_PIXELS: "pixels", KIND_TEXT_FEATURE: "text_feature",
              KIND_IMAGE_FEATURE: "image_feature", KIND_TEXT: "text"}

# Keys of a collated tower batch (a dict, so hosts' input handling moves it to the device).
BATCH_KINDS = "revision_kinds"
BATCH_PIXELS = "pixel_values"  # always present (maybe empty): carries the host's compute dtype
BATCH_TEXT_FEATURES = "text_features"  # float32 bit-cast to int32: never rounded by host casts
BATCH_IMAGE_FEATURES = "image_features"
BATCH_TEXTS = "texts"


# ----------------------------------------------------------------------------- config


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
                values[key] = _parse_bool(values[key], f"{source}: {key}")
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

    @property
    def needs_encoder_for_images(self) -> bool:
        return self.image_store is None


def _parse_bool(value: str, what: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise BadInputError(f"{what}: expected true/false, got {value!r}")


_SPEC_ALIASES = {"model": "encoder_model", "k": "num_tokens", "op": "operator", "store": "text_store"}


def parse_tower_spec(spec: str, base_dir: str | Path | None = None) -> TowerConfig:
    """Parse a tower spec (with or without the ``revision:`` prefix).

    * ``key=value,key=value`` - :class:`TowerConfig` fields (aliases: ``model`` =
      encoder_model, ``op`` = operator, ``store`` = text_store, ``k`` = num_tokens;
      ``encoder_options.NAME=value`` sets one encoder option, e.g. llm2clip's text_model);
      relative paths are taken from the current directory (or ``base_dir``);
    * a path to a JSON file with the same keys; relative paths inside it are relative to it;
    * a directory containing ``revision_tower.json`` (what checkpoints carry).
    """
    text = spec.removeprefix(SPEC_PREFIX)
    text = text.strip()
    if not text:
        raise BadInputError(f"empty revision tower spec {spec!r}")
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    if "=" not in text:
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = base / path
        if path.is_dir():
            path = path / TOWER_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"revision tower spec {spec!r}: {path} not found")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise BadInputError(f"{path}: invalid JSON ({err})") from err
        if not isinstance(raw, dict):
            raise BadInputError(f"{path}: expected a JSON object")
        return TowerConfig.from_dict(raw, base_dir=path.parent, source=str(path))
    raw: dict[str, Any] = {}
    options: dict[str, Any] = {}
    trust_remote_code = False
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = _SPEC_ALIASES.get(key.strip(), key.strip())
        if not sep:
            raise BadInputError(f"revision tower spec {spec!r}: {item!r} is not key=value (paths with ',' need the JSON form)")
        if key == "trust_remote_code":  # the user's consent, never saved into an artifact
            trust_remote_code = _parse_bool(value, f"revision tower spec {spec!r}: trust_remote_code")
            continue
        target, name = (options, key[len("encoder_options."):]) if key.startswith("encoder_options.") else (raw, key)
        if not name or name in target:
            raise BadInputError(f"revision tower spec {spec!r}: {key!r} given twice or empty")
        target[name] = _spec_value(value.strip()) if target is options else value.strip()
    if options:
        if "encoder_options" in raw:
            raise BadInputError(f"revision tower spec {spec!r}: give encoder_options as JSON or as encoder_options.NAME=..., not both")
        raw["encoder_options"] = options
    config = TowerConfig.from_dict(raw, base_dir=base, source=f"revision tower spec {spec!r}")
    if trust_remote_code and config.encoder_model:
        from revision_plugin.encoders.remote_code import consent_to_remote_code

        consent_to_remote_code(config.encoder_model)
    return config


def _spec_value(value: str) -> Any:
    """Numbers and booleans in ``encoder_options.NAME=value`` become JSON values, the rest strings."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def resolve_tower_config(config: TowerConfig) -> TowerConfig:
    """Fill ``encoder_id``/``dim`` from the operator and stores (cheap: manifests only) and
    check that every artifact agrees. Raises ``ArtifactMismatchError`` naming the culprit."""
    sources: list[tuple[str, str | None, int | None]] = []
    if config.operator:
        info = _read_operator_info(config.operator)
        sources.append((f"operator {config.operator}", info.get("encoder_id"), info.get("dim")))
    for key in ("text_store", "image_store"):
        store_dir = getattr(config, key)
        if store_dir:
            manifest = _read_store_manifest(store_dir)
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


def _read_operator_info(directory: str) -> dict:
    path = Path(directory) / "operator.json"
    if not path.is_file():
        raise FileNotFoundError(f"revision tower: {directory} is not an operator directory (operator.json missing)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadInputError(f"{path}: invalid JSON ({err})") from err


def _read_store_manifest(directory: str) -> dict:
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"revision tower: {directory} is not a feature store (manifest.json missing)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise BadInputError(f"{path}: invalid JSON ({err})") from err


# ----------------------------------------------------------------------------- batches


class TowerBatch(dict):
    """A collated tower batch: a ``dict`` (so hosts' input handling - ``Trainer._prepare_input``,
    accelerate's ``send_to_device`` - moves its tensors and rebuilds it with its own type)
    that also answers ``ndim`` like the 4-D pixel tensor hosts expect in that argument."""

    ndim = 4

    def to(self, *args, **kwargs) -> TowerBatch:
        """Move every tensor; a dtype applies to floating tensors only (ids and packed
        embeddings keep theirs)."""
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        out = TowerBatch()
        for key, value in self.items():
            if isinstance(value, torch.Tensor):
                cast = dtype if dtype is not None and value.is_floating_point() else None
                value = value.to(device=device, dtype=cast, non_blocking=non_blocking)
            out[key] = value
        return out


@dataclass
class TowerSample:
    """One sample's visual input, as a host's dataset produces it (see ``collate_tower_inputs``)."""

    kind: int
    value: Any = None  # pixels [3, H, W] | raw embedding [dim] | text str | None

    @classmethod
    def none(cls) -> TowerSample:
        return cls(KIND_NONE)


def collate_tower_inputs(samples: Sequence[TowerSample], pixel_shape: Sequence[int] | None = None) -> dict:
    """Collate per-sample inputs into the dict the tower reads.

    Embeddings travel as float32 bit patterns in int32 tensors: hosts cast every floating
    input to their compute dtype (e.g. DeepSpeed bf16), which must not round raw
    embeddings before the operator sees them. The pixel tensor is always present (empty
    when the batch has no images) so that the host's cast tells the tower its compute dtype.
    """
    kinds = torch.tensor([s.kind for s in samples], dtype=torch.long)
    pixels = [s.value for s in samples if s.kind == KIND_PIXELS]
    text_feats = [torch.as_tensor(np.asarray(s.value, dtype=np.float32)) for s in samples if s.kind == KIND_TEXT_FEATURE]
    image_feats = [torch.as_tensor(np.asarray(s.value, dtype=np.float32)) for s in samples if s.kind == KIND_IMAGE_FEATURE]
    texts = [s.value for s in samples if s.kind == KIND_TEXT]
    unknown = set(kinds.tolist()) - set(KIND_NAMES)
    if unknown:
        raise BadInputError(f"revision tower: unknown sample kind(s) {sorted(unknown)}")
    if pixels:
        shapes = {tuple(p.shape) for p in pixels}
        if len(shapes) > 1:
            raise BadInputError(f"revision tower: images of different shapes in one batch {sorted(shapes)}; "
                                "use a fixed-size image processor (image_aspect_ratio square/pad)")
        pixel_values = torch.stack([p.float() for p in pixels])
    else:
        pixel_values = torch.zeros((0, *(pixel_shape or (3, 1, 1))), dtype=torch.float32)
    return TowerBatch({
        BATCH_KINDS: kinds,
        BATCH_PIXELS: pixel_values,
        BATCH_TEXT_FEATURES: _pack(text_feats),
        BATCH_IMAGE_FEATURES: _pack(image_feats),
        BATCH_TEXTS: list(texts),
    })


def _pack(rows: list[torch.Tensor]) -> torch.Tensor:
    if not rows:
        return torch.zeros((0, 0), dtype=torch.int32)
    dims = {r.shape[-1] for r in rows}
    if len(dims) > 1 or any(r.ndim != 1 for r in rows):
        raise BadInputError(f"revision tower: embeddings of different shapes in one batch: {sorted(dims)}")
    return torch.stack(rows).contiguous().view(torch.int32)


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    if packed.dtype == torch.int32:
        return packed.contiguous().view(torch.float32)
    return packed.float()


def is_tower_batch(x: Any) -> bool:
    return isinstance(x, Mapping) and BATCH_KINDS in x


# ----------------------------------------------------------------------------- the tower


class PseudoVisionTower(nn.Module):
    """Text/image embedding -> frozen operator -> ``[B, num_tokens, dim]``.

    Build with a :class:`TowerConfig`; heavy parts (encoder, operator, stores) load on first
    use or on :meth:`load`. ``forward`` accepts a collated tower batch (dict, see
    :func:`collate_tower_inputs`) or a pixel tensor ``[B, 3, H, W]`` (what hosts' inference
    code passes). Already-loaded ``encoder``/``operator``/stores may be injected (tests,
    benchmarks, notebooks).
    """

    def __init__(self, config: TowerConfig, *, encoder=None, operator=None, text_store=None,
                 image_store=None, delay_load: bool = False) -> None:
        super().__init__()
        self.tower_config = config
        # Kept outside the module tree on purpose (object.__setattr__): the host must neither
        # save them in its checkpoint nor cast them to fp16, nor (ZeRO-3) partition them.
        object.__setattr__(self, "_encoder", encoder)
        object.__setattr__(self, "_operator", operator)
        object.__setattr__(self, "_stores", {"text_store": text_store, "image_store": image_store})
        self._operator_loaded = operator is not None or config.operator is None
        self._dtype = torch.float32
        self._device = torch.device("cpu")
        if operator is not None:
            self._check_operator(operator)
        if not delay_load:
            self.load()

    # ------------------------------------------------------------------ loading
    @property
    def dim(self) -> int:
        if self.tower_config.dim is None:
            self.tower_config = resolve_tower_config(self.tower_config)
        if self.tower_config.dim is None:
            encoder = self.encoder
            if encoder is None:
                raise RevisionError("revision tower: cannot tell the embedding width (no operator, store or encoder)")
            self.tower_config.dim = int(encoder.dim)
        return int(self.tower_config.dim)

    @property
    def num_tokens(self) -> int:
        return self.tower_config.num_tokens

    def load(self) -> PseudoVisionTower:
        """Load the operator (and check every artifact agrees); the encoder loads when first needed."""
        self.tower_config = resolve_tower_config(self.tower_config)
        self.operator  # noqa: B018  (load + checks)
        for key in ("text_store", "image_store"):
            if getattr(self.tower_config, key):
                self._store(key)
        return self

    @property
    def operator(self):
        if not self._operator_loaded:
            import revision_plugin.align  # noqa: F401  (registers every method)
            from revision_plugin.align.base import load_operator

            op = load_operator(self.tower_config.operator, expected_dim=self.tower_config.dim, encoder_id=self.tower_config.encoder_id)
            op.requires_grad_(False)
            op.train(self.training)
            self._check_operator(op)
            object.__setattr__(self, "_operator", op)
            self._operator_loaded = True
        return self._operator

    def _check_operator(self, op) -> None:
        if any(True for _ in op.parameters()):
            raise ArtifactMismatchError(f"revision tower: operator {op.info.method!r} has trainable parameters; operators must be frozen")
        if self.tower_config.dim is not None and op.dim != self.tower_config.dim:
            raise ArtifactMismatchError(f"revision tower: operator dim {op.dim} != tower dim {self.tower_config.dim}")
        if self.tower_config.encoder_id and op.info.encoder_id and op.info.encoder_id != self.tower_config.encoder_id:
            raise ArtifactMismatchError(
                f"revision tower: operator fitted for encoder {op.info.encoder_id!r}, tower uses {self.tower_config.encoder_id!r}"
            )

    @property
    def encoder(self):
        """The encoder (loaded on first use, outside any ZeRO-3 init; ``None`` if not configured)."""
        if self._encoder is None and self.tower_config.encoder_model:
            from revision_plugin.encoders import load_encoder

            if not self.tower_config.encoder:
                raise BadInputError("revision tower: encoder_model is set but encoder (kind) is not")
            logger.info("revision tower: loading %s encoder from %s", self.tower_config.encoder, self.tower_config.encoder_model)
            with _outside_zero3_init():
                encoder = load_encoder(self.tower_config.encoder, self.tower_config.encoder_model, device=self._device,
                                       offline=self.tower_config.offline, **self.tower_config.encoder_options)
            self._check_encoder(encoder)
            object.__setattr__(self, "_encoder", encoder)
        return self._encoder

    def _check_encoder(self, encoder) -> None:
        if self.tower_config.encoder_id and encoder.encoder_id != self.tower_config.encoder_id:
            raise ArtifactMismatchError(
                f"revision tower: encoder {self.tower_config.encoder_model} is {encoder.encoder_id!r}, but the "
                f"operator/stores/checkpoint were made with {self.tower_config.encoder_id!r}"
            )
        if self.tower_config.dim is not None and int(encoder.dim) != self.tower_config.dim:
            raise ArtifactMismatchError(f"revision tower: encoder dim {encoder.dim} != tower dim {self.tower_config.dim}")

    def _store(self, key: str):
        store = self._stores.get(key)
        if store is None:
            path = getattr(self.tower_config, key)
            if not path:
                return None
            from revision_plugin.store import open_store

            store = open_store(path)
            if self.tower_config.encoder_id and store.encoder_id and store.encoder_id != self.tower_config.encoder_id:
                raise ArtifactMismatchError(f"{path}: store encoder {store.encoder_id!r} != tower encoder {self.tower_config.encoder_id!r}")
            if self.tower_config.dim is not None and store.dim != self.tower_config.dim:
                raise ArtifactMismatchError(f"{path}: store dim {store.dim} != tower dim {self.tower_config.dim}")
            self._stores[key] = store
        return store

    @property
    def text_store(self):
        return self._store("text_store")

    @property
    def image_store(self):
        return self._store("image_store")

    @property
    def image_processor(self):
        encoder = self.encoder
        return None if encoder is None else encoder.image_processor

    # ------------------------------------------------------------------ nn.Module plumbing
    def train(self, mode: bool = True) -> PseudoVisionTower:
        super().train(mode)
        if self._operator is not None:
            self._operator.train(mode)  # C3 noise in training only
        return self

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and dtype.is_floating_point:
            self._dtype = dtype
        if device is not None:
            self._device = torch.device(device)
        return super().to(*args, **kwargs)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the host asked for (outputs follow the input's dtype, as CLIP towers do)."""
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    # ------------------------------------------------------------------ features
    def _apply_op(self, x: torch.Tensor, pseudo: bool) -> torch.Tensor:
        op = self.operator
        x = x.float()
        if op is None:
            norms = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            if not bool(torch.isfinite(norms).all()) or bool((norms <= 1e-12).any()):
                raise BadInputError("revision tower: input embedding has NaN/Inf or zero norm")
            return x / norms
        if x.shape[-1] != op.dim:
            raise ArtifactMismatchError(f"revision tower: embedding dim {x.shape[-1]} != operator dim {op.dim}")
        buffer = next(op.buffers(), None)
        if buffer is not None and buffer.device != x.device:
            op.to(device=x.device)  # a device move keeps the float64 statistics
        return op(x) if pseudo else op.align_image(x)

    def pseudo_features(self, *, texts: Sequence[str] | None = None, ids: Sequence[str] | None = None,
                        embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Aligned pseudo-visual vectors ``[n, dim]`` (float32) from texts, store ids or raw embeddings."""
        return self._apply_op(self._embeddings(texts, ids, embeddings, text=True), pseudo=True)

    def image_features(self, *, pixel_values: torch.Tensor | None = None, images: Sequence | None = None,
                       ids: Sequence[str] | None = None, embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Aligned image vectors ``[n, dim]`` (float32) from pixels, PIL images, store ids or raw embeddings."""
        if pixel_values is not None:
            embeddings = self._encode_pixels(pixel_values)
        elif images is not None:
            embeddings = self._require_encoder("images").encode_images(list(images))
        return self._apply_op(self._embeddings(None, ids, embeddings, text=False), pseudo=False)

    def _embeddings(self, texts, ids, embeddings, text: bool) -> torch.Tensor:
        given = [v is not None for v in (texts, ids, embeddings)]
        if sum(given) != 1:
            raise BadInputError("revision tower: give exactly one of texts / ids / embeddings")
        if embeddings is not None:
            return torch.as_tensor(embeddings)
        if texts is not None:
            return self._require_encoder("texts").encode_texts(list(texts))
        key = "text_store" if text else "image_store"
        store = self._store(key)
        if store is None:
            raise BadInputError(f"revision tower: ids given but no {key} is configured")
        return torch.from_numpy(store.lookup(list(ids)))

    def _require_encoder(self, what: str):
        encoder = self.encoder
        if encoder is None:
            raise BadInputError(f"revision tower: {what} need an encoder, but the tower config has no encoder_model "
                                "(configure encoder=... and encoder_model=..., or use cached features)")
        return encoder

    def _encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        encoder = self._require_encoder("images")
        model = getattr(encoder, "model", None)
        if model is not None and pixel_values.numel():
            # Follow the batch to its device (each rank its own GPU); keep the encoder's dtype.
            param = next(model.parameters(), None)
            if param is not None and param.device != pixel_values.device:
                model.to(pixel_values.device)
                encoder.device = pixel_values.device
        return encoder.encode_pixels(pixel_values)

    def expand(self, features: torch.Tensor) -> torch.Tensor:
        """``[n, dim]`` -> ``[n, num_tokens, dim]``."""
        return features.unsqueeze(1).expand(-1, self.num_tokens, -1)

    def forward(self, inputs) -> torch.Tensor:
        if is_tower_batch(inputs):
            feats, like = self._batch_features(inputs), inputs[BATCH_PIXELS]
        elif isinstance(inputs, torch.Tensor) and inputs.ndim == 4:
            feats, like = self.image_features(pixel_values=inputs), inputs
        elif isinstance(inputs, (list, tuple)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
            stacked = torch.stack([t if t.ndim == 3 else t.squeeze(0) for t in inputs])
            feats, like = self.image_features(pixel_values=stacked), stacked
        else:
            raise BadInputError(
                f"revision tower: cannot read input of type {type(inputs).__name__}"
                + (f" with shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) else "")
            )
        feats = feats.to(device=like.device, dtype=like.dtype if like.is_floating_point() else self._dtype)
        if feats.is_inference():
            feats = feats.clone()
        return self.expand(feats)

    def _batch_features(self, batch: Mapping) -> torch.Tensor:
        kinds = torch.as_tensor(batch[BATCH_KINDS]).cpu()
        out: torch.Tensor | None = None
        parts: dict[int, torch.Tensor] = {}
        pixels = batch.get(BATCH_PIXELS)
        if (kinds == KIND_PIXELS).any():
            parts[KIND_PIXELS] = self.image_features(pixel_values=pixels)
        if (kinds == KIND_IMAGE_FEATURE).any():
            parts[KIND_IMAGE_FEATURE] = self.image_features(embeddings=_unpack(batch[BATCH_IMAGE_FEATURES]))
        if (kinds == KIND_TEXT_FEATURE).any():
            parts[KIND_TEXT_FEATURE] = self.pseudo_features(embeddings=_unpack(batch[BATCH_TEXT_FEATURES]))
        if (kinds == KIND_TEXT).any():
            parts[KIND_TEXT] = self.pseudo_features(texts=list(batch[BATCH_TEXTS]))
        device = pixels.device if isinstance(pixels, torch.Tensor) else torch.device("cpu")
        out = torch.zeros((len(kinds), self.dim), dtype=torch.float32, device=device)
        for kind, feats in parts.items():
            index = (kinds == kind).nonzero().squeeze(1).to(device)
            if feats.shape[0] != index.numel():
                raise BadInputError(
                    f"revision tower: batch has {index.numel()} {KIND_NAMES[kind]} samples but {feats.shape[0]} inputs"
                )
            out[index] = feats.to(device=device, dtype=torch.float32)
        return out

    # ------------------------------------------------------------------ persistence
    def inference_config(self) -> TowerConfig:
        """What a checkpoint records: image-side settings only, no training stores."""
        config = resolve_tower_config(self.tower_config) if self.tower_config.dim is None else self.tower_config
        values = config.to_dict()
        values.update(text_store=None, image_store=None, check_ids=False)
        if self._encoder is not None:
            values["encoder_id"] = values["encoder_id"] or self._encoder.encoder_id
            values["dim"] = values["dim"] or int(self._encoder.dim)
        return TowerConfig(**values)

    def extra_repr(self) -> str:
        c = self.tower_config
        return (f"encoder={c.encoder!r}, encoder_id={c.encoder_id!r}, dim={c.dim}, num_tokens={c.num_tokens}, "
                f"operator={c.operator!r}, text_store={c.text_store!r}, image_store={c.image_store!r}")


def save_tower_artifacts(tower: PseudoVisionTower, directory: str | Path) -> Path:
    """Write ``<directory>/revision_tower/`` (config + a copy of the operator) so the checkpoint
    loads without the training command line. Returns the tower directory."""
    directory = Path(directory)
    tower_dir = directory / TOWER_DIR_NAME
    tmp = directory / f".{TOWER_DIR_NAME}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    config = tower.inference_config()
    values = config.to_dict()
    if tower.operator is not None:
        tower.operator.save(tmp / "operator")
        values["operator"] = "operator"
    model = values.get("encoder_model")
    if model and os.path.isabs(model):
        values["encoder_model"] = model  # absolute local path: kept (weights are not copied)
    (tmp / TOWER_CONFIG_NAME).write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    if tower_dir.exists():
        shutil.rmtree(tower_dir)
    os.replace(tmp, tower_dir)
    logger.info("revision tower: wrote %s", tower_dir)
    return tower_dir


class _outside_zero3_init:
    """Load the frozen encoder as ordinary (unpartitioned) modules even while a ZeRO-3 config
    is active: it lives outside the host's module tree, so DeepSpeed would never gather it."""

    def __enter__(self):
        self._saved = None
        try:
            from transformers.integrations import deepspeed as hf_ds
        except ImportError:  # pragma: no cover - transformers without the integration
            return self
        self._module = hf_ds
        self._saved = getattr(hf_ds, "_hf_deepspeed_config_weak_ref", None)
        if self._saved is not None:
            hf_ds._hf_deepspeed_config_weak_ref = None
        return self

    def __exit__(self, *exc):
        if self._saved is not None:
            self._module._hf_deepspeed_config_weak_ref = self._saved
        return False

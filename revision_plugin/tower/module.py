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
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from revision_plugin.errors import ArtifactMismatchError, BadInputError, RevisionError
from revision_plugin.tower.batch import (
    BATCH_IMAGE_FEATURES,
    BATCH_KINDS,
    BATCH_PIXELS,
    BATCH_TEXT_FEATURES,
    BATCH_TEXTS,
    KIND_IMAGE_FEATURE,
    KIND_NAMES,
    KIND_PIXELS,
    KIND_TEXT,
    KIND_TEXT_FEATURE,
    is_tower_batch,
    unpack_features,
)
from revision_plugin.tower.config import TowerConfig
from revision_plugin.tower.integrations import outside_zero3_init, parse_to
from revision_plugin.tower.resolve import resolve_tower_config

logger = logging.getLogger(__name__)


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
            with outside_zero3_init():
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
        device, dtype, _ = parse_to(*args, **kwargs)
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
            parts[KIND_IMAGE_FEATURE] = self.image_features(embeddings=unpack_features(batch[BATCH_IMAGE_FEATURES]))
        if (kinds == KIND_TEXT_FEATURE).any():
            parts[KIND_TEXT_FEATURE] = self.pseudo_features(embeddings=unpack_features(batch[BATCH_TEXT_FEATURES]))
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

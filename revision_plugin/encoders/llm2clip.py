"""``llm2clip``: LLM2CLIP's joint space, 1280-d for LLM2CLIP-Openai-L-14-336.

* images: ``AutoModel.from_pretrained(model, trust_remote_code=True)``, only with the user's
  consent (``--trust-remote-code`` / ``trust_remote_code=true`` in the spec; never from an artifact), (with the
  ``transformers.onnx`` trap defused, ``remote_code.py``) -> ``get_image_features`` on pixels
  from the CLIP image processor (the checkpoint's own ``preprocessor_config.json`` if it has
  one, else CLIP-336's: resize shortest edge + centre crop to the tower's image size,
  bicubic, OpenAI mean/std);
* texts: LLM2Vec-style mean-pooled bidirectional Llama (``llm2vec_text.py``) ->
  ``get_text_features`` (the text adapter).

Both sides are L2-normalised in float32. The 8B text model is only loaded when texts are
encoded, so an image-only run never needs its 16 GB.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from revision_plugin.encoders.base import (
    Encoder,
    check_model_source,
    model_name,
    pooled_features,
    resolve_device_dtype,
    unit_rows,
)
from revision_plugin.encoders.llm2vec_text import LLM2VecTextModel
from revision_plugin.encoders.remote_code import (
    TRUST_REMOTE_CODE_ENV,
    needs_remote_code,
    remote_code_allowed,
    transformers_onnx_available,
)
from revision_plugin.errors import ArtifactMismatchError, RevisionError

logger = logging.getLogger(__name__)

# openai/clip-vit-large-patch14-336's preprocessor_config.json, minus the size.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


class LLM2CLIPEncoder(Encoder):
    kind = "llm2clip"

    def __init__(
        self,
        model: str | Path,
        *,
        device="cpu",
        dtype=None,
        offline: bool = False,
        text_model: str | Path | None = None,
        max_length: int = 512,
        chat_template: str = "auto",
        text_batch_size: int = 32,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModel

        check_model_source(model)
        if text_model is not None:
            check_model_source(text_model)
        remote = needs_remote_code(model)
        if remote and not remote_code_allowed(model, trust_remote_code):
            raise RevisionError(
                f"{model}: this LLM2CLIP model ships its own Python code, which loading it would run; "
                "if you trust it, opt in: --trust-remote-code (revision embed), trust_remote_code=true in "
                f"your revision: spec, or {TRUST_REMOTE_CODE_ENV}=1"
            )
        self.device, self.dtype = resolve_device_dtype(device, dtype)
        self.offline = offline
        with transformers_onnx_available() as stubbed:
            if stubbed:
                logger.debug("transformers.onnx stubbed while loading %s's remote code", model)
            self.model = AutoModel.from_pretrained(
                str(model), dtype=self.dtype, trust_remote_code=remote, local_files_only=offline
            )
        self.model.to(self.device).eval().requires_grad_(False)
        for method in ("get_image_features", "get_text_features"):
            if not callable(getattr(self.model, method, None)):
                raise RevisionError(f"{model}: {type(self.model).__name__} has no {method}(); not an LLM2CLIP model")
        self.image_processor = _image_processor(model, self.model.config, offline)
        self.dim = int(getattr(self.model.config, "projection_dim", 0)) or self._probe_dim()
        self.encoder_id = f"{self.kind}:{model_name(model)}"
        self.model_source, self.text_model_source = str(model), text_model
        self.text_options = dict(max_length=max_length, chat_template=chat_template, batch_size=text_batch_size)
        self._text: LLM2VecTextModel | None = None

    @property
    def text(self) -> LLM2VecTextModel:
        """The LLM2Vec text model, loaded on first use."""
        if self._text is None:
            if self.text_model_source is None:
                raise RevisionError(
                    f"{self.encoder_id}: encoding texts needs the LLM2Vec text model "
                    "(text_model=..., --text-model), e.g. microsoft/LLM2CLIP-Llama-3-8B-Instruct-CC-Finetuned"
                )
            self._text = LLM2VecTextModel(
                self.text_model_source, device=self.device, dtype=self.dtype, offline=self.offline, **self.text_options
            )
            self._check_adapter_width(self._text.hidden_size)
        return self._text

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        if not len(texts):
            return torch.empty(0, self.dim)
        llm_features = self.text.encode(list(texts))
        adapter_dtype = next(self.model.parameters()).dtype
        features = self.model.get_text_features(llm_features.to(self.device, adapter_dtype))
        return unit_rows(pooled_features(features)).cpu()

    @torch.inference_mode()
    def encode_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.device, next(self.model.parameters()).dtype)
        return unit_rows(pooled_features(self.model.get_image_features(pixel_values))).cpu()

    def prepare(self, modality: str) -> None:
        if modality == "text":
            self.text  # noqa: B018 - loads the text model (and records its chat template)

    def text_length(self, text: str) -> int:
        return len(text)

    def info(self) -> dict:
        info = super().info()
        info.update(model=self.model_source, text_model=str(self.text_model_source) if self.text_model_source else None,
                    max_length=self.text_options["max_length"])
        if self._text is not None:
            info["chat_template"] = self._text.chat_template
        return info

    def fingerprint_inputs(self, modality: str) -> tuple[dict[str, str | None], dict]:
        if modality != "text":
            return {"model": self.model_source}, {}
        # The text side is the adapter of `model` on top of the LLM2Vec text model.
        settings = {"max_length": self.text_options["max_length"],
                    "chat_template": self._text.chat_template if self._text is not None else self.text_options["chat_template"]}
        text_model = str(self.text_model_source) if self.text_model_source else None
        return {"model": self.model_source, "text_model": text_model}, settings

    def _probe_dim(self) -> int:
        size = self.image_processor.crop_size or self.image_processor.size
        height = size.get("height") or size.get("shortest_edge")
        return int(self.encode_pixels(torch.zeros(1, 3, height, height)).shape[-1])

    def _check_adapter_width(self, hidden_size: int) -> None:
        probe = torch.zeros(1, hidden_size, device=self.device, dtype=next(self.model.parameters()).dtype)
        try:
            with torch.inference_mode():
                out = pooled_features(self.model.get_text_features(probe))
        except RuntimeError as err:
            raise ArtifactMismatchError(
                f"{self.text_model_source}: text model width {hidden_size} does not fit the text adapter of "
                f"{self.model_source} ({err})"
            ) from err
        if out.shape[-1] != self.dim:
            raise ArtifactMismatchError(f"{self.model_source}: text adapter outputs {out.shape[-1]} dims, images {self.dim}")


def _image_processor(model, config, offline: bool):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(model), local_files_only=offline)
    except (OSError, ValueError) as err:
        size = int(config.vision_config.image_size)
        logger.info("%s: no image processor config (%s); using CLIP's at %dpx", model, type(err).__name__, size)
        try:
            from transformers import CLIPImageProcessorPil as processor_class
        except ImportError:  # transformers < 5
            from transformers import CLIPImageProcessor as processor_class
        return processor_class(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size},
            image_mean=CLIP_MEAN, image_std=CLIP_STD, resample=3, do_center_crop=True,
        )

"""lmms-eval model ``revision_llava``: a LLaVA 1.2.2 checkpoint trained with the plugin.

The only module of the plugin that imports ``lmms_eval``. Registered without touching
lmms-eval through the entry point in ``setup.py`` (see :mod:`revision_plugin.lmms_manifest`),
so after ``pip install`` it is simply::

    lmms-eval --model revision_llava --model_args pretrained=/ckpt/llava-realign \\
        --include_path eval/tasks --tasks revision_quick --batch_size 8 --output_path eval_out/realign

The checkpoint is loaded by LLaVA's own ``load_pretrained_model`` after
``revision_plugin.hosts.llava.register()``; its vision tower is the plugin's tower, which
takes real images through the image encoder and the frozen operator's image side, one
image at a time (the paper's inference setting: no calibration statistics, no batches of
images needed). Prompts use LLaVA's conversation templates, exactly as LLaVA's eval does.

Model arguments (``--model_args k=v,...``):

``pretrained``   checkpoint folder (``$VAR``/``${VAR}`` and ``~`` are expanded; an unset
                 variable or a missing folder stops the run at start-up)
``model_base``   base LLM for projector-only / LoRA checkpoints (LLaVA's ``model_base``)
``model_name``   name LLaVA uses to pick its loader (default: the folder name, prefixed
                 with ``llava_`` when it does not contain "llava")
``conv_template`` LLaVA conversation template (default ``vicuna_v1``; must match the
                 ``--version`` used in stage 2)
``device``       ``cuda``, ``cuda:N`` or ``cpu`` (default: cuda when available); under
                 ``accelerate launch`` each process uses ``cuda:<local rank>``
``device_map``   ``auto`` to shard one model over all visible GPUs instead
``dtype``        ``auto`` (float16 on GPU, float32 on CPU), ``float16``, ``bfloat16``, ``float32``
``attn_implementation`` passed to ``from_pretrained`` (e.g. ``sdpa``, ``eager``)
``empty_answers`` ``warn`` (default) or ``error``: what to do when the model answers "".
                 Exceptions during generation always stop the run (never become "").
``max_new_tokens`` cap applied on top of each task's own generation settings

``--batch_size N`` (lmms-eval's option) batches generation with left padding.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.utils import Collator
from tqdm import tqdm

from revision_plugin.errors import BadInputError, RevisionError

logger = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32, "float": torch.float32}
# generation settings lmms-eval tasks pass that are understood here; anything else is reported once
_KNOWN_GEN_KWARGS = {"until", "max_new_tokens", "temperature", "top_p", "top_k", "num_beams", "do_sample",
                     "repetition_penalty", "image_aspect_ratio", "max_gen_toks"}
_UNSET_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        if value.strip().lower() in ("1", "true", "yes", "y", "on"):
            return True
        if value.strip().lower() in ("0", "false", "no", "n", "off", ""):
            return False
        raise BadInputError(f"revision_llava: expected a boolean, got {value!r}")
    return bool(value)


def resolve_checkpoint(pretrained: Any, what: str = "pretrained") -> Path:
    """Expand ``~``/``$VAR`` and check the folder exists (start-up check, user-needs #1)."""
    if pretrained is None or not str(pretrained).strip():
        raise BadInputError(f"revision_llava: {what}= is required (the checkpoint folder)")
    text = os.path.expanduser(os.path.expandvars(str(pretrained).strip()))
    unset = _UNSET_VAR.findall(text)
    if unset:
        raise BadInputError(f"revision_llava: {what}={pretrained!r}: environment variable(s) "
                            f"{', '.join('$' + v for v in unset)} not set")
    path = Path(text)
    if not path.is_dir():
        raise FileNotFoundError(f"revision_llava: {what}={pretrained!r}: no such checkpoint folder ({path})")
    return path


def resolve_device(device: Any) -> str:
    if device in (None, "", "auto"):
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    device = str(device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RevisionError(f"revision_llava: device={device} but CUDA is not available (use device=cpu)")
        return "cuda:0" if device == "cuda" else device
    if device not in ("cpu", "mps") and not device.startswith(("xpu", "npu")):
        raise BadInputError(f"revision_llava: unknown device {device!r}")
    return device


def resolve_dtype(dtype: Any, device: str) -> torch.dtype:
    if dtype in (None, "", "auto"):
        return torch.float32 if device == "cpu" else torch.float16
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().replace("torch.", "")
    if key not in DTYPES:
        raise BadInputError(f"revision_llava: dtype={dtype!r}; use one of auto, {', '.join(sorted(set(DTYPES)))}")
    return DTYPES[key]


def cut_at_stop(text: str, until: list[str]) -> str:
    """Everything before the first stop string (lmms-eval's ``until``)."""
    for stop in until:
        if stop:
            text = text.split(stop, 1)[0]
    return text


class RevisionLlava(lmms):
    """lmms-eval "simple" model around a LLaVA 1.2.2 checkpoint with the revision tower."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        model_base: str | None = None,
        model_name: str | None = None,
        conv_template: str = "vicuna_v1",
        device: str | None = None,
        device_map: str | None = None,
        dtype: str | None = "auto",
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        attn_implementation: str | None = None,
        empty_answers: str = "warn",
        max_new_tokens: int | str | None = None,
        use_cache: bool | str = True,
        **kwargs,
    ) -> None:
        super().__init__()
        if kwargs:
            raise BadInputError(f"revision_llava: unknown model_args {sorted(kwargs)} (see revision_plugin.lmms)")
        try:
            self.batch_size_per_gpu = int(batch_size)
        except (TypeError, ValueError):
            raise BadInputError(f"revision_llava: batch_size must be an integer, got {batch_size!r}") from None
        if self.batch_size_per_gpu < 1:
            raise BadInputError(f"revision_llava: batch_size must be >= 1, got {batch_size!r}")
        if empty_answers not in ("warn", "error"):
            raise BadInputError(f"revision_llava: empty_answers must be 'warn' or 'error', got {empty_answers!r}")
        self.empty_answers = empty_answers
        self.max_new_tokens_cap = None if max_new_tokens in (None, "") else int(max_new_tokens)
        self.use_cache = _as_bool(use_cache)

        checkpoint = resolve_checkpoint(pretrained)
        base = None if model_base in (None, "") else str(resolve_checkpoint(model_base, "model_base"))
        name = model_name or checkpoint.name
        if "llava" not in name.lower():
            name = f"llava_{name}"  # LLaVA's loader only builds the vision tower for names with "llava"

        from llava.conversation import conv_templates

        if conv_template not in conv_templates:
            raise BadInputError(f"revision_llava: conv_template={conv_template!r} is not one of LLaVA's "
                                f"templates: {', '.join(sorted(conv_templates))}")
        self.conv_template = conv_template

        # data parallel under accelerate launch / torchrun: one process per GPU
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.device_map = device_map
        if world_size > 1:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            if device_map == "auto":
                raise BadInputError("revision_llava: device_map=auto (one model over all GPUs) cannot be combined "
                                    "with a multi-process launch (one model per GPU)")
            self._device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
            self._rank, self._world_size = int(os.environ.get("RANK", "0")), world_size
        else:
            self._device = torch.device(resolve_device(device))
        self._dtype = resolve_dtype(dtype, self._device.type)

        from revision_plugin.hosts.llava import load_pretrained_model

        load_kwargs: dict[str, Any] = {}
        if attn_implementation:
            load_kwargs["attn_implementation"] = attn_implementation
        if device_map == "auto":
            load_kwargs.update(device_map="auto", device="cuda")
        else:
            load_kwargs.update(device=str(self._device))
        logger.info("revision_llava: loading %s (model_name %s) on %s as %s", checkpoint, name, self._device, self._dtype)
        self._tokenizer, self._model, self._image_processor, self._max_length = load_pretrained_model(
            str(checkpoint), base, name, **load_kwargs)
        if device_map == "auto":
            self._model.to(dtype=self._dtype)
        else:
            self._model.to(device=self._device, dtype=self._dtype)
        self._model.eval()
        self._config = self._model.config
        if self._image_processor is None:
            raise RevisionError(f"revision_llava: {checkpoint} loaded without a vision tower; is it a LLaVA checkpoint?")
        if self._tokenizer.pad_token_id is None:
            self._tokenizer.pad_token = self._tokenizer.unk_token or self._tokenizer.eos_token
        self.checkpoint = checkpoint
        self.empty_count = 0
        self.answer_count = 0
        self._warned_gen_kwargs: set[str] = set()

    # ------------------------------------------------------------------ lmms-eval plumbing
    @property
    def model(self):
        return self._model

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def config(self):
        return self._config

    @property
    def device(self):
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def eot_token_id(self):
        return self._tokenizer.eos_token_id

    # ------------------------------------------------------------------ prompts and images
    def _visuals(self, doc_to_visual, task: str, split: str, doc_id: int) -> list:
        doc = self.task_dict[task][split][doc_id]
        visuals = doc_to_visual(doc) if doc_to_visual is not None else []
        visuals = [v for v in (visuals or []) if v is not None]
        from PIL import Image

        for v in visuals:
            if not isinstance(v, Image.Image):
                raise BadInputError(f"revision_llava: task {task} doc {doc_id}: visual of type {type(v).__name__}; "
                                    "only images are supported")
        return [v.convert("RGB") for v in visuals]

    def _prompt(self, context: str, n_images: int, answer: str | None = None) -> str:
        from llava.constants import DEFAULT_IMAGE_TOKEN
        from llava.conversation import conv_templates

        if n_images and DEFAULT_IMAGE_TOKEN not in context:
            context = " ".join([DEFAULT_IMAGE_TOKEN] * n_images) + "\n" + context
        elif not n_images and DEFAULT_IMAGE_TOKEN in context:
            context = context.replace(DEFAULT_IMAGE_TOKEN, "").strip()
        conv = conv_templates[self.conv_template].copy()
        conv.append_message(conv.roles[0], context)
        conv.append_message(conv.roles[1], answer)
        return conv.get_prompt()

    def _pixels(self, images: list) -> torch.Tensor | None:
        if not images:
            return None
        from llava.mm_utils import process_images

        pixels = process_images(images, self._image_processor, self._config)
        if isinstance(pixels, list):
            pixels = torch.stack(pixels)
        return pixels.to(device=self._device, dtype=self._dtype)

    def _input_ids(self, prompt: str) -> torch.Tensor:
        from llava.constants import IMAGE_TOKEN_INDEX
        from llava.mm_utils import tokenizer_image_token

        return tokenizer_image_token(prompt, self._tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")

    def _gen_settings(self, gen_kwargs: dict) -> tuple[list[str], dict]:
        gen_kwargs = dict(gen_kwargs or {})
        until = gen_kwargs.pop("until", None)
        if until is None:
            until = []
        elif isinstance(until, str):
            until = [until]
        elif not isinstance(until, (list, tuple)):
            raise BadInputError(f"revision_llava: generation 'until' must be a string or list, got {type(until).__name__}")
        unknown = set(gen_kwargs) - _KNOWN_GEN_KWARGS - self._warned_gen_kwargs
        if unknown:
            logger.warning("revision_llava: ignoring generation settings %s", sorted(unknown))
            self._warned_gen_kwargs |= unknown
        max_new = int(gen_kwargs.get("max_new_tokens", gen_kwargs.get("max_gen_toks", 1024)))
        if self.max_new_tokens_cap is not None:
            max_new = min(max_new, self.max_new_tokens_cap)
        temperature = float(gen_kwargs.get("temperature", 0) or 0)
        do_sample = _as_bool(gen_kwargs.get("do_sample", temperature > 0)) and temperature > 0
        settings = {"max_new_tokens": max_new, "do_sample": do_sample, "num_beams": int(gen_kwargs.get("num_beams", 1) or 1),
                    "use_cache": self.use_cache}
        if do_sample:
            settings["temperature"] = temperature
            if gen_kwargs.get("top_p") is not None:
                settings["top_p"] = float(gen_kwargs["top_p"])
            if gen_kwargs.get("top_k") is not None:
                settings["top_k"] = int(gen_kwargs["top_k"])
        if gen_kwargs.get("repetition_penalty") is not None:
            settings["repetition_penalty"] = float(gen_kwargs["repetition_penalty"])
        return [str(u) for u in until], settings

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests: list[Instance]) -> list[str]:
        def sort_key(args):
            return -len(self._tokenizer.encode(args[0], add_special_tokens=False)), args[0]

        collator = Collator([req.args for req in requests], sort_key, grouping=True)
        n_batches = (len(requests) + self.batch_size - 1) // self.batch_size
        bar = tqdm(total=n_batches, disable=self.rank != 0, desc="revision_llava")
        outputs: list[str] = []
        empty: list[str] = []
        for chunk in collator.get_batched(n=self.batch_size):
            contexts, all_gen_kwargs, doc_to_visuals, doc_ids, tasks, splits = zip(*chunk)
            until, settings = self._gen_settings(all_gen_kwargs[0])
            visuals = [self._visuals(d, t, s, i) for d, t, s, i in zip(doc_to_visuals, tasks, splits, doc_ids)]
            # LLaVA's multimodal merge consumes one image slot per sample, so samples with and
            # without images are generated in separate sub-batches.
            texts: list[str | None] = [None] * len(chunk)
            for with_images in (True, False):
                index = [i for i, v in enumerate(visuals) if bool(v) == with_images]
                if index:
                    answers = self._generate([contexts[i] for i in index], [visuals[i] for i in index], settings)
                    for i, answer in zip(index, answers):
                        texts[i] = answer
            for i, text in enumerate(texts):
                text = cut_at_stop(text or "", until).strip()
                self.answer_count += 1
                if not text:
                    self.empty_count += 1
                    empty.append(f"{tasks[i]}:{doc_ids[i]}")
                outputs.append(text)
            bar.update(1)
        bar.close()
        if empty:
            message = (f"revision_llava: {len(empty)}/{len(requests)} empty answers "
                       f"(task:doc {', '.join(empty[:10])}{' ...' if len(empty) > 10 else ''})")
            if self.empty_answers == "error":
                raise RevisionError(message + "; empty_answers=error")
            logger.warning(message)
        return collator.get_original(outputs)

    def _generate(self, contexts: list[str], visuals: list[list], settings: dict) -> list[str]:
        images = [img for per_doc in visuals for img in per_doc]
        prompts = [self._prompt(ctx, len(v)) for ctx, v in zip(contexts, visuals)]
        ids = [self._input_ids(p) for p in prompts]
        pad_id = self._tokenizer.pad_token_id
        longest = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
        attention = torch.zeros((len(ids), longest), dtype=torch.long)
        for row, x in enumerate(ids):  # left padding: generation continues every row at the end
            input_ids[row, longest - len(x):] = x
            attention[row, longest - len(x):] = 1
        pixels = self._pixels(images)
        padding_side = getattr(self._config, "tokenizer_padding_side", "right")
        self._config.tokenizer_padding_side = "left"  # LLaVA re-pads after inserting image features
        try:
            with torch.inference_mode():
                out = self._model.generate(
                    input_ids.to(self._device), attention_mask=attention.to(self._device), images=pixels,
                    image_sizes=[img.size for img in images] if images else None, pad_token_id=pad_id, **settings)
        finally:
            self._config.tokenizer_padding_side = padding_side
        return self._tokenizer.batch_decode(out, skip_special_tokens=True)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Sum of the continuation's token log-probabilities, and whether greedy decoding yields it."""
        from llava.constants import IGNORE_INDEX

        results = []
        for req in tqdm(requests, disable=self.rank != 0, desc="revision_llava loglikelihood"):
            context, target, doc_to_visual, doc_id, task, split = req.args
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            visuals = self._visuals(doc_to_visual, task, split, doc_id)
            context_ids = self._input_ids(self._prompt(context, len(visuals)))
            full_ids = self._input_ids(self._prompt(context, len(visuals), answer=continuation))
            n_cont = len(full_ids) - len(context_ids)
            if n_cont <= 0 or not torch.equal(full_ids[: len(context_ids)], context_ids):
                raise RevisionError(f"revision_llava: task {task} doc {doc_id}: the continuation does not extend the "
                                    "prompt's tokens; loglikelihood is undefined for this template")
            labels = full_ids.clone()
            labels[: len(context_ids)] = IGNORE_INDEX
            pixels = self._pixels(visuals)
            with torch.inference_mode():
                out = self._model(input_ids=full_ids[None].to(self._device), labels=labels[None].to(self._device),
                                  images=pixels, image_sizes=[v.size for v in visuals] if visuals else None)
            logits = out.logits[0, -n_cont - 1:-1].float()
            cont = full_ids[-n_cont:].to(logits.device)
            logprobs = torch.log_softmax(logits, dim=-1).gather(1, cont[:, None]).squeeze(1)
            results.append((float(logprobs.sum()), bool((logits.argmax(-1) == cont).all())))
        return results

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("revision_llava: multi-round generation is not supported")

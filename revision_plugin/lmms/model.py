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
``conv_template`` LLaVA conversation template. Default: the one the checkpoint was trained
                 with (``revision_conv_template`` in its ``config.json``, LLaVA's ``--version``);
                 a different explicit one is used with a warning recorded in the results;
                 a checkpoint without the key falls back to ``vicuna_v1`` (warning + note)
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
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.utils import Collator
from tqdm import tqdm

from revision_plugin.errors import BadInputError, RevisionError
from revision_plugin.lmms.args import (
    check_loadable,
    cut_at_stop,
    resolve_checkpoint,
    resolve_device,
    resolve_dtype,
)
from revision_plugin.lmms.generation import generation_settings
from revision_plugin.lmms.provenance import (
    checkpoint_conv_template,
    checkpoint_fingerprint,
    choose_conv_template,
    read_config,
    tower_summary,
)
from revision_plugin.parsing import parse_bool
from revision_plugin.runtime import default_device, launched_world_size

logger = logging.getLogger(__name__)

_END = "\x00revision-end-of-continuation\x00"


class RevisionLlava(lmms):
    """lmms-eval "simple" model around a LLaVA 1.2.2 checkpoint with the revision tower."""

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        model_base: str | None = None,
        model_name: str | None = None,
        conv_template: str | None = None,
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
        self.use_cache = parse_bool(use_cache, "revision_llava: use_cache", empty=False)

        checkpoint = resolve_checkpoint(pretrained)
        base = None if model_base in (None, "") else str(resolve_checkpoint(model_base, "model_base"))
        name = model_name or checkpoint.name
        if "llava" not in name.lower():
            name = f"llava_{name}"  # LLaVA's loader only builds the vision tower for names with "llava"

        # register() first: it adds the plugin's templates (llama_3) to LLaVA's table
        from revision_plugin.hosts.llava import load_pretrained_model, register
        from revision_plugin.hosts.llava.inference import conversation_templates

        register()
        ckpt_config = read_config(checkpoint) if (checkpoint / "config.json").is_file() else {}
        self.conv_template, self.notes = choose_conv_template(
            conv_template or None, checkpoint_conv_template(ckpt_config), conversation_templates())
        self.conv_template_info = {"used": self.conv_template, "checkpoint": checkpoint_conv_template(ckpt_config),
                                   "requested": conv_template or None}
        check_loadable(checkpoint, base, ckpt_config)  # after the template check: that needs no weights
        for note in self.notes:  # after it: a folder that is no LLaVA checkpoint gets its error, not a template note
            logger.warning("revision_llava: %s", note)

        # data parallel under accelerate launch / torchrun: one process per GPU
        world_size = launched_world_size()
        self.device_map = device_map
        if world_size > 1:
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            if device_map == "auto":
                raise BadInputError("revision_llava: device_map=auto (one model over all GPUs) cannot be combined "
                                    "with a multi-process launch (one model per GPU)")
            self._device = torch.device(default_device(local_rank))
            self._rank, self._world_size = int(os.environ.get("RANK", "0")), world_size
        else:
            self._device = torch.device(resolve_device(device))
        self._dtype = resolve_dtype(dtype, self._device.type)

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
        self.checkpoint = checkpoint.resolve()
        self.fingerprint = checkpoint_fingerprint(checkpoint)
        self.tower = tower_summary(ckpt_config)
        self.empty_count = 0
        self.answer_count = 0
        self.empty_by_task: dict[str, int] = {}
        self.answers_by_task: dict[str, int] = {}
        self.prompt_examples: dict[str, str] = {}
        self._warned_gen_kwargs: set[str] = set()

    def provenance(self) -> dict:
        """What ``revision eval`` records about this model in every results file."""
        return {"checkpoint": {"path": str(self.checkpoint), "fingerprint": self.fingerprint},
                "conv_template": dict(self.conv_template_info), "tower": self.tower, "notes": list(self.notes),
                "empty_answers": dict(self.empty_by_task), "answers": dict(self.answers_by_task),
                "prompt_examples": dict(self.prompt_examples)}

    # ------------------------------------------------------------------ lmms-eval plumbing
    def clean(self) -> None:
        """lmms-eval calls this after every ``simple_evaluate`` and its default deletes every
        ``nn.Module`` attribute; ``revision eval`` runs many tasks on one loaded model, so only
        the caches are freed here (the model goes when the object does)."""
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

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

    def _prompt(self, context: str, n_images: int, answer: str | None = None, where: str = "") -> str:
        """The conversation prompt; ``<image>`` tokens must match the document's images one to one."""
        from revision_plugin.hosts.llava.inference import build_prompt

        return build_prompt(self.conv_template, context, n_images, answer=answer, where=where)

    def _pixels(self, images: list) -> torch.Tensor | None:
        from revision_plugin.hosts.llava.inference import process_images

        pixels = process_images(images, self._image_processor, self._config)
        return None if pixels is None else pixels.to(device=self._device, dtype=self._dtype)

    def _input_ids(self, prompt: str) -> torch.Tensor:
        from revision_plugin.hosts.llava.inference import tokenize_prompt

        return tokenize_prompt(prompt, self._tokenizer, return_tensors="pt")

    def _gen_settings(self, gen_kwargs: dict) -> tuple[list[str], dict]:
        return generation_settings(gen_kwargs, self.max_new_tokens_cap, self.use_cache, self._warned_gen_kwargs)

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
            wheres = [f"task {t} doc {i}" for t, i in zip(tasks, doc_ids)]
            prompts = [self._prompt(c, len(v), where=w) for c, v, w in zip(contexts, visuals, wheres)]
            for task, prompt in zip(tasks, prompts):
                self.prompt_examples.setdefault(task, prompt)
            # LLaVA's multimodal merge consumes one image slot per sample, so samples with and
            # without images are generated in separate sub-batches.
            texts: list[str | None] = [None] * len(chunk)
            for with_images in (True, False):
                index = [i for i, v in enumerate(visuals) if bool(v) == with_images]
                if index:
                    answers = self._generate([prompts[i] for i in index], [visuals[i] for i in index], settings)
                    for i, answer in zip(index, answers):
                        texts[i] = answer
            for i, text in enumerate(texts):
                text = cut_at_stop(text or "", until).strip()
                self.answer_count += 1
                self.answers_by_task[tasks[i]] = self.answers_by_task.get(tasks[i], 0) + 1
                self.empty_by_task.setdefault(tasks[i], 0)
                if not text:
                    self.empty_count += 1
                    self.empty_by_task[tasks[i]] += 1
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

    def _generate(self, prompts: list[str], visuals: list[list], settings: dict) -> list[str]:
        images = [img for per_doc in visuals for img in per_doc]
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

    # ------------------------------------------------------------------ loglikelihood
    def continuation_ids(self, context: str, continuation: str, n_images: int, where: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids of the prompt and of the continuation alone: the answer as the template
        writes it, *without* the end-of-turn separator that follows it (``</s>``, ``<|eot_id|>``)."""
        prompt = self._prompt(context, n_images, where=where)
        full = self._prompt(context, n_images, answer=continuation + _END, where=where)
        full = full[: full.index(_END)]
        prompt_ids, full_ids = self._input_ids(prompt), self._input_ids(full)
        n = len(full_ids) - len(prompt_ids)
        if n <= 0 or not torch.equal(full_ids[: len(prompt_ids)], prompt_ids):
            raise RevisionError(f"revision_llava: {where}: the continuation {continuation!r} does not extend the "
                                f"prompt's tokens under template {self.conv_template}; loglikelihood is undefined")
        return prompt_ids, full_ids[len(prompt_ids):]

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """Per request: sum of the continuation's token log-probabilities, and whether greedy
        decoding yields exactly those tokens. Batched by ``batch_size`` (right padding)."""
        items = []
        for req in requests:
            context, target, doc_to_visual, doc_id, task, split = req.args
            continuation = target if isinstance(target, str) else target(self.task_dict[task][split][doc_id])
            visuals = self._visuals(doc_to_visual, task, split, doc_id)
            prompt_ids, cont_ids = self.continuation_ids(context, continuation, len(visuals), f"task {task} doc {doc_id}")
            items.append((prompt_ids, cont_ids, visuals))
        results: list[tuple[float, bool] | None] = [None] * len(items)
        order = sorted(range(len(items)), key=lambda i: -(len(items[i][0]) + len(items[i][1])))
        for with_images in (True, False):  # one image slot per sample in LLaVA's merge (see generate_until)
            index = [i for i in order if bool(items[i][2]) == with_images]
            for start in tqdm(range(0, len(index), self.batch_size), disable=self.rank != 0,
                              desc="revision_llava loglikelihood"):
                chunk = index[start:start + self.batch_size]
                for i, result in zip(chunk, self._score([items[i] for i in chunk])):
                    results[i] = result
        return results  # type: ignore[return-value]

    def _score(self, batch: list[tuple[torch.Tensor, torch.Tensor, list]]) -> list[tuple[float, bool]]:
        from revision_plugin.hosts.llava.inference import ignore_index

        ignore = ignore_index()
        ids = [torch.cat([p, c]) for p, c, _ in batch]
        longest = max(len(x) for x in ids)
        input_ids = torch.full((len(ids), longest), self._tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(ids), longest), dtype=torch.long)
        labels = torch.full((len(ids), longest), ignore, dtype=torch.long)
        for row, ((p, c, _), x) in enumerate(zip(batch, ids)):
            input_ids[row, : len(x)] = x
            attention[row, : len(x)] = 1
            labels[row, len(p): len(x)] = c
        images = [img for _, _, per_doc in batch for img in per_doc]
        pixels = self._pixels(images)
        input_ids, attention, labels = (t.to(self._device) for t in (input_ids, attention, labels))
        padding_side = getattr(self._config, "tokenizer_padding_side", "right")
        self._config.tokenizer_padding_side = "right"
        try:
            with torch.inference_mode():
                if pixels is None:
                    logits = self._model(input_ids=input_ids, attention_mask=attention).logits
                else:  # LLaVA inserts the image features; its labels follow them
                    _, position_ids, attention, _, embeds, labels = self._model.prepare_inputs_labels_for_multimodal(
                        input_ids, None, attention, None, labels, pixels, image_sizes=[img.size for img in images])
                    logits = self._model(inputs_embeds=embeds, attention_mask=attention, position_ids=position_ids).logits
        finally:
            self._config.tokenizer_padding_side = padding_side
        out = []
        for row in range(len(batch)):
            target = labels[row, 1:]
            mask = target != ignore
            row_logits = logits[row, :-1][mask].float()
            tokens = target[mask]
            logprobs = torch.log_softmax(row_logits, dim=-1).gather(1, tokens[:, None]).squeeze(1)
            out.append((float(logprobs.sum()), bool((row_logits.argmax(-1) == tokens).all())))
        return out

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("revision_llava: multi-round generation is not supported")


__all__ = ["RevisionLlava", "choose_conv_template", "cut_at_stop", "resolve_checkpoint", "resolve_device",
           "resolve_dtype"]

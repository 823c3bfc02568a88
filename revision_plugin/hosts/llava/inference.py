"""LLaVA's inference-side handling of prompts, images and tokens, behind plain functions, so
that callers outside this package (the lmms-eval model, the miniature study) never import
``llava`` themselves: conversation prompts with one ``<image>`` per image, ``<image>``-aware
tokenisation, image preprocessing as LLaVA's eval does it, and LLaVA's label constant."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from revision_plugin.errors import BadInputError


def conversation_templates() -> Mapping[str, Any]:
    """LLaVA's ``conv_templates`` (with the plugin's, e.g. ``llama_3``, once ``register()`` ran)."""
    from llava.conversation import conv_templates

    return conv_templates


def ignore_index() -> int:
    """The label of positions that are not scored (LLaVA's ``IGNORE_INDEX``)."""
    from llava.constants import IGNORE_INDEX

    return IGNORE_INDEX


def build_prompt(template: str, context: str, n_images: int, answer: str | None = None, where: str = "") -> str:
    """The conversation prompt of LLaVA template ``template`` for one user turn (and ``answer``,
    or the open assistant turn); ``<image>`` tokens must match the ``n_images`` images one to
    one (none in ``context``: they are put in front of it)."""
    from llava.constants import DEFAULT_IMAGE_TOKEN

    n_tokens = context.count(DEFAULT_IMAGE_TOKEN)
    if n_tokens == 0 and n_images:
        context = " ".join([DEFAULT_IMAGE_TOKEN] * n_images) + "\n" + context
    elif n_tokens != n_images:
        raise BadInputError(f"revision_llava: {where or 'a document'}: the prompt has {n_tokens} {DEFAULT_IMAGE_TOKEN} "
                            f"token(s) but the document has {n_images} image(s); each {DEFAULT_IMAGE_TOKEN} takes "
                            "exactly one image (fix the task's doc_to_text / doc_to_visual)")
    conv = conversation_templates()[template].copy()
    conv.append_message(conv.roles[0], context)
    conv.append_message(conv.roles[1], answer)
    return conv.get_prompt()


def tokenize_prompt(text: str, tokenizer, return_tensors: str | None = None):
    """Token ids of ``text`` as LLaVA tokenises it: each ``<image>`` becomes one
    ``IMAGE_TOKEN_INDEX`` slot (a list, or a tensor with ``return_tensors="pt"``)."""
    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.mm_utils import tokenizer_image_token

    return tokenizer_image_token(text, tokenizer, IMAGE_TOKEN_INDEX, return_tensors=return_tensors)


def process_images(images: Sequence, image_processor, model_config) -> torch.Tensor | None:
    """Pixels ``[n, 3, H, W]`` of PIL ``images`` as LLaVA's eval prepares them (its
    ``image_aspect_ratio`` from ``model_config``), or ``None`` for no images."""
    if not images:
        return None
    from llava.mm_utils import process_images as llava_process_images

    pixels = llava_process_images(list(images), image_processor, model_config)
    if isinstance(pixels, list):
        pixels = torch.stack(pixels)
    return pixels

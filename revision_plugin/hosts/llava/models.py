"""LLaVA models built in code (random weights, no checkpoint), for benchmarks and tests
that time or probe LLaVA's own forward with the revision tower, and LLaVA's token
constants, so that such callers need not import ``llava`` themselves."""

from __future__ import annotations

from typing import NamedTuple

from revision_plugin.hosts.llava.registration import register


class TokenConstants(NamedTuple):
    """LLaVA's ``llava.constants`` that a caller building its own batches needs."""

    ignore_index: int  # label of positions that are not learned
    image_token_index: int  # input id of the ``<image>`` placeholder
    image_token: str  # the ``<image>`` placeholder in conversation text


def token_constants() -> TokenConstants:
    from llava.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX, IMAGE_TOKEN_INDEX

    return TokenConstants(IGNORE_INDEX, IMAGE_TOKEN_INDEX, DEFAULT_IMAGE_TOKEN)


def build_llava_llama(vision_tower: str, *, mm_projector_type: str = "mlp2x_gelu", mm_vision_select_layer: int = -2,
                      attn_implementation: str | None = None, **config):
    """A ``LlavaLlamaForCausalLM`` from a ``LlavaConfig(**config)`` (random weights), with its
    vision tower and projector set up by LLaVA's ``initialize_vision_modules``, as LLaVA's
    ``train()`` does for ``--vision_tower`` (no ``--pretrain_mm_mlp_adapter``).
    ``attn_implementation``: set on the config when given (else transformers' default)."""
    register()
    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM
    from llava.train.train import ModelArguments

    llava_config = LlavaConfig(**config)
    if attn_implementation is not None:
        llava_config._attn_implementation = attn_implementation
    model = LlavaLlamaForCausalLM(llava_config)
    model_args = ModelArguments(vision_tower=vision_tower, mm_projector_type=mm_projector_type,
                                mm_vision_select_layer=mm_vision_select_layer, pretrain_mm_mlp_adapter=None)
    model.get_model().initialize_vision_modules(model_args=model_args)
    return model

"""lmms-eval generation settings (a task's ``gen_kwargs``) as ``generate`` keyword arguments."""

from __future__ import annotations

import logging

from revision_plugin.errors import BadInputError
from revision_plugin.parsing import parse_bool

logger = logging.getLogger(__name__)

# generation settings lmms-eval tasks pass that are understood here; anything else is reported once
KNOWN_GEN_KWARGS = {"until", "max_new_tokens", "temperature", "top_p", "top_k", "num_beams", "do_sample",
                    "repetition_penalty", "image_aspect_ratio", "max_gen_toks"}


def generation_settings(gen_kwargs: dict | None, max_new_tokens_cap: int | None, use_cache: bool,
                        warned: set[str]) -> tuple[list[str], dict]:
    """``(until, generate kwargs)``; unknown settings are logged once (``warned`` remembers them)."""
    gen_kwargs = dict(gen_kwargs or {})
    until = gen_kwargs.pop("until", None)
    if until is None:
        until = []
    elif isinstance(until, str):
        until = [until]
    elif not isinstance(until, (list, tuple)):
        raise BadInputError(f"revision_llava: generation 'until' must be a string or list, got {type(until).__name__}")
    unknown = set(gen_kwargs) - KNOWN_GEN_KWARGS - warned
    if unknown:
        logger.warning("revision_llava: ignoring generation settings %s", sorted(unknown))
        warned |= unknown
    max_new = int(gen_kwargs.get("max_new_tokens", gen_kwargs.get("max_gen_toks", 1024)))
    if max_new_tokens_cap is not None:
        max_new = min(max_new, max_new_tokens_cap)
    temperature = float(gen_kwargs.get("temperature", 0) or 0)
    do_sample = parse_bool(gen_kwargs.get("do_sample", temperature > 0), "revision_llava: do_sample", empty=False) and temperature > 0
    settings = {"max_new_tokens": max_new, "do_sample": do_sample, "num_beams": int(gen_kwargs.get("num_beams", 1) or 1),
                "use_cache": use_cache}
    if do_sample:
        settings["temperature"] = temperature
        if gen_kwargs.get("top_p") is not None:
            settings["top_p"] = float(gen_kwargs["top_p"])
        if gen_kwargs.get("top_k") is not None:
            settings["top_k"] = int(gen_kwargs["top_k"])
    if gen_kwargs.get("repetition_penalty") is not None:
        settings["repetition_penalty"] = float(gen_kwargs["repetition_penalty"])
    return [str(u) for u in until], settings

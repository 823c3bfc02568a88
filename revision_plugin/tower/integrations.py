"""Private APIs of torch and transformers/DeepSpeed the tower relies on, fenced in one place
(as peft's ``utils/integrations.py``): when one of them changes, this is the file to fix."""

from __future__ import annotations

from typing import Any

import torch


def parse_to(*args: Any, **kwargs: Any) -> tuple[torch.device | None, torch.dtype | None, bool]:
    """``(device, dtype, non_blocking)`` of a ``.to(...)`` call, exactly as ``nn.Module.to``
    reads its arguments (torch's private ``torch._C._nn._parse_to``)."""
    device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
    return device, dtype, non_blocking


class outside_zero3_init:
    """Load the frozen encoder as ordinary (unpartitioned) modules even while a ZeRO-3 config
    is active: it lives outside the host's module tree, so DeepSpeed would never gather it.

    transformers decides whether ``from_pretrained`` builds partitioned (``zero.Init``)
    modules from its private ``integrations.deepspeed._hf_deepspeed_config_weak_ref``; it is
    cleared for the duration of the block and restored after."""

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

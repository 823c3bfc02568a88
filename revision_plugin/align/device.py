"""Where fits and maps run: the ``--device`` option (resolved by ``revision_plugin.runtime.resolve_device``).

Only torch's own queries are used (``torch.cuda.is_available()``), so nothing CUDA-specific
is imported on a CPU-only install; the statistics and maps are the same torch code on every
device, float64 where the accumulation needs it.
"""

from __future__ import annotations

import torch


def device_arg(text: str) -> str:
    """argparse ``type=`` for ``--device``: the syntax is checked while parsing, availability at run."""
    import argparse

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda or cuda:N, got {text!r}")
    return text


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over torch.distributed ranks (no-op outside a process group).

    NCCL reduces device tensors only: CPU statistics make a round trip through this rank's GPU.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensor
    if torch.distributed.get_backend() == "nccl" and tensor.device.type == "cpu":
        on_device = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        torch.distributed.all_reduce(on_device)
        return tensor.copy_(on_device)
    torch.distributed.all_reduce(tensor)
    return tensor

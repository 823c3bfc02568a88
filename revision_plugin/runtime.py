"""Where code runs: dtype names, the default device, ``--device`` specs, the torch.distributed process group
started by ``torchrun``, and wrapped models. Import-light: torch is imported inside functions."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from revision_plugin.errors import BadInputError

if TYPE_CHECKING:
    import torch

# Every dtype name any option of the plugin accepts -> the torch dtype's name.
DTYPE_NAMES = {"float16": "float16", "fp16": "float16", "half": "float16", "bfloat16": "bfloat16",
               "bf16": "bfloat16", "float32": "float32", "fp32": "float32", "float": "float32"}


def dtype_named(name: str):
    """The torch dtype called ``name`` (a key of :data:`DTYPE_NAMES`, any case, ``torch.`` prefix
    allowed), or ``None`` for a name not in the table."""
    import torch

    key = str(name).lower().replace("torch.", "")
    return getattr(torch, DTYPE_NAMES[key]) if key in DTYPE_NAMES else None


def default_device(local_rank: int = 0) -> str:
    """``cuda:<local_rank>`` when CUDA is available, else ``cpu``."""
    import torch

    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def resolve_device(spec: str | torch.device | None) -> torch.device:
    """``None``/"cpu"/"cuda"/"cuda:N"/a torch.device → a usable ``torch.device``, or a one-line error."""
    import torch

    if spec is None:
        return torch.device("cpu")
    if isinstance(spec, torch.device):
        device = spec
    else:
        try:
            device = torch.device(str(spec))
        except (RuntimeError, ValueError):
            raise BadInputError(f"--device {spec!r}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise BadInputError(f"--device {spec}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise BadInputError(f"--device {spec}: CUDA is not available on this machine (torch {torch.__version__}); use --device cpu")
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise BadInputError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def launched_world_size() -> int:
    """``$WORLD_SIZE`` as set by ``torchrun`` / ``accelerate launch`` (1 when unset)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """``$LOCAL_RANK`` (0 when unset): this process's GPU on its node."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(timeout: timedelta | None = None) -> bool:
    """Join the process group a multi-process launch expects (nccl on this rank's GPU, else gloo); returns
    whether this call started it (then :func:`shutdown_distributed` is the caller's). ``timeout``:
    how long ranks wait for each other (``None``: torch's default)."""
    import torch
    import torch.distributed as dist

    if launched_world_size() <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":  # collectives run on this rank's own GPU
        torch.cuda.set_device(local_rank())
    kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend=backend, **kwargs)
    return True


def shutdown_distributed() -> None:
    """Leave the process group, if one is running."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def unwrap_model(model: Any) -> Any:
    """The model inside DeepSpeed / DDP wrappers (``.module``, repeatedly)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def shard_bounds(num_rows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, balanced row range of ``rank`` out of ``world_size`` (the split every
    multi-process reader and writer uses; here so that neither align/ nor store/ imports the other for it)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of size {world_size}")
    base, extra = divmod(num_rows, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)

"""LLaVA's entry points called from Python, with the plugin registered first:
:func:`train_llava` (LLaVA's own ``train()``) and :func:`load_pretrained_model`; and
:func:`run_train_command`, what the patched LLaVA's command-line entry points run."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from revision_plugin.errors import BadInputError, RevisionError, wants_traceback
from revision_plugin.hosts.llava.registration import register


def load_pretrained_model(model_path, model_base=None, model_name=None, **kwargs):
    """LLaVA's ``load_pretrained_model`` (``model_name`` defaults to the path's name; LLaVA
    only builds the vision tower when that name contains 'llava')."""
    register()
    from llava.model.builder import load_pretrained_model as llava_load

    model_name = model_name or Path(str(model_path).rstrip("/")).name
    if "llava" not in model_name.lower():
        raise BadInputError(f"model_name {model_name!r}: LLaVA only builds the vision tower when the name contains 'llava'")
    return llava_load(model_path, model_base, model_name, **kwargs)


def train_llava(argv: list[str], attn_implementation: str | None = None) -> None:
    """LLaVA's own ``llava.train.train.train()`` in this process, with ``argv`` as its flags:
    the Python way to run stage 1 or stage 2 (the command-line way is
    ``python -m llava.train.train FLAGS``, or ``deepspeed --module llava.train.train FLAGS``).
    ``attn_implementation``: what LLaVA's ``train_mem.py`` passes (``flash_attention_2``);
    ``None`` is transformers' default (sdpa), which works on CPU."""
    register()
    import llava.train.train as llava_train

    saved = sys.argv
    sys.argv = ["llava.train.train", *argv]
    try:
        llava_train.train(attn_implementation=attn_implementation)
    finally:
        sys.argv = saved


def run_train_command(train: Callable[..., object], **train_kwargs) -> None:
    """LLaVA's ``train(**train_kwargs)`` as a command: patch 0008 runs it for ``python -m
    llava.train.train``, ``deepspeed --module`` / ``torchrun -m llava.train.train`` and
    ``train_mem.py``. A :class:`RevisionError` (bad input) ends the process with one line on
    stderr, ``revision: error: MESSAGE`` (like the ``revision`` command's errors), and exit
    status 2, in every process that raises it (an error may concern one rank only: a node's
    path, a rank's shard), each line after ``[rankN]: `` when there are several; a message
    that lists bad records keeps its list on the lines below.
    Any other exception keeps its traceback, and ``$REVISION_TRACEBACK=1`` restores it for
    ours. :func:`train_llava` (the Python API) raises as usual."""
    try:
        train(**train_kwargs)
    except RevisionError as err:
        if wants_traceback():
            raise
        prefix = _rank_prefix()  # on every line: ranks' output interleaves
        first, *rest = _error_text(err).splitlines() or [type(err).__name__]
        lines = [f"{prefix}revision: error: {first}", *(prefix + line for line in rest)]
        print(*lines, sep="\n", file=sys.stderr, flush=True)
        sys.exit(2)


def _rank_prefix() -> str:
    """``[rankN]: `` in a multi-process run (torch's own prefix for a rank's traceback), else nothing."""
    try:
        several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        several = False
    rank = os.environ.get("RANK", "").strip()
    return f"[rank{rank}]: " if several and rank else ""


def _error_text(err: RevisionError) -> str:
    """The message of ``err``; one raised in a DataLoader worker comes back from torch as
    ``Caught X in DataLoader worker process N.\\nOriginal Traceback ...`` with the message last."""
    text = str(err).strip()
    marker = f"{type(err).__module__}.{type(err).__qualname__}: "
    if text.startswith("Caught ") and "\nOriginal Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1].strip()
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())

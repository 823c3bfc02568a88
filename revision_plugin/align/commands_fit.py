"""``revision fit``: fit an alignment operator and save it as safetensors + json.

Under ``torchrun`` (WORLD_SIZE > 1) every rank reads its own slice of the rows, the statistics
are all-reduced over a gloo/nccl process group, and rank 0 writes the operator.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from revision_plugin.align import OPERATOR_REGISTRY, fit_operator
from revision_plugin.align.base import OPERATOR_CONFIG_NAME
from revision_plugin.align.device import device_arg
from revision_plugin.align.sources import DEFAULT_CHUNK_ROWS
from revision_plugin.argtypes import positive_int
from revision_plugin.errors import RevisionError, check_writable
from revision_plugin.parsing import json_or_text, split_assignment
from revision_plugin.runtime import init_distributed, resolve_device, shutdown_distributed

logger = logging.getLogger(__name__)


def parse_option(text: str) -> tuple[str, object]:
    key, value = split_assignment(text, lambda t: argparse.ArgumentTypeError(f"expected KEY=VALUE, got {t!r}"))
    return key, json_or_text(value)


def _methods_help() -> str:
    lines = [f"  {name}: " + (", ".join(f"{k}={v!r}" for k, v in cls.default_options.items()) or "no options")
             for name, cls in sorted(OPERATOR_REGISTRY.items())]
    return "methods and their options (defaults):\n" + "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _methods_help() + (
        "\n\nexample:\n  revision fit --method realign --text text.npy --image image.npy --out op/ -o centroid_iters=2"
        "\n  torchrun --nproc_per_node 4 -m revision_plugin.cli fit ...   # rows split over ranks"
    )
    parser.add_argument("--method", required=True, choices=sorted(OPERATOR_REGISTRY), help="alignment method")
    parser.add_argument("--text", required=True, help="text embeddings: .npy [N, d] or feature-store directory")
    parser.add_argument("--image", required=True, help="image embeddings: .npy [M, d] or feature-store directory")
    parser.add_argument("--out", required=True, type=Path, help="output directory for operator.safetensors/.json")
    parser.add_argument("-o", "--option", action="append", default=[], type=parse_option, metavar="KEY=VALUE",
                        help="method option (repeatable), value parsed as JSON, e.g. -o centroid_iters=4")
    parser.add_argument("--encoder-id", default=None,
                        help="encoder the embeddings come from (recorded; checked against stores' manifests)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="exclude NaN/Inf/zero-norm rows instead of stopping; their count and first rows are reported")
    parser.add_argument("--chunk-rows", type=positive_int, default=DEFAULT_CHUNK_ROWS, help="rows read per chunk")
    parser.add_argument("--device", type=device_arg, default="cpu",
                        help="where the statistics are computed: cpu (default, all cores), cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing operator in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run(args: argparse.Namespace) -> int:
    device = resolve_device(args.device)  # before anything is read or written
    if (args.out / OPERATOR_CONFIG_NAME).exists() and not args.overwrite:
        raise RevisionError(f"{args.out} already holds an operator; pass --overwrite to replace it")
    check_writable(args.out, directory=True)  # before the passes over the data, not after
    keys = [key for key, _ in args.option]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise RevisionError(f"-o {', '.join(repeated)} given more than once; give each option once")
    started = init_distributed()
    try:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        operator = fit_operator(
            args.method, args.text, args.image,
            encoder_id=args.encoder_id, skip_bad=args.skip_bad,
            progress=not args.no_progress and rank == 0, chunk_rows=args.chunk_rows, device=device,
            **dict(args.option),
        )
        if rank == 0:
            operator.save(args.out)
            counts = ", ".join(f"{k}={v}" for k, v in operator.info.counts.items())
            print(f"fitted {args.method} (dim {operator.dim}; {counts}) -> {args.out}")
    finally:
        if started:
            shutdown_distributed()
    return 0

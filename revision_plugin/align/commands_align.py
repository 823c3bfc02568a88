"""``revision align``: apply a fitted operator to an embedding file, chunk by chunk.

Memory stays flat: rows are read into one reused buffer and written straight to a temporary
``.npy`` that is renamed into place when complete, so an interrupted run leaves no partial
output behind. Every input row gives exactly one output row, so bad rows stop the run (there
is no ``--skip-bad`` here); the error names the file and row.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from revision_plugin.align import load_operator, open_source, train_mode
from revision_plugin.align.sources import DEFAULT_CHUNK_ROWS
from revision_plugin.align.stats import normalized_blocks
from revision_plugin.argtypes import positive_int
from revision_plugin.errors import RevisionError, check_writable


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--operator", required=True, type=Path, help="directory written by `revision fit`")
    parser.add_argument("--in", dest="inputs", required=True, help="embeddings to align: .npy or feature store")
    parser.add_argument("--out", required=True, type=Path, help="output .npy (float32, same row order)")
    parser.add_argument("--image", action="store_true",
                        help="the input holds real image embeddings: apply the operator's image-side map")
    parser.add_argument("--train-mode", action="store_true",
                        help="apply training-time behaviour (C3: draw the noise once; seed with -o seed=… at fit)")
    parser.add_argument("--chunk-rows", type=positive_int, default=DEFAULT_CHUNK_ROWS, help="rows read per chunk")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def align_file(operator, source, out: Path, image: bool = False, chunk_rows: int = DEFAULT_CHUNK_ROWS,
               progress: bool = True) -> int:
    """Write ``operator`` applied to every row of ``source`` to ``out`` (float32 .npy)."""
    transform = operator.transform_target if image else operator.transform
    tmp = out.with_name(out.name + ".partial")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False,
              "shape": (source.num_rows, source.dim)}
    written = 0
    try:
        with open(tmp, "wb") as f, tqdm(total=source.num_rows, unit="row", unit_scale=True,
                                          disable=not progress, desc="align") as bar:
            np.lib.format.write_array_header_1_0(f, header)
            with torch.no_grad():
                for x, _, inv_norm in normalized_blocks(source, None, chunk_rows, bar.update):
                    aligned = transform(x * inv_norm[:, None]).to(torch.float32).numpy()
                    finite = np.isfinite(aligned).all(axis=1)
                    if not finite.all():
                        row = written + int(np.flatnonzero(~finite)[0])
                        raise RevisionError(
                            f"{source.name}: the {operator.method} operator produced NaN/Inf for row {row}; "
                            f"no output written"
                        )
                    f.write(aligned.tobytes())
                    written += len(aligned)
        if written != source.num_rows:
            raise RevisionError(f"{source.name}: wrote {written} rows, expected {source.num_rows}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return written


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.overwrite:
        raise RevisionError(f"{args.out} exists; pass --overwrite to replace it")
    check_writable(args.out)
    if Path(args.inputs).exists() and os.path.realpath(args.inputs) == os.path.realpath(args.out):
        raise RevisionError(f"--out {args.out} is the --in file; write to another path")
    source = open_source(args.inputs)
    operator = load_operator(args.operator, expected_dim=source.dim, encoder_id=source.encoder_id)
    with train_mode(operator, args.train_mode):
        rows = align_file(operator, source, args.out, args.image, args.chunk_rows, not args.no_progress)
    print(f"aligned {rows} rows with {operator.method} -> {args.out}")
    return 0

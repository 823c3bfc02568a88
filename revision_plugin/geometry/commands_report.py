"""``revision report``: the geometry report (report.json + PNGs) for embeddings and operators.

    revision report --text T --image I [--operator DIR ...] [--method SPEC ...] [--pairs P] --out DIR

``T``/``I``: ``.npy`` files or feature-store directories. Pre-fitted operators (``--operator``,
optionally ``LABEL=DIR``) are measured as given; ``--method`` specs are fitted here on the
fit split. Without either, every registered method is fitted. Measurements use the held-out
split (``--holdout``, default 0.2). ``--pairs`` enables the paired (sec. 3) frame analysis:
``rows`` (row i of T pairs with row i of I), an ``.npy`` int array ``[n, 2]`` of
(text_row, image_row), or a ``.tsv``/``.csv``/``.jsonl`` file of (text_id, image_id) when
both inputs are feature stores.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from pathlib import Path

import numpy as np

from revision_plugin.align.frame import DEFAULT_ENERGY
from revision_plugin.argtypes import (
    nonnegative_int,
    open_unit_interval,
    positive_float,
    positive_int,
    unit_interval,
)
from revision_plugin.errors import ArtifactMismatchError, BadInputError, MissingFileError, check_writable

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from revision_plugin.geometry.report import (
        DEFAULT_MAX_POINTS,
        DEFAULT_MAX_ROWS,
        SAMPLE_SEEDS,
    )

    parser.add_argument("--text", required=True, help="text embeddings: .npy file or feature-store directory")
    parser.add_argument("--image", required=True, help="image embeddings: .npy file or feature-store directory")
    parser.add_argument("--operator", action="append", default=[], metavar="[LABEL=]DIR",
                        help="a fitted operator directory to measure (repeatable)")
    parser.add_argument("--method", action="append", default=[], metavar="SPEC",
                        help="fit this method on the fit split, e.g. realign or realign:centroid_iters=4 "
                        "(repeatable; default without --operator: every registered method)")
    parser.add_argument("--pairs", default=None,
                        help="paired rows for the frame analysis: 'rows', an .npy [n,2] int array of "
                        "(text_row, image_row), or a .tsv/.csv/.jsonl of (text_id, image_id) for stores")
    parser.add_argument("--out", type=Path, required=True, help="output directory for report.json and PNGs")
    parser.add_argument("--holdout", type=unit_interval, default=0.2,
                        help="held-out fraction measured on; 0 = in-sample (default: 0.2)")
    parser.add_argument("--split", choices=("random", "tail"), default="random",
                        help="held-out rows: a seeded random subset, or the last rows (default: random)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of every subsample and split (default: 0)")
    parser.add_argument("--max-rows", type=positive_int, default=DEFAULT_MAX_ROWS,
                        help=f"rows per modality read (seeded subsample beyond; default: {DEFAULT_MAX_ROWS})")
    parser.add_argument("--max-points", type=positive_int, default=DEFAULT_MAX_POINTS,
                        help=f"rows per modality for kNN / KDE / MMD / Tyler (default: {DEFAULT_MAX_POINTS})")
    parser.add_argument("--no-sample-complexity", action="store_true",
                        help="skip the gap-vs-N experiment (paper Fig. 7)")
    parser.add_argument("--sample-seeds", type=positive_int, default=SAMPLE_SEEDS,
                        help=f"seeds per N in the gap-vs-N experiment (default: {SAMPLE_SEEDS})")
    parser.add_argument("--energy", type=open_unit_interval, default=DEFAULT_ENERGY,
                        help=f"energy threshold of the U/V reference frame (default: {DEFAULT_ENERGY})")
    parser.add_argument("--temperature", type=positive_float, default=0.07,
                        help="InfoNCE temperature of the probe gradients for the leakage ratio (default: 0.07)")
    parser.add_argument("--no-plots", action="store_true", help="write report.json only")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")


# --- reading --------------------------------------------------------------------------------
def read_rows(source, rows: np.ndarray) -> np.ndarray:
    """float32 rows ``rows`` (sorted, unique) of a chunk source; stores read them directly."""
    if hasattr(source, "read_rows"):
        return np.asarray(source.read_rows(rows), dtype=np.float32)
    out = np.empty((len(rows), source.dim), dtype=np.float32)
    pos = 0
    for first, chunk in source.chunks():
        hi = np.searchsorted(rows, first + len(chunk), side="left")
        take = rows[pos:hi] - first
        out[pos:hi] = chunk[take]
        pos = hi
        if pos == len(rows):
            break
    return out


def read_pairs(spec: str, text_src, image_src) -> np.ndarray:
    """``[n, 2]`` int64 (text_row, image_row) from ``--pairs``."""
    if spec == "rows":
        if text_src.num_rows != image_src.num_rows:
            raise BadInputError(f"--pairs rows: {text_src.name} has {text_src.num_rows} rows, "
                                f"{image_src.name} has {image_src.num_rows}")
        rows = np.arange(text_src.num_rows)
        return np.stack([rows, rows], 1)
    path = Path(spec)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such pairs file (or pass --pairs rows)")
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
            raise BadInputError(f"{path}: expected an integer array [n, 2] of (text_row, image_row), got {arr.dtype} {arr.shape}")
        pairs = arr.astype(np.int64)
    else:
        text_ids, image_ids = _read_id_pairs(path)
        pairs = np.stack([_rows_of(text_src, text_ids, path, "text"), _rows_of(image_src, image_ids, path, "image")], 1)
    for col, src, side in ((0, text_src, "text"), (1, image_src, "image")):
        bad = np.flatnonzero((pairs[:, col] < 0) | (pairs[:, col] >= src.num_rows))
        if len(bad):
            raise BadInputError(f"{path}: pair {int(bad[0])} refers to {side} row {int(pairs[bad[0], col])}, "
                                f"outside [0, {src.num_rows}) of {src.name}")
    if not len(pairs):
        raise BadInputError(f"{path}: no pairs")
    return pairs


def _read_id_pairs(path: Path) -> tuple[list[str], list[str]]:
    text_ids, image_ids = [], []
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    text_ids.append(str(rec["text_id"]))
                    image_ids.append(str(rec["image_id"]))
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise BadInputError(f"{path}:{line_no}: expected {{\"text_id\": ..., \"image_id\": ...}} ({err})") from err
        return text_ids, image_ids
    delimiter = "," if path.suffix == ".csv" else "\t"
    with open(path, encoding="utf-8", newline="") as f:
        for line_no, row in enumerate(csv.reader(f, delimiter=delimiter), 1):
            if not row or not "".join(row).strip():
                continue
            if line_no == 1 and [c.strip() for c in row] == ["text_id", "image_id"]:
                continue
            if len(row) != 2:
                raise BadInputError(f"{path}:{line_no}: expected 2 columns (text_id, image_id), got {len(row)}")
            text_ids.append(row[0].strip())
            image_ids.append(row[1].strip())
    return text_ids, image_ids


def _rows_of(source, ids: list[str], path: Path, side: str) -> np.ndarray:
    if hasattr(source, "rows_of"):
        return source.rows_of(ids)
    try:
        return np.array([int(i) for i in ids], dtype=np.int64)
    except ValueError:
        raise BadInputError(f"{path}: {side} ids are not row numbers and {source.name} is not a feature store "
                            "(ids can only be looked up in a store)") from None


def select_rows(n: int, max_rows: int | None, forced: np.ndarray, seed: int) -> np.ndarray:
    """Sorted rows to load: all, or ``forced`` rows plus a seeded random fill up to ``max_rows``."""
    if max_rows is None or n <= max_rows:
        return np.arange(n)
    forced = np.unique(forced)[:max_rows]
    rest = np.setdiff1d(np.arange(n), forced, assume_unique=True)
    fill = np.random.default_rng(seed).choice(rest, size=max_rows - len(forced), replace=False)
    return np.sort(np.concatenate([forced, fill]))


def load_inputs(args) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str | None, list[str]]:
    """(text, image, pairs remapped to the loaded rows, encoder_id, notes)."""
    from revision_plugin.align.sources import open_source

    text_src, image_src = open_source(args.text), open_source(args.image)
    if text_src.dim != image_src.dim:
        raise BadInputError(f"{text_src.name} has dim {text_src.dim}, {image_src.name} has dim {image_src.dim}")
    ids = {s.encoder_id for s in (text_src, image_src) if s.encoder_id is not None}
    if len(ids) > 1:
        raise ArtifactMismatchError(f"{text_src.name} ({text_src.encoder_id!r}) and {image_src.name} "
                                    f"({image_src.encoder_id!r}) come from different encoders")
    encoder_id = ids.pop() if ids else None
    notes = []
    pairs = read_pairs(args.pairs, text_src, image_src) if args.pairs else None
    forced_t = forced_i = np.zeros(0, dtype=np.int64)
    if pairs is not None and args.max_rows is not None:
        rng = np.random.default_rng(args.seed)
        keep = pairs[rng.permutation(len(pairs))[: max(args.max_rows // 2, 1)]]
        forced_t, forced_i = keep[:, 0], keep[:, 1]
    rows_t = select_rows(text_src.num_rows, args.max_rows, forced_t, args.seed)
    rows_i = select_rows(image_src.num_rows, args.max_rows, forced_i, args.seed + 1)
    if args.pairs == "rows" and len(rows_t) < text_src.num_rows:
        rows_i = rows_t
    for rows, src in ((rows_t, text_src), (rows_i, image_src)):
        if len(rows) < src.num_rows:
            notes.append(f"{src.name}: read a seeded subsample of {len(rows)} of {src.num_rows} rows (--max-rows)")
    text = read_rows(text_src, rows_t)
    image = read_rows(image_src, rows_i)
    if pairs is not None:
        pos_t = np.full(text_src.num_rows, -1)
        pos_t[rows_t] = np.arange(len(rows_t))
        pos_i = np.full(image_src.num_rows, -1)
        pos_i[rows_i] = np.arange(len(rows_i))
        mapped = np.stack([pos_t[pairs[:, 0]], pos_i[pairs[:, 1]]], 1)
        pairs = mapped[(mapped >= 0).all(1)]
    return text, image, pairs, encoder_id, notes


def parse_operator_arg(arg: str) -> tuple[str, Path]:
    label, sep, path = arg.partition("=")
    if sep and label and not Path(arg).exists():
        return label, Path(path)
    path = Path(arg)
    return path.name or str(path), path


def run(args: argparse.Namespace) -> int:
    from revision_plugin.align import load_operator
    from revision_plugin.geometry.report import REPORT_NAME, build_report, format_table

    if not 0.0 <= args.holdout < 1.0:
        raise BadInputError(f"--holdout must be in [0, 1), got {args.holdout}")
    if args.max_points < 20:
        raise BadInputError(f"--max-points must be ≥ 20, got {args.max_points}")
    if (args.out / REPORT_NAME).exists() and not args.overwrite:
        raise BadInputError(f"{args.out / REPORT_NAME} exists; pass --overwrite to replace the report")
    check_writable(args.out, directory=True)
    text, image, pairs, encoder_id, notes = load_inputs(args)
    operators = {}
    for arg in args.operator:
        label, path = parse_operator_arg(arg)
        if label in operators:
            raise BadInputError(f"two operators labelled {label!r}; use LABEL=DIR to name them")
        operators[label] = load_operator(path, expected_dim=text.shape[1], encoder_id=encoder_id)
    methods = args.method or None
    report = build_report(
        text,
        image,
        operators=operators or None,
        methods=methods,
        out_dir=args.out,
        holdout=args.holdout,
        seed=args.seed,
        max_points=args.max_points,
        max_rows=None,
        sample_complexity=not args.no_sample_complexity,
        sample_seeds=args.sample_seeds,
        pairs=pairs,
        split=args.split,
        energy=args.energy,
        temperature=args.temperature,
        plots=not args.no_plots,
        encoder_id=encoder_id,
        notes=notes,
    )
    if args.operator and args.holdout:
        logger.info("pre-fitted operators are measured on the held-out split of these inputs; "
                    "if they were fitted on some of these rows, the held-out gap is optimistic")
    print(format_table(report))
    print(f"\nreport: {args.out / REPORT_NAME}")
    return 0

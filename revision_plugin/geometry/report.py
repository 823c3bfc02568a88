"""The geometry report: every metric of ``metrics``/``frame`` per operator, on held-out data.

``build_report(text, image, ...)`` splits both modalities into a fit split and a held-out
split, fits the requested methods on the fit split (pre-fitted ``operators`` are used as
given), measures on the held-out split, writes ``report.json`` and PNG plots to ``out_dir``
and returns the report as a dict. ``format_table(report)`` renders the terminal table. The
JSON schema is documented in ``docs/report.md``.

Modules: :mod:`.splits` (fit / held-out rows, pairs), :mod:`.measure` (the numbers),
:mod:`.plots` (one function per paper figure), :mod:`.table` (the terminal table); this one
assembles them (:class:`ReportSettings` is written into the report as ``settings``).

Operators are measured in **training mode** (``train_mode``): that is what stage-1
pretraining feeds the projector, and it is the only mode in which C3 adds its noise. Random
draws (C3 noise, subsamples) are seeded from ``seed``; the sizes and seeds of every
subsample are recorded in the report.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from revision_plugin import __version__
from revision_plugin.align.frame import DEFAULT_ENERGY
from revision_plugin.errors import BadInputError
from revision_plugin.geometry import metrics as gm
from revision_plugin.geometry.measure import (
    MIXING_K,
    MMD_MAX_POINTS,
    OVERLAP_K,
    RAW,
    apply_operator,
    frame_section,
    measure,
    measure_sample_complexity,
)
from revision_plugin.geometry.plots import PLOT_NAMES, write_plots
from revision_plugin.geometry.splits import remap_pairs, resolve_pairs, split_rows
from revision_plugin.geometry.table import format_table
from revision_plugin.parsing import assignments, json_or_text

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REPORT_NAME = "report.json"
SAMPLE_SIZES = (100, 500, 1_000, 5_000, 10_000, 50_000, 100_000)
SAMPLE_SEEDS = 5
DEFAULT_MAX_POINTS = 4000
DEFAULT_MAX_ROWS = 100_000

__all__ = [
    "DEFAULT_MAX_POINTS", "DEFAULT_MAX_ROWS", "PLOT_NAMES", "RAW", "REPORT_NAME", "SAMPLE_SEEDS", "SAMPLE_SIZES",
    "SCHEMA_VERSION", "ReportSettings", "build_report", "default_methods", "format_table", "load_report",
    "parse_method", "split_rows", "write_plots",
]


@dataclass(frozen=True)
class ReportSettings:
    """The measurement settings of a report, written into it as ``settings``."""

    max_points: int
    mixing_k: int
    overlap_k: int
    cosine_pairs: int
    kde_grid: int
    mmd_max_points: int
    operator_mode: str
    energy: float
    temperature: float

    @classmethod
    def of(cls, max_points: int, cosine_pairs: int, energy: float, temperature: float) -> ReportSettings:
        return cls(max_points=int(max_points), mixing_k=MIXING_K, overlap_k=OVERLAP_K, cosine_pairs=int(cosine_pairs),
                   kde_grid=gm.KDE_GRID, mmd_max_points=int(min(max_points, MMD_MAX_POINTS)), operator_mode="train",
                   energy=float(energy), temperature=float(temperature))


# --- method specs ---------------------------------------------------------------------------
def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"realign"`` or ``"realign:centroid_iters=4,eps=1e-6"`` → (method, options)."""
    name, _, rest = spec.partition(":")

    def bad(item: str) -> ValueError:
        return ValueError(f"bad method option {item!r} in {spec!r}; expected key=value")

    return name.strip(), {key: json_or_text(value) for key, value in assignments(rest, bad)}


def default_methods() -> list[str]:
    """Every registered method but ``identity`` (the raw row covers it), plus iterated ReAlign."""
    from revision_plugin.align import OPERATOR_REGISTRY

    names = [m for m in sorted(OPERATOR_REGISTRY) if m != "identity"]
    if "realign" in names:
        names.insert(names.index("realign") + 1, "realign:centroid_iters=4")
    return names


def _refit_options(operator) -> dict[str, Any]:
    """Options of a fitted operator that its method's ``fit`` accepts again."""
    known = set(getattr(type(operator), "default_options", {}))
    return {k: v for k, v in operator.info.options.items() if k in known}


# --- the report -----------------------------------------------------------------------------
def build_report(
    text: Any,
    image: Any,
    operators: dict[str, Any] | None = None,
    methods: list[str] | None = None,
    out_dir: str | Path | None = None,
    holdout: float = 0.2,
    seed: int = 0,
    max_points: int = DEFAULT_MAX_POINTS,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    sample_complexity: bool | Iterable[str] = True,
    sample_sizes: Iterable[int] = SAMPLE_SIZES,
    sample_seeds: int = SAMPLE_SEEDS,
    pairs: Any = None,
    split: str = "tail",
    energy: float = DEFAULT_ENERGY,
    temperature: float = 0.07,
    cosine_pairs: int = gm.DEFAULT_COSINE_PAIRS,
    plots: bool = True,
    encoder_id: str | None = None,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Measure raw data and every operator on held-out rows; write ``report.json`` + PNGs.

    ``text``/``image``: ``[n, d]`` arrays or tensors (unit-normalised here). ``operators``:
    pre-fitted operators by label, measured as given. ``methods``: method specs
    (``"realign"``, ``"realign:centroid_iters=4"``) fitted here on the fit split; when both
    are ``None`` every registered method is fitted. ``holdout``: held-out fraction (0 = fit
    and measure on everything, in-sample); ``split``: ``"tail"`` (last rows, as the demo) or
    ``"random"``. ``pairs``: ``None``, ``"rows"`` (row i ↔ row i) or an int array
    ``[m, 2]`` of (text_row, image_row) — enables the sec. 3 frame analysis on held-out pairs.
    ``max_rows``: rows per side kept (seeded subsample) before anything else; ``max_points``:
    rows per side for the pairwise metrics. ``sample_complexity``: the Fig. 7 experiment
    (refit on subsets of the fit split, ``sample_seeds`` seeds each) for every operator
    (``True``), none (``False``) or the given labels. ``notes``: extra lines for the report.
    """
    from revision_plugin.align import fit_operator, get_operator_class

    started = time.perf_counter()
    text_all = gm.unit_rows(text, np.float32)
    image_all = gm.unit_rows(image, np.float32)
    if text_all.shape[1] != image_all.shape[1]:
        raise BadInputError(f"text dim {text_all.shape[1]} != image dim {image_all.shape[1]}")
    dim = text_all.shape[1]
    n_given = (len(text_all), len(image_all))
    pair_arr = resolve_pairs(pairs, len(text_all), len(image_all))

    # optional row cap (seeded); pairs are remapped to the kept rows
    kept_t = gm.subsample_rows(len(text_all), max_rows, seed)
    kept_i = gm.subsample_rows(len(image_all), max_rows, seed + 1)
    if pair_arr is not None and (len(kept_t) < len(text_all) or len(kept_i) < len(image_all)):
        if len(text_all) == len(image_all) and np.array_equal(pair_arr[:, 0], pair_arr[:, 1]):
            kept_i = kept_t
        pair_arr = remap_pairs(pair_arr, kept_t, kept_i)
    text_all, image_all = text_all[kept_t], image_all[kept_i]

    tf, te, imf, ime = split_rows(len(text_all), len(image_all), holdout, seed, split, pair_arr)
    text_fit, text_eval, image_fit, image_eval = text_all[tf], text_all[te], image_all[imf], image_all[ime]

    variants: dict[str, tuple[Any, str, dict[str, Any]]] = {}  # label -> (operator, source, refit spec)
    for label, op in (operators or {}).items():
        if label == RAW:
            raise ValueError(f"operator label {RAW!r} is reserved for the unaligned data")
        if op.dim != dim:
            raise BadInputError(f"operator {label!r} has dim {op.dim}, data has dim {dim}")
        variants[label] = (op, "given", {"method": op.info.method, "options": _refit_options(op)})
    if methods is None and operators is None:
        methods = default_methods()
    for spec in methods or []:
        method, options = parse_method(spec)
        get_operator_class(method)  # fail early on a typo
        if spec in variants:
            raise ValueError(f"duplicate operator label {spec!r}")
        op = fit_operator(method, text_fit, image_fit, encoder_id=encoder_id, **options)
        variants[spec] = (op, "fitted on the fit split", {"method": method, "options": options})

    image_trace = float(gm.spectrum(image_eval).sum())
    image_spec = gm.spectrum_summary(image_eval, target_trace=None)
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "package_version": __version__,
        "data": {
            "dim": int(dim),
            "rows": {"text": int(len(kept_t)), "image": int(len(kept_i))},
            "rows_given": {"text": int(n_given[0]), "image": int(n_given[1])},
            "max_rows": max_rows,
            "fit_rows": {"text": int(len(tf)), "image": int(len(imf))},
            "eval_rows": {"text": int(len(te)), "image": int(len(ime))},
            "holdout": float(holdout),
            "split": split,
            "in_sample": holdout == 0.0,
            "seed": int(seed),
            "encoder_id": encoder_id,
        },
        "settings": asdict(ReportSettings.of(max_points, cosine_pairs, energy, temperature)),
        "image_reference": {k: image_spec[k] for k in ("trace", "alpha", "alpha_fit_r2", "effective_rank")},
        "operators": {},
        "notes": [
            "operators are measured in training mode (what stage-1 pretraining sees); C3 adds its noise only in this mode",
            "pairwise metrics (kNN, cosine KDE, MMD) use seeded subsamples; sizes are recorded per metric",
        ],
    }
    if len(kept_t) < n_given[0] or len(kept_i) < n_given[1]:
        report["notes"].append(f"rows were subsampled to max_rows={max_rows} per side (seed {seed})")
    report["notes"].extend(notes or [])
    if holdout == 0.0:
        report["notes"].append("holdout=0: operators are fitted and measured on the same rows (in-sample, optimistic)")

    curves: dict[str, dict[str, Any]] = {}
    outputs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    raw_neighbours = gm.knn_indices(text_eval[gm.subsample_rows(len(text_eval), max_points, seed)], OVERLAP_K)
    raw_entry, curves[RAW] = measure(text_eval, image_eval, text_eval, raw_neighbours, image_trace, seed,
                                      max_points, cosine_pairs)
    raw_entry.update({"method": None, "options": {}, "source": "unaligned unit-normalised embeddings",
                      "gap_fit_split": gm.modality_gap(text_fit, image_fit) if holdout else None})
    report["operators"][RAW] = raw_entry
    outputs[RAW] = (text_eval.astype(np.float64), image_eval.astype(np.float64))
    for label, (op, source, _refit) in variants.items():
        t_out, i_out = apply_operator(op, text_eval, image_eval, seed)
        entry, curves[label] = measure(t_out, i_out, text_eval, raw_neighbours, image_trace, seed, max_points,
                                        cosine_pairs)
        gap_fit = None
        if holdout:
            tf_out, if_out = apply_operator(op, text_fit, image_fit, seed + 1)
            gap_fit = gm.modality_gap(tf_out, if_out, normalize=False)
        entry = {"method": op.info.method, "options": _jsonable(op.info.options), "source": source,
                 "mode": "train", "gap_fit_split": gap_fit, **entry}
        report["operators"][label] = entry
        outputs[label] = (t_out, i_out)

    if pair_arr is not None:
        report["notes"].append(
            "with pairs, held-out text and image rows can be paired samples: their centroids are correlated, "
            "so the held-out gap can fall below gap_sampling_floor (which assumes independent samples)"
        )
        report["frame"] = frame_section(pair_arr, te, ime, text_all, image_all, variants, report, seed,
                                         max_points, energy, temperature)

    if sample_complexity:
        chosen = variants
        if not isinstance(sample_complexity, bool):
            wanted = list(sample_complexity)
            unknown = sorted(set(wanted) - set(variants))
            if unknown:
                raise ValueError(f"sample_complexity: unknown operator labels {unknown}; known: {sorted(variants)}")
            chosen = {k: variants[k] for k in wanted}
        report["sample_complexity"] = measure_sample_complexity(
            chosen, text_fit, image_fit, text_eval, image_eval, sample_sizes, sample_seeds, seed, holdout, encoder_id
        )
    report["seconds"] = {"measure": round(time.perf_counter() - started, 3)}

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            t0 = time.perf_counter()
            report["plots"] = write_plots(report, curves, outputs, out, seed)
            report["seconds"]["plots"] = round(time.perf_counter() - t0, 3)
        (out / REPORT_NAME).write_text(json.dumps(_jsonable(report), indent=1, allow_nan=False) + "\n")
    report["seconds"]["total"] = round(time.perf_counter() - started, 3)
    return _jsonable(report)


def _jsonable(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become ``None``."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_NAME
    return json.loads(path.read_text())

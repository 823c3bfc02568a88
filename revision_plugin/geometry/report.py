"""The geometry report: every metric of ``metrics``/``frame`` per operator, on held-out data.

``build_report(text, image, ...)`` splits both modalities into a fit split and a held-out
split, fits the requested methods on the fit split (pre-fitted ``operators`` are used as
given), measures on the held-out split, writes ``report.json`` and PNG plots to ``out_dir``
and returns the report as a dict. ``format_table(report)`` renders the terminal table. The
JSON schema is documented in ``docs/report.md``.

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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from revision_plugin import __version__
from revision_plugin.align.frame import DEFAULT_ENERGY
from revision_plugin.errors import BadInputError
from revision_plugin.geometry import frame as gframe
from revision_plugin.geometry import metrics as gm

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
REPORT_NAME = "report.json"
RAW = "raw"
SAMPLE_SIZES = (100, 500, 1_000, 5_000, 10_000, 50_000, 100_000)
SAMPLE_SEEDS = 5
DEFAULT_MAX_POINTS = 4000
DEFAULT_MAX_ROWS = 100_000
MIXING_K = 20
OVERLAP_K = 10
PLOT_NAMES = {
    "spectrum": "spectrum.png",
    "cosine_kde": "cosine_kde.png",
    "pca": "pca.png",
    "sample_complexity": "gap_vs_n.png",
}


# --- method specs ---------------------------------------------------------------------------
def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"realign"`` or ``"realign:centroid_iters=4,eps=1e-6"`` → (method, options)."""
    name, _, rest = spec.partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"bad method option {item!r} in {spec!r}; expected key=value")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return name.strip(), options


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


# --- splitting ------------------------------------------------------------------------------
def split_rows(
    n_text: int, n_image: int, holdout: float, seed: int, split: str = "tail", pairs: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(text_fit, text_eval, image_fit, image_eval) row indices.

    ``split="tail"``: the last ``round(holdout·n)`` rows of each side are held out (the
    convention of ``revision demo``, which fits on the leading rows). ``split="random"``: a
    seeded shuffle. With ``pairs`` (``[m, 2]`` text/image rows) a random split holds out whole
    pairs first, so held-out pairs keep both members. ``holdout == 0``: everything is both.
    """
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    if split not in ("tail", "random"):
        raise ValueError(f"split must be 'tail' or 'random', got {split!r}")
    if holdout == 0.0:
        return np.arange(n_text), np.arange(n_text), np.arange(n_image), np.arange(n_image)
    rng = np.random.default_rng(seed)

    def one_side(n: int, forced: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n_eval = max(1, int(round(holdout * n)))
        if n - n_eval < 1:
            raise ValueError(f"holdout {holdout} leaves no rows to fit on ({n} rows)")
        if split == "tail":
            return np.arange(n - n_eval), np.arange(n - n_eval, n)
        chosen = np.zeros(n, dtype=bool)
        chosen[forced[: n_eval]] = True
        rest = np.flatnonzero(~chosen)
        need = n_eval - int(chosen.sum())
        if need > 0:
            chosen[rng.choice(rest, size=need, replace=False)] = True
        return np.flatnonzero(~chosen), np.flatnonzero(chosen)

    forced_t = forced_i = np.zeros(0, dtype=np.int64)
    if pairs is not None and split == "random" and len(pairs):
        order = rng.permutation(len(pairs))
        shuffled_t, shuffled_i = pairs[order, 0], pairs[order, 1]
        # first occurrence order: the first pairs of the shuffle are held out as wholes
        forced_t = shuffled_t[np.sort(np.unique(shuffled_t, return_index=True)[1])]
        forced_i = shuffled_i[np.sort(np.unique(shuffled_i, return_index=True)[1])]
    tf, te = one_side(n_text, forced_t)
    if pairs is not None and split == "random" and n_text == n_image and np.array_equal(pairs[:, 0], pairs[:, 1]):
        return tf, te, tf.copy(), te.copy()  # row-paired data: one split for both sides
    imf, ime = one_side(n_image, forced_i)
    return tf, te, imf, ime


def _resolve_pairs(pairs: Any, n_text: int, n_image: int) -> np.ndarray | None:
    if pairs is None or pairs is False:
        return None
    if isinstance(pairs, str) or pairs is True:
        if pairs not in (True, "rows"):
            raise ValueError(f"pairs must be None, 'rows' or an int array [n, 2], got {pairs!r}")
        if n_text != n_image:
            raise BadInputError(f"pairs='rows' needs as many text rows as image rows ({n_text} vs {n_image})")
        rows = np.arange(n_text)
        return np.stack([rows, rows], 1)
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise BadInputError(f"pairs must be an integer array [n, 2] of (text_row, image_row), got {arr.dtype} {arr.shape}")
    for col, n, side in ((0, n_text, "text"), (1, n_image, "image")):
        bad = np.flatnonzero((arr[:, col] < 0) | (arr[:, col] >= n))
        if len(bad):
            raise BadInputError(f"pair {int(bad[0])} refers to {side} row {int(arr[bad[0], col])}, outside [0, {n})")
    return arr.astype(np.int64)


# --- applying operators ---------------------------------------------------------------------
def _apply(operator, text: np.ndarray, image: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(op(text), op.align_image(image)) in training mode, float64, with a seeded RNG."""
    from revision_plugin.align.base import train_mode

    with ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        torch.manual_seed(seed)
        stack.enter_context(train_mode(operator))
        t = operator(torch.from_numpy(np.ascontiguousarray(text, dtype=np.float64))).numpy()
        i = operator.align_image(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))).numpy()
    return t, i


# --- the report -----------------------------------------------------------------------------
def _spectrum_entry(x: np.ndarray, target_trace: float) -> dict[str, Any]:
    s = gm.spectrum_summary(x, target_trace=target_trace, normalize=False)
    s["eigenvalues"] = [float(v) for v in s["eigenvalues"]]
    return s


def _measure(
    text_out: np.ndarray,
    image_out: np.ndarray,
    raw_text: np.ndarray,
    raw_neighbours: np.ndarray,
    image_trace: float,
    seed: int,
    max_points: int,
    cosine_pairs: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Numbers for one operator (JSON part) and the curves for the plots."""
    cos = gm.cosine_js(text_out, image_out, num_pairs=cosine_pairs, seed=seed)
    text_spec = _spectrum_entry(text_out, image_trace)
    image_spec = gm.spectrum_summary(image_out, normalize=False)
    entry: dict[str, Any] = {
        "gap": gm.modality_gap(text_out, image_out, normalize=False),
        "gap_sampling_floor": gm.gap_sampling_floor(text_out, image_out, normalize=False),
        "text_spectrum": text_spec,
        "image_spectrum": {k: image_spec[k] for k in ("trace", "alpha", "alpha_fit_r2", "effective_rank")},
        "cosine": {k: cos[k] for k in ("js", "mean_cosine_text", "mean_cosine_image", "num_pairs")},
        "mixing": gm.knn_mixing_rate(text_out, image_out, k=MIXING_K, max_points=max_points, seed=seed),
        "knn_overlap": gm.knn_overlap(raw_text, text_out, k=OVERLAP_K, max_points=max_points, seed=seed,
                                      before_neighbours=raw_neighbours),
        "mmd": gm.mmd_rbf(text_out, image_out, max_points=min(max_points, 2000), seed=seed),
    }
    curves = {"eigenvalues": np.asarray(text_spec["eigenvalues"]), "grid": cos["grid"],
              "density_text": cos["density_text"], "density_image": cos["density_image"]}
    return entry, curves


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
    pair_arr = _resolve_pairs(pairs, len(text_all), len(image_all))

    # optional row cap (seeded); pairs are remapped to the kept rows
    kept_t = gm.subsample_rows(len(text_all), max_rows, seed)
    kept_i = gm.subsample_rows(len(image_all), max_rows, seed + 1)
    if pair_arr is not None and (len(kept_t) < len(text_all) or len(kept_i) < len(image_all)):
        if len(text_all) == len(image_all) and np.array_equal(pair_arr[:, 0], pair_arr[:, 1]):
            kept_i = kept_t
        pair_arr = _remap_pairs(pair_arr, kept_t, kept_i)
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
        "settings": {
            "max_points": int(max_points),
            "mixing_k": MIXING_K,
            "overlap_k": OVERLAP_K,
            "cosine_pairs": int(cosine_pairs),
            "kde_grid": gm.KDE_GRID,
            "mmd_max_points": int(min(max_points, 2000)),
            "operator_mode": "train",
            "energy": float(energy),
            "temperature": float(temperature),
        },
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
    raw_entry, curves[RAW] = _measure(text_eval, image_eval, text_eval, raw_neighbours, image_trace, seed,
                                      max_points, cosine_pairs)
    raw_entry.update({"method": None, "options": {}, "source": "unaligned unit-normalised embeddings",
                      "gap_fit_split": gm.modality_gap(text_fit, image_fit) if holdout else None})
    report["operators"][RAW] = raw_entry
    outputs[RAW] = (text_eval.astype(np.float64), image_eval.astype(np.float64))
    for label, (op, source, _refit) in variants.items():
        t_out, i_out = _apply(op, text_eval, image_eval, seed)
        entry, curves[label] = _measure(t_out, i_out, text_eval, raw_neighbours, image_trace, seed, max_points,
                                        cosine_pairs)
        gap_fit = None
        if holdout:
            tf_out, if_out = _apply(op, text_fit, image_fit, seed + 1)
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
        report["frame"] = _frame_section(pair_arr, te, ime, text_all, image_all, variants, report, seed,
                                         max_points, energy, temperature)

    if sample_complexity:
        chosen = variants
        if not isinstance(sample_complexity, bool):
            wanted = list(sample_complexity)
            unknown = sorted(set(wanted) - set(variants))
            if unknown:
                raise ValueError(f"sample_complexity: unknown operator labels {unknown}; known: {sorted(variants)}")
            chosen = {k: variants[k] for k in wanted}
        report["sample_complexity"] = _sample_complexity(
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


def _remap_pairs(pairs: np.ndarray, kept_t: np.ndarray, kept_i: np.ndarray) -> np.ndarray:
    pos_t = np.full(int(kept_t.max(initial=0)) + 1, -1)
    pos_t[kept_t] = np.arange(len(kept_t))
    pos_i = np.full(int(kept_i.max(initial=0)) + 1, -1)
    pos_i[kept_i] = np.arange(len(kept_i))
    t = np.where(pairs[:, 0] < len(pos_t), pos_t[np.minimum(pairs[:, 0], len(pos_t) - 1)], -1)
    i = np.where(pairs[:, 1] < len(pos_i), pos_i[np.minimum(pairs[:, 1], len(pos_i) - 1)], -1)
    keep = (t >= 0) & (i >= 0)
    return np.stack([t[keep], i[keep]], 1)


def _frame_section(pairs, te, ime, text_all, image_all, variants, report, seed, max_points, energy, temperature):
    in_eval_t = np.zeros(len(text_all), dtype=bool)
    in_eval_t[te] = True
    in_eval_i = np.zeros(len(image_all), dtype=bool)
    in_eval_i[ime] = True
    held = pairs[in_eval_t[pairs[:, 0]] & in_eval_i[pairs[:, 1]]]
    section: dict[str, Any] = {"pairs_total": int(len(pairs)), "pairs_held_out": int(len(held))}
    if len(held) < 20:
        section["skipped"] = f"only {len(held)} held-out pairs (need ≥ 20)"
        return section
    y, x = text_all[held[:, 0]].astype(np.float64), image_all[held[:, 1]].astype(np.float64)
    ref = gframe.build_frame(x, y, energy)
    raw = gframe.frame_analysis(x, y, frame=ref, max_points=max_points, seed=seed, temperature=temperature)
    raw["energy"] = float(energy)
    section["raw"] = raw
    section["reference_eigenvalues"] = [float(v) for v in ref.eigenvalues]
    per_op = {}
    keys = ("beta_norm", "gamma_norm", "mean_gap_norm", "trace_u", "trace_v", "kappa_u", "kappa_v_sample",
            "kappa_v_tyler", "gamma_principal_angle_deg", "coupling_norm", "coupling_r2")
    for label, (op, _, _) in variants.items():
        t_out, i_out = _apply(op, y, x, seed)
        stats = gframe.frame_analysis(i_out, t_out, frame=ref, max_points=max_points, seed=seed, gradients=False)
        per_op[label] = {k: stats[k] for k in keys}
        report["operators"][label]["frame"] = per_op[label]
    report["operators"][RAW]["frame"] = {k: raw[k] for k in keys}
    return section


def _sample_complexity(variants, text_fit, image_fit, text_eval, image_eval, sizes, seeds, seed, holdout, encoder_id):
    from revision_plugin.align import fit_operator

    if holdout == 0.0:
        return {"skipped": "needs a held-out split (holdout > 0)"}
    limit = min(len(text_fit), len(image_fit))
    requested = list(sizes)
    sizes = sorted({int(s) for s in sizes if 2 <= int(s) <= limit})
    if sizes and limit > sizes[-1] and any(int(s) > limit for s in requested):
        sizes.append(limit)  # the whole fit split as the last point
    if not sizes:
        return {"skipped": f"fit split too small ({limit} rows) for the requested sizes"}
    result: dict[str, Any] = {"sizes": sizes, "seeds": int(seeds), "measured_on": "held-out split",
                              "operator_mode": "train", "methods": {}}
    for label, (_op, _, refit) in variants.items():
        if refit["method"] == "identity":
            continue
        gaps = np.zeros((len(sizes), seeds))
        for a, n in enumerate(sizes):
            for s in range(seeds):
                rng = np.random.default_rng([seed, a, s])
                ti = rng.choice(len(text_fit), size=n, replace=False)
                ii = rng.choice(len(image_fit), size=n, replace=False)
                sub = fit_operator(refit["method"], text_fit[ti], image_fit[ii], encoder_id=encoder_id, **refit["options"])
                t_out, i_out = _apply(sub, text_eval, image_eval, seed + s)
                gaps[a, s] = gm.modality_gap(t_out, i_out, normalize=False)
        result["methods"][label] = {"mean": gaps.mean(1).tolist(), "std": gaps.std(1, ddof=1).tolist() if seeds > 1
                                    else [0.0] * len(sizes), "gaps": gaps.tolist()}
    return result


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


# --- plots ----------------------------------------------------------------------------------
def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def write_plots(report: dict, curves: dict, outputs: dict, out: Path, seed: int = 0) -> dict[str, str]:
    """The paper's Fig. 5a (spectrum), 5b (cosine KDE), 6 (PCA) and 7 (gap vs N) as PNGs."""
    written = {}
    labels = list(report["operators"])

    fig = _figure(7, 5)
    ax = fig.add_subplot()
    img = np.asarray(gm.spectrum(outputs[RAW][1]))
    k = np.arange(1, len(img) + 1)
    ax.loglog(k, np.clip(img, 1e-300, None), color="black", lw=2.5,
              label=f"image (α={report['image_reference']['alpha']:.2f})")
    for label in labels:
        lam = curves[label]["eigenvalues"]
        alpha = report["operators"][label]["text_spectrum"]["alpha"]
        ax.loglog(k, np.clip(lam, 1e-300, None), lw=1.2, label=f"text: {label} (α={alpha:.2f})")
    ax.set_xlabel("eigenvalue index k")
    ax.set_ylabel("eigenvalue (trace normalised to image)")
    ax.set_title("Covariance spectrum (paper Fig. 5a)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / PLOT_NAMES["spectrum"])
    written["spectrum"] = PLOT_NAMES["spectrum"]

    fig = _figure(7, 5)
    ax = fig.add_subplot()
    grid = curves[RAW]["grid"]
    ax.plot(grid, curves[RAW]["density_image"], color="black", lw=2.5, label="image (raw)")
    for label in labels:
        js = report["operators"][label]["cosine"]["js"]
        (line,) = ax.plot(grid, curves[label]["density_text"], lw=1.2, label=f"text: {label} (JS={js:.4f})")
        raw_img = outputs[RAW][1]
        if label != RAW and not np.allclose(outputs[label][1], raw_img, atol=1e-6):  # e.g. C3 centres images
            ax.plot(grid, curves[label]["density_image"], lw=1.2, ls="--", color=line.get_color(),
                    label=f"image side of {label}")
    ax.set_xlabel("pairwise cosine similarity")
    ax.set_ylabel("density")
    ax.set_title("Angular topology (paper Fig. 5b); JS vs that operator's image side")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / PLOT_NAMES["cosine_kde"])
    written["cosine_kde"] = PLOT_NAMES["cosine_kde"]

    cols = min(4, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig = _figure(3.2 * cols, 3.0 * rows)
    per_side = 1000
    for idx, label in enumerate(labels):
        t_out, i_out = outputs[label]
        t = gm.unit_rows(t_out)[gm.subsample_rows(len(t_out), per_side, seed)]
        i = gm.unit_rows(i_out)[gm.subsample_rows(len(i_out), per_side, seed + 1)]
        pooled = np.concatenate([t, i])
        centred = pooled - pooled.mean(0)
        _, vecs = np.linalg.eigh(centred.T @ centred)
        xy = centred @ vecs[:, [-1, -2]]
        ax = fig.add_subplot(rows, cols, idx + 1)
        ax.scatter(xy[len(t):, 0], xy[len(t):, 1], s=2, alpha=0.4, color="tab:blue", label="image")
        ax.scatter(xy[: len(t), 0], xy[: len(t), 1], s=2, alpha=0.4, color="tab:red", label="text")
        mix = report["operators"][label]["mixing"]["rate"]
        ax.set_title(f"{label}\nmixing@20 = {100 * mix:.2f}%", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        if idx == 0:
            ax.legend(fontsize=7, markerscale=4)
    fig.suptitle("PCA of image vs (aligned) text (paper Fig. 6)")
    fig.tight_layout()
    fig.savefig(out / PLOT_NAMES["pca"])
    written["pca"] = PLOT_NAMES["pca"]

    sc = report.get("sample_complexity") or {}
    if sc.get("methods"):
        fig = _figure(7, 5)
        ax = fig.add_subplot()
        sizes = np.asarray(sc["sizes"])
        for label, vals in sc["methods"].items():
            mean, std = np.asarray(vals["mean"]), np.asarray(vals["std"])
            ax.errorbar(sizes, mean, yerr=std, marker="o", ms=3, capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("fit sample size N (per modality)")
        ax.set_ylabel("held-out modality gap")
        ax.set_title(f"Gap vs N, mean ± std over {sc['seeds']} seeds (paper Fig. 7)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / PLOT_NAMES["sample_complexity"])
        written["sample_complexity"] = PLOT_NAMES["sample_complexity"]
    return written


# --- terminal table -------------------------------------------------------------------------
def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(report: dict) -> str:
    """Compact per-operator table (gap, α, effective rank, JS, mixing, kNN overlap, MMD²)."""
    data = report["data"]
    where = "in-sample" if data.get("in_sample") else f"held-out {data['eval_rows']['text']}+{data['eval_rows']['image']} rows"
    ref = report["image_reference"]
    lines = [
        (f"geometry report ({where}; operators in training mode; image α={ref['alpha']:.2f}, "
         f"eff. rank={ref['effective_rank']:.1f})"),
    ]
    header = (f"{'operator':<26} {'gap':>9} {'floor':>9} {'gap(fit)':>9} {'α text':>7} {'eff.rank':>8} {'JS':>8} "
              f"{'mix@20':>7} {'kNN@10':>7} {'MMD²':>9}")
    lines += [header, "-" * len(header)]
    legend = ("gap: held-out centroid distance; floor: the gap two samples of one population would show "
              "at this size; gap(fit): on the fit split")
    for label, e in report["operators"].items():
        lines.append(
            f"{label[:26]:<26} {_fmt(e['gap'], '9.2e')} {_fmt(e.get('gap_sampling_floor'), '9.2e')} "
            f"{_fmt(e.get('gap_fit_split'), '9.2e')} "
            f"{_fmt(e['text_spectrum']['alpha'], '7.2f')} {_fmt(e['text_spectrum']['effective_rank'], '8.1f')} "
            f"{_fmt(e['cosine']['js'], '8.4f')} {_fmt(100 * e['mixing']['rate'], '6.2f')}% "
            f"{_fmt(100 * e['knn_overlap']['overlap'], '6.1f')}% {_fmt(e['mmd']['mmd2'], '9.2e')}"
        )
    lines.append(legend if not data.get("in_sample") else "gap: centroid distance; floor: sampling level at this size")
    frame = report.get("frame") or {}
    if "raw" in frame:
        f = frame["raw"]
        lines.append("")
        lines.append(
            f"frame (held-out pairs: {frame['pairs_held_out']}; r={f['rank_u']} of {f['rank_u'] + f['dim_v']}): "
            f"‖β‖={f['beta_norm']:.3g} ‖γ‖={f['gamma_norm']:.3g} κ(Σ_U)={_fmt(f['kappa_u'], '.3g')} "
            f"κ(Σ_V, Tyler)={_fmt(f['kappa_v_tyler'], '.3g')} ∠(γ, Σ_V top)={_fmt(f['gamma_principal_angle_deg'], '.1f')}° "
            f"‖L‖={f['coupling_norm']:.3g} R²={f['coupling_r2']:.3f}"
        )
        if "leakage" in f:
            lines.append(
                f"  leakage ‖P_V g‖/‖g‖ = {f['leakage']['mean']:.3g} (InfoNCE probe gradients, τ={f['leakage']['temperature']}); "
                f"sin θ(U_half1, U_half2) = {f['sin_theta_split_half']:.3g} (largest angle), "
                f"{f['sin_theta_split_half_rms']:.3g} (RMS)"
            )
    elif frame.get("skipped"):
        lines.append(f"\nframe analysis skipped: {frame['skipped']}")
    sc = report.get("sample_complexity") or {}
    if sc.get("methods"):
        lines.append("")
        lines.append(f"held-out gap vs fit size N (mean over {sc['seeds']} seeds):")
        lines.append(f"{'operator':<26} " + " ".join(f"{n:>9d}" for n in sc["sizes"]))
        for label, vals in sc["methods"].items():
            lines.append(f"{label[:26]:<26} " + " ".join(f"{m:9.2e}" for m in vals["mean"]))
    return "\n".join(lines)


def load_report(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_NAME
    return json.loads(path.read_text())

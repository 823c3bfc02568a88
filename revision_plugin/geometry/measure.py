"""The measurements of a geometry report: one operator's numbers on held-out rows
(:func:`measure`), the sec. 3 frame analysis on held-out pairs (:func:`frame_section`) and the
Fig. 7 gap-vs-N experiment (:func:`sample_complexity`). Operators run in training mode."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Any

import numpy as np
import torch

from revision_plugin.geometry import frame as gframe
from revision_plugin.geometry import metrics as gm

RAW = "raw"
MIXING_K = 20
OVERLAP_K = 10
MMD_MAX_POINTS = 2000


def apply_operator(operator, text: np.ndarray, image: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(op(text), op.align_image(image)) in training mode, float64, with a seeded RNG."""
    from revision_plugin.align.base import train_mode

    with ExitStack() as stack:
        stack.enter_context(torch.random.fork_rng(devices=[]))
        torch.manual_seed(seed)
        stack.enter_context(train_mode(operator))
        t = operator(torch.from_numpy(np.ascontiguousarray(text, dtype=np.float64))).numpy()
        i = operator.align_image(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64))).numpy()
    return t, i


def _spectrum_entry(x: np.ndarray, target_trace: float) -> dict[str, Any]:
    s = gm.spectrum_summary(x, target_trace=target_trace, normalize=False)
    s["eigenvalues"] = [float(v) for v in s["eigenvalues"]]
    return s


def measure(
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
        "mmd": gm.mmd_rbf(text_out, image_out, max_points=min(max_points, MMD_MAX_POINTS), seed=seed),
    }
    curves = {"eigenvalues": np.asarray(text_spec["eigenvalues"]), "grid": cos["grid"],
              "density_text": cos["density_text"], "density_image": cos["density_image"]}
    return entry, curves


def frame_section(pairs, te, ime, text_all, image_all, variants, report, seed, max_points, energy, temperature):
    """The frame analysis of held-out pairs, raw and per operator (each operator's entry gets its ``frame``)."""
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
        t_out, i_out = apply_operator(op, y, x, seed)
        stats = gframe.frame_analysis(i_out, t_out, frame=ref, max_points=max_points, seed=seed, gradients=False)
        per_op[label] = {k: stats[k] for k in keys}
        report["operators"][label]["frame"] = per_op[label]
    report["operators"][RAW]["frame"] = {k: raw[k] for k in keys}
    return section


def measure_sample_complexity(variants, text_fit, image_fit, text_eval, image_eval, sizes, seeds, seed, holdout, encoder_id):
    """Held-out gap of each method refitted on subsets of the fit split (paper Fig. 7)."""
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
                t_out, i_out = apply_operator(sub, text_eval, image_eval, seed + s)
                gaps[a, s] = gm.modality_gap(t_out, i_out, normalize=False)
        result["methods"][label] = {"mean": gaps.mean(1).tolist(), "std": gaps.std(1, ddof=1).tolist() if seeds > 1
                                    else [0.0] * len(sizes), "gaps": gaps.tolist()}
    return result

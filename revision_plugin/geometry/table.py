"""The geometry report as a terminal table (:func:`format_table`)."""

from __future__ import annotations

from typing import Any


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

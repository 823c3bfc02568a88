"""The report's plots, one function per paper figure: Fig. 5a (spectrum), 5b (cosine KDE),
6 (PCA) and 7 (gap vs N), written as PNGs by :func:`write_plots`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from revision_plugin.geometry import metrics as gm
from revision_plugin.geometry.measure import RAW

PLOT_NAMES = {
    "spectrum": "spectrum.png",
    "cosine_kde": "cosine_kde.png",
    "pca": "pca.png",
    "sample_complexity": "gap_vs_n.png",
}
PCA_POINTS_PER_SIDE = 1000


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _finish(fig, ax, title: str, out: Path, name: str) -> str:
    """Title, legend, layout, ``out/PLOT_NAMES[name]``; returns the file name."""
    if ax is not None:
        ax.set_title(title)
        ax.legend(fontsize=7)
    else:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / PLOT_NAMES[name])
    return PLOT_NAMES[name]


def plot_spectrum(report: dict, curves: dict, outputs: dict, out: Path) -> str:
    """Fig. 5a: eigenvalue spectrum of the image side and of each operator's text side."""
    fig = _figure(7, 5)
    ax = fig.add_subplot()
    img = np.asarray(gm.spectrum(outputs[RAW][1]))
    k = np.arange(1, len(img) + 1)
    ax.loglog(k, np.clip(img, 1e-300, None), color="black", lw=2.5,
              label=f"image (α={report['image_reference']['alpha']:.2f})")
    for label in report["operators"]:
        lam = curves[label]["eigenvalues"]
        alpha = report["operators"][label]["text_spectrum"]["alpha"]
        ax.loglog(k, np.clip(lam, 1e-300, None), lw=1.2, label=f"text: {label} (α={alpha:.2f})")
    ax.set_xlabel("eigenvalue index k")
    ax.set_ylabel("eigenvalue (trace normalised to image)")
    return _finish(fig, ax, "Covariance spectrum (paper Fig. 5a)", out, "spectrum")


def plot_cosine_kde(report: dict, curves: dict, outputs: dict, out: Path) -> str:
    """Fig. 5b: density of pairwise cosines, image vs each operator's text side."""
    fig = _figure(7, 5)
    ax = fig.add_subplot()
    grid = curves[RAW]["grid"]
    ax.plot(grid, curves[RAW]["density_image"], color="black", lw=2.5, label="image (raw)")
    raw_img = outputs[RAW][1]
    for label in report["operators"]:
        js = report["operators"][label]["cosine"]["js"]
        (line,) = ax.plot(grid, curves[label]["density_text"], lw=1.2, label=f"text: {label} (JS={js:.4f})")
        if label != RAW and not np.allclose(outputs[label][1], raw_img, atol=1e-6):  # e.g. C3 centres images
            ax.plot(grid, curves[label]["density_image"], lw=1.2, ls="--", color=line.get_color(),
                    label=f"image side of {label}")
    ax.set_xlabel("pairwise cosine similarity")
    ax.set_ylabel("density")
    return _finish(fig, ax, "Angular topology (paper Fig. 5b); JS vs that operator's image side", out, "cosine_kde")


def plot_pca(report: dict, outputs: dict, out: Path, seed: int = 0) -> str:
    """Fig. 6: the pooled top-2 PCA of image vs (aligned) text, one panel per operator."""
    labels = list(report["operators"])
    cols = min(4, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig = _figure(3.2 * cols, 3.0 * rows)
    for idx, label in enumerate(labels):
        t_out, i_out = outputs[label]
        t = gm.unit_rows(t_out)[gm.subsample_rows(len(t_out), PCA_POINTS_PER_SIDE, seed)]
        i = gm.unit_rows(i_out)[gm.subsample_rows(len(i_out), PCA_POINTS_PER_SIDE, seed + 1)]
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
    return _finish(fig, None, "PCA of image vs (aligned) text (paper Fig. 6)", out, "pca")


def plot_sample_complexity(report: dict, out: Path) -> str | None:
    """Fig. 7: held-out gap vs fit size N (mean ± std over seeds); ``None`` when not measured."""
    sc = report.get("sample_complexity") or {}
    if not sc.get("methods"):
        return None
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
    return _finish(fig, ax, f"Gap vs N, mean ± std over {sc['seeds']} seeds (paper Fig. 7)", out, "sample_complexity")


def write_plots(report: dict, curves: dict, outputs: dict, out: Path, seed: int = 0) -> dict[str, str]:
    """The paper's Fig. 5a (spectrum), 5b (cosine KDE), 6 (PCA) and 7 (gap vs N) as PNGs."""
    written = {
        "spectrum": plot_spectrum(report, curves, outputs, out),
        "cosine_kde": plot_cosine_kde(report, curves, outputs, out),
        "pca": plot_pca(report, outputs, out, seed),
    }
    gap_vs_n = plot_sample_complexity(report, out)
    if gap_vs_n is not None:
        written["sample_complexity"] = gap_vs_n
    return written

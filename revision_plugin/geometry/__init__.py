"""Geometry toolkit: measure the modality gap the way the paper does (sec. 3, 6, app. B–G).

``metrics``: gap, spectrum and power-law α, effective rank, cosine KDE + JS, kNN mixing and
overlap, MMD. ``frame``: the fixed U/V frame, PMB/COB, residual κ, Tyler's estimator,
leakage, coupling, phantom drift. ``report``: ``build_report`` (report.json + PNGs) and
``format_table``, assembled from ``splits`` (fit / held-out rows, pairs), ``measure`` (the
numbers per operator), ``plots`` (one function per paper figure) and ``table``.
``commands_report`` / ``commands_demo``: ``revision report`` / ``revision demo --geometry-only``.
Needs the ``geometry`` extra (scipy, matplotlib).
"""

from revision_plugin.geometry.metrics import (
    cosine_js,
    effective_rank,
    knn_mixing_rate,
    knn_overlap,
    mmd_rbf,
    modality_gap,
    power_law_alpha,
    power_law_fit,
    spectrum,
)

__all__ = [
    "build_report",
    "cosine_js",
    "effective_rank",
    "format_table",
    "knn_mixing_rate",
    "knn_overlap",
    "mmd_rbf",
    "modality_gap",
    "power_law_alpha",
    "power_law_fit",
    "spectrum",
]


def __getattr__(name):  # lazy: report pulls in the operators and matplotlib
    if name in ("build_report", "format_table"):
        from revision_plugin.geometry import report

        return getattr(report, name)
    raise AttributeError(name)

"""Which rows a geometry report fits on and which it measures on: fit / held-out splits, and
text-image pairs (validated, and remapped when rows are subsampled)."""

from __future__ import annotations

from typing import Any

import numpy as np

from revision_plugin.errors import BadInputError


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


def resolve_pairs(pairs: Any, n_text: int, n_image: int) -> np.ndarray | None:
    """``pairs`` (``None``, ``"rows"``/``True`` or an int array ``[m, 2]``) as a checked ``[m, 2]`` array, or ``None``."""
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


def remap_pairs(pairs: np.ndarray, kept_t: np.ndarray, kept_i: np.ndarray) -> np.ndarray:
    """``pairs`` in the row numbers of the kept rows (pairs that lost a member are dropped)."""
    pos_t = np.full(int(kept_t.max(initial=0)) + 1, -1)
    pos_t[kept_t] = np.arange(len(kept_t))
    pos_i = np.full(int(kept_i.max(initial=0)) + 1, -1)
    pos_i[kept_i] = np.arange(len(kept_i))
    t = np.where(pairs[:, 0] < len(pos_t), pos_t[np.minimum(pairs[:, 0], len(pos_t) - 1)], -1)
    i = np.where(pairs[:, 1] < len(pos_i), pos_i[np.minimum(pairs[:, 1], len(pos_i) - 1)], -1)
    keep = (t >= 0) & (i >= 0)
    return np.stack([t[keep], i[keep]], 1)

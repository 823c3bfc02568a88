"""Straightforward float64 numpy re-implementations of the paper's operators, for tests.

Written independently of revision_plugin.align (dense arrays, np.cov, scipy.linalg.sqrtm),
directly from eqs. 18–24 (ReAlign) and appendix F (blockwise).
"""

import numpy as np
import scipy.linalg


def normalize(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def realign(text, image, centroid_iters=1, eps=1e-8):
    y, x = normalize(text), normalize(image)
    mu_y, mu_x = y.mean(0), x.mean(0)
    t_y = np.mean(np.sum((y - mu_y) ** 2, axis=1))
    t_x = np.mean(np.sum((x - mu_x) ** 2, axis=1))
    s = np.sqrt(t_x / (t_y + eps))
    e = normalize(mu_x + s * (y - mu_y))
    for _ in range(centroid_iters):
        e = normalize(e - e.mean(0) + mu_x)
    return e


def blockwise(text, image, energy=0.9, shrinkage=0.01):
    a, b = normalize(text), normalize(image)
    mu_a, mu_b = a.mean(0), b.mean(0)
    total = np.cov(a.T, bias=True) + np.cov(b.T, bias=True)
    eigenvalues, eigenvectors = np.linalg.eigh(total)
    order = np.argsort(eigenvalues)[::-1]
    eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
    cumulative = np.cumsum(eigenvalues) / eigenvalues.sum()
    r = min(int(np.argmax(cumulative >= energy)) + 1, len(eigenvalues) - 1)
    anchored = normalize(a - mu_a + mu_b)
    cov_a, cov_b = np.cov(anchored.T, bias=True), np.cov(b.T, bias=True)
    mapped = np.zeros_like(anchored)
    for q in (eigenvectors[:, :r], eigenvectors[:, r:]):
        k = q.shape[1]
        s_a, s_b = q.T @ cov_a @ q, q.T @ cov_b @ q
        s_a = (1 - shrinkage) * s_a + shrinkage * np.trace(s_a) / k * np.eye(k)
        s_b = (1 - shrinkage) * s_b + shrinkage * np.trace(s_b) / k * np.eye(k)
        t = np.real(scipy.linalg.sqrtm(s_b)) @ np.linalg.inv(np.real(scipy.linalg.sqrtm(s_a)))
        mapped += (anchored @ q) @ t.T @ q.T
    e_hat = normalize(mapped)
    return normalize(e_hat - e_hat.mean(0) + mu_b), r

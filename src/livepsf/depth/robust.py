"""Robust least squares (Huber, then Tukey bisquare) and the coefficient of determination."""

from __future__ import annotations

import numpy as np

from livepsf.errors import InputError


def robust_line_fit(design: np.ndarray, target: np.ndarray, *, huber_k: float = 1.345,
                    bisquare_c: float = 4.685, iterations: int = 50,
                    sample_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Robust least squares ``target ~ design @ coef`` by iteratively reweighting, in two stages.

    First Huber weights (points beyond ``huber_k`` scales get ``huber_k * scale / |r|``, the scale
    re-estimated each iteration as ``1.4826 * MAD``), which converges from the least-squares start;
    then Tukey's bisquare (``(1 - (r / (c * scale))²)²``, zero beyond ``bisquare_c`` scales) with the
    Huber stage's scale, so gross outliers (a window whose astigmatism sign is wrong gives twice the
    depth with the wrong sign) get no weight at all instead of a pull that grows with their leverage.
    ``sample_weight`` (optional, ``(n,)`` non-negative) multiplies the robust weights. Returns
    ``(coef, weights)`` (the robust weights).
    """
    design = np.asarray(design, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n_coef = design.shape[1]
    if design.shape[0] < n_coef + 1:
        raise InputError(f"robust line fit needs more than {n_coef} points, got {design.shape[0]}")
    tiny = 1e-12 * (1.0 + np.abs(target).max())
    prior = np.ones(len(target)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)

    def solve(w: np.ndarray) -> np.ndarray:
        sw = np.sqrt(w * prior)
        return np.linalg.lstsq(design * sw[:, None], target * sw, rcond=None)[0]

    weights = np.ones(len(target))
    coef = solve(weights)
    scale = 0.0
    for _ in range(iterations):  # Huber stage
        resid = target - design @ coef
        scale = 1.4826 * np.median(np.abs(resid - np.median(resid)))
        if scale <= tiny:
            return coef, weights
        a = np.abs(resid) / (huber_k * scale)
        new_weights = np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-12))
        new_coef = solve(new_weights)
        converged = np.allclose(new_coef, coef, rtol=1e-10, atol=1e-12)
        coef, weights = new_coef, new_weights
        if converged:
            break
    for _ in range(iterations):  # bisquare stage, scale fixed
        u = (target - design @ coef) / (bisquare_c * scale)
        new_weights = np.where(np.abs(u) < 1.0, (1.0 - u**2) ** 2, 0.0)
        if np.count_nonzero(new_weights) < n_coef + 1:
            break
        new_coef = solve(new_weights)
        converged = np.allclose(new_coef, coef, rtol=1e-10, atol=1e-12)
        coef, weights = new_coef, new_weights
        if converged:
            break
    return coef, weights


def r_squared(truth: np.ndarray, pred: np.ndarray) -> float:
    truth = np.asarray(truth, dtype=np.float64)
    ss_tot = float(np.sum((truth - truth.mean()) ** 2)) if len(truth) else 0.0
    if ss_tot <= 0:
        return float("nan")
    return 1.0 - float(np.sum((truth - pred) ** 2)) / ss_tot

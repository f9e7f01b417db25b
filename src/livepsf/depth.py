"""Depth from astigmatism: depth metrics, tilted-grid calibration and calibrated depth maps.

Paper Sections II-H and III-E. A weak cylindrical lens adds a fixed astigmatism ``A_L`` to every PSF.
Because PSF(d, A) == PSF(-d, -A), a network reporting the canonical form (focus >= 0) sees
``(|d|, +A_L)`` above focus and ``(|d|, -A_L)`` below it: the side of focus is in the sign of the
measured astigmatism along the lens direction. Three metrics turn a Z-3 PSF map into a number that
grows linearly with the distance to the focal plane:

``"signed"``
    ``focus * sign(<astig, u_L>)`` with ``u_L`` the lens astigmatism direction (a unit vector in the
    ``(astig_0, astig_45)`` plane). Equals the signed defocus ``d`` in waves when the network is right.
``"projected"``
    ``focus * clip(<astig, u_L> / s_L, -1, 1)`` with ``s_L`` the lens strength (waves) measured on the
    calibration frames: the same as ``"signed"`` away from focus, but near focus, where the sign cannot
    be seen (PSF(0, A) == PSF(0, -A)) and a network hedges towards zero astigmatism, it passes smoothly
    through zero instead of jumping between +focus and -focus.
``"eq14"``
    The paper's eq. 14, ``focus * (2 axis / pi - 1)``, with the axis measured from
    ``theta_L - pi/4`` (``theta_L`` the lens axis), so that a lens at 45° gives exactly the paper's
    formula and any other lens orientation works too. About ``-d / 2``.

**Texture gate.** Astigmatism can only be seen in a window whose texture has structure in at least two
directions: a window holding only parallel lines (most windows of a printed grid of 200 µm squares at
10×) shows the blur across the lines and nothing along them, so its astigmatism, and hence the side of
focus, is not determined by the image and a network's answer there follows the line orientation. When
the frames are at hand, windows whose structure-tensor coherence exceeds ``max_texture_coherence`` are
treated like invalid windows (excluded from the fit; their depth filled from their neighbours).

A calibration fits the metric against the known height of a tilted printed grid with a robust line
(classical calibration: metric = a * height + b, inverted to height = slope * metric + offset) and
keeps every metric's figures; the one with the smaller residual is used. :class:`Calibration` is a
pydantic model stored as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from livepsf.errors import InputError
from livepsf.mapping import PSFMap

__all__ = [
    "METRICS",
    "Calibration",
    "MetricFit",
    "TiltResidual",
    "TiltProfile",
    "calibrate_psf_maps",
    "calibrate_tilted_grid",
    "depth_metric",
    "depth_stats",
    "eq14_metric",
    "estimate_lens_strength",
    "estimate_lens_direction",
    "fit_metric_profiles",
    "plot_calibration",
    "profile_along_axis",
    "projected_metric",
    "reliable_windows",
    "robust_line_fit",
    "signed_metric",
    "window_coherence",
    "write_depth_outputs",
]

Metric = Literal["signed", "projected", "eq14"]
METRICS: tuple[str, ...] = ("signed", "projected", "eq14")
TiltAxis = Literal["x", "y"]
FORMAT = "livepsf-depth-calibration"
#: Below this R² of the depth fit a calibration carries a warning in :attr:`Calibration.notes`.
POOR_FIT_R2 = 0.9


# -- depth metrics ---------------------------------------------------------------------------------


def signed_metric(focus: np.ndarray, astig_0: np.ndarray, astig_45: np.ndarray,
                  lens_direction: Sequence[float]) -> np.ndarray:
    """Focus with the sign of the astigmatism's projection on the lens direction (waves).

    Parameters
    ----------
    focus, astig_0, astig_45
        Canonical Z-3 parameters (focus >= 0), any matching shapes, RMS waves.
    lens_direction
        ``(u_0, u_45)``: direction of the lens astigmatism in the ``(astig_0, astig_45)`` plane.

    Returns
    -------
    np.ndarray
        float32, about the signed defocus in waves (positive on the side where the measured
        astigmatism points along ``lens_direction``).
    """
    u0, u45 = _unit(lens_direction)
    projection = np.asarray(astig_0, dtype=np.float64) * u0 + np.asarray(astig_45, dtype=np.float64) * u45
    sign = np.where(projection >= 0, 1.0, -1.0)
    return (np.asarray(focus, dtype=np.float64) * sign).astype(np.float32)


def projected_metric(focus: np.ndarray, astig_0: np.ndarray, astig_45: np.ndarray,
                     lens_direction: Sequence[float], lens_strength_waves: float) -> np.ndarray:
    """Focus times the astigmatism's projection on the lens direction, relative to the lens strength.

    ``focus * clip(<astig, u_L> / lens_strength_waves, -1, 1)``: about the signed defocus (waves) where
    the lens astigmatism is clearly measured, tending smoothly to 0 where it is not.
    """
    if not (lens_strength_waves > 0 and math.isfinite(lens_strength_waves)):
        raise InputError(f"lens strength must be a positive number of waves, got {lens_strength_waves}")
    u0, u45 = _unit(lens_direction)
    projection = np.asarray(astig_0, dtype=np.float64) * u0 + np.asarray(astig_45, dtype=np.float64) * u45
    weight = np.clip(projection / lens_strength_waves, -1.0, 1.0)
    return (np.asarray(focus, dtype=np.float64) * weight).astype(np.float32)


def estimate_lens_strength(focus: np.ndarray, astig_0: np.ndarray, astig_45: np.ndarray,
                           lens_direction: Sequence[float], valid: np.ndarray | None = None) -> float:
    """Magnitude of the lens astigmatism (waves) along its direction, from the clearly defocused windows.

    The median ``|<astig, u_L>|`` over valid windows whose focus is above the median focus (near focus
    the measured astigmatism is ambiguous and shrinks).
    """
    u0, u45 = _unit(lens_direction)
    f = np.asarray(focus, dtype=np.float64).ravel()
    a0 = np.asarray(astig_0, dtype=np.float64).ravel()
    a45 = np.asarray(astig_45, dtype=np.float64).ravel()
    p = np.abs(a0 * u0 + a45 * u45)
    keep = np.isfinite(f) & np.isfinite(p)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool).ravel()
    if not keep.any():
        raise InputError("too few valid windows to measure the lens astigmatism")
    far = keep & (f >= np.median(f[keep]))
    strength = float(np.median(p[far]))
    if strength <= 1e-6:
        raise InputError("no astigmatism measured along the lens direction: is the cylindrical lens in?")
    return strength


def eq14_metric(focus: np.ndarray, astig_0: np.ndarray, astig_45: np.ndarray,
                lens_direction: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """The paper's eq. 14, ``focus * (2 axis / pi - 1)``, with the axis referred to the lens.

    The paper's formula assumes the lens astigmatism at 45° (``lens_direction = (0, 1)``, the default),
    where the axis is pi/4 on one side of focus and 3 pi/4 on the other. For another lens orientation
    ``theta_L`` the axis is shifted by ``pi/4 - theta_L`` first, which leaves the paper's case unchanged.
    The result is about ``-d / 2`` for a signed defocus ``d`` (waves).
    """
    u0, u45 = _unit(lens_direction)
    lens_axis = math.remainder(0.5 * math.atan2(u45, u0), math.pi) % math.pi
    a0 = np.asarray(astig_0, dtype=np.float64)
    a45 = np.asarray(astig_45, dtype=np.float64)
    axis = np.remainder(0.5 * np.arctan2(a45, a0), np.pi)
    shifted = np.remainder(axis - lens_axis + np.pi / 4, np.pi)
    return (np.asarray(focus, dtype=np.float64) * (2.0 * shifted / np.pi - 1.0)).astype(np.float32)


def depth_metric(pmap: PSFMap, metric: str, lens_direction: Sequence[float],
                 lens_strength_waves: float | None = None) -> np.ndarray:
    """A depth metric (:data:`METRICS`) on the grid of a PSF map, ``(gy, gx)`` float32.

    ``lens_strength_waves`` is needed by the ``"projected"`` metric only.
    """
    _require_astigmatic(pmap)
    args = (pmap.values("focus"), pmap.values("astig_0"), pmap.values("astig_45"), lens_direction)
    if metric == "signed":
        return signed_metric(*args)
    if metric == "projected":
        if lens_strength_waves is None:
            raise InputError("the projected depth metric needs the lens strength (waves)")
        return projected_metric(*args, lens_strength_waves)
    if metric == "eq14":
        return eq14_metric(*args)
    raise InputError(f"unknown depth metric {metric!r}; choose one of {', '.join(METRICS)}")


def estimate_lens_direction(astig_0: np.ndarray, astig_45: np.ndarray,
                            valid: np.ndarray | None = None) -> tuple[float, float]:
    """Direction of the lens astigmatism from measured (canonical) astigmatism vectors.

    The canonical astigmatism is ``+A_L`` on one side of focus and ``-A_L`` on the other, so the
    points cluster at two opposite spots: the direction is the principal axis of their uncentred
    second moment. Its sign is arbitrary here; :func:`calibrate_psf_maps` orients it so that the
    signed metric grows with height.
    """
    a0 = np.asarray(astig_0, dtype=np.float64).ravel()
    a45 = np.asarray(astig_45, dtype=np.float64).ravel()
    keep = np.isfinite(a0) & np.isfinite(a45)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool).ravel()
    if keep.sum() < 2:
        raise InputError("too few valid windows to estimate the lens astigmatism direction")
    pts = np.stack([a0[keep], a45[keep]], axis=1)
    moment = pts.T @ pts / len(pts)
    evals, evecs = np.linalg.eigh(moment)
    if evals[-1] <= 1e-12:
        raise InputError("no astigmatism measured: is the cylindrical lens in the light path?")
    u = evecs[:, -1]
    # Deterministic sign before orientation: largest component positive.
    if u[np.argmax(np.abs(u))] < 0:
        u = -u
    return float(u[0]), float(u[1])


# -- texture gate ----------------------------------------------------------------------------------

#: Default largest structure-tensor coherence of a window whose astigmatism is trusted (0: isotropic
#: texture, 1: parallel lines only).
MAX_TEXTURE_COHERENCE = 0.4


def window_coherence(frame: np.ndarray, pmap: PSFMap, smooth_px: float = 1.5) -> np.ndarray:
    """Structure-tensor coherence of the texture in each window of a PSF map, ``(gy, gx)`` float32.

    ``sqrt((Jxx - Jyy)² + 4 Jxy²) / (Jxx + Jyy)`` with ``J`` the gradient outer products summed over the
    window (after a Gaussian smoothing of ``smooth_px`` that keeps pixel noise from looking like texture).
    Near 0 for texture in every direction, near 1 for parallel lines. Windows are the mapper's: side
    ``pmap.window_px`` centred on ``pmap.centers_y/x``, clipped to the frame.
    """
    from scipy.ndimage import gaussian_filter

    frame = np.asarray(frame, dtype=np.float32)  # float32 halves the cost; the sums below are float64
    if frame.shape != tuple(pmap.frame_shape):
        raise InputError(f"frame of shape {frame.shape} does not match the PSF map's "
                         f"{tuple(pmap.frame_shape)}")
    smooth = gaussian_filter(frame, smooth_px) if smooth_px > 0 else frame
    gy, gx = np.gradient(smooth)
    half = (pmap.window_px - 1) / 2.0
    y0 = np.clip(np.round(np.asarray(pmap.centers_y) - half).astype(int), 0, frame.shape[0])
    x0 = np.clip(np.round(np.asarray(pmap.centers_x) - half).astype(int), 0, frame.shape[1])
    y1 = np.clip(y0 + pmap.window_px, 0, frame.shape[0])
    x1 = np.clip(x0 + pmap.window_px, 0, frame.shape[1])

    def window_sums(a: np.ndarray) -> np.ndarray:
        integral = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
        integral[1:, 1:] = a.cumsum(0, dtype=np.float64).cumsum(1)
        return (integral[np.ix_(y1, x1)] - integral[np.ix_(y0, x1)] - integral[np.ix_(y1, x0)]
                + integral[np.ix_(y0, x0)])

    jxx, jyy, jxy = window_sums(gx * gx), window_sums(gy * gy), window_sums(gx * gy)
    total = jxx + jyy
    coherence = np.sqrt((jxx - jyy) ** 2 + 4.0 * jxy**2) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, coherence, 0.0).astype(np.float32)


def reliable_windows(pmap: PSFMap, frame: np.ndarray | None = None,
                     max_coherence: float | None = MAX_TEXTURE_COHERENCE) -> np.ndarray:
    """``(gy, gx) bool``: windows whose depth can be trusted.

    Valid (not textureless) and, when the frame is given and ``max_coherence`` is set, with texture in
    more than one direction (:func:`window_coherence` at most ``max_coherence``).
    """
    ok = ~pmap.invalid_mask
    if frame is not None and max_coherence is not None:
        ok = ok & (window_coherence(frame, pmap) <= max_coherence)
    return ok


# -- robust line fitting ---------------------------------------------------------------------------


def robust_line_fit(design: np.ndarray, target: np.ndarray, *, huber_k: float = 1.345,
                    bisquare_c: float = 4.685, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Robust least squares ``target ~ design @ coef`` by iteratively reweighting, in two stages.

    First Huber weights (points beyond ``huber_k`` scales get ``huber_k * scale / |r|``, the scale
    re-estimated each iteration as ``1.4826 * MAD``), which converges from the least-squares start;
    then Tukey's bisquare (``(1 - (r / (c * scale))²)²``, zero beyond ``bisquare_c`` scales) with the
    Huber stage's scale, so gross outliers (a window whose astigmatism sign is wrong gives twice the
    depth with the wrong sign) get no weight at all instead of a pull that grows with their leverage.
    Returns ``(coef, weights)``.
    """
    design = np.asarray(design, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    n_coef = design.shape[1]
    if design.shape[0] < n_coef + 1:
        raise InputError(f"robust line fit needs more than {n_coef} points, got {design.shape[0]}")
    tiny = 1e-12 * (1.0 + np.abs(target).max())

    def solve(w: np.ndarray) -> np.ndarray:
        sw = np.sqrt(w)
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


# -- profiles and the fit --------------------------------------------------------------------------


@dataclasses.dataclass
class TiltProfile:
    """A metric map reduced to a profile along the tilt axis (one frame of the tilted grid).

    Attributes
    ----------
    tilt_deg
        Tilt of the grid; positive raises the surface towards higher indices along the tilt axis.
    position_px
        Window centres along the tilt axis, ``(n,)``.
    metric
        ``{metric name: (n,)}``: the median over valid windows across the other axis.
    n_valid
        ``(n,)`` number of valid windows behind each profile point (0: point unusable).
    in_focus_px
        Known in-focus position along the tilt axis, or ``None`` to estimate it.
    extent_px
        Size of the frame along the tilt axis (for the depth range of the relative error).
    """

    tilt_deg: float
    position_px: np.ndarray
    metric: dict[str, np.ndarray]
    n_valid: np.ndarray
    in_focus_px: float | None = None
    extent_px: float | None = None


def profile_along_axis(metric_maps: dict[str, np.ndarray], centers: np.ndarray, tilt_axis: str,
                       valid: np.ndarray | None, tilt_deg: float, in_focus_px: float | None = None,
                       extent_px: float | None = None, aggregate: str = "median") -> TiltProfile:
    """Reduce ``(gy, gx)`` metric maps to a :class:`TiltProfile` along ``tilt_axis``.

    ``aggregate="median"`` gives one point per position along the tilt axis (the median across the
    other axis, the paper's projection); ``"window"`` keeps every valid window as its own point (the
    height depends only on the position along the tilt axis), so the robust fit can down-weight single
    bad windows instead of letting them shift a column's median when a column has few valid windows.

    Parameters
    ----------
    metric_maps
        ``{metric name: (gy, gx)}``.
    centers
        Window centres along the tilt axis (``centers_x`` for ``"x"``, ``centers_y`` for ``"y"``).
    valid
        ``(gy, gx)`` bool, windows to use; all when ``None``.
    """
    axis = _axis_index(tilt_axis)
    first = next(iter(metric_maps.values()))
    valid = np.ones(first.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
    if axis == 0:  # the profile runs along rows: reduce across columns
        maps = {k: np.asarray(v, dtype=np.float64) for k, v in metric_maps.items()}
        mask = valid
    else:
        maps = {k: np.asarray(v, dtype=np.float64).T for k, v in metric_maps.items()}
        mask = valid.T
    centers = np.asarray(centers, dtype=np.float64)
    if len(centers) != mask.shape[0]:
        raise InputError(f"{len(centers)} window centres along {tilt_axis} for a grid of {first.shape}")
    if aggregate == "window":
        rows, cols = np.nonzero(mask)
        points = {name: grid[rows, cols] for name, grid in maps.items()}
        return TiltProfile(float(tilt_deg), centers[rows], points, np.ones(len(rows), dtype=int), in_focus_px,
                           extent_px)
    if aggregate != "median":
        raise InputError(f"aggregate must be 'median' or 'window', got {aggregate!r}")
    n_valid = mask.sum(axis=1)
    profile = {}
    for name, grid in maps.items():
        vals = np.where(mask, grid, np.nan)
        with np.errstate(all="ignore"):
            row = np.nanmedian(np.where(n_valid[:, None] > 0, vals, 0.0), axis=1)
        profile[name] = np.where(n_valid > 0, row, np.nan)
    return TiltProfile(float(tilt_deg), centers, profile, n_valid, in_focus_px, extent_px)


@dataclasses.dataclass
class MetricFit:
    """The result of fitting one metric: the line, per-frame in-focus positions and residuals."""

    metric: str
    a: float  # metric units per µm
    b: float  # metric at height 0
    in_focus_px: list[float]
    height_um: list[np.ndarray]  # per frame, profile points used
    metric_values: list[np.ndarray]
    position_px: list[np.ndarray]
    r2: float
    r2_per_tilt: list[float]
    residuals_um: list[np.ndarray]  # predicted depth - known height, per frame

    @property
    def slope_um(self) -> float:
        return 1.0 / self.a

    @property
    def offset_um(self) -> float:
        return -self.b / self.a

    @property
    def mean_abs_error_um(self) -> float:
        return float(np.mean(np.abs(np.concatenate(self.residuals_um))))


def fit_metric_profiles(profiles: Sequence[TiltProfile], metric: str, pixel_size_um: float) -> MetricFit:
    """Fit ``metric = a * height + b`` over all profiles with a robust line.

    Known height of a profile point: ``(position - in_focus) * pixel_size_um * tan(tilt)``. Frames
    without a known in-focus position get their own intercept, so their in-focus position is the
    zero crossing of the fitted line (``b`` is then 0 when no frame has a known position).

    Raises
    ------
    InputError
        Too few usable points, a zero tilt with unknown in-focus position, or a metric that does not
        change with height.
    """
    if not profiles:
        raise InputError("no frames to calibrate")
    if not (pixel_size_um > 0 and math.isfinite(pixel_size_um)):
        raise InputError(f"pixel size must be a positive number of µm, got {pixel_size_um}")
    rows_x, rows_frame, rows_y, rows_known = [], [], [], []
    unknown = [i for i, p in enumerate(profiles) if p.in_focus_px is None]
    col_of = {frame: j for j, frame in enumerate(unknown)}
    for i, prof in enumerate(profiles):
        if not (abs(prof.tilt_deg) < 45.0 and math.isfinite(prof.tilt_deg)):
            raise InputError(f"tilt of frame {i + 1} must be between -45 and 45 degrees, got {prof.tilt_deg}")
        if prof.in_focus_px is None and prof.tilt_deg == 0:
            raise InputError(f"frame {i + 1} has zero tilt: its in-focus position cannot be estimated")
        if metric not in prof.metric:
            raise InputError(f"profile of frame {i + 1} has no metric {metric!r}")
        ok = (prof.n_valid > 0) & np.isfinite(prof.metric[metric])
        gradient = pixel_size_um * math.tan(math.radians(prof.tilt_deg))
        x = prof.position_px[ok] * gradient  # µm of height relative to position 0
        if prof.in_focus_px is not None:
            x = x - prof.in_focus_px * gradient
        rows_x.append(x)
        rows_frame.append(np.full(len(x), i))
        rows_y.append(prof.metric[metric][ok])
        rows_known.append(np.full(len(x), prof.in_focus_px is not None))
    x = np.concatenate(rows_x)
    frame = np.concatenate(rows_frame)
    y = np.concatenate(rows_y)
    known = np.concatenate(rows_known)
    n_coef = 1 + len(unknown) + (1 if known.any() else 0)
    if len(x) < n_coef + 2:
        raise InputError(f"only {len(x)} usable profile points (valid windows) for the calibration fit")
    design = np.zeros((len(x), n_coef))
    design[:, 0] = x
    for i, j in col_of.items():
        design[frame == i, 1 + j] = 1.0
    if known.any():
        design[known, -1] = 1.0
    coef, _ = robust_line_fit(design, y)
    a = float(coef[0])
    if not math.isfinite(a) or abs(a) < 1e-12:
        raise InputError(f"the {metric} metric does not change with height: no calibration possible")
    b = float(coef[-1]) if known.any() else 0.0

    in_focus, heights, metrics, positions, residuals, r2s = [], [], [], [], [], []
    for i, prof in enumerate(profiles):
        sel = frame == i
        gradient = pixel_size_um * math.tan(math.radians(prof.tilt_deg))
        if prof.in_focus_px is None:
            intercept = float(coef[1 + col_of[i]])
            x0 = -(intercept - b) / (a * gradient)
        else:
            x0 = float(prof.in_focus_px)
        ok = (prof.n_valid > 0) & np.isfinite(prof.metric[metric])
        pos = prof.position_px[ok]
        h = (pos - x0) * gradient
        m = y[sel]
        pred = (m - b) / a
        in_focus.append(float(x0))
        heights.append(h)
        metrics.append(m)
        positions.append(pos)
        residuals.append(pred - h)
        r2s.append(_r2(h, pred))
    all_h = np.concatenate(heights)
    all_pred = all_h + np.concatenate(residuals)
    return MetricFit(metric, a, b, in_focus, heights, metrics, positions, _r2(all_h, all_pred), r2s,
                     residuals)


# -- the calibration file --------------------------------------------------------------------------


class TiltResidual(BaseModel):
    """Fit quality for one calibration frame."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    tilt_deg: float
    in_focus_px: float = Field(description="in-focus position along the tilt axis (given or estimated)")
    in_focus_estimated: bool
    depth_range_um: float = Field(description="height difference across the frame along the tilt axis")
    n_points: int
    r2: float
    mean_abs_error_um: float
    sd_abs_error_um: float
    relative_error_pct: float = Field(description="mean |error| / depth range, in percent")


class MetricSummary(BaseModel):
    """The figures of one metric's fit (all metrics are kept for comparison)."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    metric: Metric
    slope_um_per_unit: float
    offset_um: float
    r2: float
    mean_abs_error_um: float
    sd_abs_error_um: float


class CalibrationPoint(BaseModel):
    """One profile point of the fit, kept so the plot can be redrawn from the JSON alone."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    frame: int
    tilt_deg: float
    position_px: float
    height_um: float
    metric: float


class Calibration(BaseModel):
    """Depth calibration: converts a PSF map of one network into depth in µm.

    ``depth_um = slope_um_per_unit * metric + offset_um``, with the metric computed from the PSF map
    and the lens direction as in :func:`depth_metric`. Saved as JSON (:meth:`save`, :meth:`load`).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), ser_json_inf_nan="constants")

    format: Literal["livepsf-depth-calibration"] = FORMAT
    format_version: Literal[1] = 1
    metric: Metric
    slope_um_per_unit: float
    offset_um: float
    lens_direction: tuple[float, float] = Field(description="unit vector in the (astig_0, astig_45) plane")
    lens_strength_waves: float = Field(gt=0, description="lens astigmatism measured along lens_direction")
    tilt_axis: TiltAxis
    pixel_size_um: float = Field(gt=0)
    model_name: str
    model_sha256: str
    psf_model: str
    r2: float
    mean_abs_error_um: float
    sd_abs_error_um: float
    per_tilt: list[TiltResidual]
    metrics: list[MetricSummary] = Field(description="figures of every metric that was fitted")
    points: list[CalibrationPoint] = Field(default_factory=list)
    window_px: int | None = None
    stride_px: int | None = None
    max_texture_coherence: float | None = Field(
        default=None, description="windows with more anisotropic texture were left out (None: no gate)")
    created: datetime
    livepsf_version: str
    notes: str = ""

    @field_validator("lens_direction")
    @classmethod
    def _unit_direction(cls, v: tuple[float, float]) -> tuple[float, float]:
        norm = math.hypot(*v)
        if not math.isfinite(norm) or abs(norm - 1.0) > 1e-3:
            raise ValueError(f"lens_direction must be a unit vector, got {v}")
        return v

    @field_validator("slope_um_per_unit", "offset_um", "pixel_size_um")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("slope_um_per_unit")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("slope must not be zero")
        return v

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the calibration as JSON. Refuses to replace an existing file unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise InputError(f"{path}: already exists; calibrations are never overwritten, "
                             "choose another name")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, model: Any = None) -> Calibration:
        """Read and validate a calibration JSON file.

        Parameters
        ----------
        path
            The JSON file written by :meth:`save`.
        model
            Optional network (or PSF map) the calibration will be used with; a calibration made with
            another network is refused (see :meth:`check_model`).

        Raises
        ------
        InputError
            Missing, unreadable, corrupt or invalid file, or a mismatched model.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such calibration file")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a readable JSON calibration ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise InputError(f"{path}: not a livepsf depth calibration (missing format '{FORMAT}')")
        try:
            cal = cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise InputError(f"{path}: invalid calibration: {where}: {first['msg']} "
                             f"({exc.error_count()} problem(s))") from None
        if model is not None:
            cal.check_model(model)
        return cal

    # -- use --------------------------------------------------------------------------------------
    def check_model(self, model: Any) -> None:
        """Refuse a network (or a PSF map made by one) other than the one this calibration was made with.

        ``model`` may be a loaded network (anything with a ``.card`` holding ``name`` and
        ``weights_sha256``), a model card, or a :class:`PSFMap`.

        Raises
        ------
        InputError
            The weights' hash differs (or, when a hash is missing, the name does).
        """
        name, sha = _model_identity(model)
        if sha and self.model_sha256:
            if sha != self.model_sha256:
                raise InputError(
                    f"calibration was made with model {self.model_name!r} "
                    f"(weights {self.model_sha256[:12]}), "
                    f"not with {name!r} (weights {sha[:12]}); calibrate again with this model")
        elif name and name != self.model_name:
            raise InputError(f"calibration was made with model {self.model_name!r}, not {name!r}")

    def metric_map(self, pmap: PSFMap) -> np.ndarray:
        """The calibration's depth metric on the grid of ``pmap``, ``(gy, gx)`` float32."""
        return depth_metric(pmap, self.metric, self.lens_direction, self.lens_strength_waves)

    def depth_um(self, pmap: PSFMap, frame: np.ndarray | None = None, median_windows: int = 1) -> np.ndarray:
        """Depth (height relative to the focal plane) in µm on the window grid, ``(gy, gx)`` float32.

        Invalid windows hold the depth of the values the mapper filled in from their neighbours; use
        ``pmap.invalid_mask`` to hide them. With ``frame`` (the image the map was made from) and a
        calibration made with the texture gate, windows of one-directional texture are also filled from
        their reliable neighbours (:func:`reliable_windows`).

        ``median_windows`` > 1 replaces each reliable window's depth by the median of the reliable
        windows in a ``median_windows``-wide square around it, for smooth surfaces: it removes isolated
        windows whose astigmatism sign the network got wrong (they read twice the depth, mirrored).
        """
        from livepsf.mapping import fill_invalid

        self.check_model(pmap)
        if int(median_windows) != median_windows or median_windows < 1:
            raise InputError(f"median_windows must be a positive integer, got {median_windows}")
        depth = (self.slope_um_per_unit * self.metric_map(pmap) + self.offset_um).astype(np.float32)
        gated = frame is not None and self.max_texture_coherence is not None
        ok = reliable_windows(pmap, frame if gated else None, self.max_texture_coherence)
        if median_windows > 1 and ok.any():
            depth = _masked_median(depth, ok, int(median_windows))
        if gated and ok.any():
            depth = fill_invalid(depth, ~ok)
        return depth

    def depth_um_full(self, pmap: PSFMap, shape: tuple[int, int] | None = None,
                      frame: np.ndarray | None = None, median_windows: int = 1) -> np.ndarray:
        """Full-frame depth map in µm (bilinear between window centres, as :meth:`PSFMap.upsample`)."""
        grid = self.depth_um(pmap, frame, median_windows)
        # PSFMap.upsample interpolates named parameter grids; carry the depth grid in a one-parameter
        # map (G-1's "variance" slot) so the interpolation is exactly the mapper's.
        carrier = dataclasses.replace(pmap, params={"variance": grid}, psf_model="G-1", sigma={})
        return carrier.upsample(shape, name="variance")

    def summary(self) -> str:
        """One line for people: metric, slope, R², residual."""
        return (f"{self.metric} metric: {self.slope_um_per_unit:.3f} µm/unit, "
                f"offset {self.offset_um:+.2f} µm, R² {self.r2:.4f}, "
                f"mean |error| {self.mean_abs_error_um:.2f} ± {self.sd_abs_error_um:.2f} µm")


# -- calibration from PSF maps and frames ----------------------------------------------------------


def calibrate_psf_maps(
    pmaps: Sequence[PSFMap],
    tilt_deg: Sequence[float] | float,
    pixel_size_um: float,
    tilt_axis: str = "x",
    in_focus_px: Sequence[float | None] | float | None = None,
    metric: str | None = None,
    lens_direction: Sequence[float] | None = None,
    frames: Sequence[np.ndarray] | None = None,
    max_texture_coherence: float | None = MAX_TEXTURE_COHERENCE,
    aggregate: str = "median",
) -> Calibration:
    """Tilted-grid calibration from PSF maps already computed (one per frame).

    Parameters
    ----------
    pmaps
        PSF maps of an astigmatic Zernike model (Z-3), all from the same network.
    tilt_deg
        Tilt of each frame (one value for all, or one per map). Positive raises the surface towards
        higher indices along ``tilt_axis``.
    pixel_size_um
        Pixel size in the sample plane.
    tilt_axis
        ``"x"`` (height grows along columns) or ``"y"`` (along rows).
    in_focus_px
        Position along the tilt axis that is in focus, per frame (or one value); ``None`` estimates
        it as the zero crossing of the metric.
    metric
        Force a metric; by default all are fitted and the one with the smaller mean |error| is used.
    lens_direction
        Force the lens direction; by default estimated from the valid windows.
    frames
        The frames the maps were made from; enables the texture gate (see the module notes).
    max_texture_coherence
        Gate threshold (:func:`reliable_windows`); ``None`` turns the gate off.
    aggregate
        ``"median"`` (one point per column/row, the paper's projection) or ``"window"`` (every reliable
        window a point of the robust fit); see :func:`profile_along_axis`.
    """
    if not pmaps:
        raise InputError("no frames to calibrate")
    tilt_axis = _check_axis(tilt_axis)
    tilts = _per_frame(tilt_deg, len(pmaps), "tilt_deg")
    foci = _per_frame(in_focus_px, len(pmaps), "in_focus_px")
    identities = {(p.model_name, p.model_sha256) for p in pmaps}
    if len(identities) > 1:
        raise InputError(f"calibration frames were mapped by different models: {sorted(identities)}")
    for p in pmaps:
        _require_astigmatic(p)
    if metric is not None and metric not in METRICS:
        raise InputError(f"unknown depth metric {metric!r}; choose one of {', '.join(METRICS)}")

    if frames is not None and len(frames) != len(pmaps):
        raise InputError(f"{len(frames)} frames for {len(pmaps)} PSF maps")
    gate = max_texture_coherence if frames is not None else None
    frame_list = list(frames) if frames is not None else [None] * len(pmaps)
    valid = [reliable_windows(p, f, gate) for p, f in zip(pmaps, frame_list)]
    if sum(int(v.sum()) for v in valid) < 4:
        raise InputError("(almost) every window is invalid or has one-directional texture: "
                         "nothing to calibrate on")
    if lens_direction is None:
        u = estimate_lens_direction(np.concatenate([p.values("astig_0").ravel() for p in pmaps]),
                                    np.concatenate([p.values("astig_45").ravel() for p in pmaps]),
                                    np.concatenate([v.ravel() for v in valid]))
    else:
        u = _unit(lens_direction)
    strength = estimate_lens_strength(*(np.concatenate([p.values(n).ravel() for p in pmaps])
                                        for n in ("focus", "astig_0", "astig_45")),
                                      u, np.concatenate([v.ravel() for v in valid]))

    def profiles_for(direction: tuple[float, float]) -> list[TiltProfile]:
        out = []
        for p, v, t, f in zip(pmaps, valid, tilts, foci):
            maps = {name: depth_metric(p, name, direction, strength) for name in METRICS}
            centers = p.centers_x if tilt_axis == "x" else p.centers_y
            extent = p.frame_shape[1] if tilt_axis == "x" else p.frame_shape[0]
            out.append(profile_along_axis(maps, centers, tilt_axis, v, t, f, extent, aggregate))
        return out

    profiles = profiles_for(u)
    fits = {name: fit_metric_profiles(profiles, name, pixel_size_um) for name in METRICS}
    if lens_direction is None and fits["signed"].a < 0:
        # Orient the lens direction so the signed metric grows with height (cosmetic: slopes positive).
        u = (-u[0], -u[1])
        profiles = profiles_for(u)
        fits = {name: fit_metric_profiles(profiles, name, pixel_size_um) for name in METRICS}
    chosen = metric or min(METRICS, key=lambda n: (fits[n].mean_abs_error_um, METRICS.index(n)))
    fit = fits[chosen]
    notes = ""
    if not fit.r2 >= POOR_FIT_R2:
        notes = (f"poor fit (R² {fit.r2:.3f} < {POOR_FIT_R2}): the network does not read depth from "
                 "these frames "
                 "reliably; check the lens is in, the tilt values and the texture of the frames")

    first = pmaps[0]
    return Calibration(
        metric=chosen,
        slope_um_per_unit=fit.slope_um,
        offset_um=fit.offset_um,
        lens_direction=u,
        lens_strength_waves=strength,
        tilt_axis=tilt_axis,
        pixel_size_um=pixel_size_um,
        model_name=first.model_name,
        model_sha256=first.model_sha256,
        psf_model=first.psf_model,
        r2=fit.r2,
        mean_abs_error_um=fit.mean_abs_error_um,
        sd_abs_error_um=float(np.std(np.abs(np.concatenate(fit.residuals_um)))),
        per_tilt=_per_tilt(fit, profiles, pixel_size_um),
        metrics=[_summary(fits[n]) for n in METRICS],
        points=[CalibrationPoint(frame=i, tilt_deg=profiles[i].tilt_deg, position_px=float(x),
                                 height_um=float(h),
                                 metric=float(m))
                for i in range(len(profiles))
                for x, h, m in zip(fit.position_px[i], fit.height_um[i], fit.metric_values[i])],
        window_px=int(first.window_px),
        stride_px=int(first.stride_px),
        max_texture_coherence=gate,
        created=datetime.now(timezone.utc),
        livepsf_version=_version(),
        notes=notes,
    )


def calibrate_tilted_grid(
    frames: Sequence[np.ndarray],
    tilt_deg: Sequence[float] | float,
    pixel_size_um: float = 0.65,
    mapper: Callable[[np.ndarray], PSFMap] | None = None,
    tilt_axis: str = "x",
    in_focus_px: Sequence[float | None] | float | None = None,
    metric: str | None = None,
    max_texture_coherence: float | None = MAX_TEXTURE_COHERENCE,
) -> Calibration:
    """Calibrate depth from frames of a printed grid tilted by known angles (paper Section III-E).

    Each frame is mapped to a PSF map; the rest is :func:`calibrate_psf_maps`.

    Parameters
    ----------
    frames
        2D frames of the tilted grid (any real dtype).
    tilt_deg
        One tilt for all frames or one per frame, in degrees.
    pixel_size_um
        Pixel size in the sample plane.
    mapper
        ``frame -> PSFMap`` (a :class:`livepsf.PSFMapper` around an astigmatic Z-3 network).
    tilt_axis
        Array axis along which the height grows: ``"x"`` (columns) or ``"y"`` (rows).
    in_focus_px
        Known in-focus column (``"x"``) or row (``"y"``), per frame or one for all; estimated when ``None``.
    metric
        Force ``"signed"``, ``"projected"`` or ``"eq14"``; by default the best of them.
    max_texture_coherence
        Leave out windows of one-directional texture (see the module notes); ``None``: keep them.

    Returns
    -------
    Calibration
    """
    if mapper is None:
        raise InputError("calibrate_tilted_grid needs a mapper (livepsf.PSFMapper around a Z-3 model)")
    if len(frames) == 0:
        raise InputError("no frames to calibrate")
    pmaps = [mapper(np.asarray(f)) for f in frames]
    return calibrate_psf_maps(pmaps, tilt_deg, pixel_size_um, tilt_axis, in_focus_px, metric,
                              frames=[np.asarray(f) for f in frames],
                              max_texture_coherence=max_texture_coherence)


# -- depth-map files -------------------------------------------------------------------------------


def depth_stats(cal: Calibration, pmap: PSFMap, frame: np.ndarray | None = None,
                median_windows: int = 1) -> dict[str, Any]:
    """Summary of one frame's depth: range over reliable windows, invalid fraction, the window grid."""
    grid = cal.depth_um(pmap, frame, median_windows)
    valid = reliable_windows(pmap, frame, cal.max_texture_coherence)
    vals = grid[valid] if valid.any() else np.array([np.nan])
    return {
        "min_um": float(np.min(vals)),
        "max_um": float(np.max(vals)),
        "mean_um": float(np.mean(vals)),
        "median_um": float(np.median(vals)),
        "invalid_fraction": float(pmap.invalid_mask.mean()),
        "unreliable_fraction": float(1.0 - valid.mean()),
        "grid_depth_um": np.round(grid.astype(np.float64), 3).tolist(),
        "grid_reliable": valid.tolist(),
        "centers_y_px": np.asarray(pmap.centers_y, dtype=np.float64).tolist(),
        "centers_x_px": np.asarray(pmap.centers_x, dtype=np.float64).tolist(),
    }


def write_depth_outputs(source: str | Path, pmaps: Sequence[PSFMap], cal: Calibration,
                        calibration_path: str | Path | None = None,
                        out_dir: str | Path | None = None,
                        frames: Sequence[np.ndarray] | None = None,
                        median_windows: int = 1) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Write ``<name>_depth.ome.tif`` (float32 µm, one plane per frame) and ``<name>_depth.json``.

    Names come from :func:`livepsf.imageio.output_path`: beside ``source`` (or in ``out_dir``), never
    overwriting anything. ``frames`` (the images the maps were made from) enable the texture gate.
    Returns the two paths and the per-frame summaries.
    """
    import tifffile

    from livepsf.imageio import output_path

    if not pmaps:
        raise InputError(f"{source}: no frames to turn into depth maps")
    frames = list(frames) if frames is not None else [None] * len(pmaps)
    full = np.stack([cal.depth_um_full(p, frame=f, median_windows=median_windows)
                     for p, f in zip(pmaps, frames)]).astype(np.float32)
    stats = [depth_stats(cal, p, f, median_windows) for p, f in zip(pmaps, frames)]
    tif_path = output_path(source, "_depth.ome.tif", out_dir)
    data = full[0] if len(full) == 1 else full
    metadata = {
        "axes": "YX" if data.ndim == 2 else "TYX",
        "Name": f"depth (µm) of {Path(source).name}",
        "PhysicalSizeX": cal.pixel_size_um,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": cal.pixel_size_um,
        "PhysicalSizeYUnit": "µm",
    }
    tifffile.imwrite(tif_path, data, ome=True, metadata=metadata, photometric="minisblack")
    json_path = output_path(source, "_depth.json", out_dir)
    summary = {
        "source": str(source),
        "depth_map": str(tif_path),
        "unit": "µm",
        "meaning": "height of the surface relative to the focal plane",
        "calibration": str(calibration_path) if calibration_path is not None else None,
        "metric": cal.metric,
        "slope_um_per_unit": cal.slope_um_per_unit,
        "offset_um": cal.offset_um,
        "model_name": cal.model_name,
        "model_sha256": cal.model_sha256,
        "median_windows": int(median_windows),
        "window_px": int(pmaps[0].window_px),
        "stride_px": int(pmaps[0].stride_px),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "livepsf_version": _version(),
        "frames": stats,
    }
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return tif_path, json_path, stats


# -- plot ------------------------------------------------------------------------------------------

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]


def plot_calibration(cal: Calibration, path: str | Path, size: tuple[int, int] = (900, 800)) -> Path:
    """Draw metric vs known height per tilt with the fitted line, and the residuals below, as PNG.

    Uses pyqtgraph's image exporter on an offscreen scene (no display needed).
    """
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import pyqtgraph as pg
    import pyqtgraph.exporters  # noqa: F401  (registers the exporters)
    from qtpy import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    pg.setConfigOptions(antialias=True, background="w", foreground="k")
    layout = pg.GraphicsLayoutWidget()
    layout.setFixedSize(*size)
    top = layout.addPlot(row=0, col=0)
    bottom = layout.addPlot(row=1, col=0)
    layout.ci.layout.setRowStretchFactor(0, 3)
    layout.ci.layout.setRowStretchFactor(1, 2)
    top.setTitle(f"Depth calibration — {cal.metric} metric, model {cal.model_name}, "
                 f"R² = {cal.r2:.4f}")
    for plot in (top, bottom):
        for side in ("left", "bottom"):
            plot.getAxis(side).enableAutoSIPrefix(False)  # µm stay µm, no "x0.001"
    top.setLabel("left", f"{cal.metric} metric (waves)")
    top.setLabel("bottom", "known height (µm)")
    bottom.setLabel("left", "depth error (µm)")
    bottom.setLabel("bottom", "known height (µm)")
    top.addLegend(offset=(10, 10))
    top.showGrid(x=True, y=True, alpha=0.25)
    bottom.showGrid(x=True, y=True, alpha=0.25)

    frames = sorted({p.frame for p in cal.points})
    tilts = sorted({p.tilt_deg for p in cal.points})
    all_h = np.array([p.height_um for p in cal.points]) if cal.points else np.array([-1.0, 1.0])
    for frame in frames:
        pts = [p for p in cal.points if p.frame == frame]
        tilt = pts[0].tilt_deg
        colour = _COLOURS[tilts.index(tilt) % len(_COLOURS)]
        h = np.array([p.height_um for p in pts])
        m = np.array([p.metric for p in pts])
        resid = cal.slope_um_per_unit * m + cal.offset_um - h
        first_of_tilt = frame == min(p.frame for p in cal.points if p.tilt_deg == tilt)
        stat = next((r for r in cal.per_tilt if r.tilt_deg == tilt), None)
        label = f"{tilt:g}°" + (f"  (|err| {stat.mean_abs_error_um:.2f} µm)" if stat else "")
        top.plot(h, m, pen=None, symbol="o", symbolSize=7, symbolBrush=colour, symbolPen=None,
                 name=label if first_of_tilt else None)
        bottom.plot(h, resid, pen=None, symbol="o", symbolSize=6, symbolBrush=colour, symbolPen=None)
    lo, hi = float(all_h.min()), float(all_h.max())
    span = np.array([lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)])
    line = (span - cal.offset_um) / cal.slope_um_per_unit
    top.plot(span, line, pen=pg.mkPen("k", width=2), name=f"fit: {cal.slope_um_per_unit:.2f} µm/unit")
    bottom.addLine(y=0, pen=pg.mkPen("k", width=1))
    bottom.setXLink(top)

    layout.show()
    app.processEvents()
    exporter = pg.exporters.ImageExporter(layout.scene())
    exporter.parameters()["width"] = size[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter.export(str(path))
    layout.close()
    return path


# -- helpers ---------------------------------------------------------------------------------------


def _per_tilt(fit: MetricFit, profiles: Sequence[TiltProfile], pixel_size_um: float) -> list[TiltResidual]:
    out = []
    for i, prof in enumerate(profiles):
        res = np.abs(fit.residuals_um[i])
        extent = prof.extent_px if prof.extent_px else float(np.ptp(prof.position_px)) or 1.0
        depth_range = abs(extent * pixel_size_um * math.tan(math.radians(prof.tilt_deg)))
        mae = float(res.mean()) if len(res) else float("nan")
        out.append(TiltResidual(
            tilt_deg=prof.tilt_deg,
            in_focus_px=fit.in_focus_px[i],
            in_focus_estimated=prof.in_focus_px is None,
            depth_range_um=depth_range,
            n_points=int(len(res)),
            r2=fit.r2_per_tilt[i],
            mean_abs_error_um=mae,
            sd_abs_error_um=float(res.std()) if len(res) else float("nan"),
            relative_error_pct=100.0 * mae / depth_range if depth_range > 0 else float("nan"),
        ))
    return out


def _summary(fit: MetricFit) -> MetricSummary:
    res = np.abs(np.concatenate(fit.residuals_um))
    return MetricSummary(metric=fit.metric, slope_um_per_unit=fit.slope_um, offset_um=fit.offset_um,
                         r2=fit.r2,
                         mean_abs_error_um=float(res.mean()), sd_abs_error_um=float(res.std()))


def _masked_median(grid: np.ndarray, ok: np.ndarray, size: int) -> np.ndarray:
    """Median of the ``ok`` cells in a ``size``-wide square around each ``ok`` cell; others unchanged."""
    gy, gx = grid.shape
    r = size // 2
    out = np.array(grid, dtype=np.float32, copy=True)
    for i, j in zip(*np.nonzero(ok)):
        sl = (slice(max(0, i - r), min(gy, i + r + 1)), slice(max(0, j - r), min(gx, j + r + 1)))
        out[i, j] = np.median(grid[sl][ok[sl]])
    return out


def _r2(truth: np.ndarray, pred: np.ndarray) -> float:
    truth = np.asarray(truth, dtype=np.float64)
    ss_tot = float(np.sum((truth - truth.mean()) ** 2)) if len(truth) else 0.0
    if ss_tot <= 0:
        return float("nan")
    return 1.0 - float(np.sum((truth - pred) ** 2)) / ss_tot


def _unit(v: Sequence[float]) -> tuple[float, float]:
    u0, u45 = (float(x) for x in v)
    norm = math.hypot(u0, u45)
    if not math.isfinite(norm) or norm == 0:
        raise InputError(f"lens direction must be a non-zero 2-vector, got {tuple(v)}")
    return u0 / norm, u45 / norm


def _axis_index(tilt_axis: str) -> int:
    return 1 if _check_axis(tilt_axis) == "x" else 0


def _check_axis(tilt_axis: str) -> str:
    axis = str(tilt_axis).lower()
    if axis not in ("x", "y"):
        raise InputError(f"tilt axis must be 'x' (columns) or 'y' (rows), got {tilt_axis!r}")
    return axis


def _per_frame(value: Any, n: int, name: str) -> list:
    if value is None or isinstance(value, (int, float)):
        return [None if value is None else float(value)] * n
    values = list(value)
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise InputError(f"{name}: got {len(values)} values for {n} frames; "
                         "give one per frame or one for all")
    return [None if v is None else float(v) for v in values]


def _require_astigmatic(pmap: PSFMap) -> None:
    if not {"focus", "astig_0", "astig_45"} <= set(pmap.params):
        raise InputError(f"depth from astigmatism needs a Z-3 model (focus and astigmatism); "
                         f"this PSF map is {pmap.psf_model} from model {pmap.model_name!r}")


def _model_identity(model: Any) -> tuple[str, str]:
    if isinstance(model, PSFMap):
        return model.model_name, model.model_sha256
    card = getattr(model, "card", model)
    name = getattr(card, "name", None)
    sha = getattr(card, "weights_sha256", None)
    if name is None and isinstance(card, dict):
        name, sha = card.get("name"), card.get("weights_sha256")
    if name is None and sha is None:
        raise TypeError(f"cannot tell which model {type(model).__name__} is: "
                        "expected a network, card or PSFMap")
    return str(name or ""), str(sha or "")


def _version() -> str:
    from livepsf import __version__

    return __version__

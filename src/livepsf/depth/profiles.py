"""Tilted-grid profiles: metric maps reduced along the untilted axis, and the line fit through them."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from livepsf.depth.robust import r_squared, robust_line_fit
from livepsf.errors import InputError


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
    axis = tilt_axis_index(tilt_axis)
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
        r2s.append(r_squared(h, pred))
    all_h = np.concatenate(heights)
    all_pred = all_h + np.concatenate(residuals)
    return MetricFit(metric, a, b, in_focus, heights, metrics, positions, r_squared(all_h, all_pred), r2s,
                     residuals)


def tilt_axis_index(tilt_axis: str) -> int:
    return 1 if check_tilt_axis(tilt_axis) == "x" else 0


def check_tilt_axis(tilt_axis: str) -> str:
    axis = str(tilt_axis).lower()
    if axis not in ("x", "y"):
        raise InputError(f"tilt axis must be 'x' (columns) or 'y' (rows), got {tilt_axis!r}")
    return axis

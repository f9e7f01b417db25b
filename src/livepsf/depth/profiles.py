"""Calibration points and the line fit through them; tilted-grid profiles (metric maps reduced along the
untilted axis) as one source of points."""

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


class _InvertedLine:
    """``height = slope_um * metric + offset_um`` of a fitted ``metric = a * height + b``."""

    a: float
    b: float

    @property
    def slope_um(self) -> float:
        return 1.0 / self.a

    @property
    def offset_um(self) -> float:
        return -self.b / self.a


@dataclasses.dataclass
class MetricFit(_InvertedLine):
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
    def mean_abs_error_um(self) -> float:
        return float(np.mean(np.abs(np.concatenate(self.residuals_um))))


@dataclasses.dataclass
class CalibrationPoints:
    """Generic calibration points: a metric value at a height known up to a per-group offset.

    Attributes
    ----------
    height_um
        ``(n,)`` known height (µm, relative to the focal plane) up to the unknown offset of the point's
        offset group: the true height is ``height_um + offset[offset_group]``.
    metric
        ``(n,)`` depth-metric value measured there.
    frame
        ``(n,)`` int, the frame the point comes from (the unit left out by leave-one-frame-out).
    offset_group
        ``(n,)`` int: ``-1`` when the height is known exactly; points sharing a value ``>= 0`` share one
        unknown additive height offset (a tilted frame's unknown in-focus position, or a z-stack's unknown
        in-focus stage position shared by all its frames).
    weight
        ``(n,)`` non-negative weight of each point (e.g. the number of windows behind it).

    Raises
    ------
    InputError
        Mismatched lengths, NaN or infinite values, or negative weights.
    """

    height_um: np.ndarray
    metric: np.ndarray
    frame: np.ndarray
    offset_group: np.ndarray
    weight: np.ndarray

    def __post_init__(self) -> None:
        self.height_um = np.asarray(self.height_um, dtype=np.float64).ravel()
        self.metric = np.asarray(self.metric, dtype=np.float64).ravel()
        n = len(self.height_um)
        self.frame = np.broadcast_to(np.asarray(self.frame, dtype=int), (n,)).copy()
        self.offset_group = np.broadcast_to(np.asarray(self.offset_group, dtype=int), (n,)).copy()
        self.weight = np.broadcast_to(np.asarray(self.weight, dtype=np.float64), (n,)).copy()
        if len(self.metric) != n:
            raise InputError(f"{len(self.metric)} metric values for {n} heights")
        for name in ("height_um", "metric", "weight"):
            if not np.isfinite(getattr(self, name)).all():
                raise InputError(f"calibration points: {name} holds NaN or infinite values")
        if (self.weight < 0).any():
            raise InputError("calibration points: weights must not be negative")

    def __len__(self) -> int:
        return len(self.height_um)

    @property
    def unknown_groups(self) -> list[int]:
        """The offset groups whose offset is unknown, in order of first appearance."""
        groups = self.offset_group[self.offset_group >= 0]
        _, first = np.unique(groups, return_index=True)
        return [int(g) for g in groups[np.sort(first)]]

    def subset(self, mask: np.ndarray) -> CalibrationPoints:
        """The points where ``mask`` is true."""
        return CalibrationPoints(self.height_um[mask], self.metric[mask], self.frame[mask],
                                 self.offset_group[mask], self.weight[mask])

    def heights_with(self, offsets_um: dict[int, float]) -> np.ndarray:
        """True heights given the offset of every unknown group (``-1`` points: as they are)."""
        shift = np.array([offsets_um.get(int(g), 0.0) if g >= 0 else 0.0 for g in self.offset_group])
        return self.height_um + shift


@dataclasses.dataclass
class LineFit(_InvertedLine):
    """``metric = a * (height_um + offset[group]) + b`` fitted robustly to :class:`CalibrationPoints`."""

    a: float  # metric units per µm
    b: float  # metric at height 0 (0 when no point has an exactly known height)
    offsets_um: dict[int, float]  # unknown offset of each offset group
    heights_um: np.ndarray  # per point, offsets applied
    residuals_um: np.ndarray  # per point: depth from the line - height

    def depth_um(self, metric: np.ndarray) -> np.ndarray:
        return (np.asarray(metric, dtype=np.float64) - self.b) / self.a


def fit_points_line(points: CalibrationPoints, what: str = "metric") -> LineFit:
    """Fit ``metric = a * (height + offset_g) + b`` with a robust line (Huber, then bisquare).

    Each unknown offset group gets its own intercept ``c_g``, so its offset is
    ``(c_g - b) / a``; ``b`` is fitted on the points of known height (0 when there are none: the
    heights are then relative to the height where the metric is 0). Point weights multiply the
    robust weights.

    Raises
    ------
    InputError
        Too few points for the coefficients, or a metric that does not change with height.
    """
    groups = points.unknown_groups
    known = points.offset_group < 0
    n_coef = 1 + len(groups) + (1 if known.any() else 0)
    used = points.weight > 0
    if used.sum() < n_coef + 2:
        raise InputError(f"only {int(used.sum())} usable points (valid windows) for the calibration fit")
    design = np.zeros((len(points), n_coef))
    design[:, 0] = points.height_um
    for j, g in enumerate(groups):
        design[points.offset_group == g, 1 + j] = 1.0
    if known.any():
        design[known, -1] = 1.0
    coef, _ = robust_line_fit(design, points.metric, sample_weight=points.weight)
    a = float(coef[0])
    if not math.isfinite(a) or abs(a) < 1e-12:
        raise InputError(f"the {what} does not change with height: no calibration possible")
    b = float(coef[-1]) if known.any() else 0.0
    offsets = {g: (float(coef[1 + j]) - b) / a for j, g in enumerate(groups)}
    heights = points.heights_with(offsets)
    return LineFit(a, b, offsets, heights, (points.metric - b) / a - heights)


def points_from_profiles(profiles: Sequence[TiltProfile], metric: str, pixel_size_um: float) -> CalibrationPoints:
    """:class:`CalibrationPoints` of one metric from tilted-grid profiles.

    Height relative to position 0: ``position * pixel_size_um * tan(tilt)``; a frame with a known
    in-focus position has its height exactly (``offset_group`` -1), any other frame is its own offset
    group (its in-focus position is ``-offset / (pixel_size_um * tan(tilt))``). Points without valid
    windows or with a non-finite metric are left out; each point weighs 1.

    Raises
    ------
    InputError
        No profiles, a bad pixel size or tilt, a zero tilt with unknown in-focus position, or a
        missing metric.
    """
    if not profiles:
        raise InputError("no frames to calibrate")
    if not (pixel_size_um > 0 and math.isfinite(pixel_size_um)):
        raise InputError(f"pixel size must be a positive number of µm, got {pixel_size_um}")
    heights, values, frames, groups = [], [], [], []
    for i, prof in enumerate(profiles):
        if not (abs(prof.tilt_deg) < 45.0 and math.isfinite(prof.tilt_deg)):
            raise InputError(f"tilt of frame {i + 1} must be between -45 and 45 degrees, got {prof.tilt_deg}")
        if prof.in_focus_px is None and prof.tilt_deg == 0:
            raise InputError(f"frame {i + 1} has zero tilt: its in-focus position cannot be estimated")
        if metric not in prof.metric:
            raise InputError(f"profile of frame {i + 1} has no metric {metric!r}")
        ok = profile_points_ok(prof, metric)
        gradient = pixel_size_um * math.tan(math.radians(prof.tilt_deg))
        x = prof.position_px[ok] * gradient  # µm of height relative to position 0
        if prof.in_focus_px is not None:
            x = x - prof.in_focus_px * gradient
        heights.append(x)
        values.append(prof.metric[metric][ok])
        frames.append(np.full(len(x), i))
        groups.append(np.full(len(x), -1 if prof.in_focus_px is not None else i))
    return CalibrationPoints(np.concatenate(heights), np.concatenate(values), np.concatenate(frames),
                             np.concatenate(groups), np.ones(sum(len(h) for h in heights)))


def profile_points_ok(prof: TiltProfile, metric: str) -> np.ndarray:
    """``(n,)`` bool: the profile points that enter the fit (valid windows behind them, finite metric)."""
    return (prof.n_valid > 0) & np.isfinite(prof.metric[metric])


def in_focus_from_offset(prof: TiltProfile, offset_um: float | None, pixel_size_um: float) -> float:
    """In-focus position along the tilt axis: given, or where the fitted height offset puts height 0."""
    if prof.in_focus_px is not None or offset_um is None:
        return float(prof.in_focus_px)
    return float(-offset_um / (pixel_size_um * math.tan(math.radians(prof.tilt_deg))))


def fit_metric_profiles(profiles: Sequence[TiltProfile], metric: str, pixel_size_um: float) -> MetricFit:
    """Fit ``metric = a * height + b`` over all profiles with a robust line.

    Known height of a profile point: ``(position - in_focus) * pixel_size_um * tan(tilt)``. Frames
    without a known in-focus position get their own intercept, so their in-focus position is the
    zero crossing of the fitted line (``b`` is then 0 when no frame has a known position). A thin
    adapter: :func:`points_from_profiles`, then :func:`fit_points_line`.

    Raises
    ------
    InputError
        Too few usable points, a zero tilt with unknown in-focus position, or a metric that does not
        change with height.
    """
    points = points_from_profiles(profiles, metric, pixel_size_um)
    line = fit_points_line(points, what=f"{metric} metric")
    in_focus, heights, metrics, positions, residuals, r2s = [], [], [], [], [], []
    for i, prof in enumerate(profiles):
        sel = points.frame == i
        in_focus.append(in_focus_from_offset(prof, line.offsets_um.get(i), pixel_size_um))
        heights.append(line.heights_um[sel])
        metrics.append(points.metric[sel])
        positions.append(prof.position_px[profile_points_ok(prof, metric)])
        residuals.append(line.residuals_um[sel])
        r2s.append(r_squared(heights[-1], heights[-1] + residuals[-1]))
    return MetricFit(metric, line.a, line.b, in_focus, heights, metrics, positions,
                     r_squared(line.heights_um, line.heights_um + line.residuals_um), r2s, residuals)


def tilt_axis_index(tilt_axis: str) -> int:
    return 1 if check_tilt_axis(tilt_axis) == "x" else 0


def check_tilt_axis(tilt_axis: str) -> str:
    axis = str(tilt_axis).lower()
    if axis not in ("x", "y"):
        raise InputError(f"tilt axis must be 'x' (columns) or 'y' (rows), got {tilt_axis!r}")
    return axis

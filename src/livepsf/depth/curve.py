"""The calibration curve: depth metric -> height (µm), a line or a monotone curve through knots.

Why a monotone curve, and why this one. With a cylindrical lens the two line foci sit at ``±z_L``
around the best focus. A network reading a real image sees the astigmatism clearly between and just
beyond the line foci and hedges near focus (where PSF(0, A) == PSF(0, -A)) and far out (where the blur
swamps the small lens astigmatism), so the measured metric is monotone in height but S-shaped: steep
near the line foci, flat near focus and far out. A straight line through it is right at two heights
only. The physical two-line-foci model would need the network's own saturation behaviour, which is not
a property of the optics; so the curve is fitted without a shape assumption beyond monotonicity:

1. **Classical calibration.** The height is the exactly known variable and the noise is in the metric,
   so the metric is fitted as a function of height (``metric = g(height)``) and inverted, instead of
   regressing height on the noisy metric (which would flatten the curve at both ends).
2. **Binned medians.** The points are binned by height (equal numbers of points per bin, never splitting
   points of equal height) and each bin is reduced to the weighted median of its heights and of its
   metrics: windows whose astigmatism sign is wrong read the mirrored metric, and the median ignores
   them as long as they are fewer than half of a bin. A second pass takes the medians again after
   moving each point along the first pass's curve to its bin's height, so a steep stretch of the curve
   inside a bin does not let the outliers shift the median.
3. **Isotonic regression** (pool-adjacent-violators) of the bin medians in the direction of the robust
   line's slope, with a floor on the slope (:data:`MIN_SLOPE_FRACTION` of the line's: a plateau flatter
   than that cannot be told from noise on a few frames); each pooled block becomes one knot (its mean
   height, its pooled metric), so the knots are strictly monotone in both coordinates and the curve is
   invertible.
4. **Monotone cubic Hermite interpolation** of height over metric through the knots: the PCHIP
   (Fritsch-Butland) derivatives inside, the secant slopes at the two end knots. Both keep every
   segment in the Fritsch-Carlson monotone region, so the curve is monotone and C1 between its end knots.
5. **Beyond the knots** the curve continues as a straight line with the mean slope of the calibrated
   range (first to last knot; the end intervals' slopes would amplify noise where the metric
   saturates): never flat, which would silently clip every depth beyond the calibrated range to its end.

Per-group unknown height offsets (the in-focus position of a tilted frame, the in-focus stage position
of a z-stack) are solved by alternating: the robust line gives the starting offsets, then the curve is
fitted given the offsets and each group's offset re-estimated given the curve (weighted median of
``curve(metric) - height``), until the offsets settle. Without any point of exactly known height the
height scale is pinned so that a metric of 0 means height 0 (as the line fit does).

:func:`held_out_residuals` refits without each frame in turn (leave one frame out) and predicts it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from livepsf.depth.profiles import CalibrationPoints, LineFit, fit_points_line
from livepsf.errors import InputError

CurveKind = Literal["linear", "monotone"]
CURVES: tuple[str, ...] = ("linear", "monotone")
#: What a calibration may ask for: a curve kind, or "auto" (monotone unless the line predicts held-out
#: frames better).
CURVE_CHOICES: tuple[str, ...] = ("auto", *CURVES)
#: Fewest points behind one knot of the monotone curve (the bin median needs a few to be robust).
MIN_POINTS_PER_KNOT = 5
#: Most knots of the monotone curve.
MAX_KNOTS = 16
#: Below this fraction of the binned medians' variance explained by a monotone fit the metric is not a
#: depth (a V-shaped metric such as an unsigned focus explains about 0.3; monotone data with noise > 0.9).
MIN_MONOTONE_EXPLAINED = 0.5
#: No stretch between knots of the monotone curve is flatter (in metric per µm) than this fraction of the
#: robust line's slope: a plateau flatter than a quarter of the mean slope cannot be told from noise on a few calibration
#: frames, and inverting it would multiply the metric's noise by more than 4 (and let the per-frame offsets
#: slide along it).
MIN_SLOPE_FRACTION = 0.25
#: Passes of binned medians (each later one detrended within its bins by the previous curve).
PASSES = 3
#: A point reads the mirrored value (its astigmatism sign is wrong) when the mirrored reading is nearer
#: what it should read than its own by more than this many noise scales (:func:`mirrored_points`).
MIRRORED_SCALES = 3.0


class CalibrationCurve(BaseModel):
    """Height (µm, relative to the focal plane) as a monotone function of the depth metric.

    ``metric_knots`` strictly increase; ``height_knots_um`` strictly increase or strictly decrease.
    ``kind="linear"`` has two knots (the line's ends over the calibrated metric range), ``"monotone"``
    any number from two. Between knots: monotone cubic Hermite interpolation; outside them: a straight
    line with the slope of the end segment (see the module notes).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: CurveKind
    metric_knots: list[float]
    height_knots_um: list[float]

    @field_validator("metric_knots", "height_knots_um")
    @classmethod
    def _finite(cls, v: list[float]) -> list[float]:
        if len(v) < 2:
            raise ValueError("a calibration curve needs at least two knots")
        if not all(math.isfinite(x) for x in v):
            raise ValueError("knots must be finite numbers")
        return v

    @model_validator(mode="after")
    def _monotone(self) -> CalibrationCurve:
        m = np.asarray(self.metric_knots)
        h = np.asarray(self.height_knots_um)
        if len(m) != len(h):
            raise ValueError(f"{len(m)} metric knots for {len(h)} height knots")
        if not (np.diff(m) > 0).all():
            raise ValueError("metric_knots must strictly increase")
        dh = np.diff(h)
        if not ((dh > 0).all() or (dh < 0).all()):
            raise ValueError("height_knots_um must be strictly monotone")
        if self.kind == "linear" and len(m) != 2:
            raise ValueError("a linear calibration curve has exactly two knots")
        return self

    def height_um(self, metric: np.ndarray) -> np.ndarray:
        """Height (µm) for metric values of any shape, float32 (NaN stays NaN)."""
        return _hermite(self.metric_knots, self.height_knots_um, metric)[0].astype(np.float32)

    def height_per_metric_um(self, metric: np.ndarray) -> np.ndarray:
        """Local derivative d height / d metric (µm per metric unit), float32, never 0."""
        return _hermite(self.metric_knots, self.height_knots_um, metric)[1].astype(np.float32)

    @classmethod
    def from_line(cls, slope_um: float, offset_um: float, metric_lo: float, metric_hi: float) -> CalibrationCurve:
        """The line ``height = slope_um * metric + offset_um`` as a two-knot curve over a metric range."""
        if not metric_hi > metric_lo:
            raise InputError("the metric does not change over the calibration points: no calibration possible")
        return cls(kind="linear", metric_knots=[float(metric_lo), float(metric_hi)],
                   height_knots_um=[float(slope_um * metric_lo + offset_um), float(slope_um * metric_hi + offset_um)])


def _hermite(xk: list[float], yk: list[float], metric: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value and derivative of the monotone Hermite curve through ``(xk, yk)``, linear beyond the ends."""
    x = np.asarray(xk, dtype=np.float64)
    y = np.asarray(yk, dtype=np.float64)
    m = np.asarray(metric, dtype=np.float64)
    h = np.diff(x)
    secant = np.diff(y) / h
    d = np.empty_like(x)
    d[0], d[-1] = secant[0], secant[-1]
    if len(x) > 2:  # PCHIP (Fritsch-Butland) weighted harmonic mean, as scipy's PchipInterpolator
        w1 = 2 * h[1:] + h[:-1]
        w2 = h[1:] + 2 * h[:-1]
        d[1:-1] = (w1 + w2) / (w1 / secant[:-1] + w2 / secant[1:])
    k = np.clip(np.searchsorted(x, m, side="right") - 1, 0, len(h) - 1)
    t = (m - x[k]) / h[k]
    t2, t3 = t * t, t * t * t
    value = ((2 * t3 - 3 * t2 + 1) * y[k] + (t3 - 2 * t2 + t) * h[k] * d[k]
             + (-2 * t3 + 3 * t2) * y[k + 1] + (t3 - t2) * h[k] * d[k + 1])
    slope = ((6 * t2 - 6 * t) * y[k] + (3 * t2 - 4 * t + 1) * h[k] * d[k]
             + (-6 * t2 + 6 * t) * y[k + 1] + (3 * t2 - 2 * t) * h[k] * d[k + 1]) / h[k]
    # Beyond the knots: the mean slope of the calibrated range. The end intervals' own slopes would
    # amplify the metric's noise where it saturates (far from focus the network's focus flattens).
    overall = (y[-1] - y[0]) / (x[-1] - x[0])
    below, above = m < x[0], m > x[-1]
    value = np.where(below, y[0] + overall * (m - x[0]), np.where(above, y[-1] + overall * (m - x[-1]), value))
    slope = np.where(below | above, overall, slope)
    return value, slope


# -- fitting ----------------------------------------------------------------------------------------


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The weighted median (the lower one at an exact tie). NaN when all weights are 0."""
    values = np.asarray(values, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    keep = weights > 0
    if not keep.any():
        return float("nan")
    order = np.argsort(values[keep], kind="stable")
    v, w = values[keep][order], weights[keep][order]
    cum = np.cumsum(w)
    return float(v[np.searchsorted(cum, 0.5 * cum[-1])])


def mirrored_points(value: np.ndarray, trend: np.ndarray, mirrored_value: np.ndarray | None = None) -> np.ndarray:
    """Points that read the mirrored value: nearer ``trend`` mirrored than as read, by more than
    :data:`MIRRORED_SCALES` noise scales.

    A window whose astigmatism sign is wrong reads the metric ``-g(height)`` instead of ``g(height)``.
    ``value`` is what the points read and ``trend`` what they should read; ``mirrored_value`` what each
    would read with the other sign (default ``-value``, for metrics; depths pass the calibration's depth
    of ``-metric``). The noise scale is 1.4826 × the median absolute deviation of ``value - trend``
    over the points given. Near focus (``trend`` about 0) the two readings cannot be told apart and
    nothing is flagged. ``(n,)`` bool.
    """
    value = np.asarray(value, dtype=np.float64)
    trend = np.asarray(trend, dtype=np.float64)
    mirror = -value if mirrored_value is None else np.asarray(mirrored_value, dtype=np.float64)
    resid = value - trend
    scale = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
    return np.abs(resid) - np.abs(mirror - trend) > MIRRORED_SCALES * scale


def _binned_weighted_median(values: np.ndarray, weights: np.ndarray, bin_id: np.ndarray) -> np.ndarray:
    """:func:`weighted_median` of every bin at once (positive weights; bins ``0 .. bin_id.max()``, none empty)."""
    order = np.lexsort((values, bin_id))
    cum = np.cumsum(weights[order])
    total = np.bincount(bin_id, weights=weights)
    start = np.concatenate([[0.0], np.cumsum(total)[:-1]])
    idx = np.searchsorted(cum, start + 0.5 * total)
    return values[order][np.minimum(idx, len(cum) - 1)]


def _isotonic(values: np.ndarray, weights: np.ndarray) -> list[tuple[float, float, list[int]]]:
    """Pool-adjacent-violators for a non-decreasing fit: blocks of ``(value, weight, member indices)``."""
    blocks: list[tuple[float, float, list[int]]] = []
    for i, (v, w) in enumerate(zip(values, weights)):
        blocks.append((float(v), float(w), [i]))
        while len(blocks) > 1 and blocks[-2][0] >= blocks[-1][0]:
            (v1, w1, i1), (v2, w2, i2) = blocks[-2], blocks[-1]
            blocks[-2:] = [((v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, i1 + i2)]
    return blocks


def _explained(values: np.ndarray, weights: np.ndarray, fitted: np.ndarray) -> float:
    """Fraction of the weighted variance of ``values`` that ``fitted`` explains."""
    total = float(np.sum(weights * (values - np.average(values, weights=weights)) ** 2))
    return 1.0 - float(np.sum(weights * (values - fitted) ** 2)) / total if total > 0 else 0.0


def _height_bins(height: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Indices of ``n_bins`` bins of about equal size along height; equal heights share a bin."""
    order = np.argsort(height, kind="stable")
    sorted_h = height[order]
    target = len(height) / n_bins
    bins, start = [], 0
    while start < len(order):
        stop = min(len(order), max(start + 1, round((len(bins) + 1) * target)))
        while stop < len(order) and sorted_h[stop] == sorted_h[stop - 1]:
            stop += 1  # never split points of the same height
        bins.append(order[start:stop])
        start = stop
    if len(bins) > 1 and len(bins[-1]) < 0.5 * target:  # a stub at the end joins its neighbour
        bins[-2:] = [np.concatenate(bins[-2:])]
    return bins


def fit_monotone_curve(height_um: np.ndarray, metric: np.ndarray, weight: np.ndarray | None = None, *,
                       increasing: bool = True, min_slope: float = 0.0,
                       min_points_per_knot: int = MIN_POINTS_PER_KNOT,
                       max_knots: int = MAX_KNOTS) -> CalibrationCurve:
    """Fit a monotone curve ``height = f(metric)`` to points of known height (see the module notes).

    Parameters
    ----------
    height_um, metric, weight
        ``(n,)`` the points; weights default to 1.
    increasing
        Whether the metric grows with height (the robust line's slope tells).
    min_slope
        Smallest |d metric / d height| (metric units per µm) anywhere on the curve: the isotonic fit is
        made of ``metric - min_slope * height``, so no stretch between knots is flatter than this (and
        none of the inverted curve steeper than its inverse).
    min_points_per_knot, max_knots
        Binning: ``min(max_knots, n // min_points_per_knot)`` bins of equal size along height.

    Raises
    ------
    InputError
        Too few points, or a metric that does not change monotonically with height (fewer than two
        knots survive, or the monotone fit explains less than :data:`MIN_MONOTONE_EXPLAINED` of the
        variance of the binned medians).
    """
    h = np.asarray(height_um, dtype=np.float64)
    m = np.asarray(metric, dtype=np.float64)
    w = np.ones_like(h) if weight is None else np.asarray(weight, dtype=np.float64)
    use = w > 0
    h, m, w = h[use], m[use], w[use]
    n_bins = min(int(max_knots), len(h) // max(1, int(min_points_per_knot)))
    if n_bins < 2:
        raise InputError(f"only {len(h)} usable points for a monotone calibration curve "
                         f"(needs at least {2 * min_points_per_knot})")
    bin_id = np.empty(len(h), dtype=int)
    for k, members in enumerate(_height_bins(h, n_bins)):
        bin_id[members] = k
    bin_h = _binned_weighted_median(h, w, bin_id)
    bin_w = np.bincount(bin_id, weights=w)
    sign = 1.0 if increasing else -1.0
    detrended, counted = m, w
    for _ in range(PASSES):
        # Later passes: the metric of each point moved along the first pass's curve to its bin's height,
        # so the bin median compares like with like: where the metric changes fast across a bin, mirrored
        # windows would otherwise pull the median by a sizeable fraction of the bin's own spread; and
        # points that match the mirrored curve clearly better than the curve are left out of the medians.
        bin_m = _binned_weighted_median(detrended, counted, bin_id)
        blocks = _isotonic(sign * bin_m - min_slope * bin_h, bin_w)
        block_of = np.empty(len(bin_h), dtype=int)
        for j, (_, _, members) in enumerate(blocks):
            block_of[members] = j
        fitted = np.array([v for v, _, _ in blocks])[block_of] + min_slope * bin_h
        if len(blocks) < 2 or _explained(sign * bin_m, bin_w, fitted) < MIN_MONOTONE_EXPLAINED:
            raise InputError("the metric does not change monotonically with height (the binned medians "
                             "show no monotone trend): no calibration possible")
        knot_h = np.bincount(block_of, weights=bin_h * bin_w) / np.bincount(block_of, weights=bin_w)
        knot_m = sign * (np.array([v for v, _, _ in blocks]) + min_slope * knot_h)
        trend = np.interp(h, knot_h, knot_m)
        detrended = m - trend + np.interp(bin_h, knot_h, knot_m)[bin_id]
        counted = np.where(mirrored_points(m, trend), 1e-9 * w, w)  # a tiny weight keeps every bin non-empty
    order = np.argsort(knot_m)
    return CalibrationCurve(kind="monotone", metric_knots=[float(x) for x in knot_m[order]],
                            height_knots_um=[float(x) for x in knot_h[order]])


@dataclasses.dataclass
class CurveFit:
    """A calibration curve fitted to :class:`CalibrationPoints`, with the offsets it implies."""

    curve: CalibrationCurve
    line: LineFit  # the robust line (the linear figures, and the start of the alternation)
    offsets_um: dict[int, float]  # unknown offset of each offset group
    heights_um: np.ndarray  # per point, offsets applied
    residuals_um: np.ndarray  # per point: depth from the curve - height
    iterations: int = 0  # alternation steps (0 for the line)

    @property
    def mean_abs_error_um(self) -> float:
        return float(np.mean(np.abs(self.residuals_um)))


def fit_curve(points: CalibrationPoints, kind: str = "monotone", *, what: str = "metric",
              min_points_per_knot: int = MIN_POINTS_PER_KNOT, max_iterations: int = 30,
              tolerance_um: float = 0.05) -> CurveFit:
    """Fit a calibration curve of ``kind`` (:data:`CURVES`) to points, solving unknown group offsets.

    ``"linear"``: the robust line (:func:`fit_points_line`) as a two-knot curve over the metric range of
    the points. ``"monotone"``: :func:`fit_monotone_curve` (``min_points_per_knot`` points per bin),
    alternating with the offsets from the line's start (see the module notes).

    Raises
    ------
    InputError
        Unknown kind, too few points, or a metric that does not change with height.
    """
    if kind not in CURVES:
        raise InputError(f"unknown calibration curve {kind!r}; choose one of {', '.join(CURVES)}")
    line = fit_points_line(points, what=what)
    used = points.weight > 0
    lo, hi = float(points.metric[used].min()), float(points.metric[used].max())
    if kind == "linear":
        curve = CalibrationCurve.from_line(line.slope_um, line.offset_um, lo, hi)
        return CurveFit(curve, line, dict(line.offsets_um), line.heights_um, line.residuals_um)
    offsets = dict(line.offsets_um)
    pinned = not (points.offset_group < 0).any()  # no exact height: metric 0 defines height 0
    curve, steps = None, 0
    for steps in range(1, max_iterations + 1):
        curve = fit_monotone_curve(points.heights_with(offsets), points.metric, points.weight,
                                   increasing=line.a > 0, min_slope=MIN_SLOPE_FRACTION * abs(line.a),
                                   min_points_per_knot=min_points_per_knot)
        new = group_offsets(curve, points)
        if pinned:  # shift curve and offsets together (residuals unchanged) so that metric 0 is height 0
            zero = float(curve.height_um(np.array(0.0)))
            curve = curve.model_copy(update={"height_knots_um": [y - zero for y in curve.height_knots_um]})
            new = {g: o - zero for g, o in new.items()}
        change = max((abs(new[g] - offsets[g]) for g in new), default=0.0)
        offsets = new
        if change < tolerance_um:
            break
    heights = points.heights_with(offsets)
    return CurveFit(curve, line, offsets, heights, curve.height_um(points.metric).astype(np.float64) - heights,
                    steps)


def group_offsets(curve: CalibrationCurve, points: CalibrationPoints) -> dict[int, float]:
    """Each unknown group's offset given the curve: weighted median of ``curve(metric) - height``."""
    gap = curve.height_um(points.metric).astype(np.float64) - points.height_um
    return {g: weighted_median(gap[points.offset_group == g], points.weight[points.offset_group == g])
            for g in points.unknown_groups}


def held_out_residuals(points: CalibrationPoints, kind: str = "monotone", *, what: str = "metric",
                       min_points_per_knot: int = MIN_POINTS_PER_KNOT) -> np.ndarray:
    """Leave-one-frame-out residuals (µm): each frame's points predicted by a fit on the other frames.

    A held-out frame whose offset group appears in the other frames (a z-stack's shared in-focus
    position, or an exactly known height) uses that group's fitted offset; a frame that is its own
    unknown offset group (a tilted frame with unknown in-focus position) gets its offset from its own
    points given the held-out fit (one number; the curve's shape is all that is tested). ``(n,)``; NaN
    for the points of a frame whose held-out fit was not possible (too few points left).

    Raises
    ------
    InputError
        Fewer than two frames.
    """
    frames = np.unique(points.frame)
    if len(frames) < 2:
        raise InputError("leave-one-frame-out needs at least two frames")
    out = np.full(len(points), np.nan)
    for k in frames:
        test = points.frame == k
        try:
            fit = fit_curve(points.subset(~test), kind, what=what, min_points_per_knot=min_points_per_knot)
        except InputError:
            continue
        held = points.subset(test)
        offsets = dict(fit.offsets_um)
        own = [g for g in held.unknown_groups if g not in offsets]
        if own:
            offsets.update(group_offsets(fit.curve, held.subset(np.isin(held.offset_group, own))))
        out[test] = fit.curve.height_um(held.metric).astype(np.float64) - held.heights_with(offsets)
    return out

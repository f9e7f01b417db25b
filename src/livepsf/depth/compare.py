"""Comparing two depth calibrations of one microscope (a tilted grid and a z-stack) like with like.

The metric a network reads is S-shaped in height (flat near focus and far out, steep near the lens's
line foci: :mod:`~livepsf.depth.curve`), so the slope of a straight line through it depends on which
heights the calibration points sample and how densely. The two protocols sample very differently: a
z-stack puts one point every stage step over its range, while a tilted grid puts a point per window
column, and its three tilts (and every frame) overlap near focus, so most of its points lie within
±20 µm of focus and only the steepest tilt reaches ±60-80 µm. Each calibration's own line
(``slope_um_per_unit``) is therefore a different average of the same curve.

Measured on the simulator (cells, shipped ``default`` model, 3 noise and sample draws): the flat stack's
readings, interpolated at the tilted points' heights, give the tilted grid's line within 0.2-4 %, while
the two calibrations' own lines differ by -5 to -11 %. The readings agree; the lines average them
differently. :func:`compare_slopes` fits the same quantity on both: the line through the metric's median
per height bin of equal width (every bin weighs the same, however many points fall in it), over the
height bins both calibrations have points in.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from livepsf.depth.calibration import Calibration
from livepsf.depth.curve import mirrored_points
from livepsf.errors import InputError

#: Width (µm) of the height bins: a few z-stack steps, and narrow against the curve's S (tens of µm).
SLOPE_BIN_UM = 5.0
#: Fewest height bins with points of both calibrations for a slope.
MIN_SLOPE_BINS = 4


@dataclasses.dataclass(frozen=True)
class SlopeComparison:
    """Two calibrations' slopes of the same metric over the same heights, with equal weight per bin.

    Attributes
    ----------
    metric
        The depth metric both calibrations use.
    low_um, high_um
        The common height range (µm relative to the focal plane) the slopes are fitted over.
    reference_slope_um_per_unit, other_slope_um_per_unit
        µm per metric unit of each calibration's binned line.
    n_bins
        Height bins (of :data:`SLOPE_BIN_UM` by default) with points of both calibrations: one point each
        behind each slope.
    """

    metric: str
    low_um: float
    high_um: float
    reference_slope_um_per_unit: float
    other_slope_um_per_unit: float
    n_bins: int

    @property
    def difference_pct(self) -> float:
        """``other`` relative to ``reference``, in percent."""
        return 100.0 * (self.other_slope_um_per_unit / self.reference_slope_um_per_unit - 1.0)


def height_bin_medians(height_um: np.ndarray, metric: np.ndarray, low_um: float, high_um: float,
                       bin_um: float = SLOPE_BIN_UM) -> dict[int, tuple[float, float]]:
    """The median height and median metric of the points in each height bin of ``[low_um, high_um]``.

    Bins of ``bin_um`` from ``low_um``; only occupied bins are returned, as ``{bin index: (median height
    µm, median metric)}``. A median per bin makes a height sampled by many points weigh no more than one
    sampled by a few, and windows that read the mirrored metric do not move a bin unless they are half of it.

    Raises
    ------
    InputError
        A bad bin width or range.
    """
    if not (bin_um > 0 and math.isfinite(bin_um)):
        raise InputError(f"height bin width must be a positive number of µm, got {bin_um}")
    if not (math.isfinite(low_um) and math.isfinite(high_um) and high_um > low_um):
        raise InputError(f"height range must be finite and increasing, got [{low_um}, {high_um}] µm")
    h = np.asarray(height_um, dtype=np.float64).ravel()
    m = np.asarray(metric, dtype=np.float64).ravel()
    keep = np.isfinite(h) & np.isfinite(m) & (h >= low_um) & (h <= high_um)
    h, m = h[keep], m[keep]
    index = np.minimum(np.floor((h - low_um) / bin_um), math.floor((high_um - low_um) / bin_um)).astype(int)
    return {int(k): (float(np.median(h[index == k])), float(np.median(m[index == k]))) for k in np.unique(index)}


def compare_slopes(reference: Calibration, other: Calibration, bin_um: float = SLOPE_BIN_UM) -> SlopeComparison:
    """Slopes of two calibrations of one microscope, fitted alike over the heights both cover.

    From the calibration points each calibration keeps (``Calibration.points``: a z-stack's median per
    stage position, a tilted grid's median per window column): the median per height bin
    (:func:`height_bin_medians`) over the common height range, and for each calibration the least-squares
    line through its medians of the bins *both* calibrations have points in (every bin weighs the same),
    inverted to µm per metric unit. Unlike the calibrations' own ``slope_um_per_unit``, it does not depend
    on how densely each protocol sampled which heights. (Least squares, not robust: the bins' residuals
    about the line are the curve's S shape, which a robust fit would down-weight where it bends most.)

    Parameters
    ----------
    reference, other
        Calibrations of the same metric (e.g. a tilted grid and a z-stack).
    bin_um
        Height bin width (µm).

    Raises
    ------
    InputError
        Calibrations of different metrics (refit one with ``metric=`` / ``--metric``), a calibration
        without points (written before they were kept), fewer than :data:`MIN_SLOPE_BINS` height bins
        with points of both, or a metric that does not change with height there.
    """
    if reference.metric != other.metric:
        raise InputError(f"the calibrations use different depth metrics ({reference.metric} and {other.metric}): "
                         f"calibrate one again with --metric {reference.metric}")
    points = []
    for name, cal in (("reference", reference), ("other", other)):
        if not cal.points:
            raise InputError(f"the {name} calibration keeps no calibration points (an older file): "
                             "calibrate again to compare slopes")
        h = np.array([p.height_um for p in cal.points])
        m = np.array([p.metric for p in cal.points])
        # Points that read the mirrored metric (the network's side of focus wrong in most windows of a column)
        # are left out, as the curve's fit leaves them out: a bin of one or two points has no median to do it.
        mirrored = mirrored_points(cal.metric_to_depth_um(m), h, cal.metric_to_depth_um(-m))
        points.append((h[~mirrored], m[~mirrored]))
    low = max(float(h.min()) for h, _ in points)
    high = min(float(h.max()) for h, _ in points)
    if not high > low:
        raise InputError("the calibrations cover no common height range: nothing to compare")
    ref_bins, other_bins = (height_bin_medians(h, m, low, high, bin_um) for h, m in points)
    common = sorted(set(ref_bins) & set(other_bins))
    if len(common) < MIN_SLOPE_BINS:
        raise InputError(f"only {len(common)} height bins of {bin_um:g} µm hold points of both calibrations in "
                         f"[{low:.1f}, {high:.1f}] µm; comparing slopes needs {MIN_SLOPE_BINS}")
    slopes = []
    for bins in (ref_bins, other_bins):
        heights, metrics = np.array([bins[k] for k in common]).T
        a = float(np.polyfit(heights, metrics, 1)[0])
        if not math.isfinite(a) or abs(a) < 1e-12:
            raise InputError("the metric does not change with height over the common range: no slope")
        slopes.append(1.0 / a)
    return SlopeComparison(reference.metric, low, high, slopes[0], slopes[1], len(common))

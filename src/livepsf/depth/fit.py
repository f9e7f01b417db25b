"""The fit shared by every depth calibration (tilted grid, z-stack), up to the choice of metric.

Given calibration points (metric value and known height per point, grouped by frame) for each metric:
checks on the PSF maps, the lens direction and strength, each metric's calibration curve with its
leave-one-frame-out residuals (a monotone curve that cannot be fitted falls back to the line), the choice
of metric, and the warnings a calibration carries. What the points are (tilted-grid profiles, z-stack
medians) is the caller's: :mod:`~livepsf.depth.tilted_grid`, :mod:`~livepsf.depth.zstack`. The results
become a :class:`~livepsf.depth.calibration.Calibration` in
:func:`~livepsf.depth.calibration.assemble_calibration`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from livepsf.depth.curve import CURVE_CHOICES, MIN_POINTS_PER_KNOT, CurveFit, fit_curve, held_out_residuals
from livepsf.depth.metrics import (
    METRICS,
    estimate_lens_direction,
    estimate_lens_strength,
    require_astigmatic,
    unit_vector,
)
from livepsf.depth.profiles import CalibrationPoints, fit_points_line
from livepsf.depth.robust import r_squared
from livepsf.depth.texture import WindowTexture, gate_texture, reliable_windows
from livepsf.errors import InputError
from livepsf.mapping import PSFMap

#: Below this R² of the depth fit a calibration carries a warning in :attr:`Calibration.notes`.
POOR_FIT_R2 = 0.9
#: A calibration warns when its leave-one-frame-out mean |error| exceeds both this many times the
#: in-sample mean |error| and the in-sample error plus :data:`LOFO_WARN_MARGIN_UM`: the curve then
#: follows the calibration frames rather than the microscope (too few frames, or frames that disagree).
LOFO_WARN_RATIO = 1.5
LOFO_WARN_MARGIN_UM = 1.0
#: A monotone calibration says so when the line's leave-one-frame-out error is lower than the curve's by
#: more than this and more than 10 % (the data may not support an S shape; the curve is still used).
LINE_BETTER_MARGIN_UM = 0.5


def check_calibration_maps(
    pmaps: Sequence[PSFMap], metric: str | None, frames: Sequence[np.ndarray] | None,
    max_texture_coherence: float | None,
) -> tuple[list, float | None, list[np.ndarray], list[WindowTexture | None]]:
    """Checks shared by every calibration.

    Returns ``(frames or Nones, gate used, reliable windows per map, texture per frame)``; the texture
    (``None`` without the gate) is measured once here and passed on to the σ model's fit.

    Raises
    ------
    InputError
        Maps of different networks, a mixture of dihedral-averaged and plain maps, maps not of a Z-3
        model, an unknown metric, a frame count that does not match, or (almost) no reliable window.
    """
    identities = {(p.model_name, p.model_sha256) for p in pmaps}
    if len(identities) > 1:
        raise InputError(f"calibration frames were mapped by different models: {sorted(identities)}")
    averaged = sum(bool(p.dihedral_average) for p in pmaps)
    if 0 < averaged < len(pmaps):  # the metric reads differently on averaged maps: one curve cannot fit both
        raise InputError(f"{averaged} of {len(pmaps)} calibration PSF maps are dihedral averages and the others "
                         "plain: map every frame the same way (with or without dihedral averaging)")
    for p in pmaps:
        require_astigmatic(p)
    if metric is not None and metric not in METRICS:
        raise InputError(f"unknown depth metric {metric!r}; choose one of {', '.join(METRICS)}")
    if frames is not None and len(frames) != len(pmaps):
        raise InputError(f"{len(frames)} frames for {len(pmaps)} PSF maps")
    gate = max_texture_coherence if frames is not None else None
    frame_list = list(frames) if frames is not None else [None] * len(pmaps)
    textures = [gate_texture(f, p, gate) for p, f in zip(pmaps, frame_list)]
    valid = [reliable_windows(p, f, gate, texture=t) for p, f, t in zip(pmaps, frame_list, textures)]
    if sum(int(v.sum()) for v in valid) < 4:
        raise InputError("(almost) every window is invalid or has one-directional texture: "
                         "nothing to calibrate on")
    return frame_list, gate, valid, textures


def lens_from_maps(pmaps: Sequence[PSFMap], valid: Sequence[np.ndarray],
                   lens_direction: Sequence[float] | None) -> tuple[tuple[float, float], float]:
    """Lens direction (estimated unless given; sign still arbitrary) and strength from the reliable windows."""
    keep = np.concatenate([v.ravel() for v in valid])
    if lens_direction is None:
        u = estimate_lens_direction(np.concatenate([p.values("astig_0").ravel() for p in pmaps]),
                                    np.concatenate([p.values("astig_45").ravel() for p in pmaps]), keep)
    else:
        u = unit_vector(lens_direction)
    strength = estimate_lens_strength(*(np.concatenate([p.values(n).ravel() for p in pmaps])
                                        for n in ("focus", "astig_0", "astig_45")), u, keep)
    return u, strength


@dataclasses.dataclass
class MetricResult:
    """One metric's calibration points, its curve fit and its leave-one-frame-out residuals."""

    name: str
    points: CalibrationPoints
    fit: CurveFit
    held_out_um: np.ndarray | None  # per point; None with a single frame
    line_held_out_um: np.ndarray | None = None  # the line's, when the curve is not the line
    note: str = ""  # why the fit is not the one asked for (a monotone curve that could not be fitted)

    @property
    def r2(self) -> float:
        return r_squared(self.fit.heights_um, self.fit.heights_um + self.fit.residuals_um)

    def lofo_mean_abs_error_um(self, select: np.ndarray | None = None) -> float | None:
        """Mean |held-out error| (of the selected points); None when no held-out fit was possible."""
        return _mean_abs(self.held_out_um, select)

    def line_lofo_mean_abs_error_um(self) -> float | None:
        """Mean |held-out error| of the line (None unless the calibration's curve is monotone)."""
        return _mean_abs(self.line_held_out_um)


def _mean_abs(residuals: np.ndarray | None, select: np.ndarray | None = None) -> float | None:
    if residuals is None:
        return None
    res = residuals if select is None else residuals[select]
    res = res[np.isfinite(res)]
    return float(np.mean(np.abs(res))) if len(res) else None


def fit_metrics(points_for: Callable[[tuple[float, float]], dict[str, CalibrationPoints]],
                u: tuple[float, float], orient: bool, curve: str,
                min_points_per_knot: int = MIN_POINTS_PER_KNOT) -> tuple[tuple[float, float], dict[str, MetricResult]]:
    """Fit the calibration curve of every metric, with leave-one-frame-out residuals.

    With ``orient`` the lens direction is flipped first when the signed metric falls with height
    (cosmetic: positive slopes). Returns the (oriented) lens direction and the results per metric.
    """
    options = {"min_points_per_knot": min_points_per_knot}
    if curve not in CURVE_CHOICES:
        raise InputError(f"unknown calibration curve {curve!r}; choose one of {', '.join(CURVE_CHOICES)}")
    points = points_for(u)
    if orient:
        try:
            falls = fit_points_line(points["signed"], what="signed metric").a < 0
        except InputError:
            falls = False  # no line through the signed metric: keep the direction as estimated
        if falls:
            u = (-u[0], -u[1])
            points = points_for(u)
    results, failures = {}, {}
    for name in METRICS:
        try:
            results[name] = _fit_metric_curve(name, points[name], curve, options)
        except InputError as exc:
            failures[name] = str(exc)
    if not results:
        raise InputError("no depth metric could be calibrated: "
                         + "; ".join(f"{name}: {reason}" for name, reason in failures.items()))
    return u, results


def _fit_metric_curve(name: str, points: CalibrationPoints, curve: str, options: dict[str, Any]) -> MetricResult:
    """One metric's fit of the requested curve; ``"auto"``: the monotone curve unless the line predicts
    held-out frames better. A monotone curve that cannot be fitted falls back to the line (noted)."""
    if curve == "linear":
        return _fit_metric(name, points, "linear", {})
    try:
        result = _fit_metric(name, points, "monotone", options)
    except InputError as exc:
        # The metric's relation to height is too noisy for a monotone curve: the line may still hold.
        line = _fit_metric(name, points, "linear", {})
        line.note = f"no monotone curve for the {name} metric ({exc}); the line is used"
        return line
    curve_lofo, line_lofo = result.lofo_mean_abs_error_um(), result.line_lofo_mean_abs_error_um()
    if curve == "auto" and curve_lofo is not None and line_lofo is not None and line_lofo < curve_lofo:
        return _fit_metric(name, points, "linear", {})  # the choice shows in the curve's kind, no warning
    return result


def _fit_metric(name: str, points: CalibrationPoints, curve: str, options: dict[str, Any]) -> MetricResult:
    what = f"{name} metric"
    fit = fit_curve(points, curve, what=what, **options)
    several = len(np.unique(points.frame)) > 1
    held = held_out_residuals(points, curve, what=what, **options) if several else None
    line_held = held_out_residuals(points, "linear", what=what) if several and curve != "linear" else None
    return MetricResult(name, points, fit, held, line_held)


def choose_metric(results: dict[str, MetricResult], metric: str | None) -> str:
    """The forced metric, or the one whose curve predicts held-out frames best (in-sample with one frame)."""
    if metric is not None:
        if metric not in results:
            raise InputError(f"the {metric} metric could not be calibrated on these frames; "
                             f"leave the metric to be chosen, or choose one of {', '.join(results)}")
        return metric

    def score(name: str) -> tuple[float, int]:
        lofo = results[name].lofo_mean_abs_error_um()
        return (lofo if lofo is not None else results[name].fit.mean_abs_error_um, METRICS.index(name))

    return min(results, key=score)


def fit_notes(result: MetricResult) -> str:
    """Warnings of a calibration: a poor fit, held-out frames much worse than in-sample, or no LOFO."""
    notes = [result.note] if result.note else []
    r2 = result.r2
    if not r2 >= POOR_FIT_R2:
        notes.append(f"poor fit (R² {r2:.3f} < {POOR_FIT_R2}): the network does not read depth from "
                     "these frames reliably; check the lens is in, the tilt values and the texture of the frames")
    in_sample = result.fit.mean_abs_error_um
    lofo = result.lofo_mean_abs_error_um()
    if result.held_out_um is None:
        notes.append("one frame only: leave-one-frame-out error not available (calibrate on two or more "
                     "frames to see how the curve does on frames it was not fitted on)")
    elif lofo is None:
        notes.append("leave-one-frame-out not possible: too few points without each frame")
    elif lofo > LOFO_WARN_RATIO * in_sample and lofo > in_sample + LOFO_WARN_MARGIN_UM:
        notes.append(f"held-out frames are predicted much worse than the calibration frames "
                     f"(leave-one-frame-out {lofo:.2f} µm vs in-sample {in_sample:.2f} µm): the "
                     f"{result.fit.curve.kind} curve follows these frames, not the microscope; "
                     "calibrate on more frames, or use --curve linear")
    line_lofo = result.line_lofo_mean_abs_error_um()
    if lofo is not None and line_lofo is not None and line_lofo < lofo - max(LINE_BETTER_MARGIN_UM,
                                                                            0.1 * lofo):
        notes.append(f"the line predicts held-out frames better than the monotone curve "
                     f"({line_lofo:.2f} vs {lofo:.2f} µm): consider --curve linear")
    return "; ".join(notes)

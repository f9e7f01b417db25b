"""The depth calibration (a pydantic model stored as JSON) and the tilted-grid calibration."""

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

from livepsf.depth.curve import (
    CURVE_CHOICES,
    MIN_POINTS_PER_KNOT,
    CalibrationCurve,
    CurveFit,
    fit_curve,
    held_out_residuals,
)
from livepsf.depth.metrics import (
    METRICS,
    Metric,
    depth_metric,
    estimate_lens_direction,
    estimate_lens_strength,
    require_astigmatic,
    unit_vector,
)
from livepsf.depth.profiles import (
    CalibrationPoints,
    TiltProfile,
    check_tilt_axis,
    fit_points_line,
    in_focus_from_offset,
    points_from_profiles,
    profile_along_axis,
    profile_points_ok,
)
from livepsf.depth.robust import r_squared
from livepsf.depth.texture import MAX_TEXTURE_COHERENCE, reliable_windows
from livepsf.depth.uncertainty import DepthEstimate, DepthUncertainty, fit_depth_uncertainty, metric_sigma
from livepsf.errors import InputError
from livepsf.mapping import PSFMap

TiltAxis = Literal["x", "y"]
Source = Literal["tilted-grid", "z-stack"]
FORMAT = "livepsf-depth-calibration"
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
    lofo_mean_abs_error_um: float | None = Field(
        default=None, description="mean |error| of this frame predicted by a fit without it (None: not possible)")


class ZStackResidual(BaseModel):
    """Fit quality at one stage position of a z-stack calibration."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    z_um: float = Field(description="stage position")
    height_um: float = Field(description="known height of the sample relative to the focal plane")
    n_points: int
    n_windows: int = Field(description="reliable windows of the frame")
    metric: float = Field(description="median metric of the reliable windows")
    mean_abs_error_um: float
    lofo_mean_abs_error_um: float | None = Field(
        default=None, description="mean |error| predicted by a fit without this stage position")


class MetricSummary(BaseModel):
    """The figures of one metric's fit (all metrics are kept for comparison)."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    metric: Metric
    slope_um_per_unit: float
    offset_um: float
    r2: float
    mean_abs_error_um: float
    sd_abs_error_um: float
    curve_mean_abs_error_um: float | None = Field(
        default=None, description="in-sample mean |error| of the calibration curve fitted on this metric")
    lofo_mean_abs_error_um: float | None = Field(
        default=None, description="leave-one-frame-out mean |error| of that curve (None: one frame)")
    line_lofo_mean_abs_error_um: float | None = Field(
        default=None, description="leave-one-frame-out mean |error| of the line (monotone calibrations)")


class CalibrationPoint(BaseModel):
    """One profile point of the fit, kept so the plot can be redrawn from the JSON alone."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    frame: int
    tilt_deg: float | None = Field(description="tilt of the frame (None for a z-stack)")
    position_px: float | None = Field(description="position along the tilt axis (None: a z-stack frame's median)")
    height_um: float
    metric: float
    z_um: float | None = Field(default=None, description="stage position (z-stack calibrations)")


class Calibration(BaseModel):
    """Depth calibration: converts a PSF map of one network into depth in µm.

    ``depth_um = curve(metric)``, with the metric computed from the PSF map and the lens direction as
    in :func:`depth_metric` and the curve a :class:`~livepsf.depth.curve.CalibrationCurve` (format 2;
    monotone, or the line). ``slope_um_per_unit`` and ``offset_um`` always hold the robust line's fit
    (kept for comparison); files of format 1 have no curve and use the line, exactly as before. Saved
    as JSON (:meth:`save`, :meth:`load`).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), ser_json_inf_nan="constants")

    format: Literal["livepsf-depth-calibration"] = FORMAT
    format_version: Literal[1, 2] = 2
    source: Source = Field(default="tilted-grid", description="what the calibration was fitted on")
    metric: Metric
    slope_um_per_unit: float
    offset_um: float
    lens_direction: tuple[float, float] = Field(description="unit vector in the (astig_0, astig_45) plane")
    lens_strength_waves: float = Field(gt=0, description="lens astigmatism measured along lens_direction")
    tilt_axis: TiltAxis | None = Field(description="axis along which the tilted grid's height grows "
                                       "(None for a z-stack)")
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
    curve: CalibrationCurve | None = Field(
        default=None, description="metric -> height (format 2); None: the line slope/offset (format 1)")
    lofo_mean_abs_error_um: float | None = Field(
        default=None, description="leave-one-frame-out mean |error| of the curve (None: one frame)")
    per_z: list[ZStackResidual] = Field(default_factory=list, description="z-stack: per stage position")
    uncertainty: DepthUncertainty | None = Field(
        default=None, description="per-window depth σ measured on the calibration frames (None: older files)")

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

    def metric_to_depth_um(self, metric: np.ndarray) -> np.ndarray:
        """Depth (µm, height relative to the focal plane) for metric values of any shape, float32.

        Through the calibration curve (format 2), or the line ``slope_um_per_unit * metric + offset_um``
        (format 1 files, no curve). Beyond the calibrated metric range the curve continues as a straight
        line with its end slope. NaN stays NaN.
        """
        if self.curve is not None:
            return self.curve.height_um(metric)
        # In the metric's own precision, as format-1 calibrations always computed it.
        return (self.slope_um_per_unit * np.asarray(metric) + self.offset_um).astype(np.float32)

    def depth_per_metric_um(self, metric: np.ndarray) -> np.ndarray:
        """Local derivative d depth / d metric (µm per metric unit) at metric values of any shape, float32.

        Turns a metric σ into a depth σ; constant (the slope) for a line.
        """
        if self.curve is not None:
            return self.curve.height_per_metric_um(metric)
        m = np.asarray(metric, dtype=np.float64)
        return np.where(np.isnan(m), np.nan, self.slope_um_per_unit).astype(np.float32)

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
        depth = self.metric_to_depth_um(self.metric_map(pmap))
        gated = frame is not None and self.max_texture_coherence is not None
        ok = reliable_windows(pmap, frame if gated else None, self.max_texture_coherence)
        if median_windows > 1 and ok.any():
            depth = _masked_median(depth, ok, int(median_windows))
        if gated and ok.any():
            depth = fill_invalid(depth, ~ok)
        return depth

    def depth_estimate(self, pmap: PSFMap, frame: np.ndarray | None = None) -> DepthEstimate:
        """Each window's own depth with its σ (µm): see :mod:`livepsf.depth.uncertainty`.

        Windows flagged invalid, and, when ``frame`` is given and the calibration used the texture gate,
        windows of one-directional texture, get σ = inf; their depth is the window's own value, not
        filled from neighbours (:meth:`depth_um` fills them). Calibrations without a measured σ model
        (files written before it existed) use their mean |error| x 1.25 (the σ of a normal error with
        that mean |error|) for every reliable window.
        """
        self.check_model(pmap)
        metric = self.metric_map(pmap)
        depth = self.metric_to_depth_um(metric)
        gated = frame is not None and self.max_texture_coherence is not None
        ok = reliable_windows(pmap, frame if gated else None, self.max_texture_coherence)
        if self.uncertainty is not None:
            net = metric_sigma(pmap, self.metric, self.lens_direction, self.lens_strength_waves)
            sigma = self.uncertainty.sigma_um(depth, net)
        else:
            sigma = np.full(depth.shape, 1.25 * self.mean_abs_error_um, dtype=np.float32)
        sigma = np.where(ok & np.isfinite(depth), sigma, np.inf).astype(np.float32)
        return DepthEstimate(depth_um=depth.astype(np.float32), sigma_um=sigma)

    def depth_um_full(self, pmap: PSFMap, shape: tuple[int, int] | None = None,
                      frame: np.ndarray | None = None, median_windows: int = 1) -> np.ndarray:
        """Full-frame depth map in µm (bilinear between window centres, as :meth:`PSFMap.upsample`)."""
        grid = self.depth_um(pmap, frame, median_windows)
        # PSFMap.upsample interpolates named parameter grids; carry the depth grid in a one-parameter
        # map (G-1's "variance" slot) so the interpolation is exactly the mapper's.
        carrier = dataclasses.replace(pmap, params={"variance": grid}, psf_model="G-1", sigma={})
        return carrier.upsample(shape, name="variance")

    def summary(self) -> str:
        """One line for people: metric, curve, slope, R², in-sample and leave-one-frame-out error."""
        curve = ("line" if self.curve is None or self.curve.kind == "linear"
                 else f"monotone curve ({len(self.curve.metric_knots)} knots)")
        lofo = ("" if self.lofo_mean_abs_error_um is None
                 else f", leave-one-frame-out {self.lofo_mean_abs_error_um:.2f} µm")
        return (f"{self.metric} metric, {curve}: line {self.slope_um_per_unit:.3f} µm/unit, "
                f"offset {self.offset_um:+.2f} µm, R² {self.r2:.4f}, "
                f"mean |error| {self.mean_abs_error_um:.2f} ± {self.sd_abs_error_um:.2f} µm{lofo}")


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
    curve: str = "monotone",
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
    curve
        ``"monotone"`` (default; :mod:`livepsf.depth.curve`), ``"linear"`` (the robust line) or
        ``"auto"`` (per metric, the monotone curve unless the line predicts held-out frames better; on
        the simulator this picked lines that extrapolate badly beyond the calibrated depths). The
        line's figures are kept in the calibration either way. Every metric's curve is also fitted
        leaving out each frame in turn; the metric whose curve predicts the held-out frames best is
        used, and the calibration warns when held-out frames are predicted much worse than the
        calibration frames (:data:`LOFO_WARN_RATIO`, :data:`LOFO_WARN_MARGIN_UM`).
    """
    if not pmaps:
        raise InputError("no frames to calibrate")
    tilt_axis = check_tilt_axis(tilt_axis)
    tilts = _per_frame(tilt_deg, len(pmaps), "tilt_deg")
    foci = _per_frame(in_focus_px, len(pmaps), "in_focus_px")
    frame_list, gate, valid = check_calibration_maps(pmaps, metric, frames, max_texture_coherence)
    u, strength = lens_from_maps(pmaps, valid, lens_direction)

    def profiles_for(direction: tuple[float, float]) -> list[TiltProfile]:
        out = []
        for p, v, t, f in zip(pmaps, valid, tilts, foci):
            maps = {name: depth_metric(p, name, direction, strength) for name in METRICS}
            centers = p.centers_x if tilt_axis == "x" else p.centers_y
            extent = p.frame_shape[1] if tilt_axis == "x" else p.frame_shape[0]
            out.append(profile_along_axis(maps, centers, tilt_axis, v, t, f, extent, aggregate))
        return out

    def points_for(direction: tuple[float, float]) -> dict[str, CalibrationPoints]:
        profiles = profiles_for(direction)
        return {name: points_from_profiles(profiles, name, pixel_size_um) for name in METRICS}

    u, results = fit_metrics(points_for, u, lens_direction is None, curve)
    chosen = choose_metric(results, metric)
    profiles = profiles_for(u)
    result = results[chosen]
    positions = [prof.position_px[profile_points_ok(prof, chosen)] for prof in profiles]
    points = [CalibrationPoint(frame=int(i), tilt_deg=profiles[i].tilt_deg, position_px=float(x),
                               height_um=float(h), metric=float(m))
              for i, x, h, m in zip(result.points.frame, np.concatenate(positions), result.fit.heights_um,
                                    result.points.metric)]
    cal = assemble_calibration(
        pmaps, results, chosen, u, strength, pixel_size_um, gate, source="tilted-grid", tilt_axis=tilt_axis,
        per_tilt=_per_tilt(result, profiles, pixel_size_um), points=points)
    return with_measured_uncertainty(cal, [
        (p, f, window_heights_um(p, r.tilt_deg, r.in_focus_px, pixel_size_um, tilt_axis))
        for p, f, r in zip(pmaps, frame_list, cal.per_tilt)])


def window_heights_um(pmap: PSFMap, tilt_deg: float, in_focus_px: float, pixel_size_um: float,
                      tilt_axis: str) -> np.ndarray:
    """Known height (µm, relative to the focal plane) of each window of a tilted-grid frame, ``(gy, gx)``."""
    gradient = pixel_size_um * math.tan(math.radians(tilt_deg))
    if check_tilt_axis(tilt_axis) == "x":
        heights = (np.asarray(pmap.centers_x, dtype=np.float64) - in_focus_px) * gradient
        return np.broadcast_to(heights[None, :], pmap.invalid.shape).copy()
    heights = (np.asarray(pmap.centers_y, dtype=np.float64) - in_focus_px) * gradient
    return np.broadcast_to(heights[:, None], pmap.invalid.shape).copy()


def with_measured_uncertainty(cal: Calibration,
                              windows: Sequence[tuple[PSFMap, np.ndarray | None, np.ndarray]]) -> Calibration:
    """``cal`` with its per-window σ model measured on calibration frames of known height.

    ``windows`` holds, per calibration frame, its PSF map, the frame (for the texture gate, or ``None``)
    and the known height of every window (``(gy, gx)`` µm relative to the focal plane). Reliable windows
    only (the same gate as the calibration). With too few of them the calibration keeps no σ model and
    says so in its notes.
    """
    depths, heights, nets = [], [], []
    for pmap, frame, height in windows:
        est = cal.depth_estimate(pmap, frame)
        ok = est.reliable
        depths.append(est.depth_um[ok])
        heights.append(np.asarray(height, dtype=np.float64)[ok])
        net = metric_sigma(pmap, cal.metric, cal.lens_direction, cal.lens_strength_waves)
        nets.append(None if net is None else net[ok])
    network_sigma = None if any(n is None for n in nets) else np.concatenate(nets)
    try:
        model = fit_depth_uncertainty(np.concatenate(depths), np.concatenate(heights), network_sigma)
    except InputError as exc:
        note = f"no per-window σ measured ({exc}); σ = 1.25 x mean |error|"
        return cal.model_copy(update={"notes": "; ".join(n for n in (cal.notes, note) if n)})
    return cal.model_copy(update={"uncertainty": model})


def calibrate_tilted_grid(
    frames: Sequence[np.ndarray],
    tilt_deg: Sequence[float] | float,
    pixel_size_um: float = 0.65,
    mapper: Callable[[np.ndarray], PSFMap] | None = None,
    tilt_axis: str = "x",
    in_focus_px: Sequence[float | None] | float | None = None,
    metric: str | None = None,
    max_texture_coherence: float | None = MAX_TEXTURE_COHERENCE,
    curve: str = "monotone",
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
    curve
        ``"auto"``, ``"monotone"`` or ``"linear"`` (see :func:`calibrate_psf_maps`).

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
                              max_texture_coherence=max_texture_coherence, curve=curve)


# -- helpers ----------------------------------------------------------------------------------------


def check_calibration_maps(pmaps: Sequence[PSFMap], metric: str | None, frames: Sequence[np.ndarray] | None,
                           max_texture_coherence: float | None) -> tuple[list, float | None, list[np.ndarray]]:
    """Checks shared by every calibration; returns ``(frames or Nones, gate used, reliable windows per map)``.

    Raises
    ------
    InputError
        Maps of different networks or not of a Z-3 model, an unknown metric, a frame count that does not
        match, or (almost) no reliable window.
    """
    identities = {(p.model_name, p.model_sha256) for p in pmaps}
    if len(identities) > 1:
        raise InputError(f"calibration frames were mapped by different models: {sorted(identities)}")
    for p in pmaps:
        require_astigmatic(p)
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
    return frame_list, gate, valid


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


def assemble_calibration(pmaps: Sequence[PSFMap], results: dict[str, MetricResult], chosen: str,
                         u: tuple[float, float], strength: float, pixel_size_um: float,
                         gate: float | None, **fields: Any) -> Calibration:
    """The :class:`Calibration` of the chosen metric's fit; ``fields`` add the source-specific ones."""
    result = results[chosen]
    first = pmaps[0]
    return Calibration(
        metric=chosen,
        slope_um_per_unit=result.fit.line.slope_um,
        offset_um=result.fit.line.offset_um,
        curve=result.fit.curve,
        lens_direction=u,
        lens_strength_waves=strength,
        pixel_size_um=pixel_size_um,
        model_name=first.model_name,
        model_sha256=first.model_sha256,
        psf_model=first.psf_model,
        r2=result.r2,
        mean_abs_error_um=result.fit.mean_abs_error_um,
        sd_abs_error_um=float(np.std(np.abs(result.fit.residuals_um))),
        lofo_mean_abs_error_um=result.lofo_mean_abs_error_um(),
        metrics=[_summary(results[n]) for n in METRICS if n in results],
        window_px=int(first.window_px),
        stride_px=int(first.stride_px),
        max_texture_coherence=gate,
        created=datetime.now(timezone.utc),
        livepsf_version=package_version(),
        notes=fit_notes(result),
        **fields,
    )


def _per_tilt(result: MetricResult, profiles: Sequence[TiltProfile], pixel_size_um: float) -> list[TiltResidual]:
    out = []
    for i, prof in enumerate(profiles):
        sel = result.points.frame == i
        res = np.abs(result.fit.residuals_um[sel])
        heights = result.fit.heights_um[sel]
        extent = prof.extent_px if prof.extent_px else float(np.ptp(prof.position_px)) or 1.0
        depth_range = abs(extent * pixel_size_um * math.tan(math.radians(prof.tilt_deg)))
        mae = float(res.mean()) if len(res) else float("nan")
        out.append(TiltResidual(
            tilt_deg=prof.tilt_deg,
            in_focus_px=in_focus_from_offset(prof, result.fit.offsets_um.get(i), pixel_size_um),
            in_focus_estimated=prof.in_focus_px is None,
            depth_range_um=depth_range,
            n_points=len(res),
            r2=r_squared(heights, heights + result.fit.residuals_um[sel]),
            mean_abs_error_um=mae,
            sd_abs_error_um=float(res.std()) if len(res) else float("nan"),
            relative_error_pct=100.0 * mae / depth_range if depth_range > 0 else float("nan"),
            lofo_mean_abs_error_um=result.lofo_mean_abs_error_um(sel),
        ))
    return out


def _summary(result: MetricResult) -> MetricSummary:
    line = result.fit.line
    res = np.abs(line.residuals_um)
    return MetricSummary(metric=result.name, slope_um_per_unit=line.slope_um, offset_um=line.offset_um,
                         r2=r_squared(line.heights_um, line.heights_um + line.residuals_um),
                         mean_abs_error_um=float(res.mean()), sd_abs_error_um=float(res.std()),
                         curve_mean_abs_error_um=result.fit.mean_abs_error_um,
                         lofo_mean_abs_error_um=result.lofo_mean_abs_error_um(),
                         line_lofo_mean_abs_error_um=result.line_lofo_mean_abs_error_um())


def _masked_median(grid: np.ndarray, ok: np.ndarray, size: int) -> np.ndarray:
    """Median of the ``ok`` cells in a ``size``-wide square around each ``ok`` cell; others unchanged."""
    gy, gx = grid.shape
    r = size // 2
    out = np.array(grid, dtype=np.float32, copy=True)
    for i, j in zip(*np.nonzero(ok)):
        sl = (slice(max(0, i - r), min(gy, i + r + 1)), slice(max(0, j - r), min(gx, j + r + 1)))
        out[i, j] = np.median(grid[sl][ok[sl]])
    return out


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


def package_version() -> str:
    from livepsf import __version__

    return __version__

"""Depth calibration from a printed grid tilted by known angles (paper Section III-E).

Each frame's metric maps are projected onto the tilt axis (:mod:`~livepsf.depth.profiles`): a point per
column (or row, or reliable window) whose height follows from the tilt, the pixel size and the in-focus
position (given, or estimated as one unknown offset per frame). The fit is the shared one
(:mod:`~livepsf.depth.fit`); per-frame figures go into :attr:`Calibration.per_tilt`, and the per-window
σ model is measured on the same frames (:func:`window_heights_um`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from livepsf.depth.calibration import (
    Calibration,
    CalibrationPoint,
    TiltResidual,
    assemble_calibration,
    with_measured_uncertainty,
)
from livepsf.depth.fit import MetricResult, check_calibration_maps, choose_metric, fit_metrics, lens_from_maps
from livepsf.depth.metrics import METRICS, depth_metric
from livepsf.depth.profiles import (
    CalibrationPoints,
    TiltProfile,
    check_tilt_axis,
    in_focus_from_offset,
    points_from_profiles,
    profile_along_axis,
    profile_points_ok,
)
from livepsf.depth.robust import r_squared
from livepsf.depth.texture import MAX_TEXTURE_COHERENCE
from livepsf.errors import InputError
from livepsf.mapping import PSFMap


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
        Gate threshold (:func:`~livepsf.depth.texture.reliable_windows`); ``None`` turns the gate off.
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
        calibration frames (:data:`~livepsf.depth.fit.LOFO_WARN_RATIO`,
        :data:`~livepsf.depth.fit.LOFO_WARN_MARGIN_UM`).
    """
    if not pmaps:
        raise InputError("no frames to calibrate")
    tilt_axis = check_tilt_axis(tilt_axis)
    tilts = _per_frame(tilt_deg, len(pmaps), "tilt_deg")
    foci = _per_frame(in_focus_px, len(pmaps), "in_focus_px")
    frame_list, gate, valid, textures = check_calibration_maps(pmaps, metric, frames, max_texture_coherence)
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
        for p, f, r in zip(pmaps, frame_list, cal.per_tilt)], textures=textures)


def window_heights_um(pmap: PSFMap, tilt_deg: float, in_focus_px: float, pixel_size_um: float,
                      tilt_axis: str) -> np.ndarray:
    """Known height (µm, relative to the focal plane) of each window of a tilted-grid frame, ``(gy, gx)``."""
    gradient = pixel_size_um * math.tan(math.radians(tilt_deg))
    if check_tilt_axis(tilt_axis) == "x":
        heights = (np.asarray(pmap.centers_x, dtype=np.float64) - in_focus_px) * gradient
        return np.broadcast_to(heights[None, :], pmap.invalid.shape).copy()
    heights = (np.asarray(pmap.centers_y, dtype=np.float64) - in_focus_px) * gradient
    return np.broadcast_to(heights[:, None], pmap.invalid.shape).copy()


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

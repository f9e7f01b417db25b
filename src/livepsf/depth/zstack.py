"""Depth calibration from a z-stack: frames of any textured sample at known stage positions.

Any Micro-Manager microscope has a Z stage; stepping it through focus over a flat, textured sample gives
frames whose every window is at the same, known height relative to the focal plane:
``height = focus_z_um - z_um`` (moving the stage to ``z_um`` puts the focal plane at height ``z_um``).
The fit is the tilted grid's (:func:`livepsf.depth.calibrate_psf_maps`): the same metrics, lens
direction and strength, texture gate, calibration curve and leave-one-out errors, with one stage
position as the unit left out. When the in-focus stage position is not given it is the centre of
symmetry of the frames' focus reading (:func:`symmetric_focus_z_um`: the unsigned defocus reads alike
above and below focus); only when the stack does not straddle focus far enough for that is it one
unknown height offset shared by the whole stack, estimated like the unknown in-focus column of a tilted
frame (the stage position where the metric is 0, which the network's guessed side of focus near focus
biases by a few µm).

Points. A stack at one XY position gives one height per frame, so the natural point is the frame's
median metric over its reliable windows (``aggregate="median"``, the default): the median already
discards windows whose astigmatism sign is wrong, and every stage position weighs the same. With
``aggregate="window"`` every reliable window is a point of the robust fit (more points, same heights).
Measured on the simulator (printed grid, ``default`` model, 41 planes over ±40 µm): the medians fit with a
mean |error| of 1-2 µm per plane, the windows with about 11 µm per window (their scatter), and
calibrations from either predict fresh tilted frames about equally well; the median is the default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from livepsf.depth.calibration import (
    Calibration,
    CalibrationPoint,
    ZStackResidual,
    assemble_calibration,
    with_measured_uncertainty,
)
from livepsf.depth.fit import check_calibration_maps, choose_metric, fit_metrics, lens_from_maps
from livepsf.depth.metrics import METRICS, depth_metric
from livepsf.depth.profiles import CalibrationPoints
from livepsf.depth.texture import MAX_TEXTURE_COHERENCE
from livepsf.errors import InputError
from livepsf.mapping import PSFMap

#: Points per knot of the monotone curve with one point per stage position (each already a median).
MEDIAN_POINTS_PER_KNOT = 2


def calibrate_zstack(
    pmaps: Sequence[PSFMap],
    z_um: Sequence[float],
    pixel_size_um: float,
    *,
    frames: Sequence[np.ndarray] | None = None,
    focus_z_um: float | None = None,
    metric: str | None = None,
    curve: str = "monotone",
    max_texture_coherence: float | None = MAX_TEXTURE_COHERENCE,
    lens_direction: Sequence[float] | None = None,
    aggregate: str = "median",
) -> Calibration:
    """Fit a depth calibration on PSF maps of a flat sample at known Z stage positions.

    Parameters
    ----------
    pmaps
        PSF maps of an astigmatic Zernike model (Z-3), all from the same network; ``pmaps[i]`` mapped
        from a frame taken with the Z stage at ``z_um[i]``.
    z_um
        Stage position of each frame (µm; the focal plane is at height ``z_um``).
    pixel_size_um
        Pixel size in the sample plane (recorded in the calibration).
    frames
        The frames the maps were made from; enables the texture gate.
    focus_z_um
        Stage position where the sample is in focus, if known; otherwise estimated as the centre of
        symmetry of the frames' focus reading (:func:`symmetric_focus_z_um`), or, when the stack does not
        reach far enough to both sides of focus for that, as the position where the metric is 0.
    metric, curve, max_texture_coherence, lens_direction
        As for :func:`~livepsf.depth.calibrate_psf_maps`.
    aggregate
        ``"median"``: one point per stage position (median over its reliable windows); ``"window"``: every
        reliable window a point.

    Returns
    -------
    Calibration
        With ``source="z-stack"``, ``tilt_axis=None`` and per stage position figures in ``per_z``.

    Raises
    ------
    InputError
        Too few frames or stage positions, NaN positions, a count that does not match, frames with
        (almost) no reliable window, or a metric that does not change with the stage position.
    """
    if not pmaps:
        raise InputError("no frames to calibrate")
    z = np.asarray(z_um, dtype=np.float64).ravel()
    if len(z) != len(pmaps):
        raise InputError(f"{len(z)} stage positions for {len(pmaps)} PSF maps")
    if not np.isfinite(z).all():
        raise InputError("stage positions must be finite numbers of µm (got NaN or inf)")
    if len(np.unique(z)) < 3:
        raise InputError(f"a z-stack calibration needs frames at 3 or more stage positions, got {len(np.unique(z))}")
    if not (pixel_size_um > 0 and math.isfinite(pixel_size_um)):
        raise InputError(f"pixel size must be a positive number of µm, got {pixel_size_um}")
    if focus_z_um is not None and not math.isfinite(focus_z_um):
        raise InputError(f"focus_z_um must be a finite number of µm, got {focus_z_um}")
    if aggregate not in ("median", "window"):
        raise InputError(f"aggregate must be 'median' or 'window', got {aggregate!r}")
    frame_list, gate, valid, textures = check_calibration_maps(pmaps, metric, frames, max_texture_coherence)
    u, strength = lens_from_maps(pmaps, valid, lens_direction)
    if focus_z_um is None:
        focus_z_um = symmetric_focus_z_um(z, [np.median(p.values("focus")[v]) if v.any() else np.nan
                                              for p, v in zip(pmaps, valid)])
    known = focus_z_um is not None
    base = float(focus_z_um) if known else 0.0

    def points_for(direction: tuple[float, float]) -> dict[str, CalibrationPoints]:
        out = {}
        for name in METRICS:
            heights, values, frame_ids = [], [], []
            for i, (p, v) in enumerate(zip(pmaps, valid)):
                m = depth_metric(p, name, direction, strength)
                ok = v & np.isfinite(m)
                if not ok.any():
                    continue
                vals = np.array([np.median(m[ok])]) if aggregate == "median" else m[ok].astype(np.float64)
                heights.append(np.full(len(vals), base - z[i]))
                values.append(vals)
                frame_ids.append(np.full(len(vals), i))
            if not heights:
                raise InputError("no frame of the z-stack has a reliable window: nothing to calibrate on")
            n = sum(len(h) for h in heights)
            out[name] = CalibrationPoints(np.concatenate(heights), np.concatenate(values),
                                          np.concatenate(frame_ids), -1 if known else 0, np.ones(n))
        return out

    per_knot = {"min_points_per_knot": MEDIAN_POINTS_PER_KNOT} if aggregate == "median" else {}
    u, results = fit_metrics(points_for, u, lens_direction is None, curve, **per_knot)
    chosen = choose_metric(results, metric)
    result = results[chosen]
    focus_z = base + result.fit.offsets_um.get(0, 0.0)
    per_z, points = [], []
    for i, (p, v) in enumerate(zip(pmaps, valid)):
        sel = result.points.frame == i
        m = depth_metric(p, chosen, u, strength)
        ok = v & np.isfinite(m)
        res = np.abs(result.fit.residuals_um[sel])
        per_z.append(ZStackResidual(
            z_um=float(z[i]), height_um=float(focus_z - z[i]), n_points=int(sel.sum()), n_windows=int(ok.sum()),
            metric=float(np.median(m[ok])) if ok.any() else float("nan"),
            mean_abs_error_um=float(res.mean()) if len(res) else float("nan"),
            lofo_mean_abs_error_um=result.lofo_mean_abs_error_um(sel)))
    for i, h, m in zip(result.points.frame, result.fit.heights_um, result.points.metric):
        points.append(CalibrationPoint(frame=int(i), tilt_deg=None, position_px=None, height_um=float(h),
                                       metric=float(m), z_um=float(z[i])))
    cal = assemble_calibration(pmaps, results, chosen, u, strength, pixel_size_um, gate, source="z-stack",
                               tilt_axis=None, per_tilt=[], per_z=per_z, points=points)
    # Every window of a flat sample is at the frame's height: the per-window σ model is measured on them.
    return with_measured_uncertainty(cal, [(p, f, np.full(p.invalid.shape, focus_z - zi))
                                           for p, f, zi in zip(pmaps, frame_list, z)], textures=textures)


def symmetric_focus_z_um(z_um: Sequence[float], focus: Sequence[float]) -> float | None:
    """The stage position about which a stack's focus reading is symmetric: the in-focus position.

    The canonical focus (the unsigned defocus) of a flat sample reads the same a distance above and
    below focus: with the lens, PSF(-d, A) is PSF(d, A) turned by 90°, and a texture with structure in
    both directions looks alike turned. So the in-focus position is the centre ``c`` that best matches
    each frame's focus reading with the reading interpolated at its mirror position ``2 c - z`` (least
    squares over the frames whose mirror lies inside the stack), searched over the middle half of the
    stack in steps of a tenth of the smallest stage step. Unlike the metric's zero crossing, it does not
    rest on the side of focus near focus, where the network's astigmatism sign is a guess (on the
    simulator's cells the zero crossing put focus 3.2 µm off, this 0.7 µm).

    Parameters
    ----------
    z_um
        Stage position of each frame.
    focus
        The frame's focus reading (e.g. the median of its reliable windows' ``focus``); NaN: no reading.

    Returns
    -------
    float or None
        The in-focus stage position; ``None`` when it cannot be told this way: fewer than 5 frames with a
        reading, or the best centre at the edge of the searched range (the stack does not reach far
        enough to both sides of focus).
    """
    z = np.asarray(z_um, dtype=np.float64)
    f = np.asarray(focus, dtype=np.float64)
    keep = np.isfinite(z) & np.isfinite(f)
    z, f = z[keep], f[keep]
    if len(np.unique(z)) < 5:
        return None
    order = np.argsort(z, kind="stable")
    z, f = z[order], f[order]
    lo, hi = float(z[0]), float(z[-1])
    step = float(np.min(np.diff(np.unique(z)))) / 10.0
    centres = np.arange(lo + (hi - lo) / 4, hi - (hi - lo) / 4 + step / 2, step)
    if len(centres) < 3:
        return None
    cost = np.full(len(centres), np.inf)
    for k, c in enumerate(centres):
        mirror = 2.0 * c - z
        inside = (mirror >= lo) & (mirror <= hi) & (np.abs(z - c) > step)
        if inside.sum() >= 4:
            cost[k] = float(np.mean((f[inside] - np.interp(mirror[inside], z, f)) ** 2))
    best = int(np.argmin(cost))
    if not np.isfinite(cost[best]) or best in (0, len(centres) - 1):
        return None
    return float(centres[best])


def zstack_focus_z_um(cal: Calibration) -> float:
    """The focus-drive position (µm) at which a z-stack calibration found the sample in focus.

    Given to :func:`calibrate_zstack` as ``focus_z_um`` or estimated by it; every stage position's
    known height is ``focus_z_um - z_um``, so it is read back from the per-position figures.

    Returns
    -------
    float
        The in-focus stage position, in the stack's Z (relative when the stack's positions were); NaN
        for a calibration without stage positions (a tilted grid).
    """
    if not cal.per_z:
        return float("nan")
    first = cal.per_z[0]
    return float(first.z_um + first.height_um)

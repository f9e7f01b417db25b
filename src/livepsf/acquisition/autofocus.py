"""Autofocus from one frame (cylindrical lens), from a pair of frames (no lens), or by a classical search.

:func:`autofocus` snaps a frame, estimates how far and to which side the region is out of focus, moves
the focus drive, and repeats for at most a few frames:

* **Lens in, calibrated** (``calibration`` given): the first frame's PSF map gives the *signed* offset
  (:func:`~livepsf.acquisition.focus_signals.network_offset`), fused robustly over the region with its
  σ. The network is coarse near focus (it cannot see the side of focus there), so every frame also
  measures the image's astigmatic anisotropy ``R = ln(Gx/Gy)``, which the lens makes an odd function
  of defocus, ``R ≈ a·tanh((z_focus - z) / s)`` with ``s`` the half distance between the lens's two
  line foci (known from the lens strength) and ``a`` depending on the sample. Two frames within the
  lens's range fix ``a`` and ``z_focus``; the network's estimates keep the fit on the right branch.
  Default: 3 frames.
* **No lens** (or no calibration): the network gives only the distance to focus. A second frame at a
  known step decides the side (the closer frame is the sharper one and reads the smaller distance);
  then the sharpness ``S`` of the frames near focus, modelled as ``S = s0 - ln(1 + ((z - z_focus)/w)²)``,
  places the focus. Default: 4 frames.
* **Classical search** (:func:`search_focus`): coarse-to-fine on the sharpness, used when the network
  estimate stays uncertain (blank or textureless field, too few valid windows, too far out) and
  reported as such in the result (``fallback``). About 15 frames.

All estimates are combined by one least-squares fit over candidate focus positions (a fine grid), so
each new frame refines the earlier ones instead of replacing them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from livepsf.acquisition.focus_signals import (
    FocusEstimate,
    ImageFocusSignals,
    check_roi,
    image_focus_signals,
    network_distance,
    network_offset,
)
from livepsf.acquisition.focus_stage import FocusStage
from livepsf.errors import InputError

__all__ = ["AutofocusResult", "FocusStep", "autofocus", "lens_split_um", "search_focus"]

logger = logging.getLogger("livepsf.autofocus")

# Floor of the network's error (µm) beyond its own σ: near focus the signed estimate is biased by a
# few µm (the side of focus is invisible there) and the calibration's slope is off by ~15 % far out.
_NET_FLOOR_UM = 3.0
_NET_RELATIVE = 0.15
# Floor of the unsigned distance's error: the network reads 3-10 µm at focus.
_DIST_FLOOR_UM = 4.0
# Floors of the image signals: texture anisotropy of a finite region, and sharpness noise.
_R_FLOOR = 0.02
_S_FLOOR = 0.01
# Frames farther than this many line-foci half-distances from focus carry no anisotropy information.
_R_RANGE_SPLITS = 2.5
# Growth of a frame's sharpness σ with its distance from the sharpest frame (per µm).
_S_FAR_PER_UM = 0.02
# Sharpness-peak widths tried by the fit (µm).
_WIDTHS_UM = np.geomspace(1.5, 40.0, 28)


@dataclass(frozen=True)
class FocusStep:
    """One frame of an autofocus run: where it was taken and what was concluded from it."""

    z_um: float
    network_um: float
    network_sigma_um: float
    anisotropy: float
    sharpness: float
    focus_estimate_um: float
    focus_sigma_um: float
    method: str


@dataclass(frozen=True)
class AutofocusResult:
    """What :func:`autofocus` did.

    Attributes
    ----------
    z_um
        Focus-drive position at the end.
    start_z_um
        Position before the run.
    offset_um, sigma_um
        Estimated remaining offset (focus position − ``z_um``, µm) and its standard uncertainty; NaN
        when the focus could not be found.
    frames, moves
        Frames snapped and focus-drive moves made.
    time_s
        Wall-clock duration.
    method
        ``"one-frame"`` (lens and calibration), ``"frame-pair"`` (no lens: the side from two frames),
        or ``"search"`` (classical coarse-to-fine sharpness search).
    fallback
        True when the network estimate stayed uncertain and the classical search was used.
    converged
        True when the final σ is within the requested tolerance (and the focus was found).
    message
        One line for people (why a fallback happened, why nothing was found).
    steps
        Every frame's measurements and the focus estimate after it.
    """

    z_um: float
    start_z_um: float
    offset_um: float
    sigma_um: float
    frames: int
    moves: int
    time_s: float
    method: str
    fallback: bool
    converged: bool
    message: str = ""
    steps: tuple[FocusStep, ...] = field(default=(), repr=False)

    @property
    def correction_um(self) -> float:
        """How far the focus drive was moved in total (final − start), µm."""
        return self.z_um - self.start_z_um

    def summary(self) -> str:
        """One line: where focus ended up, the remaining offset ± σ, frames, moves, time."""
        found = "focus" if math.isfinite(self.offset_um) else "no focus found"
        text = (f"{found}: Z {self.z_um:+.2f} µm (moved {self.correction_um:+.2f}), remaining "
                f"{self.offset_um:+.2f} ± {self.sigma_um:.2f} µm, {self.frames} frames, {self.moves} moves, "
                f"{self.time_s:.2f} s, {self.method}" + (" (fallback)" if self.fallback else ""))
        return text + (f"; {self.message}" if self.message else "")

    def as_metadata(self) -> dict[str, Any]:
        """JSON-compatible summary (frame metadata, logs)."""
        return {
            "z_um": round(self.z_um, 4), "start_z_um": round(self.start_z_um, 4),
            "correction_um": round(self.correction_um, 4),
            "offset_um": _json_float(self.offset_um), "sigma_um": _json_float(self.sigma_um),
            "frames": self.frames, "moves": self.moves, "time_s": round(self.time_s, 4),
            "method": self.method, "fallback": self.fallback, "converged": self.converged,
            "message": self.message,
        }


def _json_float(v: float) -> float | None:
    return round(float(v), 4) if math.isfinite(v) else None


def lens_split_um(lens_astig_waves: float, optics: Any) -> float:
    """Half the axial distance between a cylindrical lens's two line foci (µm).

    An astigmatism of ``A`` RMS waves (Zernike Z(2,±2)) cancels a defocus of ``±A/√2`` waves along one
    axis and the other, so the line foci sit at ``±optics.defocus_um(A / √2)`` from best focus.
    """
    if not (math.isfinite(lens_astig_waves) and lens_astig_waves > 0):
        raise InputError(f"lens astigmatism must be a positive number of waves, got {lens_astig_waves}")
    return float(optics.defocus_um(lens_astig_waves / math.sqrt(2.0)))


# -- the microscope side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Observation:
    z_um: float
    network: FocusEstimate
    image: ImageFocusSignals


# -- fitting the focus position --------------------------------------------------------------------


def _candidates(centre: float, half_range: float, step: float = 0.05) -> np.ndarray:
    return centre + np.arange(-half_range, half_range + step / 2, step)


def _profile_sigma(zf: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    """Best candidate and its σ: the half-width of the region where the cost is within 1 of its minimum."""
    i = int(np.argmin(cost))
    inside = zf[cost <= cost[i] + 1.0]
    return float(zf[i]), max(0.5 * float(inside.max() - inside.min()), zf[1] - zf[0])


def _network_cost(zf: np.ndarray, obs: Sequence[_Observation]) -> np.ndarray:
    cost = np.zeros_like(zf)
    for o in obs:
        e = o.network
        if not e.ok:
            continue
        if e.signed:
            sigma = math.hypot(e.sigma_um, _NET_FLOOR_UM + _NET_RELATIVE * abs(e.offset_um))
            cost += ((zf - (o.z_um + e.offset_um)) / sigma) ** 2
        elif e.offset_um > _DIST_FLOOR_UM:
            # Below its floor the distance only says "near focus": |zf - z| < floor, a soft bound.
            sigma = math.hypot(e.sigma_um, _DIST_FLOOR_UM + _NET_RELATIVE * e.offset_um)
            cost += ((np.abs(zf - o.z_um) - e.offset_um) / sigma) ** 2
        else:
            cost += (np.maximum(np.abs(zf - o.z_um) - 2.0 * _DIST_FLOOR_UM, 0.0) / _DIST_FLOOR_UM) ** 2
    return cost


def _anisotropy_cost(zf: np.ndarray, obs: Sequence[_Observation],
                     split_um: float) -> tuple[np.ndarray, np.ndarray, float] | None:
    """χ² of ``R_i = a·tanh((z_i - zf)/split)`` with the best amplitude ``a >= 0`` for each candidate.

    The anisotropy is measured along the calibration's lens direction, which is oriented so that it
    grows with the focus drive's position through focus: the sign of ``a`` is known, so a single
    anisotropy already says which side of focus a frame is on.

    The fit weighs every frame by the anisotropy's noise floor only: the texture's own anisotropy
    shifts every frame of a region alike (it is a bias, not noise) and is returned separately as the
    largest tile-spread σ of the frames, for the caller to carry into the result's σ.

    Returns
    -------
    (cost, amplitude, texture_sigma) or None when fewer than two frames are within range.
    """
    near = [o for o in obs if math.isfinite(o.image.anisotropy)
            and (not o.network.ok or abs(o.network.offset_um) < _R_RANGE_SPLITS * split_um)]
    if len(near) < 2:
        return None
    z = np.array([o.z_um for o in near])
    r = np.array([o.image.anisotropy for o in near])
    spreads = [o.image.anisotropy_sigma for o in near if math.isfinite(o.image.anisotropy_sigma)]
    t = np.tanh((z[None, :] - zf[:, None]) / split_um)  # (candidates, frames)
    a = np.maximum((t * r).sum(axis=1) / np.maximum((t * t).sum(axis=1), 1e-12), 0.0)
    cost = (((r[None, :] - a[:, None] * t) / _R_FLOOR) ** 2).sum(axis=1)
    return cost, a, max(spreads, default=0.0)


def _sharpness_cost(zf: np.ndarray, obs: Sequence[_Observation]) -> np.ndarray | None:
    """χ² of ``S_i = s0 - ln(1 + ((z_i - zf)/w)²)``, minimised over the width ``w`` and ``s0``.

    Frames far from the sharpest one count less (σ grows by :data:`_S_FAR_PER_UM` per µm): the model's
    tails are rough, but they still pin the width that turns two frames near focus into a position.
    """
    pts = [o for o in obs if math.isfinite(o.image.sharpness)]
    if len(pts) < 3:
        return None
    z = np.array([o.z_um for o in pts])
    s = np.array([o.image.sharpness for o in pts])
    sigma = _S_FLOOR + _S_FAR_PER_UM * np.abs(z - z[int(np.argmax(s))])
    return _sharpness_fit(zf, z, s, sigma)


def _sharpness_fit(zf: np.ndarray, z: np.ndarray, s: np.ndarray,
                   sigma: np.ndarray | None = None) -> np.ndarray:
    sigma = np.full(z.shape, _S_FLOOR) if sigma is None else sigma
    w = 1.0 / sigma**2
    best = np.full(zf.shape, np.inf)
    for width in _WIDTHS_UM:
        shape = -np.log1p(((z[None, :] - zf[:, None]) / width) ** 2)  # (candidates, frames)
        s0 = ((s[None, :] - shape) * w).sum(axis=1) / w.sum()
        chi2 = (((s[None, :] - shape - s0[:, None]) ** 2) * w).sum(axis=1)
        best = np.minimum(best, chi2)
    # Sharpness noise is not only pixel noise (texture moving through focus): scale χ² so the best
    # fit has one unit per degree of freedom, which keeps σ honest.
    dof = max(len(z) - 3, 1)
    return best / max(best.min() / dof, 1.0)


def _estimate_focus(obs: Sequence[_Observation], signed: bool,
                    split_um: float | None) -> tuple[float, float, str]:
    """Fuse every frame so far into one focus position ± σ (µm) and say which signal decided it."""
    known = [o.z_um + o.network.offset_um for o in obs if o.network.ok and o.network.signed]
    dist = [abs(o.network.offset_um) for o in obs if o.network.ok]
    centre = float(np.median(known)) if known else obs[-1].z_um
    half = 25.0 + (max(dist) if dist else 0.0)
    zf = _candidates(centre, half)
    cost = _network_cost(zf, obs)
    method = "network"
    texture_um = 0.0
    if signed and split_um is not None:
        fit = _anisotropy_cost(zf, obs, split_um)
        if fit is not None:
            extra, amplitude, texture_sigma = fit
            cost, method = cost + extra, "network+anisotropy"
            # The texture's anisotropy bias in µm: its σ over the local slope a / split of the fit.
            slope = float(amplitude[int(np.argmin(cost))]) / split_um
            texture_um = texture_sigma / max(slope, 1e-3)
    elif not signed:
        extra = _sharpness_cost(zf, obs)
        if extra is not None:
            cost, method = cost + extra, "network+sharpness"
        elif len(obs) == 2:
            # Two frames: the sharper one is the closer one; make the other branch pay for it.
            a, b = obs
            closer_b = b.image.sharpness > a.image.sharpness
            near_a, near_b = np.abs(zf - a.z_um), np.abs(zf - b.z_um)
            wrong = (near_b > near_a) if closer_b else (near_a > near_b)
            cost = cost + np.where(wrong, 25.0, 0.0)
            method = "network+pair"
    best, sigma = _profile_sigma(zf, cost)
    return best, math.hypot(sigma, texture_um), method


# -- the public functions --------------------------------------------------------------------------


def autofocus(
    core: Any,
    *,
    roi: Sequence[int] | None = None,
    mapper: Callable[[np.ndarray], Any] | None = None,
    calibration: Any = None,
    lens: bool | None = None,
    lens_astig_waves: float | None = None,
    max_frames: int | None = None,
    tolerance_um: float = 0.5,
    max_sigma_um: float = 8.0,
    min_windows: int = 3,
    pair_step_um: float | None = None,
    max_step_um: float = 100.0,
    fallback: bool = True,
    search_range_um: float = 50.0,
    z_limits_um: tuple[float, float] | None = None,
) -> AutofocusResult:
    """Bring a region into focus with as few frames as the optics allow.

    Parameters
    ----------
    core
        A pymmcore-plus core (``CMMCorePlus`` or the simulator's ``UniMMCore``) with a camera and a focus
        drive; no sequence acquisition may be running.
    roi
        ``(x, y, width, height)`` in frame pixels; the whole frame when None.
    mapper
        ``frame -> PSFMap`` (a :class:`livepsf.PSFMapper`); the shipped default model when None.
    calibration
        :class:`livepsf.Calibration` of that model; needed for the one-frame (signed) estimate.
    lens
        Whether the cylindrical lens is in; default: ``calibration is not None``. Without lens or
        calibration the side of focus is decided from a pair of frames.
    lens_astig_waves
        Astigmatism of the lens, RMS waves (sets the anisotropy's range, :func:`lens_split_um`);
        default: the calibration's measured ``lens_strength_waves``.
    max_frames
        Most frames before the result is returned (default 3 with the lens, 4 without); the classical
        search, when it is needed, takes its own.
    tolerance_um
        Stop early once the focus is within this distance and known to this σ.
    max_sigma_um
        A network estimate with a larger σ (or fewer than ``min_windows`` usable windows) is uncertain.
    pair_step_um
        Step to the second frame without a lens (default: the first frame's distance, at least 4 µm).
    max_step_um
        Largest single move.
    fallback
        Run the classical search when the estimate stays uncertain.
    search_range_um
        Half range of that search around the start.
    z_limits_um
        Keep the focus drive within these positions.

    Returns
    -------
    AutofocusResult

    Raises
    ------
    InputError
        No focus drive or camera, live acquisition running, a bad ROI, or a calibration made with
        another network.
    """
    t0 = time.perf_counter()
    stage = FocusStage(core, z_limits_um)
    start = stage.z
    if mapper is None:
        from livepsf.mapping import PSFMapper
        from livepsf.net import load_model

        mapper = PSFMapper(load_model("default"), stride_px=64)
    signed = bool(calibration is not None if lens is None else lens)
    if signed and calibration is None:
        raise InputError("the one-frame (lens) autofocus needs the depth calibration of the model")
    if calibration is not None and signed:
        model = getattr(mapper, "model", None)
        if model is not None:
            calibration.check_model(model)
    n_frames = int(max_frames if max_frames is not None else (3 if signed else 4))
    if n_frames < (1 if signed else 2):
        raise InputError(f"max_frames must be at least {1 if signed else 2}, got {n_frames}")
    split = None
    if signed:
        strength = lens_astig_waves if lens_astig_waves is not None else calibration.lens_strength_waves
        split = lens_split_um(float(strength), _optics_of(mapper))
    method = "one-frame" if signed else "frame-pair"

    obs: list[_Observation] = []
    steps: list[FocusStep] = []
    estimate, sigma = math.nan, math.nan
    uncertain = ""
    for k in range(n_frames):
        frame = stage.snap()
        roi_ = check_roi(roi, frame.shape)
        pmap = mapper(frame)
        if signed:
            net = network_offset(pmap, calibration, frame, roi_, min_windows)
            image = image_focus_signals(frame, roi_, calibration.lens_direction)
        else:
            net = network_distance(pmap, roi_)
            image = image_focus_signals(frame, roi_)
        z = stage.z
        if not net.ok or net.n_windows < min_windows or net.sigma_um > max_sigma_um:
            net = FocusEstimate(math.nan, math.nan, net.n_windows, net.signed)
        obs.append(_Observation(z, net, image))
        if not any(o.network.ok for o in obs):
            uncertain = (f"the network estimate is uncertain ({net.n_windows} usable windows"
                         f"{'' if math.isnan(net.sigma_um) else f', σ {net.sigma_um:.1f} µm'})")
            steps.append(FocusStep(z, math.nan, math.nan, image.anisotropy, image.sharpness, math.nan,
                                   math.nan, "uncertain"))
            break
        estimate, sigma, how = _estimate_focus(obs, signed, split)
        steps.append(FocusStep(z, net.offset_um, net.sigma_um, image.anisotropy, image.sharpness,
                               estimate, sigma, how))
        logger.debug("autofocus frame %d at %.2f µm: %s -> focus %.2f ± %.2f µm", k + 1, z, how, estimate,
                     sigma)
        if abs(estimate - z) <= tolerance_um and sigma <= tolerance_um:
            break
        if not signed and k == 0:
            step = pair_step_um if pair_step_um is not None else max(net.offset_um, 4.0)
            target = z + float(np.clip(step, -max_step_um, max_step_um))
        elif not signed and k < n_frames - 1:
            # Bracket the estimated focus, so the sharpness peak lies between measured points (the side
            # of a peak alone does not place it): on the side where no frame has been taken yet.
            half_dof = 0.75 * _optics_of(mapper).depth_of_field_um
            taken = np.array([o.z_um for o in obs])
            target = max((estimate - half_dof, estimate + half_dof),
                         key=lambda c: float(np.min(np.abs(taken - c))))
        else:
            move = estimate - z
            if signed and how == "network" and abs(move) < 0.5 * split:
                # The anisotropy needs two frames a fair distance apart to place the focus; the
                # network alone is biased by a few µm near focus, so step at least half a split.
                move = math.copysign(0.5 * split, move)
            target = z + float(np.clip(move, -max_step_um, max_step_um))
        stage.move(target)

    z_end = stage.z
    if uncertain or not math.isfinite(sigma):
        reason = uncertain or f"the estimate stayed uncertain (σ {sigma:.1f} µm)"
        if not fallback:
            remaining = estimate - z_end if math.isfinite(estimate) else math.nan
            return AutofocusResult(z_end, start, remaining, sigma, stage.frames, stage.moves,
                                   time.perf_counter() - t0, method, False, False, reason, tuple(steps))
        search = search_focus(core, roi=roi, centre_um=start, range_um=search_range_um,
                              z_limits_um=z_limits_um, _stage=stage)
        message = f"{reason}; classical search: {search.message}" if search.message else \
            f"{reason}; classical search used"
        return AutofocusResult(search.z_um, start, search.offset_um, search.sigma_um, stage.frames,
                               stage.moves, time.perf_counter() - t0, "search", True, search.converged,
                               message, tuple(steps) + search.steps)
    return AutofocusResult(z_end, start, estimate - z_end, sigma, stage.frames, stage.moves,
                           time.perf_counter() - t0, method, False, sigma <= tolerance_um, "", tuple(steps))


def search_focus(
    core: Any,
    *,
    roi: Sequence[int] | None = None,
    centre_um: float | None = None,
    range_um: float = 50.0,
    coarse_steps: int = 11,
    fine_step_um: float = 2.5,
    min_peak: float = 0.05,
    z_limits_um: tuple[float, float] | None = None,
    _stage: FocusStage | None = None,
) -> AutofocusResult:
    """Classical autofocus: coarse-to-fine search of the sharpest focus position (no network).

    ``coarse_steps`` frames over ``centre ± range_um``, then four frames at ±2 and ±1 ``fine_step_um``
    around the sharpest; the focus is the peak of the sharpness model fitted to the frames near it.
    When the sharpness has no peak (less than ``min_peak`` above the median: a blank field), the
    focus drive goes back to where it was and the result says so.
    """
    t0 = time.perf_counter()
    stage = _stage if _stage is not None else FocusStage(core, z_limits_um)
    frames0, moves0 = stage.frames, stage.moves
    start = stage.z
    centre = start if centre_um is None else float(centre_um)
    if not (range_um > 0 and coarse_steps >= 3 and fine_step_um > 0):
        raise InputError("the search needs range_um > 0, coarse_steps >= 3 and fine_step_um > 0")
    zs: list[float] = []
    ss: list[float] = []
    steps: list[FocusStep] = []

    def measure(z: float) -> None:
        z_at = stage.move(z)
        frame = stage.snap()
        s = image_focus_signals(frame, check_roi(roi, frame.shape))
        zs.append(z_at)
        ss.append(s.sharpness)
        steps.append(FocusStep(z_at, math.nan, math.nan, s.anisotropy, s.sharpness, math.nan, math.nan,
                               "search"))

    for z in np.linspace(centre - range_um, centre + range_um, coarse_steps):
        measure(float(z))
    best = zs[int(np.argmax(ss))]
    for d in (-2, -1, 1, 2):
        measure(best + d * fine_step_um)

    def result(z_end: float, offset: float, sigma: float, ok: bool, message: str) -> AutofocusResult:
        return AutofocusResult(z_end, start, offset, sigma, stage.frames - frames0, stage.moves - moves0,
                               time.perf_counter() - t0, "search", False, ok, message, tuple(steps))

    z = np.array(zs)
    s = np.array(ss)
    if s.max() - np.median(s) < min_peak:
        z_end = stage.move(start)
        return result(z_end, math.nan, math.nan, False,
                      "no sharpness peak in the searched range (blank field?): focus drive returned to start")
    coarse_step = 2.0 * range_um / (coarse_steps - 1)
    near = np.abs(z - best) <= 2.0 * coarse_step
    zf = _candidates(best, coarse_step)
    cost = _sharpness_fit(zf, z[near], s[near])
    focus, sigma = _profile_sigma(zf, cost)
    z_end = stage.move(focus)
    return result(z_end, focus - z_end, sigma, True, "")


def _optics_of(mapper: Any) -> Any:
    """The optics the mapper's network was trained for (the default optics for a bare callable)."""
    optics = getattr(getattr(mapper, "model", None), "optics", None)
    if optics is None:
        from livepsf.optics import Optics

        optics = Optics()
    return optics

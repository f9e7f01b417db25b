"""Focus lock: keep a region in focus during live view or a time-lapse (cylindrical lens in).

With the lens in, the image's anisotropy along the lens axis (:func:`~livepsf.acquisition.focus_signals.
image_focus_signals`) changes linearly with defocus within the lens's line foci (several µm either side
of focus at 10×/0.3). :meth:`FocusLock.engage` records it at the position to hold (the setpoint) and its
slope from two frames a small step either side; from then on every frame gives the signed drift
``-(R - R_set) / slope`` in µm with a σ from the frame-to-frame noise measured at engagement. The lock
moves the focus drive only when the drift exceeds the tolerance *and* is clearly above its noise
(``n_sigma``), waits for the move to show in the frames, and logs every correction
(:attr:`FocusLock.corrections`, the ``livepsf.focus_lock`` logger, ``on_correction``).

Beyond the linear range (a jump rather than a drift) the move is capped at ``max_step_um`` in the
direction the anisotropy says, and, when the lock has a mapper and a calibration, the network's signed
offset sizes it instead.

Use it per frame (:meth:`FocusLock.update`), between time points of a time-lapse (:meth:`FocusLock.step`
snaps one frame), or on a running :class:`~livepsf.acquisition.loop.LiveLoop` (connect
:meth:`FocusLock.on_result` to ``loop.resultReady``; :func:`run_focus_lock` runs one for a number of
maps, :func:`run_headless_focus_lock` engages a lock and does that in one call).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from livepsf.acquisition.focus_signals import check_roi, image_focus_signals, network_offset
from livepsf.acquisition.loop import LiveLoop, run_for_results
from livepsf.errors import InputError

__all__ = ["FocusCorrection", "FocusLock", "FocusLockRun", "run_focus_lock", "run_headless_focus_lock"]

logger = logging.getLogger("livepsf.focus_lock")

# Anisotropy noise floor (frame-to-frame) assumed when the engagement frames agree better than this.
_R_NOISE_FLOOR = 0.002
# Beyond this many µm from the setpoint the anisotropy is no longer linear in defocus.
_LINEAR_RANGE_UM = 4.0


@dataclass(frozen=True)
class FocusCorrection:
    """One move of the focus lock.

    Attributes
    ----------
    t_s
        Lock clock time of the frame that triggered it.
    z_before_um, z_after_um
        Focus-drive position before and after.
    offset_um, sigma_um
        The estimated drift (the move needed, µm) and its σ.
    source
        ``"anisotropy"`` or ``"network"``.
    """

    t_s: float
    z_before_um: float
    z_after_um: float
    offset_um: float
    sigma_um: float
    source: str


class FocusLock:
    """Hold the focus of a region against drift.

    Parameters
    ----------
    core
        pymmcore-plus core with a camera and a focus drive.
    roi
        ``(x, y, width, height)`` in frame pixels; the whole frame when None.
    lens_direction
        Lens direction in the ``(astig_0, astig_45)`` plane (a calibration's ``lens_direction``); only its
        axis matters here. Default: the calibration's, else ``(1, 0)``.
    tolerance_um
        Drift below which nothing moves.
    n_sigma
        A drift must also exceed this many σ to move.
    max_step_um
        Largest single correction.
    settle_s
        After a move, frames read within this time (lock clock) are ignored; frames whose reported Z
        (``frame_z_um``) is not the focus drive's present position are ignored too.
    mapper, calibration
        Optional network and its calibration, to size corrections beyond the anisotropy's linear range.
    clock
        Seconds (``time.monotonic`` by default; the simulator's :class:`~livepsf.sim.SimClock` in tests).
    on_correction
        Called with every :class:`FocusCorrection`.
    """

    def __init__(
        self,
        core: Any,
        *,
        roi: Sequence[int] | None = None,
        lens_direction: Sequence[float] | None = None,
        tolerance_um: float = 0.5,
        n_sigma: float = 3.0,
        max_step_um: float = 10.0,
        settle_s: float = 0.0,
        mapper: Callable[[np.ndarray], Any] | None = None,
        calibration: Any = None,
        clock: Callable[[], float] | None = None,
        on_correction: Callable[[FocusCorrection], None] | None = None,
    ) -> None:
        if not core.getFocusDevice():
            raise InputError("the microscope has no focus drive (core.getFocusDevice() is empty)")
        for name, value in (("tolerance_um", tolerance_um), ("max_step_um", max_step_um)):
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"{name} must be a positive number, got {value!r}")
        self.core = core
        self.roi = None if roi is None else tuple(int(v) for v in roi)
        if lens_direction is None:
            lens_direction = calibration.lens_direction if calibration is not None else (1.0, 0.0)
        self.lens_direction = (float(lens_direction[0]), float(lens_direction[1]))
        self.tolerance_um = float(tolerance_um)
        self.n_sigma = float(n_sigma)
        self.max_step_um = float(max_step_um)
        self.settle_s = float(settle_s)
        self.mapper = mapper
        self.calibration = calibration
        self.clock = clock or time.monotonic
        self.on_correction = on_correction
        self.corrections: list[FocusCorrection] = []
        self.setpoint: float | None = None
        self.slope_per_um: float | None = None
        self.noise: float = _R_NOISE_FLOOR
        self.enabled = False
        self.error = ""
        self._last_move_t = -math.inf
        self._engaging: dict[str, Any] | None = None
        self._moved_at = -math.inf  # time.perf_counter() of the last move, for live results' t_read
        self._lock = threading.Lock()

    # -- engagement ----------------------------------------------------------------------------------
    def engage(self, dither_um: float = 2.0) -> None:
        """Hold the focus where it is now: measure the setpoint, the slope and the noise (4 frames).

        Two frames here (setpoint and noise), one ``dither_um`` above and one below (slope); the focus
        drive returns to where it was. No sequence acquisition may be running.

        Raises
        ------
        InputError
            A live acquisition is running, or the anisotropy does not change with focus (no lens in,
            or a blank field).
        """
        core = self.core
        if core.isSequenceRunning():
            raise InputError("stop the live acquisition to engage the focus lock (it snaps four frames)")
        if not (math.isfinite(dither_um) and dither_um > 0):
            raise InputError(f"dither_um must be positive, got {dither_um!r}")
        z0 = float(core.getZPosition())
        here = [self._anisotropy(self._snap()) for _ in range(2)]
        self._move(z0 + dither_um)
        above = self._anisotropy(self._snap())
        self._move(z0 - dither_um)
        below = self._anisotropy(self._snap())
        self._move(z0)
        self._finish_engagement(z0, dither_um, here, above, below)

    def engage_live(self, dither_um: float = 2.0) -> None:
        """Start engaging on live results instead of snaps (feed them through :meth:`on_result`).

        The same four measurements as :meth:`engage`, taken from the stream: two results at the present
        position, then the lock steps the focus drive ``dither_um`` up, down and back, using the first
        result taken after each move. :attr:`status` says how far it got; :attr:`error` why it failed.
        """
        if not (math.isfinite(dither_um) and dither_um > 0):
            raise InputError(f"dither_um must be positive, got {dither_um!r}")
        with self._lock:
            self.enabled = False
            self.error = ""
            self._engaging = {"z0": float(self.core.getZPosition()), "dither": float(dither_um), "here": []}

    def disengage(self) -> None:
        """Stop correcting (the setpoint is kept; :meth:`engage` measures a new one)."""
        self.enabled = False
        self._engaging = None

    @property
    def status(self) -> str:
        """``"off"``, ``"engaging"``, ``"locked"`` or ``"failed: ..."``."""
        if self._engaging is not None:
            return "engaging"
        if self.enabled:
            return "locked"
        return f"failed: {self.error}" if self.error else "off"

    def _finish_engagement(self, z0: float, dither_um: float, here: Sequence[float], above: float,
                           below: float) -> None:
        noise = max(abs(here[0] - here[1]) / math.sqrt(2.0), _R_NOISE_FLOOR)
        slope = (above - below) / (2.0 * dither_um)
        if not math.isfinite(slope) or abs(slope) * dither_um < 3.0 * noise:
            raise InputError("the focus lock cannot see focus changes here (the image's anisotropy does not "
                             "follow focus): is the cylindrical lens in, and is there texture in the region?")
        with self._lock:
            self.setpoint = float(np.mean(here))
            self.slope_per_um = float(slope)
            self.noise = float(noise)
            self._last_move_t = self.clock()
            self.enabled = True
        logger.info("focus lock engaged at Z %.2f µm: anisotropy %.4f, slope %.4f /µm, noise %.4f",
                    z0, self.setpoint, slope, noise)

    def _engage_step(self, frame: np.ndarray, frame_z_um: float | None, t_read: float | None) -> None:
        """One live result of :meth:`engage_live`: record it if it shows the present focus, then move."""
        state = self._engaging
        if state is None or not self._is_current(frame_z_um, t_read):
            return
        z0, dither = state["z0"], state["dither"]
        r = self._anisotropy(frame)
        if len(state["here"]) < 2:
            state["here"].append(r)
            if len(state["here"]) == 2:
                self._move_live(z0 + dither)
        elif "above" not in state:
            state["above"] = r
            self._move_live(z0 - dither)
        else:
            self._move_live(z0)
            self._engaging = None
            try:
                self._finish_engagement(z0, dither, state["here"], state["above"], r)
            except InputError as exc:
                self.error = str(exc)
                logger.warning("focus lock: %s", exc)

    def _is_current(self, frame_z_um: float | None, t_read: float | None) -> bool:
        """Whether a live frame was taken after the focus drive's last move (and at its position)."""
        if t_read is not None and t_read < self._moved_at + self.settle_s:
            return False
        return frame_z_um is None or abs(frame_z_um - float(self.core.getZPosition())) <= 0.05

    def _move_live(self, z_um: float) -> None:
        self._move(z_um)
        self._moved_at = time.perf_counter()

    # -- per frame -----------------------------------------------------------------------------------
    def estimate(self, frame: np.ndarray) -> tuple[float, float]:
        """Signed drift (the focus move that restores the setpoint, µm) and its σ from one frame."""
        if self.setpoint is None or self.slope_per_um is None:
            raise InputError("the focus lock is not engaged: call engage() first")
        r = self._anisotropy(frame)
        offset = -(r - self.setpoint) / self.slope_per_um
        sigma = math.sqrt(2.0) * self.noise / abs(self.slope_per_um)
        return offset, sigma

    def update(self, frame: np.ndarray, frame_z_um: float | None = None, t_s: float | None = None,
               pmap: Any = None) -> FocusCorrection | None:
        """Look at one frame; move the focus drive if it drifted. Returns the correction made, if any.

        Parameters
        ----------
        frame
            The latest frame of the region's camera.
        frame_z_um
            The focus position the frame was taken at, when known (skips frames from before a move).
        t_s
            When it was taken on the lock's clock (default: now).
        pmap
            Its PSF map, if already computed (used with a calibration beyond the linear range).
        """
        if not self.enabled:
            return None
        now = self.clock() if t_s is None else float(t_s)
        with self._lock:
            if now - self._last_move_t < self.settle_s:
                return None
            # A frame taken before the focus drive's last move (ours or anyone's) shows a stale focus.
            if not self._is_current(frame_z_um, None):
                return None
            offset, sigma = self.estimate(frame)
            source = "anisotropy"
            if abs(offset) > _LINEAR_RANGE_UM:
                offset, sigma, source = self._far(frame, pmap, offset, sigma)
            if abs(offset) <= self.tolerance_um or abs(offset) <= self.n_sigma * sigma:
                return None
            z_before = float(self.core.getZPosition())
            z_after = self._move(z_before + float(np.clip(offset, -self.max_step_um, self.max_step_um)))
            self._moved_at = time.perf_counter()
            self._last_move_t = now
            correction = FocusCorrection(now, z_before, z_after, offset, sigma, source)
            self.corrections.append(correction)
        logger.info("focus lock: drift %+.2f ± %.2f µm (%s), Z %.2f -> %.2f µm", offset, sigma, source,
                    z_before, z_after)
        if self.on_correction is not None:
            self.on_correction(correction)
        return correction

    def step(self) -> FocusCorrection | None:
        """Snap one frame and :meth:`update` with it (time-lapses, or any loop without live view)."""
        return self.update(self._snap(), frame_z_um=float(self.core.getZPosition()))

    def on_result(self, result: Any) -> None:
        """Slot for :attr:`LiveLoop.resultReady`: update with a live result (frame, its Z, its map)."""
        frame_z = result.metadata.get("SimZ_um") if hasattr(result, "metadata") else None
        try:
            frame_z_um = float(frame_z) if frame_z is not None else None
        except ValueError:
            frame_z_um = None
        try:
            if self._engaging is not None:
                self._engage_step(result.frame, frame_z_um, getattr(result, "t_read", None))
            elif self._is_current(None, getattr(result, "t_read", None)):
                self.update(result.frame, frame_z_um=frame_z_um, pmap=getattr(result, "pmap", None))
        except Exception as exc:  # the live loop must go on; the log says why the lock did not act
            logger.warning("focus lock: %s", exc)

    # -- helpers -------------------------------------------------------------------------------------
    def _anisotropy(self, frame: np.ndarray) -> float:
        roi = check_roi(self.roi, np.shape(frame))
        return image_focus_signals(frame, roi, self.lens_direction).anisotropy

    def _far(self, frame: np.ndarray, pmap: Any, offset: float, sigma: float) -> tuple[float, float, str]:
        """Beyond the linear range: the network's signed offset if it can be had, else the direction only."""
        if self.calibration is not None and (pmap is not None or self.mapper is not None):
            pmap = pmap if pmap is not None else self.mapper(frame)
            net = network_offset(pmap, self.calibration, frame, self.roi)
            if net.ok:
                return net.offset_um, net.sigma_um, "network"
        return math.copysign(max(abs(offset), self.max_step_um), offset), sigma, "anisotropy"

    def _snap(self) -> np.ndarray:
        self.core.snapImage()
        img = np.asarray(self.core.getImage())
        return img if img.ndim == 2 else img[..., 0]

    def _move(self, z_um: float) -> float:
        self.core.setZPosition(float(z_um))
        self.core.waitForDevice(self.core.getFocusDevice())
        return float(self.core.getZPosition())


@dataclass(frozen=True)
class FocusLockRun:
    """What :func:`run_focus_lock` did: results seen, corrections made, and why it ended."""

    results: int
    corrections: tuple[FocusCorrection, ...]
    reason: str

    @property
    def completed(self) -> bool:
        return self.reason == "completed"


def run_focus_lock(loop: Any, lock: FocusLock, *, frames: int, timeout_s: float | None = None,
                   on_tick: Callable[[Any], None] | None = None, tick_s: float = 1.0) -> FocusLockRun:
    """Run a live loop with ``lock`` on its results until ``frames`` results (headless focus lock).

    ``lock`` must be engaged (or engaging live, :meth:`FocusLock.engage_live`); the loop (a
    :class:`~livepsf.acquisition.loop.LiveLoop`, not started) is started here and stopped at the end.
    ``on_tick(loop.stats())`` is called every ``tick_s`` seconds.
    """
    if lock.status not in ("locked", "engaging"):
        raise InputError("engage the focus lock before running it")
    first = len(lock.corrections)
    results, reason = run_for_results(loop, frames, on_result=lock.on_result, on_tick=on_tick, tick_s=tick_s,
                                      timeout_s=timeout_s)
    return FocusLockRun(results, tuple(lock.corrections[first:]), reason)


def run_headless_focus_lock(
    core: Any,
    model: Any,
    *,
    frames: int,
    stride_px: int = 64,
    roi: Sequence[int] | None = None,
    calibration: Any = None,
    settle_s: float = 0.0,
    on_engaged: Callable[[FocusLock], None] | None = None,
    on_correction: Callable[[FocusCorrection], None] | None = None,
    on_tick: Callable[[Any], None] | None = None,
    tick_s: float = 1.0,
    timeout_s: float | None = None,
) -> FocusLockRun:
    """Hold the present focus for ``frames`` live maps without a window (``livepsf demo|live --focus-lock``).

    The lock is engaged where the focus is now (:meth:`FocusLock.engage`: four snapped frames), then a
    :class:`~livepsf.acquisition.loop.LiveLoop` runs with the lock on its results (:func:`run_focus_lock`).
    The lock and the loop share one :class:`~livepsf.mapping.PSFMapper` and the calibration, so the
    network's offset that sizes a large correction is the one the live maps show.

    Parameters
    ----------
    core
        pymmcore-plus core with a camera and a focus drive (cylindrical lens in); live view off.
    model
        The network (:func:`livepsf.load_model`).
    frames
        Live maps to run for.
    stride_px
        Window step of the PSF maps.
    roi
        ``(x, y, width, height)`` to hold in focus; the whole frame when None.
    calibration
        Depth calibration made with ``model``, if any (network-sized corrections beyond the linear range).
    settle_s
        Wait after each correction before the next one may follow.
    on_engaged
        Called with the engaged lock before the loop starts.
    on_correction
        Called with every :class:`FocusCorrection`.
    on_tick, tick_s, timeout_s
        As for :func:`run_focus_lock`.

    Returns
    -------
    FocusLockRun
        Maps seen, corrections made, and why the run ended.

    Raises
    ------
    InputError
        No focus drive, live view running, or an anisotropy that does not change with focus (no lens).
    """
    from livepsf.mapping import PSFMapper

    mapper = PSFMapper(model, stride_px=stride_px)
    lock = FocusLock(core, roi=roi, calibration=calibration, mapper=mapper, settle_s=settle_s,
                     on_correction=on_correction)
    lock.engage()
    if on_engaged is not None:
        on_engaged(lock)
    return run_focus_lock(LiveLoop(core, mapper, calibration=calibration), lock, frames=frames,
                          timeout_s=timeout_s, on_tick=on_tick, tick_s=tick_s)

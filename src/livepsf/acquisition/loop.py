"""The live loop: camera frames from any pymmcore-plus core → PSF map (+ depth) → a published result.

With a depth calibration each result carries the per-window depth, its σ and the depth surface fused
across the windows (:func:`livepsf.depth.surface.live_depth`: the live prior, the texture gate on a
decimated frame; about a millisecond or two on top of the map, see ``benchmarks/bench_depth.py``).

:class:`LiveLoop` starts a continuous sequence acquisition on a ``CMMCorePlus`` (a real Micro-Manager
configuration, or the simulator's ``UniMMCore``) and runs one consumer thread that always maps the
**newest** frame: each turn it drains the circular buffer, keeps the last frame, counts the ones it
passed over (from the cores' ``ImageNumber`` metadata, so frames the buffer itself overwrote count too)
and never builds a queue. Each mapped frame becomes a :class:`LiveResult`, published through the psygnal
signal :attr:`LiveLoop.resultReady` from the consumer thread; a GUI stores it and draws only the latest.

Failures are reported through :attr:`LiveLoop.errorOccurred` and the ``livepsf.live`` logger, and the
loop either recovers or stops cleanly (:attr:`LiveLoop.stopped` says why):

* an exception in the mapper or the depth model: reported, the frame is dropped, the loop goes on; after
  ``max_consecutive_errors`` failures in a row it stops;
* the camera fails mid-stream (its acquisition ends without anybody stopping it): reported with the
  camera's error message, the acquisition is restarted up to ``restart_attempts`` times, then it stops;
* the sequence acquisition is stopped elsewhere (another widget, a script): if it is restarted within
  ``restart_grace_s`` (Micro-Manager does so around an ROI or binning change) the loop follows it,
  otherwise it stops, leaving the camera as the other party left it;
* a frame of a new size (ROI or binning changed): reported through :attr:`LiveLoop.frameShapeChanged`,
  and mapped at its new size.

:meth:`LiveLoop.stop` returns within a second and leaves no thread behind.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from livepsf.acquisition.thread_tuner import ThreadTuner
from livepsf.errors import InputError
from livepsf.mapping import PSFMap

if TYPE_CHECKING:
    from livepsf.depth.surface import DepthSurface

__all__ = [
    "DepthModel", "FrameSink", "LiveLoop", "LiveResult", "LiveStats", "ResultRecorder", "run_for_results",
]

logger = logging.getLogger("livepsf.live")

#: ``pmap -> (gy, gx) depth in µm`` (a :class:`livepsf.depth.Calibration` has ``depth_um``).
DepthModel = Any
#: Called with every frame taken from the buffer (mapped or skipped) and its metadata, e.g. a recorder.
FrameSink = Callable[[np.ndarray, Mapping[str, str]], None]

# Seconds the consumer sleeps when the buffer is empty: short against a 30 ms frame, long against a
# busy loop on two cores.
_POLL_S = 0.002
# After the camera's acquisition ends on its own, how long to wait for the core's
# sequenceAcquisitionStopped event (emitted right after the stop) before calling it a camera failure.
_STOP_EVENT_GRACE_S = 0.25
# Stage Z is cached from stagePositionChanged; refreshed by a read at most this often for cores whose
# focus drive does not emit the event.
_Z_REFRESH_S = 0.25


#: Default of :meth:`LiveLoop.set_mapper`'s ``calibration``: keep the current one.
_UNCHANGED: Any = object()


@dataclass(frozen=True)
class LiveResult:
    """One mapped frame, as published by :class:`LiveLoop`.

    Attributes
    ----------
    frame
        The 2D frame as read from the camera (its own copy).
    pmap
        Its PSF map.
    depth_um
        ``(gy, gx)`` depth in µm on the map's window grid (each window's own), or ``None`` without a
        calibration.
    image_number
        The camera's frame counter (``ImageNumber`` metadata), or the loop's own count without it.
    skipped
        Frames passed over since the previous result (latest frame wins).
    stage_z_um
        Focus drive position when the frame was mapped (``None`` without a focus device).
    t_read, t_mapped, t_published
        ``time.perf_counter()`` seconds when the frame left the buffer, when its map (and depth) was
        done, and when the result was handed to the signal.
    metadata
        The frame's metadata (camera and core keys, as strings).
    depth_sigma_um
        ``(gy, gx)`` σ of ``depth_um`` in µm, ``inf`` where a window tells nothing about depth
        (textureless, or texture in one direction only); ``None`` without a calibration or for depth
        models without σ.
    depth_surface
        The depth surface fused across the windows (:class:`livepsf.depth.DepthSurface`, prior
        :data:`livepsf.depth.surface.LIVE_PRIOR`), or ``None`` (no calibration, or too few windows
        carry depth).
    """

    frame: np.ndarray
    pmap: PSFMap
    depth_um: np.ndarray | None
    image_number: int
    skipped: int
    stage_z_um: float | None
    t_read: float
    t_mapped: float
    t_published: float
    metadata: Mapping[str, str] = field(default_factory=dict)
    depth_sigma_um: np.ndarray | None = None
    depth_surface: DepthSurface | None = None

    @property
    def latency_ms(self) -> float:
        """Buffer → published latency in milliseconds."""
        return (self.t_published - self.t_read) * 1e3


@dataclass(frozen=True)
class LiveStats:
    """Throughput and latency of a :class:`LiveLoop` (rolling window, or the whole run).

    Rates are ``nan`` until two events fall in the window; latencies are ``nan`` until one does.
    ``torch_threads`` is the thread count the mapping currently runs with (:class:`ThreadTuner`).
    """

    running: bool
    camera_fps: float
    maps_per_s: float
    latency_ms_median: float
    latency_ms_p95: float
    drawn_latency_ms_median: float
    drawn_latency_ms_p95: float
    frames: int
    maps: int
    skipped: int
    errors: int
    last_error: str
    frame_shape: tuple[int, ...] | None
    window_s: float | None
    torch_threads: int | None = None

    def line(self) -> str:
        """One human line (status bars, the headless demo)."""
        def f(v: float, fmt: str) -> str:
            return "–" if not np.isfinite(v) else format(v, fmt)

        text = (f"camera {f(self.camera_fps, '.1f')} fps · maps {f(self.maps_per_s, '.1f')}/s · "
                f"latency {f(self.latency_ms_median, '.0f')} ms (p95 {f(self.latency_ms_p95, '.0f')})")
        if np.isfinite(self.drawn_latency_ms_median):
            text += (f" · on screen {f(self.drawn_latency_ms_median, '.0f')} ms "
                     f"(p95 {f(self.drawn_latency_ms_p95, '.0f')})")
        text += f" · skipped {self.skipped} · errors {self.errors}"
        if self.torch_threads is not None:
            text += f" · {self.torch_threads} torch thread{'s' if self.torch_threads != 1 else ''}"
        return text


def _percentiles(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    arr = np.asarray(values, dtype=np.float64) * 1e3
    return float(np.median(arr)), float(np.percentile(arr, 95))


def _since(history: deque, lo: float) -> list:
    """Entries of a time-ordered history with ``t >= lo``, walking back from the newest only."""
    if lo == -np.inf:
        return list(history)
    out = []
    for item in reversed(history):
        if item[0] < lo:
            break
        out.append(item)
    out.reverse()
    return out


def _rate(times: list[float], counts: list[int] | None = None) -> float:
    """Events per second between the first and last timestamps (counts: a monotonic counter instead)."""
    if len(times) < 2 or times[-1] <= times[0]:
        return float("nan")
    n = (counts[-1] - counts[0]) if counts is not None else len(times) - 1
    return n / (times[-1] - times[0])


# -- camera failures -------------------------------------------------------------------------------
# pymmcore-plus's UniMMCore runs a Python camera in its own thread; when the camera raises, the
# acquisition simply ends and the message only reaches threading.excepthook. A chained hook keeps the
# last few such messages so the loop can say *why* the camera stopped instead of just "it stopped".
_thread_errors: deque[tuple[float, str, str]] = deque(maxlen=16)
_hook_lock = threading.Lock()


def _record_thread_error(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread is not None else "?"
    _thread_errors.append((time.monotonic(), name, f"{args.exc_value}"))


def _install_thread_error_hook() -> None:
    """Chain :func:`_record_thread_error` in front of the current ``threading.excepthook`` (once)."""
    with _hook_lock:
        current = threading.excepthook
        if getattr(current, "_livepsf_records_errors", False):
            return

        def hook(args: threading.ExceptHookArgs) -> None:
            _record_thread_error(args)
            current(args)

        hook._livepsf_records_errors = True  # type: ignore[attr-defined]
        threading.excepthook = hook


def _thread_error_since(t0: float) -> str | None:
    for t, _name, message in reversed(_thread_errors):
        if t >= t0:
            return message
    return None


#: (core event, LiveLoop method) pairs the loop listens to.
_CORE_EVENTS = (("sequenceAcquisitionStopped", "_on_acquisition_stopped"),
                ("continuousSequenceAcquisitionStarting", "_on_acquisition_starting"),
                ("continuousSequenceAcquisitionStarted", "_on_acquisition_started"),
                ("stagePositionChanged", "_on_stage_moved"))


class _EventRelay:
    """A core-event slot that forwards to a LiveLoop method while the loop exists (see _connect_events)."""

    __slots__ = ("_loop", "_method")

    def __init__(self, loop: LiveLoop, method: str) -> None:
        self._loop = weakref.ref(loop)
        self._method = method

    def __call__(self, *args: Any) -> None:
        loop = self._loop()
        if loop is not None:
            getattr(loop, self._method)(*args)


#: Relays of stopped loops, kept so that a call queued before the disconnect finds a live object (a few
#: dozen bytes per stopped loop; at most the last 256 are kept, far more than any queue holds).
_RETIRED_RELAYS: deque[_EventRelay] = deque(maxlen=256)


class LiveLoop:
    """Map the newest camera frame, continuously, on any pymmcore-plus core.

    Parameters
    ----------
    core
        A ``CMMCorePlus`` (or ``UniMMCore``) with a camera.
    mapper
        ``frame (2D) -> PSFMap``, normally a :class:`livepsf.PSFMapper`. Replace it while running with
        :meth:`set_mapper` (model or stride change).
    calibration
        Depth model (:class:`livepsf.depth.Calibration`, anything with ``depth_um(pmap)``), or ``None``.
    camera
        Camera label; the core's current camera when omitted.
    interval_ms
        Interval passed to ``startContinuousSequenceAcquisition``.
    max_consecutive_errors
        Stop after this many mapping failures in a row.
    restart_attempts
        Times to restart the acquisition after the camera fails on its own.
    stats_window_s
        Window of the rolling statistics (:meth:`stats`).
    restart_grace_s
        After the acquisition is stopped elsewhere, how long to wait for it to be restarted (as
        Micro-Manager does around an ROI or binning change) before the loop stops.
    torch_threads
        Torch threads of the mapping. ``None`` (default): measured while running, the faster of the
        process's count and 1, re-checked every few seconds (:class:`ThreadTuner`: with another
        process keeping a core busy, one thread maps a 1024² frame 3x faster on 2 cores).

    Signals
    -------
    resultReady(LiveResult)
        A frame was mapped. Emitted from the consumer thread: keep slots short (store and return).
    errorOccurred(str)
        Something went wrong (also logged); the loop goes on unless :attr:`stopped` follows.
    started()
        The loop is consuming frames.
    stopped(str)
        The loop ended; the argument says why (``"stopped"`` after :meth:`stop`).
    frameShapeChanged(tuple)
        Frames arrive at a new ``(height, width)``.
    """

    resultReady = Signal(object)
    errorOccurred = Signal(str)
    started = Signal()
    stopped = Signal(str)
    frameShapeChanged = Signal(tuple)

    def __init__(
        self,
        core: Any,
        mapper: Callable[[np.ndarray], PSFMap],
        *,
        calibration: DepthModel | None = None,
        camera: str | None = None,
        interval_ms: float = 0.0,
        max_consecutive_errors: int = 5,
        restart_attempts: int = 1,
        stats_window_s: float = 2.0,
        restart_grace_s: float = 2.0,
        torch_threads: int | None = None,
    ) -> None:
        self.core = core
        # One tuple, replaced in one assignment: a frame is never mapped with a new network and then
        # converted to depth with the calibration of the old one.
        self._pipeline: tuple[Callable[[np.ndarray], PSFMap], DepthModel | None] = (mapper, calibration)
        self.camera = camera
        self.interval_ms = float(interval_ms)
        self.max_consecutive_errors = int(max_consecutive_errors)
        self.restart_attempts = int(restart_attempts)
        self.stats_window_s = float(stats_window_s)
        self.restart_grace_s = float(restart_grace_s)
        self._threads = ThreadTuner() if torch_threads is None else ThreadTuner([torch_threads])

        self._lock = threading.Lock()
        self._stop_requested = threading.Event()
        self._stopped_elsewhere = threading.Event()
        self._restarted = threading.Event()
        self._core_starting = threading.Event()
        self._thread: threading.Thread | None = None
        self._owns_acquisition = False
        self._self_starting = False
        self._sinks: list[FrameSink] = []
        self._latest: LiveResult | None = None
        self._z_um: float | None = None
        self._z_read_at = 0.0
        self._reset_stats()

    # -- configuration, safe while running ---------------------------------------------------------
    @property
    def mapper(self) -> Callable[[np.ndarray], PSFMap]:
        return self._pipeline[0]

    def set_mapper(self, mapper: Callable[[np.ndarray], PSFMap], *,
                   calibration: DepthModel | None | object = _UNCHANGED) -> None:
        """Use another mapper (model, stride) from the next frame on.

        Pass ``calibration`` (a calibration or ``None``) to change it in the same step, as a change of
        network requires: the loop never pairs the new mapper with the old calibration.
        """
        self._pipeline = (mapper, self._pipeline[1] if calibration is _UNCHANGED else calibration)

    @property
    def calibration(self) -> DepthModel | None:
        return self._pipeline[1]

    def set_calibration(self, calibration: DepthModel | None) -> None:
        """Use another depth calibration (or none) from the next frame on."""
        self._pipeline = (self._pipeline[0], calibration)

    def add_frame_sink(self, sink: FrameSink) -> None:
        """Also hand every frame taken from the buffer to ``sink(frame, metadata)`` (e.g. a recorder).

        Sinks run on the consumer thread and must be quick (queue the frame, do not write it there). A
        sink that raises is reported and removed.
        """
        with self._lock:
            self._sinks.append(sink)

    def remove_frame_sink(self, sink: FrameSink) -> None:
        with self._lock:
            if sink in self._sinks:
                self._sinks.remove(sink)

    # -- state -------------------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def latest(self) -> LiveResult | None:
        """The most recent result (or ``None``)."""
        return self._latest

    # -- start / stop ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the camera's continuous acquisition (unless already running) and the consumer thread."""
        if self.is_running:
            return
        core = self.core
        if self.camera:
            if self.camera not in core.getLoadedDevices():
                loaded = ", ".join(core.getLoadedDevices())
                raise ValueError(f"no camera {self.camera!r}; loaded devices: {loaded}")
            if core.getCameraDevice() != self.camera:
                core.setCameraDevice(self.camera)
        if not core.getCameraDevice():
            raise ValueError("the core has no camera device set")
        _install_thread_error_hook()
        self._reset_stats()
        self._stop_requested.clear()
        self._stopped_elsewhere.clear()
        self._restarted.clear()
        self._core_starting.clear()
        self._connect_events()
        self._owns_acquisition = not core.isSequenceRunning()
        self._t_start = time.monotonic()
        try:
            if self._owns_acquisition:
                self._start_acquisition()
        except Exception:
            self._disconnect_events()
            raise
        self._thread = threading.Thread(target=self._run, name="livepsf-live-loop", daemon=True)
        self._thread.start()
        self.started.emit()

    def _start_acquisition(self) -> None:
        self._self_starting = True
        try:
            self.core.startContinuousSequenceAcquisition(self.interval_ms)
        finally:
            self._self_starting = False

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop consuming frames (and the acquisition, if this loop started it); returns within ``timeout_s``.

        Safe to call from a slot of :attr:`resultReady` (the consumer thread then ends on its own).
        """
        self._stop_requested.set()
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(timeout_s)
        if thread.is_alive():
            logger.warning("live loop still finishing a map after %.1f s; it will stop after it", timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until the consumer thread has ended; ``True`` if it has."""
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout_s)
        return not thread.is_alive()

    # -- statistics --------------------------------------------------------------------------------
    def note_drawn(self, result: LiveResult, t_drawn: float | None = None) -> None:
        """Record that ``result`` reached the screen (for the buffer → drawn latency)."""
        t = time.perf_counter() if t_drawn is None else t_drawn
        with self._lock:
            self._drawn.append((t, t - result.t_read))

    def stats(self, window_s: float | None = -1.0) -> LiveStats:
        """Rates and latencies over the last ``window_s`` seconds (default :attr:`stats_window_s`).

        ``window_s=None`` gives the whole run (the headless demo's summary).
        """
        window = self.stats_window_s if window_s == -1.0 else window_s
        now = time.perf_counter()
        lo = -np.inf if window is None else now - window
        with self._lock:
            frames = _since(self._frame_times, lo)
            maps = _since(self._map_times, lo)
            drawn = [lat for _, lat in _since(self._drawn, lo)]
            frames_total, maps_total = self._frames_total, self._maps_total
            skipped, errors, last_error = self._skipped, self._errors, self._last_error
            shape = self._frame_shape
        med, p95 = _percentiles([lat for _, lat in maps])
        dmed, dp95 = _percentiles(drawn)
        return LiveStats(
            running=self.is_running,
            camera_fps=_rate([t for t, _ in frames], [n for _, n in frames]),
            maps_per_s=_rate([t for t, _ in maps]),
            latency_ms_median=med,
            latency_ms_p95=p95,
            drawn_latency_ms_median=dmed,
            drawn_latency_ms_p95=dp95,
            frames=frames_total,
            maps=maps_total,
            skipped=skipped,
            errors=errors,
            last_error=last_error,
            frame_shape=shape,
            window_s=window,
            torch_threads=self._threads.current,
        )

    def _reset_stats(self) -> None:
        # Bounded histories (about two hours at 30 maps/s) for the whole-run summary.
        self._frame_times: deque[tuple[float, int]] = deque(maxlen=200_000)
        self._map_times: deque[tuple[float, float]] = deque(maxlen=200_000)
        self._drawn: deque[tuple[float, float]] = deque(maxlen=200_000)
        self._frames_total = 0
        self._maps_total = 0
        self._skipped = 0
        self._errors = 0
        self._last_error = ""
        self._frame_shape: tuple[int, ...] | None = None
        self._last_number: int | None = None
        self._t_start = time.monotonic()

    # -- core events -------------------------------------------------------------------------------
    def _connect_events(self) -> None:
        # The core's events are Qt signals when a QApplication exists (pymmcore-plus's Qt signaler), and
        # those emitted by the acquisition thread are queued to the main thread. PySide resolves a bound
        # method's instance only when the queued call is delivered, so a call queued before
        # _disconnect_events and delivered after this loop was collected read freed memory (a segfault
        # after a camera error and restart). The slots are therefore relays that hold the loop weakly.
        self._event_slots = [(getattr(self.core.events, signal), _EventRelay(self, method))
                             for signal, method in _CORE_EVENTS]
        for signal, relay in self._event_slots:
            signal.connect(relay)

    def _disconnect_events(self) -> None:
        for signal, relay in getattr(self, "_event_slots", []):
            try:
                signal.disconnect(relay)
            except (TypeError, ValueError, RuntimeError):
                pass  # already disconnected
            _RETIRED_RELAYS.append(relay)  # a call may still be queued for it: keep it alive
        self._event_slots = []

    def _on_acquisition_stopped(self, camera_label: str = "") -> None:
        if not self._stop_requested.is_set():
            self._restarted.clear()
            self._stopped_elsewhere.set()

    def _on_acquisition_starting(self, *args: Any) -> None:
        # pymmcore-plus's UniMMCore.isSequenceRunning() drops its reference to an acquisition thread
        # that is not alive yet; called from this thread while another one is inside
        # startContinuousSequenceAcquisition it can orphan the new acquisition. So between "starting"
        # and "started" the loop does not ask.
        self._core_starting.set()

    def _on_acquisition_started(self, *args: Any) -> None:
        # Somebody (re)started live mode: frames flow again, it was not "stopped elsewhere" for good.
        self._core_starting.clear()
        if self._self_starting:
            return
        self._stopped_elsewhere.clear()
        self._restarted.set()
        self._owns_acquisition = False  # somebody else's acquisition now: theirs to stop

    def _wait_for_restart(self) -> bool:
        """After a stop from elsewhere: wait up to ``restart_grace_s`` for live mode to come back."""
        deadline = time.monotonic() + self.restart_grace_s
        while time.monotonic() < deadline and not self._stop_requested.is_set():
            if self._restarted.wait(0.02):
                self._restarted.clear()
                return self._sequence_running()
        return False

    def _on_stage_moved(self, label: str, position_um: float) -> None:
        try:
            focus = self.core.getFocusDevice()
        except Exception:
            focus = ""
        if not focus or label == focus:
            self._z_um = float(position_um)
            self._z_read_at = time.monotonic()

    def _stage_z(self) -> float | None:
        now = time.monotonic()
        if now - self._z_read_at > _Z_REFRESH_S:
            self._z_read_at = now
            try:
                if self.core.getFocusDevice():
                    self._z_um = float(self.core.getPosition())
            except Exception:  # a focus drive that cannot be read right now: keep the last value
                pass
        return self._z_um

    # -- consumer thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        reason = "stopped"
        consecutive_errors = 0
        restarts_left = self.restart_attempts
        try:
            self._warm_up()
            while not self._stop_requested.is_set():
                taken = self._drain()
                if taken is None:
                    ended = self._acquisition_ended()
                    if ended is None:
                        self._stop_requested.wait(_POLL_S)
                        continue
                    if ended == "elsewhere":
                        # Micro-Manager restarts live mode after an ROI or binning change: follow it.
                        if self._wait_for_restart():
                            logger.info("sequence acquisition restarted elsewhere; following it")
                            self._owns_acquisition = False
                            continue
                        reason = "sequence acquisition was stopped outside the live loop"
                        self._report(reason)
                        break
                    # The camera ended on its own: a camera failure.
                    if restarts_left > 0:
                        restarts_left -= 1
                        self._report(f"camera stopped: {ended}; restarting the acquisition")
                        try:
                            self._t_start = time.monotonic()
                            self._start_acquisition()
                            continue
                        except Exception as exc:
                            ended = f"{ended}; restart failed: {exc}"
                    reason = f"camera stopped: {ended}"
                    self._report(reason)
                    break
                frame, meta, number, skipped, t_read = taken
                try:
                    self._process(frame, meta, number, skipped, t_read)
                    consecutive_errors = 0
                except Exception as exc:
                    consecutive_errors += 1
                    logger.debug("mapping failed", exc_info=True)
                    self._report(f"mapping frame {number} failed: {type(exc).__name__}: {exc}")
                    if consecutive_errors >= self.max_consecutive_errors:
                        reason = f"stopped after {consecutive_errors} failed frames in a row: {exc}"
                        self._report(reason)
                        break
        except Exception as exc:  # the loop itself must never die silently
            reason = f"live loop failed: {type(exc).__name__}: {exc}"
            logger.exception("live loop failed")
            self._count_error(reason)
            self.errorOccurred.emit(reason)
        finally:
            self._finish()
            self.stopped.emit(reason)

    def _warm_up(self) -> None:
        """Map a blank frame of the camera's size twice: TorchScript optimises a module on its first
        calls, which would otherwise put a second-long outlier into the first results' latency."""
        try:
            shape = (int(self.core.getImageHeight()), int(self.core.getImageWidth()))
            blank = np.zeros(shape, np.uint16)
            self._threads.apply()  # warm up with the thread count the frames will use (not timed)
            for _ in range(2):
                if self._stop_requested.is_set():
                    return
                self.mapper(blank)
        except Exception:  # a frame too small for the model, say: the real frames will report it
            logger.debug("warm-up map failed", exc_info=True)

    def _finish(self) -> None:
        self._disconnect_events()
        if self._owns_acquisition and not self._stopped_elsewhere.is_set():
            try:
                if self.core.isSequenceRunning():
                    self.core.stopSequenceAcquisition()
            except Exception as exc:
                self._report(f"could not stop the camera: {exc}")
        self._owns_acquisition = False

    def _acquisition_ended(self) -> str | None:
        """``None`` while frames may still come; ``"elsewhere"``; or the camera's failure message."""
        if self._core_starting.is_set():
            return None
        try:
            if self.core.isSequenceRunning() or self.core.getRemainingImageCount() > 0:
                return None
        except Exception as exc:
            return f"camera not responding ({exc})"
        if self._stopped_elsewhere.is_set():
            return "elsewhere"
        message = _thread_error_since(self._t_start)
        if message is None:
            # The core emits sequenceAcquisitionStopped just after the acquisition has stopped, and
            # somebody may already be starting it again: give both the time to show before calling the
            # end a camera failure.
            deadline = time.monotonic() + _STOP_EVENT_GRACE_S
            while time.monotonic() < deadline:
                if self._stop_requested.is_set():
                    return None
                if self._stopped_elsewhere.is_set():
                    return "elsewhere"
                if self._restarted.is_set() or self._sequence_running():
                    return None
                time.sleep(0.01)
            message = _thread_error_since(self._t_start) or "the acquisition ended without a stop request"
        return None if self._sequence_running() else message

    def _sequence_running(self) -> bool:
        if self._core_starting.is_set():
            return True
        try:
            return bool(self.core.isSequenceRunning())
        except Exception:
            return False

    def _drain(self) -> tuple[np.ndarray, dict[str, str], int, int, float] | None:
        """Pop everything in the buffer, hand each frame to the sinks, keep the newest."""
        core = self.core
        try:
            remaining = core.getRemainingImageCount()
        except Exception:
            return None
        if remaining <= 0:
            return None
        newest: tuple[np.ndarray, dict[str, str]] | None = None
        popped = 0
        # Pop only what was there when we looked (a fast camera must not keep us draining forever).
        for _ in range(remaining):
            try:
                img, md = core.popNextImageAndMD()
            except IndexError:  # emptied under us (buffer cleared by a restart elsewhere)
                break
            meta = _metadata_dict(md)
            popped += 1
            self._feed_sinks(img, meta)
            newest = (img, meta)
        if newest is None:
            return None
        t_read = time.perf_counter()
        img, meta = newest
        with self._lock:
            number = _image_number(meta)
            if number is None:
                number = self._frames_total + popped - 1
                skipped = popped - 1
            elif self._last_number is None or number <= self._last_number:  # first frame, or a restart
                skipped = popped - 1
            else:
                skipped = max(number - self._last_number - 1, popped - 1)
            self._last_number = number
            self._frames_total += skipped + 1
            self._skipped += skipped
            self._frame_times.append((t_read, self._frames_total))
        return img, meta, number, skipped, t_read

    def _feed_sinks(self, img: np.ndarray, meta: dict[str, str]) -> None:
        with self._lock:
            sinks = list(self._sinks)
        for sink in sinks:
            try:
                sink(img, meta)
            except Exception as exc:
                self.remove_frame_sink(sink)
                name = getattr(sink, "__qualname__", sink)
                self._report(f"frame sink {name!r} failed and was removed: {exc}")

    def _process(self, img: np.ndarray, meta: dict[str, str], number: int, skipped: int,
                 t_read: float) -> None:
        frame = _as_2d(img)
        shape = tuple(frame.shape)
        if shape != self._frame_shape:
            previous = self._frame_shape
            with self._lock:
                self._frame_shape = shape
            if previous is not None:
                logger.info("frame size changed from %s to %s", previous, shape)
                self.frameShapeChanged.emit(shape)
        mapper, calibration = self._pipeline
        pmap = self._threads.run(lambda: mapper(frame))
        depth = sigma = surface = None
        if calibration is not None:
            from livepsf.depth.surface import live_depth

            depth, sigma, surface = live_depth(calibration, pmap, frame)
        t_mapped = time.perf_counter()
        result = LiveResult(frame=frame, pmap=pmap, depth_um=depth, image_number=number, skipped=skipped,
                            stage_z_um=self._stage_z(), t_read=t_read, t_mapped=t_mapped,
                            t_published=time.perf_counter(), metadata=meta, depth_sigma_um=sigma,
                            depth_surface=surface)
        self._latest = result
        with self._lock:
            self._maps_total += 1
            self._map_times.append((result.t_published, result.t_published - t_read))
        self.resultReady.emit(result)

    def _count_error(self, message: str) -> None:
        with self._lock:
            self._errors += 1
            self._last_error = message

    def _report(self, message: str) -> None:
        logger.warning("%s", message)
        self._count_error(message)
        self.errorOccurred.emit(message)


def run_for_results(loop: LiveLoop, frames: int, *, on_result: Callable[[LiveResult], None] | None = None,
                    on_tick: Callable[[LiveStats], None] | None = None, tick_s: float = 1.0,
                    timeout_s: float | None = None) -> tuple[int, str]:
    """Start ``loop``, hand each result to ``on_result`` until ``frames`` results, then stop it.

    Calls ``on_tick(loop.stats())`` every ``tick_s`` seconds meanwhile. Gives up after ``timeout_s``
    (default: generous, ``10 + frames`` seconds). Returns ``(results, reason)``, the reason being
    ``"completed"``, the loop's own reason when it stopped early, or the time-out.
    """
    if frames < 1:
        raise InputError(f"frames must be at least 1, got {frames}")
    done = threading.Event()
    count = {"n": 0}
    reason = {"text": "completed"}

    def counted(result: LiveResult) -> None:
        if on_result is not None:
            on_result(result)
        count["n"] += 1
        if count["n"] >= frames:
            done.set()
            loop.stop()  # from the consumer thread: it ends after this result

    def on_stopped(text: str) -> None:
        if count["n"] < frames:
            reason["text"] = text
        done.set()

    loop.resultReady.connect(counted)
    loop.stopped.connect(on_stopped)
    deadline = time.monotonic() + (timeout_s if timeout_s is not None else 10.0 + frames)
    loop.start()
    try:
        while not done.wait(tick_s):
            if on_tick is not None:
                on_tick(loop.stats())
            if time.monotonic() > deadline:
                reason["text"] = f"timed out after {count['n']} of {frames} maps"
                break
    finally:
        loop.stop()
        loop.wait(2.0)
        loop.resultReady.disconnect(counted)
        loop.stopped.disconnect(on_stopped)
    return count["n"], reason["text"]


def _metadata_dict(md: Any) -> dict[str, str]:
    try:
        return {str(k): str(v) for k, v in dict(md).items()}
    except Exception:
        return {}


def _image_number(meta: Mapping[str, str]) -> int | None:
    value = meta.get("ImageNumber")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _as_2d(img: np.ndarray) -> np.ndarray:
    """Grey 2D frame: colour cameras are averaged over their channels, the own copy is kept."""
    arr = np.asarray(img)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=-1, dtype=np.float32)
    elif arr.ndim != 2:
        raise ValueError(f"camera gave a frame of shape {arr.shape}; expected 2D (or colour HxWxC)")
    return arr if arr.flags.owndata else arr.copy()


class ResultRecorder:
    """Write published results (frame + PSF map + stage Z) to a recorder on a thread of its own.

    Connect :meth:`submit` to :attr:`LiveLoop.resultReady`. The recorder
    (:class:`livepsf.acquisition.recorder.Recorder`) writes and fsyncs every page, which must not hold up
    mapping: results wait in a short queue, and when the disk falls behind the newest results are
    dropped and counted rather than queued without bound. The recording therefore holds the mapped
    frames (the newest-frame stream the window shows), each with its PSF map.

    Parameters
    ----------
    recorder
        An open recorder with ``append(frame, exposure_ms=, z_um=, psfmap=, extra=)`` and ``close()``.
    exposure_ms
        Exposure stored with every frame (``None``: not recorded).
    max_queue
        Results that may wait for the disk.
    """

    def __init__(self, recorder: Any, *, exposure_ms: float | None = None, max_queue: int = 8) -> None:
        self.recorder = recorder
        self.exposure_ms = exposure_ms
        self.written = 0
        self.dropped = 0
        self.error: str = ""
        self._queue: queue.Queue[LiveResult | None] = queue.Queue(maxsize=max_queue)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="livepsf-recorder", daemon=True)
        self._thread.start()

    def submit(self, result: LiveResult) -> None:
        """Queue a result for writing (any thread; never blocks)."""
        if self._closed or self.error:
            return
        try:
            self._queue.put_nowait(result)
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        while True:
            result = self._queue.get()
            if result is None:
                return
            if self.error:
                continue
            try:
                self.recorder.append(result.frame, exposure_ms=self.exposure_ms, z_um=result.stage_z_um,
                                     psfmap=result.pmap, extra={"image_number": result.image_number})
                self.written += 1
            except Exception as exc:  # full disk, changed frame size: stop writing, keep what is written
                self.error = str(exc)
                logger.warning("recording stopped: %s", exc)

    def close(self, timeout_s: float = 10.0) -> Any:
        """Write what is queued, stop the thread and close the recorder; returns the recorder's result."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join(timeout_s)
        return self.recorder.close()

"""The simulated microscope as real Micro-Manager devices on pymmcore-plus's ``UniMMCore``.

Devices (labels as loaded by :func:`create_core`):

``Camera``  :class:`SimCamera`, 1024×1024 uint16 by default; exposure (ms), offset (ADU), gain (ADU/e⁻),
            read noise (e⁻), photon flux (e⁻/ms at brightness 1), ``NoiseSeed`` (setting it, even to
            the value it has, restarts the noise sequence: the frames that follow are the same in every
            run; default: the ``seed`` of :func:`create_core`, seeded once); snap, sequence acquisition,
            software ROI.
            Each frame's metadata carries ``SimZ_um`` (the stage Z the image shows), ``StageZ_um`` (where
            the stage is when the frame is read out), ``SimFrameCounter``, ``SimLens``, ``SimSample``.
``Z``       :class:`SimZStage`, the focus drive, µm.
``XY``      :class:`SimXYStage`, the specimen stage, µm. The sample extends far beyond the field (its
            content is tiled from seeded canvases the size of the frame plus margin, generated as the
            stage reaches them): at stage (x, y) the frame shows the sample around (x, y), so moving
            the stage by +x µm moves the image content by -x / pixel size columns. A tilted or
            curved surface is fixed to the sample, so the height under the frame changes with XY.
``Lens``    :class:`SimLens`, state device, ``Out`` (0) / ``In`` (1): the cylindrical lens that adds
            :data:`~livepsf.sim.render.LENS_ASTIG_0_WAVES` of astigmatism.
``Sample``  :class:`SimSample`, generic device whose properties choose the sample (``Sample``), its
            tilt (``TiltDeg``, ``TiltAxis``), a curved surface (``CurvaturePerMm``), ``Seed``, and a slow
            focus drift of the sample (``DriftUmPerMin``, on the scene's clock; see :class:`SimClock`).
``Shutter`` :class:`SimShutter`, the lamp shutter (closed → dark frames: offset and read noise only).
            Auto-shutter is off and the shutter open after :func:`create_core`: pymmcore-plus's UniMMCore
            does not drive Python shutters from ``snapImage``, so auto-shutter would give dark frames.

How it runs. A :class:`SimScene` holds the optical state (stage Z, lens, sample, geometry). Whenever it
changes, a background thread re-renders the noiseless image (``render.DefocusRenderer``); until the new
render is ready the devices report busy (so ``waitForSystem`` and MDA wait for it) and a running
sequence acquisition keeps delivering frames of the previous render (``SimZ_um`` says which). Every
frame draws fresh Poisson–Gaussian noise (from the camera's noise generator: ``NoiseSeed``). ``snapImage`` always waits for the render of the current state.

Ground truth of the last frame (height map, local defocus map, µm): :func:`ground_truth` (or
``SimCamera.ground_truth()``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict, deque
from contextlib import contextmanager
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from pymmcore_plus.experimental.unicore import (
    GenericDevice,
    ShutterDevice,
    SimpleCameraDevice,
    StageDevice,
    StateDevice,
    UniMMCore,
    XYStageDevice,
    pymm_property,
)

from livepsf.optics import Optics
from livepsf.sim.render import LENS_ASTIG_0_WAVES, CameraSensor, DefocusRenderer, ExposureModel
from livepsf.sim.samples import SAMPLES, TILT_AXES, SurfaceGeometry, sample_brightness

__all__ = [
    "RECENT_TRUTHS",
    "GroundTruth",
    "SceneState",
    "SimCamera",
    "SimLens",
    "SimSample",
    "SimScene",
    "SimClock",
    "SimShutter",
    "SimXYStage",
    "SimZStage",
    "create_core",
    "get_scene",
    "ground_truth",
]

# Seconds a snap waits for the render of the current state before giving up.
_RENDER_TIMEOUT_S = 60.0
#: How many frames' ground truth the camera remembers (for :func:`ground_truth` with a frame number).
RECENT_TRUTHS = 256
# Sample content beyond each frame edge (px) so edges blur with true neighbours; larger PSFs mirror it.
_SAMPLE_MARGIN_PX = 64
# Sample canvases kept for XY moves (each the frame plus margin); four cover any field of view.
_MAX_TILES = 9
# The drifting sample height is rendered in steps of this size (µm): finer than any focus tolerance,
# coarse enough that a slow drift re-renders a few times a second at most.
_DRIFT_STEP_UM = 0.01


class SimClock:
    """A clock that only moves when told (simulated seconds), for drift runs faster than real time.

    Pass it to :func:`create_core` (``clock=``); :meth:`advance` it between frames. The default clock
    of a scene is ``time.monotonic``.
    """

    def __init__(self, start_s: float = 0.0) -> None:
        self._t = float(start_s)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._t

    def advance(self, seconds: float) -> float:
        """Move the clock forward by ``seconds`` (>= 0); returns the new time."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"a clock only moves forward, got {seconds!r} s")
        with self._lock:
            self._t += float(seconds)
            return self._t


@dataclass(frozen=True)
class SceneState:
    """Everything the noiseless image depends on."""

    z_um: float = 0.0
    lens_in: bool = True
    sample: str = "printed-grid"
    seed: int = 0
    tilt_deg: float = 6.0
    tilt_axis: str = "x"
    curvature_per_mm: float = 0.0
    x_um: float = 0.0
    y_um: float = 0.0
    sample_z_um: float = 0.0

    @property
    def geometry(self) -> SurfaceGeometry:
        return SurfaceGeometry(self.tilt_deg, self.tilt_axis, self.curvature_per_mm)

    @property
    def astig_0_waves(self) -> float:
        return LENS_ASTIG_0_WAVES if self.lens_in else 0.0


@dataclass(frozen=True)
class _Render:
    state: SceneState
    brightness: np.ndarray  # (H, W) float32, noiseless relative brightness
    height_um: np.ndarray  # (H, W) float32
    render_s: float


@dataclass(frozen=True)
class GroundTruth:
    """What the simulator knows about one frame.

    Attributes
    ----------
    z_um
        Stage Z the frame shows (the render's, which lags the stage while it re-renders).
    height_um
        ``(H, W)`` surface height under each pixel, µm (0 at the frame centre).
    defocus_um
        ``(H, W)`` local defocus, ``z_um - height_um``; > 0 where the surface is below the focal plane.
    astig_0_waves, astig_45_waves
        Fixed astigmatism of the light path (the cylindrical lens), RMS waves.
    optics
        Optical sampling; ``optics.defocus_waves(defocus_um)`` is the Zernike focus coefficient.
    frame_number
        The camera's frame counter of that frame (-1 before any frame).
    state
        The full scene state (sample, tilt, lens, ...).
    """

    z_um: float
    height_um: np.ndarray
    astig_0_waves: float
    astig_45_waves: float
    optics: Optics
    frame_number: int
    state: SceneState

    @functools.cached_property
    def defocus_um(self) -> np.ndarray:
        """``(H, W)`` local defocus, ``z_um - height_um`` (float32); computed on first access."""
        return (np.float32(self.z_um) - self.height_um).astype(np.float32)

    @property
    def focus_waves(self) -> np.ndarray:
        """Zernike defocus coefficient of every pixel, RMS waves (signed)."""
        return self.optics.defocus_waves(self.defocus_um)

    @property
    def in_focus_mask(self) -> np.ndarray:
        """Pixels within half a depth of field of the focal plane."""
        return np.abs(self.defocus_um) <= 0.5 * self.optics.depth_of_field_um


class SimScene:
    """Optical state of the simulated microscope and its background renderer.

    Parameters
    ----------
    shape
        Frame size (rows, cols).
    optics
        Optical sampling shared with the PSF models.
    state
        Initial state.
    level_step_waves
        Defocus level spacing of the renderer.
    clock
        Seconds for the drift (``time.monotonic`` by default; a :class:`SimClock` for simulated time).
    drift_um_per_min
        Speed at which the sample moves up along Z (µm per minute of ``clock``); 0 for none.
    """

    def __init__(
        self,
        shape: tuple[int, int] = (1024, 1024),
        optics: Optics | None = None,
        state: SceneState | None = None,
        level_step_waves: float = 0.1,
        clock: Callable[[], float] | None = None,
        drift_um_per_min: float = 0.0,
    ) -> None:
        if len(shape) != 2 or min(shape) < 16:
            raise ValueError(f"frame shape must be two sizes >= 16, got {shape!r}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.optics = optics or Optics()
        self.renderer = DefocusRenderer(self.optics, level_step_waves)
        self.shutter_open = True
        self._target = _validated(state or SceneState())
        self._current: _Render | None = None
        self._error: BaseException | None = None
        self._sample_key: tuple[str, int] | None = None
        self._tiles: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._height: tuple[tuple[SurfaceGeometry, float, float], np.ndarray] | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.clock: Callable[[], float] = clock or time.monotonic
        self._drift = (0.0, self.clock(), self._target.sample_z_um)  # (µm/min, since, height then)
        self.set_drift(drift_um_per_min)
        self._thread = threading.Thread(target=self._run, name="livepsf-sim-render", daemon=True)
        self._thread.start()

    # -- state -----------------------------------------------------------------------------------
    @property
    def state(self) -> SceneState:
        """The state the stage, lens and sample are in now (the render may lag behind)."""
        with self._cond:
            return self._target

    def update(self, **changes: Any) -> None:
        """Change the state (``z_um=...``, ``lens_in=...``, ...) and start re-rendering if needed."""
        with self._cond:
            new = _validated(replace(self._target, **changes))
            if new != self._target:
                self._target = new
                self._cond.notify_all()

    # -- drift ---------------------------------------------------------------------------------
    @property
    def drift_um_per_min(self) -> float:
        """Speed of the sample's Z drift, µm per minute of :attr:`clock` (positive: upwards)."""
        return self._drift[0]

    def set_drift(self, um_per_min: float) -> None:
        """Start drifting at ``um_per_min`` from the sample's present height (0 stops it)."""
        um_per_min = float(um_per_min)
        if not math.isfinite(um_per_min):
            raise ValueError(f"drift must be finite, got {um_per_min!r}")
        with self._cond:
            now = self.clock()
            self._drift = (um_per_min, now, self._drift_height(now))

    def _drift_height(self, now: float) -> float:
        rate, since, height = self._drift
        return height + rate * (now - since) / 60.0

    def apply_drift(self) -> None:
        """Bring the sample's height up to the clock (called before every frame)."""
        if self._drift[0] == 0.0:
            return
        height = round(self._drift_height(self.clock()) / _DRIFT_STEP_UM) * _DRIFT_STEP_UM
        self.update(sample_z_um=height)

    @property
    def busy(self) -> bool:
        """True while the image of the current state is being rendered."""
        with self._cond:
            return self._current is None or self._current.state != self._target

    # -- renders ---------------------------------------------------------------------------------
    def latest(self, timeout_s: float = _RENDER_TIMEOUT_S) -> _Render:
        """The newest finished render (waits only for the very first one)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._current is not None or self._error or self._closed, timeout_s):
                raise TimeoutError(f"the simulator did not render a first frame within {timeout_s:.0f} s")
            self._raise_if_failed()
            return self._current  # type: ignore[return-value]

    def current(self, timeout_s: float = _RENDER_TIMEOUT_S) -> _Render:
        """The render of the current state, waiting for it if the state just changed."""
        with self._cond:
            ok = self._cond.wait_for(
                lambda: (self._current is not None and self._current.state == self._target) or self._error or self._closed,
                timeout_s,
            )
            if not ok:
                raise TimeoutError(f"the simulator did not render the new state within {timeout_s:.0f} s")
            self._raise_if_failed()
            return self._current  # type: ignore[return-value]

    def close(self) -> None:
        """Stop the render thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the simulator's renderer failed: {self._error}") from self._error
        if self._closed and self._current is None:
            raise RuntimeError("the simulator has been shut down")

    def _run(self) -> None:
        # One intra-op thread (a per-thread OpenMP setting): the render's many small tensor operations
        # lose more to thread synchronisation than they gain on a busy 2-core machine, where the camera
        # and the PSF mapper run at the same time.
        torch.set_num_threads(1)
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: self._closed or self._current is None or self._current.state != self._target
                )
                if self._closed:
                    return
                state = self._target
            try:
                rendered = self._render(state)
            except BaseException as exc:  # report to waiters instead of dying silently
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            with self._cond:
                self._current = rendered
                self._error = None
                self._cond.notify_all()

    def _render(self, state: SceneState) -> _Render:
        t0 = time.perf_counter()
        key = (state.sample, state.seed)
        if key != self._sample_key:
            self._tiles.clear()
            self._sample_key = key
            self.renderer.clear_level_cache()  # level images of the previous sample are of no further use
        px = self.optics.pixel_size_um
        oy, ox = round(state.y_um / px), round(state.x_um / px)
        texture = self._sample_region(state, oy, ox)
        height_key = (state.geometry, ox * px, oy * px)
        if self._height is None or self._height[0] != height_key:
            height = state.geometry.height_um(self.shape, px, center_um=(ox * px, oy * px)).astype(np.float32)
            self._height = (height_key, height)
        height = self._height[1]
        if state.sample_z_um:
            height = height + np.float32(state.sample_z_um)
        brightness = self.renderer.render(
            texture, np.float32(state.z_um) - height, astig_0_waves=state.astig_0_waves,
            cache_key=(state.sample, state.seed, oy, ox),
        )
        return _Render(state, brightness, height, time.perf_counter() - t0)

    def _sample_region(self, state: SceneState, oy: int, ox: int) -> np.ndarray:
        """The sample under the frame (plus margin) with the stage ``(oy, ox)`` pixels from its origin.

        The sample is a plane tiled by canvases of the region's size: tile (0, 0) is the canvas a stage
        at the origin shows, the others are seeded from the sample seed and their index.
        """
        th, tw = self.shape[0] + 2 * _SAMPLE_MARGIN_PX, self.shape[1] + 2 * _SAMPLE_MARGIN_PX
        if oy % th == 0 and ox % tw == 0:
            return self._tile(state, oy // th, ox // tw, (th, tw))
        region = np.empty((th, tw), dtype=np.float32)
        rows = range(oy // th, (oy + th - 1) // th + 1)
        cols = range(ox // tw, (ox + tw - 1) // tw + 1)
        for i, j in itertools.product(rows, cols):
            y0, y1 = max(oy, i * th), min(oy + th, (i + 1) * th)
            x0, x1 = max(ox, j * tw), min(ox + tw, (j + 1) * tw)
            tile = self._tile(state, i, j, (th, tw))
            region[y0 - oy : y1 - oy, x0 - ox : x1 - ox] = \
                tile[y0 - i * th : y1 - i * th, x0 - j * tw : x1 - j * tw]
        return region

    def _tile(self, state: SceneState, i: int, j: int, shape: tuple[int, int]) -> np.ndarray:
        if (i, j) in self._tiles:
            self._tiles.move_to_end((i, j))
            return self._tiles[(i, j)]
        # Tile (0, 0) keeps the sample seed itself, so a stage at the origin shows what it always did.
        seed = state.seed if (i, j) == (0, 0) else int(
            np.random.SeedSequence([state.seed, i % 2**32, j % 2**32]).generate_state(1)[0])
        tile = sample_brightness(state.sample, shape, self.optics.pixel_size_um, seed,
                                 origin_px=(i * shape[0], j * shape[1]))
        self._tiles[(i, j)] = tile
        while len(self._tiles) > _MAX_TILES:
            self._tiles.popitem(last=False)
        return tile


def _validated(state: SceneState) -> SceneState:
    if state.sample not in SAMPLES:
        raise ValueError(f"unknown sample {state.sample!r}; choose one of {SAMPLES}")
    if state.tilt_axis not in TILT_AXES:
        raise ValueError(f"tilt axis must be one of {TILT_AXES}, got {state.tilt_axis!r}")
    for name in ("z_um", "tilt_deg", "curvature_per_mm", "x_um", "y_um", "sample_z_um"):
        if not math.isfinite(getattr(state, name)):
            raise ValueError(f"{name} must be finite, got {getattr(state, name)!r}")
    if abs(state.tilt_deg) >= 45:
        raise ValueError(f"tilt_deg must be within ±45°, got {state.tilt_deg!r}")
    return replace(state, z_um=float(state.z_um), tilt_deg=float(state.tilt_deg),
                   curvature_per_mm=float(state.curvature_per_mm), seed=int(state.seed),
                   lens_in=bool(state.lens_in), x_um=float(state.x_um), y_um=float(state.y_um),
                   sample_z_um=float(state.sample_z_um))


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Run torch single-threaded in the calling thread (OpenMP's setting is per thread), then restore.

    Drawing a frame is a handful of memory-bound passes: two OpenMP threads barely help when the
    machine is idle and cost several times more when it is busy (measured: 33 ms vs 200 ms per 1024²
    frame on the 2-core machine under load).
    """
    previous = torch.get_num_threads()
    if previous == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# -- devices ---------------------------------------------------------------------------------------


class SimCamera(SimpleCameraDevice):
    """Simulated scientific camera imaging the :class:`SimScene` (uint16, Poisson–Gaussian noise)."""

    def __init__(self, scene: SimScene, sensor: CameraSensor | None = None, exposure_ms: float = 10.0, seed: int = 0) -> None:
        super().__init__()
        self._scene = scene
        self._sensor = sensor or CameraSensor()
        self._exposure_ms = float(exposure_ms)
        self._noise_seed = int(seed)
        self._generator = torch.Generator().manual_seed(self._noise_seed)
        self._model: ExposureModel | None = None
        self._model_key: tuple[Any, ...] = ()
        self._counter = 0
        self._counter_lock = threading.Lock()
        self._truth: GroundTruth | None = None
        self._recent_truths: deque[GroundTruth] = deque(maxlen=RECENT_TRUTHS)
        self._due: float | None = None  # when the current exposure ends, while a sequence runs
        self._wait_for_current = True

    # -- required camera API ---------------------------------------------------------------------
    def sensor_shape(self) -> tuple[int, int]:
        return self._scene.shape

    def dtype(self) -> Any:
        return np.uint16

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        exposure = float(exposure)
        if not (0 < exposure <= 60_000):
            raise ValueError(f"exposure must be in (0, 60000] ms, got {exposure}")
        self._exposure_ms = exposure
        self.core.events.exposureChanged.emit(self.get_label(), exposure)

    # -- standard and extra properties -----------------------------------------------------------
    def get_offset(self) -> float:
        return self._sensor.offset_adu

    def set_offset(self, value: float) -> None:
        self._sensor = replace(self._sensor, offset_adu=float(value))

    def get_gain(self) -> float:
        return self._sensor.gain_adu_per_e

    def set_gain(self, value: float) -> None:
        self._sensor = replace(self._sensor, gain_adu_per_e=float(value))

    @pymm_property(limits=(0.0, 100.0), name="ReadNoise_e", property_type="float")
    def read_noise_e(self) -> float:
        """Gaussian read noise, electrons RMS."""
        return self._sensor.read_noise_e

    @read_noise_e.setter
    def read_noise_e(self, value: float) -> None:
        self._sensor = replace(self._sensor, read_noise_e=float(value))

    @pymm_property(limits=(0.01, 1e6), name="PhotonFlux_e_per_ms", property_type="float")
    def photon_flux_per_ms(self) -> float:
        """Photo-electrons per ms in a pixel of brightness 1."""
        return self._sensor.photon_flux_per_ms

    @photon_flux_per_ms.setter
    def photon_flux_per_ms(self, value: float) -> None:
        self._sensor = replace(self._sensor, photon_flux_per_ms=float(value))

    @pymm_property(limits=(0, 2**31 - 1), name="NoiseSeed", property_type="integer")
    def noise_seed(self) -> int:
        """Seed the noise generator was last (re)started from."""
        return self._noise_seed

    @noise_seed.setter
    def noise_seed(self, value: int) -> None:
        # Always a fresh generator, also for the current value: setting the seed before each frame set
        # makes that set's noise independent of how many frames were drawn before it. A new object rather
        # than manual_seed on the old one, so a frame being drawn in the sequence thread is not disturbed.
        self._noise_seed = int(float(value))
        self._generator = torch.Generator().manual_seed(self._noise_seed)

    # -- acquisition -----------------------------------------------------------------------------
    def start_sequence(
        self, n: int | None, get_buffer: Callable[[Sequence[int], Any], np.ndarray]
    ) -> Iterator[Mapping]:
        # A single image (snapImage) shows the current state; a sequence streams whatever is rendered.
        self._wait_for_current = n == 1
        self._due = time.perf_counter() + self._exposure_ms / 1000.0
        yield from super().start_sequence(n, get_buffer)

    def snap(self, buffer: np.ndarray) -> Mapping:
        scene = self._scene
        scene.apply_drift()
        render = scene.current() if self._wait_for_current else scene.latest()
        # Hold the render itself in the key: an id() could be reused by a later render once it is freed.
        key = (render, self._exposure_ms, self._sensor, scene.shutter_open)
        if not (len(self._model_key) == 4 and key[0] is self._model_key[0] and key[1:] == self._model_key[1:]):
            brightness = render.brightness if scene.shutter_open else np.zeros_like(render.brightness)
            self._model = self._sensor.exposure(brightness, self._exposure_ms)
            self._model_key = key
        assert self._model is not None
        with _one_torch_thread():
            self._model.draw(buffer, self._generator)
        with self._counter_lock:
            number = self._counter
            self._counter += 1
        truth = GroundTruth(
            z_um=render.state.z_um,
            height_um=render.height_um,
            astig_0_waves=render.state.astig_0_waves,
            astig_45_waves=0.0,
            optics=scene.optics,
            frame_number=number,
            state=render.state,
        )
        self._truth = truth
        self._recent_truths.append(truth)
        self._pace()
        return {
            "SimZ_um": f"{render.state.z_um:.4f}",
            "StageZ_um": f"{scene.state.z_um:.4f}",
            "SimFrameCounter": str(number),
            "SimLens": "In" if render.state.lens_in else "Out",
            "SimSample": render.state.sample,
            "Exposure-ms": f"{self._exposure_ms:.4f}",
        }

    def _pace(self) -> None:
        """Deliver frames no faster than one per exposure time, like a real sensor."""
        now = time.perf_counter()
        due = self._due if self._due is not None else now
        if due > now:
            time.sleep(due - now)
        # When rendering is slower than the exposure, restart the clock instead of bursting to catch up.
        self._due = max(due, time.perf_counter()) + self._exposure_ms / 1000.0

    def ground_truth(self, frame_number: int | None = None) -> GroundTruth:
        """Ground truth of the last frame delivered, or of frame ``frame_number`` (its ``SimFrameCounter``).

        The last :data:`RECENT_TRUTHS` frames are remembered, so a consumer that processes frames later
        than they were acquired can still match them. Before any frame: the current render's.
        """
        if frame_number is not None:
            for truth in reversed(self._recent_truths):
                if truth.frame_number == frame_number:
                    return truth
            raise KeyError(f"frame {frame_number} is not among the last {RECENT_TRUTHS} frames of the simulator")
        if self._truth is not None:
            return self._truth
        render = self._scene.current()
        return GroundTruth(render.state.z_um, render.height_um, render.state.astig_0_waves, 0.0,
                           self._scene.optics, -1, render.state)

    def busy(self) -> bool:
        return False

    def shutdown(self) -> None:
        self._scene.close()


class SimZStage(StageDevice):
    """Focus drive (µm) of the simulated microscope; busy while the new focal plane renders."""

    def __init__(self, scene: SimScene, limits_um: tuple[float, float] = (-5000.0, 5000.0)) -> None:
        super().__init__()
        self._scene = scene
        self._origin_um = 0.0  # physical Z of the reported zero
        self._limits_um = limits_um

    def set_position_um(self, val: float) -> None:
        physical = float(val) + self._origin_um
        lo, hi = self._limits_um
        if not (lo <= physical <= hi):
            raise ValueError(f"Z position {val} µm is outside the stage travel {self._limits_um} µm")
        self._scene.update(z_um=physical)
        self.core.events.stagePositionChanged.emit(self.get_label(), float(val))

    def get_position_um(self) -> float:
        return self._scene.state.z_um - self._origin_um

    def home(self) -> None:
        self.set_position_um(-self._origin_um)

    def stop(self) -> None:
        """Moves are instantaneous: nothing to stop."""

    def set_origin(self) -> None:
        self._origin_um = self._scene.state.z_um

    def set_adapter_origin_um(self, newZUm: float) -> None:
        self._origin_um = self._scene.state.z_um - float(newZUm)

    def busy(self) -> bool:
        return self._scene.busy


class SimXYStage(XYStageDevice):
    """Specimen stage (µm): moves the sample under the field of view; busy while the new field renders."""

    def __init__(self, scene: SimScene, limits_um: tuple[float, float] = (-50_000.0, 50_000.0)) -> None:
        super().__init__()
        self._scene = scene
        self._origin_um = (0.0, 0.0)  # physical (x, y) of the reported zero
        self._limits_um = limits_um

    def set_position_um(self, x: float, y: float) -> None:
        px, py = float(x) + self._origin_um[0], float(y) + self._origin_um[1]
        lo, hi = self._limits_um
        if not (lo <= px <= hi and lo <= py <= hi):
            raise ValueError(f"XY position ({x}, {y}) µm is outside the stage travel {self._limits_um} µm")
        self._scene.update(x_um=px, y_um=py)
        self.core.events.XYStagePositionChanged.emit(self.get_label(), float(x), float(y))

    def get_position_um(self) -> tuple[float, float]:
        state = self._scene.state
        return state.x_um - self._origin_um[0], state.y_um - self._origin_um[1]

    def home(self) -> None:
        self.set_position_um(-self._origin_um[0], -self._origin_um[1])

    def stop(self) -> None:
        """Moves are instantaneous: nothing to stop."""

    def set_origin_x(self) -> None:
        self._origin_um = (self._scene.state.x_um, self._origin_um[1])

    def set_origin_y(self) -> None:
        self._origin_um = (self._origin_um[0], self._scene.state.y_um)

    def busy(self) -> bool:
        return self._scene.busy


class SimLens(StateDevice):
    """Cylindrical lens in the detection path: state 0 ``Out``, 1 ``In`` (adds fixed astigmatism)."""

    def __init__(self, scene: SimScene) -> None:
        super().__init__({0: "Out", 1: "In"})
        self._scene = scene

    def get_state(self) -> int:
        return int(self._scene.state.lens_in)

    def set_state(self, position: int) -> None:
        self._scene.update(lens_in=bool(int(position)))

    @pymm_property(is_read_only=True, name="Astigmatism0_waves", property_type="float")
    def astig_0_waves(self) -> float:
        """Astigmatism the lens adds when in, RMS waves (Zernike Z(2,2))."""
        return LENS_ASTIG_0_WAVES

    def busy(self) -> bool:
        return self._scene.busy


class SimSample(GenericDevice):
    """The specimen: which sample, its tilt and curvature (changing them re-renders)."""

    def __init__(self, scene: SimScene) -> None:
        super().__init__()
        self._scene = scene

    @pymm_property(allowed_values=SAMPLES, name="Sample", property_type="string")
    def sample(self) -> str:
        """Sample type."""
        return self._scene.state.sample

    @sample.setter
    def sample(self, value: str) -> None:
        self._scene.update(sample=str(value))

    @pymm_property(limits=(-30.0, 30.0), name="TiltDeg", property_type="float")
    def tilt_deg(self) -> float:
        """Tilt of the sample plane, degrees; positive raises it towards higher indices along the tilt axis."""
        return self._scene.state.tilt_deg

    @tilt_deg.setter
    def tilt_deg(self, value: float) -> None:
        self._scene.update(tilt_deg=float(value))

    @pymm_property(allowed_values=TILT_AXES, name="TiltAxis", property_type="string")
    def tilt_axis(self) -> str:
        """Array axis along which the height grows: x (columns) or y (rows)."""
        return self._scene.state.tilt_axis

    @tilt_axis.setter
    def tilt_axis(self, value: str) -> None:
        self._scene.update(tilt_axis=str(value))

    @pymm_property(limits=(-10.0, 10.0), name="CurvaturePerMm", property_type="float")
    def curvature_per_mm(self) -> float:
        """Surface curvature 1/R, 1/mm; positive bends the edges up (bowl), 0 is flat."""
        return self._scene.state.curvature_per_mm

    @curvature_per_mm.setter
    def curvature_per_mm(self, value: float) -> None:
        self._scene.update(curvature_per_mm=float(value))

    @pymm_property(limits=(-1000.0, 1000.0), name="DriftUmPerMin", property_type="float")
    def drift_um_per_min(self) -> float:
        """Slow Z drift of the sample, µm per minute of the scene's clock (positive: upwards); 0: none."""
        return self._scene.drift_um_per_min

    @drift_um_per_min.setter
    def drift_um_per_min(self, value: float) -> None:
        self._scene.set_drift(float(value))

    @pymm_property(limits=(0, 2**31 - 1), name="Seed", property_type="integer")
    def seed(self) -> int:
        """Seed of the sample's random content."""
        return self._scene.state.seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._scene.update(seed=int(float(value)))

    def busy(self) -> bool:
        return self._scene.busy


class SimShutter(ShutterDevice):
    """Lamp shutter: closed gives dark frames (offset and read noise only)."""

    def __init__(self, scene: SimScene) -> None:
        super().__init__()
        self._scene = scene

    def get_open(self) -> bool:
        return self._scene.shutter_open

    def set_open(self, open: bool) -> None:
        self._scene.shutter_open = bool(open)


# -- assembly --------------------------------------------------------------------------------------

_SCENES: weakref.WeakKeyDictionary[UniMMCore, tuple[SimScene, SimCamera]] = weakref.WeakKeyDictionary()


def create_core(
    sample: str = "printed-grid",
    tilt_deg: float = 6.0,
    tilt_axis: str = "x",
    lens: bool = True,
    seed: int = 0,
    *,
    z_um: float = 0.0,
    curvature_per_mm: float = 0.0,
    shape: tuple[int, int] = (1024, 1024),
    exposure_ms: float = 10.0,
    optics: Optics | None = None,
    sensor: CameraSensor | None = None,
    level_step_waves: float = 0.1,
    drift_um_per_min: float = 0.0,
    clock: Callable[[], float] | None = None,
    core: UniMMCore | None = None,
) -> UniMMCore:
    """A ``UniMMCore`` with the simulated microscope loaded, initialised and its first image rendered.

    Parameters
    ----------
    sample
        ``"printed-grid"`` (200 µm squares of toner lines on foil), ``"cells"`` or ``"filaments"``.
    tilt_deg, tilt_axis
        Tilt of the sample plane; the height grows along ``tilt_axis`` (``"x"``: columns, ``"y"``: rows),
        upwards towards higher indices for a positive tilt, and is 0 at the frame centre.
    lens
        Cylindrical lens in (adds ``LENS_ASTIG_0_WAVES`` of astigmatism).
    seed
        Seed of the sample content (the sample's ``Seed``) and of the camera noise (the camera's
        ``NoiseSeed``); each can be set again later.
    z_um
        Initial stage Z (µm); 0 puts the frame centre in focus.
    curvature_per_mm
        Surface curvature 1/R (1/mm), 0 for a flat sample.
    shape
        Camera frame (rows, cols).
    exposure_ms
        Initial exposure.
    optics, sensor
        Optical sampling (default: 10×/0.3 air, 550 nm, 0.65 µm pixels) and camera noise model.
    level_step_waves
        Defocus level spacing of the renderer.
    drift_um_per_min
        Slow Z drift of the sample (µm per minute of ``clock``; positive: upwards), 0 for none.
    clock
        Seconds for the drift: ``time.monotonic`` by default, or a :class:`SimClock` for simulated time.
    core
        An existing, empty ``UniMMCore`` to load the devices into; a new one when omitted.

    Returns
    -------
    UniMMCore
        Camera ``Camera``, focus stage ``Z``, XY stage ``XY``, lens ``Lens``, sample ``Sample``, shutter
        ``Shutter``;
        pixel size configuration ``Res10x`` active; auto-shutter off, shutter open; device timeout 60 s.

    Examples
    --------
    >>> core = create_core(shape=(256, 256))
    >>> core.snapImage(); core.getImage().shape
    (256, 256)
    """
    optics = optics or Optics()
    state = SceneState(z_um=z_um, lens_in=lens, sample=sample, seed=seed, tilt_deg=tilt_deg,
                       tilt_axis=tilt_axis, curvature_per_mm=curvature_per_mm)
    scene = SimScene(shape, optics, state, level_step_waves, clock=clock, drift_um_per_min=drift_um_per_min)
    core = core if core is not None else _new_core()
    camera = SimCamera(scene, sensor, exposure_ms, seed)
    core.loadPyDevice("Camera", camera)
    core.loadPyDevice("Z", SimZStage(scene))
    core.loadPyDevice("XY", SimXYStage(scene))
    core.loadPyDevice("Lens", SimLens(scene))
    core.loadPyDevice("Sample", SimSample(scene))
    core.loadPyDevice("Shutter", SimShutter(scene))
    core.initializeAllDevices()
    core.setCameraDevice("Camera")
    core.setFocusDevice("Z")
    core.setXYStageDevice("XY")
    core.setShutterDevice("Shutter")
    core.setAutoShutter(False)
    # Devices are busy while the new state renders (a second or more on a busy 2-core machine for a new
    # sample); MMCore's default 5 s wait would turn a slow render into a timeout error.
    core.setTimeoutMs(max(core.getTimeoutMs(), int(_RENDER_TIMEOUT_S * 1000)))
    core.definePixelSizeConfig("Res10x")
    core.setPixelSizeUm("Res10x", optics.pixel_size_um)
    core.setPixelSizeConfig("Res10x")
    _SCENES[core] = (scene, camera)
    weakref.finalize(core, scene.close)
    scene.current()  # the first render, so the first snap is immediate
    return core


def _new_core() -> UniMMCore:
    # The simulator needs no Micro-Manager device adapters; without an installation pymmcore-plus logs an
    # error on construction that would only mislead the user of the demo.
    log = logging.getLogger("pymmcore-plus")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        return UniMMCore()
    finally:
        log.setLevel(level)


def get_scene(core: UniMMCore) -> SimScene:
    """The :class:`SimScene` behind a core made by :func:`create_core`."""
    try:
        return _SCENES[core][0]
    except (KeyError, TypeError):
        raise ValueError("this core was not created by livepsf.sim.create_core") from None


def ground_truth(core: UniMMCore, frame_number: int | None = None) -> GroundTruth:
    """Ground truth (height and local defocus maps, µm) of a simulated core's last frame.

    Parameters
    ----------
    core
        A core made by :func:`create_core`.
    frame_number
        The ``SimFrameCounter`` of a recent frame (from its metadata) instead of the last one.
    """
    try:
        camera = _SCENES[core][1]
    except (KeyError, TypeError):
        raise ValueError("this core was not created by livepsf.sim.create_core") from None
    return camera.ground_truth(frame_number)

"""Z-stack for depth calibration: step the focus drive over a range, snap a frame at each step, save.

Any Micro-Manager microscope has a focus drive, so a z-stack of any textured sample calibrates depth
without a tilted grid: plane ``k`` shows the sample at a known stage position ``z_um[k]``, hence at a
known height relative to the focal plane (up to the unknown in-focus position, which the fit estimates,
:func:`livepsf.depth.calibrate_zstack`). :func:`acquire_zstack` records the stack on a core (real or
the simulator) and always puts the focus drive back where it was; :func:`save_zstack` writes it as an
OME-TIFF with every plane's ``PositionZ``, :func:`load_zstack` reads such a file back, and
:func:`calibrate_from_zstack` maps the frames and fits the calibration. :func:`record_zstack` acquires
and saves at once, keeping the planes taken when the camera or the drive fails.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from livepsf.acquisition.focus_stage import FocusStage
from livepsf.errors import InputError

__all__ = ["DEFAULT_RANGE_UM", "DEFAULT_SETTLE_MS", "DEFAULT_STEP_UM", "MAX_PLANES", "ZStack", "ZStackInterrupted",
           "acquire_zstack", "calibrate_from_zstack", "load_zstack", "record_zstack", "save_zstack",
           "zstack_positions"]

logger = logging.getLogger("livepsf.zstack")

# More planes than this is a typo in range or step (a 2 µm step over ±40 µm is 41 planes).
MAX_PLANES = 2001
# Defaults of an acquired stack (CLI and GUI): ±40 µm in 2 µm steps covers the lens's useful range at
# 10×/0.3 with 41 frames; 10 ms settling after each move.
DEFAULT_RANGE_UM = 40.0
DEFAULT_STEP_UM = 2.0
DEFAULT_SETTLE_MS = 10.0


@dataclass(frozen=True)
class ZStack:
    """Frames taken at known focus-drive positions.

    Attributes
    ----------
    frames
        ``(n, H, W)`` in the camera's dtype.
    z_um
        ``(n,)`` focus-drive position of each frame (µm), as the drive reported it after the move.
    pixel_size_um
        Pixel size in the sample plane (µm).
    z_relative
        True when only the differences of ``z_um`` are known (a stack read with ``PhysicalSizeZ`` only).
    cancelled
        True when the acquisition was cancelled before the last plane (``frames`` holds those taken).
    metadata
        JSON-ready facts about the acquisition (focus device, camera, exposure, settle time).
    """

    frames: np.ndarray
    z_um: np.ndarray
    pixel_size_um: float
    z_relative: bool = False
    cancelled: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.z_um.shape[0])

    def summary(self) -> str:
        """One line: planes, Z range and step, frame size."""
        if len(self) == 0:
            return "empty z-stack"
        steps = np.diff(self.z_um)
        step = f", step {float(np.median(steps)):.3g} µm" if steps.size else ""
        return (f"{len(self)} planes, Z {self.z_um.min():+.2f} to {self.z_um.max():+.2f} µm{step}"
                f"{' (relative)' if self.z_relative else ''}, {self.frames.shape[2]}×{self.frames.shape[1]} px"
                f"{', cancelled' if self.cancelled else ''}")


class ZStackInterrupted(InputError):
    """The camera or the focus drive failed mid-stack; :attr:`partial` holds the planes taken before."""

    def __init__(self, message: str, partial: ZStack) -> None:
        super().__init__(message)
        self.partial = partial


def zstack_positions(center_z_um: float, range_um: float, *, step_um: float | None = None,
                     n_steps: int | None = None) -> np.ndarray:
    """Focus positions ``center ± range_um``: every ``step_um`` (symmetric about the centre) or ``n_steps``.

    With ``step_um`` the planes are ``center + k·step_um`` for the integers ``k`` that stay within the
    range; with ``n_steps`` they are evenly spaced from ``center − range_um`` to ``center + range_um``.

    Raises
    ------
    InputError
        Not exactly one of ``step_um`` and ``n_steps``, a range or step that is not a positive finite
        number, a step larger than the range, fewer than 2 or more than :data:`MAX_PLANES` planes.
    """
    if (step_um is None) == (n_steps is None):
        raise InputError("give either a step (step_um) or a number of planes (n_steps), not both or neither")
    if not (math.isfinite(range_um) and range_um > 0):
        raise InputError(f"the z-stack range must be a positive number of µm (± around the centre), got {range_um!r}")
    if not math.isfinite(center_z_um):
        raise InputError(f"the z-stack centre must be a finite position, got {center_z_um!r}")
    if step_um is not None:
        if not (math.isfinite(step_um) and step_um > 0):
            raise InputError(f"the z-stack step must be a positive number of µm, got {step_um!r}")
        if step_um > 2 * range_um:
            raise InputError(f"a step of {step_um:g} µm is larger than the range ±{range_um:g} µm: "
                             "it leaves fewer than 2 planes")
        half = math.floor(range_um / step_um + 1e-9)
        n = 2 * half + 1
        if n <= MAX_PLANES:
            return center_z_um + step_um * np.arange(-half, half + 1, dtype=np.float64)
    else:
        n = int(n_steps)
        if n != n_steps or n < 2:
            raise InputError(f"a z-stack needs at least 2 planes, got n_steps={n_steps!r}")
        if n <= MAX_PLANES:
            return np.linspace(center_z_um - range_um, center_z_um + range_um, n)
    raise InputError(f"{n} planes is more than {MAX_PLANES}: check the range and the step")


def acquire_zstack(
    core: Any,
    *,
    range_um: float,
    step_um: float | None = None,
    n_steps: int | None = None,
    center_z_um: float | None = None,
    settle_ms: float = DEFAULT_SETTLE_MS,
    pixel_size_um: float | None = None,
    progress: Callable[[int, int, float], Any] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> ZStack:
    """Step the focus drive over ``center ± range_um`` and snap a frame at every position.

    Parameters
    ----------
    core
        A pymmcore-plus core (``CMMCorePlus`` or the simulator's ``UniMMCore``) with a camera and a focus
        drive; no sequence acquisition (live view) may be running.
    range_um
        Half range: planes from ``center − range_um`` to ``center + range_um``.
    step_um, n_steps
        Exactly one: the step between planes (µm), or the number of planes.
    center_z_um
        Middle of the stack (default: the focus drive's present position, i.e. where the sample is
        roughly in focus).
    settle_ms
        Extra wait after each move has finished (``waitForDevice``), for stages that ring.
    pixel_size_um
        Pixel size in the sample plane; default: the core's (``getPixelSizeUm``).
    progress
        Called as ``progress(planes_done, planes_total, z_um)`` after every plane (on this thread).
    cancel
        Polled before every plane (e.g. ``threading.Event().is_set``); when it returns True the planes
        taken so far are returned with ``cancelled=True``.

    Returns
    -------
    ZStack
        The frames, the positions the drive reported, the pixel size. The focus drive is back at its
        starting position, also after a failure or a cancel.

    Raises
    ------
    InputError
        Bad range/step, no focus drive or camera, live view running, no pixel size.
    ZStackInterrupted
        The focus drive or the camera failed at some plane (an :class:`InputError` naming the plane;
        ``partial`` holds the planes taken before it).
    """
    stage = FocusStage(core, None)  # checks the focus drive, the camera and that live view is off
    start_z = stage.z
    positions = zstack_positions(start_z if center_z_um is None else float(center_z_um), float(range_um),
                                 step_um=step_um, n_steps=n_steps)
    if not (math.isfinite(settle_ms) and settle_ms >= 0):
        raise InputError(f"settle_ms must be a non-negative number, got {settle_ms!r}")
    pixel = _pixel_size(core, pixel_size_um)
    metadata = _metadata(core, settle_ms)
    frames: list[np.ndarray] = []
    z_taken: list[float] = []

    def stack(cancelled: bool = False) -> ZStack:
        data = np.stack(frames) if frames else np.zeros((0, 0, 0), np.uint16)
        return ZStack(data, np.array(z_taken, dtype=np.float64), pixel, cancelled=cancelled,
                      metadata=dict(metadata, planes_planned=int(positions.size)))

    n = int(positions.size)
    t0 = time.perf_counter()
    cancelled = False
    try:
        for k, z in enumerate(positions):
            if cancel is not None and cancel():
                logger.info("z-stack cancelled after %d of %d planes", k, n)
                cancelled = True
                break
            where = f"plane {k + 1} of {n} (Z {z:+.2f} µm)"
            try:
                z_at = stage.move(float(z))
            except Exception as exc:
                raise ZStackInterrupted(f"the focus drive failed to move to {where}: {_reason(exc)}; "
                                        f"{len(frames)} planes taken before it are kept", stack()) from exc
            if settle_ms > 0:
                time.sleep(settle_ms / 1000.0)
            try:
                frame = stage.snap()
            except Exception as exc:
                raise ZStackInterrupted(f"the camera failed at {where}: {_reason(exc)}; {len(frames)} planes "
                                        "taken before it are kept", stack()) from exc
            if frames and (frame.shape != frames[0].shape or frame.dtype != frames[0].dtype):
                raise ZStackInterrupted(f"the camera changed its frame at {where} ({frame.shape} {frame.dtype}, "
                                        f"was {frames[0].shape} {frames[0].dtype}); {len(frames)} planes kept",
                                        stack())
            frames.append(frame.copy())
            z_taken.append(z_at)
            if progress is not None:
                progress(k + 1, n, z_at)
    except BaseException:
        # Back to the start whatever happened; a failure to get there is logged, not raised over the
        # error that ended the stack.
        try:
            stage.move(start_z)
        except Exception:
            logger.exception("could not move the focus drive back to %.2f µm", start_z)
        raise
    try:
        stage.move(start_z)
    except Exception as exc:
        raise ZStackInterrupted(f"the focus drive could not return to its start Z {start_z:+.2f} µm: "
                                f"{_reason(exc)}; the {len(frames)} planes are kept", stack(cancelled)) from exc
    logger.info("z-stack: %d of %d planes in %.2f s", len(frames), n, time.perf_counter() - t0)
    return stack(cancelled)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _pixel_size(core: Any, pixel_size_um: float | None) -> float:
    if pixel_size_um is None:
        try:
            pixel_size_um = float(core.getPixelSizeUm())
        except Exception:
            pixel_size_um = 0.0
        if not pixel_size_um > 0:
            raise InputError("the microscope has no pixel size configured (core.getPixelSizeUm() is 0); "
                             "give the pixel size in the sample plane")
    if not (math.isfinite(pixel_size_um) and pixel_size_um > 0):
        raise InputError(f"the pixel size must be a positive number of µm, got {pixel_size_um!r}")
    return float(pixel_size_um)


def _metadata(core: Any, settle_ms: float) -> dict[str, Any]:
    meta: dict[str, Any] = {"focus_device": core.getFocusDevice(), "camera": core.getCameraDevice(),
                            "settle_ms": float(settle_ms)}
    try:
        meta["exposure_ms"] = float(core.getExposure())
    except Exception:
        pass  # a camera without exposure control: nothing to record
    return meta


# -- files -----------------------------------------------------------------------------------------


def save_zstack(stack: ZStack, path: str | Path) -> Path:
    """Write ``stack`` as an OME-TIFF (``ZYX``) with every plane's ``PositionZ`` and the pixel size.

    ``path`` is the wanted name; when it exists, ``-1``, ``-2``, ... is added (the file is created
    exclusively: nothing is ever overwritten). Returns the name written. ``PhysicalSizeZ`` is written
    too when the steps are uniform.
    """
    import tifffile

    from livepsf.acquisition.recorder import unique_path

    if len(stack) == 0:
        raise InputError("the z-stack has no planes to save")
    if stack.frames.ndim != 3 or stack.frames.shape[0] != len(stack):
        raise InputError(f"z-stack frames of shape {stack.frames.shape} do not match {len(stack)} positions")
    n = len(stack)
    metadata: dict[str, Any] = {
        "axes": "ZYX", "PhysicalSizeX": stack.pixel_size_um, "PhysicalSizeY": stack.pixel_size_um,
        "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm",
        "Plane": {"PositionZ": [float(z) for z in stack.z_um], "PositionZUnit": ["µm"] * n},
    }
    steps = np.diff(stack.z_um)
    if steps.size and np.allclose(steps, steps[0], rtol=1e-6, atol=1e-6) and steps[0] > 0:
        metadata.update(PhysicalSizeZ=float(steps[0]), PhysicalSizeZUnit="µm")
    if "exposure_ms" in stack.metadata:
        metadata["Plane"].update(ExposureTime=[stack.metadata["exposure_ms"]] * n, ExposureTimeUnit=["ms"] * n)
    wanted = Path(path)
    wanted.parent.mkdir(parents=True, exist_ok=True)
    while True:
        target = unique_path(wanted)
        try:
            handle = open(target, "xb")  # noqa: SIM115 - closed below; exclusive: never overwrites
        except FileExistsError:
            continue  # appeared between the check and the open
        break
    try:
        with handle:
            tifffile.imwrite(handle, stack.frames, ome=True, photometric="minisblack", metadata=metadata,
                             resolution=(1.0 / stack.pixel_size_um, 1.0 / stack.pixel_size_um),
                             resolutionunit="MICROMETER")
    except BaseException:
        target.unlink(missing_ok=True)  # a half-written stack is worse than none
        raise
    return target


def record_zstack(core: Any, name_from: str | Path, **acquire_options: Any) -> tuple[ZStack, Path]:
    """Acquire a z-stack (:func:`acquire_zstack`) and save it (:func:`save_zstack`) before it is used.

    Saved first, so that a fit that fails afterwards loses no acquisition. The files are named from
    ``name_from`` (e.g. the calibration the stack is for) by :func:`livepsf.imageio.output_path`:
    ``<name>_zstack.ome.tif`` beside it, never replacing a file.

    Parameters
    ----------
    core
        A pymmcore-plus core with a camera and a focus drive, live view off.
    name_from
        The path the stack's file name is derived from.
    **acquire_options
        The keyword arguments of :func:`acquire_zstack` (``range_um`` and ``step_um`` or ``n_steps`` at
        least). A stack cancelled through ``cancel`` is saved with the planes taken (``stack.cancelled``).

    Returns
    -------
    tuple of (ZStack, Path)
        The stack and the file written.

    Raises
    ------
    InputError
        As :func:`acquire_zstack`; also a stack cancelled before its first plane (nothing to save).
    ZStackInterrupted
        The camera or the focus drive failed mid-stack. The planes taken before are saved as
        ``<name>_zstack-partial.ome.tif`` and the message ends with ``: saved to <that file>``.
    """
    from livepsf.imageio import output_path

    try:
        stack = acquire_zstack(core, **acquire_options)
    except ZStackInterrupted as exc:
        if not len(exc.partial):
            raise
        kept = save_zstack(exc.partial, output_path(name_from, "_zstack-partial.ome.tif"))
        raise ZStackInterrupted(f"{exc}: saved to {kept}", exc.partial) from None
    return stack, save_zstack(stack, output_path(name_from, "_zstack.ome.tif"))


def load_zstack(path: str | Path, z_um: Sequence[float] | None = None, pixel_size_um: float | None = None,
                *, z_step_um: float | None = None) -> ZStack:
    """Read a saved z-stack: its planes and their Z positions (from the OME-XML unless given).

    ``z_um`` gives every plane's position; ``z_step_um`` a uniform step (plane k at ``k × z_step_um``,
    positions then relative). ``pixel_size_um`` overrides the file's ``PhysicalSizeX``; one of them is
    needed.

    Raises
    ------
    InputError
        Unreadable file, missing or corrupt Z metadata (and no positions given), a number of positions
        that does not match the planes, fewer than 2 planes, no pixel size.
    """
    from livepsf.imageio import read_frames, read_z_positions

    path = Path(path)
    if z_um is not None and z_step_um is not None:
        raise InputError(f"{path}: give the Z positions or a Z step, not both")
    frames = read_frames(path)
    relative, file_pixel = False, None
    if z_um is None and z_step_um is None:
        found = read_z_positions(path)
        positions, relative, file_pixel = found.z_um, found.relative, found.pixel_size_um
        logger.info("%s: %s", path, found.note)
    else:
        if z_um is not None:
            positions = np.asarray([float(z) for z in z_um], dtype=np.float64)
        else:
            if not (math.isfinite(z_step_um) and z_step_um != 0):
                raise InputError(f"{path}: the Z step must be a non-zero number of µm, got {z_step_um!r}")
            positions, relative = np.arange(len(frames), dtype=np.float64) * float(z_step_um), True
        if not np.isfinite(positions).all():
            raise InputError(f"{path}: the Z positions must be finite numbers")
        try:
            file_pixel = read_z_positions(path).pixel_size_um
        except InputError:
            file_pixel = None  # positions given: the file's Z metadata is not needed
    if len(positions) != len(frames):
        raise InputError(f"{path}: {len(frames)} planes but {len(positions)} Z positions")
    if len(frames) < 2:
        raise InputError(f"{path}: a z-stack needs at least 2 planes, the file has {len(frames)}")
    pixel = pixel_size_um if pixel_size_um is not None else file_pixel
    if pixel is None:
        raise InputError(f"{path}: the file gives no pixel size (PhysicalSizeX); give it with --pixel-size-um")
    if not (math.isfinite(pixel) and pixel > 0):
        raise InputError(f"{path}: the pixel size must be a positive number of µm, got {pixel!r}")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise InputError(f"{path}: planes of different sizes {sorted(shapes)}")
    return ZStack(np.stack(frames), positions, float(pixel), z_relative=relative,
                  metadata={"source": str(path)})


# -- calibration -----------------------------------------------------------------------------------


def calibrate_from_zstack(stack: ZStack, mapper: Callable[[np.ndarray], Any], *,
                          focus_z_um: float | None = None, metric: str | None = None,
                          progress: Callable[[int, int], Any] | None = None, **fit_options: Any) -> Any:
    """Map every plane with ``mapper`` and fit the depth calibration (:func:`livepsf.depth.calibrate_zstack`).

    ``focus_z_um`` is the focus-drive position where the sample is in focus, if known (estimated
    otherwise; for a stack with relative positions it must be relative too). ``progress(done, total)``
    is called after each mapped plane. Further keyword arguments go to the fit (``curve``,
    ``max_texture_coherence``).
    """
    from livepsf.depth import calibrate_zstack

    if len(stack) < 2:
        raise InputError(f"a z-stack calibration needs at least 2 planes, got {len(stack)}")
    pmaps = []
    for k, frame in enumerate(stack.frames):
        pmaps.append(mapper(frame))
        if progress is not None:
            progress(k + 1, len(stack))
    return calibrate_zstack(pmaps, stack.z_um, stack.pixel_size_um, frames=list(stack.frames),
                            focus_z_um=focus_z_um, metric=metric, **fit_options)

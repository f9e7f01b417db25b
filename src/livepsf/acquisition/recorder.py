"""Record frames to OME-TIFF as they arrive, crash-safe, with per-frame metadata and PSF maps.

Why tifffile directly rather than ``ome_writers``: ``ome_writers`` writes TIFF pages *contiguously*
(their IFDs are only written when the stream closes) and reports write errors as warnings from a
background thread; a killed process would leave one readable frame and a full disk would go unnoticed.
Here every frame is its own TIFF page, written and ``fsync``-ed before :meth:`Recorder.append` returns:

- **Killed process**: the file is a valid multi-page TIFF holding every frame appended so far
  (``tifffile.imread`` gives ``(T, Y, X)``); the per-frame sidecar is complete up to the same frame.
- **Closed normally**: the first page's description becomes OME-XML (made by ``tifffile.OmeXml``:
  ``TYX`` axes, physical pixel size, per-plane ``DeltaT``, ``ExposureTime``, ``PositionZ``), so the file
  is an OME-TIFF.
- **Full disk** (or any ``OSError`` while writing): recording stops, the error is kept in
  :attr:`Recorder.error` and raised as :class:`RecordingError` (by this and every later ``append``),
  the :attr:`Recorder.failed` signal fires, the partial page is cut off, and everything written before
  stays readable.
- **Never overwrites**: an existing file name gets ``-1``, ``-2``, ... (files are created exclusively).

Per-frame metadata (index, time since start, UTC timestamp, exposure, stage Z, and the frame's PSF map
when one is given) goes to a JSON-lines sidecar ``<name>_frames.jsonl`` beside the TIFF, one line per
frame, also flushed per frame. :func:`read_frame_metadata` and :func:`recorded_psfmaps` read it back.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from psygnal import Signal

from livepsf.imageio import check_frame
from livepsf.mapping import PSFMap
from livepsf.optics import Optics

__all__ = [
    "Recorder",
    "RecordingError",
    "psfmap_from_dict",
    "psfmap_to_dict",
    "read_frame_metadata",
    "recorded_psfmaps",
    "sidecar_path",
    "unique_path",
]

_PLACEHOLDER = "livepsf recording in progress (plain multi-page TIFF until closed)"
_SIDECAR_SUFFIX = "_frames.jsonl"


class RecordingError(OSError):
    """Writing a recording failed (e.g. the disk is full); what was written before is kept."""


def unique_path(path: str | Path) -> Path:
    """``path`` if free, else the first free ``<stem>-1<suffixes>``, ``<stem>-2...`` beside it."""
    path = Path(path)
    name = path.name
    lower = name.lower()
    ext = next((e for e in (".ome.tiff", ".ome.tif") if lower.endswith(e)), path.suffix)
    stem = name[: len(name) - len(ext)] if ext else name
    candidate, k = path, 1
    while candidate.exists() or sidecar_path(candidate).exists():
        candidate = path.with_name(f"{stem}-{k}{ext}")
        k += 1
    return candidate


def sidecar_path(path: str | Path) -> Path:
    """The per-frame metadata file of a recording: ``<name>_frames.jsonl`` beside it."""
    path = Path(path)
    name = path.name
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    return path.with_name(name + _SIDECAR_SUFFIX)


def psfmap_to_dict(pmap: PSFMap) -> dict[str, Any]:
    """A JSON-ready dict holding everything needed to rebuild the map (:func:`psfmap_from_dict`)."""
    return {
        "psf_model": pmap.psf_model,
        "params": {k: np.asarray(v, dtype=np.float32).round(6).tolist() for k, v in pmap.params.items()},
        "invalid": np.asarray(pmap.invalid, dtype=np.float32).round(6).tolist(),
        "centers_y": np.asarray(pmap.centers_y, dtype=np.float64).tolist(),
        "centers_x": np.asarray(pmap.centers_x, dtype=np.float64).tolist(),
        "window_px": int(pmap.window_px),
        "stride_px": int(pmap.stride_px),
        "frame_shape": [int(s) for s in pmap.frame_shape],
        "model_name": pmap.model_name,
        "model_sha256": pmap.model_sha256,
        "optics": pmap.optics.to_dict(),
    }


def psfmap_from_dict(d: dict[str, Any]) -> PSFMap:
    """Inverse of :func:`psfmap_to_dict`."""
    return PSFMap(
        params={k: np.asarray(v, dtype=np.float32) for k, v in d["params"].items()},
        invalid=np.asarray(d["invalid"], dtype=np.float32),
        centers_y=np.asarray(d["centers_y"], dtype=np.float64),
        centers_x=np.asarray(d["centers_x"], dtype=np.float64),
        window_px=int(d["window_px"]),
        stride_px=int(d["stride_px"]),
        frame_shape=tuple(d["frame_shape"]),
        psf_model=d["psf_model"],
        model_name=d.get("model_name", ""),
        model_sha256=d.get("model_sha256", ""),
        optics=Optics(**d["optics"]),
    )


class Recorder:
    """Stream frames into one OME-TIFF, one fsync-ed page per frame.

    Parameters
    ----------
    path
        Wanted file name (``.ome.tif``); a free variant is used if it exists (:attr:`path` says which).
    pixel_size_um
        Pixel size in the sample plane, stored in the OME metadata and in the TIFF resolution.
    metadata
        Extra JSON-ready information about the whole recording (objective, model name, ...), written
        as the sidecar's first line.
    on_close
        Called with the file path once the recording is closed (e.g. ``DeconvolutionQueue.submit``);
        also called after a failed recording, whose frames are kept.

    Signals
    -------
    frame_written(int)
        Index of each frame once it is safely on disk.
    failed(str)
        The reason recording stopped (disk full, ...).
    closed(object)
        The :class:`~pathlib.Path` of the finished file.

    Examples
    --------
    >>> with Recorder("run.ome.tif", pixel_size_um=0.65) as rec:   # doctest: +SKIP
    ...     rec.append(frame, exposure_ms=10.0, z_um=12.5, psfmap=pmap)
    """

    frame_written = Signal(int)
    failed = Signal(str)
    closed = Signal(object)

    def __init__(
        self,
        path: str | Path,
        *,
        pixel_size_um: float,
        metadata: dict[str, Any] | None = None,
        on_close: Callable[[Path], Any] | None = None,
    ) -> None:
        if not (pixel_size_um > 0 and np.isfinite(pixel_size_um)):
            raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um!r}")
        self.pixel_size_um = float(pixel_size_um)
        self._on_close = on_close
        self.error: RecordingError | None = None
        self._planes: list[dict[str, Any]] = []
        self._shape: tuple[int, int] | None = None
        self._dtype: np.dtype | None = None
        self._t0 = time.monotonic()
        self._closed = False
        wanted = Path(path)
        wanted.parent.mkdir(parents=True, exist_ok=True)
        # Exclusive creation: even a file appearing between the check and the open is never overwritten.
        while True:
            self.path = unique_path(wanted)
            try:
                self._fh = open(self.path, "xb")  # noqa: SIM115 - closed in close()
                self._side = open(sidecar_path(self.path), "x", encoding="utf-8")  # noqa: SIM115
                break
            except FileExistsError:
                continue
        self.sidecar_path = sidecar_path(self.path)
        self._tiff = tifffile.TiffWriter(self._fh, bigtiff=True)
        header = {"livepsf_recording": 1, "file": self.path.name, "pixel_size_um": self.pixel_size_um,
                  "started_utc": _utc_now(), **(metadata or {})}
        self._write_line(header)

    # -- writing --------------------------------------------------------------------------------

    @property
    def frames_written(self) -> int:
        return len(self._planes)

    @property
    def is_open(self) -> bool:
        return not self._closed and self.error is None

    def append(
        self,
        frame: np.ndarray,
        *,
        exposure_ms: float | None = None,
        z_um: float | None = None,
        psfmap: PSFMap | None = None,
        time_s: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> int:
        """Write one frame (and its metadata) to disk; returns its index.

        Raises
        ------
        RecordingError
            Writing failed (the recording is stopped; earlier frames are kept), or the recording was
            already stopped or closed.
        InputError
            The frame is not a finite 2D real image, or differs in shape/dtype from the first frame.
        """
        if self.error is not None:
            raise self.error
        if self._closed:
            raise RecordingError(errno.EBADF, f"{self.path}: the recording is closed")
        frame = np.asarray(frame)
        check_frame(frame)
        if self._shape is None:
            self._shape, self._dtype = frame.shape, frame.dtype
        elif frame.shape != self._shape or frame.dtype != self._dtype:
            from livepsf.errors import InputError

            raise InputError(f"frame {len(self._planes)} is {frame.shape} {frame.dtype}; this recording holds "
                             f"{self._shape} {self._dtype}")
        index = len(self._planes)
        plane = {
            "index": index,
            "time_s": round(float(time.monotonic() - self._t0 if time_s is None else time_s), 6),
            "utc": _utc_now(),
            "exposure_ms": None if exposure_ms is None else float(exposure_ms),
            "z_um": None if z_um is None else float(z_um),
        }
        record = dict(plane, **(extra or {}))
        if psfmap is not None:
            record["psfmap"] = psfmap_to_dict(psfmap)
        good_size = self._fh.tell()
        try:
            self._tiff.write(
                frame,
                contiguous=False,
                photometric="minisblack",
                metadata=None,
                description=_PLACEHOLDER if index == 0 else None,
                resolution=(1.0 / self.pixel_size_um, 1.0 / self.pixel_size_um),
                resolutionunit="MICROMETER",
            )
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._write_line(record)
        except OSError as exc:
            self._stop(exc, good_size)
            raise self.error from exc
        self._planes.append(plane)
        self.frame_written.emit(index)
        return index

    def _write_line(self, record: dict[str, Any]) -> None:
        self._side.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._side.flush()
        os.fsync(self._side.fileno())

    def _stop(self, exc: OSError, good_size: int) -> None:
        reason = "disk full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
        message = (f"{self.path}: recording stopped after {len(self._planes)} frame(s): {reason}; "
                   f"the frames written so far are kept")
        self.error = RecordingError(exc.errno or errno.EIO, message)
        # Cut off a partially written page so the file ends at the last complete frame.
        try:
            self._fh.flush()
        except OSError:
            pass
        try:
            self._fh.truncate(good_size)
        except OSError:
            pass
        self.failed.emit(message)

    # -- closing --------------------------------------------------------------------------------

    def close(self) -> Path:
        """Finish the file: OME-XML with per-plane metadata replaces the placeholder. Idempotent."""
        if self._closed:
            return self.path
        self._closed = True
        try:
            # The TiffWriter only holds already-written pages; closing it writes nothing else for
            # non-contiguous pages, but after a failure it may not be able to; the pages are on disk.
            try:
                self._tiff.close()
            except OSError:
                pass
            for handle in (self._fh, self._side):
                try:
                    handle.close()
                except OSError:
                    pass
            if self._planes:
                self._write_ome_xml()
        finally:
            self.closed.emit(self.path)
            if self._on_close is not None:
                self._on_close(self.path)
        return self.path

    def _write_ome_xml(self) -> None:
        n = len(self._planes)
        height, width = self._shape
        plane: dict[str, list] = {"DeltaT": [p["time_s"] for p in self._planes], "DeltaTUnit": ["s"] * n}
        if all(p["exposure_ms"] is not None for p in self._planes):
            plane.update(ExposureTime=[p["exposure_ms"] for p in self._planes], ExposureTimeUnit=["ms"] * n)
        if all(p["z_um"] is not None for p in self._planes):
            plane.update(PositionZ=[p["z_um"] for p in self._planes], PositionZUnit=["µm"] * n)
        ome = tifffile.OmeXml()
        ome.addimage(self._dtype, (n, height, width), (n, 1, 1, height, width, 1), axes="TYX",
                     PhysicalSizeX=self.pixel_size_um, PhysicalSizeY=self.pixel_size_um,
                     PhysicalSizeXUnit="µm", PhysicalSizeYUnit="µm", Plane=plane)
        try:
            tifffile.tiffcomment(self.path, comment=ome.tostring().encode("utf-8"), pageindex=0)
        except OSError as exc:
            # The frames stay readable as a plain multi-page TIFF; only the OME header is missing.
            if self.error is None:
                self.error = RecordingError(exc.errno or errno.EIO,
                                            f"{self.path}: could not write the OME-XML header: {exc}")
                self.failed.emit(str(self.error))

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "failed" if self.error else ("closed" if self._closed else "open")
        return f"Recorder({str(self.path)!r}, frames={self.frames_written}, {state})"


def read_frame_metadata(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and per-frame records of a recording's sidecar (a truncated last line is skipped)."""
    side = sidecar_path(path)
    header: dict[str, Any] = {}
    frames: list[dict[str, Any]] = []
    if not side.is_file():
        return header, frames
    for line in side.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if "livepsf_recording" in record:
            header = record
        else:
            frames.append(record)
    return header, frames


def recorded_psfmaps(path: str | Path) -> list[PSFMap | None]:
    """The PSF map stored with each frame of a recording (``None`` for frames recorded without one)."""
    _, frames = read_frame_metadata(path)
    return [psfmap_from_dict(f["psfmap"]) if "psfmap" in f else None for f in frames]


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")

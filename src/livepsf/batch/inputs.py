"""Batch inputs: files and folders of TIFF/OME-TIFF, and OME-Zarr, read lazily one frame at a time.

A folder stands for the TIFF files and ``*.zarr`` stores directly inside it (sorted by name), leaving
out hidden files and livepsf's own outputs (``*_psfmap.ome.tif``, ``*_depth.ome.tif``, ``*_surface.ome.tif``,
``*_deconv.ome.tif`` and their ``-1``, ``-2`` ... variants), so a folder can be processed again
without feeding on its outputs.

Frames are numbered as :func:`livepsf.imageio.read_frames` numbers them (every 2D plane of the first
series, in order), and :func:`read_frame` returns exactly ``read_frames(path)[index]``; for a plain
multi-page or OME-TIFF it decodes only that plane's page, so a task never holds a whole acquisition.

An OME-Zarr store (``*.zarr`` folder, NGFF 0.4 or 0.5; needs ``zarr``, part of ``livepsf[dask]``) is
read at its full resolution (the first multiscale level): every 2D ``(y, x)`` plane of it, leading
axes in C order, is one frame, and a task reads only the chunks of its plane.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livepsf.errors import InputError
from livepsf.imageio import check_frame, read_frames

__all__ = ["FrameSource", "expand_inputs", "open_source", "read_frame"]

_TIFF_SUFFIXES = (".tif", ".tiff")
_ZARR_SUFFIX = ".zarr"
_OUTPUT_NAME = re.compile(r"_(psfmap|depth|surface|deconv)(-\d+)?\.ome\.tiff?$", re.IGNORECASE)


@dataclass(frozen=True)
class FrameSource:
    """One input file: its path and how many 2D frames of which shape it holds."""

    path: Path
    n_frames: int
    frame_shape: tuple[int, int]


def expand_inputs(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Files to process, folders expanded to their TIFF files; plus one message per unusable path.

    Returns
    -------
    files, errors
        Absolute paths without duplicates, in the order given; ``errors`` name the path and the problem
        (missing, or a folder without TIFF files).
    """
    files: dict[Path, None] = {}
    errors: list[str] = []
    for entry in map(Path, paths):
        if entry.is_dir() and not _is_zarr(entry):
            found = sorted(p for p in entry.iterdir() if not p.name.startswith(".") and (
                (p.is_file() and p.suffix.lower() in _TIFF_SUFFIXES and not _OUTPUT_NAME.search(p.name))
                or _is_zarr(p)))
            if not found:
                errors.append(f"{entry}: folder holds no TIFF files or OME-Zarr stores to process")
            files.update((p.resolve(), None) for p in found)
        elif entry.is_file() or _is_zarr(entry):
            files[entry.resolve()] = None
        else:
            errors.append(f"{entry}: no such file or folder")
    return list(files), errors


def open_source(path: str | Path) -> FrameSource:
    """Count the frames of an image file without reading its pixels (TIFF); others are read once.

    Raises
    ------
    InputError
        The file is missing, not an image, or holds no 2D frames.
    """
    path = Path(path)
    if _is_zarr(path):
        shape = _zarr_array(path).shape
        return FrameSource(path, math.prod(shape[:-2]), (int(shape[-2]), int(shape[-1])))
    if path.suffix.lower() in _TIFF_SUFFIXES and path.is_file():
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if tif.series:
                    series = tif.series[0]
                    if _pages_are_planes(series):
                        shape = tuple(int(n) for n in series.shape)
                        return FrameSource(path, math.prod(shape[:-2]), (shape[-2], shape[-1]))
        except Exception:
            pass  # read_frames below gives the file's own, clear error
    frames = read_frames(path)
    return FrameSource(path, len(frames), tuple(frames[0].shape))


def read_frame(path: str | Path, index: int) -> np.ndarray:
    """Frame ``index`` of ``path``: equal to ``read_frames(path)[index]``, decoding only its page when possible.

    Raises
    ------
    InputError
        The file cannot be read, ``index`` is out of range, or the frame is not a usable image.
    """
    path = Path(path)
    if _is_zarr(path):
        array = _zarr_array(path)
        n = math.prod(array.shape[:-2])
        if not 0 <= index < n:
            raise InputError(f"{path}: frame {index} does not exist (the store has {n})")
        try:
            frame = np.asarray(array[np.unravel_index(index, array.shape[:-2]) if n > 1 else ()])
        except Exception as exc:  # a missing or corrupt chunk
            raise InputError(f"{path}: cannot read frame {index} ({type(exc).__name__}: {exc})") from None
        _check(path, frame, index, n)
        return frame
    if path.suffix.lower() in _TIFF_SUFFIXES and path.is_file():
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0] if tif.series else None
                if series is not None and _pages_are_planes(series):
                    n = math.prod(series.shape[:-2])
                    if not 0 <= index < n:
                        raise InputError(f"{path}: frame {index} does not exist (the file has {n})")
                    page = series.pages[index]
                    if page is None:  # a plane the OME metadata lists but the file lacks
                        raise InputError(f"{path}: frame {index} is missing from the file")
                    frame = page.asarray()
                    _check(path, frame, index, n)
                    return frame
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{path}: cannot read frame {index} ({type(exc).__name__}: {exc})") from None
    frames = read_frames(path)
    if not 0 <= index < len(frames):
        raise InputError(f"{path}: frame {index} does not exist (the file has {len(frames)})")
    return frames[index]


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and path.suffix.lower() == _ZARR_SUFFIX


def _zarr_array(path: Path):
    """The full-resolution array of an OME-Zarr store (or the array a plain Zarr folder holds)."""
    try:
        import zarr
    except ImportError:
        raise InputError(f"{path}: reading OME-Zarr needs zarr: pip install 'livepsf[dask]'") from None
    try:
        node = zarr.open(str(path), mode="r")
        if isinstance(node, zarr.Group):
            attrs = dict(node.attrs)
            multiscales = (attrs.get("ome") or attrs).get("multiscales")  # NGFF 0.5 nests under "ome"
            if not multiscales:
                raise InputError(f"{path}: a Zarr group without OME multiscales metadata")
            node = node[multiscales[0]["datasets"][0]["path"]]
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot open as OME-Zarr ({type(exc).__name__}: {exc})") from None
    if node.ndim < 2 or not np.issubdtype(node.dtype, np.number):
        raise InputError(f"{path}: holds no 2D images (shape {node.shape}, {node.dtype})")
    return node


def _pages_are_planes(series: object) -> bool:
    """True when each page of the series is one 2D plane (no RGB samples, no tiled volumes)."""
    shape = tuple(series.shape)
    if len(shape) < 2:
        return False
    pages = series.pages
    keyframe = series.keyframe
    return len(pages) == math.prod(shape[:-2]) and tuple(keyframe.shape) == shape[-2:]


def _check(path: Path, frame: np.ndarray, index: int, n: int) -> None:
    try:
        check_frame(frame)
    except InputError as exc:
        where = f"{path}" if n == 1 else f"{path} (plane {index})"
        raise InputError(f"{where}: {exc}") from None

"""Reading user images and choosing output names that never overwrite anything.

Every command that takes images (``map``, ``depth``, ``calibrate``, ``deconvolve``) reads them through
:func:`read_frames` and names its outputs with :func:`output_path`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from livepsf.errors import InputError

__all__ = ["read_frames", "output_path", "output_stem", "existing_outputs", "check_frame"]

_TIFF_SUFFIXES = {".tif", ".tiff"}
_PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


def read_frames(path: str | Path) -> list[np.ndarray]:
    """Read the 2D frames of an image file.

    TIFF (including OME-TIFF) is read with tifffile; every 2D plane of a multi-page or multi-dimensional
    file becomes one frame. PNG/JPEG are read with Pillow and converted to grey. The data are returned
    in their stored dtype; the file is opened read-only.

    Raises
    ------
    InputError
        The file does not exist, cannot be decoded, or holds no 2D real-valued image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix in _TIFF_SUFFIXES:
            import tifffile

            data = tifffile.imread(path)
            if data.ndim >= 3 and data.shape[-1] in (3, 4) and data.dtype == np.uint8:
                data = _rgb_to_grey(data)
        elif suffix in _PIL_SUFFIXES:
            from PIL import Image

            with Image.open(path) as img:
                data = np.asarray(img.convert("I;16") if img.mode in ("I;16", "I") else img.convert("L"))
        else:
            raise InputError(f"{path}: unsupported image type {suffix or '(none)'}; use TIFF, PNG or JPEG")
    except InputError:
        raise
    except Exception as exc:  # a decoder's own error: corrupt or truncated file
        raise InputError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    data = np.asarray(data)
    if data.size == 0:
        raise InputError(f"{path}: cannot read image (empty or corrupt file)")
    if data.ndim < 2:
        raise InputError(f"{path}: holds no 2D image (shape {data.shape})")
    frames = list(data.reshape(-1, *data.shape[-2:]))
    for i, frame in enumerate(frames):
        try:
            check_frame(frame)
        except InputError as exc:
            where = f"{path}" if len(frames) == 1 else f"{path} (plane {i})"
            raise InputError(f"{where}: {exc}") from None
    return frames


def check_frame(frame: np.ndarray, min_shape: tuple[int, int] | None = None) -> None:
    """Raise :class:`InputError` unless ``frame`` is a finite, real, 2D array (at least ``min_shape``)."""
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise InputError(f"expected a 2D image, got an array of shape {frame.shape}")
    if np.iscomplexobj(frame):
        raise InputError("complex-valued image; expected real intensities")
    if not (np.issubdtype(frame.dtype, np.number) or frame.dtype == np.bool_):
        raise InputError(f"unsupported pixel type {frame.dtype}")
    if np.issubdtype(frame.dtype, np.floating) and not np.isfinite(frame).all():
        raise InputError("image contains NaN or infinite values")
    if min_shape is not None and (frame.shape[0] < min_shape[0] or frame.shape[1] < min_shape[1]):
        raise InputError(f"image of {frame.shape[0]}x{frame.shape[1]} px is smaller than one "
                         f"{min_shape[0]}x{min_shape[1]} px window")


def output_path(source: str | Path, suffix: str, out_dir: str | Path | None = None) -> Path:
    """A new file name for an output derived from ``source``, beside it or in ``out_dir``.

    ``output_path("a/cell.ome.tif", "_psfmap.ome.tif")`` is ``a/cell_psfmap.ome.tif``; if that exists,
    ``a/cell_psfmap-1.ome.tif``, and so on: an existing file is never overwritten, and the result is
    never the source itself.
    """
    source = Path(source)
    folder = Path(out_dir) if out_dir is not None else source.parent
    folder.mkdir(parents=True, exist_ok=True)
    stem = _stem(source)
    base, ext = _split_suffix(suffix)
    candidate = folder / f"{stem}{base}{ext}"
    k = 1
    while candidate.exists() or candidate.resolve() == source.resolve():
        candidate = folder / f"{stem}{base}-{k}{ext}"
        k += 1
    return candidate


def output_stem(source: str | Path, suffix: str) -> str:
    """The name :func:`output_path` starts from, without extension.

    ``output_stem("a/cell.ome.tif", "_deconv.ome.tif")`` is ``"cell_deconv"``.
    """
    return _stem(Path(source)) + _split_suffix(suffix)[0]


def existing_outputs(source: str | Path, suffix: str, out_dir: str | Path | None = None) -> list[Path]:
    """The files :func:`output_path` has already handed out for ``source`` and ``suffix``, in order.

    ``a/cell_deconv.ome.tif``, ``a/cell_deconv-1.ome.tif``, ... as far as they exist (a gap ends the
    list, as it ends :func:`output_path`'s search). Used to find an earlier run's output to resume from.
    """
    source = Path(source)
    folder = Path(out_dir) if out_dir is not None else source.parent
    base, ext = _split_suffix(suffix)
    stem = _stem(source)
    found, k = [], 0
    while True:
        candidate = folder / f"{stem}{base}{'' if k == 0 else f'-{k}'}{ext}"
        if not candidate.exists():
            return found
        if candidate.resolve() != source.resolve():
            found.append(candidate)
        k += 1


def _stem(path: Path) -> str:
    name = path.name
    for double in (".ome.tif", ".ome.tiff", ".ome.zarr"):
        if name.lower().endswith(double):
            return name[: -len(double)]
    return path.stem


def _split_suffix(suffix: str) -> tuple[str, str]:
    """Split ``"_psfmap.ome.tif"`` into ``("_psfmap", ".ome.tif")``."""
    dot = suffix.find(".")
    return (suffix, "") if dot < 0 else (suffix[:dot], suffix[dot:])


def _rgb_to_grey(data: np.ndarray) -> np.ndarray:
    rgb = data[..., :3].astype(np.float32)
    return (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)

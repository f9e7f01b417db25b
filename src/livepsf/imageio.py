"""Reading user images and choosing output names that never overwrite anything.

Every command that takes images (``map``, ``depth``, ``calibrate``, ``deconvolve``) reads them through
:func:`read_frames` and names its outputs with :func:`output_path`. :func:`read_z_positions` reads the
focus-drive position of every plane of a saved z-stack from its OME-XML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livepsf.errors import InputError

__all__ = ["read_frames", "output_path", "output_stem", "existing_outputs", "check_frame", "ZPositions",
           "read_z_positions"]

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


# -- Z positions of saved stacks ------------------------------------------------------------------------

# OME length units (UnitsLength) in µm; OME's default unit for positions and sizes is the micrometre.
_UM_PER_UNIT = {"µm": 1.0, "um": 1.0, "\u03bcm": 1.0, "micron": 1.0, "nm": 1e-3, "pm": 1e-6, "Å": 1e-4,
                "mm": 1e3, "cm": 1e4, "dm": 1e5, "m": 1e6}


@dataclass(frozen=True)
class ZPositions:
    """Focus-drive positions of the planes of a saved stack, as read by :func:`read_z_positions`.

    Attributes
    ----------
    z_um
        One position per plane, in file order (µm).
    relative
        True when the positions come from a uniform ``PhysicalSizeZ`` (plane k at ``k × PhysicalSizeZ``,
        increasing through the file): only their differences are known, not the stage positions.
    pixel_size_um
        ``PhysicalSizeX`` of the image (µm) when the file gives it, else ``None``.
    note
        One line for people saying where the positions came from.
    """

    z_um: np.ndarray
    relative: bool
    pixel_size_um: float | None
    note: str


def read_z_positions(path: str | Path) -> ZPositions:
    """The Z position of every plane of a z-stack OME-TIFF, from its OME-XML.

    ``Plane PositionZ`` (with ``PositionZUnit``) of every plane of the first image is used; without
    it, a uniform ``PhysicalSizeZ`` of a stack with ``SizeZ > 1`` gives positions relative to the first
    plane (noted in :attr:`ZPositions.note`). Micro-Manager, tifffile and livepsf's own recordings write
    ``PositionZ``.

    Raises
    ------
    InputError
        The file is missing or not a TIFF, its OME-XML is corrupt, it has several channels, some planes
        lack a position, or it has no Z information at all (the message says to pass the positions).
    """
    import xml.etree.ElementTree as ET

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    hint = "; give the positions with --z-um or --z-step-um"
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
    except Exception as exc:  # tifffile's own error: not a TIFF, truncated
        raise InputError(f"{path}: cannot read TIFF ({type(exc).__name__}: {exc})") from exc
    if not xml:
        raise InputError(f"{path}: no OME-XML metadata, so no Z positions{hint}")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise InputError(f"{path}: corrupt OME-XML ({exc}){hint}") from None
    pixels = next((el for el in root.iter() if _local(el.tag) == "Pixels"), None)
    if pixels is None:
        raise InputError(f"{path}: the OME-XML has no Pixels element{hint}")
    sizes = {d: _ome_int(pixels, f"Size{d}", path) for d in "CZT"}
    if sizes["C"] > 1:
        raise InputError(f"{path}: {sizes['C']} channels; a z-stack for calibration has one")
    n = sizes["Z"] * sizes["T"]
    pixel_size = _ome_length(pixels, "PhysicalSizeX", path)
    order = pixels.get("DimensionOrder", "XYCZT")[2:]
    if sorted(order) != ["C", "T", "Z"]:
        raise InputError(f"{path}: corrupt OME-XML (DimensionOrder {pixels.get('DimensionOrder')!r})")
    planes = [el for el in pixels if _local(el.tag) == "Plane"]
    positions: dict[int, float] = {}
    for plane in planes:
        index, stride = 0, 1
        for d in order:
            index += _ome_int(plane, f"The{d}", path, default=0) * stride
            stride *= sizes[d]
        z = _ome_length(plane, "PositionZ", path)
        if z is not None and 0 <= index < n:
            positions[index] = z
    if positions:
        missing = [i for i in range(n) if i not in positions]
        if missing:
            raise InputError(f"{path}: {len(missing)} of {n} planes have no PositionZ in the OME-XML "
                             f"(first: plane {missing[0]}){hint}")
        z_um = np.array([positions[i] for i in range(n)], dtype=np.float64)
        return ZPositions(z_um, False, pixel_size, f"Z positions from the OME-XML (PositionZ of {n} planes)")
    step = _ome_length(pixels, "PhysicalSizeZ", path)
    if step is not None and sizes["Z"] > 1 and step > 0:
        z_um = np.arange(n, dtype=np.float64) * step
        return ZPositions(z_um, True, pixel_size,
                          f"Z positions from PhysicalSizeZ = {step:g} µm: relative to the first plane and "
                          "assumed to increase through the file (the in-focus position is estimated)")
    raise InputError(f"{path}: the OME-XML gives no Z position (no Plane PositionZ, no PhysicalSizeZ){hint}")


def _local(tag: str) -> str:
    """An XML tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def _ome_int(element, name: str, path: Path, default: int = 1) -> int:
    value = element.get(name)
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        raise InputError(f"{path}: corrupt OME-XML ({name}={value!r} is not an integer)") from None
    if number < 0:
        raise InputError(f"{path}: corrupt OME-XML ({name}={value!r} is negative)")
    return number


def _ome_length(element, name: str, path: Path) -> float | None:
    """An OME length attribute in µm (``None`` when absent), converted from its ``<name>Unit``."""
    value = element.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise InputError(f"{path}: corrupt OME-XML ({name}={value!r} is not a number)") from None
    if not math.isfinite(number):
        raise InputError(f"{path}: corrupt OME-XML ({name}={value!r} is not finite)")
    unit = element.get(f"{name}Unit", "µm")
    if unit not in _UM_PER_UNIT:
        raise InputError(f"{path}: {name}Unit {unit!r} is not a length unit livepsf knows")
    return number * _UM_PER_UNIT[unit]

"""Spatially-variant PSF maps: :class:`PSFMap` (the result) and :class:`PSFMapper` (frame -> map).

A PSF map holds, for a regular grid of windows over a frame, the PSF parameters the network estimated
in each window (physical units), their standard deviations (networks with uncertainty), the probability
that the window is invalid (textureless), and the window geometry. Invalid windows carry values filled in from their valid neighbours (:func:`fill_invalid`);
the raw invalid probability stays in :attr:`PSFMap.invalid`.

Maps are saved as OME-TIFF (:meth:`PSFMap.to_ome_tiff`, :func:`save_psfmaps`): one channel per
parameter plus ``invalid`` (plus ``<name>_sigma`` channels when the map has σ), a T axis when several frames were mapped, and everything needed to use the
map again (units, model card, window geometry, optics) as JSON in an OME ``MapAnnotation``.
"""

from __future__ import annotations

import json
import math
import warnings
import weakref
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from livepsf.errors import InputError
from livepsf.imageio import check_frame
from livepsf.net.symmetry import dihedral_average_map
from livepsf.optics import Optics, cylinder_axis, get_psf_model

if TYPE_CHECKING:
    from livepsf.net import PSFNet

__all__ = [
    "INVALID_THRESHOLD",
    "MappedFile",
    "PSFMap",
    "PSFMapper",
    "fill_invalid",
    "linear_weights",
    "load_psfmaps",
    "map_frames",
    "map_image_file",
    "save_psfmaps",
]

#: A window whose invalid probability exceeds this is treated as textureless (paper: a_0 = 1).
INVALID_THRESHOLD = 0.5

_OME_NAMESPACE = "livepsf/psfmap"
_OME_KEY = "psfmap"
_FORMAT_VERSION = 1
_SIGMA_SUFFIX = "_sigma"
# Frame shapes each mapper has been warmed up on (map_frames): a batch of single-frame files warms up once.
_WARM_SHAPES: weakref.WeakKeyDictionary[Any, set[tuple[int, ...]]] = weakref.WeakKeyDictionary()


@dataclass
class PSFMap:
    """PSF parameters on a grid of windows over one frame.

    Attributes
    ----------
    params
        ``{name: (gy, gx) float32}`` in the physical units of the model card (waves, px²); invalid
        windows hold the inverse-distance-weighted mean of valid neighbours.
    invalid
        ``(gy, gx) float32`` probability that a window is textureless (paper's a_0).
    centers_y, centers_x
        Window centres in frame pixels (row, column), ``(gy,)`` and ``(gx,)``.
    window_px, stride_px
        Window side and grid step in pixels.
    frame_shape
        ``(height, width)`` of the frame the map was computed on.
    psf_model
        Paper name of the PSF model (``"Z-3"``, ``"G-2"``, ...).
    model_name, model_sha256
        Which network made the map (from its model card).
    optics
        The optics the network was trained for (needed to turn parameters back into PSFs).
    model_card
        The full model card (JSON-compatible dict) of the network, recorded in saved maps; may be empty
        for maps built by hand. Treat it as read-only: a mapper shares one dict between its maps.
    sigma
        ``{name: (gy, gx) float32}``: the standard deviation of each parameter, same keys and units as
        :attr:`params` (calibrated on the network's validation set; a window whose content cannot
        reveal a parameter has a large σ). An **empty dict** when the network predicts no σ (models
        made before uncertainty existed). Invalid windows keep the network's own σ (not filled), which
        is large for textureless content.
    dihedral_average
        True when every window's values are the mean of the network's readings of its 8 rotations and
        mirrors (:class:`PSFMapper` with ``dihedral_average=True``).
    """

    params: dict[str, np.ndarray]
    invalid: np.ndarray
    centers_y: np.ndarray
    centers_x: np.ndarray
    window_px: int
    stride_px: int
    frame_shape: tuple[int, int]
    psf_model: str
    model_name: str = ""
    model_sha256: str = ""
    optics: Optics = field(default_factory=Optics)
    model_card: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    sigma: dict[str, np.ndarray] = field(default_factory=dict)
    dihedral_average: bool = False

    def __post_init__(self) -> None:
        gy, gx = len(self.centers_y), len(self.centers_x)
        shapes = {name: np.shape(v) for name, v in {**self.params, **self.sigma}.items()}
        if np.shape(self.invalid) != (gy, gx) or any(s != (gy, gx) for s in shapes.values()):
            raise ValueError(f"PSFMap grids must all be {(gy, gx)}; got invalid {np.shape(self.invalid)}, {shapes}")
        spec = get_psf_model(self.psf_model)
        if set(self.params) != set(spec.names):
            raise ValueError(f"PSFMap for {spec.name} needs parameters {spec.names}, got {sorted(self.params)}")
        if self.sigma and set(self.sigma) != set(spec.names):
            raise ValueError(f"PSFMap sigma must be empty or hold {spec.names}, got {sorted(self.sigma)}")

    @property
    def grid_shape(self) -> tuple[int, int]:
        return len(self.centers_y), len(self.centers_x)

    @property
    def centers_yx(self) -> np.ndarray:
        """``(gy, gx, 2)`` window centres as (row, column) pixel coordinates."""
        yy, xx = np.meshgrid(self.centers_y, self.centers_x, indexing="ij")
        return np.stack([yy, xx], axis=-1)

    @property
    def invalid_mask(self) -> np.ndarray:
        """``(gy, gx) bool``: windows the network flagged as textureless (probability > 0.5)."""
        return np.asarray(self.invalid) > INVALID_THRESHOLD

    @property
    def all_invalid(self) -> bool:
        """True when every window is invalid: then nothing could be filled and :attr:`params` are raw."""
        return bool(self.invalid_mask.all())

    def units(self) -> dict[str, str]:
        """Physical unit of each parameter (from the PSF model spec), plus ``invalid`` (probability)."""
        spec = get_psf_model(self.psf_model)
        return {**{p.name: p.unit for p in spec.params}, "invalid": "probability"}

    def values(self, name: str) -> np.ndarray:
        """A parameter grid by name, including the derived ``cylinder`` (waves) and ``axis`` (radians)."""
        if name in self.params:
            return self.params[name]
        if name in ("cylinder", "axis") and "astig_0" in self.params:
            import torch

            cyl, axis = cylinder_axis(torch.from_numpy(self.params["astig_0"].astype(np.float64)),
                                      torch.from_numpy(self.params["astig_45"].astype(np.float64)))
            return (cyl if name == "cylinder" else axis).numpy().astype(np.float32)
        raise KeyError(f"PSF map of model {self.psf_model} has no parameter {name!r}")

    def upsample(self, shape: tuple[int, int] | None = None, name: str | None = None) -> np.ndarray | dict[str, np.ndarray]:
        """Smooth full-frame maps for overlays: bilinear between window centres, constant beyond them.

        Parameters
        ----------
        shape
            Output ``(height, width)``; defaults to :attr:`frame_shape`. Other shapes are treated as
            the same field of view resampled (e.g. a downscaled display image).
        name
            One parameter (or ``"invalid"``, ``"cylinder"``, ``"axis"``); all parameters when omitted.
        """
        shape = tuple(shape or self.frame_shape)
        sy = self.frame_shape[0] / shape[0]
        sx = self.frame_shape[1] / shape[1]
        # Output pixel centres in frame coordinates.
        ys = (np.arange(shape[0]) + 0.5) * sy - 0.5
        xs = (np.arange(shape[1]) + 0.5) * sx - 0.5
        wy = linear_weights(self.centers_y, ys)
        wx = linear_weights(self.centers_x, xs)

        def one(grid: np.ndarray) -> np.ndarray:
            return (wy @ np.asarray(grid, dtype=np.float32) @ wx.T).astype(np.float32)

        if name is not None:
            grid = self.invalid if name == "invalid" else self.values(name)
            return one(grid)
        return {n: one(g) for n, g in self.params.items()}


    def to_ome_tiff(self, path: str | Path, overwrite: bool = False) -> Path:
        """Save the map as an OME-TIFF (see :func:`save_psfmaps`); returns the path written."""
        return save_psfmaps(path, [self], overwrite=overwrite)

    @classmethod
    def from_ome_tiff(cls, path: str | Path, index: int = 0) -> PSFMap:
        """Read map ``index`` (the T position; 0 for a single-frame file) from a file of :func:`save_psfmaps`."""
        maps = load_psfmaps(path)
        if not -len(maps) <= index < len(maps):
            raise InputError(f"{path}: holds {len(maps)} PSF map(s); there is no map {index}")
        return maps[index]

def linear_weights(centres: np.ndarray, positions: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """1D linear-interpolation (tent) weights from grid ``centres`` to ``positions``, constant beyond the ends.

    Returns a ``(len(positions), len(centres))`` matrix whose rows sum to one: the bilinear partition of
    unity of the overlay upsampling and of the overlap-add deconvolution (paper eq. 12).
    """
    centres = np.asarray(centres, dtype=np.float64)
    n = len(centres)
    weights = np.zeros((len(positions), n), dtype=dtype)
    if n == 1:
        weights[:, 0] = 1.0
        return weights
    pos = np.clip(positions, centres[0], centres[-1])
    idx = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, n - 2)
    t = (pos - centres[idx]) / (centres[idx + 1] - centres[idx])
    rows = np.arange(len(positions))
    weights[rows, idx] = 1.0 - t
    weights[rows, idx + 1] = t
    return weights


class PSFMapper:
    """Turn frames into :class:`PSFMap` s with a trained network, one fast call per frame.

    Windows of the model's ``window_px`` (128 px for the shipped models) slide over the frame with
    ``stride_px``; the network's ``map_frame`` evaluates all of them in one call (the shared-trunk
    architectures compute the convolutional trunk once for the whole frame).

    **Edges.** The grid covers the whole frame: along each axis it has
    ``ceil((size - window_px) / stride_px) + 1`` windows, and when ``size - window_px`` is not a multiple
    of the stride the frame is extended at the bottom and right, by reflection about its last row and
    column (``numpy.pad(mode="reflect")``), by fewer than ``stride_px`` pixels so the last window fits
    exactly. The last row/column of windows therefore sees a little mirrored content; a mirror keeps the
    focus of the blur but flips the sign of ``astig_45`` in the mirrored strip, so treat the astigmatism
    of those edge windows with a pinch of salt. A frame whose size fits the grid exactly (1024 px with
    128 px windows at stride 64: 15 windows) is not padded at all. Window ``(i, j)`` has its top-left
    corner at ``(i * stride_px, j * stride_px)`` and its centre at ``i * stride_px + (window_px - 1) / 2``
    (row) in the original frame's pixel coordinates (pixel centres at integers).

    **Invalid windows** (probability > :data:`INVALID_THRESHOLD`) get values filled in from valid
    ones by :func:`fill_invalid` (weighted by ``1 / σ²`` for networks with uncertainty); the raw
    probabilities stay in :attr:`PSFMap.invalid`. When every window
    is invalid nothing can be filled: the map keeps the network's raw values and
    :attr:`PSFMap.all_invalid` is True.

    **Dihedral averaging** (``dihedral_average=True``, for offline work): the frame is also mapped
    rotated and mirrored, the 8 readings of each window are mapped back and averaged
    (:func:`livepsf.net.symmetry.dihedral_average_map`): more accurate (Z-3 test R² of the shipped
    ``default`` 0.563 -> 0.571; 0.540 -> 0.567 for a network trained without the consistency term),
    8x slower.

    **Speed.** The padded input lives in one buffer on the model's device that is reused for every
    frame of the same shape (a new shape re-allocates it once); there is no Python loop over windows and
    inference runs under :func:`torch.inference_mode`. Because of that buffer a mapper is not re-entrant:
    use one mapper per thread.

    Parameters
    ----------
    model
        A loaded network (:func:`livepsf.net.load_model`).
    stride_px
        Grid step in pixels, ``1 <= stride_px <= window_px``; the shared-trunk networks also need a
        multiple of their patch size (8 px). 64 px gives 15x15 windows on a 1024x1024 frame.
    device
        Where to run (``"cpu"``, ``"cuda"``...). ``None`` keeps the model's device; another device moves
        the model there (``model.to(device)``, which affects other users of the same model object).
    dihedral_average
        Average each window over the frame's 8 rotations and mirrors (see above).

    Raises
    ------
    InputError
        The stride is out of range or the network cannot map with it.
    """

    def __init__(self, model: PSFNet, stride_px: int = 64, device: str | torch.device | None = None,
                 dihedral_average: bool = False) -> None:
        window_px = int(model.window_px)
        if isinstance(stride_px, bool) or not isinstance(stride_px, (int, np.integer)):
            raise InputError(f"stride must be a whole number of pixels, got {stride_px!r}")
        if not 1 <= stride_px <= window_px:
            raise InputError(f"stride of {stride_px} px is out of range: use 1 to {window_px} px "
                             f"(the window of model {model.name})")
        if device is not None:
            model.to(device)
        self.model = model
        self.stride_px = int(stride_px)
        self.dihedral_average = bool(dihedral_average)
        self.window_px = window_px
        self.spec = model.spec
        self._card = model.card.model_dump(mode="json")
        self._frame_shape: tuple[int, int] | None = None
        self._buffer: torch.Tensor | None = None
        self._frame_view: torch.Tensor | None = None
        self._check_stride()

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- geometry -------------------------------------------------------------------------------------

    def grid_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        """``(gy, gx)`` windows for a frame of ``frame_shape`` (at least one window in size)."""
        return tuple(math.ceil(max(n - self.window_px, 0) / self.stride_px) + 1 for n in frame_shape[:2])

    def padded_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        """Frame shape after the reflect padding that makes the last windows fit exactly."""
        return tuple((g - 1) * self.stride_px + self.window_px for g in self.grid_shape(frame_shape))

    def window_centres(self, frame_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Window centres ``(centers_y, centers_x)`` in frame pixel coordinates."""
        gy, gx = self.grid_shape(frame_shape)
        half = (self.window_px - 1) / 2.0
        return (np.arange(gy) * float(self.stride_px) + half, np.arange(gx) * float(self.stride_px) + half)

    # --- mapping --------------------------------------------------------------------------------------

    def __call__(self, frame: np.ndarray | torch.Tensor) -> PSFMap:
        """Map one frame.

        Parameters
        ----------
        frame
            2D array of any real dtype (uint8, uint16, float...) or a 2D real tensor, at least one window
            in each direction. It is not modified.

        Returns
        -------
        PSFMap
            Parameters in physical units with invalid windows filled, raw invalid probabilities, window
            geometry and the model card.

        Raises
        ------
        InputError
            The frame is not 2D, is complex, holds NaN/inf, or is smaller than one window.
        """
        with torch.inference_mode():
            source = self._as_tensor(frame)
            shape = (int(source.shape[0]), int(source.shape[1]))
            self._load(source, shape)
            if self.dihedral_average:
                raw = dihedral_average_map(self.model.map_frame, self._buffer, self.stride_px, self.spec)
            else:
                raw = self.model.map_frame(self._buffer, self.stride_px)
            grid = self.grid_shape(shape)
            if tuple(raw.shape) != (self.model.card.n_outputs, *grid):
                raise RuntimeError(f"model {self.model.name} returned a map of shape {tuple(raw.shape)}, "
                                   f"expected {(self.model.card.n_outputs, *grid)}")
            decoded = self.model.decode(raw, channel_dim=0)
            names = [*self.spec.names, "invalid", *self.model.sigma_names]
            stacked = torch.stack([decoded[n] for n in names]).to("cpu", torch.float32).numpy()
        n = self.spec.n_params
        values, invalid = stacked[:n], np.ascontiguousarray(stacked[n])
        sigma = {name: np.ascontiguousarray(stacked[n + 1 + i]) for i, name in enumerate(self.spec.names)} \
            if self.model.has_sigma else {}
        # Inverse-variance weighting where the network gives σ: confident neighbours count more.
        filled = fill_invalid(values, invalid > INVALID_THRESHOLD,
                              np.stack([sigma[name] for name in self.spec.names]) if sigma else None)
        centers_y, centers_x = self.window_centres(shape)
        return PSFMap(
            params={name: filled[i] for i, name in enumerate(self.spec.names)},
            invalid=invalid,
            centers_y=centers_y,
            centers_x=centers_x,
            window_px=self.window_px,
            stride_px=self.stride_px,
            frame_shape=shape,
            psf_model=self.spec.name,
            model_name=self.model.card.name,
            model_sha256=self.model.card.weights_sha256,
            optics=self.model.optics,
            model_card=self._card,
            sigma=sigma,
            dihedral_average=self.dihedral_average,
        )

    def _as_tensor(self, frame: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Validate ``frame`` and view it as a tensor without copying where torch can share the memory."""
        min_shape = (self.window_px, self.window_px)
        if isinstance(frame, torch.Tensor):
            if frame.ndim != 2:
                raise InputError(f"expected a 2D image, got a tensor of shape {tuple(frame.shape)}")
            if frame.is_complex():
                raise InputError("complex-valued image; expected real intensities")
            if frame.is_floating_point() and not bool(torch.isfinite(frame).all()):
                raise InputError("image contains NaN or infinite values")
            if frame.shape[0] < self.window_px or frame.shape[1] < self.window_px:
                raise InputError(f"image of {frame.shape[0]}x{frame.shape[1]} px is smaller than one "
                                 f"{self.window_px}x{self.window_px} px window")
            return frame
        array = np.asarray(frame)
        check_frame(array, min_shape)
        if not array.dtype.isnative:  # big-endian TIFF data: torch shares only native byte order
            array = array.astype(array.dtype.newbyteorder("="))
        try:
            with warnings.catch_warnings():
                # Read-only frames (e.g. from Pillow) are fine: the tensor is only read, into the buffer.
                warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
                return torch.from_numpy(array)
        except (TypeError, ValueError):  # dtypes torch lacks (longdouble), negative strides
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))

    def _load(self, source: torch.Tensor, shape: tuple[int, int]) -> None:
        """Copy the frame into the reused padded buffer and reflect it into the padding."""
        if shape != self._frame_shape or self._buffer is None or self._buffer.device != self.device:
            hp, wp = self.padded_shape(shape)
            self._buffer = torch.zeros((1, 1, hp, wp), dtype=torch.float32, device=self.device)
            self._frame_view = self._buffer[0, 0, : shape[0], : shape[1]]
            self._frame_shape = shape
        self._frame_view.copy_(source)
        plane = self._buffer[0, 0]
        h, w = shape
        pad_y, pad_x = plane.shape[0] - h, plane.shape[1] - w
        # Reflection without repeating the edge (numpy "reflect"); pads are < stride <= window <= frame.
        if pad_y:
            plane[h:, :w].copy_(plane[h - 1 - pad_y : h - 1, :w].flip(0))
        if pad_x:
            plane[:, w:].copy_(plane[:, w - 1 - pad_x : w - 1].flip(1))

    def _check_stride(self) -> None:
        """Run the network once on a 2x2 grid of windows: the stride must suit its architecture."""
        side = self.window_px + self.stride_px
        probe = torch.zeros((1, 1, side, side), dtype=torch.float32, device=self.device)
        try:
            with torch.inference_mode():
                out = self.model.map_frame(probe, self.stride_px)
        except Exception as exc:  # TorchScript raises its own error types with long messages
            # TorchScript puts the original "builtins.ValueError: message" on the last line.
            lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
            reason = lines[-1].removeprefix("builtins.") if lines else type(exc).__name__
            patch = getattr(self.model.module, "patch_px", None)
            if isinstance(patch, int) and self.stride_px % patch:
                reason += f"; use a multiple of {patch} px"
            raise InputError(f"model {self.model.name} cannot map with a stride of {self.stride_px} px ({reason})") from None
        if tuple(out.shape) != (self.model.card.n_outputs, 2, 2):
            raise InputError(f"model {self.model.name} returned a map of shape {tuple(out.shape)} for a 2x2 grid "
                             f"of windows; its map_frame does not follow the model contract")

    def __repr__(self) -> str:
        average = ", dihedral_average=True" if self.dihedral_average else ""
        return f"PSFMapper({self.model!r}, stride_px={self.stride_px}, device={str(self.device)!r}{average})"


def fill_invalid(values: np.ndarray, invalid_mask: np.ndarray, sigma: np.ndarray | None = None) -> np.ndarray:
    """Fill invalid windows of parameter grids from valid ones (paper, Section II-F).

    An invalid window with at least one valid 4-connected neighbour gets the inverse-distance-weighted
    mean of those neighbours. All four neighbours lie one grid step (``stride_px`` pixels) away, so the
    inverse-distance weights are equal and this is their plain mean. An invalid window with no valid
    4-neighbour (inside a larger blank region) gets the inverse-distance-weighted mean of its four
    nearest valid windows, by Euclidean distance in grid steps (the paper's K-nearest-neighbour
    regression with K = 4, weights 1/d; fewer when fewer are valid). Windows as far as the 4th nearest
    are all included (up to 16), so ties do not break the grid's symmetry. Only originally valid
    windows are used as sources, so the result does not depend on any fill order.

    Parameters
    ----------
    values
        ``(gy, gx)`` or ``(N, gy, gx)`` parameter grids.
    invalid_mask
        ``(gy, gx)`` bool, True where a window is invalid.
    sigma
        Optional standard deviations of ``values`` (same shape). Each valid source then also weighs
        ``1 / σ²`` (inverse-variance weighting, per parameter): a confident neighbour counts more than
        one whose content could not reveal the parameter. Which windows are sources does not change.

    Returns
    -------
    numpy.ndarray
        A float32 copy of ``values`` with invalid windows filled. With no valid window at all (or no
        invalid one) the values are returned unchanged: there is nothing to fill from.
    """
    grids = np.array(values, dtype=np.float32, copy=True)
    mask = np.asarray(invalid_mask, dtype=bool)
    single = grids.ndim == 2
    if single:
        grids = grids[None]
    if grids.ndim != 3 or grids.shape[-2:] != mask.shape:
        raise ValueError(f"values {np.shape(values)} and invalid mask {mask.shape} do not describe one grid")
    valid = ~mask
    if valid.all() or not valid.any():
        return grids[0] if single else grids
    if sigma is None:
        source_weight = np.broadcast_to(valid.astype(np.float32), grids.shape)
    else:
        sig = np.asarray(sigma, dtype=np.float32).reshape(grids.shape)
        source_weight = np.where(valid, 1.0 / np.maximum(sig, 1e-12) ** 2, 0.0).astype(np.float32)

    def four_neighbours(a: np.ndarray) -> np.ndarray:
        p = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(1, 1), (1, 1)])
        return p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]

    neighbour_sum = four_neighbours(np.where(valid, grids * source_weight, 0.0))
    neighbour_weight = four_neighbours(source_weight)
    neighbour_count = four_neighbours(valid.astype(np.float32))
    near = mask & (neighbour_count > 0)
    out = grids.copy()
    out[:, near] = neighbour_sum[:, near] / neighbour_weight[:, near]
    far = mask & (neighbour_count == 0)
    if far.any():
        from scipy.spatial import cKDTree

        valid_yx = np.argwhere(valid)
        far_yx = np.argwhere(far)
        # Query a few more than 4 so that windows tied with the 4th nearest are all included: the fill
        # then does not depend on how the tree breaks ties, and keeps the grid's symmetries.
        k = min(16, len(valid_yx))
        dist, idx = cKDTree(valid_yx).query(far_yx, k=k)
        dist = np.reshape(dist, (len(far_yx), k))
        idx = np.reshape(idx, (len(far_yx), k))
        fourth = dist[:, min(4, k) - 1 : min(4, k)]
        inv = np.where(dist <= fourth * (1.0 + 1e-9), 1.0 / dist, 0.0)  # dist >= sqrt(2) for far windows
        weights = inv[None] * source_weight[:, valid][:, idx]  # (N, n_far, k)
        weights /= weights.sum(axis=-1, keepdims=True)
        sources = grids[:, valid][:, idx]  # (N, n_far, k); grids[:, valid] is in argwhere order
        out[:, far] = (sources * weights.astype(np.float32)).sum(axis=-1)
    return out[0] if single else out


# --- OME-TIFF ----------------------------------------------------------------------------------------


def save_psfmaps(path: str | Path, maps: Sequence[PSFMap], overwrite: bool = False) -> Path:
    """Write one or more PSF maps of the same grid (e.g. the pages of a stack) to one OME-TIFF.

    Layout: float32 ``(T, C, gy, gx)`` with axes ``TCYX`` (tifffile drops a T axis of length 1 when
    reading); channels are the parameters in the model's order, then ``invalid``, then (maps with σ)
    ``<name>_sigma`` per parameter, in the parameter's unit. Values are in
    physical units (waves, px²; ``invalid`` a probability). The OME pixel size is the grid step,
    ``stride_px * pixel_size_um`` µm. A ``MapAnnotation`` (namespace ``livepsf/psfmap``, key
    ``psfmap``) holds JSON with the channel units, the model card, window geometry (window, stride,
    centres, frame shape) and the optics, which is all :func:`load_psfmaps` needs.

    Parameters
    ----------
    path
        Output file (``.ome.tif``).
    maps
        Maps sharing PSF model, network and grid geometry.
    overwrite
        Replace an existing file; by default an existing file is an error (nothing is overwritten).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import tifffile

    path = Path(path)
    maps = list(maps)
    if not maps:
        raise ValueError("no PSF maps to save")
    first = maps[0]
    for m in maps[1:]:
        if (m.psf_model, m.model_sha256, m.window_px, m.stride_px, tuple(m.frame_shape)) != (
            first.psf_model, first.model_sha256, first.window_px, first.stride_px, tuple(first.frame_shape)
        ) or not (np.array_equal(m.centers_y, first.centers_y) and np.array_equal(m.centers_x, first.centers_x)):
            raise ValueError("PSF maps saved together must share PSF model, network and window grid")
        if bool(m.sigma) != bool(first.sigma):
            raise ValueError("PSF maps saved together must all have σ or all have none")
        if m.dihedral_average != first.dihedral_average:
            raise ValueError("PSF maps saved together must all be dihedral averages or none")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; not overwriting it")
    spec = get_psf_model(first.psf_model)
    sigma_names = list(spec.names) if first.sigma else []
    channels = [*spec.names, "invalid", *(n + _SIGMA_SUFFIX for n in sigma_names)]
    data = np.stack([np.stack([*(m.params[n] for n in spec.names), m.invalid, *(m.sigma[n] for n in sigma_names)])
                     for m in maps]).astype(np.float32)
    units = {**first.units(), **{n + _SIGMA_SUFFIX: first.units()[n] for n in sigma_names}}
    meta = {
        "format": "livepsf.psfmap",
        "format_version": _FORMAT_VERSION,
        "psf_model": first.psf_model,
        "model_name": first.model_name,
        "model_sha256": first.model_sha256,
        "model_card": first.model_card,
        "channels": [{"name": c, "unit": units[c]} for c in channels],
        "n_maps": len(maps),
        "window_px": int(first.window_px),
        "stride_px": int(first.stride_px),
        "frame_shape": [int(n) for n in first.frame_shape],
        "centers_y": [float(c) for c in first.centers_y],
        "centers_x": [float(c) for c in first.centers_x],
        "optics": first.optics.to_dict(),
        "invalid_threshold": INVALID_THRESHOLD,
        "dihedral_average": bool(first.dihedral_average),
        "all_invalid": [m.all_invalid for m in maps],
        "filling": "invalid windows hold the mean of valid 4-neighbours, else the 1/d-weighted mean of "
                   "the 4 nearest valid windows (maps with sigma: each source also weighted by 1/sigma^2); "
                   "all-invalid maps hold raw values",
    }
    step_um = float(first.stride_px * first.optics.pixel_size_um)
    metadata = {
        "axes": "TCYX",
        "Name": f"PSF map ({first.psf_model}, model {first.model_name or 'unknown'})",
        "Description": f"livepsf PSF map: channels {', '.join(f'{c} [{units[c]}]' for c in channels)}; "
                       f"window {first.window_px} px, stride {first.stride_px} px",
        "Channel": {"Name": channels},
        "PhysicalSizeX": step_um,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": step_um,
        "PhysicalSizeYUnit": "µm",
        "MapAnnotation": {"Namespace": _OME_NAMESPACE, _OME_KEY: json.dumps(meta)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, data, ome=True, photometric="minisblack", metadata=metadata)
    return path


def load_psfmaps(path: str | Path) -> list[PSFMap]:
    """Read every PSF map of an OME-TIFF written by :func:`save_psfmaps`.

    Raises
    ------
    InputError
        The file is missing, unreadable, or not a livepsf PSF map.
    """
    import tifffile

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
            data = tif.series[0].asarray() if tif.series else None
    except Exception as exc:  # a decoder's own error: corrupt or truncated file
        raise InputError(f"{path}: cannot read TIFF ({type(exc).__name__}: {exc})") from None
    meta = _find_annotation(xml) if xml else None
    if meta is None or data is None:
        raise InputError(f"{path}: not a livepsf PSF map (no '{_OME_NAMESPACE}' annotation in its OME metadata)")
    if int(meta.get("format_version", 0)) > _FORMAT_VERSION:
        raise InputError(f"{path}: PSF map format {meta['format_version']} is newer than this livepsf reads "
                         f"({_FORMAT_VERSION}); update livepsf")
    try:
        names = [c["name"] for c in meta["channels"]]
        centers_y = np.asarray(meta["centers_y"], dtype=np.float64)
        centers_x = np.asarray(meta["centers_x"], dtype=np.float64)
        shape = (int(meta["n_maps"]), len(names), len(centers_y), len(centers_x))
        if data.size != math.prod(shape):
            raise ValueError(f"pixel data of shape {data.shape} do not match the metadata's {shape}")
        stack = np.asarray(data, dtype=np.float32).reshape(shape)
        optics = Optics(**meta["optics"])
        n_params = names.index("invalid")
        sigma_index = {n[: -len(_SIGMA_SUFFIX)]: i for i, n in enumerate(names) if n.endswith(_SIGMA_SUFFIX)}
        maps = [
            PSFMap(
                params={n: stack[t, i].copy() for i, n in enumerate(names[:n_params])},
                invalid=stack[t, n_params].copy(),
                sigma={n: stack[t, i].copy() for n, i in sigma_index.items()},
                centers_y=centers_y.copy(),
                centers_x=centers_x.copy(),
                window_px=int(meta["window_px"]),
                stride_px=int(meta["stride_px"]),
                frame_shape=(int(meta["frame_shape"][0]), int(meta["frame_shape"][1])),
                psf_model=meta["psf_model"],
                model_name=meta.get("model_name", ""),
                model_sha256=meta.get("model_sha256", ""),
                optics=optics,
                model_card=meta.get("model_card") or {},
                dihedral_average=bool(meta.get("dihedral_average", False)),
            )
            for t in range(shape[0])
        ]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InputError(f"{path}: damaged PSF map metadata ({type(exc).__name__}: {exc})") from None
    return maps


def _find_annotation(xml: str) -> dict[str, Any] | None:
    """The livepsf JSON of an OME-XML document, or None."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] != "MapAnnotation" or element.get("Namespace") != _OME_NAMESPACE:
            continue
        for entry in element.iter():
            if entry.tag.rsplit("}", 1)[-1] == "M" and entry.get("K") == _OME_KEY and entry.text:
                try:
                    meta = json.loads(entry.text)
                except json.JSONDecodeError:
                    return None
                return meta if isinstance(meta, dict) else None
    return None


# --- files -------------------------------------------------------------------------------------------


@dataclass
class MappedFile:
    """What :func:`map_image_file` wrote: the OME-TIFF of maps, the JSON summary, and that summary."""

    source: Path
    ome_path: Path
    json_path: Path
    summary: dict[str, Any]


def map_frames(frames: Sequence[np.ndarray], mapper: PSFMapper, source: str | Path,
               run: Callable[[Callable[[], PSFMap]], PSFMap] | None = None) -> tuple[list[PSFMap], list[float]]:
    """Map the frames of one file; returns the maps and the time of each mapping (ms).

    The first frame of a shape the mapper has not mapped before is first mapped twice, untimed
    (buffers, and TorchScript optimises its graph on its first two calls), so the times are those of
    a warm mapper, and the first timed calls are fair measurements for ``run``.

    Parameters
    ----------
    frames
        The file's frames (:func:`livepsf.imageio.read_frames`).
    mapper
        The mapper (one per model and stride; it remembers the shapes it has warmed up).
    source
        The file, named in errors.
    run
        Calls each timed mapping, ``run(call)``: for example
        :meth:`livepsf.acquisition.thread_tuner.ThreadTuner.run`, which times the calls and keeps the
        torch thread count that is fastest under the machine's present load. ``None``: called directly.

    Raises
    ------
    InputError
        A frame cannot be mapped; the message names the file (and page).
    """
    import time

    warm = _WARM_SHAPES.setdefault(mapper, set())
    maps: list[PSFMap] = []
    times_ms: list[float] = []
    for i, frame in enumerate(frames):
        where = str(source) if len(frames) == 1 else f"{source} (page {i})"
        try:
            if np.shape(frame) not in warm:
                mapper(frame)
                mapper(frame)
                warm.add(np.shape(frame))
            start = time.perf_counter()
            maps.append(mapper(frame) if run is None else run(lambda frame=frame: mapper(frame)))
            times_ms.append((time.perf_counter() - start) * 1e3)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
    return maps, times_ms


def map_image_file(source: str | Path, mapper: PSFMapper, out_dir: str | Path | None = None, *,
                   run: Callable[[Callable[[], PSFMap]], PSFMap] | None = None) -> MappedFile:
    """Map every frame of an image file and write ``<name>_psfmap.ome.tif`` and ``<name>_psfmap.json``.

    The input is only read (:func:`livepsf.imageio.read_frames`; each page of a multi-page TIFF is a
    frame, and gets its own map, stored along T). Outputs go beside the input or in ``out_dir`` under
    new names (``-1``, ``-2``... when taken): nothing is overwritten. The summary holds, per parameter,
    the mean and median over *valid* windows of all frames (``null`` when none is valid), the fraction
    of invalid windows, and the time per frame (warm-up passes are not timed; see :func:`map_frames`,
    which also says what ``run`` does).

    Raises
    ------
    InputError
        The file cannot be read or a frame cannot be mapped; the message names the file (and page).
    """
    from livepsf.imageio import output_path, read_frames

    source = Path(source)
    maps, times_ms = map_frames(read_frames(source), mapper, source, run)
    ome_path = output_path(source, "_psfmap.ome.tif", out_dir)
    json_path = ome_path.with_name(ome_path.name[: -len(".ome.tif")] + ".json")
    if json_path.exists():
        json_path = output_path(source, "_psfmap.json", out_dir)
    summary = _summary(source, ome_path, maps, times_ms, mapper)
    save_psfmaps(ome_path, maps)
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return MappedFile(source, ome_path, json_path, summary)


def _summary(source: Path, ome_path: Path, maps: list[PSFMap], times_ms: list[float],
             mapper: PSFMapper) -> dict[str, Any]:
    first = maps[0]
    units = first.units()
    valid = np.stack([~m.invalid_mask for m in maps])

    def stats(grids: np.ndarray, where: np.ndarray) -> dict[str, float | None]:
        picked = grids[where]
        if picked.size == 0:
            return {"mean": None, "median": None}
        return {"mean": float(np.mean(picked)), "median": float(np.median(picked))}

    params = {
        name: {"unit": units[name], **stats(np.stack([m.params[name] for m in maps]), valid)}
        for name in first.params
    }
    for name in first.sigma:  # typical uncertainty of the valid windows
        params[name]["sigma_median"] = stats(np.stack([m.sigma[name] for m in maps]), valid)["median"]
    frames = [
        {
            "index": i,
            "time_ms": round(t, 3),
            "fraction_invalid": float(m.invalid_mask.mean()),
            "all_invalid": m.all_invalid,
            "params": {name: stats(m.params[name], ~m.invalid_mask) for name in m.params},
        }
        for i, (m, t) in enumerate(zip(maps, times_ms))
    ]
    card = mapper.model.card
    return {
        "source": str(source),
        "psfmap": ome_path.name,
        "model": {"name": card.name, "psf_model": card.psf_model, "architecture": card.architecture,
                  "weights_sha256": card.weights_sha256, "path": str(mapper.model.path)},
        "window_px": first.window_px,
        "stride_px": first.stride_px,
        "dihedral_average": first.dihedral_average,
        "frame_shape": list(first.frame_shape),
        "grid_shape": list(first.grid_shape),
        "n_frames": len(maps),
        "device": str(mapper.device),
        "time_per_frame_ms": {"mean": float(np.mean(times_ms)), "median": float(np.median(times_ms)),
                              "max": float(np.max(times_ms))},
        "fraction_invalid": float(1.0 - valid.mean()),
        "statistics_over": "valid windows (invalid probability <= 0.5) of all frames",
        "params": params,
        "frames": frames,
    }

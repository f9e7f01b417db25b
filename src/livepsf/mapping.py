"""Spatially-variant PSF maps: :class:`PSFMap` (the result) and :class:`PSFMapper` (frame -> map).

A PSF map holds, for a regular grid of windows over a frame, the PSF parameters the network estimated
in each window (physical units), the probability that the window is invalid (textureless), and the
window geometry. Invalid windows carry values filled in from their valid neighbours; the raw invalid
probability stays in :attr:`PSFMap.invalid`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from livepsf.optics import Optics, cylinder_axis, get_psf_model

__all__ = ["PSFMap"]


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

    def __post_init__(self) -> None:
        gy, gx = len(self.centers_y), len(self.centers_x)
        shapes = {name: np.shape(v) for name, v in self.params.items()}
        if np.shape(self.invalid) != (gy, gx) or any(s != (gy, gx) for s in shapes.values()):
            raise ValueError(f"PSFMap grids must all be {(gy, gx)}; got invalid {np.shape(self.invalid)}, {shapes}")
        spec = get_psf_model(self.psf_model)
        if set(self.params) != set(spec.names):
            raise ValueError(f"PSFMap for {spec.name} needs parameters {spec.names}, got {sorted(self.params)}")

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
        return np.asarray(self.invalid) > 0.5

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
        wy = _linear_weights(self.centers_y, ys)
        wx = _linear_weights(self.centers_x, xs)

        def one(grid: np.ndarray) -> np.ndarray:
            return (wy @ np.asarray(grid, dtype=np.float32) @ wx.T).astype(np.float32)

        if name is not None:
            grid = self.invalid if name == "invalid" else self.values(name)
            return one(grid)
        return {n: one(g) for n, g in self.params.items()}


def _linear_weights(centres: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``(len(positions), len(centres))`` matrix of 1D linear-interpolation weights, clamped at the ends."""
    centres = np.asarray(centres, dtype=np.float64)
    n = len(centres)
    weights = np.zeros((len(positions), n), dtype=np.float32)
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

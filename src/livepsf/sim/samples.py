"""Specimens of the simulated microscope: what the sample looks like and where its surface lies.

Content comes from the procedural generators of :mod:`livepsf.data.textures`, at physical scales for the
default 0.65 µm pixels, and is returned as *relative brightness* in ``[0, 1]`` (what reaches the camera
from a perfectly focused pixel, 1 = brightest):

``printed-grid``  laser-printed grid of 200 µm squares on transparent foil in transmitted light (the
                  paper's calibration target): bright foil, dark toner lines with grain.
``cells``         fluorescent cells (about 20 µm across) on a faint background.
``filaments``     fluorescent cytoskeleton-like filaments (sub-resolution width).

Geometry (:class:`SurfaceGeometry`): a plane tilted by ``tilt_deg`` along ``tilt_axis`` (``"x"``: the
height grows along array axis 1, the columns; a positive tilt raises the surface towards higher
column indices; ``"y"`` likewise for rows), optionally curved (a paraboloid of curvature
``curvature_per_mm`` = 1/R), with height 0 at the frame centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from livepsf.data import textures

__all__ = ["GRID_LINE_WIDTH_UM", "GRID_SQUARE_UM", "SAMPLES", "TILT_AXES", "SurfaceGeometry", "sample_brightness"]

SAMPLES = ("printed-grid", "cells", "filaments")
TILT_AXES = ("x", "y")

#: Pitch of the printed calibration grid (paper: 200 µm squares).
GRID_SQUARE_UM = 200.0
#: Printed line width (a thin laser-printer line).
GRID_LINE_WIDTH_UM = 26.0
# Fluorescent samples: faint background (out-of-focus haze, autofluorescence) relative to the brightest.
_FLUORESCENCE_BACKGROUND = 0.03
# Typical cell radius (µm) and filament width (µm) at the sample.
_CELL_RADIUS_UM = 10.0
_FILAMENT_WIDTH_UM = 0.4
_FILAMENT_AREA_UM2 = 50.0**2


@dataclass(frozen=True)
class SurfaceGeometry:
    """Height of the sample surface over the field of view.

    Parameters
    ----------
    tilt_deg
        Tilt angle; positive raises the surface towards higher indices along ``tilt_axis``.
    tilt_axis
        ``"x"`` (columns, array axis 1) or ``"y"`` (rows, array axis 0).
    curvature_per_mm
        Curvature 1/R of a paraboloid (1/mm); positive bends the field edges up. 0: flat.
    """

    tilt_deg: float = 0.0
    tilt_axis: str = "x"
    curvature_per_mm: float = 0.0

    def __post_init__(self) -> None:
        if self.tilt_axis not in TILT_AXES:
            raise ValueError(f"tilt_axis must be one of {TILT_AXES}, got {self.tilt_axis!r}")
        if not (math.isfinite(self.tilt_deg) and abs(self.tilt_deg) < 45):
            raise ValueError(f"tilt_deg must be finite and within ±45°, got {self.tilt_deg!r}")
        if not math.isfinite(self.curvature_per_mm):
            raise ValueError(f"curvature_per_mm must be finite, got {self.curvature_per_mm!r}")

    def height_um(self, shape: tuple[int, int], pixel_size_um: float,
                  center_um: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """Surface height (µm, float64) under each pixel of a ``shape`` frame.

        ``center_um`` is the ``(x, y)`` position of the frame centre on the sample (the XY stage's);
        the height is 0 at the sample's origin, so at the frame centre for the default.
        """
        h, w = shape
        y_um = (np.arange(h, dtype=np.float64) - (h - 1) / 2.0)[:, None] * pixel_size_um + center_um[1]
        x_um = (np.arange(w, dtype=np.float64) - (w - 1) / 2.0)[None, :] * pixel_size_um + center_um[0]
        along = x_um if self.tilt_axis == "x" else y_um
        height = np.broadcast_to(math.tan(math.radians(self.tilt_deg)) * along, (h, w))
        if self.curvature_per_mm:
            height = height + 0.5 * (self.curvature_per_mm / 1000.0) * (x_um**2 + y_um**2)
        return np.array(height, dtype=np.float64)


def sample_brightness(name: str, shape: tuple[int, int], pixel_size_um: float = 0.65, seed: int = 0,
                      origin_px: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Sharp relative brightness (float32 in ``[0, 1]``) of a sample over a ``shape`` canvas.

    The canvas is centred on the frame: for the printed grid, two lines cross at the canvas centre, so a
    frame cut from its middle is symmetric. A canvas at ``origin_px`` (rows, columns from the top-left
    of the canvas at the origin) continues the same grid, so neighbouring canvases tile a larger sample.

    Parameters
    ----------
    name
        One of :data:`SAMPLES`.
    shape
        Canvas (rows, cols), typically the frame plus a margin on every side.
    pixel_size_um
        Pixel size in the sample plane; sets the physical scale of the content.
    seed
        Seed of the random content.
    """
    if name not in SAMPLES:
        raise ValueError(f"unknown sample {name!r}; choose one of {SAMPLES}")
    if pixel_size_um <= 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um!r}")
    h, w = int(shape[0]), int(shape[1])
    rng = np.random.default_rng(seed)
    if name == "printed-grid":
        pitch_px = GRID_SQUARE_UM / pixel_size_um
        # A line crossing at the canvas centre: with a tilted sample, the in-focus middle shows lines.
        offset = ((h - 1) / 2.0 - origin_px[0], (w - 1) / 2.0 - origin_px[1])
        return textures.printed_grid(
            (h, w),
            rng,
            pitch_px=pitch_px,
            line_width_px=GRID_LINE_WIDTH_UM / pixel_size_um,
            offset_px=offset,
            grain_px=max(1.0, 4.0 / pixel_size_um),
            edge_roughness_px=max(0.5, 2.0 / pixel_size_um),
        )
    if name == "cells":
        content = textures.cells((h, w), rng, cell_radius_px=_CELL_RADIUS_UM / pixel_size_um)
    else:
        # About one filament per (50 µm)² keeps the network readable at 10x (and the generator quick).
        n_filaments = max(3, int(h * w * pixel_size_um**2 / _FILAMENT_AREA_UM2))
        content = textures.filaments(
            (h, w), rng, n_filaments=n_filaments, width_px=max(1.0, _FILAMENT_WIDTH_UM / pixel_size_um)
        )
    bright = _FLUORESCENCE_BACKGROUND + (1.0 - _FLUORESCENCE_BACKGROUND) * content
    return bright.astype(np.float32)

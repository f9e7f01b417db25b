"""What the live window draws over a frame, computed without widgets (numpy in, numpy out).

* :func:`overlay_field` picks a quantity of a PSF map (defocus, astigmatism, blur width, depth,
  invalid probability) with its unit, colour map and fixed colour range (fixed, so that colours mean
  the same in every frame);
* :func:`overlay_rgba` turns it into a smooth RGBA image, dimmed where windows are textureless or
  uncertain (:func:`relative_uncertainty` for the network's σ, :func:`depth_uncertainty` for depth);
* :func:`psf_covariance_px` and :func:`ellipse_polyline` give the per-window PSF glyphs;
* :func:`axis_sticks` gives the astigmatism axis per window;
* :func:`invalid_cells` gives the rectangles of textureless windows, or of any mask, e.g. the windows
  whose depth is uncertain (hatched by the window);
* :func:`region_mean` gives the number plotted in the focus trace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from livepsf.mapping import PSFMap
from livepsf.optics import get_psf_model

__all__ = [
    "OVERLAYS",
    "OverlayField",
    "available_overlays",
    "axis_sticks",
    "depth_uncertainty",
    "ellipse_polyline",
    "glyph_scale",
    "invalid_cells",
    "lookup_table",
    "overlay_field",
    "overlay_rgba",
    "psf_covariance_px",
    "region_mean",
    "relative_uncertainty",
    "upsample_grid",
]

#: Overlay names and their menu labels.
OVERLAYS: dict[str, str] = {
    "focus": "Defocus |Δz|",
    "astigmatism": "Astigmatism",
    "blur": "Blur width",
    "depth": "Depth (µm)",
    "invalid": "Textureless windows",
    "none": "None",
}

# Opacity left to a window that is certainly textureless (it is also hatched) or wholly uncertain.
_INVALID_DIM = 0.25
# σ (as a fraction of a parameter's range) at which a window is faded as far as a textureless one: the
# standard deviation of a uniform guess over the range is 0.29 of it, so a quarter means "no information".
_SIGMA_FULL_FADE = 0.25
# The network parameters behind each overlay (their σ fades the overlay).
_OVERLAY_PARAMS = {"focus": ("focus",), "astigmatism": ("astig_0", "astig_45"),
                   "blur": ("variance", "variance_x", "variance_y"), "depth": ("focus", "astig_0", "astig_45")}
# Depth colour range when the calibration carries no profile points (µm each side of focus).
_DEFAULT_DEPTH_RANGE_UM = 50.0
# Gaussian width of the in-focus (Airy) spot, in units of lambda/NA.
_AIRY_SIGMA = 0.21


@dataclass(frozen=True)
class OverlayField:
    """One quantity on the window grid, ready to colour.

    Attributes
    ----------
    kind
        Overlay name (a key of :data:`OVERLAYS`).
    grid
        ``(gy, gx)`` values, or ``None`` when there is nothing to show (``message`` says why).
    label
        Colour-bar title with the unit.
    levels
        Fixed colour range ``(lo, hi)``.
    colormap
        pyqtgraph colour map name; diverging maps are centred on 0.
    message
        Shown instead of the overlay (e.g. ``"uncalibrated"``).
    short_label
        Title for a short axis (the focus trace), when ``label`` is too long for it.
    """

    kind: str
    grid: np.ndarray | None
    label: str
    levels: tuple[float, float]
    colormap: str
    message: str = ""
    short_label: str = ""

    @property
    def axis_label(self) -> str:
        """The short title when there is one, else the full label."""
        return self.short_label or self.label


def available_overlays(psf_model: str, calibrated: bool = True) -> list[str]:
    """Overlays that make sense for a PSF model (depth needs an astigmatic Zernike model)."""
    spec = get_psf_model(psf_model)
    names: list[str] = []
    if "focus" in spec.names:
        names.append("focus")
    if spec.has_astigmatism:
        names.append("astigmatism")
    if spec.kind == "gaussian":
        names.append("blur")
    if "focus" in spec.names and spec.has_astigmatism:
        names.append("depth")
    names += ["invalid", "none"]
    return names


def _param_max(pmap: PSFMap, name: str) -> float:
    spec = get_psf_model(pmap.psf_model)
    return float(spec.params[spec.index(name)].max)


def relative_uncertainty(pmap: PSFMap, kind: str) -> np.ndarray | None:
    """``(gy, gx)`` in [0, 1]: how uncertain each window's estimate behind overlay ``kind`` is.

    The largest σ of the overlay's parameters as a fraction of the parameter's range, scaled so that
    :data:`_SIGMA_FULL_FADE` (no information) is 1. ``None`` when the map carries no σ (older models) or
    the overlay shows no network parameter.
    """
    names = [n for n in _OVERLAY_PARAMS.get(kind, ()) if n in pmap.sigma]
    if not names:
        return None
    spec = get_psf_model(pmap.psf_model)
    rel = np.max([np.asarray(pmap.sigma[n], np.float32) / spec.params[spec.index(n)].span for n in names], axis=0)
    return np.clip(rel / _SIGMA_FULL_FADE, 0.0, 1.0).astype(np.float32)


def depth_uncertainty(sigma_um: np.ndarray, depth_range_um: float) -> np.ndarray:
    """``(gy, gx)`` in [0, 1]: how uncertain each window's own depth is, for fading the depth overlay.

    Its σ as a fraction of the depth colour range (``2 * depth_range_um``), scaled as
    :func:`relative_uncertainty` (a quarter of the range, :data:`_SIGMA_FULL_FADE`, is 1); 1 where σ is
    inf (the window tells nothing about depth: no texture, or texture in one direction only).
    """
    sigma = np.asarray(sigma_um, np.float64)
    span = 2.0 * max(float(depth_range_um), 1e-9)
    rel = np.where(np.isfinite(sigma), sigma / span, np.inf)
    return np.clip(rel / _SIGMA_FULL_FADE, 0.0, 1.0).astype(np.float32)


def overlay_field(pmap: PSFMap, kind: str, depth_um: np.ndarray | None = None,
                  depth_range_um: float | None = None, fused: bool = False) -> OverlayField:
    """The quantity an overlay shows, with its unit and a colour range fixed by the model card.

    Parameters
    ----------
    pmap
        The PSF map.
    kind
        ``"focus"`` (defocus distance, µm, from the focus coefficient by the paraxial relation of
        :meth:`livepsf.optics.Optics.defocus_um`), ``"astigmatism"`` (cylinder, RMS waves), ``"blur"``
        (Gaussian models: RMS width, µm), ``"depth"`` (µm, signed), ``"invalid"``, ``"none"``.
    depth_um
        ``(gy, gx)`` depth grid from a calibration; ``None`` makes the depth overlay say "uncalibrated".
    depth_range_um
        Half-width of the depth colour range (default: the calibration's, else 50 µm).
    fused
        ``depth_um`` is the surface fused across the windows (said in the label).
    """
    optics = pmap.optics
    if kind == "none":
        return OverlayField(kind, None, "", (0.0, 1.0), "viridis")
    if kind == "invalid":
        return OverlayField(kind, np.asarray(pmap.invalid, np.float32), "textureless (probability)",
                            (0.0, 1.0), "CET-L17")
    if kind == "focus":
        if "focus" not in pmap.params:
            return OverlayField(kind, None, "", (0.0, 1.0), "viridis", f"{pmap.psf_model} has no focus")
        grid = np.abs(optics.defocus_um(pmap.params["focus"])).astype(np.float32)
        hi = float(optics.defocus_um(_param_max(pmap, "focus")))
        return OverlayField(kind, grid, "defocus |Δz| (µm)", (0.0, hi), "viridis")
    if kind == "astigmatism":
        if "astig_0" not in pmap.params:
            return OverlayField(kind, None, "", (0.0, 1.0), "magma", f"{pmap.psf_model} has no astigmatism")
        hi = math.hypot(_param_max(pmap, "astig_0"), _param_max(pmap, "astig_45"))
        return OverlayField(kind, pmap.values("cylinder"), "astigmatism (waves RMS)", (0.0, hi), "magma")
    if kind == "blur":
        names = [n for n in pmap.params if n.startswith("var")]
        if not names:
            return OverlayField(kind, None, "", (0.0, 1.0), "viridis", f"{pmap.psf_model} has no blur width")
        var = np.mean([pmap.params[n] for n in names], axis=0)
        grid = (np.sqrt(np.maximum(var, 0.0)) * optics.pixel_size_um).astype(np.float32)
        hi = math.sqrt(_param_max(pmap, names[0])) * optics.pixel_size_um
        return OverlayField(kind, grid, "blur σ (µm)", (0.0, hi), "viridis")
    if kind == "depth":
        span = float(depth_range_um or _DEFAULT_DEPTH_RANGE_UM)
        if depth_um is None:
            return OverlayField(kind, None, "depth (µm)", (-span, span), "CET-D1A",
                                "depth: uncalibrated (load or make a calibration)")
        label = "depth surface (µm, + above focus)" if fused else "depth (µm, + above focus)"
        return OverlayField(kind, np.asarray(depth_um, np.float32), label, (-span, span), "CET-D1A",
                            short_label="depth (µm)")
    raise ValueError(f"unknown overlay {kind!r}; choose one of {', '.join(OVERLAYS)}")


def depth_range_um(calibration: Any) -> float:
    """Half-width of a sensible depth colour range for a calibration: its largest calibrated height."""
    points = getattr(calibration, "points", None) or []
    heights = [abs(float(p.height_um)) for p in points if np.isfinite(p.height_um)]
    return max(heights) if heights else _DEFAULT_DEPTH_RANGE_UM


def lookup_table(colormap: str, n: int = 256) -> np.ndarray:
    """``(n, 3) uint8`` colours of a pyqtgraph colour map."""
    import pyqtgraph as pg

    return pg.colormap.get(colormap).getLookupTable(0.0, 1.0, n, alpha=False).astype(np.uint8)


def overlay_rgba(pmap: PSFMap, field: OverlayField, shape: tuple[int, int], opacity: float,
                 lut: np.ndarray | None = None, uncertainty: np.ndarray | None = None) -> np.ndarray | None:
    """A smooth ``(h, w, 4) uint8`` overlay image covering the frame (any display ``shape``).

    Values are interpolated bilinearly between window centres (as :meth:`PSFMap.upsample`), coloured
    within ``field.levels``, and made transparent in proportion to the windows' invalid probability or,
    when the map carries σ, their :func:`relative_uncertainty`, or the given ``uncertainty`` (``(gy,
    gx)`` in [0, 1], e.g. :func:`depth_uncertainty`), whichever is largest (down to a quarter of
    ``opacity``), so the eye goes to what the network could measure.
    """
    if field.grid is None:
        return None
    lut = lookup_table(field.colormap) if lut is None else lut
    values = upsample_grid(pmap, field.grid, shape)
    lo, hi = field.levels
    idx = np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * (len(lut) - 1)
    rgba = np.empty((*shape, 4), np.uint8)
    rgba[..., :3] = lut[np.rint(idx).astype(np.intp)]
    if field.kind == "invalid":
        doubt = np.zeros(shape, np.float32)
    else:
        grid = np.asarray(pmap.invalid, np.float32)
        for extra in (relative_uncertainty(pmap, field.kind), uncertainty):
            if extra is not None:
                grid = np.maximum(grid, np.asarray(extra, np.float32))
        doubt = upsample_grid(pmap, grid, shape)
    alpha = float(np.clip(opacity, 0.0, 1.0)) * (1.0 - (1.0 - _INVALID_DIM) * np.clip(doubt, 0.0, 1.0))
    rgba[..., 3] = np.rint(255 * alpha).astype(np.uint8)
    return rgba


def _axis_weights(centres: np.ndarray, n_frame: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Left neighbour index and weight of the right neighbour for each output pixel along one axis."""
    centres = np.asarray(centres, np.float64)
    pos = (np.arange(n_out) + 0.5) * (n_frame / n_out) - 0.5
    if len(centres) == 1:
        return np.zeros(n_out, np.intp), np.zeros(n_out, np.float32)
    pos = np.clip(pos, centres[0], centres[-1])
    idx = np.clip(np.searchsorted(centres, pos, side="right") - 1, 0, len(centres) - 2)
    t = (pos - centres[idx]) / (centres[idx + 1] - centres[idx])
    return idx.astype(np.intp), t.astype(np.float32)


def upsample_grid(pmap: PSFMap, grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear between window centres, constant beyond them: the same field as :meth:`PSFMap.upsample`.

    Element-wise numpy only (no BLAS call), so it stays cheap on a machine whose cores are busy with the
    mapper: about a millisecond for a 256² display image.
    """
    g = np.asarray(grid, np.float32)
    iy, ty = _axis_weights(pmap.centers_y, pmap.frame_shape[0], shape[0])
    ix, tx = _axis_weights(pmap.centers_x, pmap.frame_shape[1], shape[1])
    iy1 = np.minimum(iy + 1, g.shape[0] - 1)
    ix1 = np.minimum(ix + 1, g.shape[1] - 1)
    rows0 = (1.0 - tx) * g[iy][:, ix] + tx * g[iy][:, ix1]
    rows1 = (1.0 - tx) * g[iy1][:, ix] + tx * g[iy1][:, ix1]
    return ((1.0 - ty)[:, None] * rows0 + ty[:, None] * rows1).astype(np.float32)


def psf_covariance_px(pmap: PSFMap) -> np.ndarray:
    """Approximate PSF covariance per window, ``(gy, gx, 2, 2)`` in px², ordered (x, y) = (col, row).

    Zernike models: geometric optics plus the in-focus spot. The wavefront ``W = d Z(2,0) + a Z(2,2) +
    b Z(2,-2)`` (RMS waves) has the pupil gradient ``M u`` with ``M = [[4√3 d + 2√6 a, 2√6 b], [2√6 b,
    4√3 d − 2√6 a]]``; a ray through pupil point ``u`` lands ``(λ/NA) M u`` from the ideal image, so
    over
    the uniformly lit pupil the covariance is ``(λ/NA)² M² / 4``, to which the Airy core ``(0.21 λ/NA)²``
    is added. This follows the package's conventions (focus > 0 and astig_0 > 0: longer along x; astig_45
    > 0: longer along the row = column diagonal). Gaussian models: their variances.
    """
    params = pmap.params
    gy, gx = pmap.grid_shape
    cov = np.zeros((gy, gx, 2, 2), np.float64)
    if pmap.psf_model.startswith("G"):
        if "variance" in params:
            cov[..., 0, 0] = cov[..., 1, 1] = params["variance"]
        else:
            cov[..., 0, 0] = params["variance_x"]
            cov[..., 1, 1] = params["variance_y"]
        return cov
    d = np.asarray(params.get("focus", np.zeros((gy, gx))), np.float64)
    a = np.asarray(params.get("astig_0", np.zeros((gy, gx))), np.float64)
    b = np.asarray(params.get("astig_45", np.zeros((gy, gx))), np.float64)
    m = np.empty((gy, gx, 2, 2))
    m[..., 0, 0] = 4 * math.sqrt(3) * d + 2 * math.sqrt(6) * a
    m[..., 1, 1] = 4 * math.sqrt(3) * d - 2 * math.sqrt(6) * a
    m[..., 0, 1] = m[..., 1, 0] = 2 * math.sqrt(6) * b
    optics = pmap.optics
    scale_px = optics.wavelength_um / optics.na / optics.pixel_size_um
    cov = scale_px**2 * (m @ m) / 4.0
    cov[..., 0, 0] += (_AIRY_SIGMA * scale_px) ** 2
    cov[..., 1, 1] += (_AIRY_SIGMA * scale_px) ** 2
    return cov


def glyph_scale(pmap: PSFMap, n_sigma: float = 2.0, fill: float = 0.48) -> float:
    """Scale that keeps the largest possible glyph of this model within ``fill`` of a grid cell.

    Fixed per model and stride (not per frame), so glyph sizes compare across frames; 1 (true scale)
    when everything already fits.
    """
    spec = get_psf_model(pmap.psf_model)
    extreme = {p.name: np.full((1, 1), max(abs(p.min), abs(p.max)), np.float32) for p in spec.params}
    probe = PSFMap(params=extreme, invalid=np.zeros((1, 1), np.float32), centers_y=np.zeros(1),
                   centers_x=np.zeros(1), window_px=pmap.window_px, stride_px=pmap.stride_px,
                   frame_shape=pmap.frame_shape, psf_model=pmap.psf_model, optics=pmap.optics)
    radius = n_sigma * math.sqrt(float(np.linalg.eigvalsh(psf_covariance_px(probe)[0, 0]).max()))
    return min(1.0, fill * pmap.stride_px / radius)


def ellipse_polyline(pmap: PSFMap, n_sigma: float = 2.0, scale: float = 1.0,
                     points: int = 24) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One polyline of all PSF glyphs: ``(x, y, connect)`` for ``pyqtgraph.PlotCurveItem``.

    Each window gets the ``n_sigma`` ellipse of :func:`psf_covariance_px` (2σ is the edge of a
    defocused, geometric blur disc), times ``scale``, centred on the window centre; ``connect`` is False
    at the last point of each ellipse so they are drawn separately. Coordinates are frame pixels
    (x = column, y = row).
    """
    cov = psf_covariance_px(pmap).reshape(-1, 2, 2)
    vals, vecs = np.linalg.eigh(cov)
    radii = n_sigma * scale * np.sqrt(np.maximum(vals, 0.0))  # (n, 2)
    t = np.linspace(0.0, 2 * np.pi, points)
    unit = np.stack([np.cos(t), np.sin(t)])  # (2, points)
    # Ellipse points: centre + V diag(r) unit.
    pts = np.einsum("nij,nj,jp->nip", vecs, radii, unit)
    centres = pmap.centers_yx.reshape(-1, 2)
    x = pts[:, 0, :] + centres[:, 1:2]
    y = pts[:, 1, :] + centres[:, 0:1]
    connect = np.ones_like(x, dtype=bool)
    connect[:, -1] = False
    return x.ravel(), y.ravel(), connect.ravel()


def axis_sticks(pmap: PSFMap, length_px: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Astigmatism axis per window as line segments ``(x, y, connect)``, length ∝ cylinder.

    The axis angle is measured from array axis 1 (x) towards axis 0 (y), as in the package. The longest
    stick (largest possible cylinder) is ``length_px`` (default 0.8 × stride).
    """
    if "astig_0" not in pmap.params:
        return np.zeros(0), np.zeros(0), np.zeros(0, bool)
    cyl = pmap.values("cylinder").ravel().astype(np.float64)
    axis = pmap.values("axis").ravel().astype(np.float64)
    hi = math.hypot(_param_max(pmap, "astig_0"), _param_max(pmap, "astig_45"))
    full = 0.8 * pmap.stride_px if length_px is None else length_px
    half = 0.5 * full * np.clip(cyl / hi, 0.0, 1.0)
    centres = pmap.centers_yx.reshape(-1, 2)
    dx, dy = half * np.cos(axis), half * np.sin(axis)
    x = np.stack([centres[:, 1] - dx, centres[:, 1] + dx], axis=1).ravel()
    y = np.stack([centres[:, 0] - dy, centres[:, 0] + dy], axis=1).ravel()
    connect = np.tile([True, False], len(cyl))
    return x, y, connect


def invalid_cells(pmap: PSFMap, mask: np.ndarray | None = None) -> list[tuple[float, float, float, float]]:
    """``(x, y, w, h)`` of a stride-sized cell around each textureless window (or each window of ``mask``)."""
    s = float(pmap.stride_px)
    cells = []
    for i, j in zip(*np.nonzero(pmap.invalid_mask if mask is None else mask)):
        cy, cx = float(pmap.centers_y[i]), float(pmap.centers_x[j])
        cells.append((cx - s / 2, cy - s / 2, s, s))
    return cells


def region_mean(field: OverlayField, pmap: PSFMap,
                roi: tuple[float, float, float, float] | None = None) -> float:
    """Mean of an overlay's grid over valid windows whose centres lie in ``roi`` = (x, y, w, h).

    ``nan`` when no valid window is inside (or the overlay has no values).
    """
    if field.grid is None:
        return float("nan")
    keep = ~pmap.invalid_mask
    if roi is not None:
        x, y, w, h = roi
        cy = (pmap.centers_y >= y) & (pmap.centers_y <= y + h)
        cx = (pmap.centers_x >= x) & (pmap.centers_x <= x + w)
        keep &= cy[:, None] & cx[None, :]
    if not keep.any():
        return float("nan")
    return float(np.mean(np.asarray(field.grid)[keep]))

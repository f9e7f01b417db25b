"""Sharp textures for training data and for the simulator's samples; nothing is downloaded.

Every generator has the signature ``f(shape, rng, **scale) -> np.ndarray`` and returns a float32 array
of ``shape`` with values in ``[0, 1]``; ``rng`` is a :class:`numpy.random.Generator` and the keyword
arguments set the physical scale of the structures *in pixels* (the caller converts from µm with its
pixel size). Structures are drawn with pixel-level sharpness (anti-aliased, no extra blur) because the
training data's only blur must be the PSF whose parameters are the label.

Procedural generators: :func:`cells`, :func:`points` (beads), :func:`filaments`, :func:`fractal_noise`
(1/f^beta), :func:`shapes` (filled shapes and lines), :func:`printed_grid` (laser-printed lines on
transparent foil, the depth-calibration target), :func:`lines` (one straight line or parallel lines:
purely oriented content, which shows the blur across the lines only), :func:`blank` (textureless).
:func:`voronoi` (walls of polygonal cells) is a held-out family (:data:`HELD_OUT_KINDS`): training
never draws it, so test sets built from it measure generalisation to unseen content. Photographs and
micrographs shipped inside scikit-image's wheel (:data:`SHIPPED_IMAGES`) are loaded from the installed
package with :func:`shipped_image` and cropped with :func:`shipped_crop`.

:func:`random_texture` draws a texture of a random kind at random scales (used by the dataset).
:func:`dihedral` rotates/flips image batches together with their PSF labels; :func:`standardise` and
:func:`normalise_minmax` remove absolute brightness.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from livepsf.optics.params import PSFModelSpec

__all__ = [
    "GENERATORS",
    "SHIPPED_IMAGES",
    "TEXTURE_KINDS",
    "blank",
    "cells",
    "dihedral",
    "filaments",
    "fractal_noise",
    "HELD_OUT_KINDS",
    "lines",
    "normalise_minmax",
    "points",
    "printed_grid",
    "random_texture",
    "shapes",
    "shipped_crop",
    "shipped_image",
    "standardise",
    "voronoi",
]

Shape = tuple[int, int]


# -- helpers ---------------------------------------------------------------------------------------


def _shape(shape: Sequence[int] | int) -> Shape:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape), int(shape))
    h, w = (int(s) for s in shape)
    if h < 1 or w < 1:
        raise ValueError(f"texture shape must be positive, got {shape!r}")
    return h, w


def normalise_minmax(image: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Scale an array linearly to ``[0, 1]`` (min to 0, max to 1); a constant array becomes zeros. float32."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = float(image.min()), float(image.max())
    if hi - lo <= eps:
        return np.zeros_like(image)
    return ((image - lo) / (hi - lo)).astype(np.float32)


def standardise(patches: torch.Tensor | np.ndarray, eps: float = 1e-6) -> torch.Tensor | np.ndarray:
    """Brightness-independent normalisation: each image (last two axes) to zero mean and unit std.

    Invariant to any offset and positive gain (``standardise(a * x + b) == standardise(x)`` for
    ``a > 0``), which is what a network must be when camera offset, gain and illumination vary. A flat
    image becomes zeros (``eps`` guards the division). Works on NumPy arrays and torch tensors alike.
    """
    if isinstance(patches, np.ndarray):
        x = patches.astype(np.float32, copy=False)
        mean = x.mean(axis=(-2, -1), keepdims=True)
        std = x.std(axis=(-2, -1), keepdims=True)
        return (x - mean) / (std + eps)
    x = patches.to(torch.float32)
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
    return (x - mean) / (std + eps)


def _smooth_noise(shape: Shape, rng: np.random.Generator, corr_px: float) -> np.ndarray:
    """Gaussian-correlated noise (correlation length ``corr_px``), zero mean, unit std. float32."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    spectrum = np.exp(-2.0 * (math.pi * corr_px) ** 2 * (fy**2 + fx**2))
    white = rng.standard_normal((h, w)).astype(np.float32)
    out = np.fft.irfft2(np.fft.rfft2(white) * spectrum, s=(h, w)).astype(np.float32)
    std = out.std()
    return out / std if std > 0 else out


def _splat(canvas: np.ndarray, y: np.ndarray, x: np.ndarray, weight: np.ndarray | float) -> None:
    """Add point masses at sub-pixel positions by bilinear splatting (the pixel-area sampling of a point)."""
    h, w = canvas.shape
    y0 = np.floor(y).astype(np.int64)
    x0 = np.floor(x).astype(np.int64)
    fy, fx = y - y0, x - x0
    weight = np.broadcast_to(np.asarray(weight, dtype=np.float64), y.shape)
    corners = ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx))
    for dy, dx, wgt in corners:
        yy, xx = y0 + dy, x0 + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        # bincount is an unbuffered scatter-add, much faster than np.add.at.
        canvas += np.bincount(yy[ok] * w + xx[ok], (weight * wgt)[ok], minlength=h * w).reshape(h, w)


def _gauss_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Small Gaussian blur (used only to give objects a physical size, never as a PSF stand-in)."""
    if sigma_px <= 0:
        return image
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(image, sigma_px, mode="reflect")


# -- procedural generators -------------------------------------------------------------------------


def blank(shape: Sequence[int] | int, rng: np.random.Generator, level: float | None = None) -> np.ndarray:
    """A textureless field: every pixel equals ``level`` (random in ``[0, 1]`` when omitted).

    The training data's explicit invalid patches (a_0 = 1) start from this.
    """
    h, w = _shape(shape)
    value = float(rng.uniform(0.0, 1.0)) if level is None else float(np.clip(level, 0.0, 1.0))
    return np.full((h, w), value, dtype=np.float32)


def fractal_noise(
    shape: Sequence[int] | int, rng: np.random.Generator, beta: float = 2.0, min_period_px: float = 2.0
) -> np.ndarray:
    """1/f^beta noise: power spectrum ``|f|^-beta`` (beta 0 white, 2 "pink/brown" natural-image like).

    ``min_period_px`` cuts frequencies above ``1 / min_period_px`` cycles/px (2 keeps everything up to
    Nyquist, so the texture is sharp at the pixel scale).
    """
    h, w = _shape(shape)
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    f = np.hypot(fy, fx)
    f[0, 0] = 1.0
    amplitude = f ** (-beta / 2.0)
    amplitude[f > 1.0 / max(min_period_px, 2.0)] = 0.0
    amplitude[0, 0] = 0.0
    white = rng.standard_normal((h, w))
    return normalise_minmax(np.fft.irfft2(np.fft.rfft2(white) * amplitude, s=(h, w)))


def points(
    shape: Sequence[int] | int,
    rng: np.random.Generator,
    density_per_px: float = 2e-3,
    radius_px: float = 0.0,
    brightness_spread: float = 0.5,
) -> np.ndarray:
    """Sparse point sources (fluorescent beads) at sub-pixel positions.

    Parameters
    ----------
    density_per_px
        Expected number of beads per pixel (Poisson).
    radius_px
        Bead radius; 0 gives sub-resolution point sources (one bilinearly splatted point), larger beads
        are uniform discs sampled at 4x4 sub-pixels.
    brightness_spread
        Log-normal spread of the bead brightnesses (0: all equal).
    """
    h, w = _shape(shape)
    n = max(1, int(rng.poisson(density_per_px * h * w)))
    y = rng.uniform(-0.5, h - 0.5, n)
    x = rng.uniform(-0.5, w - 0.5, n)
    bright = np.exp(brightness_spread * rng.standard_normal(n))
    canvas = np.zeros((h, w), dtype=np.float64)
    if radius_px <= 0.5:
        _splat(canvas, y, x, bright)
    else:
        # Discs area-sampled with 4x4 sub-pixel samples over each bead's bounding box (sharp edges),
        # all beads at once, in chunks to bound memory.
        sub = ((np.arange(4) + 0.5) / 4 - 0.5).astype(np.float32)
        r = int(math.ceil(radius_px)) + 1
        offs = np.arange(-r, r + 1)
        for lo in range(0, n, 2048):
            yc, xc, b = y[lo : lo + 2048], x[lo : lo + 2048], bright[lo : lo + 2048]
            iy, ix = np.round(yc).astype(np.int64), np.round(xc).astype(np.int64)
            # (m, box, 4): sub-pixel sample offsets from each bead centre, per box row / column
            dy = (iy - yc)[:, None, None].astype(np.float32) + offs[None, :, None] + sub[None, None, :]
            dx = (ix - xc)[:, None, None].astype(np.float32) + offs[None, :, None] + sub[None, None, :]
            inside = (dy[:, :, None, :, None] ** 2 + dx[:, None, :, None, :] ** 2) <= radius_px**2
            cover = inside.mean(axis=(3, 4))  # (m, box, box)
            yy = np.broadcast_to(iy[:, None, None] + offs[None, :, None], cover.shape)
            xx = np.broadcast_to(ix[:, None, None] + offs[None, None, :], cover.shape)
            ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w) & (cover > 0)
            weight = (b[:, None, None] * cover)[ok]
            canvas += np.bincount(yy[ok] * w + xx[ok], weight, minlength=h * w).reshape(h, w)
    # Bright beads dominate the normalisation; cap at a high quantile of the bead peaks.
    peak = np.quantile(canvas[canvas > 0], 0.99) if np.any(canvas > 0) else 1.0
    return np.clip(canvas / peak, 0.0, 1.0).astype(np.float32)


def filaments(
    shape: Sequence[int] | int,
    rng: np.random.Generator,
    n_filaments: int | None = None,
    width_px: float = 1.0,
    persistence_px: float = 40.0,
) -> np.ndarray:
    """A network of curved filaments (cytoskeleton-like): smooth random walks drawn as thin lines.

    Parameters
    ----------
    n_filaments
        Number of filaments (default: scaled with the area, ~1 per 40x40 px).
    width_px
        Line width; about 1 px is a sub-resolution filament.
    persistence_px
        Persistence length: curvature changes on this scale.
    """
    h, w = _shape(shape)
    n = n_filaments if n_filaments is not None else max(3, int(h * w / 1600))
    canvas = np.zeros((h, w), dtype=np.float64)
    step = 0.5
    ys, xs, ws = [], [], []
    for _ in range(n):
        length = rng.uniform(0.3, 1.5) * max(h, w)
        m = int(length / step)
        angle0 = rng.uniform(0, 2 * math.pi)
        dtheta = rng.standard_normal(m) * math.sqrt(2 * step / persistence_px)
        theta = angle0 + np.cumsum(dtheta)
        ys.append(rng.uniform(0, h) + np.cumsum(np.sin(theta) * step))
        xs.append(rng.uniform(0, w) + np.cumsum(np.cos(theta) * step))
        ws.append(np.full(m, step * rng.uniform(0.3, 1.0)))
    _splat(canvas, np.concatenate(ys), np.concatenate(xs), np.concatenate(ws))
    if width_px > 1.0:
        canvas = _gauss_blur(canvas, (width_px - 1.0) / 2.355)
    peak = np.quantile(canvas[canvas > 0], 0.995) if np.any(canvas > 0) else 1.0
    return np.clip(canvas / peak, 0.0, 1.0).astype(np.float32)


def cells(
    shape: Sequence[int] | int,
    rng: np.random.Generator,
    cell_radius_px: float = 30.0,
    density: float = 0.6,
    nucleus_fraction: float = 0.45,
) -> np.ndarray:
    """Synthetic cells: textured cytoplasm, brighter nuclei with chromatin grain, sharp membranes.

    Parameters
    ----------
    cell_radius_px
        Mean cell radius; cells are ellipses with random axes (±40 %) and orientation.
    density
        Fraction of the field covered by cells, on average (overlaps allowed).
    nucleus_fraction
        Nucleus radius relative to its cell.
    """
    h, w = _shape(shape)
    n = max(1, int(rng.poisson(density * h * w / (math.pi * cell_radius_px**2))))
    canvas = np.zeros((h, w), dtype=np.float32)
    cyto_texture = 0.6 + 0.4 * np.clip(fractal_noise((h, w), rng, beta=1.2), 0, 1)
    grain = np.clip(fractal_noise((h, w), rng, beta=0.6), 0, 1)
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    for _ in range(n):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a = cell_radius_px * rng.uniform(0.6, 1.4)
        b = a * rng.uniform(0.5, 1.0)
        phi = rng.uniform(0, math.pi)
        r = int(a + 3)
        y0, y1 = max(0, int(cy) - r), min(h, int(cy) + r + 1)
        x0, x1 = max(0, int(cx) - r), min(w, int(cx) + r + 1)
        if y0 >= y1 or x0 >= x1:
            continue
        dy, dx = yy[y0:y1] - cy, xx[:, x0:x1] - cx
        u = (dx * math.cos(phi) + dy * math.sin(phi)) / a
        v = (-dx * math.sin(phi) + dy * math.cos(phi)) / b
        rho = np.sqrt(u**2 + v**2)
        # Anti-aliased edge: coverage ramps over about one pixel at the boundary.
        edge_px = 1.0 / max(b, 1.0)
        body = np.clip((1.0 - rho) / edge_px + 0.5, 0.0, 1.0)
        membrane = np.clip(1.0 - np.abs(rho - 1.0 + 1.5 * edge_px) / edge_px, 0.0, 1.0)
        level = rng.uniform(0.2, 0.6)
        cell = level * body * cyto_texture[y0:y1, x0:x1] + 0.3 * level * membrane
        # Nucleus, off-centre, with granular chromatin.
        ny, nx = rng.uniform(-0.3, 0.3, 2)
        nr = nucleus_fraction * rng.uniform(0.8, 1.2)
        rho_n = np.sqrt((u - nx) ** 2 + (v - ny) ** 2 * 0.8) / nr
        nucleus = np.clip((1.0 - rho_n) / (edge_px / nr) + 0.5, 0.0, 1.0)
        chromatin = 0.5 + 0.5 * grain[y0:y1, x0:x1]
        cell = cell + rng.uniform(0.3, 0.8) * nucleus * chromatin
        canvas[y0:y1, x0:x1] = np.maximum(canvas[y0:y1, x0:x1], cell)
    # A few small bright vesicles scattered over the cells.
    vesicles = points((h, w), rng, density_per_px=3e-4, brightness_spread=0.3)
    canvas = canvas + 0.5 * vesicles * (canvas > 0)
    return np.clip(canvas / max(float(canvas.max()), 1e-6), 0.0, 1.0).astype(np.float32)


def shapes(
    shape: Sequence[int] | int,
    rng: np.random.Generator,
    n_shapes: int | None = None,
    size_px: float = 40.0,
    n_lines: int | None = None,
) -> np.ndarray:
    """Random filled polygons, ellipses and rectangles plus anti-aliased straight lines, random grey levels.

    Parameters
    ----------
    n_shapes, n_lines
        Counts (default: scaled with the area).
    size_px
        Typical shape size.
    """
    from skimage.draw import ellipse, line_aa, polygon

    h, w = _shape(shape)
    n_shapes = n_shapes if n_shapes is not None else max(2, int(h * w / (2.5 * size_px**2)))
    n_lines = n_lines if n_lines is not None else max(1, int(h * w / 8000))
    canvas = np.full((h, w), rng.uniform(0.0, 0.4), dtype=np.float32)
    for _ in range(n_shapes):
        level = rng.uniform(0.0, 1.0)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        size = size_px * rng.uniform(0.3, 2.0)
        kind = rng.integers(3)
        if kind == 0:  # polygon
            k = int(rng.integers(3, 8))
            ang = np.sort(rng.uniform(0, 2 * math.pi, k))
            rad = size * rng.uniform(0.4, 1.0, k)
            rr, cc = polygon(cy + rad * np.sin(ang), cx + rad * np.cos(ang), (h, w))
        elif kind == 1:  # ellipse
            rr, cc = ellipse(cy, cx, size * rng.uniform(0.3, 1.0), size * rng.uniform(0.3, 1.0), (h, w),
                             rotation=rng.uniform(0, math.pi))
        else:  # rectangle, any orientation
            a, b, t = size * rng.uniform(0.3, 1.0), size * rng.uniform(0.1, 1.0), rng.uniform(0, math.pi)
            corners = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
            rot = np.array([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
            c = corners @ rot.T
            rr, cc = polygon(cy + c[:, 0], cx + c[:, 1], (h, w))
        canvas[rr, cc] = level
    for _ in range(n_lines):
        y0, y1 = rng.integers(0, h, 2)
        x0, x1 = rng.integers(0, w, 2)
        rr, cc, val = line_aa(int(y0), int(x0), int(y1), int(x1))
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        level = rng.uniform(0.0, 1.0)
        canvas[rr[ok], cc[ok]] = canvas[rr[ok], cc[ok]] * (1 - val[ok]) + level * val[ok]
    return normalise_minmax(canvas)


def printed_grid(
    shape: Sequence[int] | int,
    rng: np.random.Generator,
    pitch_px: float = 307.7,
    line_width_px: float = 40.0,
    offset_px: tuple[float, float] = (0.0, 0.0),
    rotation_deg: float = 0.0,
    grain_px: float = 6.0,
    edge_roughness_px: float = 3.0,
    toner_transmission: float = 0.08,
) -> np.ndarray:
    """A square grid laser-printed on transparent foil, as seen in transmitted light.

    Returns the *transmission*: 1 for clear foil, about ``toner_transmission`` under the toner (so
    ``1 - result`` is the toner coverage). Toner is fused particles: the lines have ragged edges,
    density varies inside them at the particle scale, and stray particles sit near the lines.

    Parameters
    ----------
    pitch_px
        Distance between line centres (square grid). The default is 200 µm at 0.65 µm/px.
    line_width_px
        Printed line width.
    offset_px
        ``(y, x)`` position of a line crossing relative to pixel (0, 0).
    rotation_deg
        Grid rotation, counter-clockwise from the x axis (array axis 1) towards y (axis 0).
    grain_px
        Toner particle size: scale of the density variations and of the edge raggedness.
    edge_roughness_px
        RMS displacement of the line edges.
    toner_transmission
        Transmission of a fully covered pixel.
    """
    h, w = _shape(shape)
    if pitch_px <= 0 or line_width_px <= 0 or line_width_px >= pitch_px:
        raise ValueError(f"need 0 < line_width_px < pitch_px, got {line_width_px} and {pitch_px}")
    yy = np.arange(h, dtype=np.float64)[:, None] - offset_px[0]
    xx = np.arange(w, dtype=np.float64)[None, :] - offset_px[1]
    t = math.radians(rotation_deg)
    u = xx * math.cos(t) + yy * math.sin(t)
    v = -xx * math.sin(t) + yy * math.cos(t)
    # Distance (px) from each pixel centre to the nearest line of either family.
    du = np.abs((u + pitch_px / 2) % pitch_px - pitch_px / 2)
    dv = np.abs((v + pitch_px / 2) % pitch_px - pitch_px / 2)
    dist = np.minimum(du, dv)
    # Raggedness is bounded by the line width so thin lines stay continuous.
    rough = min(edge_roughness_px, 0.2 * line_width_px) * _smooth_noise((h, w), rng, grain_px)
    # Signed distance inside (+) / outside (-) the toner; one-pixel anti-aliasing ramp.
    inside = line_width_px / 2 + rough - dist
    coverage = np.clip(inside + 0.5, 0.0, 1.0)
    # Particle-scale density: fused toner is patchy, with a few voids.
    density = np.clip(0.93 + 0.1 * _smooth_noise((h, w), rng, grain_px / 2), 0.0, 1.0)
    coverage = coverage * density
    # Stray toner particles within a few grain sizes of the lines.
    near = (dist < line_width_px / 2 + 4 * grain_px) & (coverage < 0.5)
    specks = points((h, w), rng, density_per_px=3.0 / (math.pi * (4 * grain_px) ** 2), radius_px=grain_px / 3)
    coverage = np.maximum(coverage, specks * near)
    transmission = 1.0 - (1.0 - toner_transmission) * np.clip(coverage, 0.0, 1.0)
    return transmission.astype(np.float32)


def lines(
    shape: Sequence[int] | int,
    rng: np.random.Generator,
    n_lines: int = 1,
    spacing_px: float = 20.0,
    width_px: float = 2.0,
    angle_deg: float | None = None,
    background: float = 0.0,
) -> np.ndarray:
    """One straight line, or ``n_lines`` parallel lines, at any angle: purely oriented content.

    Such a window shows the blur *across* the lines only, so it cannot reveal astigmatism along them:
    training on it teaches the network to say so (a large σ) rather than guess.

    Parameters
    ----------
    n_lines
        Number of parallel lines (``0``: as many as fit the field at ``spacing_px``).
    spacing_px
        Distance between line centres.
    width_px
        Line width (anti-aliased edges, otherwise sharp).
    angle_deg
        Direction of the lines, counter-clockwise from the x axis (random when omitted).
    background
        Level between the lines (the lines are 1).
    """
    h, w = _shape(shape)
    if width_px <= 0 or spacing_px <= width_px:
        raise ValueError(f"need 0 < width_px < spacing_px, got {width_px} and {spacing_px}")
    t = math.radians(rng.uniform(0.0, 180.0) if angle_deg is None else angle_deg)
    yy = np.arange(h, dtype=np.float64)[:, None] - h / 2
    xx = np.arange(w, dtype=np.float64)[None, :] - w / 2
    across = -xx * math.sin(t) + yy * math.cos(t) - rng.uniform(-0.5, 0.5) * spacing_px  # signed distance
    if n_lines <= 0:
        dist = np.abs((across + spacing_px / 2) % spacing_px - spacing_px / 2)
    else:
        centres = (np.arange(n_lines) - (n_lines - 1) / 2) * spacing_px
        dist = np.min(np.abs(across[..., None] - centres), axis=-1)
    coverage = np.clip(width_px / 2 - dist + 0.5, 0.0, 1.0)
    return (background + (1.0 - background) * coverage).astype(np.float32)


def voronoi(
    shape: Sequence[int] | int,
    rng: np.random.Generator,
    cell_px: float = 30.0,
    wall_px: float = 2.0,
) -> np.ndarray:
    """Walls of polygonal (Voronoi) cells, like plant tissue or a honeycomb; held out of training.

    Parameters
    ----------
    cell_px
        Typical cell diameter.
    wall_px
        Wall thickness (anti-aliased).
    """
    from scipy.spatial import cKDTree

    h, w = _shape(shape)
    n = max(4, int(rng.poisson(h * w / cell_px**2)))
    seeds = np.column_stack([rng.uniform(-cell_px, h + cell_px, n), rng.uniform(-cell_px, w + cell_px, n)])
    yy, xx = np.mgrid[0:h, 0:w]
    dist, _ = cKDTree(seeds).query(np.column_stack([yy.ravel(), xx.ravel()]), k=2)
    # Half the gap between the nearest and second-nearest seed distances ~ distance to the wall.
    to_wall = (0.5 * (dist[:, 1] - dist[:, 0])).reshape(h, w)
    levels = rng.uniform(0.0, 0.3)
    return (levels + (1.0 - levels) * np.clip(wall_px / 2 - to_wall + 0.5, 0.0, 1.0)).astype(np.float32)


# -- images shipped in installed packages ----------------------------------------------------------

#: scikit-image sample images that are inside its wheel (no download) and load offline; checked with
#: scikit-image 0.26. Grey-level versions are used; colour images are converted to luminance.
SHIPPED_IMAGES: tuple[str, ...] = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "horse", "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina",
    "rocket", "text",
)  # fmt: skip


@functools.lru_cache(maxsize=len(SHIPPED_IMAGES))
def shipped_image(name: str) -> np.ndarray:
    """One of :data:`SHIPPED_IMAGES` as a float32 grey image in ``[0, 1]``, read from the installed package.

    Raises
    ------
    ValueError
        ``name`` is not a shipped image.
    """
    if name not in SHIPPED_IMAGES:
        raise ValueError(f"unknown shipped image {name!r}; choose from {', '.join(SHIPPED_IMAGES)}")
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 3:
        rgb = image[..., :3].astype(np.float32)
        image = rgb @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
    image = normalise_minmax(image.astype(np.float32))
    image.setflags(write=False)
    return image


def available_shipped_images() -> tuple[str, ...]:
    """The names in :data:`SHIPPED_IMAGES` that load in this environment (all of them with scikit-image)."""
    ok = []
    for name in SHIPPED_IMAGES:
        try:
            shipped_image(name)
        except Exception:  # an older/newer scikit-image without that file: skip it
            continue
        ok.append(name)
    return tuple(ok)


def shipped_crop(
    shape: Sequence[int] | int,
    rng: np.random.Generator,
    names: Sequence[str] | None = None,
    zoom: tuple[float, float] = (0.5, 1.0),
    region: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0),
    min_shape: Sequence[int] | int | None = None,
) -> np.ndarray:
    """A random crop of a random shipped image, downscaled by a random factor in ``zoom``.

    Downscaling (zoom <= 1, area-averaged) keeps the crop at least as sharp as the original photo;
    upscaling would add blur that is not in the label, so zoom factors above 1 are refused. Images
    smaller than the crop are mirror-padded.

    Parameters
    ----------
    names
        Images to choose from (default: all of :data:`SHIPPED_IMAGES`).
    region
        ``(y0, y1, x0, x1)`` fractions of the image the crop may come from; the dataset uses disjoint
        regions for its train/val/test splits.
    min_shape
        When given, the crop may be smaller than ``shape`` (down to ``min_shape``) where the image is:
        less mirror padding (whose seams are not microscopy).
    """
    h, w = _shape(shape)
    min_h, min_w = _shape(min_shape) if min_shape is not None else (h, w)
    names = tuple(names) if names is not None else SHIPPED_IMAGES
    if not names:
        raise ValueError("no shipped images to choose from")
    if not (0 < zoom[0] <= zoom[1] <= 1.0):
        raise ValueError(f"zoom range must lie in (0, 1], got {zoom}")
    image = shipped_image(str(names[int(rng.integers(len(names)))]))
    ih, iw = image.shape
    y0, y1 = int(region[0] * ih), max(int(region[0] * ih) + 1, int(region[1] * ih))
    x0, x1 = int(region[2] * iw), max(int(region[2] * iw) + 1, int(region[3] * iw))
    image = image[y0:y1, x0:x1]
    z = float(np.exp(rng.uniform(math.log(zoom[0]), math.log(zoom[1]))))
    if z < 0.999:
        src = torch.from_numpy(np.array(image, dtype=np.float32))[None, None]
        out = torch.nn.functional.interpolate(src, scale_factor=z, mode="bilinear", antialias=True,
                                              align_corners=False)
        image = out[0, 0].numpy()
    ih, iw = image.shape
    h, w = max(min(h, ih), min_h), max(min(w, iw), min_w)
    if ih < h or iw < w:
        py, px = max(0, h - ih), max(0, w - iw)
        image = np.pad(image, ((py // 2, py - py // 2), (px // 2, px - px // 2)), mode="symmetric")
        ih, iw = image.shape
    oy = int(rng.integers(0, ih - h + 1))
    ox = int(rng.integers(0, iw - w + 1))
    return normalise_minmax(image[oy : oy + h, ox : ox + w])


# -- random textures for the dataset ---------------------------------------------------------------

GENERATORS: dict[str, Callable[..., np.ndarray]] = {
    "cells": cells,
    "points": points,
    "filaments": filaments,
    "fractal_noise": fractal_noise,
    "shapes": shapes,
    "printed_grid": printed_grid,
    "lines": lines,
    "shipped": shipped_crop,
    "blank": blank,
    "voronoi": voronoi,
}

#: Texture families that training never draws (the test battery's unseen content).
HELD_OUT_KINDS: tuple[str, ...] = ("voronoi",)

#: Kinds drawn by :func:`random_texture` (everything but ``blank``) with their default weights.
TEXTURE_KINDS: dict[str, float] = {
    "cells": 0.17,
    "points": 0.1,
    "filaments": 0.13,
    "fractal_noise": 0.08,
    "shapes": 0.1,
    "printed_grid": 0.12,
    "lines": 0.1,
    "shipped": 0.2,
}


def random_scales(kind: str, rng: np.random.Generator) -> dict:
    """Random scale keywords for a generator kind, covering the sizes seen at 4x-60x magnification."""
    logu = lambda lo, hi: float(np.exp(rng.uniform(math.log(lo), math.log(hi))))  # noqa: E731
    if kind == "cells":
        return {"cell_radius_px": logu(8, 80), "density": rng.uniform(0.3, 1.0),
                "nucleus_fraction": rng.uniform(0.3, 0.6)}
    if kind == "points":
        return {"density_per_px": logu(5e-5, 2e-2),
                "radius_px": 0.0 if rng.random() < 0.6 else logu(0.6, 4.0),
                "brightness_spread": rng.uniform(0.0, 0.8)}
    if kind == "filaments":
        return {"width_px": logu(1.0, 3.0), "persistence_px": logu(10, 200),
                "n_filaments": None if rng.random() < 0.5 else int(rng.integers(3, 30))}
    if kind == "fractal_noise":
        return {"beta": rng.uniform(0.5, 3.0)}
    if kind == "shapes":
        return {"size_px": logu(5, 80)}
    if kind == "printed_grid":
        pitch = logu(40, 320)
        return {"pitch_px": pitch, "line_width_px": pitch * rng.uniform(0.03, 0.3),
                "offset_px": (rng.uniform(0, pitch), rng.uniform(0, pitch)),
                "rotation_deg": rng.uniform(-10, 10) if rng.random() < 0.5 else rng.uniform(0, 90),
                "grain_px": logu(2, 10), "edge_roughness_px": logu(0.5, 4),
                "toner_transmission": rng.uniform(0.0, 0.3)}
    if kind == "lines":
        spacing = logu(6, 120)
        return {"n_lines": int(rng.choice([1, 1, 2, 3, 0])), "spacing_px": spacing,
                "width_px": min(logu(0.7, 12), 0.6 * spacing), "background": rng.uniform(0.0, 0.3)}
    if kind == "voronoi":
        return {"cell_px": logu(10, 120), "wall_px": logu(0.8, 6)}
    if kind in ("shipped", "blank"):
        return {}
    raise ValueError(f"unknown texture kind {kind!r}; choose from {', '.join(GENERATORS)}")


def random_texture(
    shape: Sequence[int] | int,
    rng: np.random.Generator,
    kinds: dict[str, float] | Sequence[str] | None = None,
    **kind_kwargs: dict,
) -> tuple[np.ndarray, str]:
    """A texture of a random kind at random scales; returns ``(texture, kind)``.

    Parameters
    ----------
    kinds
        ``{kind: weight}`` or a list of kinds (equal weights); default :data:`TEXTURE_KINDS`.
    kind_kwargs
        Extra fixed keywords per kind, e.g. ``shipped={"names": (...), "region": (...)}``.
    """
    kinds = TEXTURE_KINDS if kinds is None else kinds
    if not isinstance(kinds, dict):
        kinds = {k: 1.0 for k in kinds}
    names = list(kinds)
    p = np.array([kinds[k] for k in names], dtype=np.float64)
    if len(names) == 0 or p.sum() <= 0:
        raise ValueError("no texture kinds to draw from")
    kind = names[int(rng.choice(len(names), p=p / p.sum()))]
    kwargs = random_scales(kind, rng) | dict(kind_kwargs.get(kind, {}))
    return GENERATORS[kind](shape, rng, **kwargs), kind


# -- rotations and flips with their label transforms -----------------------------------------------


def dihedral(
    images: torch.Tensor, values: torch.Tensor, spec: PSFModelSpec, k: int = 0, flip_axis: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate images by ``k`` quarter turns and optionally mirror them, transforming the PSF labels to match.

    The image operation is ``torch.rot90(images, k, dims=(-2, -1))`` followed, if ``flip_axis`` is 0
    or 1, by a flip of that array axis (0: rows, 1: columns). Labels (``(B, N)`` physical values) follow
    :meth:`PSFModelSpec.rot90` and :meth:`PSFModelSpec.flip`: a quarter turn negates both astigmatism
    components (and swaps Gaussian x/y variances), a mirror negates ``astig_45``; the result is in
    canonical form.
    """
    out = torch.rot90(images, k % 4, dims=(-2, -1)) if k % 4 else images
    vals = spec.rot90(values, k % 4)
    if flip_axis is not None:
        if flip_axis not in (0, 1):
            raise ValueError(f"flip_axis must be 0, 1 or None, got {flip_axis}")
        out = torch.flip(out, dims=(-2 + flip_axis,))
        vals = spec.flip(vals, flip_axis)
    return out, vals

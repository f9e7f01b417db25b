"""Focus signals of one frame: the network's defocus, the image's astigmatic anisotropy and sharpness.

Three measurements, each with its uncertainty, that :mod:`livepsf.acquisition.autofocus` and
:mod:`livepsf.acquisition.focus_lock` combine:

* :func:`network_offset` — the signed distance to focus (µm) from a PSF map and a depth calibration
  (cylindrical lens in): the calibrated depth of the region's windows, fused robustly. Long range
  (tens of µm) but coarse: it inherits the network's error, and near focus, where the side of focus
  cannot be seen, it is biased by a few µm.
* :func:`network_distance` — the unsigned distance (µm) from the network's ``focus`` alone (any
  model, lens in or out), converted with the optics (``Optics.defocus_um``).
* :func:`image_focus_signals` — two classical measures from the pixels themselves: the **anisotropy**
  ``R = ln(Gx / Gy)`` of the gradient energy along x and y, which a cylindrical lens makes an odd,
  nearly linear function of defocus within its two line foci (the astigmatic focus detector of CD
  pickups), zero at focus for a statistically isotropic texture; and the **sharpness** ``S = ln((Gx +
  Gy) / mean²)``, largest at focus with or without a lens.

Regions are ``roi = (x, y, width, height)`` in frame pixels (Micro-Manager's order); ``None`` is the
whole frame. A window of a PSF map belongs to the region when its centre does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from livepsf.depth import reliable_windows, robust_line_fit
from livepsf.errors import InputError
from livepsf.mapping import PSFMap

__all__ = [
    "FocusEstimate",
    "ImageFocusSignals",
    "Roi",
    "check_roi",
    "image_focus_signals",
    "network_distance",
    "network_offset",
    "robust_mean",
]

#: ``(x, y, width, height)`` in frame pixels.
Roi = tuple[int, int, int, int]

# Gaussian smoothing (px) before the gradients: keeps pixel noise out of the gradient energy.
_SMOOTH_PX = 1.0
# The anisotropy's uncertainty comes from its spread over this many tiles per side of the region.
_TILES = 4


@dataclass(frozen=True)
class FocusEstimate:
    """A distance to focus from one frame.

    Attributes
    ----------
    offset_um
        Signed move of the focus drive that would bring the region into focus (``signed``), or the
        unsigned distance to focus (not ``signed``); NaN when nothing could be measured.
    sigma_um
        Standard uncertainty of ``offset_um`` (NaN when unknown).
    n_windows
        Windows that contributed.
    signed
        Whether the side of focus is known.
    """

    offset_um: float
    sigma_um: float
    n_windows: int
    signed: bool

    @property
    def ok(self) -> bool:
        """Whether a finite estimate with a finite σ exists."""
        return math.isfinite(self.offset_um) and math.isfinite(self.sigma_um)


@dataclass(frozen=True)
class ImageFocusSignals:
    """Classical focus measures of a region (see the module docstring)."""

    anisotropy: float
    anisotropy_sigma: float
    sharpness: float


def check_roi(roi: Sequence[int] | None, frame_shape: tuple[int, int]) -> Roi:
    """The region as ``(x, y, width, height)`` inside a ``frame_shape`` frame (the whole frame for None).

    Raises
    ------
    InputError
        Not four integers, empty, or reaching outside the frame.
    """
    h, w = int(frame_shape[0]), int(frame_shape[1])
    if roi is None:
        return 0, 0, w, h
    try:
        x, y, rw, rh = (int(v) for v in roi)
    except (TypeError, ValueError):
        raise InputError(f"roi must be four integers (x, y, width, height), got {roi!r}") from None
    if rw < 16 or rh < 16 or x < 0 or y < 0 or x + rw > w or y + rh > h:
        raise InputError(f"roi {roi!r} (x, y, width, height) must be at least 16 px and lie within the "
                         f"{w}×{h} frame")
    return x, y, rw, rh


def robust_mean(values: np.ndarray, sigmas: np.ndarray | None = None) -> tuple[float, float, int]:
    """Outlier-resistant mean of per-window values and its standard uncertainty.

    A Huber-then-bisquare location fit (:func:`livepsf.depth.robust_line_fit` with a constant design):
    windows whose sign the network got wrong read about the mirrored distance and get no weight.
    With per-window ``sigmas`` the fit is inverse-variance weighted and the result's σ is the larger
    of the propagated one and the one from the remaining spread, so an overconfident network cannot
    make the estimate look better than the windows agree.

    Returns
    -------
    (mean, sigma, n_used)
        NaNs and 0 when fewer than three finite values.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    s = None if sigmas is None else np.asarray(sigmas, dtype=np.float64).ravel()
    keep = np.isfinite(v) if s is None else np.isfinite(v) & np.isfinite(s) & (s > 0)
    v = v[keep]
    if s is not None:
        s = s[keep]
    if len(v) < 3:
        return math.nan, math.nan, 0
    scale = np.ones_like(v) if s is None else 1.0 / s
    coef, weights = robust_line_fit(scale[:, None], v * scale)
    mean = float(coef[0])
    used = weights > 0.05
    n = int(used.sum())
    if n < 2:
        return mean, math.nan, n
    w = weights[used] * scale[used] ** 2
    resid = v[used] - mean
    spread = math.sqrt(float(np.sum(w * resid**2) / np.sum(w)) / (n - 1))
    sigma = spread if s is None else max(spread, math.sqrt(1.0 / float(np.sum(w))))
    return mean, sigma, n


def _roi_windows(pmap: PSFMap, roi: Roi) -> np.ndarray:
    x, y, w, h = roi
    cy = np.asarray(pmap.centers_y, dtype=np.float64)
    cx = np.asarray(pmap.centers_x, dtype=np.float64)
    return ((cy >= y) & (cy < y + h))[:, None] & ((cx >= x) & (cx < x + w))[None, :]


def _parameter_sigma(pmap: PSFMap, name: str) -> np.ndarray | None:
    # PSFMap.sigma is empty for networks without σ heads (the shipped ones): fall back to the spread.
    sigma = getattr(pmap, "sigma", None) or {}
    grid = sigma.get(name)
    return None if grid is None else np.asarray(grid, dtype=np.float64)


def network_offset(pmap: PSFMap, calibration, frame: np.ndarray | None = None,
                   roi: Sequence[int] | None = None, min_windows: int = 3) -> FocusEstimate:
    """Signed focus-drive move (µm) that brings the region into focus, from a calibrated PSF map.

    The calibration's depth (height of the sample relative to the focal plane) of the region's
    reliable windows (valid, and with texture in two directions when ``frame`` is given), fused with
    :func:`robust_mean`. Moving the focus drive by the result puts the sample in the focal plane.

    Parameters
    ----------
    pmap
        PSF map of a Z-3 network with the cylindrical lens in.
    calibration
        :class:`livepsf.Calibration` made with the same network.
    frame
        The frame the map was made from (enables the calibration's texture gate).
    roi
        ``(x, y, width, height)`` in frame pixels; the whole frame when None.
    min_windows
        When fewer windows pass the texture gate, every valid window of the region is used.
    """
    roi_ = check_roi(roi, pmap.frame_shape)
    inside = _roi_windows(pmap, roi_)
    if hasattr(calibration, "depth_estimate"):  # a livepsf.Calibration: each window's depth ± σ
        estimate = calibration.depth_estimate(pmap, frame)
        depth = np.asarray(estimate.depth_um, dtype=np.float64)
        window_sigma = np.asarray(estimate.sigma_um, dtype=np.float64)
        ok = estimate.reliable & inside
    else:  # any depth model with depth_um(pmap): σ from the network's focus σ through the line
        depth = np.asarray(calibration.depth_um(pmap), dtype=np.float64)
        focus_sigma = _parameter_sigma(pmap, "focus")
        window_sigma = None if focus_sigma is None else abs(calibration.slope_um_per_unit) * focus_sigma
        ok = reliable_windows(pmap, frame, calibration.max_texture_coherence) & inside
    if ok.sum() < min_windows:
        # Too few windows with texture in two directions (filaments, lines): use every valid window,
        # unweighted (their σ says they cannot show the side of focus); the robust fusion discounts
        # the ones whose side of focus follows the line orientation.
        ok = ~pmap.invalid_mask & inside
        window_sigma = None
    mean, sigma, n = robust_mean(depth[ok], None if window_sigma is None else window_sigma[ok])
    return FocusEstimate(mean, sigma, n, signed=True)


def network_distance(pmap: PSFMap, roi: Sequence[int] | None = None) -> FocusEstimate:
    """Unsigned distance to focus (µm) from the network's ``focus`` over the region's valid windows."""
    if "focus" not in pmap.params:
        raise InputError(f"a {pmap.psf_model} PSF map has no focus parameter: use a Z-1 or Z-3 model")
    roi_ = check_roi(roi, pmap.frame_shape)
    ok = ~pmap.invalid_mask & _roi_windows(pmap, roi_)
    distance = np.asarray(pmap.optics.defocus_um(np.asarray(pmap.values("focus"), dtype=np.float64)))
    focus_sigma = _parameter_sigma(pmap, "focus")
    sig = None if focus_sigma is None else np.asarray(pmap.optics.defocus_um(focus_sigma))[ok]
    mean, sigma, n = robust_mean(distance[ok], sig)
    return FocusEstimate(mean, sigma, n, signed=False)


def image_focus_signals(frame: np.ndarray, roi: Sequence[int] | None = None,
                        lens_direction: Sequence[float] = (1.0, 0.0)) -> ImageFocusSignals:
    """Anisotropy along the lens axis (with σ from its spread over tiles) and sharpness of a region.

    With ``J`` the mean outer product of the lightly smoothed region's gradient and ``(u0, u45)`` the
    lens direction in the ``(astig_0, astig_45)`` plane (as in :class:`livepsf.Calibration`), the
    anisotropy is ``ln((T + c) / (T - c))`` with ``T = Jxx + Jyy`` and ``c = u0 (Jxx - Jyy) + 2 u45 Jxy``:
    the log ratio of the gradient energy along the lens's two line-focus directions (``ln(Gx / Gy)`` for
    the default ``(1, 0)``). Both measures are ratios, so exposure and gain drop out; the sharpness
    ``ln(T / mean²)`` is divided by the squared mean brightness.
    """
    from scipy.ndimage import gaussian_filter

    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise InputError(f"a frame must be 2D, got shape {frame.shape}")
    x, y, w, h = check_roi(roi, frame.shape)
    region = frame[y : y + h, x : x + w].astype(np.float32)
    smooth = gaussian_filter(region, _SMOOTH_PX)
    gy, gx = np.gradient(smooth)
    norm = math.hypot(float(lens_direction[0]), float(lens_direction[1]))
    if not (math.isfinite(norm) and norm > 0):
        raise InputError(f"lens direction must be a non-zero vector, got {tuple(lens_direction)!r}")
    u0, u45 = float(lens_direction[0]) / norm, float(lens_direction[1]) / norm
    total = gx * gx + gy * gy
    contrast = u0 * (gx * gx - gy * gy) + 2.0 * u45 * (gx * gy)
    mean = float(region.mean(dtype=np.float64))
    tiny = 1e-20

    def log_ratio(t: float, c: float) -> float:
        return math.log(max(t + c, tiny) / max(t - c, tiny))

    t_all, c_all = float(total.mean(dtype=np.float64)), float(contrast.mean(dtype=np.float64))
    anisotropy = log_ratio(t_all, c_all)
    sharpness = math.log(max(t_all, tiny) / max(mean * mean, tiny))
    ty, tx = h // _TILES, w // _TILES
    tiles = []
    for i in range(_TILES):
        for j in range(_TILES):
            t = float(total[i * ty : (i + 1) * ty, j * tx : (j + 1) * tx].sum())
            c = float(contrast[i * ty : (i + 1) * ty, j * tx : (j + 1) * tx].sum())
            if t > tiny:
                tiles.append(log_ratio(t, c))
    spread = float(np.std(tiles, ddof=1)) / math.sqrt(len(tiles)) if len(tiles) > 2 else math.nan
    return ImageFocusSignals(anisotropy, spread, sharpness)

"""The texture gate: windows whose texture can reveal astigmatism.

Two conditions, both measured on the frame itself:

* **Structure in two directions.** A window of parallel lines shows the blur across the lines and
  nothing along them, so its astigmatism (and the side of focus) is not in the image: the
  structure-tensor coherence must be at most ``max_coherence``.
* **Structure above the noise.** Blank foil or background is pixel noise plus faint texture; a network
  may still report confident parameters there (its validity head is a learned guess). The gradient
  energy of the smoothed window must exceed what the window's own noise would give by
  ``min_texture_snr`` times (:attr:`WindowTexture.snr`). The noise level is measured in the same
  window (variance of the frame minus its smoothed version), so Poisson noise that grows with the
  brightness, camera gain and offset need no parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from livepsf.errors import InputError
from livepsf.mapping import PSFMap

#: Default largest structure-tensor coherence of a window whose astigmatism is trusted (0: isotropic
#: texture, 1: parallel lines only).
MAX_TEXTURE_COHERENCE = 0.4
#: Default smallest texture signal-to-noise ratio (:attr:`WindowTexture.snr`) of a trusted window. Blank
#: foil of a printed grid at 800 photons reads about 0.3, windows holding toner lines 3-130, cells 20-170.
MIN_TEXTURE_SNR = 3.0


@dataclass(frozen=True)
class WindowTexture:
    """Texture measures of each window of a PSF map, ``(gy, gx)`` float32 each.

    Attributes
    ----------
    coherence
        Structure-tensor coherence: near 0 for texture in every direction, near 1 for parallel lines.
    snr
        Gradient energy of the smoothed window over the energy its pixel noise alone would give, minus
        1: about 0 for noise only, large for lines, edges and cells.
    """

    coherence: np.ndarray
    snr: np.ndarray


def window_texture(frame: np.ndarray, pmap: PSFMap, smooth_px: float = 1.5, *, snr: bool = True) -> WindowTexture:
    """Coherence and texture SNR of each window of a PSF map (see :class:`WindowTexture`).

    ``J`` (the gradient outer products of the frame after a Gaussian smoothing of ``smooth_px``, which
    keeps pixel noise from looking like texture) is summed over each window: the coherence is
    ``sqrt((Jxx - Jyy)² + 4 Jxy²) / (Jxx + Jyy)``. The noise variance of a window is the variance of
    (frame - smoothed frame), divided by what that high-pass keeps of white noise; the SNR compares
    ``Jxx + Jyy`` with what white noise of that variance gives after the same smoothing. Edges also
    reach the high-pass, so the noise is overestimated in textured windows: the SNR errs low there,
    never high on blank ones (limit: noise-free point sources sharper than about 1 px read as noise,
SNR about 1; any camera noise or a PSF of 1 px or more lifts them above 10). Windows are the mapper's: side ``pmap.window_px`` centred on
    ``pmap.centers_y/x``, clipped to the frame. ``snr=False`` skips the noise measure (its sums cost as
    much again) and leaves :attr:`WindowTexture.snr` NaN.
    """
    from scipy.ndimage import gaussian_filter

    frame = np.asarray(frame, dtype=np.float32)  # float32 halves the cost; the sums below are float64
    if frame.shape != tuple(pmap.frame_shape):
        raise InputError(f"frame of shape {frame.shape} does not match the PSF map's "
                         f"{tuple(pmap.frame_shape)}")
    if smooth_px <= 0:
        raise InputError(f"the texture gate needs a positive smoothing, got {smooth_px} px")
    smooth = gaussian_filter(frame, smooth_px)
    gy, gx = np.gradient(smooth)
    half = (pmap.window_px - 1) / 2.0
    y0 = np.clip(np.round(np.asarray(pmap.centers_y) - half).astype(int), 0, frame.shape[0])
    x0 = np.clip(np.round(np.asarray(pmap.centers_x) - half).astype(int), 0, frame.shape[1])
    y1 = np.clip(y0 + pmap.window_px, 0, frame.shape[0])
    x1 = np.clip(x0 + pmap.window_px, 0, frame.shape[1])
    n_px = np.maximum((y1 - y0)[:, None] * (x1 - x0)[None, :], 1)

    def window_sums(a: np.ndarray) -> np.ndarray:
        integral = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
        integral[1:, 1:] = a.cumsum(0, dtype=np.float64).cumsum(1)
        return (integral[np.ix_(y1, x1)] - integral[np.ix_(y0, x1)] - integral[np.ix_(y1, x0)]
                + integral[np.ix_(y0, x0)])

    jxx, jyy, jxy = window_sums(gx * gx), window_sums(gy * gy), window_sums(gx * gy)
    total = jxx + jyy
    coherence = np.where(total > 0, np.sqrt((jxx - jyy) ** 2 + 4.0 * jxy**2) / np.where(total > 0, total, 1.0), 0.0)
    if not snr:
        nan = np.full(coherence.shape, np.nan, dtype=np.float32)
        return WindowTexture(coherence=coherence.astype(np.float32), snr=nan)
    residual = frame - smooth
    residual_var = window_sums(residual * residual) / n_px - (window_sums(residual) / n_px) ** 2
    high_pass_gain, gradient_gain = _white_noise_gains(float(smooth_px))
    noise_energy = np.maximum(residual_var, 0.0) / high_pass_gain * gradient_gain * n_px
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(noise_energy > 0, total / np.where(noise_energy > 0, noise_energy, 1.0) - 1.0,
                         np.where(total > 0, np.inf, 0.0))
    return WindowTexture(coherence=coherence.astype(np.float32), snr=ratio.astype(np.float32))


def window_coherence(frame: np.ndarray, pmap: PSFMap, smooth_px: float = 1.5) -> np.ndarray:
    """Structure-tensor coherence of the texture in each window, ``(gy, gx)`` float32 (:func:`window_texture`)."""
    return window_texture(frame, pmap, smooth_px, snr=False).coherence


@lru_cache(maxsize=8)
def _white_noise_gains(smooth_px: float) -> tuple[float, float]:
    """For unit white noise: variance of (noise - smoothed noise), and mean |gradient|² of the smoothed noise.

    Measured on a fixed-seed noise field with the same filters the gate uses (exact to about 1 %).
    """
    from scipy.ndimage import gaussian_filter

    size = 384
    noise = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    smooth = gaussian_filter(noise, smooth_px)
    gy, gx = np.gradient(smooth)
    inner = (slice(32, -32), slice(32, -32))  # away from the boundary handling
    return float(np.var((noise - smooth)[inner])), float(np.mean((gx * gx + gy * gy)[inner]))


def gate_texture(frame: np.ndarray | None, pmap: PSFMap,
                 max_coherence: float | None) -> WindowTexture | None:
    """The frame's :func:`window_texture` when the texture gate applies (a frame and a threshold), else None.

    For callers that gate one frame several times (depth, σ, surface, summary): compute it once and pass
    it as ``texture=`` (:func:`reliable_windows`, :meth:`~livepsf.depth.Calibration.depth_um`, ...).
    """
    if frame is None or max_coherence is None:
        return None
    return window_texture(frame, pmap)


def reliable_windows(pmap: PSFMap, frame: np.ndarray | None = None,
                     max_coherence: float | None = MAX_TEXTURE_COHERENCE,
                     min_texture_snr: float = MIN_TEXTURE_SNR, *,
                     texture: WindowTexture | None = None) -> np.ndarray:
    """``(gy, gx) bool``: windows whose depth can be trusted.

    Valid (not flagged invalid by the network) and, when the frame (or its ``texture``) is given and
    ``max_coherence`` is set, passing the texture gate: texture in more than one direction (coherence at
    most ``max_coherence``) and above the noise (texture SNR at least ``min_texture_snr``); see
    :func:`window_texture`. ``texture``, the frame's :func:`window_texture` computed once by the caller
    (:func:`gate_texture`), stands in for the frame: same result, without measuring the frame again.
    """
    ok = ~pmap.invalid_mask
    if max_coherence is None or (frame is None and texture is None):
        return ok
    if texture is None:
        texture = window_texture(frame, pmap)
    elif texture.coherence.shape != ok.shape or texture.snr.shape != ok.shape:
        raise InputError(f"window texture of shape {texture.coherence.shape} does not match the PSF map's "
                         f"window grid {ok.shape}")
    return ok & (texture.coherence <= max_coherence) & (texture.snr >= min_texture_snr)

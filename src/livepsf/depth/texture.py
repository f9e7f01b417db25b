"""The texture gate: windows whose texture can reveal astigmatism (structure in two directions)."""

from __future__ import annotations

import numpy as np

from livepsf.errors import InputError
from livepsf.mapping import PSFMap

#: Default largest structure-tensor coherence of a window whose astigmatism is trusted (0: isotropic
#: texture, 1: parallel lines only).
MAX_TEXTURE_COHERENCE = 0.4


def window_coherence(frame: np.ndarray, pmap: PSFMap, smooth_px: float = 1.5) -> np.ndarray:
    """Structure-tensor coherence of the texture in each window of a PSF map, ``(gy, gx)`` float32.

    ``sqrt((Jxx - Jyy)² + 4 Jxy²) / (Jxx + Jyy)`` with ``J`` the gradient outer products summed over the
    window (after a Gaussian smoothing of ``smooth_px`` that keeps pixel noise from looking like texture).
    Near 0 for texture in every direction, near 1 for parallel lines. Windows are the mapper's: side
    ``pmap.window_px`` centred on ``pmap.centers_y/x``, clipped to the frame.
    """
    from scipy.ndimage import gaussian_filter

    frame = np.asarray(frame, dtype=np.float32)  # float32 halves the cost; the sums below are float64
    if frame.shape != tuple(pmap.frame_shape):
        raise InputError(f"frame of shape {frame.shape} does not match the PSF map's "
                         f"{tuple(pmap.frame_shape)}")
    smooth = gaussian_filter(frame, smooth_px) if smooth_px > 0 else frame
    gy, gx = np.gradient(smooth)
    half = (pmap.window_px - 1) / 2.0
    y0 = np.clip(np.round(np.asarray(pmap.centers_y) - half).astype(int), 0, frame.shape[0])
    x0 = np.clip(np.round(np.asarray(pmap.centers_x) - half).astype(int), 0, frame.shape[1])
    y1 = np.clip(y0 + pmap.window_px, 0, frame.shape[0])
    x1 = np.clip(x0 + pmap.window_px, 0, frame.shape[1])

    def window_sums(a: np.ndarray) -> np.ndarray:
        integral = np.zeros((a.shape[0] + 1, a.shape[1] + 1))
        integral[1:, 1:] = a.cumsum(0, dtype=np.float64).cumsum(1)
        return (integral[np.ix_(y1, x1)] - integral[np.ix_(y0, x1)] - integral[np.ix_(y1, x0)]
                + integral[np.ix_(y0, x0)])

    jxx, jyy, jxy = window_sums(gx * gx), window_sums(gy * gy), window_sums(gx * gy)
    total = jxx + jyy
    coherence = np.sqrt((jxx - jyy) ** 2 + 4.0 * jxy**2) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, coherence, 0.0).astype(np.float32)


def reliable_windows(pmap: PSFMap, frame: np.ndarray | None = None,
                     max_coherence: float | None = MAX_TEXTURE_COHERENCE) -> np.ndarray:
    """``(gy, gx) bool``: windows whose depth can be trusted.

    Valid (not textureless) and, when the frame is given and ``max_coherence`` is set, with texture in
    more than one direction (:func:`window_coherence` at most ``max_coherence``).
    """
    ok = ~pmap.invalid_mask
    if frame is not None and max_coherence is not None:
        ok = ok & (window_coherence(frame, pmap) <= max_coherence)
    return ok

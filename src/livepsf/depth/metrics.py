"""Depth metrics: from a Z-3 PSF map and the lens direction to a number that grows with depth.

See :mod:`livepsf.depth` for the three metrics and why the sign of the astigmatism along the lens
direction tells above from below focus.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from livepsf.errors import InputError
from livepsf.mapping import PSFMap

Metric = Literal["signed", "projected", "eq14"]
METRICS: tuple[str, ...] = ("signed", "projected", "eq14")


def signed_metric(focus: np.ndarray, astig_0: np.ndarray, astig_45: np.ndarray,
                  lens_direction: Sequence[float]) -> np.ndarray:
    """Focus with the sign of the astigmatism's projection on the lens direction (waves).

    Parameters
    ----------
    focus, astig_0, astig_45
        Canonical Z-3 parameters (focus >= 0), any matching shapes, RMS waves.
    lens_direction
        ``(u_0, u_45)``: direction of the lens astigmatism in the ``(astig_0, astig_45)`` plane.

    Returns
    -------
    np.ndarray
        float32, about the signed defocus in waves (positive on the side where the measured
        astigmatism points along ``lens_direction``).
    """
    u0, u45 = unit_vector(lens_direction)
    projection = np.asarray(astig_0, dtype=np.float64) * u0 + np.asarray(astig_45, dtype=np.float64) * u45
    sign = np.where(projection >= 0, 1.0, -1.0)
    return (np.asarray(focus, dtype=np.float64) * sign).astype(np.float32)


def projected_metric(focus: np.ndarray, astig_0: np.ndarray, astig_45: np.ndarray,
                     lens_direction: Sequence[float], lens_strength_waves: float) -> np.ndarray:
    """Focus times the astigmatism's projection on the lens direction, relative to the lens strength.

    ``focus * clip(<astig, u_L> / lens_strength_waves, -1, 1)``: about the signed defocus (waves) where
    the lens astigmatism is clearly measured, tending smoothly to 0 where it is not.
    """
    if not (lens_strength_waves > 0 and math.isfinite(lens_strength_waves)):
        raise InputError(f"lens strength must be a positive number of waves, got {lens_strength_waves}")
    u0, u45 = unit_vector(lens_direction)
    projection = np.asarray(astig_0, dtype=np.float64) * u0 + np.asarray(astig_45, dtype=np.float64) * u45
    weight = np.clip(projection / lens_strength_waves, -1.0, 1.0)
    return (np.asarray(focus, dtype=np.float64) * weight).astype(np.float32)


def estimate_lens_strength(focus: np.ndarray, astig_0: np.ndarray, astig_45: np.ndarray,
                           lens_direction: Sequence[float], valid: np.ndarray | None = None) -> float:
    """Magnitude of the lens astigmatism (waves) along its direction, from the clearly defocused windows.

    The median ``|<astig, u_L>|`` over valid windows whose focus is above the median focus (near focus
    the measured astigmatism is ambiguous and shrinks).
    """
    u0, u45 = unit_vector(lens_direction)
    f = np.asarray(focus, dtype=np.float64).ravel()
    a0 = np.asarray(astig_0, dtype=np.float64).ravel()
    a45 = np.asarray(astig_45, dtype=np.float64).ravel()
    p = np.abs(a0 * u0 + a45 * u45)
    keep = np.isfinite(f) & np.isfinite(p)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool).ravel()
    if not keep.any():
        raise InputError("too few valid windows to measure the lens astigmatism")
    far = keep & (f >= np.median(f[keep]))
    strength = float(np.median(p[far]))
    if strength <= 1e-6:
        raise InputError("no astigmatism measured along the lens direction: is the cylindrical lens in?")
    return strength


def eq14_metric(focus: np.ndarray, astig_0: np.ndarray, astig_45: np.ndarray,
                lens_direction: Sequence[float] = (0.0, 1.0)) -> np.ndarray:
    """The paper's eq. 14, ``focus * (2 axis / pi - 1)``, with the axis referred to the lens.

    The paper's formula assumes the lens astigmatism at 45° (``lens_direction = (0, 1)``, the default),
    where the axis is pi/4 on one side of focus and 3 pi/4 on the other. For another lens orientation
    ``theta_L`` the axis is shifted by ``pi/4 - theta_L`` first, which leaves the paper's case unchanged.
    The result is about ``-d / 2`` for a signed defocus ``d`` (waves).
    """
    u0, u45 = unit_vector(lens_direction)
    lens_axis = math.remainder(0.5 * math.atan2(u45, u0), math.pi) % math.pi
    a0 = np.asarray(astig_0, dtype=np.float64)
    a45 = np.asarray(astig_45, dtype=np.float64)
    axis = np.remainder(0.5 * np.arctan2(a45, a0), np.pi)
    shifted = np.remainder(axis - lens_axis + np.pi / 4, np.pi)
    return (np.asarray(focus, dtype=np.float64) * (2.0 * shifted / np.pi - 1.0)).astype(np.float32)


def depth_metric(pmap: PSFMap, metric: str, lens_direction: Sequence[float],
                 lens_strength_waves: float | None = None) -> np.ndarray:
    """A depth metric (:data:`METRICS`) on the grid of a PSF map, ``(gy, gx)`` float32.

    ``lens_strength_waves`` is needed by the ``"projected"`` metric only.
    """
    require_astigmatic(pmap)
    args = (pmap.values("focus"), pmap.values("astig_0"), pmap.values("astig_45"), lens_direction)
    if metric == "signed":
        return signed_metric(*args)
    if metric == "projected":
        if lens_strength_waves is None:
            raise InputError("the projected depth metric needs the lens strength (waves)")
        return projected_metric(*args, lens_strength_waves)
    if metric == "eq14":
        return eq14_metric(*args)
    raise InputError(f"unknown depth metric {metric!r}; choose one of {', '.join(METRICS)}")


def estimate_lens_direction(astig_0: np.ndarray, astig_45: np.ndarray,
                            valid: np.ndarray | None = None) -> tuple[float, float]:
    """Direction of the lens astigmatism from measured (canonical) astigmatism vectors.

    The canonical astigmatism is ``+A_L`` on one side of focus and ``-A_L`` on the other, so the
    points cluster at two opposite spots: the direction is the principal axis of their uncentred
    second moment. Its sign is arbitrary here; :func:`calibrate_psf_maps` orients it so that the
    signed metric grows with height.
    """
    a0 = np.asarray(astig_0, dtype=np.float64).ravel()
    a45 = np.asarray(astig_45, dtype=np.float64).ravel()
    keep = np.isfinite(a0) & np.isfinite(a45)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool).ravel()
    if keep.sum() < 2:
        raise InputError("too few valid windows to estimate the lens astigmatism direction")
    pts = np.stack([a0[keep], a45[keep]], axis=1)
    moment = pts.T @ pts / len(pts)
    evals, evecs = np.linalg.eigh(moment)
    if evals[-1] <= 1e-12:
        raise InputError("no astigmatism measured: is the cylindrical lens in the light path?")
    u = evecs[:, -1]
    # Deterministic sign before orientation: largest component positive.
    if u[np.argmax(np.abs(u))] < 0:
        u = -u
    return float(u[0]), float(u[1])


def unit_vector(v: Sequence[float]) -> tuple[float, float]:
    u0, u45 = (float(x) for x in v)
    norm = math.hypot(u0, u45)
    if not math.isfinite(norm) or norm == 0:
        raise InputError(f"lens direction must be a non-zero 2-vector, got {tuple(v)}")
    return u0 / norm, u45 / norm


def require_astigmatic(pmap: PSFMap) -> None:
    if not {"focus", "astig_0", "astig_45"} <= set(pmap.params):
        raise InputError(f"depth from astigmatism needs a Z-3 model (focus and astigmatism); "
                         f"this PSF map is {pmap.psf_model} from model {pmap.model_name!r}")

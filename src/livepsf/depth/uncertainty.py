"""Depth with an uncertainty per window: how far each window's depth can be trusted, in µm.

A window's depth error has three sources, and the σ of :class:`DepthEstimate` accounts for each:

1. **Content that cannot show the side of focus.** Astigmatism is visible only in texture with structure
   in two directions; a window of parallel lines (or blank foil) shows blur across the lines and nothing
   along them, so its side of focus, and hence the sign of its depth, is a guess. Such windows (the
   texture gate of :mod:`livepsf.depth.texture`, and windows the network flags invalid) get σ = inf:
   they tell nothing about depth, and a fused surface (:mod:`livepsf.depth.surface`) lets them borrow
   from their neighbours.
2. **The network's own uncertainty**, when it has σ heads: propagated from (focus, astigmatism) to the
   depth metric, including the chance that the astigmatism's sign along the lens is wrong, which
   mirrors the depth (:func:`metric_sigma`).
3. **The calibration's measured scatter.** On the calibration frames the true height of every window is
   known, so the spread of (depth - height) is measured as a function of |depth| (the error grows
   with defocus) and stored in the calibration (:class:`DepthUncertainty`). With network σ the measured
   scatter is expressed relative to the network's σ, so windows the network is unsure of get a
   larger σ than the calibration median.

Scale rule, as for the network σ heads: σ is scaled so that at least 68 % of the calibration errors lie
within 1 σ and at least 95 % within 2 σ (``max(q68(|e|/s), q95(|e|/s) / 2)``): the second term keeps
the rare mirrored windows from being hidden behind a σ that fits the bulk only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from livepsf.depth.metrics import unit_vector
from livepsf.errors import InputError
from livepsf.mapping import PSFMap

__all__ = ["DepthEstimate", "DepthUncertainty", "fit_depth_uncertainty", "metric_sigma"]

#: At least this many calibration windows per |depth| bin of the σ model.
MIN_WINDOWS_PER_BIN = 30
#: At most this many |depth| bins.
MAX_BINS = 6
SCALE_RULE = "sigma *= max(q68(|err|/s), q95(|err|/s) / 2) per |depth| bin on the calibration windows"


@dataclass(frozen=True)
class DepthEstimate:
    """Per-window depth of one frame with its uncertainty.

    Attributes
    ----------
    depth_um
        ``(gy, gx)`` float32: each window's own depth (height relative to the focal plane, µm), as the
        calibration converts the window's PSF; not filled from neighbours.
    sigma_um
        ``(gy, gx)`` float32: its standard deviation in µm; ``inf`` where the window cannot tell depth
        (flagged invalid by the network, or texture in one direction only).
    """

    depth_um: np.ndarray
    sigma_um: np.ndarray

    @property
    def reliable(self) -> np.ndarray:
        """``(gy, gx)`` bool: windows with a finite σ."""
        return np.isfinite(self.sigma_um)

    @property
    def weight(self) -> np.ndarray:
        """``(gy, gx)`` float64 inverse variance (0 where σ is inf)."""
        sigma = np.asarray(self.sigma_um, dtype=np.float64)
        with np.errstate(divide="ignore"):
            return np.where(np.isfinite(sigma) & (sigma > 0), 1.0 / np.maximum(sigma, 1e-12) ** 2, 0.0)


class DepthUncertainty(BaseModel):
    """Per-window depth σ measured on the calibration frames (stored in the calibration JSON).

    ``sigma(|depth|)`` is piecewise linear through ``(depth_knots_um, sigma_knots_um)`` and constant
    beyond the end knots; with network σ it is multiplied by the window's metric σ relative to
    ``network_sigma_reference``.
    """

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    depth_knots_um: list[float] = Field(description="|depth| (µm) at the centre of each bin")
    sigma_knots_um: list[float] = Field(description="σ (µm) measured in each bin")
    network_sigma_reference: float | None = Field(
        default=None, description="median network σ of the metric on the calibration windows (None: no σ heads)")
    coverage_1sigma: float = Field(description="fraction of calibration errors within 1 σ")
    coverage_2sigma: float = Field(description="fraction of calibration errors within 2 σ")
    n_windows: int
    rule: str = SCALE_RULE

    @field_validator("sigma_knots_um")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if not v or not all(s > 0 and math.isfinite(s) for s in v):
            raise ValueError("σ knots must be positive finite numbers")
        return v

    def sigma_um(self, depth_um: np.ndarray, network_sigma: np.ndarray | None = None) -> np.ndarray:
        """σ (µm) of windows with depth ``depth_um`` (and metric σ ``network_sigma`` from the network)."""
        sigma = np.interp(np.abs(np.asarray(depth_um, dtype=np.float64)), self.depth_knots_um, self.sigma_knots_um)
        if network_sigma is not None and self.network_sigma_reference:
            sigma = sigma * np.asarray(network_sigma, dtype=np.float64) / self.network_sigma_reference
        return sigma.astype(np.float32)


def metric_sigma(pmap: PSFMap, metric: str, lens_direction: Sequence[float],
                 lens_strength_waves: float | None = None) -> np.ndarray | None:
    """σ of a depth metric (metric units) propagated from the network's σ heads; ``None`` without them.

    ``signed`` (``m = f s``, ``s`` the sign of the astigmatism along the lens): the sign is wrong with
    probability ``P = Φ(-|p| / σ_p)`` (``p`` the projection, ``σ_p`` its σ), and a wrong sign moves the
    metric by ``2 f``, so ``σ_m² = σ_f² + 4 f² P (1 - P)``. ``projected`` (``m = f c``, ``c`` the clipped
    projection over the lens strength): first-order propagation where unclipped, the signed case where
    clipped. ``eq14`` (``m = f (2 θ / π - 1)``, ``θ`` the astigmatism axis): first order, with
    ``σ_θ = σ_a / (2 |a|)``.
    """
    if not pmap.sigma:
        return None
    u0, u45 = unit_vector(lens_direction)
    f = np.abs(pmap.values("focus").astype(np.float64))
    a0 = pmap.values("astig_0").astype(np.float64)
    a45 = pmap.values("astig_45").astype(np.float64)
    sf = pmap.sigma["focus"].astype(np.float64)
    s0 = pmap.sigma["astig_0"].astype(np.float64)
    s45 = pmap.sigma["astig_45"].astype(np.float64)
    p = a0 * u0 + a45 * u45
    sp = np.sqrt((u0 * s0) ** 2 + (u45 * s45) ** 2)
    if metric == "signed":
        var = sf**2 + 4.0 * f**2 * _sign_flip_variance(p, sp)
    elif metric == "projected":
        if not lens_strength_waves:
            raise InputError("the projected depth metric needs the lens strength (waves)")
        c = p / lens_strength_waves
        inside = np.abs(c) < 1.0
        var = np.where(inside, (c * sf) ** 2 + (f * sp / lens_strength_waves) ** 2,
                       sf**2 + 4.0 * f**2 * _sign_flip_variance(p - np.sign(p) * lens_strength_waves, sp))
    elif metric == "eq14":
        amplitude = np.hypot(a0, a45)
        theta = np.remainder(0.5 * np.arctan2(a45, a0), np.pi)
        s_amp = np.sqrt(0.5 * (s0**2 + s45**2))
        s_theta = np.minimum(s_amp / np.maximum(2.0 * amplitude, 1e-6), np.pi / 2)
        var = ((2.0 * theta / np.pi - 1.0) * sf) ** 2 + (2.0 * f * s_theta / np.pi) ** 2
    else:
        raise InputError(f"unknown depth metric {metric!r}")
    return np.sqrt(var).astype(np.float32)


def fit_depth_uncertainty(depth_um: np.ndarray, height_um: np.ndarray,
                          network_sigma: np.ndarray | None = None) -> DepthUncertainty:
    """Measure the σ model on calibration windows of known height.

    Parameters
    ----------
    depth_um
        Calibrated depth of each reliable calibration window, any shape.
    height_um
        Its known height relative to the focal plane, same shape.
    network_sigma
        The window's metric σ from the network's σ heads (:func:`metric_sigma`), or ``None``.

    Raises
    ------
    InputError
        Fewer than :data:`MIN_WINDOWS_PER_BIN` finite windows.
    """
    depth = np.asarray(depth_um, dtype=np.float64).ravel()
    height = np.asarray(height_um, dtype=np.float64).ravel()
    rel = np.ones_like(depth) if network_sigma is None else np.asarray(network_sigma, dtype=np.float64).ravel()
    if depth.shape != height.shape or rel.shape != depth.shape:
        raise InputError(f"depth, height and σ of the calibration windows differ in size: "
                         f"{depth.size}, {height.size}, {rel.size}")
    keep = np.isfinite(depth) & np.isfinite(height) & np.isfinite(rel) & (rel > 0)
    if keep.sum() < MIN_WINDOWS_PER_BIN:
        raise InputError(f"only {int(keep.sum())} calibration windows with a known height: "
                         f"at least {MIN_WINDOWS_PER_BIN} are needed to measure the depth uncertainty")
    depth, height, rel = depth[keep], height[keep], rel[keep]
    reference = float(np.median(rel)) if network_sigma is not None else None
    rel = rel / reference if reference else rel
    ratio = np.abs(depth - height) / rel
    magnitude = np.abs(depth)
    n_bins = int(min(MAX_BINS, max(1, len(depth) // MIN_WINDOWS_PER_BIN)))
    edges = np.quantile(magnitude, np.linspace(0.0, 1.0, n_bins + 1))
    which = np.clip(np.searchsorted(edges, magnitude, side="right") - 1, 0, n_bins - 1)
    floor = max(1e-3, 1e-3 * float(np.median(np.abs(height)) or 1.0))
    knots, sigmas = [], []
    for b in range(n_bins):
        r = ratio[which == b]
        if len(r) == 0:
            continue
        knots.append(float(np.median(magnitude[which == b])))
        sigmas.append(max(float(np.quantile(r, 0.68)), float(np.quantile(r, 0.95)) / 2.0, floor))
    model = DepthUncertainty(depth_knots_um=knots, sigma_knots_um=sigmas,
                             network_sigma_reference=reference, coverage_1sigma=0.0, coverage_2sigma=0.0,
                             n_windows=len(depth))
    z = np.abs(depth - height) / model.sigma_um(depth, None if reference is None else rel * reference)
    return model.model_copy(update={"coverage_1sigma": float(np.mean(z <= 1.0)),
                                    "coverage_2sigma": float(np.mean(z <= 2.0))})


def _sign_flip_variance(projection: np.ndarray, projection_sigma: np.ndarray) -> np.ndarray:
    """``P (1 - P)`` with ``P = Φ(-|p| / σ_p)``: variance of a sign that is wrong with probability P."""
    from scipy.special import ndtr

    z = np.abs(projection) / np.maximum(projection_sigma, 1e-9)
    flip = ndtr(-z)
    return flip * (1.0 - flip)

"""Surface depth: one depth map fused across windows, weighted by each window's σ, under a smooth prior.

A window's own depth is noisy, and on some windows plainly wrong: a window whose astigmatism sign the
network misread reads the mirrored depth, and a window with one line or no texture tells nothing
(σ = inf). Samples are smooth, so :func:`fit_surface` fits one surface through all windows at once,
weighting each by ``1 / σ²`` and reweighting robustly (Huber, then Tukey's bisquare, as
:func:`~livepsf.depth.robust.robust_line_fit`) so that mirrored windows get no weight. Windows without
information take the surface's value: they borrow from their neighbours instead of reporting a guess.

Priors (the user chooses; the live view uses ``"poly2"``, :data:`LIVE_PRIOR`):

``"plane"``
    ``a + b x + c y``: a flat sample, tilted or not (the calibration grid). Needs 3 windows.
``"poly2"``
    A second-order polynomial in x and y: a gently curved sample. Needs 6 windows. As for
    ``"smooth"`` below, the robust plane is kept when the curvature does not earn its 3 parameters.
``"smooth"``
    A smoothing surface on the window grid, minimising
    ``Σ w (s - d)² + λ Σ (s_xxx² + 3 s_xxy² + 3 s_xyy² + s_yyy²)`` with third differences on the
    grid. Its unpenalised part is exactly the quadric (``"poly2"``), so with no evidence of more
    shape it *is* the quadric fit, and it follows any smooth sample where the windows agree on it;
    and of the robust plane, the quadric and the smooth surface the one with the lowest Bayesian
    information criterion (BIC) is kept, so a flat tilted sample stays flat where few windows see it.
    Overlapping windows are not independent samples (neighbours read shared texture alike): the BIC
    counts them as the windows that would not overlap (:func:`independent_fraction`, 1/4 at the default
    stride); counted as independent, the smooth prior kept curvature on 3 of 6 flat independent renders.
    REML, which takes the windows as independent, then picks a wiggly surface whose many effective
    parameters lose to the plane at a fine stride, where the quadric still wins on a curved sample.
    (A second-difference, thin-plate penalty makes a strongly curved sample pull λ down until the
    noise is fitted too.) ``λ`` is chosen for each fit by restricted maximum likelihood (REML: the
    surface as a mixed model whose quadric is a fixed effect, Wood 2011) unless given, so no
    hand-tuned constant sets how much it smooths; REML rather than generalised cross-validation,
    which undersmoothed on synthetic curved surfaces with mirrored windows. For speed the surface is
    expanded in the smoothest :data:`SMOOTH_MODES` eigenvectors of the penalty (Demmler-Reinsch
    basis, low-rank smoothers as in mgcv), which turns each fit into small dense algebra. Needs 6
    windows.

σ of the surface: for the polynomial priors, from the covariance of the weighted fit; for
``"smooth"``, the Bayesian posterior of the smoothing system (Wahba 1983). Both are multiplied by the
robust residual scale (residuals in units of the windows' own σ) where that is larger than 1, i.e.
when the windows scatter more about the surface than their σ says.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import scipy.linalg

from livepsf.depth.curve import mirrored_points
from livepsf.errors import InputError
from livepsf.mapping import PSFMap, linear_weights

if TYPE_CHECKING:
    from livepsf.depth.texture import WindowTexture

__all__ = ["LIVE_GATE_STEP", "LIVE_PRIOR", "MIN_WINDOWS", "PRIORS", "SMOOTH_MODES", "DepthSurface", "Prior", "check_prior", "fit_surface",
           "independent_fraction", "live_depth", "surface_depth", "window_depth_and_sigma"]

Prior = Literal["plane", "poly2", "smooth"]
PRIORS: tuple[str, ...] = ("plane", "poly2", "smooth")
#: The fewest windows with finite σ each prior needs (its number of free parameters; the smooth
#: surface's unpenalised part is the quadric).
MIN_WINDOWS: dict[str, int] = {"plane": 3, "poly2": 6, "smooth": 6}
#: The prior of the live view: a plane where the windows say plane (a tilted grid), a quadric where they
#: agree on a curvature (a bowl); on the simulator as accurate as ``"smooth"`` on both, at a third of
#: its cost (``benchmarks/bench_depth.py``).
LIVE_PRIOR: Prior = "poly2"
#: The live view's texture gate looks at every ``LIVE_GATE_STEP``-th pixel each way (windows of 16 px
#: instead of 128): 64 times fewer pixels than the full gate, and it agreed with it on 96 % of the
#: windows of a simulated 6°-tilted printed grid (1024² frame, stride 64; 98 % at every 4th pixel, at
#: 5× the cost).
LIVE_GATE_STEP = 8
#: Most reweighting iterations per robust stage live (20 elsewhere): the Huber stage has then settled
#: the scale, and the bisquare stage has dropped the mirrored windows.
LIVE_ITERATIONS = 6
#: Number of the penalty's smoothest eigenvectors the smooth surface is expanded in. 36 modes of a 15 ×
#: 15 grid resolve features down to about 5 windows across (300 µm at 10×): finer than the curvature of
#: a smooth sample, coarser than the window noise.
SMOOTH_MODES = 36

# Robust reweighting constants (95 % efficiency at the normal, as robust_line_fit).
_HUBER_K = 1.345
_BISQUARE_C = 4.685
# REML's λ grid, as λ times the median penalty-to-data ratio: from interpolation to a plane.
_LOG_LAMBDA = np.linspace(-5.0, 7.0, 61)


@dataclass(frozen=True)
class DepthSurface:
    """A depth surface fused across the windows of one frame.

    Attributes
    ----------
    depth_um
        ``(gy, gx)`` float32: the surface at every window centre, µm (height relative to the focal
        plane, positive above), also where the window itself carried no information.
    sigma_um
        ``(gy, gx)`` float32: σ of the surface at each window centre, µm.
    prior
        ``"plane"``, ``"poly2"`` or ``"smooth"``.
    n_windows
        Windows that carried information (finite σ).
    n_used
        Of those, the windows the robust fit kept (weight > 0); the others were outliers.
    residual_rms_um
        RMS of (window depth − surface) over the windows used.
    scale
        Robust residual scale in units of the windows' σ (about 1 when their σ is honest); σ of the
        surface is multiplied by it where it is larger than 1.
    weights
        ``(gy, gx)`` float32: the robust weight of each window (0: no information or rejected).
    centers_y_px, centers_x_px
        Window centres, px.
    frame_shape
        The frame's ``(height, width)``, px (``None`` when not given; then :meth:`full` needs a shape).
    smoothness
        λ of the smooth prior (in grid units, penalty per data weight), ``None`` for the polynomials.
    effective_params
        Degrees of freedom of the fit (the trace of its influence matrix; 3 or 6 for the polynomials).
    pixel_size_um
        Pixel size in the sample plane, when known (for the tilt in :meth:`figures`).
    coefficients
        The polynomial's coefficients (µm, in coordinates normalised to [-1, 1] over the centres).
    model
        The surface actually fitted: the prior, or ``"plane"`` when the windows showed no curvature
        worth its parameters (BIC), or for the smooth prior ``"poly2"`` when its quadric explains the
        windows as well for fewer parameters.
    window_depth_um
        ``(gy, gx)`` float32 or ``None``: the windows' own depth with the side of focus taken from the
        surface (:func:`surface_depth`): a window whose reading is clearly the mirror of the surface's
        holds the depth of its mirrored reading; ``None`` from :func:`fit_surface` alone.
    mirrored
        ``(gy, gx)`` bool or ``None``: the windows read back with the other sign (see above).
    """

    depth_um: np.ndarray
    sigma_um: np.ndarray
    prior: str
    n_windows: int
    n_used: int
    residual_rms_um: float
    scale: float
    weights: np.ndarray
    centers_y_px: np.ndarray
    centers_x_px: np.ndarray
    frame_shape: tuple[int, int] | None = None
    smoothness: float | None = None
    effective_params: float = float("nan")
    pixel_size_um: float | None = None
    coefficients: dict[str, float] = field(default_factory=dict)
    model: str = ""
    window_depth_um: np.ndarray | None = None
    mirrored: np.ndarray | None = None

    def full(self, shape: tuple[int, int] | None = None, *, sigma: bool = False) -> np.ndarray:
        """The surface (or its σ) over the frame, ``shape`` float32 µm: bilinear between window centres.

        The same interpolation as :meth:`PSFMap.upsample` and :meth:`Calibration.depth_um_full`
        (constant beyond the outer centres); another ``shape`` than the frame's resamples the same
        field of view (e.g. a display image).
        """
        if self.frame_shape is None and shape is None:
            raise InputError("the surface does not know its frame's shape: pass shape=(height, width)")
        frame_shape = self.frame_shape or tuple(shape)
        shape = tuple(shape or frame_shape)
        ys = (np.arange(shape[0]) + 0.5) * (frame_shape[0] / shape[0]) - 0.5
        xs = (np.arange(shape[1]) + 0.5) * (frame_shape[1] / shape[1]) - 0.5
        grid = self.sigma_um if sigma else self.depth_um
        wy, wx = linear_weights(self.centers_y_px, ys), linear_weights(self.centers_x_px, xs)
        return (wy @ np.asarray(grid, np.float32) @ wx.T).astype(np.float32)

    def tilt_deg(self) -> tuple[float, float]:
        """Mean slope of the surface as tilt angles ``(along x, along y)`` in degrees (needs the pixel size).

        From a plane fitted (unweighted) to the surface at the window centres; positive when the height
        grows towards higher indices.
        """
        if not self.pixel_size_um:
            return float("nan"), float("nan")
        yy, xx = np.meshgrid(self.centers_y_px, self.centers_x_px, indexing="ij")
        design = np.column_stack([np.ones(xx.size), xx.ravel(), yy.ravel()])
        coef = np.linalg.lstsq(design, self.depth_um.ravel().astype(np.float64), rcond=None)[0]
        return (math.degrees(math.atan(coef[1] / self.pixel_size_um)),
                math.degrees(math.atan(coef[2] / self.pixel_size_um)))

    def figures(self) -> dict[str, Any]:
        """JSON-ready figures of the fit (for ``<name>_depth.json``)."""
        tilt_x, tilt_y = self.tilt_deg()

        def num(v: float | None, digits: int = 4) -> float | None:
            return None if v is None or not math.isfinite(v) else round(float(v), digits)

        return {
            "prior": self.prior,
            "model": self.model or self.prior,
            "n_windows": int(self.n_windows),
            "n_used": int(self.n_used),
            "residual_rms_um": num(self.residual_rms_um),
            "scale": num(self.scale),
            "smoothness": num(self.smoothness, 8),
            "effective_params": num(self.effective_params),
            "tilt_x_deg": num(tilt_x),
            "tilt_y_deg": num(tilt_y),
            "coefficients": {k: num(v, 8) for k, v in self.coefficients.items()},
            "min_um": num(float(np.min(self.depth_um))),
            "max_um": num(float(np.max(self.depth_um))),
            "median_sigma_um": num(float(np.median(self.sigma_um))),
            "n_mirrored": None if self.mirrored is None else int(np.count_nonzero(self.mirrored)),
            "grid_surface_um": np.round(self.depth_um.astype(np.float64), 3).tolist(),
            "grid_sigma_um": np.round(self.sigma_um.astype(np.float64), 3).tolist(),
        }


def check_prior(prior: str | None) -> str | None:
    """``prior`` if it names a surface prior (or is ``None``: no surface); else an :class:`InputError`."""
    if prior is not None and prior not in PRIORS:
        raise InputError(f"unknown surface prior {prior!r}; choose one of {', '.join(PRIORS)}")
    return prior


def fit_surface(depth_um: np.ndarray, sigma_um: np.ndarray, centers_y_px: np.ndarray, centers_x_px: np.ndarray,
                prior: str = "plane", *, smoothness: float | None = None, robust: bool = True,
                frame_shape: tuple[int, int] | None = None, pixel_size_um: float | None = None,
                iterations: int = 20, window_px: float | None = None) -> DepthSurface:
    """Fuse per-window depths into one surface, weighted by ``1 / σ²``, robust to mirrored windows.

    Parameters
    ----------
    depth_um, sigma_um
        ``(gy, gx)`` per-window depth and its σ (µm). Windows with σ = inf (or NaN, or a NaN depth)
        carry no information: weight 0; the surface there comes from the neighbours.
    centers_y_px, centers_x_px
        Window centres along rows (``gy``) and columns (``gx``), px.
    prior
        ``"plane"``, ``"poly2"`` or ``"smooth"`` (see the module notes).
    smoothness
        λ of the smooth prior (grid units, relative to the windows' weights ``1 / σ²``); ``None``
        chooses it by REML.
    robust
        Reweight (Huber, then bisquare) so windows far off the surface lose their weight.
    frame_shape, pixel_size_um
        Kept with the result for :meth:`DepthSurface.full` and the tilt in :meth:`DepthSurface.figures`.
    iterations
        Most reweighting iterations per stage (Huber, bisquare).
    window_px
        Side of the windows, px, when they overlap (windows wider than the step between centres share
        pixels, so their errors are not independent): the curved priors' BIC then counts the windows
        as ``n · step_y · step_x / window_px²`` independent ones (:func:`independent_fraction`). ``None``:
        every window independent.

    Raises
    ------
    InputError
        Unknown prior, mismatched shapes, or too few informative windows for the prior (plane 3,
        poly2 and smooth 6), or windows on one line (a plane through them is undetermined).
    """
    if check_prior(prior) is None:
        raise InputError("fit_surface needs a prior: plane, poly2 or smooth")
    depth = np.asarray(depth_um, np.float64)
    sigma = np.asarray(sigma_um, np.float64)
    cy, cx = np.asarray(centers_y_px, np.float64).ravel(), np.asarray(centers_x_px, np.float64).ravel()
    if depth.ndim != 2 or sigma.shape != depth.shape or depth.shape != (len(cy), len(cx)):
        raise InputError(f"depth {depth.shape}, σ {sigma.shape} and window centres ({len(cy)}, {len(cx)}) "
                         "do not match")
    if smoothness is not None and not (smoothness >= 0 and math.isfinite(smoothness)):
        raise InputError(f"smoothness must be a non-negative number, got {smoothness}")
    obs = np.isfinite(depth) & np.isfinite(sigma) & (sigma > 0)
    n_obs = int(obs.sum())
    need = MIN_WINDOWS[prior]
    if n_obs < need:
        raise InputError(f"a {prior} surface needs at least {need} windows that carry depth information, "
                         f"got {n_obs} (the others are textureless, one-directional or uncertain)")
    yy, xx = np.meshgrid(_normalised(cy), _normalised(cx), indexing="ij")
    inv_sigma = np.where(obs, 1.0 / np.where(obs, sigma, 1.0), 0.0)
    target = (np.where(obs, depth, 0.0) * inv_sigma)[obs]  # whitened: unit variance if σ is honest
    if np.linalg.matrix_rank(_design("plane", yy, xx)[obs.ravel()]) < 3:
        raise InputError(f"the {n_obs} windows that carry depth information lie on one line: "
                         "a surface through them is undetermined")

    if prior == "smooth":
        solver = _SmoothSolver(depth.shape, inv_sigma, obs, target, smoothness)
    else:
        solver = _PolySolver(_design(prior, yy, xx), inv_sigma, obs, target)
    n_coef = MIN_WINDOWS[prior]
    if prior != "plane" and np.linalg.matrix_rank(_design("poly2", yy, xx)[obs.ravel()]) < n_coef:
        raise InputError(f"the {n_obs} windows that carry depth information do not determine a "
                         f"{prior} surface (too few distinct rows or columns)")
    if robust and n_obs > n_coef:
        start = None
        if prior == "smooth":
            # Start from the robust quadric: a flexible surface fitted to every window first would bend
            # towards the mirrored ones and hide them behind an inflated scale.
            start = _robust_weights(_PolySolver(_design("poly2", yy, xx), inv_sigma, obs, target), target, 6,
                                    iterations)
        weights = _robust_weights(solver, target, n_coef, iterations, start)
    else:
        weights = np.ones(n_obs)
        solver.solve(weights, select=True)
    solver.finish()
    model = prior
    if prior != "plane":
        # Curvature must earn its parameters: the plane is kept unless the curved surface explains the
        # windows better by BIC. A quadric fitted to a flat tilted sample bends where no window
        # constrains it, at the edges. The two are compared on the same windows with the same weights,
        # the curved fit's (the mirrored windows are already out): a plane fitted robustly on its own
        # would call the windows that show the curvature outliers and win on what is left.
        # The smooth prior also has its quadric to fall back on: with overlapping windows REML picks a
        # wiggly surface whose many effective parameters can lose to the plane on a curved sample that
        # the quadric describes. The lowest BIC wins (a tie goes to the simpler surface).
        independent = independent_fraction(cy, cx, window_px)
        best_bic, simpler = _bic(solver, weights, target, independent), None
        for name in ("poly2", "plane") if prior == "smooth" else ("plane",):
            candidate = _PolySolver(_design(name, yy, xx), inv_sigma, obs, target)
            candidate.solve(weights)
            bic = _bic(candidate, weights, target, independent)
            if bic <= best_bic:
                best_bic, simpler, model = bic, candidate, name
        if simpler is not None:
            n_simple = MIN_WINDOWS[model]
            if robust and n_obs > n_simple:
                simple_weights = _robust_weights(simpler, target, n_simple, iterations, weights)
            else:
                simple_weights = np.ones(n_obs)
                simpler.solve(simple_weights)
            simpler.finish()
            solver, weights = simpler, simple_weights
    resid = target - solver.prediction
    used = weights > 0
    dof = max(float(weights.sum()) - solver.effective_params, 0.0)
    scale = math.sqrt(float(np.sum(weights * resid**2)) / dof) if dof > 1e-9 else float("nan")
    factor = max(1.0, scale) if math.isfinite(scale) else 1.0
    surface = solver.surface().reshape(depth.shape)
    sigma_out = factor * np.sqrt(np.maximum(solver.variance(), 0.0)).reshape(depth.shape)
    window_resid = (depth[obs] - surface[obs])[used]
    grid_weights = np.zeros(depth.shape)
    grid_weights[obs] = weights
    return DepthSurface(
        depth_um=surface.astype(np.float32), sigma_um=sigma_out.astype(np.float32), prior=prior,
        n_windows=n_obs, n_used=int(used.sum()),
        residual_rms_um=float(np.sqrt(np.mean(window_resid**2))) if len(window_resid) else float("nan"),
        scale=scale, weights=grid_weights.astype(np.float32), centers_y_px=cy, centers_x_px=cx,
        frame_shape=None if frame_shape is None else (int(frame_shape[0]), int(frame_shape[1])),
        smoothness=solver.smoothness, effective_params=solver.effective_params,
        pixel_size_um=pixel_size_um, coefficients=solver.coefficients(cy, cx), model=model)


def _inverse(a: np.ndarray) -> np.ndarray:
    """Inverse of a small symmetric positive (semi-)definite matrix; pseudo-inverse when singular.

    Not ``pinv(hermitian=True)``: its eigendecomposition is slow when the cores are busy.
    """
    try:
        return np.linalg.inv(a)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(a)


def independent_fraction(centers_y_px: np.ndarray, centers_x_px: np.ndarray, window_px: float | None) -> float:
    """The fraction of overlapping windows that count as independent samples: ``step_y · step_x / window_px²``.

    Windows at half their width apart (the default stride) share pixels with their 8 neighbours, and the
    network reads shared texture alike, so neighbouring windows err alike: a 15 × 15 grid holds about as
    much independent evidence as the 7 × 7 windows that do not overlap, ``(64 / 128)² = 1/4`` of the
    count. 1 without ``window_px`` or for windows no wider than their step.
    """
    if window_px is None:
        return 1.0

    def fraction(centres: np.ndarray) -> float:
        step = float(np.median(np.diff(centres))) if len(centres) > 1 else float(window_px)
        return min(1.0, step / window_px)

    return fraction(np.asarray(centers_y_px)) * fraction(np.asarray(centers_x_px))


def _bic(solver: Any, weights: np.ndarray, target: np.ndarray, independent: float = 1.0) -> float:
    """Bayesian information criterion of a fit on the whitened windows with these weights.

    ``independent``: the fraction of the windows that are independent samples (:func:`independent_fraction`);
    the log-likelihood and the penalty count ``independent x`` the (weighted) windows.
    """
    n = float(weights.sum())
    rss = float(np.sum(weights * (target - solver.prediction) ** 2))
    if n <= 1.0 or rss <= 0.0:
        return -math.inf if rss <= 0.0 else math.inf
    n_independent = max(independent * n, 1.0 + 1e-9)
    return n_independent * math.log(rss / n) + solver.effective_params * math.log(n_independent)


def window_depth_and_sigma(cal: Any, pmap: PSFMap, frame: np.ndarray | None = None, *,
                           texture: WindowTexture | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-window depth, its σ and the reliable mask: ``(depth_um, sigma_um, reliable)``, ``(gy, gx)``.

    From the calibration's :meth:`~livepsf.depth.Calibration.depth_estimate` when it has one; any other
    depth model (anything with ``depth_um(pmap)``) gives σ = inf on invalid windows and 1 µm elsewhere,
    the fit's robust residual scale then setting the surface's σ. ``texture``: the frame's texture
    measured once by the caller (:func:`~livepsf.depth.texture.gate_texture`), passed on so it is not
    measured again.
    """
    estimate = getattr(cal, "depth_estimate", None)
    if estimate is not None:
        est = estimate(pmap, frame) if texture is None else estimate(pmap, frame, texture=texture)
        return (np.asarray(est.depth_um, np.float32), np.asarray(est.sigma_um, np.float32),
                np.asarray(est.reliable, bool))
    depth = np.asarray(cal.depth_um(pmap) if frame is None else cal.depth_um(pmap, frame), np.float32)
    if frame is not None and getattr(cal, "max_texture_coherence", None) is not None:
        from livepsf.depth.texture import reliable_windows

        reliable = reliable_windows(pmap, frame, cal.max_texture_coherence, texture=texture)
    else:
        reliable = ~pmap.invalid_mask
    return depth, np.where(reliable, 1.0, np.inf).astype(np.float32), reliable


def surface_depth(cal: Any, pmap: PSFMap, frame: np.ndarray | None = None, prior: str = "plane", *,
                  texture: WindowTexture | None = None, **options: Any) -> DepthSurface:
    """The fused depth surface of one PSF map with a calibration (:func:`fit_surface` on its windows).

    Parameters
    ----------
    cal
        A :class:`~livepsf.depth.Calibration` (made with the network that made ``pmap``).
    pmap
        The PSF map.
    frame
        The image the map was made from: enables the texture gate (windows of one-directional texture
        carry no information).
    prior
        ``"plane"``, ``"poly2"`` or ``"smooth"``.
    texture
        The frame's texture, when the caller measured it already for the same gate
        (:func:`~livepsf.depth.texture.gate_texture`): the gate then does not measure the frame again.
    options
        Passed to :func:`fit_surface` (``smoothness``, ``robust``, ``iterations``).

    Notes
    -----
    **Mirrored windows are read back with the other sign.** A window whose astigmatism sign the network
    got wrong reads the depth of ``-metric``: far from focus, twice the height off, on the other side.
    Its σ (which includes the chance of a wrong sign) keeps it from looking like an outlier, so it
    pulls the fit towards focus, and it pulls a column's mean (the paper's profile) even more. Its
    focus reading is still good, and the surface knows the side of focus: after a first fit, windows
    nearer the surface read with the other sign than as read, by more than
    :data:`~livepsf.depth.curve.MIRRORED_SCALES` noise scales (the rule the calibration curve uses to
    leave mirrored windows out, :func:`~livepsf.depth.curve.mirrored_points`), take the depth of
    ``-metric``, and the surface is fitted again. Near focus, where both readings are alike, nothing
    changes. :attr:`DepthSurface.window_depth_um` and :attr:`DepthSurface.mirrored` hold the result
    (calibrations without a metric, any depth model with only ``depth_um``, are fitted once).
    """
    depth, sigma, _ = window_depth_and_sigma(cal, pmap, frame, texture=texture)
    geometry = {"frame_shape": tuple(pmap.frame_shape), "window_px": pmap.window_px,
                "pixel_size_um": getattr(cal, "pixel_size_um", None) or pmap.optics.pixel_size_um}

    def fit(window_depth_um: np.ndarray) -> DepthSurface:
        return fit_surface(window_depth_um, sigma, pmap.centers_y, pmap.centers_x, prior, **geometry, **options)

    return _with_mirrored_read_back(cal, pmap, depth, sigma, fit)


def _with_mirrored_read_back(cal: Any, pmap: PSFMap, depth: np.ndarray, sigma: np.ndarray,
                             fit: Callable[[np.ndarray], DepthSurface]) -> DepthSurface:
    """``fit(depth)``, then again with the mirrored windows read back (see :func:`surface_depth`)."""
    surface = fit(depth)
    if not (hasattr(cal, "metric_map") and hasattr(cal, "metric_to_depth_um")):
        return surface
    mirrored_depth = np.asarray(cal.metric_to_depth_um(-np.asarray(cal.metric_map(pmap))), np.float32)
    informative = np.isfinite(depth) & np.isfinite(sigma) & np.isfinite(mirrored_depth)
    mirrored = np.zeros(depth.shape, dtype=bool)
    mirrored[informative] = mirrored_points(depth[informative], surface.depth_um[informative],
                                            mirrored_depth[informative])
    resolved = np.where(mirrored, mirrored_depth, depth).astype(np.float32)
    if mirrored.any():
        surface = fit(resolved)
    return dataclasses.replace(surface, window_depth_um=resolved, mirrored=mirrored)


def live_depth(cal: Any, pmap: PSFMap, frame: np.ndarray | None = None, prior: str = LIVE_PRIOR
               ) -> tuple[np.ndarray, np.ndarray | None, DepthSurface | None]:
    """Per-window depth, its σ and the fused surface of one live frame: ``(depth_um, sigma_um, surface)``.

    As :func:`surface_depth` (mirrored windows read back: ``depth_um`` holds what the surface used), but
    cheap enough for every frame: the texture gate (when the calibration has one) runs on the frame
    decimated by :data:`LIVE_GATE_STEP`. ``sigma_um`` is ``None`` for depth
    models without σ (anything with only ``depth_um(pmap)``; their windows are fused with equal
    weights). ``surface`` is ``None`` when too few windows carry information for ``prior``.
    """
    depth, sigma, _ = window_depth_and_sigma(cal, pmap)
    gate = getattr(cal, "max_texture_coherence", None)
    if frame is not None and gate is not None:
        sigma = np.where(_decimated_gate(frame, pmap, gate), sigma, np.inf).astype(np.float32)

    def fit(window_depth_um: np.ndarray) -> DepthSurface:
        # At most LIVE_ITERATIONS reweightings per stage: the next frame comes in 20 ms.
        return fit_surface(window_depth_um, sigma, pmap.centers_y, pmap.centers_x, prior,
                           iterations=LIVE_ITERATIONS, frame_shape=tuple(pmap.frame_shape),
                           pixel_size_um=pmap.optics.pixel_size_um, window_px=pmap.window_px)

    try:
        surface = _with_mirrored_read_back(cal, pmap, depth, sigma, fit)
    except InputError:
        return depth, (sigma if hasattr(cal, "depth_estimate") else None), None
    if surface.window_depth_um is not None:
        depth = surface.window_depth_um  # mirrored windows read back, as the surface used them
    return depth, (sigma if hasattr(cal, "depth_estimate") else None), surface


def _decimated_gate(frame: np.ndarray, pmap: PSFMap, max_coherence: float) -> np.ndarray:
    """The texture gate's coherence test on every :data:`LIVE_GATE_STEP`-th pixel.

    Smoothed by 0.75 decimated pixels (the full gate smooths by 1.5 frame pixels: pixel noise must not
    look like texture; here the decimation already averages less, and more smoothing blurs the lines).
    """
    from livepsf.depth.texture import window_coherence

    step = LIVE_GATE_STEP
    small = np.asarray(frame)[::step, ::step]
    geometry = dataclasses.replace(pmap, centers_y=(np.asarray(pmap.centers_y) + 0.5) / step - 0.5,
                                   centers_x=(np.asarray(pmap.centers_x) + 0.5) / step - 0.5,
                                   window_px=max(pmap.window_px // step, 4), frame_shape=small.shape)
    # Coherence only: the full gate's noise test does not survive the decimation (texture finer than
    # 2 x LIVE_GATE_STEP px aliases into what looks like pixel noise, so a 12-px checkerboard or
    # filaments would read "no texture"); blank windows live are left to the network's validity flag
    # and the surface fit's robust weights.
    return ~pmap.invalid_mask & (window_coherence(small, geometry, smooth_px=0.75) <= max_coherence)


# -- fits ------------------------------------------------------------------------------------------


def _normalised(centres: np.ndarray) -> np.ndarray:
    """Centres mapped to [-1, 1] (a well-conditioned polynomial design); 0 for a single centre."""
    span = float(np.ptp(centres)) if len(centres) > 1 else 0.0
    return (centres - centres.mean()) / (span / 2) if span > 0 else np.zeros_like(centres)


def _design(prior: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    y, x = yy.ravel(), xx.ravel()
    columns = [np.ones_like(x), x, y]
    if prior == "poly2":
        columns += [x * x, x * y, y * y]
    return np.column_stack(columns)


_POLY_TERMS = {"plane": ("1", "x", "y"), "poly2": ("1", "x", "y", "x2", "xy", "y2")}


class _PolySolver:
    """Weighted least squares on a polynomial design (whitened by σ), with its covariance."""

    def __init__(self, design: np.ndarray, inv_sigma: np.ndarray, obs: np.ndarray, target: np.ndarray) -> None:
        self.design = design
        self.rows = design[obs.ravel()] * inv_sigma[obs][:, None]
        self._target = target
        # Each window's outer product, so a weighted normal matrix is one product (the solves repeat).
        self._outer = (self.rows[:, :, None] * self.rows[:, None, :]).reshape(len(self.rows), -1)
        self.smoothness = None
        self.effective_params = float(design.shape[1])
        self.coef = np.zeros(design.shape[1])
        self.cov = np.zeros((design.shape[1],) * 2)
        self.prediction = np.zeros(len(self.rows))

    def solve(self, weights: np.ndarray, select: bool = False) -> np.ndarray:
        p = self.rows.shape[1]
        self._normal = (weights @ self._outer).reshape(p, p)
        rhs = (weights * self._target) @ self.rows
        try:  # normal equations: the design is normalised to [-1, 1], well conditioned
            self.coef = np.linalg.solve(self._normal, rhs)
        except np.linalg.LinAlgError:
            sw = np.sqrt(weights)
            self.coef = np.linalg.lstsq(self.rows * sw[:, None], self._target * sw, rcond=None)[0]
        self.prediction = self.rows @ self.coef
        return self.prediction

    def finish(self) -> None:
        self.cov = _inverse(self._normal)

    def surface(self) -> np.ndarray:
        return self.design @ self.coef

    def variance(self) -> np.ndarray:
        return np.einsum("ij,jk,ik->i", self.design, self.cov, self.design)

    def coefficients(self, cy: np.ndarray, cx: np.ndarray) -> dict[str, float]:
        """Coefficients in µm of the normalised coordinates (x, y in [-1, 1] over the window centres)."""
        names = _POLY_TERMS["plane" if len(self.coef) == 3 else "poly2"]
        return {f"c_{n}": float(c) for n, c in zip(names, self.coef)}


class _SmoothSolver:
    """Thin-plate smoothing on the window grid in a truncated Demmler-Reinsch basis, λ by REML."""

    def __init__(self, shape: tuple[int, int], inv_sigma: np.ndarray, obs: np.ndarray, target: np.ndarray,
                 smoothness: float | None) -> None:
        self.basis, self.penalty = _smooth_basis(shape)
        self.rows = self.basis[obs.ravel()] * inv_sigma[obs][:, None]
        self._target = target
        self._auto = smoothness is None
        self.smoothness: float | None = smoothness
        self.effective_params = float("nan")
        self.coef = np.zeros(self.basis.shape[1])
        self._posterior = np.zeros((self.basis.shape[1],) * 2)
        self.prediction = np.zeros(len(self.rows))

    def solve(self, weights: np.ndarray, select: bool = False) -> np.ndarray:
        """Fit with these robust weights; ``select``: choose λ afresh (when not given by the user)."""
        k = self.basis.shape[1]
        x = self.rows * np.sqrt(weights)[:, None]
        y = self._target * np.sqrt(weights)
        gram = x.T @ x
        rhs = x.T @ y
        self._gram = gram
        if not (select and self._auto) and self.smoothness is not None:
            a = gram + float(self.smoothness) * np.diag(self.penalty)
            try:
                self.coef = np.linalg.solve(a, rhs)
            except np.linalg.LinAlgError:  # λ = 0 with windows missing: the least-norm solution
                self.coef = np.linalg.lstsq(a, rhs, rcond=None)[0]
            self.prediction = self.rows @ self.coef
            return self.prediction
        # A whisper of ridge keeps the Cholesky defined where windows are missing (fewer data than
        # modes): those modes are then set by the penalty alone, as they should be.
        ridged = gram + np.eye(k) * 1e-9 * max(float(np.trace(gram)) / k, 1e-300)
        inv_chol = np.linalg.inv(np.linalg.cholesky(ridged))
        # scipy's eigh: numpy's (divide and conquer) is 10x slower on this size when the cores are busy.
        mu, vecs = scipy.linalg.eigh((inv_chol * self.penalty) @ inv_chol.T, check_finite=False)
        mu = np.maximum(mu, 0.0)
        z = vecs.T @ (inv_chol @ rhs)
        lam = _select_smoothness(mu, z, float(y @ y), max(int(np.count_nonzero(weights)), 4))
        f = 1.0 / (1.0 + lam * mu)
        self.smoothness = lam
        self.coef = (inv_chol.T @ vecs) @ (f * z)
        self.prediction = self.rows @ self.coef
        return self.prediction

    def finish(self) -> None:
        """Posterior covariance and degrees of freedom at the final weights and λ."""
        a = self._gram + float(self.smoothness) * np.diag(self.penalty)
        self._posterior = _inverse(a)
        self.effective_params = float(np.sum(self._posterior * self._gram))

    def surface(self) -> np.ndarray:
        return self.basis @ self.coef

    def variance(self) -> np.ndarray:
        return np.einsum("ij,jk,ik->i", self.basis, self._posterior, self.basis)

    def coefficients(self, cy: np.ndarray, cx: np.ndarray) -> dict[str, float]:
        return {}


def _select_smoothness(mu: np.ndarray, z: np.ndarray, yy: float, n: int) -> float:
    """λ maximising the restricted likelihood (REML) over a log grid, in the eigenbasis of the fit.

    ``mu``: the penalty's eigenvalues relative to the data weight, ``z``: the data in that basis,
    ``yy``: the data's weighted sum of squares, ``n``: the number of windows with weight.
    """
    positive = mu > 1e-12 * max(float(mu.max()), 1e-300)
    ref = float(np.median(mu[positive])) if positive.any() else 1.0
    lambdas = 10.0 ** _LOG_LAMBDA / ref
    f = 1.0 / (1.0 + lambdas[:, None] * mu[None, :])
    # The data in the eigenbasis: z_j ~ N(0, τ² (1 + 1 / (λ μ_j))) for the penalised directions, the
    # quadrics (μ = 0) are fixed effects and drop out of the restricted likelihood; τ² is profiled out.
    n_random = max(n - int(np.count_nonzero(~positive)), 1)
    tau2 = np.maximum(yy - np.sum(z**2 * f, axis=1), 1e-300) / n_random
    log_a = np.log1p(1.0 / np.maximum(lambdas[:, None] * mu[None, positive], 1e-300))
    score = n_random * np.log(tau2) + log_a.sum(axis=1)
    return float(lambdas[int(np.argmin(score))])


@functools.lru_cache(maxsize=8)
def _smooth_basis(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The :data:`SMOOTH_MODES` smoothest eigenvectors of the grid's roughness penalty and its eigenvalues.

    Penalty ``Σ (D_xxx s)² + 3 (D_xxy s)² + 3 (D_xyy s)² + (D_yyy s)²`` (third differences where the
    grid has them): its null space is the second-order polynomials (6 zero eigenvalues), so a bowl or a
    tilt costs nothing and only the departures from a quadric are penalised. (With second differences a
    strongly curved sample pulls λ down until the noise is fitted too.) Read-only, cached per shape.
    """
    gy, gx = shape

    def diff(n: int, order: int) -> np.ndarray:
        d = np.eye(n)
        for _ in range(order):
            d = d[1:] - d[:-1]
        return d

    terms = [(1.0, diff(gy, 0), diff(gx, 3)), (3.0, diff(gy, 1), diff(gx, 2)),
             (3.0, diff(gy, 2), diff(gx, 1)), (1.0, diff(gy, 3), diff(gx, 0))]
    penalty = np.zeros((gy * gx, gy * gx))
    for weight, dy, dx in terms:
        d = np.kron(dy, dx)
        penalty += weight * (d.T @ d)
    vals, vecs = np.linalg.eigh(penalty)
    k = min(SMOOTH_MODES, gy * gx)
    n_null = min(6, gy * gx)
    vals = np.where(np.arange(len(vals)) < n_null, 0.0, np.maximum(vals, 0.0))[:k]  # quadrics unpenalised
    basis = np.ascontiguousarray(vecs[:, :k])
    basis.flags.writeable = False
    vals.flags.writeable = False
    return basis, vals


def _robust_weights(solver: Any, target: np.ndarray, n_coef: int, iterations: int,
                    start: np.ndarray | None = None) -> np.ndarray:
    """Huber, then bisquare with the Huber stage's scale (as :func:`robust_line_fit`), around ``solver``.

    ``start``: initial weights (default all 1). The smooth prior chooses λ at the start and at the
    end (each choice costs an eigendecomposition; the solves between them keep λ and are cheap).
    """
    weights = np.ones(len(target)) if start is None else start
    prediction = solver.solve(weights, select=True)
    scale = 0.0
    tiny = 1e-12 * (1.0 + float(np.abs(target).max()))
    stages: list[Callable[[np.ndarray, float], np.ndarray]] = [_huber, _bisquare]
    for stage, weight_fn in enumerate(stages):
        for _ in range(iterations):
            resid = target - prediction
            if stage == 0:
                scale = 1.4826 * _median(np.abs(resid - _median(resid)))
                if scale <= tiny:
                    return weights
            new_weights = weight_fn(resid, scale)
            if np.count_nonzero(new_weights) < n_coef + 1:
                break
            new_prediction = solver.solve(new_weights)
            converged = float(np.max(np.abs(new_prediction - prediction))) < 1e-2  # whitened: σ / 100
            weights, prediction = new_weights, new_prediction
            if converged:
                break
    solver.solve(weights, select=True)
    return weights  # the solver holds the fit with these weights


def _median(a: np.ndarray) -> float:
    """The median of a 1-D array (np.median's bookkeeping costs more than the partition on 200 values)."""
    n = len(a)
    half = n // 2
    if n % 2:
        return float(np.partition(a, half)[half])
    part = np.partition(a, (half - 1, half))
    return 0.5 * float(part[half - 1] + part[half])


def _huber(resid: np.ndarray, scale: float) -> np.ndarray:
    a = np.abs(resid) / (_HUBER_K * scale)
    return np.where(a <= 1.0, 1.0, 1.0 / np.maximum(a, 1e-12))


def _bisquare(resid: np.ndarray, scale: float) -> np.ndarray:
    u = resid / (_BISQUARE_C * scale)
    return np.where(np.abs(u) < 1.0, (1.0 - u**2) ** 2, 0.0)

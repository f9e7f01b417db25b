"""Depth from astigmatism: depth metrics, tilted-grid calibration and calibrated depth maps.

Paper Sections II-H and III-E. A weak cylindrical lens adds a fixed astigmatism ``A_L`` to every PSF.
Because PSF(d, A) == PSF(-d, -A), a network reporting the canonical form (focus >= 0) sees
``(|d|, +A_L)`` above focus and ``(|d|, -A_L)`` below it: the side of focus is in the sign of the
measured astigmatism along the lens direction. Three metrics turn a Z-3 PSF map into a number that
grows linearly with the distance to the focal plane:

``"signed"``
    ``focus * sign(<astig, u_L>)`` with ``u_L`` the lens astigmatism direction (a unit vector in the
    ``(astig_0, astig_45)`` plane). Equals the signed defocus ``d`` in waves when the network is right.
``"projected"``
    ``focus * clip(<astig, u_L> / s_L, -1, 1)`` with ``s_L`` the lens strength (waves) measured on the
    calibration frames: the same as ``"signed"`` away from focus, but near focus, where the sign cannot
    be seen (PSF(0, A) == PSF(0, -A)) and a network hedges towards zero astigmatism, it passes smoothly
    through zero instead of jumping between +focus and -focus.
``"eq14"``
    The paper's eq. 14, ``focus * (2 axis / pi - 1)``, with the axis measured from
    ``theta_L - pi/4`` (``theta_L`` the lens axis), so that a lens at 45° gives exactly the paper's
    formula and any other lens orientation works too. About ``-d / 2``.

**Texture gate.** Astigmatism can only be seen in a window whose texture has structure in at least two
directions: a window holding only parallel lines (most windows of a printed grid of 200 µm squares at
10×) shows the blur across the lines and nothing along them, so its astigmatism, and hence the side of
focus, is not determined by the image and a network's answer there follows the line orientation. When
the frames are at hand, windows whose structure-tensor coherence exceeds ``max_texture_coherence`` are
treated like invalid windows (excluded from the fit; their depth filled from their neighbours).

A calibration fits the metric against the known height of a tilted printed grid, or of a flat sample
at known Z stage positions (:func:`calibrate_zstack`), with a robust line (classical calibration:
metric = a * height + b, inverted to height = slope * metric + offset) and a monotone calibration curve
(:mod:`~livepsf.depth.curve`; the measured relation is S-shaped), reports in-sample and
leave-one-frame-out errors, and keeps every metric's figures; the one whose curve predicts held-out
frames best is used. :class:`Calibration` is a pydantic model stored as JSON.

Layout (one job per module; each imports only from modules above it):

- :mod:`~livepsf.depth.metrics`: the depth metrics, lens direction and strength.
- :mod:`~livepsf.depth.texture`: the texture gate (:func:`~livepsf.depth.texture.window_texture`,
  :func:`reliable_windows`; measured once per frame and passed down as ``texture=``).
- :mod:`~livepsf.depth.robust`: robust line fits.
- :mod:`~livepsf.depth.profiles`: calibration points, the line fit, tilted-grid profiles.
- :mod:`~livepsf.depth.curve`: the monotone calibration curve, leave-one-frame-out residuals.
- :mod:`~livepsf.depth.uncertainty`: depth σ per window.
- :mod:`~livepsf.depth.fit`: the fit every calibration shares (checks, lens, each metric's curve with
  its fallback to the line, the choice of metric, the warnings).
- :mod:`~livepsf.depth.calibration`: the calibration file model (:class:`Calibration`: JSON of format
  1 and 2, validation, depth and σ per window, built from a fit).
- :mod:`~livepsf.depth.tilted_grid`: the tilted-grid calibration (:func:`calibrate_tilted_grid`,
  :func:`calibrate_psf_maps`).
- :mod:`~livepsf.depth.zstack`: the z-stack calibration (:func:`calibrate_zstack`, :func:`symmetric_focus_z_um`,
  :func:`zstack_focus_z_um`).
- :mod:`~livepsf.depth.compare`: two calibrations of one microscope compared like with like
  (:func:`compare_slopes`).
- :mod:`~livepsf.depth.surface`: windows fused into one surface, and the live depth step.
- :mod:`~livepsf.depth.outputs`: depth-map files.
- :mod:`~livepsf.depth.plot`: the calibration plot; the calibration's files (JSON and plot).
- :mod:`~livepsf.depth.discovery`: the calibration to use with a network when none is named.
"""

from __future__ import annotations

from livepsf.depth.calibration import (
    CALIBRATION_STRIDE_PX,
    FORMAT,
    Calibration,
    CalibrationPoint,
    MetricSummary,
    TiltResidual,
    ZStackResidual,
)
from livepsf.depth.compare import SlopeComparison, compare_slopes
from livepsf.depth.curve import (
    CURVE_CHOICES,
    CURVES,
    CalibrationCurve,
    CurveFit,
    fit_curve,
    fit_monotone_curve,
    held_out_residuals,
)
from livepsf.depth.discovery import calibration_for_model, find_calibration
from livepsf.depth.fit import LOFO_WARN_MARGIN_UM, LOFO_WARN_RATIO, POOR_FIT_R2
from livepsf.depth.metrics import (
    METRICS,
    Metric,
    depth_metric,
    eq14_metric,
    estimate_lens_direction,
    estimate_lens_strength,
    projected_metric,
    signed_metric,
)
from livepsf.depth.outputs import depth_stats, write_depth_outputs
from livepsf.depth.plot import plot_calibration, write_calibration_files
from livepsf.depth.profiles import (
    CalibrationPoints,
    LineFit,
    MetricFit,
    TiltProfile,
    fit_metric_profiles,
    fit_points_line,
    profile_along_axis,
)
from livepsf.depth.robust import robust_line_fit
from livepsf.depth.surface import PRIORS, DepthSurface, fit_surface, surface_depth
from livepsf.depth.texture import MAX_TEXTURE_COHERENCE, reliable_windows, window_coherence
from livepsf.depth.tilted_grid import calibrate_psf_maps, calibrate_tilted_grid
from livepsf.depth.uncertainty import DepthEstimate, DepthUncertainty, fit_depth_uncertainty, metric_sigma
from livepsf.depth.zstack import calibrate_zstack, symmetric_focus_z_um, zstack_focus_z_um

__all__ = [
    "CALIBRATION_STRIDE_PX",
    "CURVES",
    "CURVE_CHOICES",
    "FORMAT",
    "LOFO_WARN_MARGIN_UM",
    "LOFO_WARN_RATIO",
    "MAX_TEXTURE_COHERENCE",
    "METRICS",
    "POOR_FIT_R2",
    "PRIORS",
    "Calibration",
    "CalibrationCurve",
    "CalibrationPoint",
    "CalibrationPoints",
    "CurveFit",
    "DepthEstimate",
    "DepthSurface",
    "DepthUncertainty",
    "LineFit",
    "Metric",
    "MetricFit",
    "MetricSummary",
    "SlopeComparison",
    "TiltProfile",
    "TiltResidual",
    "ZStackResidual",
    "calibrate_psf_maps",
    "calibrate_tilted_grid",
    "calibrate_zstack",
    "calibration_for_model",
    "compare_slopes",
    "depth_metric",
    "depth_stats",
    "eq14_metric",
    "estimate_lens_direction",
    "estimate_lens_strength",
    "find_calibration",
    "fit_curve",
    "fit_depth_uncertainty",
    "fit_metric_profiles",
    "fit_monotone_curve",
    "fit_points_line",
    "fit_surface",
    "held_out_residuals",
    "metric_sigma",
    "plot_calibration",
    "profile_along_axis",
    "projected_metric",
    "reliable_windows",
    "robust_line_fit",
    "signed_metric",
    "surface_depth",
    "symmetric_focus_z_um",
    "window_coherence",
    "write_calibration_files",
    "write_depth_outputs",
    "zstack_focus_z_um",
]

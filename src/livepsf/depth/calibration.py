"""The depth calibration file: :class:`Calibration`, a pydantic model stored as JSON, and its use.

Reading (format 2, and format 1 files without a curve) with a clear :class:`~livepsf.errors.InputError`
for a missing, corrupt or invalid file or a calibration of another network; writing without ever
replacing a file; depth (and its σ) per window of a PSF map; and building a calibration from the shared
fit's results (:func:`assemble_calibration`, :func:`with_measured_uncertainty`). The fits themselves are
in :mod:`~livepsf.depth.fit`, :mod:`~livepsf.depth.tilted_grid` and :mod:`~livepsf.depth.zstack`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from livepsf.depth.curve import CalibrationCurve

# The fit's names lived here before it got its own module: re-exported for code that imports them from here.
from livepsf.depth.fit import (
    LINE_BETTER_MARGIN_UM,
    LOFO_WARN_MARGIN_UM,
    LOFO_WARN_RATIO,
    POOR_FIT_R2,
    MetricResult,
    check_calibration_maps,
    choose_metric,
    fit_metrics,
    fit_notes,
    lens_from_maps,
)
from livepsf.depth.metrics import METRICS, Metric, depth_metric
from livepsf.depth.robust import r_squared
from livepsf.depth.texture import WindowTexture, reliable_windows
from livepsf.depth.uncertainty import DepthEstimate, DepthUncertainty, fit_depth_uncertainty, metric_sigma
from livepsf.errors import InputError
from livepsf.mapping import PSFMap

__all__ = [
    "CALIBRATION_STRIDE_PX",
    "FORMAT",
    "LINE_BETTER_MARGIN_UM",
    "LOFO_WARN_MARGIN_UM",
    "LOFO_WARN_RATIO",
    "POOR_FIT_R2",
    "Calibration",
    "CalibrationPoint",
    "MetricResult",
    "MetricSummary",
    "Source",
    "TiltAxis",
    "TiltResidual",
    "ZStackResidual",
    "assemble_calibration",
    "check_calibration_maps",
    "choose_metric",
    "fit_metrics",
    "fit_notes",
    "lens_from_maps",
    "package_version",
    "with_measured_uncertainty",
]

TiltAxis = Literal["x", "y"]
Source = Literal["tilted-grid", "z-stack"]
FORMAT = "livepsf-depth-calibration"
#: Window step (px) of the PSF maps a calibration is made from by default (``livepsf calibrate``), and so of
#: the depth maps made with it: half the live view's. Windows every 32 px of a printed grid centre more of
#: them on a line crossing, the only windows that read depth there, and a column's mean and the fused
#: surface average 4x as many (shipped ``default``, simulated grid, 6 test frames at 3° / 6° / 10°: fused
#: plane 2.05 / 1.69 / 2.82 µm at 64 px, 0.83 / 1.51 / 1.89 µm at 32 px; column profile 3.88 / 4.97 / 7.74
#: → 2.75 / 3.41 / 7.05 µm; over 4 draws of the frames plane 2.35 / 2.27 / 4.57 → 1.54 / 1.80 / 2.90 µm).
#: The frame pass computes the trunk once, so a finer step costs little.
CALIBRATION_STRIDE_PX = 32


class TiltResidual(BaseModel):
    """Fit quality for one calibration frame."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    tilt_deg: float
    in_focus_px: float = Field(description="in-focus position along the tilt axis (given or estimated)")
    in_focus_estimated: bool
    depth_range_um: float = Field(description="height difference across the frame along the tilt axis")
    n_points: int
    r2: float
    mean_abs_error_um: float
    sd_abs_error_um: float
    relative_error_pct: float = Field(description="mean |error| / depth range, in percent")
    lofo_mean_abs_error_um: float | None = Field(
        default=None, description="mean |error| of this frame predicted by a fit without it (None: not possible)")


class ZStackResidual(BaseModel):
    """Fit quality at one stage position of a z-stack calibration."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    z_um: float = Field(description="stage position")
    height_um: float = Field(description="known height of the sample relative to the focal plane")
    n_points: int
    n_windows: int = Field(description="reliable windows of the frame")
    metric: float = Field(description="median metric of the reliable windows")
    mean_abs_error_um: float
    lofo_mean_abs_error_um: float | None = Field(
        default=None, description="mean |error| predicted by a fit without this stage position")


class MetricSummary(BaseModel):
    """The figures of one metric's fit (all metrics are kept for comparison)."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    metric: Metric
    slope_um_per_unit: float
    offset_um: float
    r2: float
    mean_abs_error_um: float
    sd_abs_error_um: float
    curve_mean_abs_error_um: float | None = Field(
        default=None, description="in-sample mean |error| of the calibration curve fitted on this metric")
    lofo_mean_abs_error_um: float | None = Field(
        default=None, description="leave-one-frame-out mean |error| of that curve (None: one frame)")
    line_lofo_mean_abs_error_um: float | None = Field(
        default=None, description="leave-one-frame-out mean |error| of the line (monotone calibrations)")


class CalibrationPoint(BaseModel):
    """One profile point of the fit, kept so the plot can be redrawn from the JSON alone."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    frame: int
    tilt_deg: float | None = Field(description="tilt of the frame (None for a z-stack)")
    position_px: float | None = Field(description="position along the tilt axis (None: a z-stack frame's median)")
    height_um: float
    metric: float
    z_um: float | None = Field(default=None, description="stage position (z-stack calibrations)")


class Calibration(BaseModel):
    """Depth calibration: converts a PSF map of one network into depth in µm.

    ``depth_um = curve(metric)``, with the metric computed from the PSF map and the lens direction as
    in :func:`depth_metric` and the curve a :class:`~livepsf.depth.curve.CalibrationCurve` (format 2;
    monotone, or the line). ``slope_um_per_unit`` and ``offset_um`` always hold the robust line's fit
    (kept for comparison); files of format 1 have no curve and use the line, exactly as before. Saved
    as JSON (:meth:`save`, :meth:`load`).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), ser_json_inf_nan="constants")

    format: Literal["livepsf-depth-calibration"] = FORMAT
    format_version: Literal[1, 2] = 2
    source: Source = Field(default="tilted-grid", description="what the calibration was fitted on")
    metric: Metric
    slope_um_per_unit: float
    offset_um: float
    lens_direction: tuple[float, float] = Field(description="unit vector in the (astig_0, astig_45) plane")
    lens_strength_waves: float = Field(gt=0, description="lens astigmatism measured along lens_direction")
    tilt_axis: TiltAxis | None = Field(description="axis along which the tilted grid's height grows "
                                       "(None for a z-stack)")
    pixel_size_um: float = Field(gt=0)
    model_name: str
    model_sha256: str
    psf_model: str
    r2: float
    mean_abs_error_um: float
    sd_abs_error_um: float
    per_tilt: list[TiltResidual]
    metrics: list[MetricSummary] = Field(description="figures of every metric that was fitted")
    points: list[CalibrationPoint] = Field(default_factory=list)
    window_px: int | None = None
    stride_px: int | None = None
    max_texture_coherence: float | None = Field(
        default=None, description="windows with more anisotropic texture were left out (None: no gate)")
    created: datetime
    livepsf_version: str
    notes: str = ""
    curve: CalibrationCurve | None = Field(
        default=None, description="metric -> height (format 2); None: the line slope/offset (format 1)")
    lofo_mean_abs_error_um: float | None = Field(
        default=None, description="leave-one-frame-out mean |error| of the curve (None: one frame)")
    per_z: list[ZStackResidual] = Field(default_factory=list, description="z-stack: per stage position")
    uncertainty: DepthUncertainty | None = Field(
        default=None, description="per-window depth σ measured on the calibration frames (None: older files)")
    dihedral_average: bool = Field(
        default=False, description="fitted on PSF maps averaged over the frame's 8 rotations and mirrors "
        "(False: plain maps, and files written before this field existed)")

    @field_validator("lens_direction")
    @classmethod
    def _unit_direction(cls, v: tuple[float, float]) -> tuple[float, float]:
        norm = math.hypot(*v)
        if not math.isfinite(norm) or abs(norm - 1.0) > 1e-3:
            raise ValueError(f"lens_direction must be a unit vector, got {v}")
        return v

    @field_validator("slope_um_per_unit", "offset_um", "pixel_size_um")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    @field_validator("slope_um_per_unit")
    @classmethod
    def _nonzero(cls, v: float) -> float:
        if v == 0:
            raise ValueError("slope must not be zero")
        return v

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the calibration as JSON. Refuses to replace an existing file unless ``overwrite``."""
        path = Path(path)
        if path.exists() and not overwrite:
            raise InputError(f"{path}: already exists; calibrations are never overwritten, "
                             "choose another name")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path, model: Any = None) -> Calibration:
        """Read and validate a calibration JSON file.

        Parameters
        ----------
        path
            The JSON file written by :meth:`save`.
        model
            Optional network (or PSF map) the calibration will be used with; a calibration made with
            another network is refused (see :meth:`check_model`).

        Raises
        ------
        InputError
            Missing, unreadable, corrupt or invalid file, or a mismatched model.
        """
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: no such calibration file")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path}: not a readable JSON calibration ({exc})") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise InputError(f"{path}: not a livepsf depth calibration (missing format '{FORMAT}')")
        try:
            cal = cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(root)"
            raise InputError(f"{path}: invalid calibration: {where}: {first['msg']} "
                             f"({exc.error_count()} problem(s))") from None
        if model is not None:
            cal.check_model(model)
        return cal

    # -- use --------------------------------------------------------------------------------------
    def check_model(self, model: Any) -> None:
        """Refuse a network (or a PSF map made by one) other than the one this calibration was made with.

        ``model`` may be a loaded network (anything with a ``.card`` holding ``name`` and
        ``weights_sha256``), a model card, or a :class:`PSFMap`.

        Raises
        ------
        InputError
            The weights' hash differs (or, when a hash is missing, the name does).
        """
        name, sha = _model_identity(model)
        if sha and self.model_sha256:
            if sha != self.model_sha256:
                raise InputError(
                    f"calibration was made with model {self.model_name!r} "
                    f"(weights {self.model_sha256[:12]}), "
                    f"not with {name!r} (weights {sha[:12]}); calibrate again with this model")
        elif name and name != self.model_name:
            raise InputError(f"calibration was made with model {self.model_name!r}, not {name!r}")

    def mapping_dihedral_average(self, requested: bool = False) -> tuple[bool, str]:
        """Whether depth maps for this calibration should be dihedral averages, and a warning if any.

        The metric reads a little differently on averaged maps, so depth follows the calibration: an
        averaged calibration always maps averaged; a plain one maps plain unless ``requested``, which
        is honoured with a warning (the calibration does not match those maps).

        Returns
        -------
        tuple
            ``(average, warning)``; ``warning`` is ``""`` when nothing is amiss.
        """
        if requested and not self.dihedral_average:
            return True, ("--dihedral-average with a calibration fitted on plain PSF maps: depth may be a "
                          "little off; calibrate with --dihedral-average for averaged maps")
        return self.dihedral_average, ""

    def metric_map(self, pmap: PSFMap) -> np.ndarray:
        """The calibration's depth metric on the grid of ``pmap``, ``(gy, gx)`` float32."""
        return depth_metric(pmap, self.metric, self.lens_direction, self.lens_strength_waves)

    def metric_to_depth_um(self, metric: np.ndarray) -> np.ndarray:
        """Depth (µm, height relative to the focal plane) for metric values of any shape, float32.

        Through the calibration curve (format 2), or the line ``slope_um_per_unit * metric + offset_um``
        (format 1 files, no curve). Beyond the calibrated metric range the curve continues as a straight
        line with its end slope. NaN stays NaN.
        """
        if self.curve is not None:
            return self.curve.height_um(metric)
        # In the metric's own precision, as format-1 calibrations always computed it.
        return (self.slope_um_per_unit * np.asarray(metric) + self.offset_um).astype(np.float32)

    def depth_per_metric_um(self, metric: np.ndarray) -> np.ndarray:
        """Local derivative d depth / d metric (µm per metric unit) at metric values of any shape, float32.

        Turns a metric σ into a depth σ; constant (the slope) for a line.
        """
        if self.curve is not None:
            return self.curve.height_per_metric_um(metric)
        m = np.asarray(metric, dtype=np.float64)
        return np.where(np.isnan(m), np.nan, self.slope_um_per_unit).astype(np.float32)

    def depth_um(self, pmap: PSFMap, frame: np.ndarray | None = None, median_windows: int = 1, *,
                 texture: WindowTexture | None = None, window_depth_um: np.ndarray | None = None) -> np.ndarray:
        """Depth (height relative to the focal plane) in µm on the window grid, ``(gy, gx)`` float32.

        Invalid windows hold the depth of the values the mapper filled in from their neighbours; use
        ``pmap.invalid_mask`` to hide them. With ``frame`` (the image the map was made from) and a
        calibration made with the texture gate, windows of one-directional texture are also filled from
        their reliable neighbours (:func:`reliable_windows`). ``texture``: the frame's texture measured
        once by the caller (:func:`~livepsf.depth.texture.gate_texture`), standing in for ``frame``.

        ``median_windows`` > 1 replaces each reliable window's depth by the median of the reliable
        windows in a ``median_windows``-wide square around it, for smooth surfaces: it removes isolated
        windows whose astigmatism sign the network got wrong (they read twice the depth, mirrored).

        ``window_depth_um``: the windows' depth to use instead of this calibration's reading of ``pmap``
        (``(gy, gx)``), e.g. :attr:`~livepsf.depth.surface.DepthSurface.window_depth_um`, where a fused
        surface read the mirrored windows back with the other sign; gated and filled as above.
        """
        from livepsf.mapping import fill_invalid

        self.check_model(pmap)
        if int(median_windows) != median_windows or median_windows < 1:
            raise InputError(f"median_windows must be a positive integer, got {median_windows}")
        if window_depth_um is None:
            depth = self.metric_to_depth_um(self.metric_map(pmap))
        else:
            depth = np.asarray(window_depth_um, dtype=np.float32)
            if depth.shape != pmap.grid_shape:
                raise InputError(f"window depths of shape {depth.shape} for a map of {pmap.grid_shape} windows")
        gated = (frame is not None or texture is not None) and self.max_texture_coherence is not None
        ok = reliable_windows(pmap, frame, self.max_texture_coherence, texture=texture)
        if median_windows > 1 and ok.any():
            depth = _masked_median(depth, ok, int(median_windows))
        if gated and ok.any():
            depth = fill_invalid(depth, ~ok)
        return depth

    def depth_estimate(self, pmap: PSFMap, frame: np.ndarray | None = None, *,
                       texture: WindowTexture | None = None) -> DepthEstimate:
        """Each window's own depth with its σ (µm): see :mod:`livepsf.depth.uncertainty`.

        Windows flagged invalid, and, when ``frame`` (or its ``texture``, as for :meth:`depth_um`) is
        given and the calibration used the texture gate, windows of one-directional texture, get
        σ = inf; their depth is the window's own value, not filled from neighbours (:meth:`depth_um`
        fills them). Calibrations without a measured σ model (files written before it existed) use their
        mean |error| x 1.25 (the σ of a normal error with that mean |error|) for every reliable window.
        """
        self.check_model(pmap)
        metric = self.metric_map(pmap)
        depth = self.metric_to_depth_um(metric)
        ok = reliable_windows(pmap, frame, self.max_texture_coherence, texture=texture)
        if self.uncertainty is not None:
            net = metric_sigma(pmap, self.metric, self.lens_direction, self.lens_strength_waves)
            sigma = self.uncertainty.sigma_um(depth, net)
        else:
            sigma = np.full(depth.shape, 1.25 * self.mean_abs_error_um, dtype=np.float32)
        sigma = np.where(ok & np.isfinite(depth), sigma, np.inf).astype(np.float32)
        return DepthEstimate(depth_um=depth.astype(np.float32), sigma_um=sigma)

    def depth_um_full(self, pmap: PSFMap, shape: tuple[int, int] | None = None,
                      frame: np.ndarray | None = None, median_windows: int = 1, *,
                      texture: WindowTexture | None = None, window_depth_um: np.ndarray | None = None
                      ) -> np.ndarray:
        """Full-frame depth map in µm (bilinear between window centres, as :meth:`PSFMap.upsample`).

        Arguments as :meth:`depth_um`.
        """
        grid = self.depth_um(pmap, frame, median_windows, texture=texture, window_depth_um=window_depth_um)
        # PSFMap.upsample interpolates named parameter grids; carry the depth grid in a one-parameter
        # map (G-1's "variance" slot) so the interpolation is exactly the mapper's.
        carrier = dataclasses.replace(pmap, params={"variance": grid}, psf_model="G-1", sigma={})
        return carrier.upsample(shape, name="variance")

    def summary(self) -> str:
        """One line for people: metric, curve, slope, R², in-sample and leave-one-frame-out error."""
        curve = ("line" if self.curve is None or self.curve.kind == "linear"
                 else f"monotone curve ({len(self.curve.metric_knots)} knots)")
        lofo = ("" if self.lofo_mean_abs_error_um is None
                 else f", leave-one-frame-out {self.lofo_mean_abs_error_um:.2f} µm")
        averaged = ", dihedral-averaged maps" if self.dihedral_average else ""
        return (f"{self.metric} metric, {curve}: line {self.slope_um_per_unit:.3f} µm/unit, "
                f"offset {self.offset_um:+.2f} µm, R² {self.r2:.4f}, "
                f"mean |error| {self.mean_abs_error_um:.2f} ± {self.sd_abs_error_um:.2f} µm{lofo}{averaged}")


def with_measured_uncertainty(cal: Calibration,
                              windows: Sequence[tuple[PSFMap, np.ndarray | None, np.ndarray]], *,
                              textures: Sequence[WindowTexture | None] | None = None) -> Calibration:
    """``cal`` with its per-window σ model measured on calibration frames of known height.

    ``windows`` holds, per calibration frame, its PSF map, the frame (for the texture gate, or ``None``)
    and the known height of every window (``(gy, gx)`` µm relative to the focal plane). Reliable windows
    only (the same gate as the calibration). With too few of them the calibration keeps no σ model and
    says so in its notes. ``textures``: each frame's texture, already measured for the calibration's
    gate (:func:`~livepsf.depth.texture.gate_texture`), so it is not measured again.
    """
    depths, heights, nets = [], [], []
    textures = list(textures) if textures is not None else [None] * len(windows)
    for (pmap, frame, height), texture in zip(windows, textures, strict=True):
        est = cal.depth_estimate(pmap, frame, texture=texture)
        ok = est.reliable
        depths.append(est.depth_um[ok])
        heights.append(np.asarray(height, dtype=np.float64)[ok])
        net = metric_sigma(pmap, cal.metric, cal.lens_direction, cal.lens_strength_waves)
        nets.append(None if net is None else net[ok])
    network_sigma = None if any(n is None for n in nets) else np.concatenate(nets)
    try:
        model = fit_depth_uncertainty(np.concatenate(depths), np.concatenate(heights), network_sigma)
    except InputError as exc:
        note = f"no per-window σ measured ({exc}); σ = 1.25 x mean |error|"
        return cal.model_copy(update={"notes": "; ".join(n for n in (cal.notes, note) if n)})
    return cal.model_copy(update={"uncertainty": model})


def assemble_calibration(pmaps: Sequence[PSFMap], results: dict[str, MetricResult], chosen: str,
                         u: tuple[float, float], strength: float, pixel_size_um: float,
                         gate: float | None, **fields: Any) -> Calibration:
    """The :class:`Calibration` of the chosen metric's fit; ``fields`` add the source-specific ones."""
    result = results[chosen]
    first = pmaps[0]
    return Calibration(
        metric=chosen,
        slope_um_per_unit=result.fit.line.slope_um,
        offset_um=result.fit.line.offset_um,
        curve=result.fit.curve,
        lens_direction=u,
        lens_strength_waves=strength,
        pixel_size_um=pixel_size_um,
        model_name=first.model_name,
        model_sha256=first.model_sha256,
        psf_model=first.psf_model,
        r2=result.r2,
        mean_abs_error_um=result.fit.mean_abs_error_um,
        sd_abs_error_um=float(np.std(np.abs(result.fit.residuals_um))),
        lofo_mean_abs_error_um=result.lofo_mean_abs_error_um(),
        metrics=[_summary(results[n]) for n in METRICS if n in results],
        window_px=int(first.window_px),
        stride_px=int(first.stride_px),
        max_texture_coherence=gate,
        dihedral_average=bool(first.dihedral_average),  # check_calibration_maps refused a mixture
        created=datetime.now(timezone.utc),
        livepsf_version=package_version(),
        notes=fit_notes(result),
        **fields,
    )


def _summary(result: MetricResult) -> MetricSummary:
    line = result.fit.line
    res = np.abs(line.residuals_um)
    return MetricSummary(metric=result.name, slope_um_per_unit=line.slope_um, offset_um=line.offset_um,
                         r2=r_squared(line.heights_um, line.heights_um + line.residuals_um),
                         mean_abs_error_um=float(res.mean()), sd_abs_error_um=float(res.std()),
                         curve_mean_abs_error_um=result.fit.mean_abs_error_um,
                         lofo_mean_abs_error_um=result.lofo_mean_abs_error_um(),
                         line_lofo_mean_abs_error_um=result.line_lofo_mean_abs_error_um())


def _masked_median(grid: np.ndarray, ok: np.ndarray, size: int) -> np.ndarray:
    """Median of the ``ok`` cells in a ``size``-wide square around each ``ok`` cell; others unchanged."""
    gy, gx = grid.shape
    r = size // 2
    out = np.array(grid, dtype=np.float32, copy=True)
    for i, j in zip(*np.nonzero(ok)):
        sl = (slice(max(0, i - r), min(gy, i + r + 1)), slice(max(0, j - r), min(gx, j + r + 1)))
        out[i, j] = np.median(grid[sl][ok[sl]])
    return out


def _model_identity(model: Any) -> tuple[str, str]:
    if isinstance(model, PSFMap):
        return model.model_name, model.model_sha256
    card = getattr(model, "card", model)
    name = getattr(card, "name", None)
    sha = getattr(card, "weights_sha256", None)
    if name is None and isinstance(card, dict):
        name, sha = card.get("name"), card.get("weights_sha256")
    if name is None and sha is None:
        raise TypeError(f"cannot tell which model {type(model).__name__} is: "
                        "expected a network, card or PSFMap")
    return str(name or ""), str(sha or "")


def package_version() -> str:
    from livepsf import __version__

    return __version__

"""The depth calibration (a pydantic model stored as JSON) and the tilted-grid calibration."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from livepsf.depth.metrics import (
    METRICS,
    Metric,
    depth_metric,
    estimate_lens_direction,
    estimate_lens_strength,
    require_astigmatic,
    unit_vector,
)
from livepsf.depth.profiles import (
    MetricFit,
    TiltProfile,
    check_tilt_axis,
    fit_metric_profiles,
    profile_along_axis,
)
from livepsf.depth.texture import MAX_TEXTURE_COHERENCE, reliable_windows
from livepsf.errors import InputError
from livepsf.mapping import PSFMap

TiltAxis = Literal["x", "y"]
FORMAT = "livepsf-depth-calibration"
#: Below this R² of the depth fit a calibration carries a warning in :attr:`Calibration.notes`.
POOR_FIT_R2 = 0.9


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


class MetricSummary(BaseModel):
    """The figures of one metric's fit (all metrics are kept for comparison)."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    metric: Metric
    slope_um_per_unit: float
    offset_um: float
    r2: float
    mean_abs_error_um: float
    sd_abs_error_um: float


class CalibrationPoint(BaseModel):
    """One profile point of the fit, kept so the plot can be redrawn from the JSON alone."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    frame: int
    tilt_deg: float
    position_px: float
    height_um: float
    metric: float


class Calibration(BaseModel):
    """Depth calibration: converts a PSF map of one network into depth in µm.

    ``depth_um = slope_um_per_unit * metric + offset_um``, with the metric computed from the PSF map
    and the lens direction as in :func:`depth_metric`. Saved as JSON (:meth:`save`, :meth:`load`).
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), ser_json_inf_nan="constants")

    format: Literal["livepsf-depth-calibration"] = FORMAT
    format_version: Literal[1] = 1
    metric: Metric
    slope_um_per_unit: float
    offset_um: float
    lens_direction: tuple[float, float] = Field(description="unit vector in the (astig_0, astig_45) plane")
    lens_strength_waves: float = Field(gt=0, description="lens astigmatism measured along lens_direction")
    tilt_axis: TiltAxis
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

    def metric_map(self, pmap: PSFMap) -> np.ndarray:
        """The calibration's depth metric on the grid of ``pmap``, ``(gy, gx)`` float32."""
        return depth_metric(pmap, self.metric, self.lens_direction, self.lens_strength_waves)

    def depth_um(self, pmap: PSFMap, frame: np.ndarray | None = None, median_windows: int = 1) -> np.ndarray:
        """Depth (height relative to the focal plane) in µm on the window grid, ``(gy, gx)`` float32.

        Invalid windows hold the depth of the values the mapper filled in from their neighbours; use
        ``pmap.invalid_mask`` to hide them. With ``frame`` (the image the map was made from) and a
        calibration made with the texture gate, windows of one-directional texture are also filled from
        their reliable neighbours (:func:`reliable_windows`).

        ``median_windows`` > 1 replaces each reliable window's depth by the median of the reliable
        windows in a ``median_windows``-wide square around it, for smooth surfaces: it removes isolated
        windows whose astigmatism sign the network got wrong (they read twice the depth, mirrored).
        """
        from livepsf.mapping import fill_invalid

        self.check_model(pmap)
        if int(median_windows) != median_windows or median_windows < 1:
            raise InputError(f"median_windows must be a positive integer, got {median_windows}")
        depth = (self.slope_um_per_unit * self.metric_map(pmap) + self.offset_um).astype(np.float32)
        gated = frame is not None and self.max_texture_coherence is not None
        ok = reliable_windows(pmap, frame if gated else None, self.max_texture_coherence)
        if median_windows > 1 and ok.any():
            depth = _masked_median(depth, ok, int(median_windows))
        if gated and ok.any():
            depth = fill_invalid(depth, ~ok)
        return depth

    def depth_um_full(self, pmap: PSFMap, shape: tuple[int, int] | None = None,
                      frame: np.ndarray | None = None, median_windows: int = 1) -> np.ndarray:
        """Full-frame depth map in µm (bilinear between window centres, as :meth:`PSFMap.upsample`)."""
        grid = self.depth_um(pmap, frame, median_windows)
        # PSFMap.upsample interpolates named parameter grids; carry the depth grid in a one-parameter
        # map (G-1's "variance" slot) so the interpolation is exactly the mapper's.
        carrier = dataclasses.replace(pmap, params={"variance": grid}, psf_model="G-1", sigma={})
        return carrier.upsample(shape, name="variance")

    def summary(self) -> str:
        """One line for people: metric, slope, R², residual."""
        return (f"{self.metric} metric: {self.slope_um_per_unit:.3f} µm/unit, "
                f"offset {self.offset_um:+.2f} µm, R² {self.r2:.4f}, "
                f"mean |error| {self.mean_abs_error_um:.2f} ± {self.sd_abs_error_um:.2f} µm")


# -- calibration from PSF maps and frames ----------------------------------------------------------


def calibrate_psf_maps(
    pmaps: Sequence[PSFMap],
    tilt_deg: Sequence[float] | float,
    pixel_size_um: float,
    tilt_axis: str = "x",
    in_focus_px: Sequence[float | None] | float | None = None,
    metric: str | None = None,
    lens_direction: Sequence[float] | None = None,
    frames: Sequence[np.ndarray] | None = None,
    max_texture_coherence: float | None = MAX_TEXTURE_COHERENCE,
    aggregate: str = "median",
) -> Calibration:
    """Tilted-grid calibration from PSF maps already computed (one per frame).

    Parameters
    ----------
    pmaps
        PSF maps of an astigmatic Zernike model (Z-3), all from the same network.
    tilt_deg
        Tilt of each frame (one value for all, or one per map). Positive raises the surface towards
        higher indices along ``tilt_axis``.
    pixel_size_um
        Pixel size in the sample plane.
    tilt_axis
        ``"x"`` (height grows along columns) or ``"y"`` (along rows).
    in_focus_px
        Position along the tilt axis that is in focus, per frame (or one value); ``None`` estimates
        it as the zero crossing of the metric.
    metric
        Force a metric; by default all are fitted and the one with the smaller mean |error| is used.
    lens_direction
        Force the lens direction; by default estimated from the valid windows.
    frames
        The frames the maps were made from; enables the texture gate (see the module notes).
    max_texture_coherence
        Gate threshold (:func:`reliable_windows`); ``None`` turns the gate off.
    aggregate
        ``"median"`` (one point per column/row, the paper's projection) or ``"window"`` (every reliable
        window a point of the robust fit); see :func:`profile_along_axis`.
    """
    if not pmaps:
        raise InputError("no frames to calibrate")
    tilt_axis = check_tilt_axis(tilt_axis)
    tilts = _per_frame(tilt_deg, len(pmaps), "tilt_deg")
    foci = _per_frame(in_focus_px, len(pmaps), "in_focus_px")
    identities = {(p.model_name, p.model_sha256) for p in pmaps}
    if len(identities) > 1:
        raise InputError(f"calibration frames were mapped by different models: {sorted(identities)}")
    for p in pmaps:
        require_astigmatic(p)
    if metric is not None and metric not in METRICS:
        raise InputError(f"unknown depth metric {metric!r}; choose one of {', '.join(METRICS)}")

    if frames is not None and len(frames) != len(pmaps):
        raise InputError(f"{len(frames)} frames for {len(pmaps)} PSF maps")
    gate = max_texture_coherence if frames is not None else None
    frame_list = list(frames) if frames is not None else [None] * len(pmaps)
    valid = [reliable_windows(p, f, gate) for p, f in zip(pmaps, frame_list)]
    if sum(int(v.sum()) for v in valid) < 4:
        raise InputError("(almost) every window is invalid or has one-directional texture: "
                         "nothing to calibrate on")
    if lens_direction is None:
        u = estimate_lens_direction(np.concatenate([p.values("astig_0").ravel() for p in pmaps]),
                                    np.concatenate([p.values("astig_45").ravel() for p in pmaps]),
                                    np.concatenate([v.ravel() for v in valid]))
    else:
        u = unit_vector(lens_direction)
    strength = estimate_lens_strength(*(np.concatenate([p.values(n).ravel() for p in pmaps])
                                        for n in ("focus", "astig_0", "astig_45")),
                                      u, np.concatenate([v.ravel() for v in valid]))

    def profiles_for(direction: tuple[float, float]) -> list[TiltProfile]:
        out = []
        for p, v, t, f in zip(pmaps, valid, tilts, foci):
            maps = {name: depth_metric(p, name, direction, strength) for name in METRICS}
            centers = p.centers_x if tilt_axis == "x" else p.centers_y
            extent = p.frame_shape[1] if tilt_axis == "x" else p.frame_shape[0]
            out.append(profile_along_axis(maps, centers, tilt_axis, v, t, f, extent, aggregate))
        return out

    profiles = profiles_for(u)
    fits = {name: fit_metric_profiles(profiles, name, pixel_size_um) for name in METRICS}
    if lens_direction is None and fits["signed"].a < 0:
        # Orient the lens direction so the signed metric grows with height (cosmetic: slopes positive).
        u = (-u[0], -u[1])
        profiles = profiles_for(u)
        fits = {name: fit_metric_profiles(profiles, name, pixel_size_um) for name in METRICS}
    chosen = metric or min(METRICS, key=lambda n: (fits[n].mean_abs_error_um, METRICS.index(n)))
    fit = fits[chosen]
    notes = ""
    if not fit.r2 >= POOR_FIT_R2:
        notes = (f"poor fit (R² {fit.r2:.3f} < {POOR_FIT_R2}): the network does not read depth from "
                 "these frames "
                 "reliably; check the lens is in, the tilt values and the texture of the frames")

    first = pmaps[0]
    return Calibration(
        metric=chosen,
        slope_um_per_unit=fit.slope_um,
        offset_um=fit.offset_um,
        lens_direction=u,
        lens_strength_waves=strength,
        tilt_axis=tilt_axis,
        pixel_size_um=pixel_size_um,
        model_name=first.model_name,
        model_sha256=first.model_sha256,
        psf_model=first.psf_model,
        r2=fit.r2,
        mean_abs_error_um=fit.mean_abs_error_um,
        sd_abs_error_um=float(np.std(np.abs(np.concatenate(fit.residuals_um)))),
        per_tilt=_per_tilt(fit, profiles, pixel_size_um),
        metrics=[_summary(fits[n]) for n in METRICS],
        points=[CalibrationPoint(frame=i, tilt_deg=profiles[i].tilt_deg, position_px=float(x),
                                 height_um=float(h),
                                 metric=float(m))
                for i in range(len(profiles))
                for x, h, m in zip(fit.position_px[i], fit.height_um[i], fit.metric_values[i])],
        window_px=int(first.window_px),
        stride_px=int(first.stride_px),
        max_texture_coherence=gate,
        created=datetime.now(timezone.utc),
        livepsf_version=package_version(),
        notes=notes,
    )


def calibrate_tilted_grid(
    frames: Sequence[np.ndarray],
    tilt_deg: Sequence[float] | float,
    pixel_size_um: float = 0.65,
    mapper: Callable[[np.ndarray], PSFMap] | None = None,
    tilt_axis: str = "x",
    in_focus_px: Sequence[float | None] | float | None = None,
    metric: str | None = None,
    max_texture_coherence: float | None = MAX_TEXTURE_COHERENCE,
) -> Calibration:
    """Calibrate depth from frames of a printed grid tilted by known angles (paper Section III-E).

    Each frame is mapped to a PSF map; the rest is :func:`calibrate_psf_maps`.

    Parameters
    ----------
    frames
        2D frames of the tilted grid (any real dtype).
    tilt_deg
        One tilt for all frames or one per frame, in degrees.
    pixel_size_um
        Pixel size in the sample plane.
    mapper
        ``frame -> PSFMap`` (a :class:`livepsf.PSFMapper` around an astigmatic Z-3 network).
    tilt_axis
        Array axis along which the height grows: ``"x"`` (columns) or ``"y"`` (rows).
    in_focus_px
        Known in-focus column (``"x"``) or row (``"y"``), per frame or one for all; estimated when ``None``.
    metric
        Force ``"signed"``, ``"projected"`` or ``"eq14"``; by default the best of them.
    max_texture_coherence
        Leave out windows of one-directional texture (see the module notes); ``None``: keep them.

    Returns
    -------
    Calibration
    """
    if mapper is None:
        raise InputError("calibrate_tilted_grid needs a mapper (livepsf.PSFMapper around a Z-3 model)")
    if len(frames) == 0:
        raise InputError("no frames to calibrate")
    pmaps = [mapper(np.asarray(f)) for f in frames]
    return calibrate_psf_maps(pmaps, tilt_deg, pixel_size_um, tilt_axis, in_focus_px, metric,
                              frames=[np.asarray(f) for f in frames],
                              max_texture_coherence=max_texture_coherence)


# -- helpers ----------------------------------------------------------------------------------------


def _per_tilt(fit: MetricFit, profiles: Sequence[TiltProfile], pixel_size_um: float) -> list[TiltResidual]:
    out = []
    for i, prof in enumerate(profiles):
        res = np.abs(fit.residuals_um[i])
        extent = prof.extent_px if prof.extent_px else float(np.ptp(prof.position_px)) or 1.0
        depth_range = abs(extent * pixel_size_um * math.tan(math.radians(prof.tilt_deg)))
        mae = float(res.mean()) if len(res) else float("nan")
        out.append(TiltResidual(
            tilt_deg=prof.tilt_deg,
            in_focus_px=fit.in_focus_px[i],
            in_focus_estimated=prof.in_focus_px is None,
            depth_range_um=depth_range,
            n_points=len(res),
            r2=fit.r2_per_tilt[i],
            mean_abs_error_um=mae,
            sd_abs_error_um=float(res.std()) if len(res) else float("nan"),
            relative_error_pct=100.0 * mae / depth_range if depth_range > 0 else float("nan"),
        ))
    return out


def _summary(fit: MetricFit) -> MetricSummary:
    res = np.abs(np.concatenate(fit.residuals_um))
    return MetricSummary(metric=fit.metric, slope_um_per_unit=fit.slope_um, offset_um=fit.offset_um,
                         r2=fit.r2,
                         mean_abs_error_um=float(res.mean()), sd_abs_error_um=float(res.std()))


def _masked_median(grid: np.ndarray, ok: np.ndarray, size: int) -> np.ndarray:
    """Median of the ``ok`` cells in a ``size``-wide square around each ``ok`` cell; others unchanged."""
    gy, gx = grid.shape
    r = size // 2
    out = np.array(grid, dtype=np.float32, copy=True)
    for i, j in zip(*np.nonzero(ok)):
        sl = (slice(max(0, i - r), min(gy, i + r + 1)), slice(max(0, j - r), min(gx, j + r + 1)))
        out[i, j] = np.median(grid[sl][ok[sl]])
    return out


def _per_frame(value: Any, n: int, name: str) -> list:
    if value is None or isinstance(value, (int, float)):
        return [None if value is None else float(value)] * n
    values = list(value)
    if len(values) == 1:
        values = values * n
    if len(values) != n:
        raise InputError(f"{name}: got {len(values)} values for {n} frames; "
                         "give one per frame or one for all")
    return [None if v is None else float(v) for v in values]


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

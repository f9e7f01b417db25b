"""Depth accuracy on the simulated microscope, like the paper's Table VI, in both protocols.

Calibrate on one set of simulated frames of the tilted sample (3°, 6°, 10°; in focus mid-field) — and,
with ``--zstack``, also from a z-stack of the flat sample — then measure on *fresh* frames: other sample
seed and camera noise, a shorter exposure (more noise) and another in-focus position. Per tilt it reports

- per-window error: each reliable window's own depth vs the true height at its centre, and how many of
  the errors lie within the window's 1σ / 2σ (:meth:`Calibration.depth_estimate`);
- the paper's protocol (Fig. 5f): the depth averaged along the untilted axis per column (inverse-variance
  weighted), against the column's true height;
- surface error: the fused surface (:func:`livepsf.depth.surface_depth`, plane and smooth priors) vs the
  true height at every window centre;

and the same for a curved (bowl-shaped) surface (poly2 and smooth priors), with its error map as PNG.

    python benchmarks/depth_accuracy.py                  # the shipped default model, printed grid
    python benchmarks/depth_accuracy.py --sample cells   # another sample
    python benchmarks/depth_accuracy.py --zstack         # also calibrate from a z-stack, compare slopes
    python benchmarks/depth_accuracy.py --seed 1         # another draw of every frame (sample and noise)
    python benchmarks/depth_accuracy.py --model PATH.pt  # another Z-3 model
    python benchmarks/depth_accuracy.py --oracle         # PSF parameters from the simulator's ground
                                                         # truth: checks the pipeline, not the network
    python benchmarks/depth_accuracy.py --decompose      # errors split into offset, scale and shape

Paper (Table VI, real microscope, ResNet-34, profile protocol): 3°: 0.61 ± 0.41 µm, 6°: 1.31 ± 1.15 µm,
10°: 3.50 ± 2.62 µm.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from livepsf.depth import Calibration, calibrate_psf_maps, plot_calibration
from livepsf.mapping import PSFMap

TILTS = (3.0, 6.0, 10.0)
PAPER = {3.0: (0.61, 0.41), 6.0: (1.31, 1.15), 10.0: (3.50, 2.62)}


@dataclass
class SimFrame:
    frame: np.ndarray
    height_rel_focus_um: np.ndarray  # (H, W): surface height minus focal plane (= -defocus)
    in_focus_px: float | None  # along the tilt axis, for flat tilted frames
    truth: object
    seed: int  # sample and camera-noise seed: the frame is the same whatever was snapped before it


class Simulator:
    """One simulated microscope reused for every frame (creating a core costs ~10 s)."""

    def __init__(self, shape=(1024, 1024), sample: str = "printed-grid") -> None:
        from livepsf.sim import create_core

        self.core = create_core(sample=sample, tilt_deg=6.0, tilt_axis="x", lens=True, seed=0, shape=shape)
        self.core.setTimeoutMs(120_000)  # re-rendering a curved surface on a busy 2-core machine is slow
        self.shape = shape
        self.pixel_size_um = self.core.getPixelSizeUm() or 0.65

    def snap(self, tilt_deg: float, seed: int, in_focus_shift_px: float = 0.0, exposure_ms: float = 10.0,
             curvature_per_mm: float = 0.0, z_um: float | None = None) -> SimFrame:
        from livepsf.sim import ground_truth

        core = self.core
        core.setProperty("Sample", "TiltDeg", tilt_deg)
        core.setProperty("Sample", "CurvaturePerMm", curvature_per_mm)
        core.setProperty("Sample", "Seed", seed)
        # Reseeding the noise per frame makes a frame set identical across option sets (--zstack snaps
        # frames in between, which would otherwise shift the noise of every later frame).
        core.setProperty("Camera", "NoiseSeed", seed)
        # Height is 0 at the frame centre and grows along x; putting the stage at the height of column
        # (centre + shift) brings that column into focus.
        if z_um is None:
            z_um = in_focus_shift_px * self.pixel_size_um * math.tan(math.radians(tilt_deg))
        core.setPosition("Z", z_um)
        core.waitForDevice("Z")
        core.setExposure(exposure_ms)
        core.snapImage()
        frame = np.asarray(core.getImage())
        gt = ground_truth(core)
        centre = (self.shape[1] - 1) / 2.0
        in_focus = centre + in_focus_shift_px if curvature_per_mm == 0 and tilt_deg != 0 else None
        return SimFrame(frame, -np.asarray(gt.defocus_um, dtype=np.float64), in_focus, gt, seed)

    def snap_at_z(self, z_um: float, seed: int, exposure_ms: float = 10.0) -> SimFrame:
        """A frame of the flat (untilted) sample with the Z stage at ``z_um``."""
        return self.snap(0.0, seed=seed, exposure_ms=exposure_ms, z_um=z_um)


class OracleMapper:
    """PSF maps from the simulator's ground truth (canonical Z-3 at window centres, optional noise)."""

    def __init__(self, noise_waves: float = 0.0, window_px: int = 128, stride_px: int = 64, seed: int = 0):
        from livepsf.optics import Optics

        self.optics = Optics()
        self.noise = noise_waves
        self.window_px, self.stride_px = window_px, stride_px
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self.last_truth = None

    def use_frame(self, f: SimFrame) -> None:
        """Map ``f`` next: its ground truth, and parameter noise drawn from its seed (not the call order)."""
        self.last_truth = f.truth
        self.rng = np.random.default_rng([self.seed, f.seed])

    def __call__(self, frame: np.ndarray) -> PSFMap:
        gt = self.last_truth
        h, w = frame.shape
        cy = np.arange(0, h - self.window_px + 1, self.stride_px) + (self.window_px - 1) / 2
        cx = np.arange(0, w - self.window_px + 1, self.stride_px) + (self.window_px - 1) / 2
        defocus = np.asarray(gt.defocus_um)[np.ix_(np.round(cy).astype(int), np.round(cx).astype(int))]
        d = self.optics.defocus_waves(defocus) + self.rng.normal(0, self.noise, defocus.shape)
        sign = np.where(d >= 0, 1.0, -1.0)
        a0 = sign * gt.astig_0_waves + self.rng.normal(0, self.noise, d.shape)
        a45 = sign * gt.astig_45_waves + self.rng.normal(0, self.noise, d.shape)
        params = {"focus": np.abs(d), "astig_0": a0, "astig_45": a45}
        return PSFMap(params={k: v.astype(np.float32) for k, v in params.items()},
                      invalid=np.zeros(d.shape, np.float32), centers_y=cy, centers_x=cx, window_px=self.window_px,
                      stride_px=self.stride_px, frame_shape=(h, w), psf_model="Z-3", model_name="oracle",
                      model_sha256="oracle")


def window_truth(pmap: PSFMap, height: np.ndarray) -> np.ndarray:
    """True height at the window centres (bilinear at the fractional centre)."""
    from scipy.ndimage import map_coordinates

    yy, xx = np.meshgrid(pmap.centers_y, pmap.centers_x, indexing="ij")
    return map_coordinates(height, [yy.ravel(), xx.ravel()], order=1).reshape(yy.shape)


@dataclass
class FrameErrors:
    """Errors of one fresh frame against the simulator's true height (µm)."""

    window_abs: np.ndarray  # reliable windows (finite σ), each as read
    window_z: np.ndarray  # |error| / σ of the same windows
    filled_abs: np.ndarray  # every window the network did not flag invalid, unreliable ones filled
    profile_abs: np.ndarray  # paper's protocol: per position along the tilt axis (empty for curved frames)
    profile_depth: np.ndarray  # the profile itself, and the true height of its columns (empty likewise)
    profile_truth: np.ndarray
    surface_abs: dict[str, np.ndarray]  # per prior: every window
    reliable_fraction: float
    depth: np.ndarray
    truth: np.ndarray
    surface: dict[str, np.ndarray]
    resolved: np.ndarray  # reliable windows with the side of focus from the first prior's surface (NaN elsewhere)


def column_profile(depth: np.ndarray, sigma: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's protocol (Fig. 5f): depth averaged along the untilted axis (rows) per column.

    The average of a column is the inverse-variance weighted mean of its reliable windows (σ from
    :meth:`Calibration.depth_estimate`; :func:`measure` passes the windows' depth with the side of
    focus the fused surface gives them); columns without a reliable window are left out. Returns
    ``(profile depth, the columns' true height)``, µm.
    """
    weight = np.where(np.isfinite(sigma), 1.0 / np.maximum(sigma.astype(np.float64), 1e-6) ** 2, 0.0)
    cols = weight.sum(axis=0) > 0
    mean = (weight * np.nan_to_num(depth)).sum(axis=0)[cols] / weight.sum(axis=0)[cols]
    return mean, truth[:, cols].mean(axis=0)


def profile_errors(depth: np.ndarray, sigma: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|error| per column of the paper's protocol (:func:`column_profile`)."""
    mean, column_truth = column_profile(depth, sigma, truth)
    return np.abs(mean - column_truth)


@dataclass
class ErrorParts:
    """An estimate against the truth split into offset, scale and shape (``estimate = a + b·truth + r``).

    ``a`` and ``b`` come from a robust line (Huber, then bisquare: a few mirrored columns stay in the
    residual instead of tilting the line). ``offset_um`` = ``a``, the depth read where the truth is 0
    (the in-focus point); ``slope`` = ``b`` (1: the scale is right). The parts are the mean |error|
    each would cause alone: ``|a|``, mean ``|(b - 1)·truth|`` and mean ``|r|``.
    """

    total_um: float
    offset_um: float
    slope: float
    scale_part_um: float
    residual_um: float

    @property
    def offset_part_um(self) -> float:
        return abs(self.offset_um)


def error_parts(estimate: np.ndarray, truth: np.ndarray) -> ErrorParts:
    """:class:`ErrorParts` of ``estimate`` against ``truth`` (any matching shapes; non-finite pairs left out)."""
    from livepsf.depth import robust_line_fit

    e = np.asarray(estimate, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=np.float64).ravel()
    ok = np.isfinite(e) & np.isfinite(t)
    e, t = e[ok], t[ok]
    (a, b), _ = robust_line_fit(np.column_stack([np.ones_like(t), t]), e)
    return ErrorParts(total_um=float(np.mean(np.abs(e - t))), offset_um=float(a), slope=float(b),
                      scale_part_um=float(np.mean(np.abs((b - 1.0) * t))),
                      residual_um=float(np.mean(np.abs(e - a - b * t))))


def measure(cal: Calibration, pmap: PSFMap, height: np.ndarray, frame: np.ndarray | None,
            priors: tuple[str, ...], tilted: bool) -> FrameErrors:
    """Per-window, profile and fused-surface errors of calibrated depth against the truth."""
    from livepsf.depth import surface_depth
    from livepsf.depth.texture import gate_texture

    texture = gate_texture(frame, pmap, cal.max_texture_coherence)  # measured once, used by every call below
    est = cal.depth_estimate(pmap, frame, texture=texture)
    truth = window_truth(pmap, height)
    ok = est.reliable
    err = est.depth_um - truth
    filled = cal.depth_um(pmap, frame, texture=texture)
    fused = {prior: surface_depth(cal, pmap, frame, prior=prior, texture=texture) for prior in priors}
    surfaces = {prior: s.depth_um for prior, s in fused.items()}
    # The profile averages the windows with the side of focus the fused surface gives them (mirrored
    # windows read back with the other sign, DepthSurface.window_depth_um), as a depth map does.
    windows = fused[priors[0]].window_depth_um
    profile, profile_truth = (column_profile(windows, est.sigma_um, truth) if tilted
                              else (np.array([]), np.array([])))
    return FrameErrors(
        window_abs=np.abs(err[ok]), window_z=np.abs(err[ok]) / est.sigma_um[ok],
        filled_abs=np.abs(filled - truth)[~pmap.invalid_mask],
        profile_abs=np.abs(profile - profile_truth), profile_depth=profile, profile_truth=profile_truth,
        surface_abs={prior: np.abs(s - truth).ravel() for prior, s in surfaces.items()},
        reliable_fraction=float(ok.mean()), depth=np.where(ok, est.depth_um, np.nan), truth=truth,
        surface=surfaces, resolved=np.where(ok, windows, np.nan))


def _mean_sd(values: list[np.ndarray] | np.ndarray) -> str:
    v = np.concatenate(values) if isinstance(values, list) else values
    return f"{v.mean():.2f} ± {v.std():.2f}" if len(v) else "–"


def save_error_map(err_map: np.ndarray, depth: np.ndarray, truth: np.ndarray, path: Path, title: str) -> None:
    """Three panels side by side: true height, estimated depth, error (pyqtgraph, offscreen)."""
    import pyqtgraph as pg
    import pyqtgraph.exporters
    from qtpy import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    pg.setConfigOptions(background="w", foreground="k")
    win = pg.GraphicsLayoutWidget()
    win.setFixedSize(1200, 460)
    win.addLabel(title, row=0, col=0, colspan=6)
    lim = float(np.nanmax(np.abs(truth)))
    elim = max(float(np.nanmax(np.abs(err_map))), 1e-3)
    panels = [("true height (µm)", truth, (-lim, lim)), ("estimated depth (µm)", depth, (-lim, lim)),
              ("error (µm), every window", err_map, (-elim, elim))]
    for k, (name, data, levels) in enumerate(panels):
        plot = win.addPlot(row=1, col=2 * k, title=name)
        plot.setAspectLocked(True)
        plot.invertY(True)
        img = pg.ImageItem(np.nan_to_num(data, nan=0.0).T, levels=levels)
        img.setColorMap(pg.colormap.get("CET-D1"))
        plot.addItem(img)
        bar = pg.ColorBarItem(values=levels, colorMap=pg.colormap.get("CET-D1"), interactive=False)
        bar.setImageItem(img)
        win.addItem(bar, row=1, col=2 * k + 1)
    win.show()
    app.processEvents()
    exporter = pg.exporters.ImageExporter(win.scene())
    exporter.export(str(path))
    win.close()


def calibrate_on_tilted_grid(sim: Simulator, map_frame, args) -> Calibration:
    """Calibration set: per tilt, ``--cal-frames`` frames at 10 ms exposure, the first in focus mid-field,
    the others with the in-focus column moved by ±240 px, so the calibrated depth range covers that of
    the test frames (whose in-focus column moves by ±160 px)."""
    shifts = [0.0] + [240.0 * (1 if k % 2 else -1) for k in range(1, args.cal_frames)]
    frames, tilts = [], []
    for i, t in enumerate(TILTS):
        for k, shift in enumerate(shifts):
            frames.append(sim.snap(t, seed=1 + i + 10 * k + _seed_base(args), in_focus_shift_px=shift,
                                   exposure_ms=10.0))
            tilts.append(t)
    options = {"aggregate": args.aggregate, **_curve_option(args)}
    if args.no_gate:
        options["max_texture_coherence"] = None
    in_focus = None if args.estimate_focus else [f.in_focus_px for f in frames]
    return calibrate_psf_maps([map_frame(f) for f in frames], tilts, sim.pixel_size_um, "x", in_focus,
                              frames=[f.frame for f in frames], **options)


def calibrate_on_zstack(sim: Simulator, map_frame, args) -> Calibration:
    """Z-stack calibration of the same microscope: flat sample, stage stepped over ±range_um."""
    from livepsf.depth import calibrate_zstack

    z_um = np.arange(-args.zstack_range_um, args.zstack_range_um + 1e-9, args.zstack_step_um)
    frames = [sim.snap_at_z(float(z), seed=500 + k + _seed_base(args)) for k, z in enumerate(z_um)]
    options = _curve_option(args)
    if args.no_gate:
        options["max_texture_coherence"] = None
    return calibrate_zstack([map_frame(f) for f in frames], z_um, sim.pixel_size_um,
                            frames=[f.frame for f in frames], **options)


def _seed_base(args) -> int:
    """Added to every frame's sample and noise seed: ``--seed K`` draws another set of frames (K = 0: the
    figures quoted in README)."""
    return 1000 * int(getattr(args, "seed", 0))


def _curve_option(args) -> dict:
    options = {} if args.curve is None else {"curve": args.curve}
    if args.metric is not None:
        options["metric"] = args.metric
    return options


def secant_slope(cal: Calibration, height_um: float) -> float:
    """µm per metric unit between the metric values the calibration maps to -height_um and +height_um.

    Compares calibrations like for like: a linear fit's slope depends on how the calibration points
    are spread over an S-shaped relation (a tilted grid puts most of them near focus, a z-stack spreads
    them evenly), the curve does not.
    """
    lo, hi = cal.curve.metric_knots[0], cal.curve.metric_knots[-1]
    metric = np.linspace(lo - (hi - lo), hi + (hi - lo), 20001)
    height = cal.metric_to_depth_um(metric).astype(np.float64)
    order = np.argsort(height)
    m_lo, m_hi = np.interp([-height_um, height_um], height[order], metric[order])
    return float(2 * height_um / (m_hi - m_lo))


def report(cal: Calibration, sim: Simulator, map_frame, args, title: str) -> dict:
    """Fresh frames (other seeds, 3 ms exposure, in-focus column moved by ±160 px): the error table."""
    use_frame = (lambda f: None) if args.no_gate else (lambda f: f.frame)
    print(f"\n## {title}")
    print(f"calibration: {cal.summary()}")
    if cal.notes:
        print(f"notes: {cal.notes}")
    if cal.uncertainty is not None:
        u = cal.uncertainty
        print(f"σ model: {u.n_windows} windows, in-sample {100 * u.coverage_1sigma:.0f} % within 1σ, "
              f"{100 * u.coverage_2sigma:.0f} % within 2σ")
    priors = ("plane", "smooth")
    print()
    print("| tilt | \\|error\\| per window (µm) | within 1σ / 2σ | profile \\|error\\| (paper's protocol, µm) "
          + "".join(f"| surface {p} \\|error\\| (µm) " for p in priors)
          + "| \\|error\\| all windows, filled (µm) | reliable windows | paper (profile) |")
    print("| --- " * (7 + len(priors)) + "|")
    summary, decomposed = {}, []
    for i, t in enumerate(TILTS):
        results = []
        for k in range(args.test_frames):
            shift = 160.0 if k % 2 == 0 else -160.0
            f = sim.snap(t, seed=100 + 10 * i + k + _seed_base(args), in_focus_shift_px=shift, exposure_ms=3.0)
            results.append(measure(cal, map_frame(f), f.height_rel_focus_um, use_frame(f), priors, tilted=True))
            decomposed.append((t, shift, results[-1]))
        z = np.concatenate([r.window_z for r in results])
        prof = np.concatenate([r.profile_abs for r in results])
        surf = {p: np.concatenate([r.surface_abs[p] for r in results]) for p in priors}
        summary[t] = {"profile": float(prof.mean()), **{p: float(surf[p].mean()) for p in priors},
                      "window": float(np.concatenate([r.window_abs for r in results]).mean())}
        print(f"| {t:g}° | {_mean_sd([r.window_abs for r in results])} | "
              f"{100 * np.mean(z <= 1):.0f} % / {100 * np.mean(z <= 2):.0f} % | {_mean_sd(prof)} | "
              + "".join(f"{_mean_sd(surf[p])} | " for p in priors)
              + f"{_mean_sd([r.filled_abs for r in results])} | "
              f"{100 * np.mean([r.reliable_fraction for r in results]):.0f} % | {PAPER[t][0]:.2f} ± {PAPER[t][1]:.2f} |")

    if args.decompose:
        print_decomposition(decomposed, "plane")

    # A curved surface (bowl, 1/R = 1 /mm), no tilt, in focus at the centre.
    f = sim.snap(0.0, seed=77 + _seed_base(args), exposure_ms=10.0, curvature_per_mm=1.0)
    curved_priors = ("poly2", "smooth")
    m = measure(cal, map_frame(f), f.height_rel_focus_um, use_frame(f), curved_priors, tilted=False)
    span = float(np.ptp(m.truth))
    print(f"\ncurved surface (bowl, 1/R = 1 /mm, height span {span:.1f} µm over the window centres): "
          f"per window {_mean_sd(m.window_abs)} µm ({100 * np.mean(m.window_z <= 1):.0f} % within 1σ, "
          f"{100 * m.reliable_fraction:.0f} % of windows reliable); "
          + ", ".join(f"surface {p} {_mean_sd(m.surface_abs[p])} µm" for p in curved_priors))
    summary["curved"] = {p: float(m.surface_abs[p].mean()) for p in curved_priors}
    if args.out is not None:
        stem = f"{_label_stem(args)}_{title.split()[0]}"
        save_error_map(m.surface["smooth"] - m.truth, m.surface["smooth"], m.truth,
                       args.out / f"curved_error_{stem}.png",
                       f"Curved surface (1/R = 1 /mm), smooth surface: mean |error| "
                       f"{m.surface_abs['smooth'].mean():.2f} µm")
    return summary


def print_decomposition(measured: list[tuple[float, float, FrameErrors]], prior: str) -> None:
    """Per test frame: the reliable windows, the column profile and the fused surface split into
    offset, scale and shape (:func:`error_parts`)."""
    print("\nerrors split into offset (depth read at the in-focus point), scale (slope of estimate vs truth) "
          "and shape (residual about that line), per test frame; parts = the mean |error| each alone causes")
    print("\n| tilt | in-focus shift (px) | estimate | mean \\|error\\| (µm) | offset (µm) | slope | "
          "scale part (µm) | shape part (µm) |")
    print("| --- " * 8 + "|")
    rows: dict[tuple[float, str], list[ErrorParts]] = {}
    for tilt, shift, m in measured:
        for name, estimate, truth in (("windows", m.depth, m.truth), ("windows, side of focus from the surface",
                                                                      m.resolved, m.truth),
                                      ("profile", m.profile_depth, m.profile_truth),
                                      (f"surface {prior}", m.surface[prior], m.truth)):
            parts = error_parts(estimate, truth)
            rows.setdefault((tilt, name), []).append(parts)
            print(f"| {tilt:g}° | {shift:+.0f} | {name} | {parts.total_um:.2f} | {parts.offset_um:+.2f} | "
                  f"{parts.slope:.3f} | {parts.scale_part_um:.2f} | {parts.residual_um:.2f} |")
    print("\nmean over the test frames of each tilt: | tilt | estimate | mean \\|error\\| | \\|offset\\| | "
          "\\|slope - 1\\| | scale part | shape part |")
    for (tilt, name), parts in rows.items():
        print(f"| {tilt:g}° | {name} | {np.mean([p.total_um for p in parts]):.2f} | "
              f"{np.mean([p.offset_part_um for p in parts]):.2f} | {np.mean([abs(p.slope - 1) for p in parts]):.3f} | "
              f"{np.mean([p.scale_part_um for p in parts]):.2f} | {np.mean([p.residual_um for p in parts]):.2f} |")


def _label_stem(args) -> str:
    return ("oracle" if args.oracle else Path(str(args.model)).stem) + f"_{args.sample}"


def build_parser(description: str = __doc__) -> argparse.ArgumentParser:
    """The options of this benchmark (also used by ``calibration_agreement.py``)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model name or .pt path (Z-3)")
    parser.add_argument("--oracle", action="store_true", help="ground-truth PSF parameters instead of a network")
    parser.add_argument("--oracle-noise", type=float, default=0.02, help="waves of noise on oracle parameters")
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--dihedral-average", action="store_true",
                        help="map every frame also rotated and mirrored and average (livepsf.net.symmetry)")
    parser.add_argument("--test-frames", type=int, default=2, help="fresh test frames per tilt")
    parser.add_argument("--cal-frames", type=int, default=2, help="calibration frames per tilt")
    parser.add_argument("--sample", default="printed-grid", help="simulator sample: printed-grid, cells, filaments")
    parser.add_argument("--estimate-focus", action="store_true",
                        help="estimate the calibration frames' in-focus column (default: give it, mid-field)")
    parser.add_argument("--curve", default=None, choices=["linear", "monotone"],
                        help="calibration curve (default: the library's)")
    parser.add_argument("--metric", default=None, choices=["signed", "projected", "eq14"],
                        help="force a depth metric (default: each calibration picks its best)")
    parser.add_argument("--aggregate", default="median", choices=["median", "window"])
    parser.add_argument("--no-gate", action="store_true", help="keep windows of one-directional texture")
    parser.add_argument("--zstack", action="store_true",
                        help="also calibrate from a z-stack of the flat sample and compare with the tilted grid")
    parser.add_argument("--zstack-range-um", type=float, default=60.0)
    parser.add_argument("--zstack-step-um", type=float, default=4.0)
    parser.add_argument("--decompose", action="store_true",
                        help="split each test frame's errors into offset (in-focus point), scale and shape")
    parser.add_argument("--out", type=Path, default=None, help="folder for the calibrations, plots and error maps")
    parser.add_argument("--seed", type=int, default=0,
                        help="draw other frames: adds 1000 x SEED to every frame's sample and noise seed")
    return parser


def make_frame_mapper(args) -> tuple[object, str]:
    """``(map_frame, label)``: SimFrame -> PSFMap with the network of ``--model`` (or the oracle)."""
    if args.oracle:
        mapper = OracleMapper(args.oracle_noise, stride_px=args.stride)
        label = f"oracle (ground-truth parameters + {args.oracle_noise} waves noise)"
    else:
        from livepsf.mapping import PSFMapper
        from livepsf.net import load_model

        net = load_model(args.model)
        mapper = PSFMapper(net, stride_px=args.stride, dihedral_average=args.dihedral_average)
        label = f"model {net.card.name} ({net.card.architecture}, {net.card.weights_sha256[:12]})"

    def map_frame(f: SimFrame) -> PSFMap:
        if isinstance(mapper, OracleMapper):
            mapper.use_frame(f)
        return mapper(f.frame)

    return map_frame, label


def print_slope_agreement(tilted: Calibration, stack: Calibration) -> None:
    """The z-stack's slope against the tilted grid's: fitted alike over the common heights, curve secants,
    and each calibration's own line per metric."""
    from livepsf.depth import compare_slopes

    if tilted.metric == stack.metric:
        c = compare_slopes(tilted, stack)
        print(f"\nslope over the heights both cover ({c.metric} metric, median per 5-µm height bin, the {c.n_bins} "
              f"bins both have points in, [{c.low_um:.0f}, {c.high_um:.0f}] µm; livepsf.depth.compare_slopes): "
              f"tilted grid {c.reference_slope_um_per_unit:.2f} µm/unit, z-stack {c.other_slope_um_per_unit:.2f} "
              f"µm/unit: {c.difference_pct:+.1f} %")
        print(f"slope of the calibration curves ({tilted.metric} metric), secant between the metrics that read ±H µm:")
        for h_um in (10.0, 20.0, 40.0):
            a, b = secant_slope(tilted, h_um), secant_slope(stack, h_um)
            print(f"  H = {h_um:4.0f} µm: tilted grid {a:8.2f} µm/unit, z-stack {b:8.2f} µm/unit: "
                  f"{100 * (b / a - 1):+.1f} %")
    print("\nslope of each calibration's own line (all its points, as sampled), z-stack vs tilted grid, per metric:")
    slopes = {s.metric: s.slope_um_per_unit for s in tilted.metrics}
    for s in stack.metrics:
        print(f"  {s.metric:>9}: tilted grid {slopes[s.metric]:8.2f} µm/unit, z-stack {s.slope_um_per_unit:8.2f} "
              f"µm/unit: {100 * (s.slope_um_per_unit / slopes[s.metric] - 1):+.1f} %")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sim = Simulator(sample=args.sample)
    map_frame, label = make_frame_mapper(args)
    t0 = time.time()
    print(f"# depth accuracy — {label}, sample {args.sample}, texture gate {'off' if args.no_gate else 'on'}, "
          f"calibration frames' in-focus column {'estimated' if args.estimate_focus else 'given'}")
    calibrations = {"tilted-grid": calibrate_on_tilted_grid(sim, map_frame, args)}
    if args.zstack:
        calibrations["z-stack"] = calibrate_on_zstack(sim, map_frame, args)
    for name, cal in calibrations.items():
        report(cal, sim, map_frame, args, f"{name} calibration")
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            cal_path = args.out / f"bench_calibration_{_label_stem(args)}_{name}.json"
            cal_path.unlink(missing_ok=True)
            cal.save(cal_path)
            plot_calibration(cal, cal_path.with_suffix(".png"))
    if args.zstack:
        print_slope_agreement(calibrations["tilted-grid"], calibrations["z-stack"])
    print(f"\n({time.time() - t0:.0f} s; frames 1024×1024 at 0.65 µm, stride {args.stride} px; fresh test frames: "
          "other seeds, 3 ms exposure, in-focus column moved by ±160 px; errors vs the simulator's true height; "
          "profile = inverse-variance weighted mean of each column's reliable windows, side of focus from the fused plane, vs the column's true height)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

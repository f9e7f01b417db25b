"""Depth accuracy on the simulated microscope, like the paper's Table VI.

Calibrate on one set of simulated frames of the tilted printed grid (3°, 6°, 10°; in focus mid-field),
then measure on *fresh* frames: other sample seed and camera noise, a shorter exposure (more noise) and
another in-focus position. Errors are per valid window, calibrated depth vs the simulator's true height of
the surface relative to the focal plane at the window centre. A curved (bowl-shaped) surface is measured
too, with its error map saved as PNG.

    python benchmarks/depth_accuracy.py                  # the shipped default model
    python benchmarks/depth_accuracy.py --model PATH.pt  # another Z-3 model
    python benchmarks/depth_accuracy.py --oracle         # PSF parameters from the simulator's ground
                                                         # truth: checks the pipeline, not the network

Paper (Table VI, real microscope, ResNet-34): 3°: 0.61 ± 0.41 µm, 6°: 1.31 ± 1.15 µm, 10°: 3.50 ± 2.62 µm.
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

from livepsf.depth import Calibration, calibrate_psf_maps, plot_calibration, reliable_windows  # noqa: E402
from livepsf.mapping import PSFMap  # noqa: E402

TILTS = (3.0, 6.0, 10.0)
PAPER = {3.0: (0.61, 0.41), 6.0: (1.31, 1.15), 10.0: (3.50, 2.62)}


@dataclass
class SimFrame:
    frame: np.ndarray
    height_rel_focus_um: np.ndarray  # (H, W): surface height minus focal plane (= -defocus)
    in_focus_px: float | None  # along the tilt axis, for flat tilted frames
    truth: object


class Simulator:
    """One simulated microscope reused for every frame (creating a core costs ~10 s)."""

    def __init__(self, shape=(1024, 1024), sample: str = "printed-grid") -> None:
        from livepsf.sim import create_core

        self.core = create_core(sample=sample, tilt_deg=6.0, tilt_axis="x", lens=True, seed=0, shape=shape)
        self.core.setTimeoutMs(120_000)  # re-rendering a curved surface on a busy 2-core machine is slow
        self.shape = shape
        self.pixel_size_um = self.core.getPixelSizeUm() or 0.65

    def snap(self, tilt_deg: float, seed: int, in_focus_shift_px: float = 0.0, exposure_ms: float = 10.0,
             curvature_per_mm: float = 0.0) -> SimFrame:
        from livepsf.sim import ground_truth

        core = self.core
        core.setProperty("Sample", "TiltDeg", tilt_deg)
        core.setProperty("Sample", "CurvaturePerMm", curvature_per_mm)
        core.setProperty("Sample", "Seed", seed)
        # Height is 0 at the frame centre and grows along x; putting the stage at the height of column
        # (centre + shift) brings that column into focus.
        z_um = in_focus_shift_px * self.pixel_size_um * math.tan(math.radians(tilt_deg))
        core.setPosition("Z", z_um)
        core.waitForDevice("Z")
        core.setExposure(exposure_ms)
        core.snapImage()
        frame = np.asarray(core.getImage())
        gt = ground_truth(core)
        centre = (self.shape[1] - 1) / 2.0
        in_focus = centre + in_focus_shift_px if curvature_per_mm == 0 else None
        return SimFrame(frame, -np.asarray(gt.defocus_um, dtype=np.float64), in_focus, gt)


class OracleMapper:
    """PSF maps from the simulator's ground truth (canonical Z-3 at window centres, optional noise)."""

    def __init__(self, noise_waves: float = 0.0, window_px: int = 128, stride_px: int = 64, seed: int = 0):
        from livepsf.optics import Optics

        self.optics = Optics()
        self.noise = noise_waves
        self.window_px, self.stride_px = window_px, stride_px
        self.rng = np.random.default_rng(seed)
        self.last_truth = None

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


def measure(cal: Calibration, pmap: PSFMap, height: np.ndarray, frame: np.ndarray | None,
            median_windows: int = 1) -> dict:
    """Per-window errors of calibrated depth against the truth.

    ``abs``: reliable windows (valid, and two-directional texture when the calibration gates on it);
    ``filled_abs``: every window not flagged invalid, unreliable ones holding their filled-in depth.
    """
    depth = cal.depth_um(pmap, frame, median_windows)
    truth = window_truth(pmap, height)
    valid = reliable_windows(pmap, frame, cal.max_texture_coherence)
    err = depth - truth
    filled_abs = np.abs(err[~pmap.invalid_mask])
    e = np.abs(err[valid])
    ss_tot = np.sum((truth[valid] - truth[valid].mean()) ** 2)
    r2 = 1 - np.sum(err[valid] ** 2) / ss_tot if ss_tot > 0 else float("nan")
    # As the paper's Fig. 5f: the depth profile along the tilt axis (x), median over each column's
    # valid windows, against the true height of that column.
    cols = valid.any(axis=0)
    profile = np.array([np.median(depth[valid[:, j], j]) for j in np.flatnonzero(cols)])
    profile_truth = truth[:, cols].mean(axis=0)
    return {"abs": e, "err_map": np.where(valid, err, np.nan), "r2": r2, "valid_fraction": float(valid.mean()),
            "depth": depth, "truth": truth, "profile_abs": np.abs(profile - profile_truth), "filled_abs": filled_abs}


def save_error_map(err_map: np.ndarray, depth: np.ndarray, truth: np.ndarray, path: Path, title: str) -> None:
    """Three panels side by side: true height, estimated depth, error (pyqtgraph, offscreen)."""
    import pyqtgraph as pg
    import pyqtgraph.exporters  # noqa: F401
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model name or .pt path (Z-3)")
    parser.add_argument("--oracle", action="store_true", help="ground-truth PSF parameters instead of a network")
    parser.add_argument("--oracle-noise", type=float, default=0.02, help="waves of noise on oracle parameters")
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--test-frames", type=int, default=2, help="fresh test frames per tilt")
    parser.add_argument("--sample", default="printed-grid", help="simulator sample: printed-grid, cells, filaments")
    parser.add_argument("--estimate-focus", action="store_true",
                        help="estimate the calibration frames' in-focus column (default: give it, mid-field)")
    parser.add_argument("--median", type=int, default=1, help="depth median over N x N windows")
    parser.add_argument("--aggregate", default="median", choices=["median", "window"])
    parser.add_argument("--no-gate", action="store_true", help="keep windows of one-directional texture")
    parser.add_argument("--out", type=Path, default=None, help="folder for the calibration, plot and error map")
    args = parser.parse_args(argv)

    sim = Simulator(sample=args.sample)
    if args.oracle:
        mapper = OracleMapper(args.oracle_noise, stride_px=args.stride)
        label = f"oracle (ground-truth parameters + {args.oracle_noise} waves noise)"
    else:
        from livepsf.mapping import PSFMapper
        from livepsf.net import load_model

        net = load_model(args.model)
        mapper = PSFMapper(net, stride_px=args.stride)
        label = f"model {net.card.name} ({net.card.architecture}, {net.card.weights_sha256[:12]})"

    def map_frame(f: SimFrame) -> PSFMap:
        if isinstance(mapper, OracleMapper):
            mapper.last_truth = f.truth
        return mapper(f.frame)

    t0 = time.time()
    # Calibration set: in focus mid-field, 10 ms exposure, seeds 1..3.
    cal_frames = [sim.snap(t, seed=1 + i, in_focus_shift_px=0.0, exposure_ms=10.0) for i, t in enumerate(TILTS)]
    gate = {"max_texture_coherence": None} if args.no_gate else {}
    gate["aggregate"] = args.aggregate
    in_focus = None if args.estimate_focus else [f.in_focus_px for f in cal_frames]
    cal = calibrate_psf_maps([map_frame(f) for f in cal_frames], list(TILTS), sim.pixel_size_um, "x", in_focus,
                             frames=[f.frame for f in cal_frames], **gate)
    use_frame = (lambda f: None) if args.no_gate else (lambda f: f.frame)
    print(f"# depth accuracy — {label}, sample {args.sample}, aggregate {args.aggregate}, "
          f"texture gate {'off' if args.no_gate else 'on'}, median {args.median}, in-focus column "
          f"{'estimated' if args.estimate_focus else 'given'}")
    print(f"calibration: {cal.summary()}")
    for s in cal.metrics:
        print(f"  {s.metric:>6}: slope {s.slope_um_per_unit:.3f} µm/unit, R² {s.r2:.4f}, "
              f"|err| {s.mean_abs_error_um:.2f} ± {s.sd_abs_error_um:.2f} µm")

    # Test set: other seeds and noise (3 ms exposure), in-focus position moved by ±160 px.
    rows = []
    all_abs, all_prof = [], []
    for i, t in enumerate(TILTS):
        errs, perrs, ferrs, r2s, valid = [], [], [], [], []
        for k in range(args.test_frames):
            shift = 160.0 if k % 2 == 0 else -160.0
            f = sim.snap(t, seed=100 + 10 * i + k, in_focus_shift_px=shift, exposure_ms=3.0)
            m = measure(cal, map_frame(f), f.height_rel_focus_um, use_frame(f), args.median)
            errs.append(m["abs"])
            ferrs.append(m["filled_abs"])
            perrs.append(m["profile_abs"])
            r2s.append(m["r2"])
            valid.append(m["valid_fraction"])
        e = np.concatenate(errs)
        pe = np.concatenate(perrs)
        fe = np.concatenate(ferrs)
        all_abs.append(e)
        all_prof.append(pe)
        depth_range = sim.shape[1] * sim.pixel_size_um * math.tan(math.radians(t))
        rows.append((t, float(np.mean(r2s)), e.mean(), e.std(), 100 * e.mean() / depth_range,
                     100 * e.std() / depth_range, depth_range, float(np.mean(valid)), len(e), pe.mean(), pe.std(),
                     fe.mean(), fe.std()))

    print()
    print("| tilt | R² (windows) | \\|error\\| per window (µm) | relative error | profile \\|error\\| (µm) "
          "| \\|error\\| all windows, filled (µm) | depth range (µm) | windows used | paper |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for t, r2, mae, sd, rel, rel_sd, rng, vf, n, pmae, psd, fmae, fsd in rows:
        p = PAPER[t]
        print(f"| {t:g}° | {r2:.3f} | {mae:.2f} ± {sd:.2f} | {rel:.2f} ± {rel_sd:.2f} % | {pmae:.2f} ± {psd:.2f} | "
              f"{fmae:.2f} ± {fsd:.2f} | {rng:.1f} | {100 * vf:.0f} % (n={n}) | {p[0]:.2f} ± {p[1]:.2f} µm |")
    e = np.concatenate(all_abs)
    pe = np.concatenate(all_prof)
    print(f"| all | | {e.mean():.2f} ± {e.std():.2f} | | {pe.mean():.2f} ± {pe.std():.2f} | | | | 1.81 ± 1.39 µm |")
    print("(profile: median over each column's valid windows vs the column's true height, as the paper's Fig. 5f)")

    # A curved surface (bowl, 1/R = 1 /mm), no tilt, in focus at the centre.
    f = sim.snap(0.0, seed=77, exposure_ms=10.0, curvature_per_mm=1.0)
    m = measure(cal, map_frame(f), f.height_rel_focus_um, use_frame(f), args.median)
    span = float(np.ptp(m["truth"]))
    print(f"\ncurved surface (1/R = 1 /mm, height span {span:.1f} µm over the window centres): mean |error| "
          f"{m['abs'].mean():.2f} ± {m['abs'].std():.2f} µm, R² {m['r2']:.3f}, valid {100 * m['valid_fraction']:.0f} %")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = ("oracle" if args.oracle else Path(str(args.model)).stem) + f"_{args.sample}_median{args.median}"
        save_error_map(m["depth"] - m["truth"], m["depth"], m["truth"], args.out / f"curved_error_{stem}.png",
                       f"Curved surface (1/R = 1 /mm), {label}: mean |error| {m['abs'].mean():.2f} µm over reliable "
                       f"windows, {m['filled_abs'].mean():.2f} µm over all (unreliable ones filled from neighbours)")
        cal_path = args.out / f"bench_calibration_{stem}.json"
        if cal_path.exists():
            cal_path.unlink()
        cal.save(cal_path)
        plot_calibration(cal, cal_path.with_suffix(".png"))
    print(f"\n({time.time() - t0:.0f} s; frames 1024×1024 at 0.65 µm, stride {args.stride} px, "
          f"errors per valid window vs the simulator's true height)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

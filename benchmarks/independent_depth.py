"""Depth pipeline on tilted-grid renders that livepsf did not make (issue #14's "independent renders").

An independent renderer, written here without ``livepsf.sim``, ``livepsf.data`` or livepsf's PSF code:

- **Sample**: a printed grid on transparency foil seen in transmitted light. 200 µm period, 25 µm toner
  lines with ragged edges (a smooth random displacement of each edge, ~1.5 µm), toner grain (optical
  density varying on the scale of toner particles, a few µm, with small voids), stray toner specks
  beside the lines, and a faint texture on the clear foil (~2 % smooth mottle plus fine haze). Random
  grid rotation (0–3°) and phase relative to the frame, one seed per frame.
- **Optics**: 10×/0.3 air objective, 550 nm, 0.65 µm pixels, 1024 × 1024 frames. Scalar pupil PSF:
  ``|FFT(P exp(i 2π W))|²`` of a circular pupil, ``W = d √3 (2ρ² − 1) + A √6 ρ² cos 2θ`` (RMS-normalised
  Zernike, waves; θ from array axis 1), computed 3× oversampled and integrated over each pixel. The
  defocus of a point at height ``h`` (µm, positive above the focal plane) is
  ``d = −h NA² / (4 √3 n λ)``: the same paraxial relation as :meth:`livepsf.optics.Optics.defocus_waves`
  applied to the local defocus ``Z − h``. Cylindrical lens: ``A = 0.25`` waves astig_0, constant.
- **Tilted sample**: height grows along x by ``tan(tilt)`` per µm (3°, 6°, 10°), zero at the given
  in-focus column. The sample is split into strips of height 0.5 µm apart with hat-function weights
  (a partition of unity, so strip borders blend linearly), each strip convolved with the PSF of its
  height and the results summed: every sample point spreads with its own PSF.
- **Camera**: 800 photons on the clear foil, Poisson shot noise, 2 e⁻ read noise, offset 100 ADU,
  1 e⁻/ADU, uint16.

The sign convention is checked against livepsf's simulator on one case (the network's astigmatism on
windows above focus must have the same sign on both), and the PSF against ``livepsf.make_psf``.

Protocol, as ``benchmarks/depth_accuracy.py`` (whose measurement code is reused): calibrate on renders
with the in-focus column given (per tilt: mid-field and moved by +240 px; ``--cal-shifts 0,0`` for
mid-field only) with ``livepsf.depth.calibrate_psf_maps`` on the maps of ``PSFMapper(net, stride_px=64)``,
which is what ``calibrate_tilted_grid`` does after mapping (same defaults: texture gate on, monotone
curve; when the curve cannot be fitted the script says so and falls back to the line). Then measure on
fresh renders (other grain, grid, noise; in-focus column moved by ±160 px): per-window error of reliable
windows with the fraction within 1σ / 2σ, the paper's column profile, and the fused surface (plane and
smooth priors). Windows are also sorted by what they hold (from the renderer's own line masks: a
crossing, lines of one direction, blank foil) and by true height, to see which ones the network reads,
whether depth follows the texture orientation, and where windows read the wrong side of focus. A
diagnostic run repeats calibration and measurement using only the windows that hold a line crossing.

    python benchmarks/independent_depth.py                 # the shipped default model, ~2 min on 2 cores
    python benchmarks/independent_depth.py --windows       # also every window's error, one render per tilt
    python benchmarks/independent_depth.py --decompose     # errors split into offset, scale and shape
    python benchmarks/independent_depth.py --png /tmp      # also a rendered frame and depth maps as PNG
    python benchmarks/independent_depth.py --no-sign-check # skip the simulator comparison (saves ~20 s)
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# benchmarks/ is on sys.path when this script runs: the measurement is depth_accuracy.py's own.
from depth_accuracy import PAPER, _mean_sd, measure, print_decomposition, save_error_map

TILTS = (3.0, 6.0, 10.0)
NA, WAVELENGTH_UM, PIXEL_UM, IMMERSION = 0.3, 0.55, 0.65, 1.0
SHAPE = (1024, 1024)
LENS_ASTIG_0 = 0.25  # waves, Z(2, 2)
PHOTONS, READ_NOISE_E, OFFSET_ADU = 800.0, 2.0, 100.0
PSF_PX, OVERSAMPLE = 129, 3
MARGIN = PSF_PX // 2  # sample drawn this far beyond the frame so edge pixels get all their light
STRIP_UM = 0.5  # height step between strips
PERIOD_UM, LINE_UM = 200.0, 25.0


# -- optics -----------------------------------------------------------------------------------------


def defocus_waves_for_height(height_um: np.ndarray | float) -> np.ndarray | float:
    """Zernike defocus (RMS waves) of a point ``height_um`` above the focal plane (local defocus -h)."""
    return -np.asarray(height_um) * NA**2 / (4.0 * math.sqrt(3.0) * IMMERSION * WAVELENGTH_UM)


class PupilPSF:
    """Scalar pupil PSFs (defocus + astig_0), pixel-integrated, ``(PSF_PX, PSF_PX)`` summing to 1."""

    def __init__(self, size_px: int = PSF_PX, oversample: int = OVERSAMPLE) -> None:
        self.size, self.os = size_px, oversample
        n = size_px * oversample
        dx_um = PIXEL_UM / oversample
        f = np.fft.fftfreq(n, dx_um) / (NA / WAVELENGTH_UM)  # pupil coordinate, 1 at the pupil edge
        fx, fy = np.meshgrid(f, f)  # fx along array axis 1 (x), fy along axis 0 (y)
        self.rho2 = fx**2 + fy**2
        self.pupil = self.rho2 <= 1.0
        self.cos2t = np.where(self.rho2 > 0, (fx**2 - fy**2) / np.maximum(self.rho2, 1e-30), 0.0)
        self._cache: dict[tuple[float, float], np.ndarray] = {}  # renders reuse the same height levels

    def __call__(self, focus_waves: float, astig_0_waves: float) -> np.ndarray:
        key = (round(focus_waves, 9), round(astig_0_waves, 9))
        if key not in self._cache:
            self._cache[key] = self._compute(focus_waves, astig_0_waves)
        return self._cache[key]

    def _compute(self, focus_waves: float, astig_0_waves: float) -> np.ndarray:
        w = (focus_waves * math.sqrt(3.0) * (2.0 * self.rho2 - 1.0)
             + astig_0_waves * math.sqrt(6.0) * self.rho2 * self.cos2t)
        field = np.fft.fftshift(np.fft.ifft2(np.where(self.pupil, np.exp(2j * np.pi * w), 0.0)))
        fine = np.abs(field) ** 2
        # Fine sample N//2 is the optical axis; pixel PSF_PX//2 is centred on it.
        psf = fine.reshape(self.size, self.os, self.size, self.os).sum(axis=(1, 3))
        return (psf / psf.sum()).astype(np.float32)


def second_moments(psf: np.ndarray) -> tuple[float, float]:
    """Variance (px²) of a PSF along y (axis 0) and x (axis 1)."""
    c = np.arange(psf.shape[0]) - psf.shape[0] // 2
    return float((psf.sum(1) * c**2).sum()), float((psf.sum(0) * c**2).sum())


# -- sample -----------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    n = gaussian_filter(rng.standard_normal(shape), sigma_px)
    return n / n.std()


@dataclass
class GridSample:
    """Transmission of the foil (1 = clear) and each line family's toner coverage, sample-plane pixels."""

    transmission: np.ndarray
    vertical: np.ndarray  # coverage of the lines running along y (seen as columns)
    horizontal: np.ndarray  # coverage of the lines running along x (rows)
    rotation_deg: float


def printed_grid(shape: tuple[int, int], rng: np.random.Generator) -> GridSample:
    """A laser-printed grid (toner on transparency foil) in transmitted light, ``shape`` px."""
    h, w = shape
    rotation = math.radians(rng.uniform(0.0, 3.0)) * rng.choice([-1.0, 1.0])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) * PIXEL_UM
    u = xx * math.cos(rotation) + yy * math.sin(rotation) + rng.uniform(0, PERIOD_UM)
    v = -xx * math.sin(rotation) + yy * math.cos(rotation) + rng.uniform(0, PERIOD_UM)

    def coverage(coord: np.ndarray) -> np.ndarray:
        # Ragged edges: the line's two edges wander independently by ~1.5 µm over a few µm.
        left = 1.5 * _smooth_noise(rng, shape, 3.0)
        right = 1.5 * _smooth_noise(rng, shape, 3.0)
        d = (coord + PERIOD_UM / 2) % PERIOD_UM - PERIOD_UM / 2  # signed distance to the line centre
        edge_um = 0.4
        inside_left = np.clip((d + LINE_UM / 2 + left) / edge_um + 0.5, 0, 1)
        inside_right = np.clip((LINE_UM / 2 + right - d) / edge_um + 0.5, 0, 1)
        return inside_left * inside_right

    vertical, horizontal = coverage(u), coverage(v)
    toner = np.maximum(vertical, horizontal)
    # Toner grain: optical density varies from particle to particle (~5 µm), with small voids.
    grain = 1.0 + 0.25 * _smooth_noise(rng, shape, 2.5) + 0.1 * _smooth_noise(rng, shape, 1.0)
    voids = _smooth_noise(rng, shape, 1.2) > 2.3
    density = np.clip(0.9 * grain, 0.2, None) * np.where(voids, 0.3, 1.0)
    # Stray toner specks near the lines (scatter of the printer), a few µm across.
    near = gaussian_filter(toner, 15.0)
    specks = gaussian_filter((rng.random(shape) < 0.0015 * near).astype(np.float64), 1.5) * 18.0
    optical_density = density * toner + 0.6 * np.clip(specks, 0, 1)
    # Faint foil texture: a smooth mottle and fine haze, ~2 % together.
    foil = 1.0 + 0.015 * _smooth_noise(rng, shape, 12.0) + 0.008 * _smooth_noise(rng, shape, 1.5)
    return GridSample(foil * 10.0 ** (-optical_density), vertical, horizontal, math.degrees(rotation))


# -- image formation ---------------------------------------------------------------------------------


def sample_heights_um(tilt_deg: float, in_focus_px: float, width_px: int) -> np.ndarray:
    """Height (µm, above the focal plane) of each sample column; column ``MARGIN`` is frame column 0."""
    cols = np.arange(width_px) - MARGIN
    return (cols - in_focus_px) * PIXEL_UM * math.tan(math.radians(tilt_deg))


def blur_tilted(transmission: np.ndarray, heights_um: np.ndarray, psf: PupilPSF) -> np.ndarray:
    """Image of a sample whose column ``j`` lies at ``heights_um[j]``, cropped to the frame (no margin)."""
    h_s, w_s = transmission.shape
    levels = np.arange(np.floor(heights_um.min() / STRIP_UM), np.ceil(heights_um.max() / STRIP_UM) + 1) * STRIP_UM
    out = np.zeros((h_s + 2 * MARGIN, w_s + 2 * MARGIN), dtype=np.float64)
    for level in levels:
        weight = np.clip(1.0 - np.abs(heights_um - level) / STRIP_UM, 0.0, None)  # hat: sums to 1 over levels
        cols = np.nonzero(weight > 0)[0]
        if len(cols) == 0:
            continue
        c0, c1 = cols[0], cols[-1] + 1
        kernel = psf(float(defocus_waves_for_height(level)), LENS_ASTIG_0)
        part = fftconvolve(transmission[:, c0:c1] * weight[c0:c1], kernel, mode="full")
        out[:, c0:c1 + 2 * MARGIN] += part
    # Full-convolution coordinates are shifted by MARGIN; the frame starts MARGIN further in.
    return out[2 * MARGIN:2 * MARGIN + h_s - 2 * MARGIN, 2 * MARGIN:2 * MARGIN + w_s - 2 * MARGIN]


def camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson shot noise at PHOTONS on the clear foil, Gaussian read noise, offset, uint16."""
    electrons = rng.poisson(PHOTONS * np.clip(image, 0, None)) + rng.normal(0.0, READ_NOISE_E, image.shape)
    return np.clip(np.round(electrons + OFFSET_ADU), 0, 65535).astype(np.uint16)


@dataclass
class Render:
    frame: np.ndarray  # uint16 (H, W)
    height_um: np.ndarray  # (H, W) true height relative to the focal plane, positive above
    in_focus_px: float
    sample: GridSample  # cropped to the frame


def render(tilt_deg: float, in_focus_px: float, seed: int, psf: PupilPSF) -> Render:
    """One independent render of the tilted grid (height growing along x)."""
    rng = np.random.default_rng(seed)
    padded = (SHAPE[0] + 2 * MARGIN, SHAPE[1] + 2 * MARGIN)
    sample = printed_grid(padded, rng)
    heights = sample_heights_um(tilt_deg, in_focus_px, padded[1])
    frame = camera(blur_tilted(sample.transmission, heights, psf), rng)
    crop = (slice(MARGIN, MARGIN + SHAPE[0]), slice(MARGIN, MARGIN + SHAPE[1]))
    cropped = GridSample(sample.transmission[crop], sample.vertical[crop], sample.horizontal[crop],
                         sample.rotation_deg)
    height = np.broadcast_to(heights[MARGIN:MARGIN + SHAPE[1]][None, :], SHAPE).copy()
    return Render(frame, height, in_focus_px, cropped)


# -- checks -----------------------------------------------------------------------------------------


def check_psf(psf: PupilPSF) -> str:
    """Our PSF against livepsf's optics (only a check: the renders never use livepsf's PSF code)."""
    import livepsf

    lines = []
    for h_um in (-30.0, 20.0):
        focus = float(defocus_waves_for_height(h_um))
        ours = psf(focus, LENS_ASTIG_0).astype(np.float64)
        theirs = livepsf.make_psf("Z-3", size_px=PSF_PX, optics=livepsf.Optics(), focus=focus,
                                  astig_0=LENS_ASTIG_0, astig_45=0.0)
        vy, vx = second_moments(ours)
        corr = float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])
        lines.append(f"h {h_um:+.0f} µm (focus {focus:+.2f} waves): variance y/x {vy:.1f}/{vx:.1f} px², "
                     f"longer along {'x' if vx > vy else 'y'}; correlation with livepsf.make_psf {corr:.4f}; "
                     f"energy in the outer 8 px {float(1 - ours[8:-8, 8:-8].sum()):.4f}")
    return "\n".join(lines)


def _side_astig(pmap, height_um: np.ndarray, min_abs_um: float = 15.0) -> tuple[float, float]:
    """Median astig_0 of the valid windows above (height > min_abs_um) and below focus."""
    from depth_accuracy import window_truth

    h = window_truth(pmap, height_um)
    valid = ~pmap.invalid_mask
    a0 = pmap.values("astig_0")
    return float(np.median(a0[valid & (h > min_abs_um)])), float(np.median(a0[valid & (h < -min_abs_um)]))


def check_sign(mapper, psf: PupilPSF) -> str:
    """Both renderers at 6°, in focus mid-field: the network's astig_0 must have the same sign per side."""
    from livepsf.sim import create_core, ground_truth

    core = create_core(sample="printed-grid", tilt_deg=6.0, tilt_axis="x", lens=True, seed=0, shape=SHAPE)
    core.setTimeoutMs(120_000)
    core.setPosition("Z", 0.0)
    core.waitForDevice("Z")
    core.snapImage()
    sim_height = -np.asarray(ground_truth(core).defocus_um, dtype=np.float64)
    sim_above, sim_below = _side_astig(mapper(np.asarray(core.getImage())), sim_height)
    ours = render(6.0, (SHAPE[1] - 1) / 2, seed=999, psf=psf)
    our_above, our_below = _side_astig(mapper(ours.frame), ours.height_um)
    right = float(sim_height[:, -64:].mean())
    agree = np.sign(sim_above) == np.sign(our_above) and np.sign(sim_below) == np.sign(our_below)
    return (f"simulator: true height at the right edge {right:+.1f} µm (tilt raises +x); network astig_0, "
            f"median of valid windows above / below focus (|h| > 15 µm): livepsf.sim {sim_above:+.3f} / "
            f"{sim_below:+.3f}, independent {our_above:+.3f} / {our_below:+.3f} -> "
            + ("same sides" if agree else "SIGN MISMATCH"))


# -- per-window analysis -----------------------------------------------------------------------------

CLASSES = ("crossing", "both", "vertical", "horizontal", "foil")
TAGS = {"crossing": "X", "both": "+", "vertical": "|", "horizontal": "-", "foil": " "}


def window_content(pmap, sample: GridSample, min_fraction: float = 0.04) -> np.ndarray:
    """What each window holds (renderer truth), one of :data:`CLASSES`: a line crossing, lines of both
    directions that do not cross inside it, lines of one direction, or blank foil."""
    half = pmap.window_px // 2
    out = np.empty(pmap.invalid.shape, dtype=object)
    for i, cy in enumerate(pmap.centers_y):
        for j, cx in enumerate(pmap.centers_x):
            sl = (slice(max(0, int(cy) - half + 1), int(cy) + half + 1),
                  slice(max(0, int(cx) - half + 1), int(cx) + half + 1))
            v, h = sample.vertical[sl].mean() > min_fraction, sample.horizontal[sl].mean() > min_fraction
            if (sample.vertical[sl] * sample.horizontal[sl]).mean() > 0.1 * min_fraction:
                out[i, j] = "crossing"
            elif v and h:
                out[i, j] = "both"
            else:
                out[i, j] = "vertical" if v else "horizontal" if h else "foil"
    return out


@dataclass
class Case:
    """One render with its PSF map and what each window holds."""

    tilt_deg: float
    frame: np.ndarray
    height_um: np.ndarray
    in_focus_px: float
    pmap: object
    content: np.ndarray


def make_case(tilt_deg: float, in_focus_px: float, seed: int, psf: PupilPSF, mapper) -> Case:
    r = render(tilt_deg, in_focus_px, seed, psf)
    pmap = mapper(r.frame)
    return Case(tilt_deg, r.frame, r.height_um, in_focus_px, pmap, window_content(pmap, r.sample))


def crossings_only(case: Case) -> Case:
    """The case with every window that holds no line crossing marked invalid: a texture gate that knew
    the sample (diagnostic: what the pipeline does when only the informative windows are used)."""
    import dataclasses

    invalid = np.where(case.content == "crossing", case.pmap.invalid, 1.0).astype(case.pmap.invalid.dtype)
    return dataclasses.replace(case, pmap=dataclasses.replace(case.pmap, invalid=invalid))


def calibrate(cases: list[Case], curve: str):
    """``calibrate_psf_maps`` on the cases' maps (``calibrate_tilted_grid`` without mapping again);
    falls back to the linear curve when the requested curve cannot be fitted, and says so."""
    from livepsf.depth import calibrate_psf_maps
    from livepsf.errors import InputError

    def run(kind: str):
        return calibrate_psf_maps([c.pmap for c in cases], [c.tilt_deg for c in cases], PIXEL_UM, "x",
                                  [c.in_focus_px for c in cases], frames=[c.frame for c in cases], curve=kind)

    try:
        return run(curve), ""
    except InputError as exc:
        if curve == "linear":
            raise
        return run("linear"), f"{curve} curve FAILED ({exc}); fell back to the linear curve"


def print_calibration(cal, failure: str, cases: list[Case], stride_px: int) -> None:
    print(f"calibration: {cal.summary()}")
    if failure:
        print(f"calibration: {failure}")
    u0, u45 = cal.lens_direction
    print(f"lens direction (astig_0, astig_45) = ({u0:+.3f}, {u45:+.3f}): axis "
          f"{math.degrees(0.5 * math.atan2(u45, u0)):+.1f}° (astig_0: 0° or ±90°); strength "
          f"{cal.lens_strength_waves:.3f} waves (true {LENS_ASTIG_0})")
    for s in cal.metrics:
        lofo = "–" if s.lofo_mean_abs_error_um is None else f"{s.lofo_mean_abs_error_um:.2f}"
        curve = "–" if s.curve_mean_abs_error_um is None else f"{s.curve_mean_abs_error_um:.2f}"
        print(f"  {s.metric:>9}: line R² {s.r2:+.3f}, line |error| {s.mean_abs_error_um:.2f} µm, "
              f"curve {curve} µm, LOFO {lofo} µm")
    if cal.curve is not None:
        print("curve (metric→µm): " + ", ".join(f"{m:+.3f}→{h:+.1f}" for m, h in
                                               zip(cal.curve.metric_knots, cal.curve.height_knots_um)))
    n_cols = (cases[0].frame.shape[1] - cases[0].pmap.window_px) // stride_px + 1
    for r in cal.per_tilt:
        lofo = "–" if r.lofo_mean_abs_error_um is None else f"{r.lofo_mean_abs_error_um:.1f}"
        print(f"  {r.tilt_deg:g}°, in focus at {r.in_focus_px:.0f} px: {r.n_points} of {n_cols} window columns used, "
              f"R² {r.r2:+.3f}, |error| {r.mean_abs_error_um:.1f} µm, LOFO {lofo} µm")
    if cal.notes:
        print(f"notes: {cal.notes}")
    if cal.uncertainty is not None:
        u = cal.uncertainty
        print(f"σ model: {u.n_windows} windows, σ(|depth|) "
              + ", ".join(f"{d:.0f}: {s:.1f}" for d, s in zip(u.depth_knots_um, u.sigma_knots_um))
              + f" µm; in-sample {100 * u.coverage_1sigma:.0f} % / {100 * u.coverage_2sigma:.0f} % within 1σ / 2σ")


PRIORS = ("plane", "smooth")


def print_error_table(cal, tests: list[Case], decompose: bool = False) -> dict:
    """The depth_accuracy.py table on the test cases (``decompose``: and its split of the errors into
    offset, scale and shape); returns the first case's measurement per tilt."""
    from livepsf.depth import surface_depth

    print("\n| tilt | \\|error\\| per window (µm) | within 1σ / 2σ | profile \\|error\\| (paper's protocol, µm) "
          + "".join(f"| surface {p} \\|error\\| (µm) " for p in PRIORS)
          + "| \\|error\\| all windows, filled (µm) | reliable windows | paper (profile) |")
    print("| --- " * (7 + len(PRIORS)) + "|")
    first, measured = {}, []
    for tilt in TILTS:
        cases = [c for c in tests if c.tilt_deg == tilt]
        results = [measure(cal, c.pmap, c.height_um, c.frame, PRIORS, tilted=True) for c in cases]
        first[tilt] = results[0]
        centre = (cases[0].frame.shape[1] - 1) / 2.0
        measured += [(tilt, c.in_focus_px - centre, m) for c, m in zip(cases, results)]
        z = np.concatenate([m.window_z for m in results])
        prof = np.concatenate([m.profile_abs for m in results])
        surf = {p: np.concatenate([m.surface_abs[p] for m in results]) for p in PRIORS}
        within = f"{100 * np.mean(z <= 1):.0f} % / {100 * np.mean(z <= 2):.0f} %" if len(z) else "–"
        print(f"| {tilt:g}° | {_mean_sd([m.window_abs for m in results])} | {within} | {_mean_sd(prof)} | "
              + "".join(f"{_mean_sd(surf[p])} | " for p in PRIORS)
              + f"{_mean_sd([m.filled_abs for m in results])} | "
              f"{100 * np.mean([m.reliable_fraction for m in results]):.0f} % | {PAPER[tilt][0]:.2f} ± {PAPER[tilt][1]:.2f} |")
    if decompose:
        print_decomposition(measured, PRIORS[0])
    models = [surface_depth(cal, c.pmap, c.frame, prior="smooth").model for c in tests]
    print(f"smooth prior: the surface kept curvature (BIC) in {sum(m != 'plane' for m in models)} of {len(models)} "
          "test renders (all are flat)")
    return first


def _fmt(stat, values: list, spec: str) -> str:
    return format(float(stat(values)), spec) if values else "–"


def print_class_table(cal, tests: list[Case]) -> None:
    """Per tilt and window content: how many windows, how many reliable, their errors and astig_0."""
    from depth_accuracy import window_truth

    print("\nwindows by content (renderer truth), test renders | n | reliable | mean |error| of reliable (µm) | "
          "every valid window, gate off: mean signed error (µm), median astig_0 (waves), median network "
          "invalid probability")
    for tilt in TILTS:
        rows = {name: ([], [], [], [], 0) for name in CLASSES}
        for c in (c for c in tests if c.tilt_deg == tilt):
            est = cal.depth_estimate(c.pmap, c.frame)
            err = est.depth_um - window_truth(c.pmap, c.height_um)
            valid = ~c.pmap.invalid_mask
            for name in CLASSES:
                sel = c.content == name
                rel, signed, a0, inv, n = rows[name]
                rel.extend(np.abs(err[sel & est.reliable]).tolist())
                signed.extend(err[sel & valid].tolist())
                a0.extend(c.pmap.values("astig_0")[sel & valid].tolist())
                inv.extend(c.pmap.invalid[sel].tolist())
                rows[name] = (rel, signed, a0, inv, n + int(sel.sum()))
        for name, (rel, signed, a0, inv, n) in rows.items():
            if n == 0:
                continue
            print(f"  {tilt:4g}° {name:>10} | {n:3d} | {len(rel):3d} | {_fmt(np.mean, rel, '5.1f')} | "
                  f"{_fmt(np.mean, signed, '+6.1f')}, {_fmt(np.median, a0, '+.3f')}, {float(np.median(inv)):.2f}")


def print_height_table(cal, tests: list[Case], bin_um: float = 20.0) -> None:
    """Reliable windows of all test renders by true height: median error and how many read the wrong side."""
    from depth_accuracy import window_truth

    depth, truth = [], []
    for c in tests:
        est = cal.depth_estimate(c.pmap, c.frame)
        depth.append(est.depth_um[est.reliable])
        truth.append(window_truth(c.pmap, c.height_um)[est.reliable])
    depth, truth = np.concatenate(depth), np.concatenate(truth)
    print(f"\nreliable test windows by true height (bins of {bin_um:g} µm) | n | median error (µm) | "
          "wrong side of focus (|truth| > 10 µm)")
    edges = np.arange(np.floor(truth.min() / bin_um), np.ceil(truth.max() / bin_um) + 1) * bin_um
    for lo, hi in itertools.pairwise(edges):
        sel = (truth >= lo) & (truth < hi)
        if not sel.any():
            continue
        far = sel & (np.abs(truth) > 10)
        wrong = f"{100 * np.mean(np.sign(depth[far]) != np.sign(truth[far])):.0f} %" if far.any() else "–"
        print(f"  [{lo:+4.0f}, {hi:+4.0f}) | {sel.sum():3d} | {np.median(depth[sel] - truth[sel]):+6.1f} | {wrong}")


def print_window_grid(cal, case: Case) -> None:
    """Per window: depth − truth (µm) of reliable windows ('.' otherwise), tagged by content."""
    from depth_accuracy import window_truth

    est = cal.depth_estimate(case.pmap, case.frame)
    truth = window_truth(case.pmap, case.height_um)
    print(f"\n{case.tilt_deg:g}° test render (in focus at {case.in_focus_px:.0f} px): depth − truth per window (µm); "
          "X crossing, + lines both ways, | vertical, - horizontal, blank foil; '.' unreliable")
    print("  truth  " + " ".join(f"{t:5.0f}" for t in truth[0]))
    for i in range(truth.shape[0]):
        print("         " + " ".join(f"{TAGS[case.content[i, j]]}{est.depth_um[i, j] - truth[i, j]:+4.0f}"
                                     if est.reliable[i, j] else f"{TAGS[case.content[i, j]]}   ."
                                     for j in range(truth.shape[1])))


# -- main -------------------------------------------------------------------------------------------


def save_frame_png(frame: np.ndarray, path: Path) -> None:
    """The frame as an 8-bit PNG (0.5–99.5 % percentiles), through Qt (no extra imaging dependency)."""
    from qtpy import QtGui, QtWidgets

    _app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    lo, hi = np.percentile(frame, [0.5, 99.5])
    img8 = np.ascontiguousarray(np.clip((frame - lo) / max(hi - lo, 1) * 255, 0, 255).astype(np.uint8))
    QtGui.QImage(img8.data, img8.shape[1], img8.shape[0], img8.shape[1],
                 QtGui.QImage.Format.Format_Grayscale8).save(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--dihedral-average", action="store_true",
                        help="map every frame also rotated and mirrored and average (livepsf.net.symmetry)")
    parser.add_argument("--cal-shifts", default="0,240",
                        help="in-focus column of the calibration renders, px from mid-field, one render each per tilt")
    parser.add_argument("--test-frames", type=int, default=2, help="fresh renders per tilt (focus moved ±160 px)")
    parser.add_argument("--curve", default="monotone", choices=["monotone", "linear"])
    parser.add_argument("--no-sign-check", action="store_true")
    parser.add_argument("--no-truth-gate", action="store_true",
                        help="skip the diagnostic run that uses only the windows holding a line crossing")
    parser.add_argument("--decompose", action="store_true",
                        help="split each test render's errors into offset (in-focus point), scale and shape")
    parser.add_argument("--windows", action="store_true", help="print every window's error of one test render per tilt")
    parser.add_argument("--png", type=Path, default=None, help="folder for a rendered frame and depth maps (PNG)")
    args = parser.parse_args(argv)

    import torch

    from livepsf.mapping import PSFMapper
    from livepsf.net import load_model

    torch.set_num_threads(1)
    t0 = time.time()
    net = load_model(args.model)
    mapper = PSFMapper(net, stride_px=args.stride, dihedral_average=args.dihedral_average)
    psf = PupilPSF()
    centre = (SHAPE[1] - 1) / 2.0
    print(f"# depth on independent renders — model {net.card.name} ({net.card.weights_sha256[:12]}), "
          f"lens {LENS_ASTIG_0} waves astig_0, {PHOTONS:g} photons, {args.curve} curve")
    print("\nPSF check:\n" + check_psf(psf))
    if not args.no_sign_check:
        print("sign check: " + check_sign(mapper, psf))

    shifts = [float(s) for s in args.cal_shifts.split(",")]
    cal_cases = [make_case(tilt, centre + shift, 1000 + 10 * i + k, psf, mapper)
                 for i, tilt in enumerate(TILTS) for k, shift in enumerate(shifts)]
    tests = [make_case(tilt, centre + (160.0 if k % 2 == 0 else -160.0), 2000 + 10 * i + k, psf, mapper)
             for i, tilt in enumerate(TILTS) for k in range(args.test_frames)]
    t_render = time.time() - t0

    print(f"\n## calibration on {len(cal_cases)} independent renders (per tilt, in focus at mid-field + {args.cal_shifts} px)")
    cal, failure = calibrate(cal_cases, args.curve)
    print_calibration(cal, failure, cal_cases, args.stride)
    first = print_error_table(cal, tests, args.decompose)
    print_class_table(cal, tests)
    print_height_table(cal, tests)
    if args.windows:
        for tilt in TILTS:
            print_window_grid(cal, next(c for c in tests if c.tilt_deg == tilt))

    if not args.no_truth_gate:
        print("\n## diagnostic: only windows holding a line crossing (renderer truth), calibration and test")
        truth_cal, failure = calibrate([crossings_only(c) for c in cal_cases], args.curve)
        print_calibration(truth_cal, failure, cal_cases, args.stride)
        print_error_table(truth_cal, [crossings_only(c) for c in tests])
        print_height_table(truth_cal, [crossings_only(c) for c in tests])

    if args.png is not None:
        args.png.mkdir(parents=True, exist_ok=True)
        case, m = next(c for c in tests if c.tilt_deg == TILTS[-1]), first[TILTS[-1]]
        save_frame_png(case.frame, args.png / "independent_frame_10deg.png")
        save_error_map(m.surface["smooth"] - m.truth, m.surface["smooth"], m.truth,
                       args.png / "independent_surface_10deg.png",
                       f"Independent render, 10°: smooth surface, mean |error| {m.surface_abs['smooth'].mean():.1f} µm")
        save_error_map(np.nan_to_num(m.depth - m.truth), m.depth, m.truth, args.png / "independent_windows_10deg.png",
                       "Independent render, 10°: reliable windows' own depth (unreliable: 0)")
        print(f"\nPNGs in {args.png}")
    print(f"\n({time.time() - t0:.0f} s, rendering and mapping {t_render:.0f} s; torch 1 thread; errors vs the "
          "renderer's true height at window centres; test renders: other grain, grid and noise seeds, in-focus "
          "column moved by ±160 px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

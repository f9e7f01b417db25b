"""The blurred-halves check of tests/test_mapping.py over many draws, at several light levels.

A 512 x 1024 frame of smoothed-noise texture with bright points, left half blurred at focus 0.4 waves
and right half at 1.4 waves (no astigmatism), Poisson noise, mapped at stride 64. The unit tests use one
draw (texture seed 30); a gate that decides whether a model ships should not be a coin flip, so this
prints, per model and light level, over ``--draws`` textures and noise draws:

* the R² of the map against the two true values and the fraction of (left, right) window pairs
  misordered, over the windows lying entirely in one half, and how many draws pass the test's limits
  (R² > 0.5, misordered <= 2 %);
* the misordered fraction among the windows the map calls valid only;
* how many of the right half's 49 windows the map flags invalid, how many the training labels' own
  visibility rule flags (:func:`livepsf.data.degrade.invalid_rule` and ``blurred_invalid`` on the sharp and
  blurred windows, 1 electron per count, no read noise), and the agreement of the two.

    python benchmarks/blurred_halves.py                          # shipped focus and default
    python benchmarks/blurred_halves.py --models default runs/x.pt --brightness 1,2,8

Measured (2-core AMD EPYC, torch 2.13.0 CPU, 8 draws, 18 s for three models and three light levels), R² mean /
min, draws passing the unit test's limits, right-half windows flagged (by the labels' rule), agreement:

| model | brightness 1 (threshold test) | brightness 2 (separation test) | brightness 8 |
| --- | --- | --- | --- |
| ``default`` 7d10b8c469b3 | 0.572 / 0.149, 3 of 8, 25-35 (23-39), 69 % | 0.730 / 0.706, 8 of 8 | 0.411 / 0.328 |
| previous ``default`` f116e1106d1f | 0.687 / 0.518, 7 of 8, 17-30 (23-39), 62 % | 0.658 / 0.622, 8 of 8 | 0.348 / 0.171 |
| ``focus`` | 0.815 / 0.635, 5 of 8, 19-28 (23-39), 66 % | 0.644 / 0.497, 7 of 8 | 0.296 / 0.161 |

No model misorders a pair of windows it calls valid (at most 0.2 %). At brightness 1 the right half sits at the
rule's threshold, so the R² there measures the fill of flagged windows; at 8 every model reads the blurrier
half as less blurred than it is (R² < 0.5 in all but one draw): the "less blur with more signal" cue of #13.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

FOCUS_WAVES = (0.4, 1.4)
SHAPE = (512, 1024)
STRIDE_PX = 64


def texture(seed: int, brightness: float) -> np.ndarray:
    """Smoothed noise plus 200 bright points, in counts (brightness 1: about 2,000 per pixel)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random(SHAPE), 2.0) * 4000.0
    ys, xs = rng.integers(0, SHAPE[0], 200), rng.integers(0, SHAPE[1], 200)
    img[ys, xs] += 3000.0
    return (img + 100.0) * brightness


def rule_invalid(sharp: np.ndarray, blurred: np.ndarray, window_px: int) -> np.ndarray:
    """The training labels' invalid rule for every window of the map grid, ``(gy, gx)`` bool."""
    import torch

    from livepsf.data.degrade import DegradationConfig, blurred_invalid, invalid_rule

    ys = np.arange(0, SHAPE[0] - window_px + 1, STRIDE_PX)
    xs = np.arange(0, SHAPE[1] - window_px + 1, STRIDE_PX)

    def cut(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.stack([a[y:y + window_px, x:x + window_px] for y in ys for x in xs]))

    sw, bw = cut(sharp), cut(blurred)
    one, zero = torch.ones(len(sw)), torch.zeros(len(sw))
    config = DegradationConfig()
    flagged = (invalid_rule(sw, one, zero, zero, config) + blurred_invalid(bw, one, zero, zero, config)) > 0
    return flagged.numpy().reshape(len(ys), len(xs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["focus", "default"], help="shipped names or .pt paths")
    parser.add_argument("--brightness", default="1,2", help="comma-separated light levels (1: the unit test's)")
    parser.add_argument("--draws", type=int, default=8, help="textures and noise draws (seeds 30, 32, ...)")
    args = parser.parse_args(argv)

    import torch
    from scipy.signal import fftconvolve

    from livepsf.mapping import PSFMapper
    from livepsf.net import load_model
    from livepsf.optics import make_psf

    torch.set_num_threads(1)
    models = {name: load_model(name) for name in args.models}
    print("| model | brightness | R² mean / min | misordered mean / max | passes | valid-only misordered max "
          "| right half flagged (rule) | agreement with the rule |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for brightness in (float(b) for b in args.brightness.split(",")):
        rows: dict[str, list[tuple[float, ...]]] = {name: [] for name in models}
        for draw in range(args.draws):
            seed = 30 + 2 * draw
            sharp = texture(seed, brightness)
            frames: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for name, model in models.items():
                key = model.spec.name
                if key not in frames:  # one frame per PSF model (Z-1 and Z-3 render alike without astigmatism)
                    extra = {"astig_0": 0.0, "astig_45": 0.0} if key == "Z-3" else {}
                    halves = [fftconvolve(np.pad(sharp, 64, mode="reflect"),
                                          make_psf(key, 81, model.optics, focus=f, **extra), mode="same")[64:-64, 64:-64]
                              for f in FOCUS_WAVES]
                    clean = np.where(np.arange(SHAPE[1])[None, :] < SHAPE[1] // 2, halves[0], halves[1])
                    frames[key] = (np.random.default_rng(seed + 1).poisson(clean).astype(np.float32), clean)
                frame, clean = frames[key]
                pmap = PSFMapper(model, stride_px=STRIDE_PX)(frame)
                starts = np.arange(pmap.grid_shape[1]) * STRIDE_PX
                left, right = starts + model.window_px <= SHAPE[1] // 2, starts >= SHAPE[1] // 2
                focus, valid = pmap.params["focus"], ~pmap.invalid_mask
                pred = np.concatenate([focus[:, left].ravel(), focus[:, right].ravel()])
                truth = np.repeat(FOCUS_WAVES, [focus[:, left].size, focus[:, right].size])
                r2 = 1.0 - ((pred - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
                misordered = np.mean(focus[:, left].ravel()[:, None] >= focus[:, right].ravel()[None, :])
                kept_l, kept_r = focus[:, left][valid[:, left]], focus[:, right][valid[:, right]]
                valid_mis = np.mean(kept_l[:, None] >= kept_r[None, :]) if kept_l.size and kept_r.size else np.nan
                rule = rule_invalid(sharp, clean, model.window_px)[:, right]
                flagged = ~valid[:, right]
                rows[name].append((r2, misordered, valid_mis, flagged.sum(), rule.sum(), np.mean(flagged == rule)))
        for name, values in rows.items():
            v = np.array(values, dtype=float)
            passes = int(np.sum((v[:, 0] > 0.5) & (v[:, 1] <= 0.02)))
            print(f"| {name} | {brightness:g} | {v[:, 0].mean():.3f} / {v[:, 0].min():.3f} | "
                  f"{100 * v[:, 1].mean():.2f} / {100 * v[:, 1].max():.1f} % | {passes} of {len(v)} | "
                  f"{100 * np.nanmax(v[:, 2]):.1f} % | {v[:, 3].min():.0f}–{v[:, 3].max():.0f} "
                  f"({v[:, 4].min():.0f}–{v[:, 4].max():.0f}) | {100 * v[:, 5].mean():.0f} % |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

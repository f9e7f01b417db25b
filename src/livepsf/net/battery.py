"""A test battery that measures which cues a PSF network uses, not only its overall R².

A blur estimator must get better, never worse, with more signal; must work on content it never saw;
and where a window cannot reveal a parameter it must say so with a large σ. :func:`run_battery` scores a
network on fixed-seed test sets (:func:`livepsf.data.dataset.eval_set`, never produced by training):

* **photons**: the same textures, crops and PSFs at photon decades 10²–10³ ... 10⁵–10⁶ per pixel at
  texture value 1, and noise-free; R² must not fall as the signal grows;
* **families**: one texture family at a time, including the held-out ones training never draws
  (:data:`livepsf.data.textures.HELD_OUT_KINDS`);
* **oriented**: windows holding a single straight line (blur visible across it only) against windows
  holding line crossings (a fine printed grid): R², and for astigmatic models the ratio of their median
  astigmatism σ (a single line cannot reveal astigmatism: its σ must be much larger);
* **σ calibration**: fraction of errors within 1σ and 2σ on the default test set;
* **signed focus** (Z-3): PSFs with the simulator's fixed lens astigmatism (astig_0 = 0.3 waves) and
  focus between -0.5 and +0.5 waves, on crossings; the signed focus ``focus · sign(astig_0)`` of the
  canonical prediction against the truth, RMS in waves (target <= 0.05).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from livepsf.data.dataset import eval_set
from livepsf.data.degrade import DegradationConfig
from livepsf.data.textures import HELD_OUT_KINDS, TEXTURE_KINDS
from livepsf.net.evaluate import EvalResult, evaluate_outputs, predict_raw
from livepsf.net.outputs import split_outputs
from livepsf.optics import Optics, PSFModelSpec, get_psf_model

__all__ = ["PHOTON_DECADES", "BatteryReport", "run_battery"]

#: ``(label, photon range)``; ``None`` is noise-free.
PHOTON_DECADES: tuple[tuple[str, tuple[float, float] | None], ...] = (
    ("1e2", (1e2, 1e3)), ("1e3", (1e3, 1e4)), ("1e4", (1e4, 1e5)), ("1e5", (1e5, 1e6)), ("noise-free", None),
)
#: Lens astigmatism of the signed-focus check (the simulator's cylindrical lens), waves.
LENS_ASTIG_0 = 0.3
#: Half-range of focus of the signed-focus check, waves.
NEAR_FOCUS_WAVES = 0.5
# Fine printed grids: every 128 px window holds at least one line crossing.
_CROSSINGS = {"printed_grid": {"pitch_px": 48.0, "line_width_px": 4.0}}
_SINGLE_LINES = {"lines": {"n_lines": 1}}


@dataclass
class BatteryReport:
    """Results of :func:`run_battery` (all R² on valid patches, normalised parameters)."""

    photons: dict[str, EvalResult]
    families: dict[str, EvalResult]
    single_line: EvalResult
    crossings: EvalResult
    calibration: EvalResult
    astig_sigma_ratio: float | None = None
    signed_focus_rms_waves: float | None = None
    n_per_set: int = 0
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def photons_non_decreasing(self) -> bool:
        """Each decade's mean R² is within 0.01 of, or above, the one before (noise-free last)."""
        r2 = [r.mean_r2 for r in self.photons.values()]
        return all(b >= a - 0.01 for a, b in zip(r2, r2[1:]))

    def to_dict(self) -> dict[str, Any]:
        def brief(r: EvalResult) -> dict[str, Any]:
            d = r.to_dict()
            return {k: d[k] for k in ("r2", "mean_r2", "n_valid", "within_1_sigma", "within_2_sigma") if k in d}

        return {
            "n_per_set": self.n_per_set,
            "photons": {k: brief(v) for k, v in self.photons.items()},
            "photons_non_decreasing": self.photons_non_decreasing,
            "families": {k: brief(v) for k, v in self.families.items()},
            "held_out_families": list(HELD_OUT_KINDS),
            "single_line": brief(self.single_line),
            "crossings": brief(self.crossings),
            "sigma_calibration": brief(self.calibration),
            "astig_sigma_ratio_single_line_to_crossings": _round(self.astig_sigma_ratio),
            "signed_focus_rms_waves": _round(self.signed_focus_rms_waves),
            "notes": self.notes,
        }

    def rows(self) -> list[tuple[str, str]]:
        """``(what, result)`` lines for people."""
        out = [(f"photons {k}", f"mean R² {v.mean_r2:.3f}") for k, v in self.photons.items()]
        out.append(("R² non-decreasing with photons", "yes" if self.photons_non_decreasing else "NO"))
        for k, v in self.families.items():
            held = " (held out)" if k in HELD_OUT_KINDS else ""
            out.append((f"family {k}{held}", f"mean R² {v.mean_r2:.3f}"))
        out.append(("single straight line", f"mean R² {self.single_line.mean_r2:.3f}"))
        out.append(("line crossings", f"mean R² {self.crossings.mean_r2:.3f}"))
        cal = self.calibration
        if cal.within_1_sigma:
            w1 = ", ".join(f"{k} {v:.2f}" for k, v in cal.within_1_sigma.items())
            w2 = ", ".join(f"{k} {v:.2f}" for k, v in cal.within_2_sigma.items())
            out += [("errors within 1σ (target 0.62-0.74)", w1), ("errors within 2σ (target >= 0.92)", w2)]
        else:
            out.append(("σ calibration", "the network predicts no σ"))
        if self.astig_sigma_ratio is not None:
            out.append(("astig σ single line / crossings (target >= 3)", f"{self.astig_sigma_ratio:.2f}"))
        if self.signed_focus_rms_waves is not None:
            out.append((f"signed focus RMS, |focus| <= {NEAR_FOCUS_WAVES} w, lens astig {LENS_ASTIG_0} w "
                        "(target <= 0.05)", f"{self.signed_focus_rms_waves:.3f} waves"))
        return out


def _round(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def _near_focus_spec(spec: PSFModelSpec) -> PSFModelSpec:
    """Z-3 with focus in ±NEAR_FOCUS_WAVES and the lens astigmatism fixed (a hair of range to normalise)."""
    ranges = {"focus": (-NEAR_FOCUS_WAVES, NEAR_FOCUS_WAVES), "astig_0": (LENS_ASTIG_0 - 1e-4, LENS_ASTIG_0 + 1e-4),
              "astig_45": (-1e-4, 1e-4)}
    return replace(spec, params=tuple(replace(p, min=ranges[p.name][0], max=ranges[p.name][1]) for p in spec.params))


def run_battery(
    module: Callable[[torch.Tensor], torch.Tensor],
    psf_model: str | PSFModelSpec,
    optics: Optics | None = None,
    window_px: int = 128,
    n: int = 300,
    device: torch.device | str = "cpu",
    calibration_set: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> BatteryReport:
    """Run the battery (module docstring) on ``n`` patches per set.

    Parameters
    ----------
    module
        Maps ``(B, 1, W, W)`` raw windows to raw outputs (TorchScript or ``nn.Module`` in eval mode).
    psf_model
        The PSF model the network regresses (its default ranges normalise the parameters).
    calibration_set
        ``(patches, targets)`` for the σ calibration line; default the fixed test set of ``2 n`` patches.
    """
    spec = get_psf_model(psf_model) if isinstance(psf_model, str) else psf_model
    optics = optics or Optics()

    def score(x: torch.Tensor, t: torch.Tensor) -> EvalResult:
        return evaluate_outputs(predict_raw(module, x, device=device), t, spec)

    def test_set(**kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return eval_set(spec, "test", n=n, window_px=window_px, optics=optics, **kw)

    photons = {}
    for label, rng in PHOTON_DECADES:
        cfg = DegradationConfig(noise_free_fraction=1.0) if rng is None else \
            DegradationConfig(photons=rng, noise_free_fraction=0.0)
        photons[label] = score(*test_set(degradation=cfg))
    families = {kind: score(*test_set(sources={kind: 1.0})) for kind in (*TEXTURE_KINDS, *HELD_OUT_KINDS)}
    line_x, line_t = test_set(sources={"lines": 1.0}, texture_options=_SINGLE_LINES)
    cross_x, cross_t = test_set(sources={"printed_grid": 1.0}, texture_options=_CROSSINGS)
    single_line, crossings = score(line_x, line_t), score(cross_x, cross_t)
    cal_x, cal_t = calibration_set if calibration_set is not None else \
        eval_set(spec, "test", n=2 * n, window_px=window_px, optics=optics)
    report = BatteryReport(photons, families, single_line, crossings, score(cal_x, cal_t), n_per_set=n)

    if spec.has_astigmatism:
        report.astig_sigma_ratio = _astig_sigma_ratio(module, spec, (line_x, line_t), (cross_x, cross_t), device)
        report.signed_focus_rms_waves = _signed_focus_rms(module, spec, optics, window_px, n, device)
        report.notes["signed_focus"] = (f"eval_set with focus uniform in ±{NEAR_FOCUS_WAVES} waves, astig_0 "
                                        f"{LENS_ASTIG_0}, astig_45 0 (then random dihedral turns), fine printed grids")
    return report


def _astig_sigma(module: Callable, spec: PSFModelSpec, x: torch.Tensor, t: torch.Tensor,
                 device: torch.device | str) -> np.ndarray | None:
    """Per valid window, the mean σ of the two astigmatism components (normalised units), or None."""
    parts = split_outputs(predict_raw(module, x, device=device), spec)
    if parts.sigma is None:
        return None
    idx = [spec.index("astig_0"), spec.index("astig_45")]
    return parts.sigma[t[:, 0] < 0.5][:, idx].mean(dim=1).numpy()


def _astig_sigma_ratio(module: Callable, spec: PSFModelSpec, lines: tuple, crossings: tuple,
                       device: torch.device | str) -> float | None:
    a = _astig_sigma(module, spec, *lines, device)
    b = _astig_sigma(module, spec, *crossings, device)
    if a is None or b is None or not len(a) or not len(b):
        return None
    return float(np.median(a) / max(float(np.median(b)), 1e-12))


def _signed_focus_rms(module: Callable, spec: PSFModelSpec, optics: Optics, window_px: int, n: int,
                      device: torch.device | str) -> float | None:
    near = _near_focus_spec(spec)
    x, t = eval_set(near, "test", n=n, window_px=window_px, optics=optics, sources={"printed_grid": 1.0},
                    texture_options=_CROSSINGS)
    valid = t[:, 0] < 0.5
    if int(valid.sum()) < 2:
        return None
    truth = near.denormalise(t[valid, 1:].double())
    parts = split_outputs(predict_raw(module, x[valid], device=device), spec)
    pred = spec.denormalise(parts.values.clamp(0.0, 1.0).double())
    f, a = spec.index("focus"), spec.index("astig_0")

    # Dihedral turns may negate astig_0 in a patch's frame; the same sign flip applies to truth and
    # prediction, so focus * sign(astig_0) compares like with like.
    def signed(v: torch.Tensor) -> torch.Tensor:
        return v[:, f] * torch.where(v[:, a] < 0, -1.0, 1.0).to(v)

    return float(torch.sqrt(((signed(pred) - signed(truth)) ** 2).mean()))

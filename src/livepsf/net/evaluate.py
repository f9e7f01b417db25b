"""Evaluation of PSF-parameter networks: R² per parameter (paper eq. 15), validity accuracy, robustness.

All metrics are computed on normalised parameters (each in [0, 1] over the card's range), on *valid*
patches only for the parameters, as in the paper. Predictions are scored in canonical form (focus >= 0),
as they are reported. For networks with σ outputs, the σ calibration is the fraction of errors within
1σ and 2σ, the error being against the label or its sign mirror, whichever parameter set is nearer
(``a`` and ``-a`` are the same PSF; near focus 0 the canonical astigmatism of two nearly identical PSFs
differs in sign; the whole set is mirrored or none of it, as in the training loss). R² is the coefficient of determination
``1 - SS_res / SS_tot`` (the paper calls it a squared correlation; on an unbiased regressor the two agree,
and 1 - SS_res/SS_tot is the stricter one: a constant prediction scores 0, a biased one is penalised).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from livepsf.optics import PSF_MODELS, ParamSpec, PSFModelSpec

__all__ = [
    "SWEEP_KINDS",
    "EvalResult",
    "RobustnessResult",
    "evaluate_outputs",
    "predict_raw",
    "r2_score",
    "robustness_plot",
    "robustness_sweep",
]


def r2_score(y_true: np.ndarray | torch.Tensor, y_pred: np.ndarray | torch.Tensor) -> np.ndarray:
    """Coefficient of determination per column.

    Parameters
    ----------
    y_true, y_pred
        ``(B,)`` or ``(B, N)`` arrays.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` (or a 0-d array for 1-D input): ``1 - sum((y - ŷ)²) / sum((y - mean(y))²)``; ``nan`` where
        the truth is constant or there are fewer than two samples.
    """
    t = np.asarray(y_true.detach().cpu() if isinstance(y_true, torch.Tensor) else y_true, dtype=np.float64)
    p = np.asarray(y_pred.detach().cpu() if isinstance(y_pred, torch.Tensor) else y_pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"y_true {t.shape} and y_pred {p.shape} differ in shape")
    ss_res = ((t - p) ** 2).sum(axis=0)
    ss_tot = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where((ss_tot > 0) & (t.shape[0] > 1), 1.0 - ss_res / np.where(ss_tot > 0, ss_tot, 1.0), np.nan)
    return r2


@dataclass
class EvalResult:
    """Scores of a network on one labelled set."""

    names: tuple[str, ...]
    r2: dict[str, float]
    mean_r2: float
    validity_accuracy: float
    n_valid: int
    n_invalid: int
    mae: dict[str, float] = field(default_factory=dict)
    within_1_sigma: dict[str, float] = field(default_factory=dict)
    within_2_sigma: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"r2": {k: _round(v) for k, v in self.r2.items()}, "mean_r2": _round(self.mean_r2),
               "validity_accuracy": _round(self.validity_accuracy), "n_valid": self.n_valid,
               "n_invalid": self.n_invalid, "mae_normalised": {k: _round(v) for k, v in self.mae.items()}}
        if self.within_1_sigma:
            out["within_1_sigma"] = {k: _round(v) for k, v in self.within_1_sigma.items()}
            out["within_2_sigma"] = {k: _round(v) for k, v in self.within_2_sigma.items()}
        return out


def _round(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 4)


def _spec_of(model: Sequence[str] | PSFModelSpec) -> PSFModelSpec:
    """The PSF model spec itself, or the one whose parameter names are ``model`` (names are unique).

    Other names get a stand-in spec on ``[0, 1]`` without sign symmetry (scores of plain regressions).
    """
    if isinstance(model, PSFModelSpec):
        return model
    names = tuple(model)
    for spec in PSF_MODELS.values():
        if spec.names == names:
            return spec
    return PSFModelSpec("unnamed", "gaussian", tuple(ParamSpec(n, "", 0.0, 1.0) for n in names))


def evaluate_outputs(raw: torch.Tensor, targets: torch.Tensor, model: Sequence[str] | PSFModelSpec) -> EvalResult:
    """Score raw network outputs ``(B, 1 + N)`` or ``(B, 1 + 2N)`` against targets ``(B, 1 + N)``.

    ``model`` is the PSF model spec (or its parameter names); column 0 of the targets is the invalid
    label. Parameters are scored in canonical form; σ outputs (if any) give the within-1σ/2σ fractions.
    """
    from livepsf.net.outputs import nearest_equivalent, split_outputs

    spec = _spec_of(model)
    names = spec.names
    raw = raw.detach().float().cpu()
    targets = targets.detach().float().cpu()
    invalid = targets[:, 0] > 0.5
    predicted_invalid = raw[:, 0] > 0.0  # logit > 0  <=>  probability > 0.5
    accuracy = float((predicted_invalid == invalid).float().mean()) if len(raw) else float("nan")
    valid = ~invalid
    parts = split_outputs(raw[valid], spec)
    pred = parts.values.clamp(0.0, 1.0)
    true = targets[valid, 1:]
    r2 = r2_score(true, pred) if int(valid.sum()) > 1 else np.full(len(names), np.nan)
    mae = (pred - true).abs().mean(dim=0).numpy() if int(valid.sum()) else np.full(len(names), np.nan)
    per = {n: float(r2[i]) for i, n in enumerate(names)}
    finite = [v for v in per.values() if math.isfinite(v)]
    within1: dict[str, float] = {}
    within2: dict[str, float] = {}
    if parts.sigma is not None and int(valid.sum()):
        err = (pred - nearest_equivalent(pred, true, spec)).abs()
        z = err / parts.sigma.clamp_min(1e-12)
        within1 = {n: float((z[:, i] <= 1.0).float().mean()) for i, n in enumerate(names)}
        within2 = {n: float((z[:, i] <= 2.0).float().mean()) for i, n in enumerate(names)}
    return EvalResult(tuple(names), per, float(np.mean(finite)) if finite else float("nan"), accuracy,
                      int(valid.sum()), int(invalid.sum()), {n: float(mae[i]) for i, n in enumerate(names)},
                      within1, within2)


@torch.inference_mode()
def predict_raw(module: Callable[[torch.Tensor], torch.Tensor], patches: torch.Tensor, batch_size: int = 128,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """Raw outputs of ``module`` over ``patches`` ``(B, 1, W, W)``, in batches, on ``device``; returns CPU."""
    outs = []
    for start in range(0, len(patches), batch_size):
        outs.append(module(patches[start:start + batch_size].to(device).float()).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


# -- robustness to image degradations (paper Fig. 7) ------------------------------------------------

#: Degradations of the robustness sweep (definitions of strength: :func:`livepsf.data.degrade.apply_strength`).
SWEEP_KINDS: tuple[str, ...] = ("gaussian", "poisson", "mixed", "illumination", "gradient")


@dataclass
class RobustnessResult:
    """Mean R² (valid patches) per degradation and strength."""

    strengths: tuple[float, ...]
    mean_r2: dict[str, list[float]]
    r2: dict[str, list[dict[str, float]]]

    def to_dict(self) -> dict:
        return {"strengths": list(self.strengths),
                "mean_r2": {k: [_round(v) for v in vs] for k, vs in self.mean_r2.items()}}

    def table(self) -> list[list[str]]:
        """Rows ``[degradation, r2@s0, r2@s1, ...]`` as strings (for printing)."""
        return [[k, *(f"{v:.3f}" for v in vs)] for k, vs in self.mean_r2.items()]


def robustness_sweep(
    module: Callable[[torch.Tensor], torch.Tensor],
    patches: torch.Tensor,
    targets: torch.Tensor,
    names: Sequence[str],
    strengths: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
    degradations: Sequence[str] = SWEEP_KINDS,
    seed: int = 7,
    device: torch.device | str = "cpu",
) -> RobustnessResult:
    """Mean R² of ``module`` on ``patches`` after each degradation at each strength (paper Fig. 7).

    ``patches`` should be clean (noise-free) blurred patches, e.g. an eval set made with
    ``DegradationConfig.clean()``; each degradation is applied by
    :func:`livepsf.data.degrade.apply_strength`. Only valid patches count.
    """
    from livepsf.data.degrade import apply_strength

    valid = targets[:, 0] < 0.5
    x0, t0 = patches[valid].float(), targets[valid]
    mean: dict[str, list[float]] = {}
    per: dict[str, list[dict[str, float]]] = {}
    for name in degradations:
        mean[name], per[name] = [], []
        for s in strengths:
            g = torch.Generator().manual_seed(seed)
            x = apply_strength(x0, name, float(s), g)
            res = evaluate_outputs(predict_raw(module, x, device=device), t0, names)
            mean[name].append(res.mean_r2)
            per[name].append(res.r2)
    return RobustnessResult(tuple(float(s) for s in strengths), mean, per)


def robustness_plot(result: RobustnessResult, path: str | Path, title: str = "") -> Path:
    """Save mean R² against degradation strength as a PNG (pyqtgraph, offscreen)."""
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import pyqtgraph as pg
    import pyqtgraph.exporters  # noqa: F401 - registers the exporters
    from qtpy.QtWidgets import QApplication

    _app = QApplication.instance() or QApplication([])
    pg.setConfigOptions(antialias=True, background="w", foreground="k")
    plot = pg.PlotWidget(title=title or "R² under degradation")
    plot.resize(640, 440)
    plot.setLabel("bottom", "degradation strength")
    plot.setLabel("left", "mean R² (valid patches)")
    plot.setYRange(min(0.0, *(min(v) for v in result.mean_r2.values() if v)), 1.02)
    plot.showGrid(x=True, y=True, alpha=0.3)
    for side in ("bottom", "left"):
        plot.getAxis(side).enableAutoSIPrefix(False)  # strengths are plain numbers, not milli-units
    legend = plot.addLegend(offset=(-10, -10))
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
    symbols = ["o", "s", "t", "d", "+"]
    xs = list(result.strengths)
    for i, (name, ys) in enumerate(result.mean_r2.items()):
        ys_plot = [y if math.isfinite(y) else 0.0 for y in ys]
        plot.plot(xs, ys_plot, pen=pg.mkPen(colours[i % 5], width=2), symbol=symbols[i % 5],
                  symbolBrush=colours[i % 5], symbolSize=8, name=name.replace("_", " "))
    legend.setBrush(pg.mkBrush(255, 255, 255, 200))
    path = Path(path)
    exporter = pg.exporters.ImageExporter(plot.plotItem)
    exporter.parameters()["width"] = 800
    exporter.export(str(path))
    plot.close()
    return path


# -- a whole model: test set, robustness sweep, timing ----------------------------------------------


@dataclass
class ModelReport:
    """Everything :func:`evaluate_model` measured (it goes into the model card's ``evaluation``)."""

    test: EvalResult
    robustness: RobustnessResult | None
    description: dict
    battery: Any = None
    """A :class:`livepsf.net.battery.BatteryReport`, or None when not run."""

    def to_dict(self) -> dict:
        out = {"test": self.test.to_dict(), **self.description}
        if self.robustness is not None:
            out["robustness"] = self.robustness.to_dict()
        if self.battery is not None:
            out["battery"] = self.battery.to_dict()
        return out


def evaluate_model(
    module: Callable[[torch.Tensor], torch.Tensor],
    psf_model: str,
    optics=None,
    window_px: int = 128,
    n_test: int = 2000,
    n_robustness: int = 500,
    strengths: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5),
    device: torch.device | str = "cpu",
    test_set: tuple[torch.Tensor, torch.Tensor] | None = None,
    n_battery: int = 0,
) -> ModelReport:
    """Score a network on the fixed-seed test set, run the robustness sweep and the cue battery.

    Parameters
    ----------
    module
        Maps ``(B, 1, W, W)`` raw windows to ``(B, 1 + N)`` raw outputs (a TorchScript module or a
        trained ``nn.Module`` in eval mode).
    psf_model
        The PSF model the network regresses (parameters normalised by its default ranges).
    n_test, n_robustness
        Sizes of the test set (default degradations) and of the clean set for the sweep (0: no sweep).
    test_set
        ``(patches, targets)`` to score instead of the fixed-seed test set.
    n_battery
        Patches per set of the test battery (:func:`livepsf.net.battery.run_battery`); 0: not run.
    """
    from livepsf.data.dataset import eval_set
    from livepsf.data.degrade import DegradationConfig
    from livepsf.optics import Optics, get_psf_model

    spec = get_psf_model(psf_model)
    optics = optics or Optics()
    if test_set is None:
        x, t = eval_set(spec, "test", n=n_test, window_px=window_px, optics=optics)
        what = (f"livepsf.data.dataset.eval_set({spec.name!r}, 'test', n={n_test}): fixed seed, default "
                "degradations, random streams and shipped-image regions never used in training")
    else:
        (x, t), what = test_set, f"{len(test_set[0])} patches given by the caller"
    test = evaluate_outputs(predict_raw(module, x, device=device), t, spec)
    robustness = None
    description = {"test_set": what}
    if n_robustness:
        xc, tc = eval_set(spec, "test", n=n_robustness, window_px=window_px, optics=optics,
                          degradation=DegradationConfig.clean())
        robustness = robustness_sweep(module, xc, tc, spec.names, strengths=strengths, device=device)
        description["robustness_set"] = (f"eval_set({spec.name!r}, 'test', n={n_robustness}, "
                                         "DegradationConfig.clean()) + livepsf.data.degrade.apply_strength")
    battery = None
    if n_battery:
        from livepsf.net.battery import run_battery

        battery = run_battery(module, spec, optics, window_px, n=n_battery, device=device,
                              calibration_set=(x, t) if test_set is None else None)
    return ModelReport(test, robustness, description, battery)

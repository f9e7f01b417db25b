"""Shortcut check: does any simple statistic of a training patch predict its label on its own?

A network learns whatever predicts the label. If the noise level, the brightness, the contrast or the
orientation of a patch told the blur, a network could score well by reading them instead of the blur,
and fail on real images where they do not. :func:`shortcut_report` measures, for each statistic and each
parameter, the R² of the best piecewise-constant predictor of the label from that statistic alone
(quantile bins), on valid patches. Values near 0 mean the statistic says nothing about the label; the
binning's own optimism is about ``bins / n``.

Statistics (per patch, raw camera values):

* ``mean``: mean ADU (brightness, gain and offset);
* ``noise``: robust noise level relative to the signal's spread, ``1.4826 · MAD(Δx) / √2 / std(x)``
  with ``Δx`` differences of neighbouring pixels (1 for pure noise, ~0 for smooth noise-free content);
* ``contrast``: ``std / (mean - min)`` of the patch (offset-free modulation);
* ``orientation``: structure-tensor coherence (1 for lines in one direction, 0 for isotropic content).
"""

from __future__ import annotations

import numpy as np
import torch

from livepsf.optics import PSFModelSpec

__all__ = ["STATISTICS", "patch_statistics", "shortcut_report"]

STATISTICS: tuple[str, ...] = ("mean", "noise", "contrast", "orientation")


def patch_statistics(patches: torch.Tensor) -> dict[str, np.ndarray]:
    """The :data:`STATISTICS` of patches ``(B, 1, P, P)`` or ``(B, P, P)``, each ``(B,)`` float64."""
    x = patches.reshape(patches.shape[0], patches.shape[-2], patches.shape[-1]).double()
    mean = x.mean(dim=(-2, -1))
    std = x.std(dim=(-2, -1))
    diff = (x[:, :, 1:] - x[:, :, :-1]).flatten(1)
    mad = (diff - diff.median(dim=1, keepdim=True).values).abs().median(dim=1).values
    noise = 1.4826 * mad / np.sqrt(2.0) / std.clamp_min(1e-12)
    low = x.flatten(1).min(dim=1).values
    contrast = std / (mean - low).clamp_min(1e-12)
    gy, gx = torch.gradient(x, dim=(-2, -1))
    jxx, jyy, jxy = (gx * gx).sum((-2, -1)), (gy * gy).sum((-2, -1)), (gx * gy).sum((-2, -1))
    coherence = torch.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy).clamp_min(1e-12)
    return {"mean": mean.numpy(), "noise": noise.numpy(), "contrast": contrast.numpy(),
            "orientation": coherence.numpy()}


def _binned_r2(stat: np.ndarray, label: np.ndarray, bins: int) -> float:
    edges = np.quantile(stat, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    which = np.searchsorted(edges, stat)
    fitted = np.zeros_like(label)
    for b in np.unique(which):
        fitted[which == b] = label[which == b].mean()
    total = ((label - label.mean()) ** 2).sum()
    return float(1.0 - ((label - fitted) ** 2).sum() / total) if total > 0 else float("nan")


def shortcut_report(patches: torch.Tensor, targets: torch.Tensor, spec: PSFModelSpec,
                    bins: int = 10) -> dict[str, dict[str, float]]:
    """``{statistic: {parameter: R²}}`` of predicting each normalised label from one statistic (valid patches).

    Raises
    ------
    ValueError
        Fewer than ``4 * bins`` valid patches.
    """
    valid = (targets[:, 0] < 0.5).numpy()
    if int(valid.sum()) < 4 * bins:
        raise ValueError(f"need at least {4 * bins} valid patches, got {int(valid.sum())}")
    stats = patch_statistics(patches[torch.from_numpy(valid)])
    labels = targets[torch.from_numpy(valid), 1:].double().numpy()
    return {name: {p: round(_binned_r2(values, labels[:, i], bins), 4) for i, p in enumerate(spec.names)}
            for name, values in stats.items()}

"""Evaluation: R² (eq. 15) by hand, valid-only scoring, the robustness sweep and its plot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from livepsf.net.evaluate import evaluate_outputs, r2_score, robustness_plot, robustness_sweep


def test_r2_against_a_hand_computed_case() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0])
    yhat = np.array([1.5, 2.0, 2.5, 4.0])
    # SS_res = 0.25 + 0 + 0.25 + 0 = 0.5; SS_tot = 2.25 + 0.25 + 0.25 + 2.25 = 5  ->  R² = 0.9
    assert float(r2_score(y, yhat)) == pytest.approx(0.9)
    # Columns are scored independently; a perfect column is 1, predicting the mean is 0.
    two = r2_score(np.stack([y, y], 1), np.stack([y, np.full(4, y.mean())], 1))
    np.testing.assert_allclose(two, [1.0, 0.0])
    # Constant truth has no variance to explain.
    assert np.isnan(r2_score(np.ones(3), np.array([1.0, 2.0, 3.0])))
    with pytest.raises(ValueError, match="shape"):
        r2_score(np.ones(3), np.ones(4))


def test_only_valid_patches_are_scored() -> None:
    targets = torch.tensor([[0.0, 0.1], [0.0, 0.5], [0.0, 0.9], [1.0, 0.0]])
    # Perfect on the valid ones, wild on the invalid one; validity logits right for all but patch 2.
    raw = torch.tensor([[-5.0, 0.1], [3.0, 0.5], [-5.0, 0.9], [5.0, 7.0]])
    res = evaluate_outputs(raw, targets, ["focus"])
    assert res.r2["focus"] == pytest.approx(1.0)
    assert res.mean_r2 == pytest.approx(1.0)
    assert res.validity_accuracy == pytest.approx(0.75)
    assert (res.n_valid, res.n_invalid) == (3, 1)


class _Oracle(torch.nn.Module):
    """'Predicts' a fixed answer per patch index: exact for clean inputs, degraded by noise via a blur proxy."""

    def __init__(self, targets: torch.Tensor) -> None:
        super().__init__()
        self.targets = targets

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Roughness of the patch relative to its level: grows with added noise, so R² must fall.
        rough = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(-3, -2, -1))
        level = x.abs().mean(dim=(-3, -2, -1)) + 1e-6
        out = self.targets[: len(x)].clone()
        out[:, 1:] = out[:, 1:] + 0.5 * (rough / level)[:, None] - 0.5 * self._clean[: len(x), None]
        return out

    def calibrate(self, x: torch.Tensor) -> None:
        rough = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=(-3, -2, -1))
        self._clean = rough / (x.abs().mean(dim=(-3, -2, -1)) + 1e-6)


def test_robustness_sweep_falls_with_noise_and_plots(tmp_path) -> None:
    g = torch.Generator().manual_seed(0)
    n = 40
    yy, xx = torch.meshgrid(torch.linspace(0, 6, 32), torch.linspace(0, 6, 32), indexing="ij")
    clean = (2.0 + torch.sin(xx[None] * torch.rand(n, 1, 1, generator=g) * 3) * torch.cos(yy[None]))[:, None]
    targets = torch.cat([torch.zeros(n, 1), torch.rand(n, 2, generator=g)], dim=1)
    oracle = _Oracle(targets)
    oracle.calibrate(clean)
    res = robustness_sweep(oracle, clean, targets, ["a", "b"], strengths=(0.0, 0.2, 0.5),
                           degradations=("gaussian", "illumination"))
    assert res.mean_r2["gaussian"][0] == pytest.approx(1.0, abs=1e-5)
    assert res.mean_r2["gaussian"][2] < res.mean_r2["gaussian"][1] < 0.99
    # A global illumination change leaves this offset-free roughness ratio unchanged.
    assert res.mean_r2["illumination"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-4)
    assert [row[0] for row in res.table()] == ["gaussian", "illumination"]
    png = robustness_plot(res, tmp_path / "sweep.png", title="test")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

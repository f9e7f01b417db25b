"""The cue battery: its sets, its checks and its report (a tiny untrained network: shapes, not skill)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from livepsf.data.dataset import eval_set
from livepsf.data.textures import HELD_OUT_KINDS, TEXTURE_KINDS
from livepsf.net.architectures import build_network
from livepsf.net.battery import (
    LENS_ASTIG_0,
    NEAR_FOCUS_WAVES,
    PHOTON_DECADES,
    BatteryReport,
    _near_focus_spec,
    run_battery,
)
from livepsf.net.evaluate import EvalResult
from livepsf.optics import get_psf_model


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEPSF_CACHE_DIR", str(tmp_path / "cache"))


def test_battery_runs_every_check_and_reports_json():
    torch.manual_seed(0)
    net = build_network("shared-trunk-tiny", 3).eval()
    report = run_battery(net, "Z-3", n=6)
    assert list(report.photons) == [label for label, _ in PHOTON_DECADES]
    assert set(report.families) == set(TEXTURE_KINDS) | set(HELD_OUT_KINDS)
    assert report.calibration.within_1_sigma and report.calibration.within_2_sigma
    assert report.astig_sigma_ratio is not None and report.astig_sigma_ratio > 0
    assert report.signed_focus_rms_waves is not None and math.isfinite(report.signed_focus_rms_waves)
    data = json.loads(json.dumps(report.to_dict()))
    assert data["held_out_families"] == list(HELD_OUT_KINDS) and "photons_non_decreasing" in data
    assert any("signed focus" in what for what, _ in report.rows())


def test_photon_decades_share_textures_and_psfs():
    """Only the signal level differs between decades: the labels are the same PSFs."""
    from livepsf.data.degrade import DegradationConfig

    low = eval_set("Z-1", "test", n=8, degradation=DegradationConfig(photons=(1e2, 1e3), noise_free_fraction=0.0))
    free = eval_set("Z-1", "test", n=8, degradation=DegradationConfig(noise_free_fraction=1.0))
    torch.testing.assert_close(low[1][:, 1:], free[1][:, 1:])
    assert not torch.equal(free[0], free[0].round())  # noise-free: expected values, not whole ADU


def test_near_focus_set_has_the_lens_astigmatism_and_both_signs_of_focus():
    spec = get_psf_model("Z-3")
    near = _near_focus_spec(spec)
    _, t = eval_set(near, "test", n=16, sources={"printed_grid": 1.0})
    values = near.denormalise(t[:, 1:].double())
    assert bool((values[:, 0] >= 0).all()) and float(values[:, 0].max()) <= NEAR_FOCUS_WAVES + 1e-6
    # Canonical form: below focus the lens astigmatism shows with the opposite sign (turns may swap it too).
    assert torch.allclose(values[:, 1].abs(), torch.full((16,), LENS_ASTIG_0, dtype=torch.float64), atol=1e-3)
    assert bool((values[:, 1] > 0).any()) and bool((values[:, 1] < 0).any())


def test_photons_non_decreasing_allows_a_hundredth():
    def res(r2: float) -> EvalResult:
        return EvalResult(("focus",), {"focus": r2}, r2, 1.0, 10, 0)

    report = BatteryReport({}, {}, res(0), res(0), res(0))
    report.photons = {"a": res(0.80), "b": res(0.795), "c": res(0.9)}
    assert report.photons_non_decreasing
    report.photons = {"a": res(0.80), "b": res(0.78), "c": res(0.9)}
    assert not report.photons_non_decreasing

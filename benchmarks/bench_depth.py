"""Depth step costs on top of the PSF map (issues 8, 14): texture gate, depth map, calibration fit, surface.

Run: ``.venv/bin/python -m pytest benchmarks/bench_depth.py --benchmark-only``. Synthetic Z-3 maps of a
1024x1024 frame (15x15 windows of 128 px, stride 64); no network involved.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from livepsf.depth import calibrate_psf_maps, fit_surface, window_coherence
from livepsf.depth.surface import live_depth, window_depth_and_sigma
from livepsf.mapping import PSFMap
from livepsf.optics import Optics


def _map(tilt_deg: float, seed: int) -> PSFMap:
    rng = np.random.default_rng(seed)
    c = np.arange(0, 1024 - 127, 64) + 63.5
    xx = np.broadcast_to(c, (len(c), len(c)))
    height_um = (xx - 511.5) * 0.65 * math.tan(math.radians(tilt_deg))
    d = Optics().defocus_waves(height_um) + rng.normal(0, 0.02, xx.shape)
    s = np.where(d >= 0, 1.0, -1.0)
    params = {"focus": np.abs(d), "astig_0": 0.3 * s + rng.normal(0, 0.02, d.shape),
              "astig_45": rng.normal(0, 0.02, d.shape)}
    return PSFMap({k: v.astype(np.float32) for k, v in params.items()}, np.zeros(d.shape, np.float32), c, c,
                  128, 64, (1024, 1024), "Z-3", "bench", "0" * 64)


def _frame() -> np.ndarray:
    yy, xx = np.mgrid[:1024, :1024]
    noise = np.random.default_rng(0).normal(0, 20, (1024, 1024))
    return np.where((yy // 12 + xx // 12) % 2 == 0, 1000.0, 200.0) + noise


def test_texture_gate_1024(benchmark) -> None:
    pmap, frame = _map(6, 0), _frame()
    out = benchmark.pedantic(window_coherence, args=(frame, pmap), rounds=5, iterations=1)
    assert out.shape == (15, 15)


def test_calibration_fit_6_frames(benchmark) -> None:
    maps = [_map(t, i) for i, t in enumerate((3, 3, 6, 6, 10, 10))]
    frames = [_frame()] * len(maps)
    cal = benchmark.pedantic(calibrate_psf_maps, args=(maps, [3, 3, 6, 6, 10, 10], 0.65),
                             kwargs={"frames": frames}, rounds=3, iterations=1)
    assert cal.r2 > 0.99


def test_full_frame_depth_map(benchmark) -> None:
    maps = [_map(t, i) for i, t in enumerate((3, 6, 10))]
    cal = calibrate_psf_maps(maps, [3, 6, 10], 0.65, frames=[_frame()] * 3)
    pmap, frame = _map(8, 7), _frame()
    out = benchmark.pedantic(cal.depth_um_full, args=(pmap,), kwargs={"frame": frame}, rounds=5, iterations=1)
    assert out.shape == (1024, 1024)


# -- the live depth step (issue 14): per-window depth + σ, texture gate, fused surface ---------------------


def _live_inputs():
    maps = [_map(t, i) for i, t in enumerate((3, 6, 10))]
    cal = calibrate_psf_maps(maps, [3, 6, 10], 0.65, frames=[_frame()] * 3)
    pmap = _map(6, 11)
    # As on the printed grid: a quarter of the windows mirrored, and some without information.
    rng = np.random.default_rng(5)
    flip = rng.random(pmap.grid_shape) < 0.25
    params = dict(pmap.params)
    params["astig_0"] = np.where(flip, -params["astig_0"], params["astig_0"]).astype(np.float32)
    return cal, dataclasses.replace(pmap, params=params), _frame()


@pytest.mark.parametrize("prior", ["plane", "smooth"])
def test_fit_surface_15x15(benchmark, prior) -> None:
    """The surface fit alone on a 1024² frame's windows (stride 64)."""
    cal, pmap, _ = _live_inputs()
    depth, sigma, _ = window_depth_and_sigma(cal, pmap)
    sigma = np.where(np.random.default_rng(6).random(sigma.shape) < 0.5, np.inf, sigma)
    out = benchmark.pedantic(fit_surface, args=(depth, sigma, pmap.centers_y, pmap.centers_x, prior),
                             rounds=30, iterations=1, warmup_rounds=2)
    assert out.depth_um.shape == (15, 15)


def test_live_depth_1024(benchmark) -> None:
    """All the live loop adds to a 1024² map: depth and σ per window, the decimated gate, the live surface."""
    cal, pmap, frame = _live_inputs()
    _, _, surface = benchmark.pedantic(live_depth, args=(cal, pmap, frame), rounds=30, iterations=1,
                                       warmup_rounds=2)
    assert surface is not None and surface.depth_um.shape == (15, 15)

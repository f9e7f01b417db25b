"""Stand-ins for the depth tests: synthetic Z-3 PSF maps of tilted planes, frames, a fake network.

The maps are built from the physics the network is trained to report: a known signed defocus
``d = defocus_waves(height)`` plus a fixed lens astigmatism, in canonical form (focus = |d|,
astigmatism = sign(d) * A_L), with noise. No network is needed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from livepsf import depth as D
from livepsf.mapping import PSFMap
from livepsf.optics import Optics

LENS = (0.12, 0.05)  # waves: lens astigmatism (astig_0, astig_45)
UM_PER_WAVE = 1.0 / Optics().defocus_waves(1.0)  # the slope a perfect signed metric should give


def window_centers(n_px: int, window: int = 128, stride: int = 64) -> np.ndarray:
    return np.arange(0, n_px - window + 1, stride) + (window - 1) / 2.0


def synthetic_map(tilt_deg: float, in_focus_px: float, *, seed: int = 0, noise: float = 0.02,
                  axis: str = "x", lens=LENS, shape=(1024, 1024), bias_waves: float = 0.0,
                  sha: str = "a" * 64, name: str = "synthetic",
                  with_sigma: bool = False) -> tuple[PSFMap, np.ndarray]:
    """A Z-3 PSF map of a tilted plane and its true height (µm) at the window centres.

    ``with_sigma`` gives the map σ heads that report the true noise level of every parameter.
    """
    rng = np.random.default_rng(seed)
    cy, cx = window_centers(shape[0]), window_centers(shape[1])
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    pos = xx if axis == "x" else yy
    height = (pos - in_focus_px) * 0.65 * math.tan(math.radians(tilt_deg))
    d = Optics().defocus_waves(height) + bias_waves + rng.normal(0, noise, height.shape)
    sign = np.where(d >= 0, 1.0, -1.0)
    params = {
        "focus": np.abs(d).astype(np.float32),
        "astig_0": (sign * lens[0] + rng.normal(0, noise, d.shape)).astype(np.float32),
        "astig_45": (sign * lens[1] + rng.normal(0, noise, d.shape)).astype(np.float32),
    }
    pmap = PSFMap(params=params, invalid=np.zeros(d.shape, np.float32), centers_y=cy, centers_x=cx,
                  window_px=128, stride_px=64, frame_shape=shape, psf_model="Z-3", model_name=name,
                  model_sha256=sha,
                  sigma={k: np.full(d.shape, max(noise, 1e-3), np.float32) for k in params} if with_sigma else {})
    return pmap, height


def tilted_map_with_mirrored_windows() -> tuple[D.Calibration, PSFMap, np.ndarray, np.ndarray, np.ndarray]:
    """A calibration and the map of a 10° tilted plane whose far windows partly read the wrong side of focus
    (astigmatism sign flipped, as the network does far below focus), and near-focus windows flipped where it
    is harmless: ``(cal, pmap, height_um, flipped_far, flipped_near)``."""
    cal = D.calibrate_psf_maps([synthetic_map(t, f, seed=i)[0] for i, (t, f) in enumerate([(3, 500), (6, 530),
                                                                                          (10, 470)])],
                               [3, 6, 10], 0.65, in_focus_px=[500, 530, 470])
    pmap, height = synthetic_map(10.0, 511.5, seed=21)
    rng = np.random.default_rng(5)
    flip = (rng.random(height.shape) < 0.3) & (np.abs(height) > 15.0)
    near = (rng.random(height.shape) < 0.5) & (np.abs(height) < 3.0)  # near focus both readings are alike
    for name in ("astig_0", "astig_45"):
        pmap.params[name] = np.where(flip | near, -pmap.params[name], pmap.params[name])
    return cal, pmap, height, flip, near


def textured_frame(shape=(1024, 1024), stripes_below_x: int = 0) -> np.ndarray:
    """Checkerboard (texture in both directions); horizontal lines only left of ``stripes_below_x``."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    frame = np.where((yy // 12 + xx // 12) % 2 == 0, 1000.0, 200.0)
    stripes = np.where((yy // 12) % 2 == 0, 1000.0, 200.0)
    return np.where(xx < stripes_below_x, stripes, frame)


def standard_calibration(**kwargs) -> D.Calibration:
    maps = [synthetic_map(t, f, seed=i)[0] for i, (t, f) in enumerate([(3, 500), (6, 530), (10, 470)])]
    return D.calibrate_psf_maps(maps, [3, 6, 10], 0.65, **kwargs)


class FakeCard:
    def __init__(self, name: str, sha: str) -> None:
        self.name, self.weights_sha256 = name, sha


class FakeNet:
    def __init__(self, name: str, sha: str) -> None:
        self.card = FakeCard(name, sha)


def run_cli(args: list[str]) -> int:
    from livepsf.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code or 0)


class RampMapper:
    """Stands in for PSFMapper: reads the signed defocus (waves) encoded in each window's mean value, on its
    stride's grid of 128 px windows (frames whose size fits that grid)."""

    def __init__(self, model, stride_px: int = 64, device=None, dihedral_average: bool = False) -> None:
        self.model, self.stride_px, self.dihedral_average = model, stride_px, dihedral_average

    def __call__(self, frame: np.ndarray) -> PSFMap:
        frame = np.asarray(frame, dtype=np.float64)
        cy, cx = (window_centers(frame.shape[0], stride=self.stride_px),
                  window_centers(frame.shape[1], stride=self.stride_px))
        means = np.array([[frame[int(y) - 63:int(y) + 65, int(x) - 63:int(x) + 65].mean() for x in cx] for y in cy])
        d = means / 1000.0 - 2.0
        sign = np.where(d >= 0, 1.0, -1.0)
        params = {"focus": np.abs(d), "astig_0": sign * LENS[0], "astig_45": sign * LENS[1]}
        return PSFMap(params={k: v.astype(np.float32) for k, v in params.items()},
                      invalid=np.zeros(d.shape, np.float32), centers_y=cy, centers_x=cx, window_px=128,
                      stride_px=self.stride_px, frame_shape=frame.shape, psf_model="Z-3",
                      model_name=self.model.card.name, model_sha256=self.model.card.weights_sha256,
                      dihedral_average=self.dihedral_average)  # the readings are the same: only the flag


def ramp_frame(tilt_deg: float, in_focus_px: float, shape=(512, 512)) -> np.ndarray:
    """Defocus encoded as a ramp, under a checkerboard (2-D texture, zero mean over a window)."""
    x = np.arange(shape[1])
    height = (x - in_focus_px) * 0.65 * math.tan(math.radians(tilt_deg))
    waves = Optics().defocus_waves(height)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    checker = np.where((yy // 8 + xx // 8) % 2 == 0, 300.0, -300.0)
    return np.round((waves + 2.0) * 1000.0 + checker).astype(np.uint16)

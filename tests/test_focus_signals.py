"""Focus signals of one frame: robust fusion, anisotropy along the lens axis, sharpness (issue 15)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from livepsf.acquisition.focus_signals import check_roi, image_focus_signals, robust_mean
from livepsf.errors import InputError


def test_robust_mean_ignores_mirrored_windows_and_reports_the_spread() -> None:
    rng = np.random.default_rng(0)
    good = rng.normal(5.0, 0.5, 40)
    mirrored = -good[:6]  # windows whose side of focus the network got wrong
    mean, sigma, n = robust_mean(np.concatenate([good, mirrored]))
    assert mean == pytest.approx(good.mean(), abs=0.1)
    assert n == 40
    assert sigma == pytest.approx(0.5 / math.sqrt(40), rel=0.35)
    # Per-window σ weights the windows; an overconfident σ cannot beat the spread.
    _, sigma_w, _ = robust_mean(good, np.full(good.shape, 0.01))
    assert sigma_w == pytest.approx(0.5 / math.sqrt(40), rel=0.35)
    assert all(math.isnan(v) for v in robust_mean(np.array([1.0, np.nan]))[:2])


def test_anisotropy_follows_the_blur_direction_and_sharpness_the_blur_size() -> None:
    texture = np.random.default_rng(1).random((256, 256)).astype(np.float32) * 100 + 100
    longer_along_x = gaussian_filter(texture, (1.0, 3.0))  # (rows, columns)
    along_x = image_focus_signals(longer_along_x, lens_direction=(1.0, 0.0))
    assert along_x.anisotropy < -1.0 and along_x.anisotropy_sigma < 0.1
    assert image_focus_signals(longer_along_x, lens_direction=(-1.0, 0.0)).anisotropy == pytest.approx(
        -along_x.anisotropy)
    assert abs(image_focus_signals(longer_along_x, lens_direction=(0.0, 1.0)).anisotropy) < 0.1
    sharp = image_focus_signals(gaussian_filter(texture, 1.0)).sharpness
    blurred = image_focus_signals(gaussian_filter(texture, 3.0)).sharpness
    assert sharp > blurred + 1.0
    # A region sees only itself.
    frame = np.concatenate([longer_along_x, gaussian_filter(texture, (3.0, 1.0))], axis=1)
    left = image_focus_signals(frame, roi=(0, 0, 256, 256)).anisotropy
    right = image_focus_signals(frame, roi=(256, 0, 256, 256)).anisotropy
    assert left < -1.0 < 1.0 < right


def test_regions_must_lie_in_the_frame() -> None:
    assert check_roi(None, (100, 200)) == (0, 0, 200, 100)
    assert check_roi([10, 20, 30, 40], (100, 200)) == (10, 20, 30, 40)
    for bad in [(0, 0, 300, 10), (-1, 0, 20, 20), (0, 0, 8, 8), ("a", 0, 20, 20), (0, 0, 20)]:
        with pytest.raises(InputError, match="roi"):
            check_roi(bad, (100, 200))
    with pytest.raises(InputError, match="lens direction"):
        image_focus_signals(np.ones((64, 64)), lens_direction=(0.0, 0.0))

"""Spatially-variant defocus rendering and the camera noise model of the simulator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

from livepsf.optics import Optics, zernike_psf
from livepsf.sim.render import EXACT_POISSON_BELOW_E, LENS_ASTIG_0_WAVES, CameraSensor, DefocusRenderer, render_defocus
from livepsf.sim.samples import SurfaceGeometry, sample_brightness

OPTICS = Optics()


def _second_moments(image: np.ndarray) -> tuple[float, float]:
    """Variance of an image's intensity along y (rows) and x (columns), about its centroid."""
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
    total = image.sum()
    cy, cx = (image * yy).sum() / total, (image * xx).sum() / total
    return float((image * (yy - cy) ** 2).sum() / total), float((image * (xx - cx) ** 2).sum() / total)


def _bead(size: int = 161) -> np.ndarray:
    sample = np.zeros((size, size), np.float32)
    sample[size // 2, size // 2] = 1.0
    return sample


@pytest.mark.parametrize("defocus_um, longer", [(20.0, "x"), (-20.0, "y")])
def test_lens_elongates_a_bead_along_x_below_focus_and_y_above(defocus_um: float, longer: str) -> None:
    # Local defocus = Z - height > 0: the bead lies below the focal plane (focus > 0 with astig_0 > 0:
    # longer along x); < 0: above it, longer along y.
    image = render_defocus(_bead(), np.full((161, 161), defocus_um), OPTICS, astig_0_waves=LENS_ASTIG_0_WAVES)
    var_y, var_x = _second_moments(image)
    assert (var_x > 2 * var_y) if longer == "x" else (var_y > 2 * var_x)
    assert image.sum() == pytest.approx(1.0, abs=1e-4)


def test_without_lens_a_defocused_bead_is_round_and_the_same_above_and_below() -> None:
    above = render_defocus(_bead(), np.full((161, 161), -20.0), OPTICS)
    below = render_defocus(_bead(), np.full((161, 161), 20.0), OPTICS)
    var_y, var_x = _second_moments(below)
    assert var_x == pytest.approx(var_y, rel=0.02)
    np.testing.assert_allclose(above, below, atol=1e-6)


def test_uniform_sample_stays_uniform_under_any_defocus_map() -> None:
    # The level weights sum to one and every PSF to one: no seams, no brightness change.
    sample = np.full((96 + 64, 128 + 64), 0.7, np.float32)
    height = SurfaceGeometry(20.0, "x", curvature_per_mm=3.0).height_um((96, 128), OPTICS.pixel_size_um)
    out = render_defocus(sample, 5.0 - height, OPTICS, astig_0_waves=LENS_ASTIG_0_WAVES)
    np.testing.assert_allclose(out, 0.7, atol=2e-4)


@pytest.mark.parametrize("focus_waves", [0.5, 0.55])
def test_constant_defocus_matches_direct_convolution_with_the_exact_psf(focus_waves: float) -> None:
    # 0.5 waves is a level; 0.55 waves sits half-way between two (the worst case of the interpolation).
    sample = sample_brightness("cells", (128 + 128, 128 + 128), OPTICS.pixel_size_um, seed=3)
    renderer = DefocusRenderer(OPTICS, level_step_waves=0.1)
    out = renderer.render(sample, np.full((128, 128), OPTICS.defocus_um(focus_waves)), astig_0_waves=0.3)
    psf = zernike_psf(torch.tensor([focus_waves]), torch.tensor([0.3]), torch.tensor([0.0]), 127, OPTICS)[0].numpy()
    exact = fftconvolve(sample, psf, mode="same")[64:-64, 64:-64]
    rms = np.sqrt(np.mean((out - exact) ** 2)) / exact.std()
    assert rms < 0.02


def test_tilted_render_is_close_to_a_much_finer_level_grid() -> None:
    sample = sample_brightness("cells", (192 + 128, 192 + 128), OPTICS.pixel_size_um, seed=1)
    defocus = 3.0 - SurfaceGeometry(10.0, "x").height_um((192, 192), OPTICS.pixel_size_um)
    coarse = DefocusRenderer(OPTICS, 0.1).render(sample, defocus, astig_0_waves=0.3)
    fine = DefocusRenderer(OPTICS, 0.025).render(sample, defocus, astig_0_waves=0.3)
    # Per-column error (columns = constant defocus): no column, in particular at a level, stands out.
    column_rms = np.sqrt(np.mean((coarse - fine) ** 2, axis=0)) / fine.std()
    assert column_rms.max() < 0.03


@pytest.mark.parametrize("focus_waves", [0.0, 0.4, 1.5])
def test_psf_support_keeps_more_than_99_percent_of_the_energy(focus_waves: float) -> None:
    renderer = DefocusRenderer(OPTICS)
    radius = renderer.psf_radius_px(focus_waves, LENS_ASTIG_0_WAVES)
    wide = zernike_psf(torch.tensor([focus_waves]), torch.tensor([LENS_ASTIG_0_WAVES]), torch.tensor([0.0]),
                       2 * radius + 81, OPTICS)[0].numpy()
    c = wide.shape[0] // 2
    assert wide[c - radius : c + radius + 1, c - radius : c + radius + 1].sum() > 0.99


def test_render_rejects_mismatched_shapes_and_bad_values() -> None:
    renderer = DefocusRenderer(OPTICS)
    with pytest.raises(ValueError, match="margin"):
        renderer.render(np.zeros((40, 50), np.float32), np.zeros((32, 32)))
    with pytest.raises(ValueError, match="finite"):
        renderer.render(np.zeros((32, 32), np.float32), np.full((32, 32), np.nan))
    with pytest.raises(ValueError):
        DefocusRenderer(OPTICS, level_step_waves=0.0)


def test_far_defocus_larger_than_the_sample_margin_is_mirrored_not_cropped() -> None:
    sample = np.full((64 + 8, 64 + 8), 0.3, np.float32)  # 4 px of margin, PSF radius ~100 px
    out = render_defocus(sample, np.full((64, 64), 150.0), OPTICS)
    np.testing.assert_allclose(out, 0.3, atol=1e-4)


# -- camera ----------------------------------------------------------------------------------------


def test_camera_mean_and_variance_follow_the_poisson_gaussian_model() -> None:
    sensor = CameraSensor(photon_flux_per_ms=50.0, gain_adu_per_e=2.0, read_noise_e=3.0, offset_adu=100.0)
    brightness = np.full((256, 256), 0.8, np.float32)
    model = sensor.exposure(brightness, exposure_ms=5.0)  # 200 e-: the Gaussian limit
    frame = np.empty((256, 256), np.uint16)
    model.draw(frame, torch.Generator().manual_seed(0))
    electrons = 0.8 * 50.0 * 5.0
    assert frame.mean() == pytest.approx(100 + 2 * electrons, rel=0.005)
    assert frame.var() == pytest.approx(4 * (electrons + 9), rel=0.05)


def test_camera_draws_exact_poisson_at_low_counts_and_a_dark_frame_is_offset_plus_read_noise() -> None:
    sensor = CameraSensor(photon_flux_per_ms=1.0, gain_adu_per_e=1.0, read_noise_e=0.0, offset_adu=10.0)
    low = sensor.exposure(np.full((128, 128), 1.0, np.float32), exposure_ms=2.0)  # 2 e-
    assert 2.0 < EXACT_POISSON_BELOW_E
    frame = np.empty((128, 128), np.uint16)
    low.draw(frame, torch.Generator().manual_seed(1))
    counts = frame.astype(float) - 10
    assert counts.min() == 0  # a Poisson(2) pixel is often 0: a Gaussian would rarely give exactly that
    assert counts.mean() == pytest.approx(2.0, rel=0.03)
    assert counts.var() == pytest.approx(2.0, rel=0.08)
    dark = CameraSensor(read_noise_e=2.0, gain_adu_per_e=1.0, offset_adu=100.0).exposure(np.zeros((128, 128), np.float32), 10.0)
    dark.draw(frame, torch.Generator().manual_seed(2))
    assert frame.mean() == pytest.approx(100.0, abs=0.1)
    assert frame.std() == pytest.approx(2.0, rel=0.1)


def test_camera_noise_is_fresh_every_frame_but_reproducible_per_seed() -> None:
    model = CameraSensor().exposure(np.full((64, 64), 0.5, np.float32), 10.0)
    a, b, c = (np.empty((64, 64), np.uint16) for _ in range(3))
    gen = torch.Generator().manual_seed(5)
    model.draw(a, gen)
    model.draw(b, gen)
    model.draw(c, torch.Generator().manual_seed(5))
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_camera_sensor_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="gain"):
        CameraSensor(gain_adu_per_e=0.0)
    with pytest.raises(ValueError, match="exposure"):
        CameraSensor().exposure(np.zeros((4, 4), np.float32), -1.0)


def test_cached_level_images_give_the_same_render_and_survive_stage_moves() -> None:
    sample = sample_brightness("filaments", (96 + 128, 160 + 128), OPTICS.pixel_size_um, seed=2)
    height = SurfaceGeometry(8.0, "x").height_um((96, 160), OPTICS.pixel_size_um)
    cached = DefocusRenderer(OPTICS, level_cache_mb=64)
    for z_um in (0.0, 6.0, -3.0):
        band = DefocusRenderer(OPTICS).render(sample, z_um - height, astig_0_waves=0.3)
        mixed = cached.render(sample, z_um - height, astig_0_waves=0.3, cache_key="filaments-2")
        np.testing.assert_allclose(mixed, band, atol=2e-5)
    # A tiny budget still renders correctly (levels are evicted and recomputed).
    small = DefocusRenderer(OPTICS, level_cache_mb=0.01)
    np.testing.assert_allclose(small.render(sample, -height, cache_key="k"), DefocusRenderer(OPTICS).render(sample, -height), atol=2e-5)

"""Degradation: FFT blur without wrap-around, camera noise statistics, the invalid rule, Fig. 7 strengths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.signal import fftconvolve

from livepsf.data import textures as T
from livepsf.data.degrade import (
    DegradationConfig,
    apply_strength,
    blur_fft,
    blurred_invalid,
    blurred_patch,
    camera_noise,
    illumination_ramp,
    invalid_rule,
    psf_spectrum,
    texture_spectrum,
)
from livepsf.optics import psf_batch


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- blur ------------------------------------------------------------------------------------------


def test_blur_is_the_valid_part_of_a_linear_convolution():
    rng = np.random.default_rng(0)
    psf = psf_batch("Z-3", torch.tensor([[0.8, 0.2, -0.1]]), 21)
    tex = T.fractal_noise((64, 64), rng, beta=1.0)
    out = blur_fft(torch.from_numpy(tex)[None], psf_spectrum(psf, 64), 21, 40)
    reference = fftconvolve(tex.astype(np.float64), psf[0].double().numpy(), mode="valid")  # 44 x 44
    np.testing.assert_allclose(out[0].numpy(), reference[2:42, 2:42], atol=1e-5)


def test_one_texture_spectrum_blurred_by_many_psfs_matches_blur_fft_and_the_linear_convolution():
    """texture_spectrum once, blurred_patch for several PSFs: the same valid convolution as blur_fft."""
    rng = np.random.default_rng(1)
    values = torch.tensor([[0.0, 0.0, 0.0], [0.8, 0.2, -0.1], [1.5, -0.4, 0.3]])
    psfs = psf_batch("Z-3", values, 21)
    tex = torch.from_numpy(T.fractal_noise((64, 64), rng, beta=1.0))[None]
    out = blurred_patch(texture_spectrum(tex, 64) * psf_spectrum(psfs, 64), 21, 40)
    torch.testing.assert_close(out, blur_fft(tex.expand(3, 64, 64), psf_spectrum(psfs, 64), 21, 40))
    for i in range(3):
        reference = fftconvolve(tex[0].double().numpy(), psfs[i].double().numpy(), mode="valid")
        np.testing.assert_allclose(out[i].numpy(), reference[2:42, 2:42], atol=1e-5)
    assert float(out[0].std()) > float(out[2].std())  # more blur, less texture contrast
    with pytest.raises(ValueError, match="FFT size"):
        blurred_patch(torch.zeros(1, 33, 64, dtype=torch.complex64), 33, 40)


def test_blur_of_a_delta_is_the_psf_centred_on_the_patch():
    psf = psf_batch("Z-3", torch.tensor([[1.0, 0.3, 0.2]]), 31)
    tex = torch.zeros(1, 80, 80)
    tex[0, 40, 40] = 1.0
    out = blur_fft(tex, psf_spectrum(psf, 80), 31, 40)  # patch covers crop rows 20..59: delta at 20
    torch.testing.assert_close(out[0, 5:36, 5:36], psf[0], atol=1e-6, rtol=1e-4)


def test_blur_of_a_small_crop_mirror_pads_instead_of_wrapping():
    psf = psf_batch("G-1", torch.tensor([[9.0]]), 25)
    ramp = torch.linspace(0, 1, 48)[None, None, :].expand(1, 48, 48).contiguous()
    out = blur_fft(ramp, psf_spectrum(psf, 96), 25, 48)
    # A linear ramp is preserved by a symmetric blur away from the mirrored border; wrap-around would
    # mix the dark left edge into the bright right edge.
    torch.testing.assert_close(out[0, :, 12:36], ramp[0, :, 12:36], atol=2e-3, rtol=0)
    assert float(out[0, :, -1].mean()) > 0.9


def test_blur_rejects_too_small_fft():
    with pytest.raises(ValueError, match="FFT size"):
        blur_fft(torch.zeros(1, 64, 64), torch.zeros(1, 33, 64, dtype=torch.complex64), 33, 40)


# -- camera noise (paper eq. 10) -------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.5, 4.0, 25.0, 400.0])
def test_poisson_gaussian_mean_and_variance_match_theory(lam):
    gain, read, offset = 1.7, 2.5, 100.0
    electrons = torch.full((4, 256, 256), lam)
    raw = camera_noise(electrons, read, gain, offset, _gen(1)).double()
    mean_expected = offset + gain * lam
    var_expected = gain**2 * (lam + read**2) + 1.0 / 12.0  # + rounding to whole ADU
    assert float(raw.mean()) == pytest.approx(mean_expected, rel=2e-3, abs=0.02)
    assert float(raw.var()) == pytest.approx(var_expected, rel=0.02)


def test_pure_poisson_counts_are_integers_with_variance_equal_mean():
    lam = torch.full((2, 200, 200), 3.0)
    counts = camera_noise(lam, 0.0, 1.0, 0.0, _gen(2), quantise=False)
    assert torch.equal(counts, counts.round())
    assert float(counts.var()) == pytest.approx(3.0, rel=0.03)


def test_camera_without_noise_is_offset_plus_gain_times_signal_and_per_image_parameters():
    electrons = torch.tensor([10.0, 20.0])[:, None, None].expand(2, 3, 3)
    raw = camera_noise(electrons, torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.5]), torch.tensor([100.0, 7.0]),
                       noise=False, quantise=False)
    assert torch.all(raw[0] == 120.0) and torch.all(raw[1] == 17.0)


def test_camera_noise_is_reproducible_by_generator():
    e = torch.rand(2, 32, 32) * 50
    a = camera_noise(e, 2.0, 1.0, 10.0, _gen(5))
    b = camera_noise(e, 2.0, 1.0, 10.0, _gen(5))
    c = camera_noise(e, 2.0, 1.0, 10.0, _gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


# -- invalid rule ----------------------------------------------------------------------------------


def _rule(windows, photons, background=0.0, read=2.0, config=DegradationConfig()):
    n = windows.shape[0]
    full = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
    return invalid_rule(windows, full(photons), full(background), full(read), config)


def test_invalid_rule_flags_blank_and_black_and_keeps_textures():
    rng = np.random.default_rng(0)
    blank = torch.full((1, 64, 64), 0.6)
    texture = torch.from_numpy(T.cells((64, 64), rng, cell_radius_px=12, density=1.0))[None]
    fractal = torch.from_numpy(T.fractal_noise((64, 64), rng))[None]
    assert _rule(blank, 1000).tolist() == [1.0]
    assert _rule(texture, 0.0).tolist() == [1.0]  # black: no light at all
    assert _rule(texture, 1000).tolist() == [0.0]
    assert _rule(fractal, 1000).tolist() == [0.0]


def test_invalid_rule_keeps_a_single_bright_bead_but_not_a_faint_speck_or_noise_buried_texture():
    bead = torch.zeros(1, 64, 64)
    bead[0, 30, 30] = 1.0
    assert _rule(bead, 500).tolist() == [0.0]  # 500 photons on a dark field: clearly there
    speck = torch.full((1, 64, 64), 0.8)
    speck[0, 30, 30] = 0.75
    assert _rule(speck, 5000).tolist() == [1.0]  # flat field: contrast rule
    fractal = torch.from_numpy(0.05 * T.fractal_noise((64, 64), np.random.default_rng(1)))[None]
    assert _rule(fractal, 20, background=0.5, read=5.0).tolist() == [1.0]  # modulation 1 e- under 5.5 e- noise


def test_invalid_rule_white_ratio():
    white = torch.ones(1, 64, 64)
    white[0, :, :1] = 0.0  # 1.6 % dark pixels: mostly white
    assert _rule(white, 5000).tolist() == [1.0]
    white[0, :, :8] = 0.0  # 12 % dark: a real edge
    assert _rule(white, 5000).tolist() == [0.0]


def test_blurred_rule_flags_a_faint_bead_spread_below_the_noise_but_keeps_it_in_focus():
    bead = torch.zeros(1, 256, 256)
    bead[0, 128, 128] = 1.0
    psfs = psf_batch("Z-1", torch.tensor([[0.0], [2.0]]), 127)  # in focus; 2 waves (~39 px radius)
    sharp, wide = (blur_fft(bead, psf_spectrum(psfs[i : i + 1], 256), 127, 64) for i in range(2))
    full = lambda v: torch.full((1,), float(v), dtype=torch.float64)  # noqa: E731
    config = DegradationConfig()
    assert _rule(bead[:, 96:160, 96:160], 500).tolist() == [0.0]  # the sharp rule keeps it whatever the blur
    assert blurred_invalid(sharp, full(500), full(0.0), full(2.0), config).tolist() == [0.0]
    assert blurred_invalid(wide, full(500), full(0.0), full(2.0), config).tolist() == [1.0]
    # Enough light brings the spread bead back above the noise.
    assert blurred_invalid(wide, full(5e6), full(0.0), full(2.0), config).tolist() == [0.0]


# -- configuration ---------------------------------------------------------------------------------


def test_config_validates_ranges():
    with pytest.raises(ValueError, match="photons"):
        DegradationConfig(photons=(100.0, 10.0))
    with pytest.raises(ValueError, match="gain_adu"):
        DegradationConfig(gain_adu=(0.0, 1.0))
    with pytest.raises(ValueError, match="invalid_fraction"):
        DegradationConfig(invalid_fraction=1.5)
    clean = DegradationConfig.clean()
    assert not clean.noise and clean.photons == (1.0, 1.0) and clean.gradient == (0.0, 0.0)


def test_illumination_ramp_spans_one_to_one_minus_drop():
    ramp = illumination_ramp(64, torch.tensor([0.4, 0.4]), torch.tensor([0.0, math.pi / 2]))
    assert float(ramp[0, :, -1].mean()) == pytest.approx(1.0) and float(ramp[0, :, 0].mean()) == pytest.approx(0.6)
    assert float(ramp[1, -1].mean()) == pytest.approx(1.0) and float(ramp[1, 0].mean()) == pytest.approx(0.6)


# -- robustness sweep strengths (Fig. 7) -----------------------------------------------------------


def test_strength_zero_is_identity():
    x = torch.rand(2, 1, 16, 16)
    for kind in ("gaussian", "poisson", "mixed", "illumination", "gradient"):
        assert torch.equal(apply_strength(x, kind, 0.0), x)


def test_gaussian_and_poisson_strengths_set_the_noise_std_at_the_white_level():
    flat = torch.full((2, 1, 200, 200), 3.0)  # the white level is 3
    g = apply_strength(flat, "gaussian", 0.5, _gen(0))
    assert float(g.std()) == pytest.approx(0.5 * 3.0, rel=0.02)
    assert float(g.mean()) == pytest.approx(3.0, abs=0.01)
    p = apply_strength(flat, "poisson", 0.5, _gen(0))  # 4 photons at the white level
    assert float(p.std()) == pytest.approx(0.5 * 3.0, rel=0.03)
    assert float(p.mean()) == pytest.approx(3.0, rel=0.01)
    m = apply_strength(flat, "mixed", 0.5, _gen(0))
    assert float(m.std()) == pytest.approx(math.sqrt(2) * 0.5 * 3.0, rel=0.03)


def test_illumination_and_gradient_strengths():
    x = torch.rand(3, 1, 32, 32) + 0.5
    torch.testing.assert_close(apply_strength(x, "illumination", 0.75), 0.25 * x)
    ratio = apply_strength(x, "gradient", 0.6, _gen(0)) / x
    assert float(ratio.max()) <= 1.0 + 1e-6 and float(ratio.min()) == pytest.approx(0.4, abs=0.02)
    with pytest.raises(ValueError, match="below 1"):
        apply_strength(x, "illumination", 1.0)
    with pytest.raises(ValueError, match="unknown degradation"):
        apply_strength(x, "blur", 0.1)

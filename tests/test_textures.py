"""Sharp textures: every generator, the printed grid's geometry, shipped images, and label-consistent rotations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from livepsf.data import textures as T
from livepsf.data.degrade import blur_fft, psf_spectrum
from livepsf.optics import get_psf_model, psf_batch

PROCEDURAL = [k for k in T.GENERATORS if k != "blank"]


@pytest.mark.parametrize("kind", PROCEDURAL)
def test_every_generator_gives_a_non_constant_image_of_the_requested_size(kind):
    rng = np.random.default_rng(3)
    image = T.GENERATORS[kind]((96, 130), rng, **T.random_scales(kind, rng))
    assert image.shape == (96, 130)
    assert image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert image.std() > 1e-3, f"{kind} is flat"


@pytest.mark.parametrize("kind", PROCEDURAL)
def test_generators_are_reproducible_by_seed(kind):
    a = T.random_texture(64, np.random.default_rng(7), kinds=[kind])[0]
    b = T.random_texture(64, np.random.default_rng(7), kinds=[kind])[0]
    c = T.random_texture(64, np.random.default_rng(8), kinds=[kind])[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_blank_is_constant():
    image = T.blank((40, 50), np.random.default_rng(0), level=0.3)
    assert image.shape == (40, 50)
    assert np.all(image == np.float32(0.3))


def test_printed_grid_has_the_requested_pitch_and_line_width():
    pitch, width = 50.0, 10.0
    grid = T.printed_grid((400, 400), np.random.default_rng(0), pitch_px=pitch, line_width_px=width,
                          offset_px=(20.0, 30.0), edge_roughness_px=0.5, toner_transmission=0.0)
    # Columns through the vertical lines are dark on average; their centres sit at 30 + k * pitch.
    profile = grid.mean(axis=0)
    dark = np.flatnonzero(profile < 0.5)
    centres = [c.mean() for c in np.split(dark, np.flatnonzero(np.diff(dark) > 1) + 1)]
    inner = [c for c in centres if 5 < c < 395]
    np.testing.assert_allclose(np.diff(inner), pitch, atol=1.0)
    assert abs((inner[0] - 30.0) % pitch) < 1.0 or abs((inner[0] - 30.0) % pitch - pitch) < 1.0
    # Area covered by toner: 1 - (1 - w/p)^2 for a square grid of lines.
    covered = float((1.0 - grid).mean())
    assert covered == pytest.approx(1 - (1 - width / pitch) ** 2, abs=0.04)


def test_printed_grid_rejects_impossible_geometry():
    with pytest.raises(ValueError, match="line_width_px"):
        T.printed_grid(64, np.random.default_rng(0), pitch_px=10, line_width_px=12)


def test_shipped_images_load_offline_and_crops_respect_zoom():
    names = T.available_shipped_images()
    assert set(names) == set(T.SHIPPED_IMAGES)
    for name in names:
        img = T.shipped_image(name)
        assert img.ndim == 2 and img.dtype == np.float32 and img.max() == 1.0 and img.min() == 0.0
    crop = T.shipped_crop((200, 150), np.random.default_rng(1), names=["microaneurysms"])  # 102 px: padded
    assert crop.shape == (200, 150)
    small = T.shipped_crop((512, 512), np.random.default_rng(1), names=["coins"], zoom=(1.0, 1.0), min_shape=240)
    assert small.shape == (303, 384)  # the whole image, no mirror padding
    tiny = T.shipped_crop((512, 512), np.random.default_rng(1), names=["microaneurysms"], min_shape=240)
    assert tiny.shape == (240, 240)  # padded up to the minimum only
    with pytest.raises(ValueError, match="zoom"):
        T.shipped_crop(64, np.random.default_rng(1), zoom=(1.0, 2.0))
    with pytest.raises(ValueError, match="unknown shipped image"):
        T.shipped_image("not-an-image")


def test_standardise_removes_offset_and_gain():
    x = torch.rand(3, 32, 32)
    np.testing.assert_allclose(T.standardise(5.0 * x + 100.0), T.standardise(x), atol=1e-4)
    xn = x.numpy()
    np.testing.assert_allclose(T.standardise(7.0 * xn + 3.0), T.standardise(xn), atol=1e-4)
    assert float(T.standardise(torch.full((1, 8, 8), 4.0)).abs().max()) == 0.0


def test_quarter_turn_negates_both_astigmatism_components():
    spec = get_psf_model("Z-3")
    values = torch.tensor([[1.0, 0.3, -0.2]], dtype=torch.float64)
    _, rotated = T.dihedral(torch.zeros(1, 4, 4), values, spec, k=1)
    torch.testing.assert_close(rotated, torch.tensor([[1.0, -0.3, 0.2]], dtype=torch.float64))
    _, flipped = T.dihedral(torch.zeros(1, 4, 4), values, spec, k=0, flip_axis=1)
    torch.testing.assert_close(flipped, torch.tensor([[1.0, 0.3, 0.2]], dtype=torch.float64))


@pytest.mark.parametrize("model", ["Z-3", "G-2"])
@pytest.mark.parametrize("k,flip_axis", [(1, None), (3, None), (2, None), (0, 0), (1, 1)])
def test_rotating_a_blurred_patch_equals_blurring_the_rotated_texture_with_the_transformed_label(model, k, flip_axis):
    """rot(h_a * t) == h_a' * rot(t) with a' from the label transform: labels follow the image."""
    spec = get_psf_model(model)
    rng = np.random.default_rng(0)
    size, out = 41, 48
    fft_px = 96
    texture = torch.from_numpy(T.fractal_noise((fft_px, fft_px), rng, beta=1.0))[None]
    values = torch.tensor([[1.2, 0.35, -0.25]] if model == "Z-3" else [[4.0, 12.0]], dtype=torch.float64)
    blurred = blur_fft(texture, psf_spectrum(psf_batch(spec, values, size), fft_px), size, out)
    rotated, new_values = T.dihedral(blurred, values, spec, k=k, flip_axis=flip_axis)
    moved, _ = T.dihedral(texture, values, spec, k=k, flip_axis=flip_axis)
    expected = blur_fft(moved, psf_spectrum(psf_batch(spec, new_values, size), fft_px), size, out)
    torch.testing.assert_close(rotated, expected, atol=2e-5, rtol=1e-4)
    if spec.has_astigmatism and k % 2 == 1:
        # And the untransformed label would not do (the test can fail).
        wrong = blur_fft(moved, psf_spectrum(psf_batch(spec, values, size), fft_px), size, out)
        assert float((wrong - rotated).abs().max()) > 100 * float((expected - rotated).abs().max())


def _orientation_coherence(image: np.ndarray) -> float:
    """Structure-tensor coherence over the whole image: 1 for purely oriented content, 0 for isotropic."""
    gy, gx = np.gradient(image.astype(np.float64))
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    return float(np.hypot(jxx - jyy, 2 * jxy) / (jxx + jyy))


@pytest.mark.parametrize("n_lines", [1, 3, 0])
def test_lines_are_purely_oriented_at_the_requested_angle(n_lines):
    image = T.lines((128, 128), np.random.default_rng(0), n_lines=n_lines, spacing_px=25.0, width_px=3.0,
                    angle_deg=30.0)
    assert _orientation_coherence(image) > 0.9  # anti-aliased pixel staircases keep it just below 1
    gy, gx = np.gradient(image.astype(np.float64))
    # The gradient points across the lines: along (-sin 30°, cos 30°) in (x, y).
    t = np.radians(30.0)
    along = np.abs(gx * np.cos(t) + gy * np.sin(t)).sum()
    across = np.abs(-gx * np.sin(t) + gy * np.cos(t)).sum()
    assert along < 0.35 * across
    if n_lines == 1:  # one line 3 px wide crossing the field: about 3 px of "ink" per column
        assert 2.0 < image.sum() / 128 < 5.0


def test_held_out_family_is_never_drawn_for_training():
    assert set(T.HELD_OUT_KINDS) <= set(T.GENERATORS) and not set(T.HELD_OUT_KINDS) & set(T.TEXTURE_KINDS)
    assert "lines" in T.TEXTURE_KINDS
    image = T.voronoi((96, 96), np.random.default_rng(1), cell_px=20.0, wall_px=2.0)
    assert image.max() == pytest.approx(1.0) and 0.05 < float((image > 0.5).mean()) < 0.5
    assert _orientation_coherence(image) < 0.3  # walls in every direction

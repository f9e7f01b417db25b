"""Overlay computations: colour ranges, glyph geometry against real PSFs, axis sticks, ROI means."""

from __future__ import annotations

import numpy as np
import pytest

from livepsf.gui import overlays as ov
from livepsf.mapping import PSFMap
from livepsf.optics import Optics, make_psf


def make_map(focus, astig_0, astig_45, invalid=None, frame_shape=(256, 256), stride=64) -> PSFMap:
    focus = np.asarray(focus, np.float32)
    gy, gx = focus.shape
    return PSFMap(
        params={"focus": focus, "astig_0": np.asarray(astig_0, np.float32) * np.ones_like(focus),
                "astig_45": np.asarray(astig_45, np.float32) * np.ones_like(focus)},
        invalid=np.zeros_like(focus) if invalid is None else np.asarray(invalid, np.float32),
        centers_y=np.arange(gy) * float(stride) + 63.5, centers_x=np.arange(gx) * float(stride) + 63.5,
        window_px=128, stride_px=stride, frame_shape=frame_shape, psf_model="Z-3", optics=Optics())


def psf_moments(focus: float, astig_0: float, astig_45: float) -> np.ndarray:
    p = make_psf("Z-3", 129, Optics(), focus=focus, astig_0=astig_0, astig_45=astig_45).astype(np.float64)
    y, x = np.mgrid[:129, :129] - 64.0
    return np.array([[(p * x * x).sum(), (p * x * y).sum()], [(p * x * y).sum(), (p * y * y).sum()]])


@pytest.mark.parametrize("params", [(1.0, 0.0, 0.0), (1.0, 0.3, 0.0), (1.0, 0.0, 0.3), (1.5, -0.4, 0.2)])
def test_glyph_covariance_matches_the_real_psf(params):
    """Size, elongation and orientation of the glyph follow the Fourier-optics PSF of the package."""
    cov = ov.psf_covariance_px(make_map(np.full((1, 1), params[0]), params[1], params[2]))[0, 0]
    truth = psf_moments(*params)
    # The Airy tails add a few px² the geometric model leaves out; the defocused blur itself agrees.
    np.testing.assert_allclose(cov, truth, atol=0.1 * np.abs(truth).max() + 8.0)
    evals, evecs = np.linalg.eigh(cov)
    tvals, tvecs = np.linalg.eigh(truth)
    assert abs(abs(evecs[:, 1] @ tvecs[:, 1]) - 1) < 0.02  # same long axis


def test_overlay_field_units_and_fixed_ranges():
    pmap = make_map(np.array([[0.0, 1.0], [2.0, 0.5]]), 0.3, 0.0, invalid=[[0, 0], [1, 0]])
    focus = ov.overlay_field(pmap, "focus")
    optics = Optics()
    np.testing.assert_allclose(focus.grid, np.abs(optics.defocus_um(pmap.params["focus"])), rtol=1e-6)
    assert focus.levels == pytest.approx((0.0, optics.defocus_um(2.0))) and "µm" in focus.label
    astig = ov.overlay_field(pmap, "astigmatism")
    np.testing.assert_allclose(astig.grid, 0.3, rtol=1e-5)
    uncal = ov.overlay_field(pmap, "depth")
    assert uncal.grid is None and "uncalibrated" in uncal.message
    depth = ov.overlay_field(pmap, "depth", depth_um=np.array([[-10, 0], [10, 20]]), depth_range_um=30)
    assert depth.levels == (-30.0, 30.0) and depth.colormap.startswith("CET-D")
    assert ov.available_overlays("G-2") == ["blur", "invalid", "none"]
    assert "depth" in ov.available_overlays("Z-3")
    with pytest.raises(ValueError, match="unknown overlay"):
        ov.overlay_field(pmap, "colour")


def test_overlay_rgba_interpolates_and_dims_invalid_windows():
    pmap = make_map(np.array([[0.0, 1.0], [2.0, 0.5]]), 0.0, 0.0, invalid=[[0, 0], [1, 0]],
                    frame_shape=(192, 192))
    field = ov.overlay_field(pmap, "focus")
    rgba = ov.overlay_rgba(pmap, field, (192, 192), opacity=0.8)
    assert rgba.shape == (192, 192, 4) and rgba.dtype == np.uint8
    # Same field as PSFMap.upsample (bilinear between centres, constant beyond).
    np.testing.assert_allclose(ov.upsample_grid(pmap, field.grid, (192, 192)),
                               _reference_upsample(pmap, field.grid), rtol=1e-5, atol=1e-4)
    assert rgba[5, 5, 3] == round(255 * 0.8)              # valid window: full opacity
    assert rgba[186, 5, 3] == round(255 * 0.8 * 0.25)     # textureless window: dimmed
    assert ov.overlay_rgba(pmap, ov.overlay_field(pmap, "none"), (10, 10), 0.5) is None


def test_uncertain_windows_fade_like_textureless_ones():
    import dataclasses

    pmap = make_map(np.array([[0.5, 0.5], [0.5, 0.5]]), 0.0, 0.0, invalid=[[0, 0], [0, 0]], frame_shape=(192, 192))
    field = ov.overlay_field(pmap, "focus")
    assert ov.relative_uncertainty(pmap, "focus") is None  # a model without σ: nothing fades
    focus_span = 2.0 * float(pmap.params["focus"].max() + 10)  # larger than any focus range: σ = span → fade
    sigma = {n: np.zeros((2, 2), np.float32) for n in pmap.params}
    sigma["focus"] = np.array([[0.0, focus_span], [0.0, 0.0]], np.float32)
    uncertain = dataclasses.replace(pmap, sigma=sigma)
    rel = ov.relative_uncertainty(uncertain, "focus")
    assert rel[0, 0] == 0.0 and rel[0, 1] == 1.0
    rgba = ov.overlay_rgba(uncertain, field, (192, 192), opacity=0.8)
    assert rgba[5, 5, 3] == round(255 * 0.8)             # certain window: full opacity
    assert rgba[5, 186, 3] == round(255 * 0.8 * 0.25)    # no information: faded as far as a textureless one
    assert ov.relative_uncertainty(uncertain, "astigmatism").max() == 0.0  # σ of other parameters only


def test_depth_uncertainty_fades_and_marks_windows_that_tell_nothing():
    pmap = make_map(np.full((2, 2), 0.5), 0.1, 0.0, frame_shape=(192, 192))
    rel = ov.depth_uncertainty(np.array([[0.5, np.inf], [5.0, 20.0]]), depth_range_um=20.0)
    # σ as a fraction of the colour range (40 µm), a quarter of it (10 µm) and σ = inf fade all the way.
    np.testing.assert_allclose(rel, [[0.05, 1.0], [0.5, 1.0]])
    field = ov.overlay_field(pmap, "depth", np.zeros((2, 2)), 20.0, fused=True)
    assert "surface" in field.label
    rgba = ov.overlay_rgba(pmap, field, (192, 192), opacity=0.8, uncertainty=rel)
    assert rgba[5, 5, 3] == round(255 * 0.8 * (1 - 0.75 * 0.05))
    assert rgba[5, 186, 3] == round(255 * 0.8 * 0.25)
    assert ov.invalid_cells(pmap, rel >= 1) == [(95.5, 31.5, 64.0, 64.0), (95.5, 95.5, 64.0, 64.0)]
    assert ov.invalid_cells(pmap) == []


def _reference_upsample(pmap, grid):
    import dataclasses

    carrier = dataclasses.replace(pmap, params={"variance": np.asarray(grid, np.float32)}, psf_model="G-1")
    return carrier.upsample((192, 192), name="variance")


def test_axis_sticks_follow_the_astigmatism_axis_and_invalid_cells():
    pmap = make_map(np.ones((1, 1)), 0.0, 0.4, invalid=[[1.0]])
    x, y, connect = ov.axis_sticks(pmap)
    angle = np.degrees(np.arctan2(y[1] - y[0], x[1] - x[0])) % 180
    assert angle == pytest.approx(45.0, abs=1e-3)  # astig_45 > 0: the row = column diagonal
    assert list(connect) == [True, False]
    assert ov.invalid_cells(pmap) == [(31.5, 31.5, 64.0, 64.0)]
    xs, ys, conn = ov.ellipse_polyline(pmap, points=16)
    assert xs.shape == ys.shape == conn.shape == (16,) and not conn[-1]


def test_region_mean_uses_valid_windows_inside_the_roi():
    pmap = make_map(np.array([[0.0, 1.0], [2.0, 0.5]]), 0.0, 0.0, invalid=[[0, 0], [1, 0]])
    field = ov.overlay_field(pmap, "focus")
    um = Optics().defocus_um
    assert ov.region_mean(field, pmap) == pytest.approx(np.mean([0.0, um(1.0), um(0.5)]), rel=1e-5)
    assert ov.region_mean(field, pmap, roi=(100, 0, 100, 100)) == pytest.approx(um(1.0), rel=1e-5)
    assert np.isnan(ov.region_mean(field, pmap, roi=(0, 100, 100, 100)))  # only the invalid window


def test_gaussian_and_focus_only_maps_draw():
    common = dict(invalid=np.zeros((1, 2), np.float32), centers_y=np.array([63.5]),
                  centers_x=np.array([63.5, 127.5]), window_px=128, stride_px=64, frame_shape=(128, 192),
                  optics=Optics())
    g2 = PSFMap(params={"variance_x": np.array([[4.0, 9.0]], np.float32),
                        "variance_y": np.array([[1.0, 9.0]], np.float32)}, psf_model="G-2", **common)
    cov = ov.psf_covariance_px(g2)
    assert cov[0, 0, 0, 0] == 4.0 and cov[0, 0, 1, 1] == 1.0 and cov[0, 0, 0, 1] == 0.0
    blur = ov.overlay_field(g2, "blur")
    np.testing.assert_allclose(blur.grid, np.sqrt([[2.5, 9.0]]) * 0.65, rtol=1e-5)
    assert ov.glyph_scale(g2) == 1.0  # the widest Gaussian (6 px) fits a 64 px cell at true scale
    z1 = PSFMap(params={"focus": np.array([[0.2, 1.0]], np.float32)}, psf_model="Z-1", **common)
    assert ov.available_overlays("Z-1") == ["focus", "invalid", "none"]
    c = ov.psf_covariance_px(z1)
    assert c[0, 1, 0, 0] == pytest.approx(c[0, 1, 1, 1]) and c[0, 1, 0, 0] > c[0, 0, 0, 0]
    assert ov.axis_sticks(z1)[0].size == 0

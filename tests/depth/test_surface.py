"""Surface depth: per-window depths fused into one surface under a plane, poly2 or smooth prior."""

from __future__ import annotations

import math

import numpy as np
import pytest

from livepsf import depth as D
from livepsf.depth.surface import fit_surface, surface_depth
from livepsf.errors import InputError
from synthetic_depth import synthetic_map, textured_frame, tilted_map_with_mirrored_windows

CENTRES = np.arange(15) * 64 + 63.5  # a 1024² frame at stride 64
YY, XX = np.meshgrid(CENTRES, CENTRES, indexing="ij")
TILTED = 0.0683 * (XX - 511.5) + 0.02 * (YY - 511.5)  # µm: 6° along x, ~1.8° along y at 0.65 µm/px
BOWL = 30.0 * (((XX - 511.5) / 512) ** 2 + ((YY - 511.5) / 512) ** 2) - 10.0  # curved sample
SADDLE = 0.05 * (XX - 511.5) + 20.0 * ((XX - 511.5) / 512) * ((YY - 511.5) / 512)


def _windows(truth: np.ndarray, seed: int, noise_um: float = 1.0, mirrored: float = 0.2,
             holes: float = 0.15) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Noisy window depths: a fraction read the mirrored depth (wrong sign), others carry no information."""
    rng = np.random.default_rng(seed)
    depth = truth + rng.normal(0.0, noise_um, truth.shape)
    flipped = rng.random(truth.shape) < mirrored
    depth[flipped] = -depth[flipped]
    sigma = np.full(truth.shape, noise_um)
    hole = rng.random(truth.shape) < holes
    sigma[hole] = np.inf
    depth[hole] = rng.uniform(-80, 80, int(hole.sum()))  # a confident-looking guess that must not count
    return depth, sigma, flipped, hole


@pytest.mark.parametrize("prior, truth", [("plane", TILTED), ("poly2", SADDLE), ("poly2", BOWL), ("smooth", BOWL),
                                          ("smooth", TILTED)])
def test_surface_recovered_despite_mirrored_windows_and_holes(prior, truth):
    errors = []
    for seed in range(4):
        depth, sigma, flipped, hole = _windows(truth, seed)
        surface = fit_surface(depth, sigma, CENTRES, CENTRES, prior)
        errors.append(np.abs(surface.depth_um - truth))
        far = flipped & ~hole & (np.abs(truth) > 5)  # mirrored far from focus: gross outliers
        assert np.all(surface.weights[far] == 0), "mirrored windows kept their weight"
        assert np.all(surface.weights[hole] == 0)
        assert surface.n_windows == int((~hole).sum())
        assert surface.n_used < surface.n_windows
        # The surface is finite everywhere: the holes took their neighbours' surface.
        assert np.all(np.isfinite(surface.depth_um)) and np.all(np.isfinite(surface.sigma_um))
    errors = np.array(errors)
    assert errors.mean() < 0.6  # µm, for 1 µm window noise
    holes_err = np.concatenate([e[_windows(truth, s)[3]] for s, e in enumerate(errors)])
    assert holes_err.mean() < 0.8


def test_priors_differ_where_the_sample_does():
    depth, sigma, _, _ = _windows(BOWL, seed=1)
    plane = fit_surface(depth, sigma, CENTRES, CENTRES, "plane")
    poly2 = fit_surface(depth, sigma, CENTRES, CENTRES, "poly2")
    smooth = fit_surface(depth, sigma, CENTRES, CENTRES, "smooth")
    assert np.abs(plane.depth_um - BOWL).mean() > 5.0  # a plane cannot bend
    assert np.abs(poly2.depth_um - BOWL).mean() < 0.6
    assert np.abs(smooth.depth_um - BOWL).mean() < 0.8
    # With a bowl the plane's residuals are far larger than the windows' σ: its scale says so.
    assert plane.scale > 3 * poly2.scale


def test_smooth_prior_adds_no_shape_the_windows_do_not_show():
    # On a plane the smooth prior stays at its unpenalised quadric (6 parameters): REML picks a large λ.
    depth, sigma, _, _ = _windows(TILTED, seed=2)
    smooth = fit_surface(depth, sigma, CENTRES, CENTRES, "smooth")
    plane = fit_surface(depth, sigma, CENTRES, CENTRES, "plane")
    assert smooth.effective_params < 7.0 and smooth.model == "plane"  # no curvature worth its parameters
    assert np.abs(smooth.depth_um - plane.depth_um).max() < 0.6
    # On a surface with more shape than a quadric it spends more parameters, and follows it.
    wave = 8.0 * np.sin(XX / 200.0) + 0.02 * (YY - 511.5)
    depth, sigma, _, _ = _windows(wave, seed=2)
    smooth = fit_surface(depth, sigma, CENTRES, CENTRES, "smooth")
    poly2 = fit_surface(depth, sigma, CENTRES, CENTRES, "poly2")
    assert smooth.effective_params > 9.0 and smooth.model == "smooth"
    assert np.abs(smooth.depth_um - wave).mean() < 0.5 * np.abs(poly2.depth_um - wave).mean()


def test_sigma_shrinks_with_more_windows_and_is_honest():
    truth = TILTED
    sub = slice(None, None, 2)  # every other window each way: a quarter of the windows
    medians = {}
    covered = []
    for seed in range(6):
        depth, sigma, _, _ = _windows(truth, seed, mirrored=0.0, holes=0.0)
        full = fit_surface(depth, sigma, CENTRES, CENTRES, "plane")
        few = fit_surface(depth[sub, sub], sigma[sub, sub], CENTRES[sub], CENTRES[sub], "plane")
        medians.setdefault("full", []).append(np.median(full.sigma_um))
        medians.setdefault("few", []).append(np.median(few.sigma_um))
        covered.append(np.mean(np.abs(full.depth_um - truth) < 2 * full.sigma_um))
    # σ of a mean falls as 1/sqrt(n): 225 against 64 windows, about 1.9×.
    assert np.mean(medians["few"]) > 1.5 * np.mean(medians["full"])
    assert np.mean(covered) > 0.85


def test_sigma_follows_the_scatter_when_window_sigma_is_too_small():
    depth, sigma, _, _ = _windows(TILTED, seed=3, mirrored=0.0, holes=0.0, noise_um=2.0)
    honest = fit_surface(depth, sigma, CENTRES, CENTRES, "plane")
    overconfident = fit_surface(depth, sigma / 10, CENTRES, CENTRES, "plane")
    assert 0.7 < honest.scale < 1.4
    assert overconfident.scale > 7
    np.testing.assert_allclose(overconfident.sigma_um, honest.sigma_um, rtol=0.15)


def test_weights_follow_sigma():
    # Half the windows are precise, half noisy (and say so): the precise ones decide the surface.
    rng = np.random.default_rng(4)
    noisy = (XX > 511.5)
    sigma = np.where(noisy, 8.0, 0.5)
    depth = TILTED + rng.normal(0.0, sigma)
    weighted = fit_surface(depth, sigma, CENTRES, CENTRES, "plane", robust=False)
    unweighted = fit_surface(depth, np.ones_like(sigma), CENTRES, CENTRES, "plane", robust=False)
    assert np.abs(weighted.depth_um - TILTED).mean() < 0.5 * np.abs(unweighted.depth_um - TILTED).mean()
    # σ of the surface is smallest where the precise windows are.
    assert np.median(weighted.sigma_um[~noisy]) < np.median(weighted.sigma_um[noisy])


def test_full_frame_is_bilinear_between_window_centres():
    depth, sigma, _, _ = _windows(BOWL, seed=5, mirrored=0.0, holes=0.0)
    surface = fit_surface(depth, sigma, CENTRES, CENTRES, "smooth", frame_shape=(1024, 1024))
    full = surface.full()
    assert full.shape == (1024, 1024) and full.dtype == np.float32
    # At the window centres (here half-integer: between two pixels) the map holds the surface values.
    at_centres = 0.25 * (full[63, 63] + full[64, 64] + full[63, 64] + full[64, 63])
    assert at_centres == pytest.approx(float(surface.depth_um[0, 0]), abs=0.05)
    assert full[0, 0] == pytest.approx(float(surface.depth_um[0, 0]), abs=1e-4)  # constant beyond
    small = surface.full((256, 256), sigma=True)
    assert small.shape == (256, 256) and np.all(small > 0)


def test_too_few_windows_is_a_clear_error():
    depth, sigma, _, _ = _windows(TILTED, seed=6, mirrored=0.0, holes=0.0)
    only = np.full(depth.shape, np.inf)
    only[[0, 7, 14], [0, 14, 3]] = 1.0
    fit_surface(depth, only, CENTRES, CENTRES, "plane")  # three windows do for a plane
    with pytest.raises(InputError, match="poly2 surface needs at least 6 windows"):
        fit_surface(depth, only, CENTRES, CENTRES, "poly2")
    only[0, 0] = np.inf
    with pytest.raises(InputError, match="plane surface needs at least 3 windows"):
        fit_surface(depth, only, CENTRES, CENTRES, "plane")
    line = np.full(depth.shape, np.inf)
    line[4, :] = 1.0  # one row of windows: the tilt across it is unknown
    with pytest.raises(InputError, match="one line"):
        fit_surface(depth, line, CENTRES, CENTRES, "smooth")
    with pytest.raises(InputError, match="unknown surface prior"):
        fit_surface(depth, sigma, CENTRES, CENTRES, "cubic")
    with pytest.raises(InputError, match="do not match"):
        fit_surface(depth[:, :3], sigma, CENTRES, CENTRES, "plane")


def test_surface_depth_gives_the_tilt_of_a_tilted_grid():
    # Synthetic PSF maps from the physics (canonical Z-3 with a lens): the calibrated per-window depth,
    # then the fused plane, whose slope is the grid's tilt.
    maps = [synthetic_map(t, f, seed=i)[0] for i, (t, f) in enumerate([(3, 500), (6, 530), (10, 470)])]
    cal = D.calibrate_psf_maps(maps, [3, 6, 10], 0.65, in_focus_px=[500, 530, 470],
                               frames=[textured_frame()] * 3)  # frames: the calibration gates on texture
    pmap, height = synthetic_map(6.0, 400.0, seed=11, noise=0.05)
    frame = textured_frame(stripes_below_x=300)  # one-directional texture on the left: no information
    surface = surface_depth(cal, pmap, frame, prior="plane")
    tilt_x, tilt_y = surface.tilt_deg()
    assert tilt_x == pytest.approx(6.0, abs=0.3)
    assert abs(tilt_y) < 0.3
    assert np.abs(surface.depth_um - height).mean() < 1.0
    assert surface.n_windows < pmap.grid_shape[0] * pmap.grid_shape[1]  # the striped windows were left out
    figures = surface.figures()
    assert figures["prior"] == "plane" and figures["tilt_x_deg"] == pytest.approx(tilt_x, abs=1e-3)
    assert math.isfinite(figures["residual_rms_um"])


def test_surface_depth_reads_mirrored_windows_back_with_the_surface_side_of_focus():
    # The surface gives mirrored windows their side back, so their own depth and a column's mean (the
    # paper's profile) follow the truth instead of being pulled towards focus.
    cal, pmap, height, flip, near = tilted_map_with_mirrored_windows()
    raw = cal.depth_um(pmap)
    assert np.abs(raw - height)[flip].min() > 25.0  # mirrored: on the other side of focus

    surface = surface_depth(cal, pmap, prior="plane")
    assert np.array_equal(surface.mirrored & ~near, flip)  # every far mirrored window, no correct one
    assert np.abs(surface.window_depth_um - height)[flip].max() < 3.0
    assert np.array_equal(surface.window_depth_um[~surface.mirrored], raw[~surface.mirrored])
    assert surface.figures()["n_mirrored"] == int(surface.mirrored.sum())
    profile_error = np.abs(surface.window_depth_um.mean(axis=0) - height.mean(axis=0)).mean()
    assert profile_error < 1.0 < np.abs(raw.mean(axis=0) - height.mean(axis=0)).mean()
    assert np.abs(surface.depth_um - height).mean() < 0.5


def test_live_depth_reads_mirrored_windows_back_too():
    """The live overlay's depth and surface: the same read-back as the offline surface."""
    cal, pmap, height, flip, _ = tilted_map_with_mirrored_windows()
    depth, sigma, surface = D.surface.live_depth(cal, pmap, prior="plane")
    assert surface is not None and surface.mirrored[flip].all()
    assert np.abs(depth - height)[flip].max() < 3.0
    assert np.abs(surface.depth_um - height).mean() < 0.5
    assert sigma is not None and sigma.shape == depth.shape


def test_a_surface_without_mirrored_windows_is_the_single_fit():
    cal = D.calibrate_psf_maps([synthetic_map(t, f, seed=i)[0] for i, (t, f) in enumerate([(3, 500), (6, 530),
                                                                                          (10, 470)])],
                               [3, 6, 10], 0.65, in_focus_px=[500, 530, 470])
    pmap, _ = synthetic_map(6.0, 400.0, seed=3)
    surface = surface_depth(cal, pmap, prior="plane")
    depth, sigma, _ = D.surface.window_depth_and_sigma(cal, pmap)
    single = fit_surface(depth, sigma, pmap.centers_y, pmap.centers_x, "plane")
    assert not surface.mirrored.any()
    np.testing.assert_array_equal(surface.depth_um, single.depth_um)
    np.testing.assert_array_equal(surface.window_depth_um, depth)
    assert single.window_depth_um is None and single.figures()["n_mirrored"] is None


def _overlapping_window_errors(seed: int, noise_um: float = 2.0) -> np.ndarray:
    """Errors of 128 px windows at a 64 px step: each the mean of the 2 x 2 independent 64 px blocks it
    covers, so neighbours share half their evidence (as overlapping windows do)."""
    blocks = np.random.default_rng(seed).normal(0.0, 2.0 * noise_um, (16, 16))
    return 0.25 * (blocks[:-1, :-1] + blocks[1:, :-1] + blocks[:-1, 1:] + blocks[1:, 1:])


@pytest.mark.parametrize("prior", ["poly2", "smooth"])
def test_curvature_is_not_read_into_the_correlated_errors_of_overlapping_windows(prior):
    # Counted as independent, the errors that neighbours share look like shape; counted as the windows
    # that do not overlap, a flat sample stays flat, and a real bowl still bends.
    sigma = np.full(TILTED.shape, 2.0)
    curved = {None: 0, 128: 0}
    for seed in range(12):
        depth = TILTED + _overlapping_window_errors(seed)
        for window_px in curved:
            fit = fit_surface(depth, sigma, CENTRES, CENTRES, prior, window_px=window_px)
            curved[window_px] += fit.model != "plane"
    assert curved[128] <= 1 < curved[None]
    bowl = fit_surface(BOWL + _overlapping_window_errors(0), sigma, CENTRES, CENTRES, prior, window_px=128)
    # (The smooth prior may keep its quadric: a bowl is one.)
    assert bowl.model in (prior, "poly2") and np.abs(bowl.depth_um - BOWL).mean() < 1.5  # a plane misses by 9 µm


def test_independent_fraction_of_overlapping_windows():
    assert D.surface.independent_fraction(CENTRES, CENTRES, 128) == pytest.approx(0.25)
    assert D.surface.independent_fraction(CENTRES, CENTRES, 64) == 1.0  # touching, not overlapping
    assert D.surface.independent_fraction(CENTRES, CENTRES, None) == 1.0


def test_smooth_prior_falls_back_on_its_quadric_when_the_fine_grid_makes_it_too_wiggly():
    # Windows every 32 px (1/16 of them independent) with the shared errors of overlapping windows: REML's
    # wiggly surface may not earn its parameters against the plane (it lost on 2 of these 8 bowls, 8.6 µm
    # off), but the bowl is curved: its quadric is kept instead of the plane.
    centres = np.arange(29) * 32 + 63.5
    yy, xx = np.meshgrid(centres, centres, indexing="ij")
    bowl = 30.0 * (((xx - 511.5) / 512) ** 2 + ((yy - 511.5) / 512) ** 2) - 10.0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        blocks = rng.normal(0.0, 8.0, (32, 32))  # each window: the mean of the 4 x 4 blocks it covers
        errors = sum(blocks[i:i + 29, j:j + 29] for i in range(4) for j in range(4)) / 16
        sigma = np.where(rng.random(bowl.shape) < 0.25, 2.0, np.inf)  # a quarter of the windows informative
        fit = fit_surface(bowl + errors, sigma, centres, centres, "smooth", window_px=128)
        assert fit.model != "plane" and np.abs(fit.depth_um - bowl).mean() < 1.0

"""Comparing a tilted-grid and a z-stack calibration of one microscope over the heights both cover."""

from __future__ import annotations

import numpy as np
import pytest
from test_zstack_fit import Z_UM, flat_map, stack

from livepsf import depth as D
from livepsf.depth.compare import compare_slopes, height_bin_medians
from livepsf.errors import InputError
from synthetic_depth import synthetic_map

SATURATE_WAVES = 0.6  # the network's defocus reading s * tanh(d / s): S-shaped in height, flat far out
GRID = [(3, 500), (6, 530), (10, 470)]


def s_shaped_grid(flip_far: bool = False) -> D.Calibration:
    """Tilted-grid calibration of the S-shaped microscope of ``stack(saturate_waves=...)``."""
    maps = []
    for i, (tilt, focus_px) in enumerate(GRID):
        pmap, height = synthetic_map(tilt, focus_px, seed=i, shape=(512, 1024))
        pmap.params["focus"] = (SATURATE_WAVES * np.tanh(pmap.params["focus"] / SATURATE_WAVES)).astype(np.float32)
        if flip_far and tilt == 10:  # a far column whose windows all read the wrong side of focus
            column = np.abs(height[0] + 40.0).argmin()
            for name in ("astig_0", "astig_45"):
                pmap.params[name][:, column] *= -1
        maps.append(pmap)
    return D.calibrate_psf_maps(maps, [t for t, _ in GRID], 0.65, in_focus_px=[f for _, f in GRID], metric="signed")


def s_shaped_stack(range_um: float) -> D.Calibration:
    """Z-stack calibration of the same microscope, flat sample in focus at Z = 0, 4 µm steps over ±range_um."""
    z_um = np.arange(-range_um, range_um + 0.5, 4.0)
    maps = [flat_map(-z, seed=i, saturate_waves=SATURATE_WAVES) for i, z in enumerate(z_um)]
    return D.calibrate_zstack(maps, z_um, 0.65, metric="signed")


def test_same_microscope_same_slope_however_the_heights_are_sampled():
    grid, zstack = s_shaped_grid(), s_shaped_stack(60.0)
    # The tilted grid samples heights near focus densely (every tilt crosses focus) and reaches -47 / +56 µm;
    # the stack samples ±60 µm evenly, saturated ends included: their own lines differ by far more than 5 %.
    heights = np.array([p.height_um for p in grid.points])
    assert np.mean(np.abs(heights) < 20) > 0.5
    assert zstack.slope_um_per_unit / grid.slope_um_per_unit - 1 > 0.2
    result = compare_slopes(grid, zstack)
    assert result.metric == "signed" and result.n_bins >= 15
    assert result.low_um == pytest.approx(heights.min(), abs=0.1)
    assert result.high_um == pytest.approx(heights.max(), abs=0.1)
    assert abs(result.difference_pct) < 2.0
    assert result.other_slope_um_per_unit == pytest.approx(result.reference_slope_um_per_unit, rel=0.02)


def test_the_comparison_ignores_points_that_read_the_mirrored_metric():
    zstack = s_shaped_stack(60.0)
    clean, flipped = compare_slopes(s_shaped_grid(), zstack), compare_slopes(s_shaped_grid(flip_far=True), zstack)
    assert flipped.reference_slope_um_per_unit == pytest.approx(clean.reference_slope_um_per_unit, rel=0.03)


def test_bin_medians_weigh_each_height_once():
    # 50 points at one height and one at each of four others: one median per bin, on the line.
    h = np.concatenate([np.full(50, 1.0), [6.0, 11.0, 16.0, 21.0]])
    m = 0.02 * h + 0.1
    bins = height_bin_medians(h, m, 0.0, 25.0, bin_um=5.0)
    assert sorted(bins) == [0, 1, 2, 3, 4]
    heights, metrics = np.array(list(bins.values())).T
    np.testing.assert_allclose(metrics, 0.02 * heights + 0.1)
    assert bins[0] == pytest.approx((1.0, 0.12))


def test_comparison_input_errors():
    zstack = D.calibrate_zstack(stack(0.0), Z_UM, 0.65, metric="signed")
    other_metric = D.calibrate_zstack(stack(0.0), Z_UM, 0.65, metric="projected")
    with pytest.raises(InputError, match="different depth metrics"):
        compare_slopes(zstack, other_metric)
    with pytest.raises(InputError, match="no calibration points"):
        compare_slopes(zstack, zstack.model_copy(update={"points": []}))
    far = zstack.model_copy(update={"points": [p.model_copy(update={"height_um": p.height_um + 500.0})
                                               for p in zstack.points]})
    with pytest.raises(InputError, match="no common height range"):
        compare_slopes(zstack, far)
    near = zstack.model_copy(update={"points": [p for p in zstack.points if p.height_um > 27.0]})
    with pytest.raises(InputError, match="height bins"):
        compare_slopes(zstack, near)
    with pytest.raises(InputError, match="bin width"):
        height_bin_medians(np.arange(5.0), np.arange(5.0), 0.0, 4.0, bin_um=0.0)

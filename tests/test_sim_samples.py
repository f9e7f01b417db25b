"""Sample content and surface geometry of the simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from livepsf.sim.samples import GRID_SQUARE_UM, SAMPLES, SurfaceGeometry, sample_brightness


def test_tilt_along_x_raises_the_surface_towards_higher_columns() -> None:
    h = SurfaceGeometry(6.0, "x").height_um((64, 101), 0.65)
    assert h[:, 50] == pytest.approx(0.0, abs=1e-12)  # zero at the frame centre
    np.testing.assert_allclose(np.diff(h, axis=1), math.tan(math.radians(6.0)) * 0.65)
    np.testing.assert_allclose(np.diff(h, axis=0), 0.0)


def test_tilt_along_y_raises_the_surface_towards_higher_rows_and_negative_tilt_lowers_it() -> None:
    h = SurfaceGeometry(-3.0, "y").height_um((100, 40), 1.0)
    np.testing.assert_allclose(np.diff(h, axis=0), math.tan(math.radians(-3.0)))
    np.testing.assert_allclose(np.diff(h, axis=1), 0.0)


def test_curved_surface_is_a_bowl_of_the_given_curvature() -> None:
    h = SurfaceGeometry(0.0, "x", curvature_per_mm=2.0).height_um((101, 101), 1.0)
    assert h.argmin() == 50 * 101 + 50
    # Paraboloid of radius R = 500 µm: sag r² / 2R at r = 50 µm.
    assert h[50, 100] == pytest.approx(50.0**2 / 1000.0)
    np.testing.assert_allclose(h, h[::-1, ::-1])


def test_geometry_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="tilt_axis"):
        SurfaceGeometry(1.0, "z")
    with pytest.raises(ValueError, match="tilt_deg"):
        SurfaceGeometry(80.0, "x")


@pytest.mark.parametrize("name", SAMPLES)
def test_samples_are_brightness_in_unit_range_and_reproducible(name: str) -> None:
    a = sample_brightness(name, (96, 128), 0.65, seed=4)
    b = sample_brightness(name, (96, 128), 0.65, seed=4)
    c = sample_brightness(name, (96, 128), 0.65, seed=5)
    assert a.shape == (96, 128) and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 0.01
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_printed_grid_has_200_um_squares_and_lines_crossing_at_the_centre() -> None:
    pixel_um = 0.65
    grid = sample_brightness("printed-grid", (801, 801), pixel_um, seed=0)
    assert grid[400, 400] < 0.5  # toner at the centre crossing
    profile = grid[200:260, :].mean(axis=0)  # a band of rows away from the horizontal lines
    dark = profile < 0.5
    starts = np.flatnonzero(dark[1:] & ~dark[:-1]) + 1
    ends = np.flatnonzero(~dark[1:] & dark[:-1]) + 1
    centres = (starts + ends[-len(starts):]) / 2.0 if len(ends) >= len(starts) else None
    assert centres is not None and len(centres) >= 2
    assert np.diff(centres).mean() * pixel_um == pytest.approx(GRID_SQUARE_UM, rel=0.02)
    assert np.mean(grid > 0.8) > 0.6  # mostly clear foil


def test_fluorescent_samples_have_a_faint_background() -> None:
    cells = sample_brightness("cells", (128, 128), 0.65, seed=0)
    assert 0.0 < np.percentile(cells, 1) < 0.1


def test_unknown_sample_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="printed-grid"):
        sample_brightness("beads", (32, 32))

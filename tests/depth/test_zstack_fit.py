"""The z-stack calibration fit: flat samples at known stage positions, on synthetic PSF maps."""

from __future__ import annotations

import numpy as np
import pytest

from livepsf import depth as D
from livepsf.errors import InputError
from livepsf.mapping import PSFMap
from livepsf.optics import Optics
from synthetic_depth import LENS, UM_PER_WAVE, synthetic_map

Z_UM = np.arange(-40.0, 40.5, 4.0)


def flat_map(height_um: float, *, seed: int, noise: float = 0.02, mirrored: float = 0.0,
             saturate_waves: float | None = None, shape=(384, 384)) -> PSFMap:
    """A Z-3 map of a flat sample ``height_um`` from focus; ``mirrored``: fraction of windows whose sign is wrong.

    ``saturate_waves`` makes the network's defocus reading S-shaped (``s * tanh(d / s)``, flat far out).
    """
    template, _ = synthetic_map(0.0, 0.0, shape=shape)
    rng = np.random.default_rng(seed)
    d = float(Optics().defocus_waves(height_um))
    if saturate_waves is not None:
        d = saturate_waves * np.tanh(d / saturate_waves)
    d = d + rng.normal(0, noise, template.grid_shape)
    sign = np.where(d >= 0, 1.0, -1.0) * np.where(rng.random(d.shape) < mirrored, -1.0, 1.0)
    params = {"focus": np.abs(d).astype(np.float32),
              "astig_0": (sign * LENS[0] + rng.normal(0, noise, d.shape)).astype(np.float32),
              "astig_45": (sign * LENS[1] + rng.normal(0, noise, d.shape)).astype(np.float32)}
    return PSFMap(params=params, invalid=np.zeros(d.shape, np.float32), centers_y=template.centers_y,
                  centers_x=template.centers_x, window_px=128, stride_px=64, frame_shape=shape, psf_model="Z-3",
                  model_name=template.model_name, model_sha256=template.model_sha256)


def stack(focus_z_um: float = 3.0, **kwargs) -> list[PSFMap]:
    return [flat_map(focus_z_um - z, seed=i, **kwargs) for i, z in enumerate(Z_UM)]


def test_zstack_recovers_the_slope_and_the_in_focus_position():
    cal = D.calibrate_zstack(stack(3.0), Z_UM, 0.65, curve="monotone")
    assert cal.source == "z-stack" and cal.tilt_axis is None and cal.per_tilt == []
    assert cal.metric == "signed" and cal.curve.kind == "monotone"
    assert cal.slope_um_per_unit == pytest.approx(UM_PER_WAVE, rel=0.01)
    assert len(cal.per_z) == len(Z_UM)
    # Height = focus_z - z, with focus_z estimated where the metric is 0.
    heights = np.array([r.height_um for r in cal.per_z])
    np.testing.assert_allclose(heights + Z_UM, 3.0, atol=0.3)
    assert cal.mean_abs_error_um < 0.3 and cal.lofo_mean_abs_error_um < 0.5 and "much worse" not in cal.notes
    assert all(r.lofo_mean_abs_error_um is not None and r.n_windows == 25 for r in cal.per_z)
    # One point per stage position (the median of its windows), kept with its Z for the plot.
    assert len(cal.points) == len(Z_UM) and [p.z_um for p in cal.points] == list(Z_UM)
    fresh = flat_map(-12.5, seed=99)
    assert np.median(cal.depth_um(fresh)) == pytest.approx(-12.5, abs=0.5)


def test_zstack_with_a_known_in_focus_position_and_every_window_a_point():
    cal = D.calibrate_zstack(stack(0.0, mirrored=0.1), Z_UM, 0.65, focus_z_um=0.0, aggregate="window",
                             curve="linear")
    assert cal.curve.kind == "linear" and len(cal.points) > 20 * len(Z_UM)
    np.testing.assert_allclose([r.height_um for r in cal.per_z], -Z_UM)
    assert cal.slope_um_per_unit == pytest.approx(UM_PER_WAVE, rel=0.02)  # mirrored windows ignored


def test_s_shaped_response_is_fitted_by_the_curve_not_by_the_line():
    maps = stack(0.0, saturate_waves=0.6)
    curve = D.calibrate_zstack(maps, Z_UM, 0.65, metric="signed", curve="monotone")
    line = D.calibrate_zstack(maps, Z_UM, 0.65, metric="signed", curve="linear")
    # (the points beyond the end knots follow the curve's mean slope, not the saturated end's: ~0.5 µm)
    assert curve.mean_abs_error_um < 0.6 and line.mean_abs_error_um > 2.0
    assert curve.lofo_mean_abs_error_um < line.lofo_mean_abs_error_um / 2
    by_metric = {s.metric: s for s in curve.metrics}
    assert by_metric["signed"].mean_abs_error_um == pytest.approx(line.mean_abs_error_um, rel=1e-6)
    fresh = flat_map(25.0, seed=77, saturate_waves=0.6)
    assert abs(np.median(curve.depth_um(fresh)) - 25.0) < 1.0 < abs(np.median(line.depth_um(fresh)) - 25.0)


def test_zstack_and_tilted_grid_calibrations_of_one_microscope_agree():
    grid = [synthetic_map(t, f, seed=i, shape=(512, 1024))[0] for i, (t, f) in enumerate([(3, 500), (6, 530),
                                                                                          (10, 470)])]
    tilted = D.calibrate_psf_maps(grid, [3, 6, 10], 0.65)
    zstack = D.calibrate_zstack(stack(-2.0), Z_UM, 0.65)
    assert zstack.slope_um_per_unit == pytest.approx(tilted.slope_um_per_unit, rel=0.05)
    m = np.linspace(-0.8, 0.8, 17)
    np.testing.assert_allclose(zstack.metric_to_depth_um(m), tilted.metric_to_depth_um(m), atol=1.5)


def test_in_focus_stage_position_is_read_back_from_the_calibration():
    assert D.zstack_focus_z_um(D.calibrate_zstack(stack(-2.0), Z_UM, 0.65)) == pytest.approx(-2.0, abs=0.3)
    known = D.calibrate_zstack(stack(5.0), Z_UM, 0.65, focus_z_um=5.0, curve="linear")
    assert D.zstack_focus_z_um(known) == pytest.approx(5.0, abs=1e-9)
    grid = [synthetic_map(t, 500, seed=i, shape=(256, 1024))[0] for i, t in enumerate([3, 6])]
    assert np.isnan(D.zstack_focus_z_um(D.calibrate_psf_maps(grid, [3, 6], 0.65)))  # no stage positions


def test_zstack_input_errors():
    maps = stack()
    with pytest.raises(InputError, match="stage positions for"):
        D.calibrate_zstack(maps, Z_UM[:-1], 0.65)
    with pytest.raises(InputError, match="NaN"):
        D.calibrate_zstack(maps, np.where(Z_UM == 0, np.nan, Z_UM), 0.65)
    with pytest.raises(InputError, match="3 or more stage positions"):
        D.calibrate_zstack(maps[:2], Z_UM[:2], 0.65)
    with pytest.raises(InputError, match="pixel size"):
        D.calibrate_zstack(maps, Z_UM, 0.0)
    with pytest.raises(InputError, match="no frames"):
        D.calibrate_zstack([], [], 0.65)
    blank = [flat_map(3.0 - z, seed=i) for i, z in enumerate(Z_UM)]
    for p in blank:
        p.invalid[:] = 1.0
    with pytest.raises(InputError, match="invalid"):
        D.calibrate_zstack(blank, Z_UM, 0.65)
    # The sample never leaves focus: the metric does not change with the stage position.
    still = [flat_map(0.0, seed=i, noise=0.0) for i in range(len(Z_UM))]
    with pytest.raises(InputError, match="does not change"):
        D.calibrate_zstack(still, Z_UM, 0.65)


def test_zstack_plot_is_written(tmp_path):
    cal = D.calibrate_zstack(stack(), Z_UM, 0.65)
    path = D.plot_calibration(cal, tmp_path / "zstack.png")
    assert path.is_file() and path.stat().st_size > 10_000


def test_in_focus_position_from_the_symmetry_of_the_focus_reading():
    # Near focus the network guesses the side of focus; here it always says "above" within 6 µm of focus,
    # which moves the metric's zero crossing by several µm. The focus reading (unsigned) stays symmetric
    # about the true focus, and the stack's in-focus position is found from it.
    focus_z = 3.0
    maps = stack(focus_z)
    for p, z in zip(maps, Z_UM):
        if abs(focus_z - z) < 6.0:
            for name, lens in zip(("astig_0", "astig_45"), LENS):
                p.params[name] = np.full_like(p.params[name], lens)
    cal = D.calibrate_zstack(maps, Z_UM, 0.65, curve="monotone")
    assert D.zstack_focus_z_um(cal) == pytest.approx(focus_z, abs=0.5)
    # Zero crossing of the median metric, for comparison: several µm off.
    medians = [np.median(D.depth_metric(p, "signed", cal.lens_direction)) for p in maps]
    assert abs(np.interp(0.0, medians[::-1], Z_UM[::-1]) - focus_z) > 2.0


def test_symmetric_focus_needs_both_sides_of_focus():
    rng = np.random.default_rng(0)
    reading = np.abs(Z_UM - 1.3) * 0.02 + 0.15 + rng.normal(0, 0.005, Z_UM.shape)  # floor near focus
    assert D.zstack.symmetric_focus_z_um(Z_UM, reading) == pytest.approx(1.3, abs=0.5)
    one_sided = Z_UM[Z_UM > 10]
    assert D.zstack.symmetric_focus_z_um(one_sided, np.abs(one_sided - 1.3) * 0.02) is None
    assert D.zstack.symmetric_focus_z_um(Z_UM[:4], reading[:4]) is None  # too few frames
    with_gaps = np.where(np.arange(len(Z_UM)) % 3 == 0, np.nan, reading)  # frames without a reading
    assert D.zstack.symmetric_focus_z_um(Z_UM, with_gaps) == pytest.approx(1.3, abs=0.6)

"""The calibration curve: monotone fit of an S-shaped metric, offsets, extrapolation, leave-one-frame-out,
the curve in the Calibration file (format 2, format 1 still loads) and the input errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from livepsf import depth as D
from livepsf.errors import InputError
from synthetic_depth import UM_PER_WAVE, synthetic_map, textured_frame


def s_shaped_metric(height_um: np.ndarray) -> np.ndarray:
    """Monotone, S-shaped like the measured metric: flat near focus and far out, steep near the line foci.

    About 8 times steeper at the line foci than far out; the flattest stretch is a third of the mean
    slope, above the curve's :data:`~livepsf.depth.curve.MIN_SLOPE_FRACTION`.
    """
    h = np.asarray(height_um, dtype=np.float64)
    return 0.5 * (np.tanh((h - 15.0) / 6.0) + np.tanh((h + 15.0) / 6.0)) + 0.012 * h


def s_points(seed: int = 0, *, n_frames: int = 3, outliers: float = 0.1, noise: float = 0.01,
             offsets_um=None, known: bool = True) -> D.CalibrationPoints:
    """Points of the S-shaped relation: ``n_frames`` frames over ±45 µm, some windows mirrored."""
    rng = np.random.default_rng(seed)
    offsets_um = offsets_um or (0.0,) * n_frames
    heights, metrics, frames = [], [], []
    for k in range(n_frames):
        h = rng.uniform(-45.0, 45.0, 120)
        m = s_shaped_metric(h) + rng.normal(0, noise, h.shape)
        mirrored = rng.random(h.shape) < outliers  # astigmatism sign wrong: the metric reads mirrored
        m[mirrored] *= -1
        heights.append(h - offsets_um[k])  # known only up to the frame's offset
        metrics.append(m)
        frames.append(np.full(h.shape, k))
    frame = np.concatenate(frames)
    return D.CalibrationPoints(np.concatenate(heights), np.concatenate(metrics), frame,
                               -1 if known else frame, 1.0)


def test_curve_is_monotone_and_continues_as_a_line_beyond_its_knots():
    rng = np.random.default_rng(3)
    m = np.sort(rng.uniform(-1, 1, 9))
    h = np.cumsum(rng.uniform(0.1, 10.0, 9))
    for heights in (h, -h):  # increasing and decreasing curves
        curve = D.CalibrationCurve(kind="monotone", metric_knots=list(m), height_knots_um=list(heights))
        x = np.linspace(-3, 3, 20001)
        y = curve.height_um(x).astype(np.float64)
        slope = curve.height_per_metric_um(x)
        sign = np.sign(heights[-1] - heights[0])
        assert (sign * np.diff(y) > 0).all()
        assert (sign * slope > 0).all()
        np.testing.assert_allclose(curve.height_um(m), heights, rtol=1e-6, atol=1e-4)  # through the knots
        # Beyond the knots: straight, with the mean slope of the calibrated range (never flat: depth is
        # not clipped; not the end segment's, which amplifies the noise of a saturating metric).
        mean_slope = (heights[-1] - heights[0]) / (m[-1] - m[0])
        far = np.array([m[-1] + 1.0, m[-1] + 2.0])
        np.testing.assert_allclose(curve.height_um(far), heights[-1] + mean_slope * (far - m[-1]), rtol=1e-5)
        np.testing.assert_allclose(curve.height_per_metric_um(far), mean_slope, rtol=1e-5)
        np.testing.assert_allclose(curve.height_um(m[0] - 1.5), heights[0] - 1.5 * mean_slope, rtol=1e-5)
    assert np.isnan(curve.height_um(np.array([np.nan])))[0]


def test_monotone_fit_recovers_an_s_shaped_relation_despite_mirrored_windows():
    points = s_points(outliers=0.1)  # 10 % of the windows read the mirrored metric
    fit = D.fit_curve(points, "monotone")
    line = D.fit_curve(points, "linear")
    truth = np.linspace(-40, 40, 81)
    err = fit.curve.height_um(s_shaped_metric(truth)) - truth
    assert np.median(np.abs(err)) < 0.8 and np.abs(err).max() < 3.0
    line_err = line.curve.height_um(s_shaped_metric(truth)) - truth
    assert np.median(np.abs(line_err)) > 4 * np.median(np.abs(err))  # a line is wrong but at two heights
    assert fit.curve.kind == "monotone" and len(fit.curve.metric_knots) >= 8
    # Most points (not the mirrored ones) are predicted within a couple of µm.
    assert np.median(np.abs(fit.residuals_um)) < 1.0


def test_unknown_offsets_per_frame_are_recovered():
    true = (0.0, 6.0, -4.0)
    points = s_points(seed=1, offsets_um=true, known=False, outliers=0.05)
    fit = D.fit_curve(points, "monotone")
    recovered = np.array([fit.offsets_um[k] for k in range(3)])
    # Between frames the offsets are well determined...
    np.testing.assert_allclose(recovered - recovered[0], np.subtract(true, true[0]), atol=0.3)
    # ...and the common one too: no point has an exact height, so metric 0 means height 0 (true of this
    # relation), but the metric is flat near focus, where 0.01 of noise is over 1 µm of height.
    np.testing.assert_allclose(recovered, true, atol=1.5)
    assert fit.iterations >= 1
    truth = np.linspace(-40, 40, 41)
    common = float(np.mean(recovered - np.array(true)))  # heights carry the common offset's error
    assert np.median(np.abs(fit.curve.height_um(s_shaped_metric(truth)) - truth - common)) < 0.8


def test_leave_one_frame_out_predicts_each_frame_from_the_others():
    points = s_points(seed=2, n_frames=4)
    held = D.held_out_residuals(points, "monotone")
    fit = D.fit_curve(points, "monotone")
    assert held.shape == (len(points),) and np.isfinite(held).all()
    # Frames of the same relation: held-out errors are about the in-sample ones.
    assert np.median(np.abs(held)) < 1.5 * np.median(np.abs(fit.residuals_um)) + 0.2
    with pytest.raises(InputError, match="two frames"):
        D.held_out_residuals(points.subset(points.frame == 0))


def test_fit_input_errors():
    with pytest.raises(InputError, match="NaN"):
        D.CalibrationPoints(np.array([0.0, 1.0, np.nan]), np.zeros(3), 0, -1, 1.0)
    with pytest.raises(InputError, match="NaN"):
        D.CalibrationPoints(np.zeros(3), np.array([0.0, np.nan, 1.0]), 0, -1, 1.0)
    with pytest.raises(InputError, match="usable points"):
        D.fit_monotone_curve(np.arange(5.0), np.arange(5.0))
    with pytest.raises(InputError, match="usable points"):
        D.fit_curve(D.CalibrationPoints(np.arange(3.0), np.arange(3.0), 0, -1, 1.0))
    flat = D.CalibrationPoints(np.linspace(-30, 30, 60), np.full(60, 0.2), 0, -1, 1.0)
    with pytest.raises(InputError, match="does not change with height"):
        D.fit_curve(flat, "monotone")
    # A metric that is not monotone in height (an unsigned focus: the same on both sides of focus).
    h = np.linspace(-30, 30, 90)
    with pytest.raises(InputError, match="does not change monotonically"):
        D.fit_monotone_curve(h, np.abs(h) / 40.0)
    with pytest.raises(InputError, match="does not change"):
        D.fit_curve(D.CalibrationPoints(h, np.abs(h) / 40.0, np.arange(90) % 3, -1, 1.0), "monotone")
    with pytest.raises(InputError, match="unknown calibration curve"):
        D.fit_curve(s_points(), "spline")
    with pytest.raises(InputError, match="unknown calibration curve"):
        D.calibrate_psf_maps([synthetic_map(6, 500)[0]], [6], 0.65, curve="cubic")


# -- the curve in the calibration --------------------------------------------------------------------


def _calibration(curve: str = "monotone", seeds=(0, 1, 2), **kwargs) -> D.Calibration:
    maps = [synthetic_map(t, f, seed=s)[0] for s, (t, f) in zip(seeds, [(3, 500), (6, 530), (10, 470)])]
    return D.calibrate_psf_maps(maps, [3, 6, 10][:len(maps)], 0.65, curve=curve, **kwargs)


def test_calibration_carries_the_curve_and_the_line():
    cal = _calibration()
    assert cal.format_version == 2 and cal.source == "tilted-grid" and cal.curve.kind == "monotone"
    assert cal.slope_um_per_unit == pytest.approx(UM_PER_WAVE, rel=0.01)  # the line, for comparison
    m = np.linspace(-0.8, 0.8, 9).reshape(3, 3)
    depth = cal.metric_to_depth_um(m)
    assert depth.shape == (3, 3) and depth.dtype == np.float32
    np.testing.assert_allclose(depth, UM_PER_WAVE * m, atol=1.0)  # the synthetic relation is a line
    slope = cal.depth_per_metric_um(m)
    assert slope.dtype == np.float32 and (slope > 0).all()
    np.testing.assert_allclose(np.median(slope), UM_PER_WAVE, rtol=0.15)
    assert cal.lofo_mean_abs_error_um is not None and cal.lofo_mean_abs_error_um < 1.0
    assert all(r.lofo_mean_abs_error_um is not None for r in cal.per_tilt)
    assert all(s.curve_mean_abs_error_um is not None for s in cal.metrics)
    assert "leave-one-frame-out" in cal.summary()
    pmap, height = synthetic_map(8, 300, seed=11, noise=0.01)
    assert np.mean(np.abs(cal.depth_um(pmap) - height)) < 0.8
    # The linear curve is the line exactly.
    lin = _calibration("linear")
    assert lin.curve.kind == "linear"
    np.testing.assert_allclose(lin.metric_to_depth_um(m), lin.slope_um_per_unit * m + lin.offset_um, rtol=1e-5,
                               atol=1e-4)
    np.testing.assert_allclose(lin.depth_per_metric_um(m), lin.slope_um_per_unit, rtol=1e-5)


def test_format_1_files_load_and_use_their_line(tmp_path):
    # The simulator's calibration as shipped before format 2 (livepsf 0.x, default model b27ce7ea5081).
    path = Path(__file__).parent / "data" / "calibration-format1.json"
    raw = json.loads(path.read_text())
    assert raw["format_version"] == 1 and "curve" not in raw
    cal = D.Calibration.load(path)
    assert cal.format_version == 1 and cal.curve is None and cal.source == "tilted-grid"
    m = np.array([[-0.5, 0.0], [0.25, np.nan]])
    expected = (cal.slope_um_per_unit * m + cal.offset_um).astype(np.float32)
    np.testing.assert_array_equal(cal.metric_to_depth_um(m), expected)
    np.testing.assert_array_equal(cal.depth_per_metric_um(m)[~np.isnan(m)], np.float32(cal.slope_um_per_unit))
    pmap, _ = synthetic_map(6, 500, name=cal.model_name, sha=cal.model_sha256)
    np.testing.assert_array_equal(
        cal.depth_um(pmap), (cal.slope_um_per_unit * cal.metric_map(pmap) + cal.offset_um).astype(np.float32))
    # Saved again, it stays a format-1 file without a curve.
    again = D.Calibration.load(cal.save(tmp_path / "v1.json"))
    assert again == cal and "curve" in json.loads((tmp_path / "v1.json").read_text())


def test_round_trip_and_corrupt_curves(tmp_path):
    cal = _calibration()
    path = cal.save(tmp_path / "cal.json")
    raw = json.loads(path.read_text())
    assert raw["format_version"] == 2 and raw["curve"]["kind"] == "monotone"
    assert len(raw["curve"]["metric_knots"]) == len(raw["curve"]["height_knots_um"]) >= 2
    again = D.Calibration.load(path)
    assert again == cal
    m = np.linspace(-1.5, 1.5, 31)
    np.testing.assert_array_equal(again.metric_to_depth_um(m), cal.metric_to_depth_um(m))
    for knots, message in (([0.1, 0.0] + raw["curve"]["metric_knots"][2:], "strictly increase"),
                           (raw["curve"]["metric_knots"][:1], "two knots")):
        bad = json.loads(path.read_text())
        bad["curve"]["metric_knots"] = knots
        if message == "two knots":
            bad["curve"]["height_knots_um"] = bad["curve"]["height_knots_um"][:1]
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match=message):
            D.Calibration.load(tmp_path / "bad.json")


def test_held_out_error_much_worse_than_in_sample_warns():
    # Three frames over disjoint height ranges, each with its own bias of the metric (a network that
    # reads the frames differently): the curve follows each frame, and frames it did not see are off.
    maps = [synthetic_map(10, f, seed=i, bias_waves=b, noise=0.005)[0]
            for i, (f, b) in enumerate([(-600, 0.25), (500, -0.25), (1600, 0.25)])]
    cal = D.calibrate_psf_maps(maps, [10, 10, 10], 0.65, in_focus_px=[-600, 500, 1600], metric="signed")
    assert cal.lofo_mean_abs_error_um > D.LOFO_WARN_RATIO * cal.mean_abs_error_um
    assert "leave-one-frame-out" in cal.notes and "much worse" in cal.notes
    # The same frames without the biases: consistent, no warning.
    good = [synthetic_map(10, f, seed=i, noise=0.005)[0] for i, f in enumerate([-600, 500, 1600])]
    ok = D.calibrate_psf_maps(good, [10, 10, 10], 0.65, in_focus_px=[-600, 500, 1600], metric="signed")
    assert "much worse" not in ok.notes and ok.lofo_mean_abs_error_um < 1.0


def test_a_single_frame_calibrates_without_leave_one_out():
    cal = _calibration(seeds=(0,))
    assert cal.lofo_mean_abs_error_um is None and cal.per_tilt[0].lofo_mean_abs_error_um is None
    assert "one frame only" in cal.notes
    assert cal.slope_um_per_unit == pytest.approx(UM_PER_WAVE, rel=0.02)


def test_no_stretch_of_the_curve_is_flatter_than_a_quarter_of_the_line():
    # A plateau in the metric (a network that hedges over a range of heights): the curve keeps a slope,
    # so inverting it does not multiply the metric's noise without bound.
    h = np.linspace(-40, 40, 161)
    metric = np.where(np.abs(h) < 15, 0.0, h / 40.0)
    points = D.CalibrationPoints(h, metric, np.arange(161) % 4, -1, 1.0)
    fit = D.fit_curve(points, "monotone")
    knots_m, knots_h = np.array(fit.curve.metric_knots), np.array(fit.curve.height_knots_um)
    secants = np.diff(knots_h) / np.diff(knots_m)  # µm per metric unit between knots, and beyond them
    assert (secants > 0).all() and secants.max() <= 1.0001 / (D.curve.MIN_SLOPE_FRACTION * fit.line.a)
    assert np.median(np.abs(fit.residuals_um[np.abs(h) > 20])) < 1.0  # outside the plateau: followed


class _QueuedMapper:
    """Stands in for PSFMapper in the CLI: hands out prepared synthetic maps in order."""

    maps: ClassVar[list] = []

    def __init__(self, model, stride_px: int = 64, device=None, dihedral_average: bool = False) -> None:
        pass

    def __call__(self, frame: np.ndarray):
        return _QueuedMapper.maps.pop(0)


def test_cli_calibrate_curve_option_and_printed_errors(tmp_path, monkeypatch, capsys):
    import tifffile

    import livepsf.mapping
    import livepsf.net
    from livepsf.cli import main

    class Card:
        name, weights_sha256 = "synthetic", "a" * 64

    monkeypatch.setattr(livepsf.net, "load_model", lambda name, device=None: type("Net", (), {"card": Card()})())
    monkeypatch.setattr(livepsf.mapping, "PSFMapper", _QueuedMapper)
    paths = []
    for tilt in (3, 6, 10):
        paths.append(tmp_path / f"grid_{tilt}.tif")
        tifffile.imwrite(paths[-1], textured_frame().astype(np.uint16))
    for curve in ("linear", "monotone"):
        _QueuedMapper.maps = [synthetic_map(t, f, seed=i)[0] for i, (t, f) in enumerate([(3, 500), (6, 530), (10, 470)])]
        out = tmp_path / f"cal_{curve}.json"
        with pytest.raises(SystemExit) as exc:
            main(["calibrate", *map(str, paths), "--tilt-deg", "3,6,10", "--pixel-size-um", "0.65", "--curve", curve,
                  "--out", str(out)])
        text = capsys.readouterr().out
        assert exc.value.code in (0, None), text
        assert D.Calibration.load(out).curve.kind == curve
        assert f"{curve} curve" in text and "leave-one-frame-out" in text and "held out" in text
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", *map(str, paths), "--tilt-deg", "3,6,10", "--pixel-size-um", "0.65", "--curve", "spline",
              "--out", str(tmp_path / "bad.json")])
    assert exc.value.code == 2 and "--curve 'spline'" in capsys.readouterr().err


def test_a_line_that_predicts_held_out_frames_better_is_named():
    # A linear relation under heavy metric noise: the curve's knots follow the noise, the line does not.
    maps = [synthetic_map(t, f, seed=i, noise=0.1)[0] for i, (t, f) in enumerate([(3, 500), (6, 530), (10, 470)])]
    cal = D.calibrate_psf_maps(maps, [3, 6, 10], 0.65, in_focus_px=[500, 530, 470], metric="signed",
                               curve="monotone")
    signed = next(s for s in cal.metrics if s.metric == "signed")
    assert signed.line_lofo_mean_abs_error_um < signed.lofo_mean_abs_error_um
    assert "the line predicts held-out frames better" in cal.notes and cal.curve.kind == "monotone"
    # "auto" takes the line then, without a warning.
    auto = D.calibrate_psf_maps(maps, [3, 6, 10], 0.65, in_focus_px=[500, 530, 470], metric="signed",
                                curve="auto")
    assert auto.curve.kind == "linear" and "line predicts" not in auto.notes
    assert "line predicts" not in _calibration().notes  # low noise: no note
    assert all(s.line_lofo_mean_abs_error_um is None for s in _calibration("linear").metrics)


def test_mirrored_points_are_those_clearly_nearer_the_other_sign():
    trend = np.linspace(-40.0, 40.0, 81)
    rng = np.random.default_rng(0)
    value = trend + rng.normal(0.0, 1.0, trend.shape)
    wrong = (np.abs(trend) > 10) & (rng.random(trend.shape) < 0.2)
    value[wrong] = -value[wrong]
    assert np.array_equal(D.curve.mirrored_points(value, trend), wrong)
    # A depth's mirrored reading need not be -depth (the curve is not odd): it is passed in.
    mirrored_depth = -value - 4.0
    flagged = D.curve.mirrored_points(value, trend, mirrored_depth)
    assert np.array_equal(flagged, np.abs(value - trend) - np.abs(mirrored_depth - trend) > 3.0 * 1.4826 * np.median(
        np.abs(value - trend - np.median(value - trend))))
    assert flagged[wrong & (np.abs(trend) > 15)].all() and not flagged[~wrong].any()

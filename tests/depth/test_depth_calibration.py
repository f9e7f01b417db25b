"""Depth from astigmatism: metrics, the tilted-grid fit, the calibration file and the CLI commands.

The fit is checked on synthetic PSF maps built from the physics the network is trained to report: a
known signed defocus ``d = defocus_waves(height)`` plus a fixed lens astigmatism, in canonical form
(focus = |d|, astigmatism = sign(d) * A_L), with noise. No network is needed.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile

from livepsf import depth as D
from livepsf.errors import InputError
from livepsf.mapping import PSFMap
from livepsf.optics import Optics
from synthetic_depth import (
    LENS,
    UM_PER_WAVE,
    FakeNet,
    ramp_frame,
    run_cli,
    standard_calibration,
    synthetic_map,
    textured_frame,
    window_centers,
)

# -- metrics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("lens", [(0.1, 0.0), (0.0, 0.1), (0.08, -0.06)])
def test_metrics_follow_signed_defocus(lens):
    d = np.linspace(-1.5, 1.5, 31)
    sign = np.where(d >= 0, 1.0, -1.0)
    focus, a0, a45 = np.abs(d), sign * lens[0], sign * lens[1]
    np.testing.assert_allclose(D.signed_metric(focus, a0, a45, lens), d, atol=1e-6)
    strength = float(np.hypot(*lens))
    np.testing.assert_allclose(D.projected_metric(focus, a0, a45, lens, strength), d, atol=1e-6)
    # eq. 14 referred to the lens: axis pi/4 on one side, 3 pi/4 on the other -> -d / 2.
    np.testing.assert_allclose(D.eq14_metric(focus, a0, a45, lens), -d / 2, atol=1e-6)


def test_eq14_is_the_papers_formula_for_a_45_degree_lens():
    rng = np.random.default_rng(1)
    focus = rng.uniform(0, 2, 50)
    a0, a45 = rng.uniform(-0.5, 0.5, (2, 50))
    axis = np.remainder(0.5 * np.arctan2(a45, a0), np.pi)
    np.testing.assert_allclose(D.eq14_metric(focus, a0, a45, (0.0, 1.0)), focus * (2 * axis / np.pi - 1),
                               atol=1e-6)


def test_lens_direction_is_estimated_up_to_sign():
    pmap, _ = synthetic_map(6, 512, seed=3)
    u = D.estimate_lens_direction(pmap.values("astig_0"), pmap.values("astig_45"))
    ref = np.array(LENS) / np.hypot(*LENS)
    assert abs(abs(np.dot(u, ref)) - 1.0) < 1e-3


def test_robust_line_fit_ignores_outliers():
    rng = np.random.default_rng(2)
    x = np.linspace(-10, 10, 60)
    y = 2.5 * x - 1.0 + rng.normal(0, 0.1, x.shape)
    y[::10] += 40.0  # gross outliers
    design = np.stack([x, np.ones_like(x)], axis=1)
    coef, weights = D.robust_line_fit(design, y)
    assert coef[0] == pytest.approx(2.5, abs=0.02) and coef[1] == pytest.approx(-1.0, abs=0.1)
    assert weights[::10].max() < 0.1
    plain = np.linalg.lstsq(design, y, rcond=None)[0]
    assert abs(plain[1] + 1.0) > 1.0  # least squares alone would be pulled away


# -- the fit ---------------------------------------------------------------------------------------


def test_calibration_recovers_known_slope_and_in_focus_positions():
    cal = standard_calibration()
    assert cal.metric == "signed"
    assert cal.slope_um_per_unit == pytest.approx(UM_PER_WAVE, rel=0.01)
    assert abs(cal.offset_um) < 0.5
    assert cal.r2 > 0.999 and cal.notes == ""
    for r, focus in zip(cal.per_tilt, (500, 530, 470)):
        assert r.in_focus_estimated
        assert r.in_focus_px == pytest.approx(focus, abs=4)
        assert r.mean_abs_error_um < 0.6
    by_metric = {m.metric: m for m in cal.metrics}
    assert set(by_metric) == {"signed", "projected", "eq14"}
    assert cal.lens_strength_waves == pytest.approx(np.hypot(*LENS), rel=0.1)
    # eq. 14 is about -d/2: twice the slope, negative.
    assert by_metric["eq14"].slope_um_per_unit == pytest.approx(-2 * UM_PER_WAVE, rel=0.03)
    # Oriented so the signed metric grows with height.
    assert np.dot(cal.lens_direction, LENS) > 0


def test_calibration_depth_of_fresh_frames():
    cal = standard_calibration()
    pmap, height = synthetic_map(8, 300, seed=11, noise=0.01)
    depth = cal.depth_um(pmap)
    assert depth.shape == pmap.grid_shape and depth.dtype == np.float32
    assert np.mean(np.abs(depth - height)) < 0.8
    full = cal.depth_um_full(pmap)
    assert full.shape == (1024, 1024)
    # The full-frame map passes through the grid values at the window centres.
    iy, ix = int(round(pmap.centers_y[4])), int(round(pmap.centers_x[7]))
    assert full[iy, ix] == pytest.approx(depth[4, 7], abs=0.5)


def test_known_in_focus_position_fits_the_offset():
    # A network biased by +0.1 wave everywhere: with the in-focus column given, the offset absorbs it.
    maps = [synthetic_map(t, 512, seed=i, bias_waves=0.1)[0] for i, t in enumerate((3, 6, 10))]
    cal = D.calibrate_psf_maps(maps, [3, 6, 10], 0.65, in_focus_px=512.0, metric="signed")
    assert cal.offset_um == pytest.approx(-0.1 * UM_PER_WAVE, abs=0.6)
    assert all(not r.in_focus_estimated and r.in_focus_px == 512 for r in cal.per_tilt)


def test_tilt_along_y_and_negative_tilt():
    maps = [synthetic_map(t, f, seed=i, axis="y")[0] for i, (t, f) in enumerate([(5, 400), (-7, 600)])]
    cal = D.calibrate_psf_maps(maps, [5, -7], 0.65, tilt_axis="y")
    assert cal.tilt_axis == "y"
    assert cal.slope_um_per_unit == pytest.approx(UM_PER_WAVE, rel=0.015)
    assert [round(r.in_focus_px) for r in cal.per_tilt] == pytest.approx([400, 600], abs=5)


def test_invalid_windows_are_excluded():
    clean = standard_calibration()
    maps = []
    for i, (t, f) in enumerate([(3, 500), (6, 530), (10, 470)]):
        pmap, _ = synthetic_map(t, f, seed=i)
        bad = np.zeros(pmap.grid_shape, bool)
        bad[:, ::3] = True  # whole columns of textureless windows holding junk
        bad[5:9, :] = True
        pmap.params["focus"][bad] = 2.0
        pmap.params["astig_0"][bad] = -0.5
        pmap.invalid[bad] = 0.97
        maps.append(pmap)
    cal = D.calibrate_psf_maps(maps, [3, 6, 10], 0.65)
    assert cal.slope_um_per_unit == pytest.approx(clean.slope_um_per_unit, rel=0.02)
    assert len(cal.points) < len(clean.points)  # the all-invalid columns left the fit


def test_fit_on_profiles_directly():
    # The lower-level fit: metric profiles with a known slope, no PSF maps at all.
    pos = np.arange(100.0, 1000.0, 50.0)
    a_true = 0.05  # metric units per µm
    profiles = []
    for t, x0 in ((4.0, 450.0), (9.0, 600.0)):
        h = (pos - x0) * 0.65 * math.tan(math.radians(t))
        profiles.append(D.TiltProfile(t, pos, {"signed": a_true * h}, np.full(len(pos), 3)))
    fit = D.fit_metric_profiles(profiles, "signed", 0.65)
    assert fit.a == pytest.approx(a_true, rel=1e-6)
    assert fit.in_focus_px == pytest.approx([450.0, 600.0], abs=1e-3)
    assert fit.mean_abs_error_um < 1e-6


def test_bad_calibration_inputs_are_input_errors():
    pmap, _ = synthetic_map(6, 500)
    with pytest.raises(InputError, match="zero tilt"):
        D.calibrate_psf_maps([pmap], [0.0], 0.65)
    with pytest.raises(InputError, match="tilt axis"):
        D.calibrate_psf_maps([pmap], [6.0], 0.65, tilt_axis="z")
    with pytest.raises(InputError, match="2 values for 1 frames"):
        D.calibrate_psf_maps([pmap], [6.0, 3.0], 0.65)
    flat, _ = synthetic_map(6, 500)
    flat.invalid[:] = 1.0
    with pytest.raises(InputError, match="invalid"):
        D.calibrate_psf_maps([flat], [6.0], 0.65)
    g2 = PSFMap(params={"variance_x": np.ones((2, 2), np.float32), "variance_y": np.ones((2, 2), np.float32)},
                invalid=np.zeros((2, 2), np.float32), centers_y=np.array([63.5, 127.5]),
                centers_x=np.array([63.5, 127.5]), window_px=128, stride_px=64, frame_shape=(192, 192),
                psf_model="G-2")
    with pytest.raises(InputError, match="Z-3"):
        D.calibrate_psf_maps([g2], [6.0], 0.65)
    other, _ = synthetic_map(6, 500, sha="b" * 64)
    with pytest.raises(InputError, match="different models"):
        D.calibrate_psf_maps([pmap, other], [6.0], 0.65)


# -- the calibration file ---------------------------------------------------------------------------


def test_json_round_trip(tmp_path):
    cal = standard_calibration()
    path = cal.save(tmp_path / "cal.json")
    again = D.Calibration.load(path)
    assert again == cal
    raw = json.loads(path.read_text())
    for key in ("slope_um_per_unit", "offset_um", "metric", "lens_direction", "tilt_axis", "pixel_size_um",
                "model_name", "model_sha256", "r2", "per_tilt", "created", "livepsf_version"):
        assert key in raw
    assert raw["per_tilt"][0].keys() >= {"mean_abs_error_um", "sd_abs_error_um", "tilt_deg"}
    with pytest.raises(InputError, match="already exists"):
        cal.save(path)


def _averaged(pmap: PSFMap) -> PSFMap:
    import dataclasses

    return dataclasses.replace(pmap, dihedral_average=True)


def test_calibration_records_dihedral_averaging_and_keeps_it_in_json(tmp_path):
    maps = [_averaged(synthetic_map(t, f, seed=i)[0]) for i, (t, f) in enumerate([(3, 500), (6, 530), (10, 470)])]
    cal = D.calibrate_psf_maps(maps, [3, 6, 10], 0.65)
    assert cal.dihedral_average and "dihedral" in cal.summary()
    assert not standard_calibration().dihedral_average
    again = D.Calibration.load(cal.save(tmp_path / "cal.json"))
    assert again == cal and json.loads((tmp_path / "cal.json").read_text())["dihedral_average"] is True
    assert again.mapping_dihedral_average(False) == (True, "")  # depth maps the way the calibration was made


def test_old_calibration_files_without_the_field_load_as_plain(tmp_path):
    raw = json.loads(standard_calibration().model_dump_json())
    del raw["dihedral_average"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps(raw))
    cal = D.Calibration.load(path)
    assert cal.dihedral_average is False and "dihedral" not in cal.summary()
    assert cal.mapping_dihedral_average(False) == (False, "")
    average, warning = cal.mapping_dihedral_average(True)  # asked for: honoured, with a warning
    assert average and "plain PSF maps" in warning


def test_a_mixture_of_averaged_and_plain_maps_is_refused():
    maps = [synthetic_map(t, f, seed=i)[0] for i, (t, f) in enumerate([(3, 500), (6, 530), (10, 470)])]
    maps[1] = _averaged(maps[1])
    with pytest.raises(InputError, match="1 of 3 calibration PSF maps are dihedral averages"):
        D.calibrate_psf_maps(maps, [3, 6, 10], 0.65)
    flat = [synthetic_map(0.0, 0, seed=s, bias_waves=b)[0] for s, b in enumerate((-0.6, 0.0, 0.6))]
    with pytest.raises(InputError, match="dihedral averages"):
        D.calibrate_zstack([flat[0], _averaged(flat[1]), flat[2]], [-10.0, 0.0, 10.0], 0.65)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable JSON"),
    ('{"hello": 1}', "not a livepsf depth calibration"),
    ("[1, 2]", "not a livepsf depth calibration"),
])
def test_corrupt_files_are_refused(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        D.Calibration.load(path)


@pytest.mark.parametrize("field, value", [("slope_um_per_unit", 0.0), ("lens_direction", [3.0, 0.0]),
                                          ("tilt_axis", "z"), ("pixel_size_um", -1.0), ("metric", "magic")])
def test_invalid_fields_are_refused(tmp_path, field, value):
    raw = json.loads(standard_calibration().model_dump_json())
    raw[field] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(InputError, match=field):
        D.Calibration.load(path)
    with pytest.raises(InputError, match="no such"):
        D.Calibration.load(tmp_path / "missing.json")


def test_mismatched_model_is_refused(tmp_path):
    cal = standard_calibration()
    path = cal.save(tmp_path / "cal.json")
    cal.check_model(FakeNet("synthetic", "a" * 64))
    D.Calibration.load(path, model=FakeNet("synthetic", "a" * 64))
    with pytest.raises(InputError, match="calibrate again"):
        D.Calibration.load(path, model=FakeNet("synthetic", "c" * 64))
    other_map, _ = synthetic_map(6, 500, sha="c" * 64)
    with pytest.raises(InputError, match="not with"):
        cal.depth_um(other_map)


def test_plot_is_written(tmp_path):
    from qtpy import QtGui

    cal = standard_calibration()
    path = D.plot_calibration(cal, tmp_path / "cal.png")
    img = QtGui.QImage(str(path))
    assert not img.isNull() and img.width() == 900 and img.height() >= 700


def test_depth_outputs(tmp_path):
    cal = standard_calibration()
    maps = [synthetic_map(6, 500, seed=s)[0] for s in (20, 21)]
    src = tmp_path / "scan.tif"
    src.write_bytes(b"placeholder")  # only its name matters here
    tif, js, _ = D.write_depth_outputs(src, maps, cal, "cal.json")
    assert tif.name == "scan_depth.ome.tif" and js.name == "scan_depth.json"
    data = tifffile.imread(tif)
    assert data.shape == (2, 1024, 1024) and data.dtype == np.float32
    summary = json.loads(js.read_text())
    assert summary["unit"] == "µm" and len(summary["frames"]) == 2
    assert summary["frames"][0]["min_um"] < -20 and summary["frames"][0]["max_um"] > 20
    tif2, _, _ = D.write_depth_outputs(src, maps[:1], cal)
    assert tif2.name == "scan_depth-1.ome.tif"  # never overwrites
    assert summary["dihedral_average"] is False and summary["calibration_dihedral_average"] is False
    _, js3, _ = D.write_depth_outputs(src, [_averaged(m) for m in maps], cal)
    assert json.loads(js3.read_text())["dihedral_average"] is True
    with pytest.raises(InputError, match="dihedral averages and others plain"):
        D.write_depth_outputs(src, [maps[0], _averaged(maps[1])], cal)
    assert sorted(p.name for p in tmp_path.glob("scan_depth*.json")) == [
        "scan_depth-1.json", "scan_depth-2.json", "scan_depth.json"]  # the refused call wrote nothing


# -- command line ----------------------------------------------------------------------------------


def test_cli_calibrate_then_depth(tmp_path, ramp_network, capsys):
    paths = []
    for tilt, focus in ((3, 250), (6, 260), (10, 240)):
        p = tmp_path / f"grid_{tilt}.tif"
        tifffile.imwrite(p, ramp_frame(tilt, focus))
        paths.append(p)
    out = tmp_path / "cal" / "sim.json"
    code = run_cli(["calibrate", *paths, "--tilt-deg", "3,6", "--tilt-deg", "10", "--pixel-size-um", "0.65",
                    "--out", out])
    text = capsys.readouterr().out
    assert code == 0, text
    assert out.is_file() and out.with_suffix(".png").is_file()
    assert "R²" in text and "slope" in text
    cal = D.Calibration.load(out)
    assert cal.slope_um_per_unit == pytest.approx(UM_PER_WAVE, rel=0.01)
    assert cal.model_name == "ramp"

    scan = tmp_path / "scan.tif"
    tifffile.imwrite(scan, ramp_frame(7, 100))
    code = run_cli(["depth", scan, "--calibration", out, "--out", tmp_path / "maps"])
    assert code == 0, capsys.readouterr().err
    depth = tifffile.imread(tmp_path / "maps" / "scan_depth.ome.tif")
    truth = (np.arange(512) - 100) * 0.65 * math.tan(math.radians(7))
    centre_cols = window_centers(512).astype(int)
    assert np.abs(depth[256, centre_cols] - truth[centre_cols]).max() < 1.0
    assert (tmp_path / "maps" / "scan_depth.json").is_file()
    # Calibrating again to the same --out is refused, not overwritten.
    assert run_cli(["calibrate", *paths, "--tilt-deg", "3,6,10", "--pixel-size-um", "0.65", "--out", out]) == 2


def test_cli_depth_maps_the_way_its_calibration_was_made(tmp_path, ramp_network, capsys):
    paths = []
    for tilt, focus in ((3, 250), (6, 260), (10, 240)):
        paths.append(tmp_path / f"grid_{tilt}.tif")
        tifffile.imwrite(paths[-1], ramp_frame(tilt, focus))
    averaged_cal, plain_cal = tmp_path / "averaged.json", tmp_path / "plain.json"
    args = [*paths, "--tilt-deg", "3,6,10", "--pixel-size-um", "0.65"]
    assert run_cli(["calibrate", *args, "--dihedral-average", "--out", averaged_cal]) == 0
    assert "dihedral-averaged" in capsys.readouterr().out
    assert run_cli(["calibrate", *args, "--out", plain_cal]) == 0
    assert D.Calibration.load(averaged_cal).dihedral_average and not D.Calibration.load(plain_cal).dihedral_average
    scan = tmp_path / "scan.tif"
    tifffile.imwrite(scan, ramp_frame(7, 100))

    def depth_run(cal, *flags) -> tuple[dict, str]:
        folder = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
        assert run_cli(["depth", scan, "--calibration", cal, "--out", folder, *flags]) == 0
        return json.loads((folder / "scan_depth.json").read_text()), capsys.readouterr().err

    summary, err = depth_run(averaged_cal)  # no flag: the calibration's averaging
    assert summary["dihedral_average"] and summary["calibration_dihedral_average"] and "warning" not in err
    summary, err = depth_run(plain_cal)
    assert not summary["dihedral_average"] and "warning" not in err
    summary, err = depth_run(plain_cal, "--dihedral-average")  # asked for: done, with one warning line
    assert summary["dihedral_average"] and not summary["calibration_dihedral_average"]
    assert len(err.strip().splitlines()) == 1 and "warning" in err and "plain PSF maps" in err


def test_cli_bad_files_exit_2(tmp_path, ramp_network, capsys):
    assert run_cli(["calibrate", tmp_path / "nope.tif", "--tilt-deg", "6", "--pixel-size-um", "0.65"]) == 2
    assert "no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all")
    assert run_cli(["calibrate", junk, "--tilt-deg", "6", "--pixel-size-um", "0.65"]) == 2
    good = tmp_path / "g.tif"
    tifffile.imwrite(good, ramp_frame(6, 256))
    assert run_cli(["calibrate", good, "--tilt-deg", "six", "--pixel-size-um", "0.65"]) == 2
    assert run_cli(["calibrate", good, good, good, "--tilt-deg", "3,6", "--pixel-size-um", "0.65"]) == 2
    bad_cal = tmp_path / "cal.json"
    bad_cal.write_text("{broken")
    assert run_cli(["depth", good, "--calibration", bad_cal]) == 2
    err = capsys.readouterr().err
    assert "cal.json" in err and "Traceback" not in err
    # A calibration of another model is refused by `depth`.
    other = standard_calibration().save(tmp_path / "other.json")
    assert run_cli(["depth", good, "--calibration", other]) == 2
    assert "calibrate again" in capsys.readouterr().err
    assert not list(tmp_path.glob("*_depth*"))


def test_cli_depth_with_a_real_network(tmp_path, capsys):
    """`livepsf depth` end to end through load_model and PSFMapper with a tiny untrained network."""
    import torch

    from livepsf.net.architectures import build_network
    from livepsf.net.card import ModelCard
    from livepsf.net.export import export_model
    from livepsf.optics import get_psf_model

    torch.manual_seed(0)
    card = ModelCard.for_spec("tiny", get_psf_model("Z-3"), Optics(), input_normalisation="per-window",
                              architecture="shared-trunk-tiny")
    model_path = export_model(build_network("shared-trunk-tiny", 3), card, tmp_path / "tiny.pt")
    sha = json.loads(model_path.with_suffix(".json").read_text())["weights_sha256"]
    raw = json.loads(standard_calibration().model_dump_json())
    raw.update(model_name="tiny", model_sha256=sha)
    cal_path = tmp_path / "tiny_cal.json"
    cal_path.write_text(json.dumps(raw))
    image = tmp_path / "frame.tif"
    tifffile.imwrite(image, np.random.default_rng(0).integers(0, 4000, (320, 384), dtype=np.uint16))
    code = run_cli(["depth", image, "--calibration", cal_path, "--model", model_path])
    assert code == 0, capsys.readouterr().err
    depth = tifffile.imread(tmp_path / "frame_depth.ome.tif")
    assert depth.shape == (320, 384) and depth.dtype == np.float32 and np.isfinite(depth).all()
    summary = json.loads((tmp_path / "frame_depth.json").read_text())
    assert summary["model_sha256"] == sha and len(summary["frames"][0]["grid_depth_um"]) == 4


def test_projected_metric_passes_smoothly_through_focus():
    # Near focus a network cannot see the sign and hedges towards zero astigmatism.
    d = np.linspace(-0.3, 0.3, 61)
    hedge = np.clip(np.abs(d) / 0.2, 0, 1)  # astigmatism shrinks within 0.2 wave of focus
    sign = np.where(d >= 0, 1.0, -1.0)
    a0 = sign * hedge * 0.3
    projected = D.projected_metric(np.abs(d), a0, np.zeros_like(d), (1.0, 0.0), 0.3)
    signed = D.signed_metric(np.abs(d), a0, np.zeros_like(d), (1.0, 0.0))
    assert np.all(np.diff(projected) >= -1e-7)  # monotonic
    assert np.max(np.abs(np.diff(projected))) < 0.02
    np.testing.assert_allclose(projected[np.abs(d) >= 0.2], d[np.abs(d) >= 0.2], atol=1e-6)
    np.testing.assert_allclose(signed, d, atol=1e-6)


def test_poor_fit_carries_a_warning():
    # A network that reads no depth: astigmatism sign at random.
    maps = []
    for i, t in enumerate((3, 6, 10)):
        pmap, _ = synthetic_map(t, 512, seed=i)
        flip = np.random.default_rng(40 + i).random(pmap.grid_shape) < 0.45
        for name in ("astig_0", "astig_45"):
            pmap.params[name][flip] *= -1
        maps.append(pmap)
    cal = D.calibrate_psf_maps(maps, [3, 6, 10], 0.65, in_focus_px=512.0)
    assert cal.r2 < 0.9 and "poor fit" in cal.notes


# -- texture gate ----------------------------------------------------------------------------------


def test_window_coherence_tells_lines_from_2d_texture():
    pmap, _ = synthetic_map(6, 500)
    lines = D.window_coherence(textured_frame(stripes_below_x=1024), pmap)
    checker = D.window_coherence(textured_frame(), pmap)
    noise = D.window_coherence(np.random.default_rng(0).normal(100, 10, (1024, 1024)), pmap)
    assert lines.shape == pmap.grid_shape
    assert lines.min() > 0.9 and checker.max() < 0.1 and noise.max() < 0.3
    with pytest.raises(InputError, match="does not match"):
        D.window_coherence(np.zeros((100, 100)), pmap)


def test_texture_gate_leaves_out_line_only_windows():
    frame = textured_frame(stripes_below_x=512)
    maps, frames = [], []
    for i, t in enumerate((3, 6, 10)):
        pmap, _ = synthetic_map(t, 760, seed=i)
        left = pmap.centers_x[None, :].repeat(pmap.grid_shape[0], 0) + 64 <= 512
        # Where only horizontal lines are seen, the astigmatism follows the lines, not the defocus.
        pmap.params["astig_0"][left] = 0.3
        pmap.params["astig_45"][left] = 0.0
        maps.append(pmap)
        frames.append(frame)
    gated = D.calibrate_psf_maps(maps, [3, 6, 10], 0.65, frames=frames, curve="monotone")
    ungated = D.calibrate_psf_maps(maps, [3, 6, 10], 0.65)
    assert gated.max_texture_coherence == D.MAX_TEXTURE_COHERENCE and ungated.max_texture_coherence is None
    assert gated.slope_um_per_unit == pytest.approx(UM_PER_WAVE, rel=0.02)
    assert gated.mean_abs_error_um < 0.6 < ungated.mean_abs_error_um
    # Depth of a fresh frame: line-only windows take their depth from reliable neighbours.
    fresh, height = synthetic_map(7, 760, seed=9)
    left = fresh.centers_x[None, :].repeat(fresh.grid_shape[0], 0) + 64 <= 512
    fresh.params["astig_0"][left] = 0.3
    depth = gated.depth_um(fresh, frame)
    assert np.abs(depth - height)[~left].mean() < 1.0
    ok = D.reliable_windows(fresh, frame, gated.max_texture_coherence)
    assert not ok[left].any() and ok[:, -3:].all()


def test_median_removes_isolated_sign_flips():
    cal = standard_calibration()
    pmap, height = synthetic_map(8, 500, seed=5, noise=0.01)
    rng = np.random.default_rng(5)
    flip = rng.random(pmap.grid_shape) < 0.15
    for name in ("astig_0", "astig_45"):
        pmap.params[name][flip] *= -1
    raw = np.abs(cal.depth_um(pmap) - height)
    smooth = np.abs(cal.depth_um(pmap, median_windows=3) - height)
    assert raw.max() > 20 and np.median(smooth) < 2.0 and smooth.mean() < raw.mean() / 2
    with pytest.raises(InputError, match="median_windows"):
        cal.depth_um(pmap, median_windows=0)


def _points(metric: np.ndarray, height: np.ndarray) -> D.CalibrationPoints:
    n = len(height)
    return D.CalibrationPoints(height_um=height, metric=metric, frame=np.arange(n) % 3,
                               offset_group=np.full(n, -1), weight=np.ones(n))


def test_a_metric_that_cannot_be_fitted_does_not_stop_the_calibration():
    from livepsf.depth.calibration import choose_metric, fit_metrics, fit_notes

    rng = np.random.default_rng(4)
    height = np.repeat(np.linspace(-40, 40, 41), 6)
    signed = height / UM_PER_WAVE + rng.normal(0, 0.02, height.shape)
    # projected: a weak trend under scatter ten times larger, so no monotone curve, but a line;
    # eq14: the same value everywhere, so not even a line.
    projected = 0.002 * height + rng.normal(0, 1.0, height.shape)
    points = {"signed": _points(signed, height), "projected": _points(projected, height),
              "eq14": _points(np.full(height.shape, 0.3), height)}
    _, results = fit_metrics(lambda u: points, (1.0, 0.0), orient=False, curve="monotone")
    assert set(results) == {"signed", "projected"}
    assert results["signed"].fit.curve.kind == "monotone" and not results["signed"].note
    assert results["projected"].fit.curve.kind == "linear"
    assert "no monotone curve for the projected metric" in fit_notes(results["projected"])
    assert choose_metric(results, None) == "signed"
    with pytest.raises(InputError, match="eq14 metric could not be calibrated"):
        choose_metric(results, "eq14")
    constant = {name: _points(np.full(height.shape, 0.3), height) for name in D.METRICS}
    with pytest.raises(InputError, match="no depth metric could be calibrated"):
        fit_metrics(lambda u: constant, (1.0, 0.0), orient=False, curve="monotone")

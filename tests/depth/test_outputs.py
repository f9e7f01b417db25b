"""Depth output files with a fused surface: ``<name>_surface.ome.tif`` and the JSON figures; the CLI option."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import tifffile

from livepsf import depth as D
from livepsf.depth.surface import surface_depth
from synthetic_depth import ramp_frame, run_cli


def _ramp_calibration(tmp_path):
    paths = []
    for tilt, focus in ((3, 250), (6, 260), (10, 240)):
        p = tmp_path / f"grid_{tilt}.tif"
        tifffile.imwrite(p, ramp_frame(tilt, focus))
        paths.append(p)
    out = tmp_path / "cal.json"
    assert run_cli(["calibrate", *paths, "--tilt-deg", "3,6,10", "--pixel-size-um", "0.65", "--out", out]) == 0
    return out


def test_cli_depth_surface_writes_the_surface_and_its_sigma(tmp_path, ramp_network, capsys):
    cal_path = _ramp_calibration(tmp_path)
    scan = tmp_path / "scan.tif"
    tifffile.imwrite(scan, np.stack([ramp_frame(7, 100), ramp_frame(4, 300)]))
    capsys.readouterr()
    assert run_cli(["depth", scan, "--calibration", cal_path, "--surface", "plane", "--out", tmp_path / "o"]) == 0
    text = capsys.readouterr().out
    assert "plane surface" in text and "scan_surface.ome.tif" in text
    surface = tifffile.imread(tmp_path / "o" / "scan_surface.ome.tif")
    assert surface.shape == (2, 2, 512, 512) and surface.dtype == np.float32  # T, (surface, σ), Y, X
    x = np.arange(512)
    for i, (tilt, focus) in enumerate(((7, 100), (4, 300))):
        truth = (x - focus) * 0.65 * math.tan(math.radians(tilt))
        inner = slice(64, 448)  # between the outer window centres the surface is the fitted plane
        assert np.abs(surface[i, 0, 256, inner] - truth[inner]).max() < 1.0
        assert np.all(surface[i, 1] > 0) and np.all(np.isfinite(surface[i, 1]))
    summary = json.loads((tmp_path / "o" / "scan_depth.json").read_text())
    assert summary["surface_prior"] == "plane" and summary["surface_map"].endswith("scan_surface.ome.tif")
    figures = summary["frames"][0]["surface"]
    assert figures["tilt_x_deg"] == pytest.approx(7.0, abs=0.2) and abs(figures["tilt_y_deg"]) < 0.2
    side = (512 - 128) // D.CALIBRATION_STRIDE_PX + 1  # windows per side at the calibration's stride
    assert figures["n_windows"] == side**2 and len(figures["grid_surface_um"]) == side
    with tifffile.TiffFile(tmp_path / "o" / "scan_surface.ome.tif") as tif:
        assert "surface_um" in tif.ome_metadata and "sigma_um" in tif.ome_metadata
    # The depth map itself is what it is without --surface.
    assert run_cli(["depth", scan, "--calibration", cal_path, "--out", tmp_path / "plain"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "plain" / "scan_depth.ome.tif"),
                                  tifffile.imread(tmp_path / "o" / "scan_depth.ome.tif"))
    plain = json.loads((tmp_path / "plain" / "scan_depth.json").read_text())
    assert "surface_map" not in plain and "surface" not in plain["frames"][0]
    assert not list((tmp_path / "plain").glob("*_surface*"))


def test_cli_calibrate_maps_at_the_calibration_stride_and_depth_follows_it(tmp_path, ramp_network):
    # The calibration is made on windows every 32 px unless told otherwise, and depth maps as it did.
    cal_path = _ramp_calibration(tmp_path)
    assert D.Calibration.load(cal_path).stride_px == D.CALIBRATION_STRIDE_PX == 32
    scan = tmp_path / "scan.tif"
    tifffile.imwrite(scan, ramp_frame(7, 100))
    assert run_cli(["depth", scan, "--calibration", cal_path, "--out", tmp_path / "o"]) == 0
    assert json.loads((tmp_path / "o" / "scan_depth.json").read_text())["stride_px"] == 32
    coarse = tmp_path / "coarse.json"
    assert run_cli(["calibrate", tmp_path / "grid_3.tif", "--tilt-deg", "3", "--pixel-size-um", "0.65",
                    "--stride", "64", "--out", coarse]) == 0
    assert D.Calibration.load(coarse).stride_px == 64


def test_cli_depth_bad_surface_prior_exits_2_and_writes_nothing(tmp_path, ramp_network, capsys):
    cal_path = _ramp_calibration(tmp_path)
    scan = tmp_path / "scan.tif"
    tifffile.imwrite(scan, ramp_frame(7, 100))
    capsys.readouterr()
    assert run_cli(["depth", scan, "--calibration", cal_path, "--surface", "cubic"]) == 2
    err = capsys.readouterr().err
    assert "unknown surface prior 'cubic'" in err and "Traceback" not in err
    # Too small for a quadric: 2 x 2 windows at the calibration's 32 px step cannot hold 6 parameters;
    # named file, nothing written.
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, ramp_frame(7, 100, shape=(160, 160)))
    assert run_cli(["depth", small, "--calibration", cal_path, "--surface", "poly2"]) == 2
    err = capsys.readouterr().err
    assert "small.tif" in err and "needs at least 6 windows" in err
    assert not list(tmp_path.glob("*_depth*")) and not list(tmp_path.glob("*_surface*"))


def test_write_depth_outputs_surface_matches_surface_depth(tmp_path):
    from synthetic_depth import synthetic_map

    maps = [synthetic_map(t, f, seed=i)[0] for i, (t, f) in enumerate([(3, 500), (6, 530), (10, 470)])]
    cal = D.calibrate_psf_maps(maps, [3, 6, 10], 0.65, in_focus_px=[500, 530, 470])
    pmap, _ = synthetic_map(6.0, 400.0, seed=11)
    src = tmp_path / "scan.tif"
    src.write_bytes(b"placeholder")  # only its name matters here
    _, _, stats = D.write_depth_outputs(src, [pmap], cal, surface="smooth")
    data = tifffile.imread(tmp_path / "scan_surface.ome.tif")
    assert data.shape == (2, 1024, 1024)
    expected = surface_depth(cal, pmap, prior="smooth")
    np.testing.assert_allclose(data[0], expected.full(), atol=1e-5)
    np.testing.assert_allclose(data[1], expected.full(sigma=True), atol=1e-5)
    assert stats[0]["surface"]["prior"] == "smooth"
    # A second run never overwrites: new names for both.
    _, js2, _ = D.write_depth_outputs(src, [pmap], cal, surface="smooth")
    assert js2.name == "scan_depth-1.json" and (tmp_path / "scan_surface-1.ome.tif").is_file()


def test_saved_depth_map_reads_mirrored_windows_back_as_the_live_overlay(tmp_path):
    # Windows whose astigmatism sign was misread hold the other side of focus in the saved map too, with or
    # without a surface file, as the live depth overlay shows them; correct windows keep their reading.
    from synthetic_depth import tilted_map_with_mirrored_windows

    cal, pmap, height, flip, _ = tilted_map_with_mirrored_windows()
    raw = cal.depth_um(pmap)
    src = tmp_path / "scan.tif"
    src.write_bytes(b"placeholder")  # only its name matters here
    tif, js, stats = D.write_depth_outputs(src, [pmap], cal)
    saved = np.asarray(stats[0]["grid_depth_um"])
    assert np.abs(raw - height)[flip].min() > 25.0  # as read: the other side of focus
    assert np.abs(saved - height)[flip].max() < 3.0
    np.testing.assert_allclose(saved[~flip], raw[~flip], atol=0.01)  # rounded to 1 nm in the JSON
    live_depth, _, _ = D.surface.live_depth(cal, pmap)
    np.testing.assert_allclose(saved, live_depth, atol=0.01)
    summary = json.loads(js.read_text())
    assert summary["frames"][0]["n_read_back"] >= int(flip.sum())
    assert "surface_map" not in summary and "poly2" in summary["side_of_focus"]
    full = tifffile.imread(tif)
    np.testing.assert_allclose(full, cal.depth_um_full(pmap, window_depth_um=saved.astype(np.float32)), atol=0.01)
    # With --surface the same surface reads them back.
    _, _, with_plane = D.write_depth_outputs(src, [pmap], cal, surface="plane")
    assert np.abs(np.asarray(with_plane[0]["grid_depth_um"]) - height)[flip].max() < 3.0


def test_write_depth_outputs_measures_each_frames_texture_once(tmp_path, monkeypatch):
    # The gate's texture measure (~130 ms per 1024² frame) is the offline depth path's largest cost after
    # mapping: depth, σ, surface and summary share one measurement per frame, with the same results.
    from livepsf.depth import texture
    from synthetic_depth import standard_calibration, synthetic_map, textured_frame

    cal = standard_calibration(frames=[textured_frame()] * 3)
    maps = [synthetic_map(t, 500, seed=30 + t)[0] for t in (4, 8)]
    frames = [textured_frame(stripes_below_x=x) for x in (0, 512)]
    src = tmp_path / "scan.tif"
    src.write_bytes(b"placeholder")  # only its name matters here
    measured, original = [], texture.window_texture

    def counted(frame, pmap, *args, **kwargs):
        measured.append(pmap)
        return original(frame, pmap, *args, **kwargs)

    monkeypatch.setattr(texture, "window_texture", counted)
    _, _, stats = D.write_depth_outputs(src, maps, cal, frames=frames, surface="plane")
    assert len(measured) == len(frames)
    for s, pmap, frame in zip(stats, maps, frames):
        assert s["grid_reliable"] == D.reliable_windows(pmap, frame, cal.max_texture_coherence).tolist()
        assert s["surface"] == D.surface_depth(cal, pmap, frame, "plane").figures()
    assert not all(stats[1]["grid_reliable"][0])  # the second frame's line-only windows are gated out

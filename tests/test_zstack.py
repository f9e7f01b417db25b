"""Z-stacks for depth calibration: acquisition on the simulator, saved stacks and their Z positions."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import tifffile

from livepsf.acquisition.focus_signals import image_focus_signals
from livepsf.acquisition.zstack import (
    ZStack,
    ZStackInterrupted,
    acquire_zstack,
    load_zstack,
    record_zstack,
    save_zstack,
    zstack_positions,
)
from livepsf.errors import InputError
from livepsf.imageio import read_z_positions

START_Z_UM = 1.5  # the sample (flat, height 0) is in focus at Z = 0; start a little off it


@pytest.fixture(scope="module")
def core():
    from livepsf.sim import create_core

    return create_core(sample="cells", tilt_deg=0.0, shape=(256, 256), seed=3)


@pytest.fixture
def at_start(core):
    core.setZPosition(START_Z_UM)
    core.waitForDevice("Z")
    return core


# -- positions ---------------------------------------------------------------------------------------


def test_positions_are_symmetric_about_the_centre():
    np.testing.assert_allclose(zstack_positions(10.0, 40.0, step_um=2.0), 10.0 + np.arange(-40, 41, 2.0))
    np.testing.assert_allclose(zstack_positions(0.0, 5.0, step_um=2.0), [-4, -2, 0, 2, 4])
    np.testing.assert_allclose(zstack_positions(-1.0, 3.0, n_steps=4), [-4, -2, 0, 2])


@pytest.mark.parametrize("kwargs, message", [
    ({"range_um": 10.0}, "either a step"),
    ({"range_um": 10.0, "step_um": 1.0, "n_steps": 5}, "either a step"),
    ({"range_um": 0.0, "step_um": 1.0}, "range"),
    ({"range_um": float("nan"), "step_um": 1.0}, "range"),
    ({"range_um": 10.0, "step_um": -1.0}, "step"),
    ({"range_um": 1.0, "step_um": 5.0}, "larger than the range"),
    ({"range_um": 10.0, "n_steps": 1}, "at least 2"),
    ({"range_um": 1000.0, "step_um": 0.01}, "more than"),
])
def test_bad_ranges_are_input_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        zstack_positions(0.0, **kwargs)


# -- acquisition -------------------------------------------------------------------------------------


def test_stack_is_taken_at_the_positions_and_z_is_restored(at_start):
    seen = []
    stack = acquire_zstack(at_start, range_um=30.0, step_um=10.0, center_z_um=0.0, settle_ms=0.0,
                           progress=lambda done, total, z: seen.append((done, total, z)))
    np.testing.assert_allclose(stack.z_um, [-30, -20, -10, 0, 10, 20, 30], atol=1e-6)
    assert stack.frames.shape == (7, 256, 256) and stack.frames.dtype == at_start.getImage().dtype
    assert stack.pixel_size_um == pytest.approx(0.65) and not stack.cancelled
    assert [s[0] for s in seen] == list(range(1, 8)) and seen[-1][1] == 7
    assert at_start.getZPosition() == pytest.approx(START_Z_UM)
    # The frames show the stage positions: the sample is sharpest where it is in focus (Z = 0), and the
    # cylindrical lens stretches the blur one way below focus and the other way above.
    signals = [image_focus_signals(f, None) for f in stack.frames]
    assert int(np.argmax([s.sharpness for s in signals])) == 3
    anisotropy = np.array([s.anisotropy for s in signals])
    assert np.sign(anisotropy[0]) == -np.sign(anisotropy[-1]) and abs(anisotropy[3]) < abs(anisotropy[0])


def test_default_centre_is_the_present_position(at_start):
    stack = acquire_zstack(at_start, range_um=2.0, n_steps=3, settle_ms=0.0)
    np.testing.assert_allclose(stack.z_um, START_Z_UM + np.array([-2.0, 0.0, 2.0]), atol=1e-6)


def test_cancel_keeps_the_planes_taken_and_restores_z(at_start):
    stop = threading.Event()

    def progress(done, total, z):
        if done == 2:
            stop.set()

    stack = acquire_zstack(at_start, range_um=6.0, step_um=2.0, settle_ms=0.0, progress=progress,
                           cancel=stop.is_set)
    assert stack.cancelled and len(stack) == 2 and stack.frames.shape[0] == 2
    assert at_start.getZPosition() == pytest.approx(START_Z_UM)


def _camera_failing_at_snap(core, monkeypatch, n: int) -> dict:
    """Make the ``n``-th snap from now fail; returns the snap counter (reset it to fail again later)."""
    snap, calls = core.snapImage, {"n": 0}

    def failing_snap(*args):
        calls["n"] += 1
        if calls["n"] == n:
            raise RuntimeError("Camera snap timed out")
        return snap(*args)

    monkeypatch.setattr(core, "snapImage", failing_snap)
    return calls


def test_camera_failing_mid_stack_says_which_plane_and_keeps_the_rest(at_start, monkeypatch):
    _camera_failing_at_snap(at_start, monkeypatch, 4)
    with pytest.raises(ZStackInterrupted, match=r"camera failed at plane 4 of 7.*timed out.*3 planes") as exc:
        acquire_zstack(at_start, range_um=6.0, step_um=2.0, center_z_um=0.0, settle_ms=0.0)
    assert isinstance(exc.value, InputError)
    partial = exc.value.partial
    assert len(partial) == 3 and partial.frames.shape == (3, 256, 256)
    np.testing.assert_allclose(partial.z_um, [-6, -4, -2], atol=1e-6)
    assert at_start.getZPosition() == pytest.approx(START_Z_UM)


def test_recorded_stack_is_on_disk_before_use_and_never_replaces_a_file(at_start, tmp_path):
    calibration = tmp_path / "scope.json"
    stack, path = record_zstack(at_start, calibration, range_um=2.0, step_um=1.0, settle_ms=0.0)
    assert path == tmp_path / "scope_zstack.ome.tif" and not calibration.exists()
    saved = load_zstack(path)
    np.testing.assert_array_equal(saved.frames, stack.frames)
    np.testing.assert_allclose(saved.z_um, START_Z_UM + np.arange(-2.0, 2.1, 1.0), atol=1e-6)
    _, again = record_zstack(at_start, calibration, range_um=1.0, step_um=1.0, settle_ms=0.0)
    assert again == tmp_path / "scope_zstack-1.ome.tif" and len(load_zstack(path)) == 5
    assert at_start.getZPosition() == pytest.approx(START_Z_UM)


def test_recording_that_breaks_off_saves_the_planes_taken(at_start, tmp_path, monkeypatch):
    calls = _camera_failing_at_snap(at_start, monkeypatch, 3)
    with pytest.raises(ZStackInterrupted, match=r"camera failed at plane 3 of 5.*: saved to .*partial") as exc:
        record_zstack(at_start, tmp_path / "scope.json", range_um=2.0, step_um=1.0, settle_ms=0.0)
    kept = load_zstack(tmp_path / "scope_zstack-partial.ome.tif")
    np.testing.assert_array_equal(kept.frames, exc.value.partial.frames)
    np.testing.assert_allclose(kept.z_um, START_Z_UM + np.array([-2.0, -1.0]), atol=1e-6)
    assert not (tmp_path / "scope_zstack.ome.tif").exists()
    calls["n"] = 2  # the very first plane fails: nothing to keep, nothing written
    with pytest.raises(ZStackInterrupted, match="plane 1 of 5") as exc:
        record_zstack(at_start, tmp_path / "other.json", range_um=2.0, step_um=1.0, settle_ms=0.0)
    assert "saved to" not in str(exc.value) and not list(tmp_path.glob("other*"))


def test_microscope_without_focus_drive_or_with_live_view_is_refused(at_start, monkeypatch):
    monkeypatch.setattr(at_start, "getFocusDevice", lambda: "")
    with pytest.raises(InputError, match="no focus drive"):
        acquire_zstack(at_start, range_um=4.0, step_um=2.0)
    monkeypatch.undo()
    monkeypatch.setattr(at_start, "isSequenceRunning", lambda *a: True)
    with pytest.raises(InputError, match="live view"):
        acquire_zstack(at_start, range_um=4.0, step_um=2.0)


# -- saved stacks -------------------------------------------------------------------------------------


def _stack(n: int = 5, z0: float = -4.0, step: float = 2.0) -> ZStack:
    rng = np.random.default_rng(0)
    return ZStack(rng.integers(0, 4000, (n, 32, 48), dtype=np.uint16), z0 + step * np.arange(n), 0.65,
                  metadata={"exposure_ms": 10.0})


def test_save_and_load_round_trip_the_positions_and_never_overwrite(tmp_path):
    stack = _stack()
    path = save_zstack(stack, tmp_path / "stack.ome.tif")
    assert path.name == "stack.ome.tif"
    again = save_zstack(stack, tmp_path / "stack.ome.tif")
    assert again.name == "stack-1.ome.tif" and path.stat().st_size > 0
    loaded = load_zstack(path)
    np.testing.assert_array_equal(loaded.frames, stack.frames)
    np.testing.assert_allclose(loaded.z_um, stack.z_um)
    assert loaded.pixel_size_um == pytest.approx(0.65) and not loaded.z_relative
    # Other tools see the same file: tifffile reads it as ZYX.
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "ZYX"


def test_positions_given_explicitly_override_the_file(tmp_path):
    path = save_zstack(_stack(), tmp_path / "s.ome.tif")
    loaded = load_zstack(path, z_um=[0, 1, 2, 3, 4], pixel_size_um=0.5)
    np.testing.assert_allclose(loaded.z_um, [0, 1, 2, 3, 4])
    assert loaded.pixel_size_um == 0.5
    with pytest.raises(InputError, match="5 planes but 3 Z positions"):
        load_zstack(path, z_um=[0, 1, 2])


def test_recordings_and_unit_conversion_are_read(tmp_path):
    from livepsf.acquisition.recorder import Recorder

    with Recorder(tmp_path / "rec.ome.tif", pixel_size_um=0.65) as rec:
        for z in (-3.0, 0.0, 3.0):
            rec.append(np.full((16, 16), 100, np.uint16), z_um=z)
    np.testing.assert_allclose(read_z_positions(rec.path).z_um, [-3.0, 0.0, 3.0])
    nm = tmp_path / "nm.ome.tif"
    tifffile.imwrite(nm, np.zeros((2, 8, 8), np.uint16), ome=True, metadata={
        "axes": "ZYX", "Plane": {"PositionZ": [1500.0, 2500.0], "PositionZUnit": ["nm", "nm"]}})
    np.testing.assert_allclose(read_z_positions(nm).z_um, [1.5, 2.5])


def test_uniform_physical_size_z_gives_relative_positions(tmp_path):
    path = tmp_path / "dz.ome.tif"
    tifffile.imwrite(path, np.zeros((4, 8, 8), np.uint16), ome=True,
                     metadata={"axes": "ZYX", "PhysicalSizeZ": 2.5, "PhysicalSizeX": 0.65})
    found = read_z_positions(path)
    np.testing.assert_allclose(found.z_um, [0, 2.5, 5, 7.5])
    assert found.relative and "relative" in found.note and found.pixel_size_um == pytest.approx(0.65)


@pytest.mark.parametrize("write, message", [
    (lambda p: tifffile.imwrite(p, np.zeros((2, 8, 8), np.uint16), ome=False), "no OME-XML"),
    (lambda p: tifffile.imwrite(p, np.zeros((2, 8, 8), np.uint16), metadata=None,
                                description='<?xml version="1.0"?><OME><Image><Pixels></OME>'), "corrupt OME-XML"),
    (lambda p: tifffile.imwrite(p, np.zeros((2, 8, 8), np.uint16), ome=True,
                                metadata={"axes": "ZYX", "Plane": {"PositionZ": ["abc", "1"]}}), "not a number"),
    (lambda p: tifffile.imwrite(p, np.zeros((2, 8, 8), np.uint16), ome=True, metadata={"axes": "ZYX"}),
     "no Z position"),
    (lambda p: p.write_bytes(b"not a tiff"), "cannot read TIFF"),
])
def test_missing_or_corrupt_z_metadata_is_an_input_error_naming_the_file(tmp_path, write, message):
    path = tmp_path / "stack.ome.tif"
    write(path)
    with pytest.raises(InputError, match=message) as exc:
        read_z_positions(path)
    assert str(path) in str(exc.value)


def test_planes_without_position_are_refused(tmp_path):
    path = tmp_path / "holes.ome.tif"
    xml = ('<?xml version="1.0" encoding="UTF-8"?><OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06">'
           '<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint16" SizeX="8" SizeY="8" '
           'SizeC="1" SizeZ="3" SizeT="1"><Plane TheC="0" TheZ="0" TheT="0" PositionZ="0"/>'
           '<Plane TheC="0" TheZ="2" TheT="0" PositionZ="4"/></Pixels></Image></OME>')
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint16), description=xml, metadata=None,
                     photometric="minisblack")
    with pytest.raises(InputError, match="1 of 3 planes have no PositionZ"):
        read_z_positions(path)


# -- command line -------------------------------------------------------------------------------------


def _run_cli(args: list) -> int:
    from livepsf.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    return int(exc.value.code or 0)


def _flat_sample_stack(z_um: np.ndarray, focus_z_um: float, shape=(256, 256)) -> ZStack:
    """Frames of a flat sample whose signed defocus (waves) is encoded for synthetic_depth's RampMapper."""
    from livepsf.optics import Optics

    yy, xx = np.mgrid[:shape[0], :shape[1]]
    checker = np.where((yy // 8 + xx // 8) % 2 == 0, 300.0, -300.0)  # 2-D texture: passes the texture gate
    # The sample is at height 0; with the focal plane at z its height relative to focus is -(z - focus).
    waves = Optics().defocus_waves(focus_z_um - np.asarray(z_um))
    frames = np.stack([np.round((w + 2.0) * 1000.0 + checker).astype(np.uint16) for w in waves])
    return ZStack(frames, np.asarray(z_um, dtype=np.float64), 0.65)


def test_cli_calibrates_a_saved_stack(tmp_path, ramp_network, capsys):
    from livepsf.depth import Calibration
    from livepsf.optics import Optics

    z = np.arange(-20.0, 20.1, 4.0) + 7.0  # stage positions; the sample is in focus at Z = 7
    source = save_zstack(_flat_sample_stack(z, focus_z_um=7.0), tmp_path / "stack.ome.tif")
    before = source.read_bytes()
    code = _run_cli(["calibrate", "--zstack", source, "--metric", "signed"])
    text = capsys.readouterr().out
    assert code == 0, text
    json_path = tmp_path / "stack_calibration.json"
    assert json_path.is_file() and (tmp_path / "stack_calibration.png").is_file()
    assert "slope" in text and "R²" in text and "leave-one-frame-out" in text
    cal = Calibration.load(json_path)
    assert cal.source == "z-stack" and cal.model_name == "ramp"
    # A perfect network reports the signed defocus: one wave of it is 1/defocus_waves(1 µm) of height.
    assert cal.slope_um_per_unit == pytest.approx(1.0 / Optics().defocus_waves(1.0), rel=0.02)
    assert source.read_bytes() == before  # the input is never touched
    # Positions given on the command line (relative: a uniform step) fit the same slope.
    code = _run_cli(["calibrate", "--zstack", source, "--metric", "signed", "--z-step-um", "4",
                     "--out", tmp_path / "step.json"])
    assert code == 0, capsys.readouterr().err
    assert Calibration.load(tmp_path / "step.json").slope_um_per_unit == pytest.approx(cal.slope_um_per_unit,
                                                                                       rel=0.02)


@pytest.mark.parametrize("args, message", [
    (["--z-um", "1,2"], "only with --zstack"),
    (["--zstack"], "give one saved stack"),
    (["--zstack", "{stack}", "{stack}"], "one stack file"),
    (["--zstack", "--sim", "--z-um", "1,2"], "only for a saved stack"),
    (["--zstack", "--sim", "--mm-config", "x.cfg"], "choose one microscope"),
    (["--zstack", "{stack}", "--range-um", "10"], "only when acquiring"),
    (["--zstack", "{stack}", "--tilt-deg", "6"], "belong to the tilted grid"),
    (["--zstack", "{stack}", "--z-um", "1,2"], "5 planes but 2 Z positions"),
    (["--zstack", "{plain}"], "no OME-XML"),
    (["--zstack", "{missing}"], "no such file"),
    (["--zstack", "--sim", "--sample", "moon"], "--sample 'moon'"),
])
def test_cli_zstack_bad_input_exits_2_with_one_line(tmp_path, ramp_network, capsys, args, message):
    stack = save_zstack(_stack(), tmp_path / "s.ome.tif")
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((3, 64, 64), np.uint16), ome=False, photometric="minisblack")
    names = {"{stack}": stack, "{plain}": plain, "{missing}": tmp_path / "nope.ome.tif"}
    assert _run_cli(["calibrate", *[names.get(a, a) for a in args]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.json"))


def test_cli_acquires_on_the_simulator_and_keeps_the_stack(tmp_path, capsys):
    from livepsf.depth import Calibration

    out = tmp_path / "sim.json"
    code = _run_cli(["calibrate", "--zstack", "--sim", "--sample", "cells", "--size", "384", "--range-um", "24",
                     "--step-um", "4", "--settle-ms", "0", "--out", out])
    text = capsys.readouterr().out
    assert code == 0, text
    cal = Calibration.load(out)
    assert cal.source == "z-stack" and cal.slope_um_per_unit > 0
    stack = load_zstack(tmp_path / "sim_zstack.ome.tif")
    np.testing.assert_allclose(stack.z_um, np.arange(-24.0, 24.1, 4.0), atol=1e-6)
    assert stack.frames.shape == (13, 384, 384) and stack.pixel_size_um == pytest.approx(0.65)
    assert (tmp_path / "sim.png").is_file() and "recorded 13 planes" in text


def test_cli_keeps_the_planes_taken_when_the_camera_breaks_off(tmp_path, monkeypatch, capsys):
    import livepsf.sim

    real_create_core = livepsf.sim.create_core

    def camera_failing_at_plane_4(**kwargs):
        core = real_create_core(**kwargs)
        snap, calls = core.snapImage, {"n": 0}

        def snap_image(*args):
            calls["n"] += 1
            if calls["n"] == 4:
                raise RuntimeError("Camera: snap timed out")
            return snap(*args)

        core.snapImage = snap_image
        return core

    monkeypatch.setattr(livepsf.sim, "create_core", camera_failing_at_plane_4)
    out = tmp_path / "c.json"
    code = _run_cli(["calibrate", "--zstack", "--sim", "--size", "256", "--range-um", "8", "--step-um", "2",
                     "--settle-ms", "0", "--out", out])
    err = capsys.readouterr().err
    assert code == 2 and "camera failed at plane 4 of 9" in err and "saved to" in err, err
    kept = load_zstack(tmp_path / "c_zstack-partial.ome.tif")
    np.testing.assert_allclose(kept.z_um, [-8.0, -6.0, -4.0], atol=1e-6)
    assert not out.exists()

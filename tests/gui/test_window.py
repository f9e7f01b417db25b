"""The live window on the simulator (offscreen): start/stop, overlays, snapshot; the headless demo."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("pytestqt")
sim = pytest.importorskip("livepsf.sim")

pytestmark = pytest.mark.timeout(120)


class StubCalibration:
    """Stands in for a fitted :class:`livepsf.depth.Calibration` (the window only asks these)."""

    points: tuple = ()

    def check_model(self, model):
        pass

    def depth_um(self, pmap):
        return np.zeros(pmap.grid_shape, np.float32)

    def summary(self):
        return "signed metric: 50 µm/unit, R² 0.99"


@pytest.fixture(scope="module")
def sim_core():
    logging.getLogger("pymmcore-plus").setLevel(logging.CRITICAL)
    return sim.create_core(shape=(256, 256))


def test_window_runs_switches_overlays_and_snapshots(qtbot, sim_core, tiny_model, tmp_path):
    from qtpy import QtGui

    from livepsf.gui.window import LiveWindow

    window = LiveWindow(sim_core, tiny_model, demo=True)
    qtbot.addWidget(window)
    window.show()
    window.start()
    qtbot.waitUntil(lambda: window.draw_count >= 3, timeout=20000)
    assert window.loop.is_running and window.start_button.text() == "Stop"

    for kind in ("astigmatism", "depth", "invalid", "focus"):
        window.set_overlay(kind)
        assert window.overlay_kind() == kind
    window.set_overlay("depth")  # no calibration: the message says so and no colours are drawn
    assert "uncalibrated" in window.message_item.textItem.toPlainText()
    assert not window.overlay_item.isVisible()
    window.set_overlay("focus")
    assert window.overlay_item.isVisible() and window.glyph_item.isVisible()

    sim_core.setPosition(7.0)  # moved elsewhere: the Z box follows
    qtbot.waitUntil(lambda: window.z_spin.value() == 7.0, timeout=2000)
    sim_core.setPosition(0.0)

    window.set_stride(32)
    n = window.draw_count
    qtbot.waitUntil(lambda: window.draw_count > n + 1 and window._drawn.pmap.stride_px == 32, timeout=20000)
    stats = window.loop.stats()
    assert stats.maps > 0 and np.isfinite(stats.drawn_latency_ms_median)
    # The status bar refreshes on its own timer: wait for its next tick rather than racing it.
    qtbot.waitUntil(lambda: "maps" in window.stats_label.text(), timeout=5000)

    # Record the mapped frames with their PSF maps (the Recorder of the acquisition package).
    assert window.start_recording(tmp_path / "run.ome.tif")
    qtbot.waitUntil(lambda: window._recorder.written >= 3, timeout=20000)
    saved = window.stop_recording()
    import tifffile

    from livepsf.acquisition.recorder import recorded_psfmaps

    stack = tifffile.imread(saved)
    maps = recorded_psfmaps(saved)
    assert stack.ndim == 3 and stack.shape[1:] == (256, 256) and len(maps) == stack.shape[0] >= 3
    assert maps[0] is not None and maps[0].frame_shape == (256, 256)
    assert "saved" in window.record_label.text()

    path = tmp_path / "window.png"
    assert window.grab().save(str(path))
    image = QtGui.QImage(str(path))
    assert image.width() > 600 and image.height() > 400
    arr = np.asarray([[QtGui.QColor(image.pixel(x, y)).value() for x in range(0, image.width(), 17)]
                      for y in range(0, image.height(), 17)])
    assert arr.std() > 10  # not a blank grab

    window.stop()
    qtbot.waitUntil(lambda: not window.loop.is_running, timeout=2000)
    assert window.start_button.text() == "Start" and not sim_core.isSequenceRunning()
    window.shutdown()


def test_calibration_dialog_snaps_fits_and_sets_the_depth_overlay(qtbot, sim_core, tiny_model, monkeypatch):
    import livepsf.depth
    from livepsf.gui.window import LiveWindow

    strides, fit_grid = [], livepsf.depth.calibrate_tilted_grid

    def recording(*args, **kwargs):
        strides.append(kwargs["mapper"].stride_px)
        return fit_grid(*args, **kwargs)

    monkeypatch.setattr(livepsf.depth, "calibrate_tilted_grid", recording)

    window = LiveWindow(sim_core, tiny_model, demo=True)
    qtbot.addWidget(window)
    dialog = window.open_calibration_dialog()
    for tilt in (3.0, 6.0, 10.0):
        dialog.tilt_spin.setValue(tilt)  # demo: tilts the simulated sample too
        assert float(sim_core.getProperty("Sample", "TiltDeg")) == tilt
        sim_core.waitForSystem()
        dialog.snap()
    assert dialog.frame_list.count() == 3 and dialog.tilts == [3.0, 6.0, 10.0]
    dialog.fit()
    assert strides == [livepsf.depth.CALIBRATION_STRIDE_PX] != [window.stride_px]  # maps as `livepsf calibrate`
    # The untrained network sees no texture anywhere: the dialog says so and offers nothing to save.
    assert dialog.calibration is None and "fit failed" in dialog.result_label.text()
    assert not dialog.save_button.isEnabled() and not dialog.use_button.isEnabled()

    dialog.calibration = StubCalibration()  # what a successful fit hands over
    dialog.use()
    assert window.calibration is dialog.calibration and "R²" in window.calibration_label.text()
    assert window.loop.calibration is dialog.calibration
    assert window.open_calibration_dialog() is dialog  # one dialog per window, frames kept
    assert dialog.frame_list.count() == 3
    window.shutdown()


def test_headless_demo_prints_summary_and_writes_snapshot(tiny_model, tmp_path, monkeypatch):
    from livepsf.cli import app

    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    snap = tmp_path / "snap.png"
    result = CliRunner().invoke(app, ["demo", "--frames", "30", "--size", "256",
                                      "--model", str(tiny_model.path), "--snapshot", str(snap)])
    assert result.exit_code == 0, result.output
    assert "summary" in result.output and "30 maps" in result.output and "latency" in result.output
    assert snap.is_file() and snap.stat().st_size > 10_000


def test_demo_without_a_model_says_what_to_do(monkeypatch, capsys):
    from livepsf import net
    from livepsf.cli import main

    monkeypatch.setattr(net, "available_models", lambda: [])
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--headless", "--frames", "1"])
    assert exit_info.value.code == 2
    assert "--model" in capsys.readouterr().err


def test_live_refuses_bad_configurations_with_one_line(tmp_path, tiny_model, capsys):
    from livepsf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["live", "--mm-config", str(tmp_path / "missing.cfg"), "--model", str(tiny_model.path)])
    assert exit_info.value.code == 2
    assert "no such Micro-Manager configuration file" in capsys.readouterr().err


def test_focus_lock_toggle_holds_the_focus_in_the_live_window(qtbot, tiny_model):
    from livepsf.gui.window import LiveWindow

    core = sim.create_core(sample="cells", tilt_deg=0.0, shape=(256, 256), exposure_ms=5.0, seed=3)
    window = LiveWindow(core, tiny_model, demo=True)
    qtbot.addWidget(window)
    window.focus_lock_check.setChecked(True)  # not live yet: refused, with a message
    assert not window.focus_lock_check.isChecked() and window.focus_lock is None
    window.show()
    window.start()
    qtbot.waitUntil(lambda: window.draw_count >= 2, timeout=20000)
    window.focus_lock_check.setChecked(True)  # engages on the live frames: the stream keeps running
    qtbot.waitUntil(lambda: window.focus_lock.status == "locked", timeout=20000)
    assert core.getPosition() == pytest.approx(0.0) and window.loop.is_running
    core.setPosition(2.0)  # a knock while locked
    qtbot.waitUntil(lambda: len(window.focus_lock.corrections) >= 1, timeout=20000)
    qtbot.waitUntil(lambda: "last" in window.focus_lock_label.text(), timeout=5000)
    assert abs(core.getPosition()) < 0.6
    window.focus_lock_check.setChecked(False)
    assert window.focus_lock is None and window.focus_lock_label.text() == ""
    # A new depth calibration releases the lock: its setpoint was measured on the old depth scale.
    window.focus_lock_check.setChecked(True)
    assert window.focus_lock is not None

    class OtherCalibration:
        def check_model(self, model):
            pass

        def depth_um(self, pmap):
            return np.zeros(pmap.grid_shape, np.float32)

    window.set_calibration(OtherCalibration())
    assert window.focus_lock is None and not window.focus_lock_check.isChecked()
    window.shutdown()


def test_depth_overlay_shows_the_fused_surface_and_marks_uncertain_windows(qtbot, sim_core, tiny_model):
    import dataclasses
    import time

    from qtpy import QtCore

    from livepsf.acquisition.loop import LiveResult
    from livepsf.depth import fit_surface
    from livepsf.gui import overlays as ov
    from livepsf.gui.window import LiveWindow
    from livepsf.mapping import PSFMapper

    window = LiveWindow(sim_core, tiny_model, demo=True)
    qtbot.addWidget(window)
    window.set_calibration(StubCalibration())
    window.set_overlay("depth")
    frame = np.random.default_rng(0).integers(500, 3000, (256, 256), dtype=np.uint16)
    pmap = PSFMapper(tiny_model, stride_px=64)(frame)
    # No textureless window, and no network σ (the untrained network is unsure everywhere).
    pmap = dataclasses.replace(pmap, invalid=np.zeros(pmap.grid_shape, np.float32), sigma={})
    xx = np.broadcast_to(pmap.centers_x, pmap.grid_shape)
    own = (0.1 * (xx - 127.5)).astype(np.float32)
    own[0, 2] *= -1  # mirrored
    sigma = np.full(pmap.grid_shape, 0.5, np.float32)
    sigma[1, 2] = np.inf  # tells nothing about depth
    surface = fit_surface(own, sigma, pmap.centers_y, pmap.centers_x, "plane", frame_shape=(256, 256))
    now = time.perf_counter()
    result = LiveResult(frame=frame, pmap=pmap, depth_um=own, image_number=0, skipped=0, stage_z_um=0.0,
                        t_read=now, t_mapped=now, t_published=now, depth_sigma_um=sigma, depth_surface=surface)
    window.draw_result(result, trace=False)
    field, fade, unknown = window._overlay_field(result, "depth")
    np.testing.assert_array_equal(field.grid, surface.depth_um)  # the surface, not the windows' own values
    np.testing.assert_array_equal(unknown, ~np.isfinite(sigma))
    np.testing.assert_allclose(fade, ov.depth_uncertainty(surface.sigma_um, ov.depth_range_um(StubCalibration())))
    assert "surface" in window.colorbar.axis.label.toPlainText()
    assert window.overlay_item.isVisible() and window.invalid_item.isVisible()
    hatched = window.invalid_item.path()
    cy, cx = pmap.centers_y, pmap.centers_x
    assert hatched.contains(QtCore.QPointF(cx[2], cy[1]))  # the window without information is hatched
    assert not hatched.contains(QtCore.QPointF(cx[0], cy[0])) and not hatched.contains(QtCore.QPointF(cx[2], cy[0]))
    # Without a surface the windows' own depth is shown, faded where a window told nothing.
    window.draw_result(dataclasses.replace(result, depth_surface=None), trace=False)
    rgba = window.overlay_item.image  # downsampled display image
    sy, sx = rgba.shape[0] / 256, rgba.shape[1] / 256
    assert rgba[int(cy[1] * sy), int(cx[2] * sx), 3] < 0.5 * rgba[int(cy[1] * sy), int(cx[0] * sx), 3]
    window.shutdown()


def test_a_calibration_from_averaged_maps_is_flagged_in_the_live_view(qtbot, sim_core, tiny_model):
    """The live view maps each frame once: a calibration fitted on dihedral-averaged maps gets a warning."""
    from livepsf.gui.window import LiveWindow

    class AveragedCalibration(StubCalibration):
        dihedral_average = True

    window = LiveWindow(sim_core, tiny_model, calibration=AveragedCalibration())
    qtbot.addWidget(window)
    assert "dihedral-averaged" in window.statusBar().currentMessage()
    window.statusBar().clearMessage()
    window.set_calibration(StubCalibration())
    assert window.statusBar().currentMessage() == ""
    window.set_calibration(AveragedCalibration())
    assert "dihedral-averaged" in window.statusBar().currentMessage()

"""The calibration dialog's z-stack (offscreen, on the simulator): live view paused, progress, cancel, fit, Use."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

pytest.importorskip("pytestqt")
sim = pytest.importorskip("livepsf.sim")

pytestmark = pytest.mark.timeout(180)

START_Z_UM = 2.0


@pytest.fixture(scope="module")
def flat_core():
    logging.getLogger("pymmcore-plus").setLevel(logging.CRITICAL)
    # A flat textured sample (cells) in focus at Z = 0, the lens in; the demo window tilts it (6° in the
    # window's default), which the z-stack must undo for its frames.
    return sim.create_core(sample="cells", tilt_deg=6.0, shape=(384, 384), seed=2)


@pytest.fixture(scope="module")
def default_model():
    from livepsf.net import load_model

    return load_model("default")


def _window(qtbot, core, model):
    from livepsf.gui.window import LiveWindow

    core.setZPosition(START_Z_UM)
    core.waitForDevice("Z")
    window = LiveWindow(core, model, demo=True)
    qtbot.addWidget(window)
    window.show()
    window.start()
    qtbot.waitUntil(lambda: window.draw_count >= 1, timeout=30000)
    return window


def test_zstack_pauses_live_view_fits_and_offers_the_calibration(qtbot, flat_core, default_model):
    window = _window(qtbot, flat_core, default_model)
    dialog = window.open_calibration_dialog()
    dialog.tilt_spin.setValue(6.0)
    with qtbot.waitSignal(dialog.zstack_finished, timeout=120000) as outcome:
        assert dialog.start_zstack(range_um=24.0, step_um=3.0, settle_ms=0.0)
        assert not window.loop.is_running  # the stack has the stage and the camera to itself
        assert dialog.progress_bar.isVisible() and dialog.cancel_button.isVisible()
        assert not dialog.zstack_button.isEnabled() and not dialog.start_zstack()  # one at a time
    message = outcome.args[0]
    assert dialog.calibration is not None, message
    cal = dialog.calibration
    assert cal.source == "z-stack" and cal.model_sha256 == default_model.card.weights_sha256
    assert dialog.zstack is not None and len(dialog.zstack) == 17
    np.testing.assert_allclose(dialog.zstack.z_um, START_Z_UM + np.arange(-24.0, 24.1, 3.0), atol=1e-6)
    # The simulated sample was flat for the stack and tilted again afterwards; the stage is back.
    assert flat_core.getZPosition() == pytest.approx(START_Z_UM)
    assert float(flat_core.getProperty("Sample", "TiltDeg")) == 6.0
    # Depth grows with the height of the sample above the focal plane: moving the stage up by Δ puts
    # the flat sample Δ lower, and the calibration sees it so (the sign the tilted grid gives).
    assert cal.slope_um_per_unit > 0
    assert dialog.use_button.isEnabled() and not dialog.progress_bar.isVisible()
    qtbot.waitUntil(lambda: window.loop.is_running, timeout=5000)  # live view is back
    dialog.grab().save(os.path.join(os.environ.get("LIVEPSF_SNAPSHOT_DIR", "/tmp"), "livepsf-zstack-dialog.png"))
    dialog.use()
    assert window.calibration is cal and window.loop.calibration is cal
    window.shutdown()


def test_zstack_cancel_restores_z_and_live_view_and_fits_nothing(qtbot, flat_core, default_model):
    window = _window(qtbot, flat_core, default_model)
    dialog = window.open_calibration_dialog()
    with qtbot.waitSignal(dialog.zstack_finished, timeout=60000) as outcome:
        assert dialog.start_zstack(range_um=40.0, step_um=2.0, settle_ms=20.0)
        qtbot.waitUntil(lambda: dialog.progress_bar.value() >= 2, timeout=30000)
        dialog.cancel_zstack()
    assert "cancelled" in outcome.args[0] and dialog.calibration is None
    assert 2 <= len(dialog.zstack) < 41 and not dialog.use_button.isEnabled()
    assert flat_core.getZPosition() == pytest.approx(START_Z_UM)
    qtbot.waitUntil(lambda: window.loop.is_running, timeout=5000)
    window.shutdown()


def test_zstack_settings_dialog_counts_planes_and_refuses_a_step_beyond_the_range(qtbot):
    from livepsf.gui.calibration import ZStackSettingsDialog

    ask = ZStackSettingsDialog()
    qtbot.addWidget(ask)
    assert ask.values() == (40.0, 2.0, 10.0) and ask.planes_label.text() == "41"
    ask.range_spin.setValue(2.0)
    ask.step_spin.setValue(5.0)
    assert not ask.ok_button.isEnabled() and "larger than the range" in ask.planes_label.text()

"""The live window (pyqtgraph + qtpy): frame, PSF overlays, focus trace, controls, calibration dialog.

Import :class:`LiveWindow` from :mod:`livepsf.gui.window`; :mod:`livepsf.gui.overlays` holds the
widget-free computations behind what is drawn.
"""

from __future__ import annotations

__all__ = ["LiveWindow", "CalibrationDialog"]


def __getattr__(name: str):
    # Lazy, so that importing livepsf.gui.overlays (numpy only) does not start Qt.
    if name == "LiveWindow":
        from livepsf.gui.window import LiveWindow

        return LiveWindow
    if name == "CalibrationDialog":
        from livepsf.gui.calibration import CalibrationDialog

        return CalibrationDialog
    raise AttributeError(name)

"""The "Calibrate…" dialog: snap frames of a tilted printed grid, fit the depth calibration, save it.

Procedure (paper Section III-E): put a printed grid under the objective, tilt it by a known angle so
that focus falls mid-field, snap; repeat at other angles; fit. Each snapped frame is mapped with a fresh
:class:`~livepsf.mapping.PSFMapper` of the window's model and stride, then
:func:`livepsf.depth.calibrate_tilted_grid` fits the line from the depth metric to the known height.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from qtpy import QtCore, QtWidgets

from livepsf.mapping import PSFMapper

__all__ = ["CalibrationDialog"]

_COLOURS = ["#4fc3f7", "#ef5350", "#66bb6a", "#ab47bc", "#ffa726", "#26c6da"]


class CalibrationDialog(QtWidgets.QDialog):
    """Tilted-grid depth calibration from the live window.

    Signals
    -------
    calibrated(object)
        Emitted with the :class:`livepsf.depth.Calibration` when the user presses "Use".
    """

    calibrated = QtCore.Signal(object)

    def __init__(self, window: Any, demo: bool = False) -> None:
        super().__init__(window)
        self.window = window
        self.demo = demo
        self.frames: list[np.ndarray] = []
        self.tilts: list[float] = []
        self.calibration: Any = None
        self.setWindowTitle("Depth calibration — tilted printed grid")
        layout = QtWidgets.QHBoxLayout(self)

        left = QtWidgets.QVBoxLayout()
        help_text = QtWidgets.QLabel(
            "Tilt a printed grid by a known angle so that focus falls mid-field, then Snap. Repeat at "
            "two or three angles (e.g. 3°, 6°, 10°) and Fit." + (
                "\nSimulator: the tilt below also tilts the simulated sample." if demo else ""))
        help_text.setWordWrap(True)
        left.addWidget(help_text)
        form = QtWidgets.QFormLayout()
        self.tilt_spin = QtWidgets.QDoubleSpinBox()
        self.tilt_spin.setRange(-30.0, 30.0)
        self.tilt_spin.setSingleStep(1.0)
        self.tilt_spin.setSuffix(" °")
        self.tilt_spin.setValue(self._sim_property("TiltDeg", 6.0))
        if demo:
            self.tilt_spin.valueChanged.connect(
                lambda v: window.core.setProperty("Sample", "TiltDeg", float(v)))
        form.addRow("Tilt angle", self.tilt_spin)
        self.axis_combo = QtWidgets.QComboBox()
        self.axis_combo.addItem("x (height grows along columns)", userData="x")
        self.axis_combo.addItem("y (height grows along rows)", userData="y")
        self.axis_combo.setCurrentIndex(0 if self._sim_property("TiltAxis", "x") == "x" else 1)
        form.addRow("Tilt axis", self.axis_combo)
        self.pixel_spin = QtWidgets.QDoubleSpinBox()
        self.pixel_spin.setRange(0.01, 100.0)
        self.pixel_spin.setDecimals(3)
        self.pixel_spin.setSuffix(" µm")
        self.pixel_spin.setValue(self._pixel_size_um())
        form.addRow("Pixel size (sample)", self.pixel_spin)
        left.addLayout(form)
        self.snap_button = QtWidgets.QPushButton("Snap")
        self.snap_button.clicked.connect(self.snap)
        left.addWidget(self.snap_button)
        self.frame_list = QtWidgets.QListWidget()
        left.addWidget(self.frame_list)
        row = QtWidgets.QHBoxLayout()
        clear = QtWidgets.QPushButton("Clear")
        clear.clicked.connect(self.clear)
        row.addWidget(clear)
        self.fit_button = QtWidgets.QPushButton("Fit")
        self.fit_button.clicked.connect(self.fit)
        row.addWidget(self.fit_button)
        left.addLayout(row)
        self.result_label = QtWidgets.QLabel("")
        self.result_label.setWordWrap(True)
        left.addWidget(self.result_label)
        row = QtWidgets.QHBoxLayout()
        self.save_button = QtWidgets.QPushButton("Save…")
        self.save_button.clicked.connect(self.save)
        self.use_button = QtWidgets.QPushButton("Use")
        self.use_button.clicked.connect(self.use)
        for b in (self.save_button, self.use_button):
            b.setEnabled(False)
            row.addWidget(b)
        left.addLayout(row)
        layout.addLayout(left, 1)

        self.plot = pg.PlotWidget(background="#202124")
        self.plot.setLabel("bottom", "depth metric")
        self.plot.setLabel("left", "known height (µm)")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.addLegend()
        self.plot.setMinimumWidth(420)
        layout.addWidget(self.plot, 2)
        self.resize(900, 480)

    def _sim_property(self, name: str, default: Any) -> Any:
        if not self.demo:
            return default
        try:
            value = self.window.core.getProperty("Sample", name)
        except Exception:
            return default
        return type(default)(value)

    def _pixel_size_um(self) -> float:
        try:
            px = float(self.window.core.getPixelSizeUm())
        except Exception:
            px = 0.0
        return px if px > 0 else float(self.window.model.optics.pixel_size_um)

    def snap(self) -> None:
        """Add the newest frame with the current tilt angle."""
        try:
            frame = self.window.current_frame()
        except Exception as exc:
            self.result_label.setText(f"snap failed: {exc}")
            return
        self.frames.append(np.asarray(frame))
        self.tilts.append(float(self.tilt_spin.value()))
        self.frame_list.addItem(f"frame {len(self.frames)}: tilt {self.tilts[-1]:+.1f}°, "
                                f"{frame.shape[1]}×{frame.shape[0]} px")

    def clear(self) -> None:
        self.frames.clear()
        self.tilts.clear()
        self.frame_list.clear()

    def fit(self) -> None:
        """Fit the calibration on the snapped frames and plot metric against known height."""
        from livepsf.depth import calibrate_tilted_grid

        if not self.frames:
            self.result_label.setText("Snap at least one frame of the tilted grid first.")
            return
        mapper = PSFMapper(self.window.model, stride_px=self.window.stride_px)
        try:
            cal = calibrate_tilted_grid(self.frames, self.tilts, float(self.pixel_spin.value()),
                                        mapper=mapper, tilt_axis=str(self.axis_combo.currentData()))
        except Exception as exc:
            self.result_label.setText(f"fit failed: {exc}")
            return
        self.calibration = cal
        self.result_label.setText(cal.summary())
        self.save_button.setEnabled(True)
        self.use_button.setEnabled(True)
        self.show_plot(cal)

    def show_plot(self, cal: Any) -> None:
        """Profile points per tilt and the fitted line."""
        self.plot.clear()
        points = list(getattr(cal, "points", []) or [])
        if not points:
            return
        metric = np.array([p.metric for p in points])
        height = np.array([p.height_um for p in points])
        tilt = np.array([p.tilt_deg for p in points])
        for i, t in enumerate(sorted(set(tilt.tolist()))):
            sel = tilt == t
            self.plot.plot(metric[sel], height[sel], pen=None, symbol="o", symbolSize=6,
                           symbolBrush=_COLOURS[i % len(_COLOURS)], name=f"{t:+.1f}°")
        m = np.linspace(metric.min(), metric.max(), 2)
        self.plot.plot(m, cal.slope_um_per_unit * m + cal.offset_um, pen=pg.mkPen("w", width=2), name="fit")

    def save(self) -> None:
        if self.calibration is None:
            return
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save calibration", "calibration.json",
                                                        "Calibration (*.json)")
        if not path:
            return
        try:
            from livepsf.depth import plot_calibration

            saved = self.calibration.save(path)
            plot_calibration(self.calibration, Path(saved).with_suffix(".png"))
            self.result_label.setText(f"saved {saved}")
        except Exception as exc:
            self.result_label.setText(f"not saved: {exc}")

    def use(self) -> None:
        if self.calibration is not None:
            self.calibrated.emit(self.calibration)
            self.accept()

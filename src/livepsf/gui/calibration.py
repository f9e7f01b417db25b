"""The "Calibrate…" dialog: snap frames of a tilted printed grid, or take a z-stack; fit, save, use.

Tilted grid (paper Section III-E): put a printed grid under the objective, tilt it by a known angle so
that focus falls mid-field, snap; repeat at other angles; fit. Each snapped frame is mapped with a fresh
:class:`~livepsf.mapping.PSFMapper` of the window's model at the calibration step (32 px, as
``livepsf calibrate``: :data:`~livepsf.depth.CALIBRATION_STRIDE_PX`, finer than the live view's), then
:func:`livepsf.depth.calibrate_tilted_grid` fits the line from the depth metric to the known height.

Z-stack ("Z-stack…"): any flat textured sample roughly in focus; the focus drive steps over a range
(:func:`livepsf.acquisition.zstack.acquire_zstack`) and the frames at known stage positions are fitted
(:func:`livepsf.depth.calibrate_zstack`). Live view and the focus lock are stopped for the stack (they
would move or read the stage meanwhile) and live view is restarted afterwards; the acquisition and the
fit run on a worker thread, with a progress bar and Cancel.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pyqtgraph as pg
from qtpy import QtCore, QtWidgets

from livepsf.acquisition.zstack import DEFAULT_RANGE_UM as ZSTACK_RANGE_UM
from livepsf.acquisition.zstack import DEFAULT_SETTLE_MS as ZSTACK_SETTLE_MS
from livepsf.acquisition.zstack import DEFAULT_STEP_UM as ZSTACK_STEP_UM
from livepsf.depth import CALIBRATION_STRIDE_PX
from livepsf.mapping import PSFMapper

__all__ = ["CalibrationDialog", "ZStackSettingsDialog"]

_COLOURS = ["#4fc3f7", "#ef5350", "#66bb6a", "#ab47bc", "#ffa726", "#26c6da"]


class ZStackSettingsDialog(QtWidgets.QDialog):
    """Asks the range, step and settle time of a z-stack (defaults ±40 µm in 2 µm steps)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None, *, range_um: float = ZSTACK_RANGE_UM,
                 step_um: float = ZSTACK_STEP_UM, settle_ms: float = ZSTACK_SETTLE_MS) -> None:
        super().__init__(parent)
        self.setWindowTitle("Z-stack calibration")
        layout = QtWidgets.QVBoxLayout(self)
        text = QtWidgets.QLabel("Focus on a flat, textured sample (the cylindrical lens in). The focus drive "
                                "steps over ± the range around the present position and comes back.")
        text.setWordWrap(True)
        layout.addWidget(text)
        form = QtWidgets.QFormLayout()
        self.range_spin = _spin(1.0, 500.0, range_um, " µm", 1, "±")
        self.step_spin = _spin(0.05, 100.0, step_um, " µm", 2)
        self.settle_spin = _spin(0.0, 5000.0, settle_ms, " ms", 0)
        form.addRow("Range", self.range_spin)
        form.addRow("Step", self.step_spin)
        form.addRow("Settle after each move", self.settle_spin)
        self.planes_label = QtWidgets.QLabel()
        form.addRow("Planes", self.planes_label)
        layout.addLayout(form)
        buttons = QtWidgets.QDialogButtonBox(QtWidgets.QDialogButtonBox.StandardButton.Ok
                                             | QtWidgets.QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.ok_button = buttons.button(QtWidgets.QDialogButtonBox.StandardButton.Ok)
        layout.addWidget(buttons)
        for spin in (self.range_spin, self.step_spin):
            spin.valueChanged.connect(self._update_planes)
        self._update_planes()

    def values(self) -> tuple[float, float, float]:
        """``(range_um, step_um, settle_ms)``."""
        return float(self.range_spin.value()), float(self.step_spin.value()), float(self.settle_spin.value())

    def _update_planes(self) -> None:
        from livepsf.acquisition.zstack import zstack_positions
        from livepsf.errors import InputError

        try:
            n = zstack_positions(0.0, self.range_spin.value(), step_um=self.step_spin.value()).size
        except InputError as exc:
            self.planes_label.setText(str(exc))
            self.ok_button.setEnabled(False)
            return
        self.planes_label.setText(f"{n}")
        self.ok_button.setEnabled(True)


def _spin(lo: float, hi: float, value: float, suffix: str, decimals: int, prefix: str = "") -> QtWidgets.QDoubleSpinBox:
    spin = QtWidgets.QDoubleSpinBox()
    spin.setRange(lo, hi)
    spin.setDecimals(decimals)
    spin.setSuffix(suffix)
    spin.setPrefix(prefix)
    spin.setValue(value)
    return spin


class _ZStackBridge(QtCore.QObject):
    """Carries the z-stack worker's progress and outcome to the GUI thread (queued signals)."""

    progress = QtCore.Signal(str, int, int)
    finished = QtCore.Signal(object, object, str)


class CalibrationDialog(QtWidgets.QDialog):
    """Tilted-grid depth calibration from the live window.

    Signals
    -------
    calibrated(object)
        Emitted with the :class:`livepsf.depth.Calibration` when the user presses "Use".
    """

    calibrated = QtCore.Signal(object)
    zstack_finished = QtCore.Signal(str)

    def __init__(self, window: Any, demo: bool = False) -> None:
        super().__init__(window)
        self.window = window
        self.demo = demo
        self.frames: list[np.ndarray] = []
        self.tilts: list[float] = []
        self.calibration: Any = None
        self.zstack: Any = None
        self._zstack_thread: threading.Thread | None = None
        self._zstack_cancel = threading.Event()
        self._zstack_resume_live = False
        self._zstack_bridge = _ZStackBridge(self)
        self._zstack_bridge.progress.connect(self._on_zstack_progress)
        self._zstack_bridge.finished.connect(self._on_zstack_finished)
        self.setWindowTitle("Depth calibration — tilted printed grid")
        layout = QtWidgets.QHBoxLayout(self)

        left = QtWidgets.QVBoxLayout()
        help_text = QtWidgets.QLabel(
            "Tilt a printed grid by a known angle so that focus falls mid-field, then Snap. Repeat at "
            "two or three angles (e.g. 3°, 6°, 10°) and Fit. Or, with any flat textured sample in focus, "
            "take a Z-stack." + (
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
        self.frame_list.setMaximumHeight(110)  # leaves room for the fit's summary below
        left.addWidget(self.frame_list)
        row = QtWidgets.QHBoxLayout()
        clear = QtWidgets.QPushButton("Clear")
        clear.clicked.connect(self.clear)
        row.addWidget(clear)
        self.fit_button = QtWidgets.QPushButton("Fit")
        self.fit_button.clicked.connect(self.fit)
        row.addWidget(self.fit_button)
        left.addLayout(row)
        self.zstack_button = QtWidgets.QPushButton("Z-stack…")
        self.zstack_button.setToolTip("Calibrate from a z-stack of any flat textured sample instead of a tilted "
                                      "grid: steps the focus drive over a range and fits the known positions")
        self.zstack_button.clicked.connect(self.ask_zstack)
        left.addWidget(self.zstack_button)
        row = QtWidgets.QHBoxLayout()
        self.progress_bar = QtWidgets.QProgressBar()
        self.progress_bar.setVisible(False)
        self.cancel_button = QtWidgets.QPushButton("Cancel")
        self.cancel_button.setVisible(False)
        self.cancel_button.clicked.connect(self.cancel_zstack)
        row.addWidget(self.progress_bar, 1)
        row.addWidget(self.cancel_button)
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
        for side in ("left", "bottom"):
            self.plot.getAxis(side).enableAutoSIPrefix(False)  # a metric of 0.4 stays 0.4, not 400 x 0.001
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.addLegend()
        self.plot.setMinimumWidth(420)
        layout.addWidget(self.plot, 2)
        self.resize(900, 540)

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
        mapper = PSFMapper(self.window.model, stride_px=CALIBRATION_STRIDE_PX)  # as `livepsf calibrate`
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
        """Profile points per tilt (or the z-stack's points) and the fitted curve."""
        self.plot.clear()
        points = list(getattr(cal, "points", []) or [])
        if not points:
            return
        metric = np.array([p.metric for p in points])
        height = np.array([p.height_um for p in points])
        if getattr(cal, "source", "tilted-grid") == "z-stack":
            self.plot.plot(metric, height, pen=None, symbol="o", symbolSize=6, symbolBrush=_COLOURS[0],
                           name="z-stack")
        else:
            tilt = np.array([p.tilt_deg for p in points])
            for i, t in enumerate(sorted(set(tilt.tolist()))):
                sel = tilt == t
                self.plot.plot(metric[sel], height[sel], pen=None, symbol="o", symbolSize=6,
                               symbolBrush=_COLOURS[i % len(_COLOURS)], name=f"{t:+.1f}°")
        m = np.linspace(metric.min(), metric.max(), 64)
        to_depth = getattr(cal, "metric_to_depth_um", None)  # the calibration curve; a line in older files
        fitted = to_depth(m) if to_depth is not None else cal.slope_um_per_unit * m + cal.offset_um
        self.plot.plot(m, np.asarray(fitted, dtype=np.float64), pen=pg.mkPen("w", width=2), name="fit")

    # -- z-stack ---------------------------------------------------------------------------------------
    def ask_zstack(self) -> None:
        """Ask range and step, then :meth:`start_zstack`."""
        ask = ZStackSettingsDialog(self)
        if ask.exec() == QtWidgets.QDialog.DialogCode.Accepted:
            self.start_zstack(*ask.values())

    @property
    def zstack_running(self) -> bool:
        return self._zstack_thread is not None and self._zstack_thread.is_alive()

    def start_zstack(self, range_um: float = ZSTACK_RANGE_UM, step_um: float = ZSTACK_STEP_UM,
                     settle_ms: float = ZSTACK_SETTLE_MS) -> bool:
        """Take a z-stack of ± ``range_um`` around the present Z and fit it, off the GUI thread.

        Live view and the focus lock are stopped first (the stack moves the stage and snaps) and live
        view restarts when the stack is done. :attr:`zstack_finished` fires with the outcome line.
        Returns False (and says why) when a stack is already running or the settings are bad.
        """
        from livepsf.acquisition.zstack import zstack_positions
        from livepsf.errors import InputError

        if self.zstack_running:
            return False
        try:
            n = zstack_positions(0.0, range_um, step_um=step_um).size
        except InputError as exc:
            self.result_label.setText(f"z-stack not started: {exc}")
            return False
        window = self.window
        resume_live = bool(window.loop.is_running)
        if getattr(window, "focus_lock", None) is not None:
            window.focus_lock_check.setChecked(False)  # releases the lock: its setpoint would be moved
        if resume_live:
            window.stop()
        self._zstack_resume_live = resume_live
        self._zstack_cancel.clear()
        self._set_busy(True, n)
        self.result_label.setText(f"z-stack: ±{range_um:g} µm in {step_um:g} µm steps ({n} planes)…")
        mapper = PSFMapper(window.model, stride_px=CALIBRATION_STRIDE_PX)  # as `livepsf calibrate --zstack`
        settings = (float(range_um), float(step_um), float(settle_ms), float(self.pixel_spin.value()))
        self._zstack_thread = threading.Thread(target=self._run_zstack, args=(mapper, settings),
                                               name="livepsf-zstack", daemon=True)
        self._zstack_thread.start()
        return True

    def cancel_zstack(self) -> None:
        """Stop the running z-stack before its next plane (the planes taken are not fitted)."""
        self._zstack_cancel.set()
        self.cancel_button.setEnabled(False)

    def _run_zstack(self, mapper: Any, settings: tuple[float, float, float, float]) -> None:
        """Worker thread: wait for live view to end, acquire, fit; the outcome goes to the GUI thread."""
        from livepsf.acquisition.zstack import acquire_zstack, calibrate_from_zstack

        range_um, step_um, settle_ms, pixel_um = settings
        core = self.window.core
        bridge = self._zstack_bridge
        stack = cal = None
        tilt = None
        try:
            if not self.window.loop.wait(10.0):
                raise RuntimeError("live view did not stop within 10 s")
            if self.demo:
                # The simulated sample is flat for a z-stack; its tilt comes back afterwards.
                tilt = float(core.getProperty("Sample", "TiltDeg"))
                core.setProperty("Sample", "TiltDeg", 0.0)
            try:
                stack = acquire_zstack(
                    core, range_um=range_um, step_um=step_um, settle_ms=settle_ms, pixel_size_um=pixel_um,
                    progress=lambda k, n, z: bridge.progress.emit(f"plane {k}/{n}, Z {z:+.1f} µm", k, n),
                    cancel=self._zstack_cancel.is_set)
            finally:
                if tilt is not None:
                    core.setProperty("Sample", "TiltDeg", tilt)
            if stack.cancelled:
                message = f"z-stack cancelled after {len(stack)} of {stack.metadata['planes_planned']} planes; nothing fitted"
            else:
                cal = calibrate_from_zstack(
                    stack, mapper, progress=lambda k, n: bridge.progress.emit(f"mapping {k}/{n}", k, n))
                message = cal.summary()
        except Exception as exc:  # the GUI says what failed; the window stays usable
            message = f"z-stack failed: {exc}"
            stack = getattr(exc, "partial", stack)
        bridge.finished.emit(stack, cal, message)

    def _on_zstack_progress(self, text: str, done: int, total: int) -> None:
        self.progress_bar.setMaximum(total)
        self.progress_bar.setValue(done)
        self.progress_bar.setFormat(text)

    def _on_zstack_finished(self, stack: Any, cal: Any, message: str) -> None:
        self._zstack_thread = None
        self._set_busy(False)
        if self._zstack_resume_live:
            self.window.start()
        self.zstack = stack if stack is not None and len(stack) else None
        if cal is not None:
            self.calibration = cal
            self.save_button.setEnabled(True)
            self.use_button.setEnabled(True)
            self.show_plot(cal)
        self.result_label.setText(message)
        self.zstack_finished.emit(message)

    def _set_busy(self, busy: bool, planes: int = 0) -> None:
        for widget in (self.snap_button, self.fit_button, self.zstack_button):
            widget.setEnabled(not busy)
        self.progress_bar.setVisible(busy)
        self.cancel_button.setVisible(busy)
        self.cancel_button.setEnabled(busy)
        if busy:
            self.progress_bar.setRange(0, planes)
            self.progress_bar.setValue(0)
            self.progress_bar.setFormat("starting…")

    def save(self) -> None:
        if self.calibration is None:
            return
        path, _ = QtWidgets.QFileDialog.getSaveFileName(self, "Save calibration", "calibration.json",
                                                        "Calibration (*.json)")
        if not path:
            return
        try:
            from livepsf.depth import write_calibration_files

            saved, _ = write_calibration_files(self.calibration, path)
            text = f"saved {saved}"
            if self.zstack is not None and getattr(self.calibration, "source", "") == "z-stack":
                from livepsf.acquisition.zstack import save_zstack
                from livepsf.imageio import output_path

                text += f" and the stack {save_zstack(self.zstack, output_path(saved, '_zstack.ome.tif'))}"
            self.result_label.setText(text)
        except Exception as exc:
            self.result_label.setText(f"not saved: {exc}")

    def use(self) -> None:
        if self.calibration is not None:
            self.calibrated.emit(self.calibration)
            self.accept()

    def done(self, result: int) -> None:
        """Closing the dialog cancels a running z-stack (the worker puts the stage back)."""
        if self.zstack_running:
            self.cancel_zstack()
        super().done(result)

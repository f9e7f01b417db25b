"""The live window: camera frame, PSF overlays and glyphs, focus trace, controls and live statistics.

The :class:`~livepsf.acquisition.loop.LiveLoop` maps frames on its own thread; this window only keeps
the latest result it published and draws it from a Qt timer, so drawing never holds up acquisition or
mapping and results never pile up: if drawing is slower than mapping, intermediate results are simply
not drawn.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from qtpy import QtCore, QtGui, QtWidgets

from livepsf.acquisition.loop import LiveLoop, LiveResult
from livepsf.gui import overlays as ov
from livepsf.mapping import PSFMapper

__all__ = ["LiveWindow"]

logger = logging.getLogger("livepsf.live")

# Display resolution of the overlay relative to the frame (it is smooth by construction).
_OVERLAY_DOWNSAMPLE = 4
# Draw check interval (ms); drawing happens only when a new result arrived.
_DRAW_INTERVAL_MS = 15
_STATS_INTERVAL_MS = 500
_STRIDES = (32, 64, 128)
_TRACE_INTERVAL_S = 0.25
_HISTOGRAM_INTERVAL_S = 0.5
_ABSOLUTE_Z_UM = 500.0


class _Bridge(QtCore.QObject):
    """Carries the loop's error/stop messages from its thread to the GUI thread (queued signals)."""

    error = QtCore.Signal(str)
    stopped = QtCore.Signal(str)
    stage_moved = QtCore.Signal(str, float)


class LiveWindow(QtWidgets.QMainWindow):
    """Live PSF maps of a microscope's camera.

    Parameters
    ----------
    core
        A ``CMMCorePlus`` (real configuration or the simulator).
    model
        A loaded network (:func:`livepsf.net.load_model`).
    stride_px
        Initial window stride.
    calibration
        Depth calibration (:class:`livepsf.depth.Calibration`) or ``None`` ("uncalibrated").
    demo
        Show the simulator's controls (Z stage, lens, sample, tilt) — the core must be
        :func:`livepsf.sim.create_core`'s.
    model_loader
        ``name_or_path -> model`` used by the model menu (default :func:`livepsf.net.load_model`).
    trace_seconds
        Length of the focus trace.
    """

    def __init__(self, core: Any, model: Any, *, stride_px: int = 64, calibration: Any = None,
                 demo: bool = False, model_loader: Callable[[str], Any] | None = None,
                 trace_seconds: float = 30.0, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.core = core
        self.model = model
        self.stride_px = int(stride_px)
        self.calibration = calibration
        self.demo = demo
        self._model_loader = model_loader
        self.loop = LiveLoop(core, PSFMapper(model, stride_px=self.stride_px), calibration=calibration)
        self._pending: LiveResult | None = None
        self._drawn: LiveResult | None = None
        self._frame_shape: tuple[int, int] | None = None
        self._trace: deque[tuple[float, float, float]] = deque()
        self._trace_kind = ""
        self._trace_drawn_at = 0.0
        self._histogram_at = 0.0
        self._z_ref = float("nan")
        self._shut_down = False
        self._lut_cache: dict[str, np.ndarray] = {}
        self._levels: tuple[float, float] | None = None
        self._colorbar_look: tuple | None = None
        self._recorder: Any = None
        self.focus_lock: Any = None
        self._calibration_dialog: Any = None
        self.draw_count = 0

        self.setWindowTitle("livepsf — live PSF map" + (" (simulated microscope)" if demo else ""))
        self._build_view()
        self._build_trace()
        self._build_controls()
        self._build_status()
        self._bridge = _Bridge()
        self._bridge.error.connect(self._on_error)
        self._bridge.stopped.connect(self._on_stopped)
        self.loop.resultReady.connect(self._store_result)
        self.loop.errorOccurred.connect(self._bridge.error.emit)
        self.loop.stopped.connect(self._bridge.stopped.emit)
        if demo:
            # Keep the Z box honest when the stage is moved elsewhere (a script, another widget).
            self._bridge.stage_moved.connect(self._on_stage_moved)
            core.events.stagePositionChanged.connect(self._forward_stage_move)
        self._draw_timer = QtCore.QTimer(self)
        self._draw_timer.timeout.connect(self._draw_latest)
        self._draw_timer.start(_DRAW_INTERVAL_MS)
        self._stats_timer = QtCore.QTimer(self)
        self._stats_timer.timeout.connect(self._update_stats)
        self._stats_timer.start(_STATS_INTERVAL_MS)
        self._refresh_overlay_choices()
        self._warn_if_averaged(calibration)
        self.resize(1280, 900)

    # -- layout ------------------------------------------------------------------------------------
    def _build_view(self) -> None:
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground("#202124")
        self.view = self.graphics.addViewBox(row=0, col=0, lockAspect=True, invertY=True, enableMenu=False)
        self.view.setDefaultPadding(0.0)
        # autoDownsample: a megapixel frame shown in ~700 screen pixels is reduced before colouring.
        self.frame_item = pg.ImageItem(axisOrder="row-major", autoDownsample=True)
        self.view.addItem(self.frame_item)
        self.overlay_item = pg.ImageItem(axisOrder="row-major")
        self.overlay_item.setZValue(10)
        self.view.addItem(self.overlay_item)
        hatch = QtGui.QBrush(QtGui.QColor(255, 255, 255, 210), QtCore.Qt.BrushStyle.BDiagPattern)
        self.invalid_item = QtWidgets.QGraphicsPathItem()
        self.invalid_item.setBrush(hatch)
        self.invalid_item.setPen(QtGui.QPen(QtCore.Qt.PenStyle.NoPen))
        self.invalid_item.setZValue(20)
        self.view.addItem(self.invalid_item)
        self.glyph_item = pg.PlotCurveItem(pen=pg.mkPen((255, 255, 255, 220), width=1))
        self.glyph_item.setZValue(30)
        self.view.addItem(self.glyph_item)
        self.axis_item = pg.PlotCurveItem(pen=pg.mkPen((80, 220, 255, 255), width=2))
        self.axis_item.setZValue(31)
        self.view.addItem(self.axis_item)
        self.roi = pg.RectROI([0, 0], [256, 256], pen=pg.mkPen("#ffd54f", width=2))
        self.roi.setZValue(40)
        self.roi.hide()
        self.view.addItem(self.roi)
        self.message_item = pg.TextItem("", color="#ffffff", fill=pg.mkBrush(0, 0, 0, 170), anchor=(0, 0))
        self.message_item.setFont(_point_size_font(13))
        self.message_item.setZValue(50)
        self.view.addItem(self.message_item)
        self.scale_item = pg.TextItem("", color="#ffffff", fill=pg.mkBrush(0, 0, 0, 140), anchor=(1, 1))
        self.scale_item.setZValue(50)
        self.view.addItem(self.scale_item)
        self.scalebar_item = QtWidgets.QGraphicsRectItem()
        self.scalebar_item.setBrush(QtGui.QBrush(QtGui.QColor("white")))
        self.scalebar_item.setPen(QtGui.QPen(QtCore.Qt.PenStyle.NoPen))
        self.scalebar_item.setZValue(50)
        self.view.addItem(self.scalebar_item)
        self.scalebar_label = pg.TextItem("", color="#ffffff", anchor=(0.5, 1))
        self.scalebar_label.setZValue(50)
        self.view.addItem(self.scalebar_label)

        self.histogram = pg.HistogramLUTItem(self.frame_item, orientation="vertical")
        self.histogram.axis.setLabel("camera (ADU)")
        # Refreshed from draw_result a couple of times a second, not on every frame.
        self.frame_item.sigImageChanged.disconnect(self.histogram.imageChanged)
        self.graphics.addItem(self.histogram, row=0, col=1)
        self.colorbar = pg.ColorBarItem(values=(0, 1), colorMap=pg.colormap.get("viridis"), interactive=False,
                                        width=18, orientation="vertical")
        # The application's font at another size. Never QFont("", size): a font with an empty family
        # list crashes Qt 6.9-6.11 when pyqtgraph records the axis into a QPicture (see _point_size_font).
        self.colorbar.axis.setStyle(tickFont=_point_size_font(10))
        self.colorbar.axis.enableAutoSIPrefix(False)
        self.histogram.axis.enableAutoSIPrefix(False)
        self.graphics.addItem(self.colorbar, row=0, col=2)
        self.graphics.ci.layout.setColumnStretchFactor(0, 10)

    def _build_trace(self) -> None:
        self.trace_plot = pg.PlotWidget(background="#202124")
        self.trace_plot.setMinimumHeight(150)
        self.trace_plot.setMaximumHeight(230)
        self.trace_plot.showGrid(x=True, y=True, alpha=0.25)
        self.trace_plot.setLabel("bottom", "time (s)")
        self.trace_plot.getAxis("left").enableAutoSIPrefix(False)
        self.trace_plot.addLegend(offset=(10, 5))
        self.trace_curve = self.trace_plot.plot([], [], pen=pg.mkPen("#ffd54f", width=2),
                                                name="mean over the frame")
        self.stage_curve = self.trace_plot.plot([], [], pen=pg.mkPen("#80cbc4", width=1.5,
                                                                      style=QtCore.Qt.PenStyle.DashLine),
                                                name="stage Z − Z₀ (µm)")
        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Vertical)
        splitter.addWidget(self.graphics)
        splitter.addWidget(self.trace_plot)
        splitter.setStretchFactor(0, 5)
        splitter.setStretchFactor(1, 1)
        self.setCentralWidget(splitter)

    def _build_controls(self) -> None:
        panel = QtWidgets.QWidget()
        layout = QtWidgets.QVBoxLayout(panel)

        acq = QtWidgets.QGroupBox("Acquisition")
        form = QtWidgets.QFormLayout(acq)
        self.start_button = QtWidgets.QPushButton("Start")
        self.start_button.setCheckable(True)
        self.start_button.toggled.connect(self._on_start_toggled)
        form.addRow(self.start_button)
        self.model_combo = QtWidgets.QComboBox()
        self.model_combo.addItem(f"{self.model.name} ({self.model.spec.name})", userData=None)
        for name in self._shipped_models():
            if name != self.model.name:
                self.model_combo.addItem(name, userData=name)
        self.model_combo.addItem("Other file…", userData="__file__")
        self.model_combo.activated.connect(self._on_model_chosen)
        form.addRow("Model", self.model_combo)
        self.stride_combo = QtWidgets.QComboBox()
        for s in _STRIDES:
            self.stride_combo.addItem(f"{s} px", userData=s)
        if self.stride_px not in _STRIDES:
            self.stride_combo.addItem(f"{self.stride_px} px", userData=self.stride_px)
        self.stride_combo.setCurrentIndex(self.stride_combo.findData(self.stride_px))
        self.stride_combo.activated.connect(self._on_stride_chosen)
        form.addRow("Stride", self.stride_combo)
        self.focus_lock_check = QtWidgets.QCheckBox("Focus lock")
        self.focus_lock_check.setToolTip("Hold the focus against drift (cylindrical lens in, live view "
                                         "running): measures the setpoint on the next frames, then moves Z "
                                         "when needed")
        self.focus_lock_check.toggled.connect(self._on_focus_lock_toggled)
        self.focus_lock_label = QtWidgets.QLabel("")
        self.focus_lock_label.setWordWrap(True)
        form.addRow(self.focus_lock_check)
        form.addRow(self.focus_lock_label)
        layout.addWidget(acq)

        disp = QtWidgets.QGroupBox("Display")
        form = QtWidgets.QFormLayout(disp)
        self.overlay_combo = QtWidgets.QComboBox()
        self.overlay_combo.currentIndexChanged.connect(self._on_overlay_changed)
        form.addRow("Overlay", self.overlay_combo)
        self.opacity_slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(40)
        self.opacity_slider.valueChanged.connect(self._redraw)
        form.addRow("Opacity", self.opacity_slider)
        self.glyph_check = QtWidgets.QCheckBox("PSF glyphs")
        self.glyph_check.setChecked(True)
        self.glyph_check.setToolTip("Per window: the 2σ outline of the estimated PSF (size and orientation)")
        self.glyph_check.toggled.connect(self._redraw)
        form.addRow(self.glyph_check)
        self.hatch_check = QtWidgets.QCheckBox("Hatch textureless windows")
        self.hatch_check.setChecked(True)
        self.hatch_check.toggled.connect(self._redraw)
        form.addRow(self.hatch_check)
        self.autolevel_check = QtWidgets.QCheckBox("Auto contrast")
        self.autolevel_check.setChecked(True)
        form.addRow(self.autolevel_check)
        layout.addWidget(disp)

        trace = QtWidgets.QGroupBox("Focus trace")
        form = QtWidgets.QFormLayout(trace)
        self.trace_seconds = QtWidgets.QSpinBox()
        self.trace_seconds.setRange(5, 600)
        self.trace_seconds.setValue(30)
        self.trace_seconds.setSuffix(" s")
        form.addRow("Last", self.trace_seconds)
        self.roi_check = QtWidgets.QCheckBox("Region of interest only")
        self.roi_check.toggled.connect(self._on_roi_toggled)
        form.addRow(self.roi_check)
        layout.addWidget(trace)

        depth = QtWidgets.QGroupBox("Depth")
        form = QtWidgets.QFormLayout(depth)
        self.calibration_label = QtWidgets.QLabel()
        self.calibration_label.setWordWrap(True)
        form.addRow(self.calibration_label)
        row = QtWidgets.QHBoxLayout()
        load = QtWidgets.QPushButton("Load…")
        load.clicked.connect(self._on_load_calibration)
        row.addWidget(load)
        self.calibrate_button = QtWidgets.QPushButton("Calibrate…")
        self.calibrate_button.clicked.connect(self._on_calibrate)
        self.calibrate_button.setEnabled(self.model.spec.has_astigmatism and "focus" in self.model.spec.names)
        row.addWidget(self.calibrate_button)
        form.addRow(row)
        layout.addWidget(depth)

        rec = QtWidgets.QGroupBox("Record")
        form = QtWidgets.QFormLayout(rec)
        self.record_button = QtWidgets.QPushButton("Start recording")
        self.record_button.setCheckable(True)
        self.record_button.toggled.connect(self._on_record_toggled)
        self.record_label = QtWidgets.QLabel("")
        self.record_label.setWordWrap(True)
        recorder_cls = _recorder_class()
        if recorder_cls is None:
            self.record_button.setEnabled(False)
            self.record_button.setToolTip("recording needs livepsf.acquisition.recorder, not installed here")
        form.addRow(self.record_button)
        form.addRow(self.record_label)
        layout.addWidget(rec)

        if self.demo:
            layout.addWidget(self._build_sim_controls())
        layout.addStretch(1)
        self._update_calibration_label()

        dock = QtWidgets.QDockWidget("Controls", self)
        dock.setFeatures(QtWidgets.QDockWidget.DockWidgetFeature.NoDockWidgetFeatures)
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(panel)
        dock.setWidget(scroll)
        dock.setMinimumWidth(270)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.RightDockWidgetArea, dock)

    def _build_sim_controls(self) -> QtWidgets.QGroupBox:
        box = QtWidgets.QGroupBox("Simulated microscope")
        form = QtWidgets.QFormLayout(box)
        core = self.core
        self.z_spin = QtWidgets.QDoubleSpinBox()
        self.z_spin.setRange(-150.0, 150.0)
        self.z_spin.setSingleStep(2.0)
        self.z_spin.setSuffix(" µm")
        self.z_spin.setKeyboardTracking(False)
        self.z_spin.setValue(float(core.getPosition()))
        self.z_spin.valueChanged.connect(lambda v: core.setPosition(float(v)))
        form.addRow("Focus (Z)", self.z_spin)
        self.lens_check = QtWidgets.QCheckBox("Cylindrical lens in")
        self.lens_check.setChecked(core.getStateLabel("Lens") == "In")
        self.lens_check.toggled.connect(lambda on: core.setStateLabel("Lens", "In" if on else "Out"))
        form.addRow(self.lens_check)
        self.sample_combo = QtWidgets.QComboBox()
        self.sample_combo.addItems(list(core.getAllowedPropertyValues("Sample", "Sample")))
        self.sample_combo.setCurrentText(core.getProperty("Sample", "Sample"))
        self.sample_combo.currentTextChanged.connect(lambda s: core.setProperty("Sample", "Sample", s))
        form.addRow("Sample", self.sample_combo)
        self.tilt_spin = QtWidgets.QDoubleSpinBox()
        self.tilt_spin.setRange(-30.0, 30.0)
        self.tilt_spin.setSingleStep(1.0)
        self.tilt_spin.setSuffix(" °")
        self.tilt_spin.setKeyboardTracking(False)
        self.tilt_spin.setValue(float(core.getProperty("Sample", "TiltDeg")))
        self.tilt_spin.valueChanged.connect(lambda v: core.setProperty("Sample", "TiltDeg", float(v)))
        form.addRow("Tilt", self.tilt_spin)
        return box

    def _forward_stage_move(self, label: str, position_um: float) -> None:
        # Any thread: hop to the GUI thread through the bridge's queued signal.
        self._bridge.stage_moved.emit(str(label), float(position_um))

    def _on_stage_moved(self, label: str, position_um: float) -> None:
        if label == self.core.getFocusDevice() and abs(self.z_spin.value() - position_um) > 1e-6:
            self.z_spin.blockSignals(True)
            self.z_spin.setValue(position_um)
            self.z_spin.blockSignals(False)

    def _build_status(self) -> None:
        self.stats_label = QtWidgets.QLabel("stopped")
        self.statusBar().addPermanentWidget(self.stats_label, 1)

    # -- start / stop ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the live loop (same as pressing Start)."""
        self.start_button.setChecked(True)

    def stop(self) -> None:
        """Stop the live loop (same as pressing Stop)."""
        self.start_button.setChecked(False)

    def _on_start_toggled(self, on: bool) -> None:
        if on:
            try:
                self._trace.clear()
                self.loop.start()
            except Exception as exc:
                self._on_error(f"could not start: {exc}")
                self.start_button.setChecked(False)
                return
            self.start_button.setText("Stop")
        else:
            self.loop.stop()
            self.start_button.setText("Start")

    def _on_stopped(self, reason: str) -> None:
        if reason != "stopped":
            self.statusBar().showMessage(f"Live stopped: {reason}", 15000)
        self.start_button.blockSignals(True)
        self.start_button.setChecked(False)
        self.start_button.setText("Start")
        self.start_button.blockSignals(False)
        self._update_stats()

    def _on_error(self, message: str) -> None:
        self.statusBar().showMessage(message, 10000)

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:
        self.shutdown()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop timers, recording and the loop (idempotent)."""
        if self._shut_down:
            return
        self._shut_down = True
        self._draw_timer.stop()
        self._stats_timer.stop()
        if self.demo:
            try:
                self.core.events.stagePositionChanged.disconnect(self._forward_stage_move)
            except (TypeError, ValueError, RuntimeError):
                pass  # already disconnected
        self._release_focus_lock()
        self.loop.stop()
        if self._recorder is not None:
            self.stop_recording()

    # -- focus lock --------------------------------------------------------------------------------
    def _on_focus_lock_toggled(self, on: bool) -> None:
        if not on:
            self._release_focus_lock()
        elif not self.loop.is_running:
            self.statusBar().showMessage("Focus lock: start the live view first", 10000)
            self.focus_lock_check.setChecked(False)
        else:
            from livepsf.acquisition.focus_lock import FocusLock

            self.focus_lock = FocusLock(self.core, calibration=self.calibration, settle_s=0.1)
            self.focus_lock.engage_live()  # on the next results: the stream keeps running
            self.loop.resultReady.connect(self.focus_lock.on_result)
        self._update_focus_lock_label()

    def _release_focus_lock(self) -> None:
        lock, self.focus_lock = self.focus_lock, None
        if lock is not None:
            lock.disengage()
            self.loop.resultReady.disconnect(lock.on_result)

    def _update_focus_lock_label(self) -> None:
        lock = self.focus_lock
        if lock is None:
            self.focus_lock_label.setText("")
            return
        status = lock.status
        if status.startswith("failed"):
            self.statusBar().showMessage(f"Focus lock {status}", 15000)
            self.focus_lock_check.setChecked(False)  # releases the lock
            return
        text = ("measuring the setpoint…" if status == "engaging"
                else f"locked, {len(lock.corrections)} corrections")
        if lock.corrections:
            last = lock.corrections[-1]
            text += f" (last {last.z_after_um - last.z_before_um:+.2f} µm)"
        self.focus_lock_label.setText(text)

    # -- model, stride, calibration ----------------------------------------------------------------
    def _shipped_models(self) -> list[str]:
        try:
            from livepsf.net import available_models

            return available_models()
        except Exception:
            return []

    def _on_model_chosen(self, index: int) -> None:
        choice = self.model_combo.itemData(index)
        if choice is None:
            return
        if choice == "__file__":
            path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Model file", "",
                                                            "TorchScript model (*.pt)")
            if not path:
                self.model_combo.setCurrentIndex(0)
                return
            choice = path
        self.set_model(choice)

    def set_model(self, name_or_path: str | Any) -> None:
        """Switch network (a name, a path, or a loaded model); keeps running if running."""
        try:
            if isinstance(name_or_path, (str, Path)):
                loader = self._model_loader
                if loader is None:
                    from livepsf.net import load_model as loader
                model = loader(str(name_or_path))
            else:
                model = name_or_path
            mapper = PSFMapper(model, stride_px=self.stride_px)
        except Exception as exc:
            self._on_error(f"model not loaded: {exc}")
            self.model_combo.setCurrentIndex(0)
            return
        dropped = ""
        if self.calibration is not None:
            try:
                self.calibration.check_model(model)
            except Exception as exc:
                dropped = f"calibration dropped: {exc}"
        self.model = model
        # Network and calibration change in one step: the loop must never pair the new network with a
        # calibration made for the old one.
        self.loop.set_mapper(mapper, calibration=None if dropped else self.calibration)
        if dropped:
            self.set_calibration(None)
            self._on_error(dropped)
        self.model_combo.setItemText(0, f"{model.name} ({model.spec.name})")
        self.model_combo.setCurrentIndex(0)
        self.calibrate_button.setEnabled(model.spec.has_astigmatism and "focus" in model.spec.names)
        self._refresh_overlay_choices()

    def _on_stride_chosen(self, index: int) -> None:
        self.set_stride(int(self.stride_combo.itemData(index)))

    def set_stride(self, stride_px: int) -> None:
        """Change the window stride (a finer grid costs proportionally more mapping time)."""
        try:
            mapper = PSFMapper(self.model, stride_px=int(stride_px))
        except Exception as exc:
            self._on_error(f"stride not changed: {exc}")
            return
        self.stride_px = int(stride_px)
        self.loop.set_mapper(mapper)
        idx = self.stride_combo.findData(self.stride_px)
        if idx >= 0:
            self.stride_combo.setCurrentIndex(idx)

    def set_calibration(self, calibration: Any) -> None:
        """Use a depth calibration (``None``: the depth overlay says "uncalibrated")."""
        if calibration is not None:
            calibration.check_model(self.model)
        self.calibration = calibration
        self.loop.set_calibration(calibration)
        if self.focus_lock is not None and calibration is not self.focus_lock.calibration:
            # The lock's setpoint was measured with the old calibration: release it rather than hold the
            # focus with a depth scale that no longer applies.
            self.focus_lock_check.setChecked(False)
            self.statusBar().showMessage("Focus lock released: the depth calibration changed", 10000)
        self._update_calibration_label()
        self._warn_if_averaged(calibration)
        self._trace.clear()
        self._redraw()

    def _warn_if_averaged(self, calibration: Any) -> None:
        """The live view maps each frame once; a calibration fitted on dihedral-averaged maps reads them a
        little differently (``livepsf calibrate --dihedral-average``), so say so rather than stay silent."""
        if calibration is not None and getattr(calibration, "dihedral_average", False):
            self.statusBar().showMessage("This calibration was fitted on dihedral-averaged PSF maps; the live "
                                         "view maps each frame once, so its depth may be a little off", 20000)

    def _update_calibration_label(self) -> None:
        cal = self.calibration
        if cal is None:
            self.calibration_label.setText("Uncalibrated: load a calibration or calibrate on a tilted grid.")
        else:
            self.calibration_label.setText(f"{getattr(cal, 'summary', lambda: str(cal))()}")

    def _on_load_calibration(self) -> None:
        path, _ = QtWidgets.QFileDialog.getOpenFileName(self, "Depth calibration", "", "Calibration (*.json)")
        if not path:
            return
        try:
            from livepsf.depth import Calibration

            self.set_calibration(Calibration.load(path, model=self.model))
        except Exception as exc:
            QtWidgets.QMessageBox.warning(self, "Calibration not loaded", str(exc))

    def _on_calibrate(self) -> None:
        self.open_calibration_dialog()

    def open_calibration_dialog(self) -> Any:
        """Show the tilted-grid calibration dialog (the same one each time, with the frames snapped so far);
        its "Use" button sets this window's calibration."""
        from livepsf.gui.calibration import CalibrationDialog

        # One dialog per window, shown again on every "Calibrate…": a new one each time left the hidden
        # old ones (with their frames and plots) alive as children of the window for as long as it is open.
        dialog = self._calibration_dialog
        if dialog is None:
            dialog = self._calibration_dialog = CalibrationDialog(self, demo=self.demo)
            dialog.calibrated.connect(self.set_calibration)
        dialog.show()
        dialog.raise_()
        return dialog

    def current_frame(self) -> np.ndarray:
        """The newest frame: from the live loop when running, else a fresh snap."""
        result = self.loop.latest() if self.loop.is_running else None
        if result is not None:
            return result.frame.copy()
        self.core.snapImage()
        return np.asarray(self.core.getImage())

    # -- recording ---------------------------------------------------------------------------------
    def _on_record_toggled(self, on: bool) -> None:
        if on:
            path, _ = QtWidgets.QFileDialog.getSaveFileName(
                self, "Record to", str(Path.cwd() / "livepsf-recording.ome.tif"), "OME-TIFF (*.ome.tif)")
            if not path or not self.start_recording(path):
                self._set_record_button(False)
        else:
            self.stop_recording()

    def _set_record_button(self, on: bool) -> None:
        self.record_button.blockSignals(True)
        self.record_button.setChecked(on)
        self.record_button.setText("Stop recording" if on else "Start recording")
        self.record_button.blockSignals(False)

    def start_recording(self, path: str | Path) -> bool:
        """Record the mapped frames with their PSF maps to an OME-TIFF (a free name near ``path``)."""
        recorder_cls = _recorder_class()
        if recorder_cls is None:
            self._on_error("recording needs livepsf.acquisition.recorder")
            return False
        from livepsf.acquisition.loop import ResultRecorder

        try:
            pixel_um = float(self.core.getPixelSizeUm()) or self.model.optics.pixel_size_um
        except Exception:
            pixel_um = self.model.optics.pixel_size_um
        try:
            exposure = float(self.core.getExposure())
        except Exception:
            exposure = None
        try:
            recorder = recorder_cls(path, pixel_size_um=pixel_um, metadata={
                "source": "livepsf live window", "model_name": self.model.name,
                "model_sha256": self.model.card.weights_sha256, "stride_px": self.stride_px,
                "camera": self.core.getCameraDevice()})
        except Exception as exc:
            self._on_error(f"recording not started: {exc}")
            return False
        self._recorder = ResultRecorder(recorder, exposure_ms=exposure)
        self.loop.resultReady.connect(self._recorder.submit)
        self._set_record_button(True)
        self.record_label.setText(f"recording to {recorder.path}")
        return True

    def stop_recording(self) -> Path | None:
        """Finish the recording; returns its path (``None`` if none was running)."""
        rec, self._recorder = self._recorder, None
        self._set_record_button(False)
        if rec is None:
            return None
        self.loop.resultReady.disconnect(rec.submit)
        try:
            path = rec.close()
        except Exception as exc:
            self._on_error(f"recording not closed cleanly: {exc}")
            return None
        self.record_label.setText(f"saved {rec.written} frames to {path}{_recording_problems(rec)}")
        return Path(path)

    def _update_record_label(self) -> None:
        rec = self._recorder
        if rec is not None:
            progress = f"recording to {rec.recorder.path}: {rec.written} frames"
            self.record_label.setText(progress + _recording_problems(rec))

    # -- drawing -----------------------------------------------------------------------------------
    def _store_result(self, result: LiveResult) -> None:
        # Consumer thread: keep the newest only; the draw timer picks it up.
        self._pending = result

    def _draw_latest(self) -> None:
        result = self._pending
        if result is None or result is self._drawn:
            return
        self.draw_result(result)
        self.loop.note_drawn(result)

    def _redraw(self, *args: Any) -> None:
        if self._drawn is not None:
            self.draw_result(self._drawn, trace=False)

    def overlay_kind(self) -> str:
        return self.overlay_combo.currentData() or "none"

    def set_overlay(self, kind: str) -> None:
        """Select an overlay by name (see :data:`livepsf.gui.overlays.OVERLAYS`)."""
        idx = self.overlay_combo.findData(kind)
        if idx < 0:
            raise ValueError(f"overlay {kind!r} is not available for model {self.model.name}")
        self.overlay_combo.setCurrentIndex(idx)

    def _refresh_overlay_choices(self) -> None:
        current = self.overlay_kind() if self.overlay_combo.count() else "focus"
        self.overlay_combo.blockSignals(True)
        self.overlay_combo.clear()
        for kind in ov.available_overlays(self.model.spec.name):
            self.overlay_combo.addItem(ov.OVERLAYS[kind], userData=kind)
        idx = self.overlay_combo.findData(current)
        self.overlay_combo.setCurrentIndex(max(idx, 0))
        self.overlay_combo.blockSignals(False)
        self._on_overlay_changed()

    def _on_overlay_changed(self, *args: Any) -> None:
        self._trace.clear()
        self._redraw()

    def _on_roi_toggled(self, on: bool) -> None:
        self.roi.setVisible(on)
        if on and self._frame_shape is not None:
            h, w = self._frame_shape
            self.roi.setPos((w / 4, h / 4))
            self.roi.setSize((w / 2, h / 2))
        self._trace.clear()

    def _lut(self, name: str) -> np.ndarray:
        if name not in self._lut_cache:
            self._lut_cache[name] = ov.lookup_table(name)
        return self._lut_cache[name]

    def draw_result(self, result: LiveResult, trace: bool = True) -> None:
        """Draw one result (frame, overlay, glyphs, hatch, trace point)."""
        frame = result.frame
        pmap = result.pmap
        shape = (int(frame.shape[0]), int(frame.shape[1]))
        if shape != self._frame_shape:
            self._frame_shape = shape
            self.view.setRange(QtCore.QRectF(0, 0, shape[1], shape[0]), padding=0)
            self._place_scalebar(shape, pmap.optics.pixel_size_um)
        levels = None
        if self.autolevel_check.isChecked():
            sample = frame[::4, ::4]
            lo, hi = np.percentile(sample, (0.5, 99.8))
            levels = (float(lo), float(max(hi, lo + 1)))
        if levels is not None and self._levels is not None:
            # Keep the contrast steady: follow the frame only when it moved by more than a few percent.
            lo0, hi0 = self._levels
            if max(abs(levels[0] - lo0), abs(levels[1] - hi0)) < 0.03 * (hi0 - lo0):
                levels = self._levels
        if levels is None:
            levels = tuple(self.histogram.getLevels())
        self.frame_item.setImage(frame, autoLevels=False, levels=levels)
        if levels != self._levels:
            self._levels = levels
            self.histogram.setLevels(*levels)
        now = time.monotonic()
        if now - self._histogram_at > _HISTOGRAM_INTERVAL_S:
            # The histogram of a megapixel frame is not needed at camera rate.
            self._histogram_at = now
            self.histogram.imageChanged(autoLevel=False)

        kind = self.overlay_kind()
        field, fade, unknown = self._overlay_field(result, kind)
        opacity = self.opacity_slider.value() / 100.0
        small = (max(1, shape[0] // _OVERLAY_DOWNSAMPLE), max(1, shape[1] // _OVERLAY_DOWNSAMPLE))
        rgba = None
        if field.grid is not None:
            rgba = ov.overlay_rgba(pmap, field, small, opacity, self._lut(field.colormap), fade)
        if rgba is None:
            self.overlay_item.hide()
            self.colorbar.hide()
        else:
            self.overlay_item.setImage(rgba, autoLevels=False, levels=(0, 255))
            self.overlay_item.setRect(QtCore.QRectF(0, 0, shape[1], shape[0]))
            self.overlay_item.show()
            look = (field.colormap, field.levels, field.label)
            if look != self._colorbar_look:  # re-laying out the colour bar every frame is costly
                self._colorbar_look = look
                self.colorbar.setColorMap(pg.colormap.get(field.colormap))
                self.colorbar.setLevels(field.levels)
                self.colorbar.axis.setLabel(field.label)
            self.colorbar.show()
        self.message_item.setText(field.message)
        self.message_item.setPos(8, 8)
        self.message_item.setVisible(bool(field.message))

        if self.hatch_check.isChecked():
            path = QtGui.QPainterPath()
            # The depth overlay also hatches windows that tell nothing about depth themselves (σ = inf, or
            # as wide as a quarter of the colour range): the surface there is borrowed from neighbours.
            mask = None if unknown is None else pmap.invalid_mask | unknown
            for x, y, w, h in ov.invalid_cells(pmap, mask):
                path.addRect(QtCore.QRectF(x, y, w, h))
            self.invalid_item.setPath(path)
            self.invalid_item.show()
        else:
            self.invalid_item.hide()

        if self.glyph_check.isChecked() and kind != "none":
            scale = ov.glyph_scale(pmap)
            x, y, connect = ov.ellipse_polyline(pmap, scale=scale)
            self.glyph_item.setData(x, y, connect=connect)
            self.glyph_item.show()
            note = "PSF glyphs: 2σ outline" + ("" if scale >= 0.999 else f" × {scale:.2f}")
        else:
            self.glyph_item.hide()
            note = ""
        if kind == "astigmatism":
            x, y, connect = ov.axis_sticks(pmap)
            self.axis_item.setData(x, y, connect=connect)
            self.axis_item.show()
            note += ("; " if note else "") + "blue sticks: astigmatism axis"
        else:
            self.axis_item.hide()
        px_um = pmap.optics.pixel_size_um
        field_text = f"field {shape[1] * px_um:.0f} × {shape[0] * px_um:.0f} µm"
        self.scale_item.setText(f"{note}   {field_text}".strip())
        self.scale_item.setPos(shape[1] - 6, shape[0] - 6)

        if trace:
            self._add_trace_point(result, field, pmap)
        self._drawn = result
        self.draw_count += 1

    def _overlay_field(self, result: LiveResult, kind: str
                       ) -> tuple[ov.OverlayField, np.ndarray | None, np.ndarray | None]:
        """The overlay's field and, for depth, how much to fade each window and which ones to hatch.

        Depth shows the surface fused across the windows when the loop made one (one smooth field, also
        where single windows read nothing or the mirrored depth), faded by the surface's own σ; windows
        whose own depth tells nothing are hatched. Without a surface: the windows' depth, faded by their σ.
        """
        cal = self.calibration
        if kind != "depth" or cal is None:
            return ov.overlay_field(result.pmap, kind), None, None
        span = ov.depth_range_um(cal)
        surface = result.depth_surface
        grid = surface.depth_um if surface is not None else result.depth_um
        field = ov.overlay_field(result.pmap, kind, grid, span, fused=surface is not None)
        own = None if result.depth_sigma_um is None else ov.depth_uncertainty(result.depth_sigma_um, span)
        fade = ov.depth_uncertainty(surface.sigma_um, span) if surface is not None else own
        return field, fade, None if own is None else own >= 1.0

    def _place_scalebar(self, shape: tuple[int, int], pixel_size_um: float) -> None:
        """A round-length scale bar (about a sixth of the field) at the bottom left."""
        field_um = shape[1] * pixel_size_um
        target = field_um / 6
        length_um = max(v for v in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000) if v <= max(target, 1))
        length_px = length_um / pixel_size_um
        margin = shape[1] * 0.03
        height = max(3.0, shape[0] * 0.008)
        self.scalebar_item.setRect(QtCore.QRectF(margin, shape[0] - margin - height, length_px, height))
        self.scalebar_label.setText(f"{length_um:g} µm")
        self.scalebar_label.setPos(margin + length_px / 2, shape[0] - margin - height - 0.02 * shape[0])

    def _trace_field(self, result: LiveResult, field: ov.OverlayField) -> ov.OverlayField:
        # The trace follows depth when calibrated and depth is shown, else the defocus (or blur width).
        if field.kind == "depth" and field.grid is not None:
            return field
        kind = "focus" if "focus" in result.pmap.params else "blur"
        return ov.overlay_field(result.pmap, kind)

    def _add_trace_point(self, result: LiveResult, field: ov.OverlayField, pmap: Any) -> None:
        tfield = self._trace_field(result, field)
        if tfield.kind != self._trace_kind:
            self._trace.clear()
            self._trace_kind = tfield.kind
            self.trace_plot.setLabel("left", tfield.axis_label)  # the trace is short: the long one is cut
        roi = None
        if self.roi_check.isChecked():
            (x, y), (w, h) = self.roi.pos(), self.roi.size()
            roi = (float(x), float(y), float(w), float(h))
        value = ov.region_mean(tfield, pmap, roi)
        z = result.stage_z_um if result.stage_z_um is not None else float("nan")
        if not self._trace:
            # A real focus drive may read thousands of µm: then plot its moves relative to where the
            # trace began (the simulator's Z is already relative to focus).
            self._z_ref = z if np.isfinite(z) and abs(z) > _ABSOLUTE_Z_UM else 0.0
            self._set_legend(1, f"stage Z − {self._z_ref:.1f} µm" if self._z_ref else "stage Z (µm)")
            self._set_legend(0, "mean over the ROI" if roi is not None else "mean over the frame")
        z -= self._z_ref if np.isfinite(self._z_ref) else 0.0
        now = time.monotonic()
        self._trace.append((now, value, z))
        horizon = now - self.trace_seconds.value()
        while self._trace and self._trace[0][0] < horizon:
            self._trace.popleft()
        if now - self._trace_drawn_at < _TRACE_INTERVAL_S:
            return  # the trace is for the eye: a few updates a second, not one per frame
        self._trace_drawn_at = now
        data = np.asarray(self._trace, dtype=np.float64)
        t = data[:, 0] - now
        self.trace_curve.setData(t, data[:, 1], connect="finite")
        if np.isfinite(data[:, 2]).any():
            self.stage_curve.setData(t, data[:, 2], connect="finite")
        if self.trace_plot.viewRange()[0] != [-self.trace_seconds.value(), 0]:
            self.trace_plot.setXRange(-self.trace_seconds.value(), 0, padding=0)

    def _set_legend(self, index: int, text: str) -> None:
        legend = self.trace_plot.plotItem.legend
        if legend is not None and index < len(legend.items):
            legend.items[index][1].setText(text)

    def _update_stats(self) -> None:
        self._update_focus_lock_label()
        self._update_record_label()
        stats = self.loop.stats()
        state = "live" if stats.running else "stopped"
        shape = f"{stats.frame_shape[1]}×{stats.frame_shape[0]}" if stats.frame_shape else ""
        self.stats_label.setText(f"{state} {shape} · {stats.line()}")

    def grab_view(self) -> QtGui.QPixmap:
        """The image, overlay and colour bars as a pixmap (snapshots)."""
        return self.graphics.grab()


def _point_size_font(point_size: int) -> QtGui.QFont:
    """The application's default font at ``point_size``.

    Fonts for pyqtgraph items must name a family: pyqtgraph draws axes into a ``QPicture``, and Qt 6.9 to
    6.11 serialise a font with an empty family list there by reading its first family, which is out of
    bounds (a segfault on the first paint). ``QFont("", size)`` is such a font; this one is not.
    """
    font = QtGui.QFont(QtGui.QGuiApplication.font())
    font.setPointSize(point_size)
    return font


def _recorder_class() -> Any:
    """The Recorder of :mod:`livepsf.acquisition.recorder`, when that module exists."""
    try:
        from livepsf.acquisition import recorder
    except ImportError:
        return None
    return getattr(recorder, "Recorder", None)


def _recording_problems(rec: Any) -> str:
    """What went wrong in a recording so far, as a suffix for the status label ("" when nothing)."""
    text = ""
    if rec.dropped:
        text += f" ({rec.dropped} dropped: the disk was slower than the maps)"
    if rec.error:
        text += f"; stopped: {rec.error}"
    return text

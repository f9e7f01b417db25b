"""The calibration plot (metric against known height, residuals below) as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from livepsf.depth.calibration import Calibration

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]


def plot_calibration(cal: Calibration, path: str | Path, size: tuple[int, int] = (900, 800)) -> Path:
    """Draw metric vs known height per tilt with the fitted line, and the residuals below, as PNG.

    Uses pyqtgraph's image exporter on an offscreen scene (no display needed).
    """
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import pyqtgraph as pg
    import pyqtgraph.exporters
    from qtpy import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])
    pg.setConfigOptions(antialias=True, background="w", foreground="k")
    layout = pg.GraphicsLayoutWidget()
    layout.setFixedSize(*size)
    top = layout.addPlot(row=0, col=0)
    bottom = layout.addPlot(row=1, col=0)
    layout.ci.layout.setRowStretchFactor(0, 3)
    layout.ci.layout.setRowStretchFactor(1, 2)
    top.setTitle(f"Depth calibration — {cal.metric} metric, model {cal.model_name}, "
                 f"R² = {cal.r2:.4f}")
    for plot in (top, bottom):
        for side in ("left", "bottom"):
            plot.getAxis(side).enableAutoSIPrefix(False)  # µm stay µm, no "x0.001"
    top.setLabel("left", f"{cal.metric} metric (waves)")
    top.setLabel("bottom", "known height (µm)")
    bottom.setLabel("left", "depth error (µm)")
    bottom.setLabel("bottom", "known height (µm)")
    top.addLegend(offset=(10, 10))
    top.showGrid(x=True, y=True, alpha=0.25)
    bottom.showGrid(x=True, y=True, alpha=0.25)

    frames = sorted({p.frame for p in cal.points})
    tilts = sorted({p.tilt_deg for p in cal.points})
    all_h = np.array([p.height_um for p in cal.points]) if cal.points else np.array([-1.0, 1.0])
    for frame in frames:
        pts = [p for p in cal.points if p.frame == frame]
        tilt = pts[0].tilt_deg
        colour = _COLOURS[tilts.index(tilt) % len(_COLOURS)]
        h = np.array([p.height_um for p in pts])
        m = np.array([p.metric for p in pts])
        resid = cal.slope_um_per_unit * m + cal.offset_um - h
        first_of_tilt = frame == min(p.frame for p in cal.points if p.tilt_deg == tilt)
        stat = next((r for r in cal.per_tilt if r.tilt_deg == tilt), None)
        label = f"{tilt:g}°" + (f"  (|err| {stat.mean_abs_error_um:.2f} µm)" if stat else "")
        top.plot(h, m, pen=None, symbol="o", symbolSize=7, symbolBrush=colour, symbolPen=None,
                 name=label if first_of_tilt else None)
        bottom.plot(h, resid, pen=None, symbol="o", symbolSize=6, symbolBrush=colour, symbolPen=None)
    lo, hi = float(all_h.min()), float(all_h.max())
    span = np.array([lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)])
    line = (span - cal.offset_um) / cal.slope_um_per_unit
    top.plot(span, line, pen=pg.mkPen("k", width=2), name=f"fit: {cal.slope_um_per_unit:.2f} µm/unit")
    bottom.addLine(y=0, pen=pg.mkPen("k", width=1))
    bottom.setXLink(top)

    layout.show()
    app.processEvents()
    exporter = pg.exporters.ImageExporter(layout.scene())
    exporter.parameters()["width"] = size[0]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    exporter.export(str(path))
    layout.close()
    return path

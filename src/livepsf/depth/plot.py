"""The calibration plot (metric against known height with the curve and the line, residuals below) as a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from livepsf.depth.calibration import Calibration

_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]


def plot_calibration(cal: Calibration, path: str | Path, size: tuple[int, int] = (900, 800)) -> Path:
    """Draw metric vs known height with the calibration curve and the line, and the residuals below, as PNG.

    Points are coloured by tilt (tilted grid) or drawn as one series of stage positions (z-stack); the
    curve (black) is the one depth uses, the line (dashed grey) the robust line kept for comparison;
    residuals are the curve's. Uses pyqtgraph's image exporter on an offscreen scene (no display needed).
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
    lofo = "" if cal.lofo_mean_abs_error_um is None else f", leave-one-out {cal.lofo_mean_abs_error_um:.2f} µm"
    top.setTitle(f"Depth calibration ({cal.source}) — {cal.metric} metric, model {cal.model_name}<br>"
                 f"R² = {cal.r2:.4f}, |error| {cal.mean_abs_error_um:.2f} µm{lofo}")
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

    all_h = np.array([p.height_um for p in cal.points]) if cal.points else np.array([-1.0, 1.0])
    all_m = np.array([p.metric for p in cal.points]) if cal.points else np.array([-0.1, 0.1])
    for label, pts in _point_series(cal):
        colour = _COLOURS[len(top.listDataItems()) % len(_COLOURS)]
        h = np.array([p.height_um for p in pts])
        m = np.array([p.metric for p in pts])
        resid = cal.metric_to_depth_um(m).astype(np.float64) - h
        top.plot(h, m, pen=None, symbol="o", symbolSize=7, symbolBrush=colour, symbolPen=None, name=label)
        bottom.plot(h, resid, pen=None, symbol="o", symbolSize=6, symbolBrush=colour, symbolPen=None)
    # The curve maps metric -> height; drawn over the metric range of the points (and a little beyond).
    lo, hi = float(all_m.min()), float(all_m.max())
    metric = np.linspace(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo), 400)
    if cal.curve is not None and cal.curve.kind == "monotone":
        top.plot(cal.curve.height_um(metric), metric, pen=pg.mkPen("k", width=2),
                 name=f"monotone curve ({len(cal.curve.metric_knots)} knots)")
        top.plot(cal.curve.height_knots_um, cal.curve.metric_knots, pen=None, symbol="s", symbolSize=6,
                 symbolBrush=None, symbolPen=pg.mkPen("k", width=1))
    h_lo, h_hi = float(all_h.min()), float(all_h.max())
    span = np.array([h_lo - 0.05 * (h_hi - h_lo), h_hi + 0.05 * (h_hi - h_lo)])
    dashed = cal.curve is not None and cal.curve.kind == "monotone"
    top.plot(span, (span - cal.offset_um) / cal.slope_um_per_unit,
             pen=pg.mkPen((120, 120, 120) if dashed else "k", width=2,
                          style=pg.QtCore.Qt.PenStyle.DashLine if dashed else pg.QtCore.Qt.PenStyle.SolidLine),
             name=f"line: {cal.slope_um_per_unit:.2f} µm/unit")
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


def write_calibration_files(cal: Calibration, path: str | Path) -> tuple[Path, Path]:
    """Save ``cal`` as JSON at ``path`` and its plot (:func:`plot_calibration`) as a PNG beside it.

    Parameters
    ----------
    cal
        The calibration to save.
    path
        The JSON file to write; an existing file is never replaced (:meth:`Calibration.save`).

    Returns
    -------
    tuple of Path
        The JSON and the PNG written. The PNG is ``<name>.png`` beside the JSON, or ``<name>-1.png``, ...
        when that exists (:func:`livepsf.imageio.output_path`).

    Raises
    ------
    InputError
        ``path`` already exists.
    """
    from livepsf.imageio import output_path

    json_path = cal.save(path)
    return json_path, plot_calibration(cal, output_path(json_path, ".png"))


def _point_series(cal: Calibration) -> list[tuple[str, list]]:
    """``(legend label, points)``: one series per tilt (tilted grid) or one of stage positions (z-stack)."""
    if cal.source == "z-stack":
        label = "stage positions" + (f"  (|err| {cal.mean_abs_error_um:.2f} µm)" if cal.points else "")
        return [(label, list(cal.points))]
    series = []
    for tilt in sorted({p.tilt_deg for p in cal.points}):
        stat = next((r for r in cal.per_tilt if r.tilt_deg == tilt), None)
        label = f"{tilt:g}°" + (f"  (|err| {stat.mean_abs_error_um:.2f} µm)" if stat else "")
        series.append((label, [p for p in cal.points if p.tilt_deg == tilt]))
    return series

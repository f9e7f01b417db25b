"""A printable calibration grid at true physical scale (SVG, or PDF through Qt).

Paper Section III-E calibrates depth with a grid of 200 µm squares laser-printed on transparent foil and
tilted by a known angle. :func:`grid_layout` computes the page once, in millimetres; :func:`grid_svg` and
:func:`write_grid_pdf` draw the same layout, so the two outputs cannot drift apart. Each page carries two
10 mm scale bars (horizontal and vertical: printers may scale the axes differently) and the short
instructions a user needs at the microscope.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from livepsf.errors import InputError

__all__ = ["PAPER_SIZES_MM", "GridLayout", "grid_layout", "grid_svg", "write_grid", "write_grid_pdf"]

PAPER_SIZES_MM: dict[str, tuple[float, float]] = {"a4": (210.0, 297.0), "letter": (215.9, 279.4)}

# Page furniture, mm.
_MARGIN_MM = 12.0
_HEADER_MM = 40.0
_FOOTER_MM = 28.0
_SCALE_BAR_MM = 10.0
_FONT_MM = 3.2
# A 600 dpi laser printer puts dots 42 µm apart: thinner lines print unevenly or not at all.
_PRINTER_DOT_UM = 42.3


@dataclass(frozen=True)
class Rect:
    """A filled black rectangle, mm from the page's top-left corner."""

    x: float
    y: float
    w: float
    h: float


@dataclass(frozen=True)
class Text:
    """One line of text; ``y`` is its baseline, mm."""

    x: float
    y: float
    text: str
    size_mm: float = _FONT_MM
    bold: bool = False


@dataclass(frozen=True)
class GridLayout:
    """Everything on the page, in millimetres.

    Attributes
    ----------
    square_um, line_um
        Grid period (line centre to line centre) and line width.
    n_squares
        ``(columns, rows)`` of squares.
    grid_rect
        Outer extent of the grid (x, y, w, h), mm.
    """

    paper: str
    page_mm: tuple[float, float]
    square_um: float
    line_um: float
    n_squares: tuple[int, int]
    grid_rect: tuple[float, float, float, float]
    rects: list[Rect] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)


def grid_layout(square_um: float = 200.0, line_um: float | None = None, paper: str = "a4") -> GridLayout:
    """Lay out a grid page.

    Parameters
    ----------
    square_um
        Grid period in µm (the paper: 200 µm squares). 50 µm to 10 mm.
    line_um
        Line width in µm; default a quarter of the period, at least one 600-dpi printer dot.
    paper
        ``"a4"`` or ``"letter"``.

    Raises
    ------
    InputError
        Out-of-range sizes or an unknown paper.
    """
    paper = str(paper).lower()
    if paper not in PAPER_SIZES_MM:
        raise InputError(f"unknown paper {paper!r}; choose one of {', '.join(PAPER_SIZES_MM)}")
    if not (math.isfinite(square_um) and 50.0 <= square_um <= 10_000.0):
        raise InputError(f"--square-um must be between 50 and 10000 µm, got {square_um}")
    if line_um is None:
        line_um = max(square_um / 4.0, _PRINTER_DOT_UM)
    if not (math.isfinite(line_um) and 0 < line_um < square_um / 1.5):
        raise InputError(f"--line-um must be positive and below two thirds of the square "
                         f"({square_um:g} µm), "
                         f"got {line_um}")
    page_w, page_h = PAPER_SIZES_MM[paper]
    pitch = square_um / 1000.0
    line = line_um / 1000.0
    avail_w = page_w - 2 * _MARGIN_MM
    avail_h = page_h - 2 * _MARGIN_MM - _HEADER_MM - _FOOTER_MM
    nx = int((avail_w - line) // pitch)
    ny = int((avail_h - line) // pitch)
    grid_w, grid_h = nx * pitch + line, ny * pitch + line
    x0 = (page_w - grid_w) / 2.0
    y0 = _MARGIN_MM + _HEADER_MM + (avail_h - grid_h) / 2.0

    rects = [Rect(x0 + i * pitch, y0, line, grid_h) for i in range(nx + 1)]
    rects += [Rect(x0, y0 + j * pitch, grid_w, line) for j in range(ny + 1)]

    texts = [
        Text(_MARGIN_MM, _MARGIN_MM + 5, "livepsf depth-calibration grid", 5.0, bold=True),
        Text(_MARGIN_MM, _MARGIN_MM + 11,
             f"Squares {square_um:g} µm (line centre to centre), lines {line_um:g} µm, "
             f"{nx} x {ny} squares, {paper.upper()}."),
        Text(_MARGIN_MM, _MARGIN_MM + 16.5,
             "1. Print at 100 % (actual size; no 'fit to page') on transparency film with a laser printer."),
        Text(_MARGIN_MM, _MARGIN_MM + 21.5,
             "2. Measure both 10 mm scale bars with a ruler: if either is not 10 mm, the printer rescaled."),
        Text(_MARGIN_MM, _MARGIN_MM + 26.5,
             "3. Tilt the film by a known angle (e.g. 3°, 6°, 10°) with the in-focus line mid-field,"),
        Text(_MARGIN_MM + 4, _MARGIN_MM + 31,
             "cylindrical lens in place; record a frame per angle."),
        Text(_MARGIN_MM, _MARGIN_MM + 36,
             "4. livepsf calibrate IMAGE... --tilt-deg D... --pixel-size-um P --tilt-axis x|y"),
    ]
    if line_um < _PRINTER_DOT_UM:
        texts.append(Text(_MARGIN_MM, _MARGIN_MM + 40.5,
                          f"Note: {line_um:g} µm lines are thinner than a 600 dpi printer dot "
                          f"({_PRINTER_DOT_UM:g} µm).", _FONT_MM * 0.9))

    # Scale bars: 10 mm, 1 mm thick, with end and millimetre ticks; one horizontal, one vertical.
    bar_y = page_h - _MARGIN_MM - 12.0
    bar_x = _MARGIN_MM
    rects.append(Rect(bar_x, bar_y, _SCALE_BAR_MM, 1.0))
    for k in range(11):
        tick = 3.0 if k in (0, 5, 10) else 1.8
        rects.append(Rect(bar_x + k * 1.0 - (0.15 if k == 10 else 0.0), bar_y - tick, 0.15, tick))
    texts.append(Text(bar_x, bar_y + 5.5, "10 mm (horizontal)"))
    vbar_x = bar_x + 55.0
    vbar_y = bar_y + 1.0 - _SCALE_BAR_MM
    rects.append(Rect(vbar_x, vbar_y, 1.0, _SCALE_BAR_MM))
    for k in range(11):
        tick = 3.0 if k in (0, 5, 10) else 1.8
        rects.append(Rect(vbar_x + 1.0, vbar_y + k * 1.0 - (0.15 if k == 10 else 0.0), tick, 0.15))
    texts.append(Text(vbar_x + 5.0, bar_y + 1.0, "10 mm (vertical)"))
    texts.append(Text(page_w - _MARGIN_MM - 62.0, bar_y + 5.5,
                      "Print at 100 % — never 'fit to page'.", _FONT_MM, bold=True))
    return GridLayout(paper, (page_w, page_h), float(square_um), float(line_um), (nx, ny),
                      (x0, y0, grid_w, grid_h), rects, texts)


def grid_svg(layout: GridLayout) -> str:
    """The layout as an SVG document whose user unit is 1 mm (width/height given in mm)."""
    page_w, page_h = layout.page_mm
    # All rectangles in one path keeps the file small (a few hundred kB for 200 µm squares on A4).
    path = "".join(f"M{r.x:.4f} {r.y:.4f}h{r.w:.4f}v{r.h:.4f}h{-r.w:.4f}z" for r in layout.rects)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{page_w:g}mm" height="{page_h:g}mm" '
        f'viewBox="0 0 {page_w:g} {page_h:g}">',
        f"<title>livepsf calibration grid, {layout.square_um:g} µm squares, {layout.paper.upper()}</title>",
        f'<rect x="0" y="0" width="{page_w:g}" height="{page_h:g}" fill="white"/>',
        f'<path fill="black" fill-rule="nonzero" shape-rendering="crispEdges" d="{path}"/>',
    ]
    for t in layout.texts:
        weight = ' font-weight="bold"' if t.bold else ""
        lines.append(f'<text x="{t.x:.3f}" y="{t.y:.3f}" font-family="Helvetica, Arial, sans-serif" '
                     f'font-size="{t.size_mm:g}"{weight} fill="black">{escape(t.text)}</text>')
    lines.append("</svg>")
    return "\n".join(lines) + "\n"


def write_grid_pdf(layout: GridLayout, path: str | Path) -> Path:
    """Draw the layout into a one-page PDF with Qt's QPdfWriter (1200 dpi, no margins)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qtpy import QtCore, QtGui, QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([])  # noqa: F841 (fonts need it)
    path = Path(path)
    writer = QtGui.QPdfWriter(str(path))
    page_w, page_h = layout.page_mm
    writer.setPageSize(QtGui.QPageSize(QtCore.QSizeF(page_w, page_h), QtGui.QPageSize.Unit.Millimeter,
                                       f"livepsf {layout.paper}", QtGui.QPageSize.SizeMatchPolicy.ExactMatch))
    writer.setPageMargins(QtCore.QMarginsF(0, 0, 0, 0), QtGui.QPageLayout.Unit.Millimeter)
    dpi = 1200
    writer.setResolution(dpi)
    writer.setTitle(f"livepsf calibration grid, {layout.square_um:g} um squares")
    painter = QtGui.QPainter(writer)
    try:
        scale = dpi / 25.4  # device pixels per mm
        painter.scale(scale, scale)
        painter.setPen(QtCore.Qt.PenStyle.NoPen)
        black = QtGui.QColor(0, 0, 0)
        for r in layout.rects:
            painter.fillRect(QtCore.QRectF(r.x, r.y, r.w, r.h), black)
        painter.setPen(black)
        for t in layout.texts:
            font = QtGui.QFont("Helvetica")
            # Point sizes are physical (1/72 in); the painter is scaled to mm, so size the font in mm
            # through a pixel size on an unscaled painter.
            font.setBold(t.bold)
            painter.save()
            painter.scale(1.0 / scale, 1.0 / scale)
            font.setPixelSize(max(1, round(t.size_mm * scale)))
            painter.setFont(font)
            painter.drawText(QtCore.QPointF(t.x * scale, t.y * scale), t.text)
            painter.restore()
    finally:
        painter.end()
    return path


def write_grid(path: str | Path, square_um: float = 200.0, line_um: float | None = None,
               paper: str = "a4", overwrite: bool = False) -> GridLayout:
    """Write a grid page to ``path``: SVG for ``.svg``, PDF for ``.pdf``.

    Raises
    ------
    InputError
        Bad sizes, an unknown paper or suffix, or an existing file (unless ``overwrite``).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".svg", ".pdf"):
        raise InputError(f"{path}: the grid is written as .svg or .pdf, not {suffix or '(no suffix)'}")
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; choose another --out")
    layout = grid_layout(square_um, line_um, paper)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".svg":
        path.write_text(grid_svg(layout), encoding="utf-8")
    else:
        write_grid_pdf(layout, path)
    return layout

"""The printable calibration grid: true scale, scale bars, instructions, SVG and PDF output, CLI."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from livepsf.errors import InputError
from livepsf.grid import PAPER_SIZES_MM, grid_layout, grid_svg, write_grid

SVG_NS = {"svg": "http://www.w3.org/2000/svg"}


def _path_rects(svg: str) -> list[tuple[float, float, float, float]]:
    root = ET.fromstring(svg)
    d = root.find("svg:path", SVG_NS).attrib["d"]
    nums = r"(-?[\d.]+)"
    return [tuple(map(float, m)) for m in re.findall(rf"M{nums} {nums}h{nums}v{nums}h-?[\d.]+z", d)]


@pytest.mark.parametrize("paper", ["a4", "letter"])
def test_svg_is_true_scale(paper):
    layout = grid_layout(200.0, paper=paper)
    svg = grid_svg(layout)
    root = ET.fromstring(svg)
    w, h = PAPER_SIZES_MM[paper]
    assert root.attrib["width"] == f"{w:g}mm" and root.attrib["height"] == f"{h:g}mm"
    assert root.attrib["viewBox"] == f"0 0 {w:g} {h:g}"  # one user unit = 1 mm
    rects = _path_rects(svg)
    x0, y0, gw, gh = layout.grid_rect
    vertical = sorted(r[0] for r in rects if r[3] == pytest.approx(gh, abs=1e-3) and r[2] == pytest.approx(0.05))
    assert len(vertical) == layout.n_squares[0] + 1
    pitches = [b - a for a, b in zip(vertical, vertical[1:])]
    assert min(pitches) == pytest.approx(0.2, abs=2e-4) and max(pitches) == pytest.approx(0.2, abs=2e-4)
    # The grid fits on the page with margins.
    assert x0 > 5 and y0 > 5 and x0 + gw < w - 5 and y0 + gh < h - 5


def test_scale_bars_are_10_mm_and_instructions_present():
    layout = grid_layout(200.0)
    svg = grid_svg(layout)
    rects = _path_rects(svg)
    assert any(r[2] == pytest.approx(10.0) and r[3] == pytest.approx(1.0) for r in rects)  # horizontal
    assert any(r[2] == pytest.approx(1.0) and r[3] == pytest.approx(10.0) for r in rects)  # vertical
    text = " ".join(t.text for t in layout.texts)
    assert "100 %" in text and "transparency" in text and "tilt" in text.lower() and "10 mm" in text
    assert "200 µm" in text and "50 µm" in text


def test_line_width_option_and_limits():
    layout = grid_layout(300.0, line_um=60.0)
    assert layout.line_um == 60.0 and layout.square_um == 300.0
    assert grid_layout(100.0).line_um == pytest.approx(42.3)  # never thinner than a printer dot by default
    with pytest.raises(InputError, match="line-um"):
        grid_layout(200.0, line_um=150.0)
    with pytest.raises(InputError, match="square-um"):
        grid_layout(10.0)
    with pytest.raises(InputError, match="paper"):
        grid_layout(200.0, paper="a3")


def test_write_svg_and_pdf(tmp_path):
    svg = tmp_path / "g.svg"
    write_grid(svg)
    ET.parse(svg)  # well-formed
    pdf = tmp_path / "g.pdf"
    write_grid(pdf, paper="letter")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF")
    box = re.search(rb"MediaBox \[0 0 ([\d.]+) ([\d.]+)\]", data)
    # Letter is 612 x 792 points.
    assert float(box.group(1)) == pytest.approx(612, abs=1) and float(box.group(2)) == pytest.approx(792, abs=1)
    # True scale: the content stream maps millimetres to points (72 / 25.4 per mm).
    import zlib

    streams = [zlib.decompress(m.group(1)) for m in re.finditer(rb"stream\r?\n(.*?)endstream", data, re.S)
               if m.group(1)[:2] == b"x\x9c"]
    content = next(t.decode("latin1") for t in streams if b" re" in t)
    page_scale = float(re.search(r"([\d.]+) 0 0 -[\d.]+ 0 [\d.]+ cm", content).group(1))
    mm_scale = float(re.search(r"([\d.]+) 0 0 [\d.]+ 0 0 cm\s+[\d.]+ [\d.]+ [\d.]+ [\d.]+ re", content).group(1))
    assert page_scale * mm_scale == pytest.approx(72 / 25.4, rel=1e-4)
    with pytest.raises(InputError, match="already exists"):
        write_grid(svg)
    with pytest.raises(InputError, match=".svg or .pdf"):
        write_grid(tmp_path / "g.png")


def test_cli_grid(tmp_path, capsys):
    from livepsf.cli import main

    out = tmp_path / "grid.svg"
    with pytest.raises(SystemExit) as exc:
        main(["grid", "--square-um", "200", "--out", str(out), "--paper", "letter", "--line-um", "50"])
    assert exc.value.code in (0, None)
    assert out.is_file() and "Print at 100 %" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["grid", "--out", str(out)])  # exists: refused, not overwritten
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["grid", "--square-um", "5", "--out", str(tmp_path / "tiny.svg")])
    assert exc.value.code == 2 and "square-um" in capsys.readouterr().err

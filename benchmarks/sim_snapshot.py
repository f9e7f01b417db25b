"""Snapshot of the simulated microscope: one camera frame as an annotated PNG (the paper's Fig. 5b look).

    QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/sim_snapshot.py --out docs/sim-printed-grid-6deg.png

Writes the frame (contrast stretched to its 0.5-99.5 % range) with a caption giving the sample, tilt,
lens and stage Z, and a strip under it with the true local defocus along the tilt axis. A second panel
with the lens out can be added (``--compare-lens``) to show the astigmatism the lens brings.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np


def frame_to_qimage(frame: np.ndarray):
    """8-bit grey QImage of a frame, stretched between its 0.5 and 99.5 percentiles."""
    from qtpy.QtGui import QImage

    lo, hi = np.percentile(frame, [0.5, 99.5])
    grey = np.clip((frame.astype(np.float32) - lo) / max(hi - lo, 1e-6) * 255.0, 0, 255).astype(np.uint8)
    grey = np.ascontiguousarray(grey)
    image = QImage(grey.data, grey.shape[1], grey.shape[0], grey.strides[0], QImage.Format.Format_Grayscale8)
    return image.copy()  # own the pixels once the array goes away


def snapshot(out: Path, sample: str = "printed-grid", tilt_deg: float = 6.0, tilt_axis: str = "x",
             z_um: float = 0.0, compare_lens: bool = False, size_px: int = 1024, seed: int = 0) -> Path:
    """Render frames on the simulator and save the annotated PNG; returns the path written."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from qtpy.QtCore import QRect, Qt
    from qtpy.QtGui import QColor, QFont, QImage, QPainter
    from qtpy.QtWidgets import QApplication

    from livepsf.sim import create_core, ground_truth

    app = QApplication.instance() or QApplication([])  # noqa: F841 - QPainter text needs an application
    panels = []
    for lens in ([True, False] if compare_lens else [True]):
        core = create_core(sample=sample, tilt_deg=tilt_deg, tilt_axis=tilt_axis, lens=lens, seed=seed,
                           z_um=z_um, shape=(size_px, size_px))
        core.snapImage()
        frame = core.getImage().copy()
        truth = ground_truth(core)
        panels.append((frame, truth, lens))

    text_px = max(10, size_px // 50)  # captions scale with the frame
    caption_h, strip_h, gap = 3 * text_px + 4, 2 * text_px, 16
    width = size_px * len(panels) + gap * (len(panels) - 1)
    canvas = QImage(width, size_px + caption_h + strip_h, QImage.Format.Format_RGB32)
    canvas.fill(QColor("white"))
    painter = QPainter(canvas)
    font = QFont()
    font.setPixelSize(text_px)
    painter.setFont(font)
    for i, (frame, truth, lens) in enumerate(panels):
        x0 = i * (size_px + gap)
        painter.setPen(QColor("black"))
        text = (f"{sample}, tilt {tilt_deg:g}° along {tilt_axis}, cylindrical lens {'in' if lens else 'out'}, "
                f"stage Z {truth.z_um:g} µm\nbelow: true local defocus Z − height (> 0: sample below focus)")
        painter.drawText(QRect(x0, 0, size_px, caption_h), int(Qt.AlignmentFlag.AlignCenter), text)
        painter.drawImage(x0, caption_h, frame_to_qimage(frame))
        # Strip: the true local defocus along the tilt axis (sampled every 256 px), µm.
        defocus = truth.defocus_um[size_px // 2, :] if tilt_axis == "x" else truth.defocus_um[:, size_px // 2]
        font.setPixelSize(max(9, text_px - 2))
        painter.setFont(font)
        for j in range(0, size_px + 1, size_px // 4):
            jj = min(j, size_px - 1)
            label = f"{defocus[jj]:+.1f} µm" if tilt_axis == "x" else f"row {jj}: {defocus[jj]:+.1f} µm"
            align = Qt.AlignmentFlag.AlignLeft if j == 0 else (Qt.AlignmentFlag.AlignRight if j == size_px else Qt.AlignmentFlag.AlignHCenter)
            box = 10 * text_px
            left = x0 + (j if j == 0 else j - box if j == size_px else j - box // 2)
            painter.drawText(QRect(left, caption_h + size_px, box, strip_h), int(align | Qt.AlignmentFlag.AlignVCenter), label)
        font.setPixelSize(text_px)
        painter.setFont(font)
    painter.end()
    out.parent.mkdir(parents=True, exist_ok=True)
    if not canvas.save(str(out)):
        raise OSError(f"could not write {out}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/sim-printed-grid-6deg.png"))
    parser.add_argument("--sample", default="printed-grid")
    parser.add_argument("--tilt-deg", type=float, default=6.0)
    parser.add_argument("--tilt-axis", default="x")
    parser.add_argument("--z-um", type=float, default=0.0)
    parser.add_argument("--size-px", type=int, default=1024)
    parser.add_argument("--compare-lens", action="store_true")
    args = parser.parse_args()
    path = snapshot(args.out, args.sample, args.tilt_deg, args.tilt_axis, args.z_um, args.compare_lens, args.size_px)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""A contact sheet of training patches with their labels, to look at the data before training.

Drawn with Qt's QPainter on an offscreen QImage (no plotting library): each patch is contrast-stretched
on its own (0.5–99.5 percentiles) and its PSF parameters, in physical units, are printed above it;
invalid patches are captioned in red.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from livepsf.data.dataset import BatchSynthesizer, eval_set
from livepsf.data.degrade import DegradationConfig
from livepsf.optics import Optics, PSFModelSpec, get_psf_model

__all__ = ["preview_batch", "render_contact_sheet", "write_preview"]

_SHORT = {"focus": "f", "astig_0": "a0", "astig_45": "a45", "variance": "var", "variance_x": "vx",
          "variance_y": "vy"}


def preview_batch(
    psf_model: str, n: int = 24, seed: int = 0, optics: Optics | None = None,
    degradation: DegradationConfig | None = None, split: str = "train",
) -> tuple[torch.Tensor, torch.Tensor, PSFModelSpec]:
    """``n`` patches of the training stream (or of the fixed val/test set) with targets and spec."""
    spec = get_psf_model(psf_model)
    optics = optics or Optics()
    if split in ("val", "test"):
        patches, targets = eval_set(spec, split, n=n, degradation=degradation, optics=optics)
        return patches, targets, spec
    synth = BatchSynthesizer(spec, optics, batch_size=n, degradation=degradation, seed=seed, split=split,
                             texture_pool=max(8, min(48, n)), texture_refresh=0.0, psf_pool=n, psf_refresh=n)
    patches, targets = synth.next_batch()
    return patches, targets, spec


def _caption(spec: PSFModelSpec, target: torch.Tensor) -> str:
    values = spec.denormalise(target[1:].to(torch.float64)[None])[0]
    parts = [f"{_SHORT.get(name, name)}={float(v):+.2f}" if spec.kind == "zernike" else
             f"{_SHORT.get(name, name)}={float(v):.1f}" for name, v in zip(spec.names, values)]
    return " ".join(parts)


def render_contact_sheet(patches: torch.Tensor, targets: torch.Tensor, spec: PSFModelSpec, columns: int = 6,
                         scale: int = 2):
    """A QImage of the patches in a grid, each with its label printed above it."""
    from qtpy.QtCore import QRect, Qt
    from qtpy.QtGui import QColor, QFont, QImage, QPainter

    _ensure_app()
    n, _, h, w = patches.shape
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    cell_w, text_h, pad = w * scale, 34, 6
    cell_h = h * scale + text_h
    sheet = QImage(columns * (cell_w + pad) + pad, rows * (cell_h + pad) + pad, QImage.Format.Format_RGB32)
    sheet.fill(QColor(24, 24, 24))
    painter = QPainter(sheet)
    font = QFont("DejaVu Sans Mono")
    font.setStyleHint(QFont.StyleHint.Monospace)
    font.setPixelSize(12)
    painter.setFont(font)
    keep = []  # QImage does not own its buffer: keep the arrays alive until painting ends
    for i in range(n):
        r, c = divmod(i, columns)
        x0, y0 = pad + c * (cell_w + pad), pad + r * (cell_h + pad)
        img = patches[i, 0].to(torch.float64).numpy()
        lo, hi = np.percentile(img, [0.5, 99.5])
        grey = np.clip((img - lo) / max(hi - lo, 1e-9) * 255.0, 0, 255).astype(np.uint8)
        grey = np.ascontiguousarray(np.kron(grey, np.ones((scale, scale), dtype=np.uint8)))
        keep.append(grey)
        qimg = QImage(grey.data, grey.shape[1], grey.shape[0], grey.strides[0],
                      QImage.Format.Format_Grayscale8)
        painter.drawImage(x0, y0 + text_h, qimg)
        invalid = float(targets[i, 0]) > 0.5
        painter.setPen(QColor(255, 90, 90) if invalid else QColor(230, 230, 230))
        line1 = _caption(spec, targets[i])
        raw = patches[i, 0]
        line2 = f"{'INVALID ' if invalid else ''}raw {float(raw.min()):.0f}..{float(raw.max()):.0f}"
        left = int(Qt.AlignmentFlag.AlignLeft)
        painter.drawText(QRect(x0, y0, cell_w, text_h // 2), left, line1)
        painter.drawText(QRect(x0, y0 + text_h // 2, cell_w, text_h // 2), left, line2)
    painter.end()
    return sheet


def write_preview(path: str | Path, psf_model: str = "Z-3", n: int = 24, seed: int = 0, columns: int = 6,
                  split: str = "train") -> Path:
    """Render ``n`` patches of the training data to a PNG at ``path`` and return the path."""
    patches, targets, spec = preview_batch(psf_model, n=n, seed=seed, split=split)
    sheet = render_contact_sheet(patches, targets, spec, columns=columns)
    path = Path(path)
    if not sheet.save(str(path), "PNG"):
        raise OSError(f"could not write {path}")
    return path


def _ensure_app() -> None:
    """QPainter on a QImage needs a QGuiApplication (fonts); create an offscreen one if none exists.

    A full ``QApplication`` rather than a bare ``QGuiApplication``: Qt allows one application object per
    process, and plots or windows made later in the same process need the widget kind.
    """
    from qtpy.QtGui import QGuiApplication
    from qtpy.QtWidgets import QApplication

    if QGuiApplication.instance() is None:
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        _ensure_app.app = QApplication([])  # type: ignore[attr-defined]

"""Running the live view: in a window, or headless with a stats line per second and a snapshot PNG.

Used by ``livepsf demo`` (the simulator) and ``livepsf live`` (a Micro-Manager configuration). Headless
runs need no display: Qt is only started (offscreen) at the end, to draw the snapshot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livepsf.acquisition.loop import LiveLoop, LiveResult, LiveStats, run_for_results
from livepsf.depth.discovery import calibration_folders, find_calibration  # noqa: F401 - kept importable here
from livepsf.errors import InputError, SetupError
from livepsf.mapping import PSFMapper

__all__ = [
    "HeadlessRun",
    "check_qt_binding",
    "find_calibration",
    "has_display",
    "missing_display_libraries",
    "qt_application",
    "run_headless",
    "run_window",
    "save_snapshot",
]


def has_display() -> bool:
    """Whether a window can be shown (an X11 or Wayland display, or a non-Linux desktop)."""
    if os.environ.get("QT_QPA_PLATFORM", "") in ("offscreen", "minimal"):
        return False
    if os.name == "nt" or os.uname().sysname == "Darwin":
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@dataclass
class HeadlessRun:
    """What a headless run did."""

    stats: LiveStats
    results: int
    reason: str
    snapshot: Path | None
    last: LiveResult | None

    @property
    def completed(self) -> bool:
        return self.reason in ("completed", "stopped")

    def summary(self) -> str:
        s = self.stats

        def f(v: float, fmt: str) -> str:
            return "–" if not np.isfinite(v) else format(v, fmt)

        shape = f"{s.frame_shape[1]}×{s.frame_shape[0]} px" if s.frame_shape else "no frames"
        return (f"{self.results} maps of {shape} frames · camera {f(s.camera_fps, '.1f')} fps · "
                f"maps {f(s.maps_per_s, '.1f')}/s · latency buffer→map median "
                f"{f(s.latency_ms_median, '.1f')} ms, "
                f"p95 {f(s.latency_ms_p95, '.1f')} ms · skipped {s.skipped} of {s.frames} frames · "
                f"errors {s.errors}")


def run_headless(core: Any, model: Any, *, frames: int = 300, stride_px: int = 64, calibration: Any = None,
                 snapshot: Path | None = None, overlay: str | None = None,
                 on_tick: Callable[[LiveStats], None] | None = None,
                 on_error: Callable[[str], None] | None = None, tick_s: float = 1.0,
                 timeout_s: float | None = None) -> HeadlessRun:
    """Map ``frames`` camera frames without a window; call ``on_tick(stats)`` every ``tick_s`` seconds.

    Parameters
    ----------
    snapshot
        PNG to write at the end: the last frame with its overlay, glyphs and colour bars, drawn
        offscreen exactly as the window draws it.
    overlay
        Overlay of the snapshot (default: depth when calibrated, else defocus).
    timeout_s
        Give up after this long (default: generous, ``10 + frames`` seconds).
    """
    if frames < 1:
        raise InputError(f"--frames must be at least 1, got {frames}")
    loop = LiveLoop(core, PSFMapper(model, stride_px=stride_px), calibration=calibration)
    if on_error is not None:
        loop.errorOccurred.connect(on_error)
    results, reason = run_for_results(loop, frames, on_tick=on_tick, tick_s=tick_s, timeout_s=timeout_s)
    stats = loop.stats(window_s=None)
    last = loop.latest()
    path = None
    if snapshot is not None and last is not None:
        path = save_snapshot(core, model, last, snapshot, calibration=calibration, overlay=overlay,
                             stride_px=stride_px)
    return HeadlessRun(stats=stats, results=results, reason=reason, snapshot=path, last=last)


def missing_display_libraries() -> list[str]:
    """System libraries that Qt's X11 platform plugin (xcb) needs and this machine lacks.

    Qt aborts the whole process (a core dump, not an exception) when its platform plugin cannot be
    loaded, so this is asked before a window is created. Empty when nothing is missing, when the session
    is not an X11 one, or when ``ldd`` is not available to ask.
    """
    platform = os.environ.get("QT_QPA_PLATFORM", "")
    if os.name == "nt" or os.uname().sysname == "Darwin" or (platform and not platform.startswith("xcb")):
        return []
    if not platform and os.environ.get("WAYLAND_DISPLAY"):
        return []  # Qt prefers Wayland there
    ldd = shutil.which("ldd")
    if ldd is None:
        return []
    from qtpy import QtCore

    plugin = Path(QtCore.QLibraryInfo.path(QtCore.QLibraryInfo.LibraryPath.PluginsPath)) / "platforms" / "libqxcb.so"
    if not plugin.exists():
        return []
    try:
        out = subprocess.run([ldd, str(plugin)], check=False, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    missing = {line.split("=>")[0].strip() for line in out.splitlines() if "not found" in line}
    return sorted(missing)


def _debian_package(soname: str) -> str:
    """Debian/Ubuntu package name of a library soname (``libxcb-icccm.so.4`` -> ``libxcb-icccm4``)."""
    base, _, version = soname.partition(".so.")
    return f"{base}-{version}" if base[-1:].isdigit() else f"{base}{version}"


def check_display() -> None:
    """Raise :class:`~livepsf.errors.SetupError` naming the packages to install when X11 libraries are missing."""
    missing = missing_display_libraries()
    if missing:
        packages = " ".join(_debian_package(m) for m in missing)
        raise SetupError(f"the Qt window needs system libraries this machine lacks ({', '.join(missing)}); on "
                         f"Debian/Ubuntu: apt-get install {packages} (or run with --headless)")


def check_qt_binding(void_call: Callable[[], object] | None = None) -> None:
    """Refuse a Qt binding that drops references to ``None`` (PySide6 6.12.0 on Python < 3.12).

    Such a binding takes one reference from ``None`` on every call of a Qt method that returns nothing;
    on Python < 3.12, where ``None`` is reference-counted, a live window then dies with ``none_dealloc``
    within a minute. Measured, not looked up by version, so a fixed release passes. Needs a Qt application.

    Parameters
    ----------
    void_call
        The call to measure (default: ``QPainterPath.addRect``, which the live window makes per frame).
    """
    if sys.version_info >= (3, 12):
        return  # None is immortal: the defect is harmless there
    from qtpy import API_NAME, QT_VERSION, QtCore, QtGui

    if void_call is None:
        path, rect = QtGui.QPainterPath(), QtCore.QRectF(0, 0, 1, 1)
        void_call = lambda: path.addRect(rect)
    calls = 200
    before = sys.getrefcount(None)
    for _ in range(calls):
        void_call()
    lost = before - sys.getrefcount(None)
    if lost >= calls // 2:
        raise SetupError(f"{API_NAME} (Qt {QT_VERSION}) loses a reference to None on every call; on Python "
                         f"{sys.version_info.major}.{sys.version_info.minor} a window would crash within a "
                         f"minute. Install the tested version: pip install -c constraints.txt PySide6-Essentials")


def qt_application() -> Any:
    """The process's ``QApplication`` (created on first use, offscreen without a display).

    Raises
    ------
    SetupError
        The display's platform plugin cannot load (missing system libraries) or the Qt binding is one
        that would crash a long-running window.
    """
    if not has_display():
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from qtpy import QtCore, QtWidgets

    app = QtWidgets.QApplication.instance()
    if app is None:
        check_display()
        QtCore.qInstallMessageHandler(_qt_message)
        app = QtWidgets.QApplication(["livepsf"])
        check_qt_binding()
    return app


def _qt_message(mode: Any, context: Any, message: str) -> None:
    # The offscreen platform warns about window hints it cannot honour; nothing a user can act on.
    if "propagateSizeHints" in message:
        return
    import logging

    logging.getLogger("livepsf.qt").warning("%s", message)


def save_snapshot(core: Any, model: Any, result: LiveResult, path: Path, *, calibration: Any = None,
                  overlay: str | None = None, stride_px: int = 64, demo: bool = False) -> Path:
    """Draw ``result`` as the live window would and save the image, overlay and colour bars as PNG."""
    app = qt_application()
    from livepsf.gui.window import LiveWindow

    window = LiveWindow(core, model, stride_px=stride_px, calibration=calibration, demo=demo)
    try:
        kind = overlay or ("depth" if calibration is not None else "focus")
        if kind not in [window.overlay_combo.itemData(i) for i in range(window.overlay_combo.count())]:
            kind = window.overlay_combo.itemData(0)
        window.set_overlay(kind)
        window.resize(1280, 900)
        window.show()
        app.processEvents()
        window.draw_result(result)
        app.processEvents()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not window.grab_view().save(str(path)):
            raise InputError(f"{path}: could not write the snapshot PNG")
    finally:
        window.shutdown()
        window.close()
        window.deleteLater()
        app.processEvents()
    return path


def run_window(core: Any, model: Any, *, stride_px: int = 64, calibration: Any = None, demo: bool = False,
               start: bool = True) -> int:
    """Show the live window until it is closed; returns the Qt exit code."""
    app = qt_application()
    from livepsf.gui.window import LiveWindow

    window = LiveWindow(core, model, stride_px=stride_px, calibration=calibration, demo=demo)
    window.show()
    if start:
        window.start()
    code = app.exec()
    window.shutdown()
    return int(code)

"""Set-up checks before a window opens: missing X11 libraries, a Qt binding that would crash, the CLI fallback."""

from __future__ import annotations

import ctypes
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from livepsf.errors import SetupError
from livepsf.gui import app as gui_app

_LDD_OUTPUT = """\
\tlibQt6XcbQpa.so.6 => /venv/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007f)
\tlibxcb-cursor.so.0 => not found
\tlibxcb-icccm.so.4 => not found
\tlibxkbcommon-x11.so.0 => not found
\tlibxcb-icccm.so.4 => not found
"""


def _x11_session(monkeypatch: pytest.MonkeyPatch, ldd_output: str) -> None:
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setattr(gui_app.shutil, "which", lambda name: "/usr/bin/ldd")
    monkeypatch.setattr(gui_app.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=ldd_output, stderr=""))


def test_missing_x11_libraries_are_named_with_the_packages_to_install(monkeypatch):
    _x11_session(monkeypatch, _LDD_OUTPUT)
    assert gui_app.missing_display_libraries() == ["libxcb-cursor.so.0", "libxcb-icccm.so.4",
                                                   "libxkbcommon-x11.so.0"]
    with pytest.raises(SetupError, match="apt-get install libxcb-cursor0 libxcb-icccm4 libxkbcommon-x11-0"):
        gui_app.check_display()


def test_nothing_missing_or_no_x11_session_passes(monkeypatch):
    _x11_session(monkeypatch, "\tlibxcb.so.1 => /lib/libxcb.so.1 (0x1)\n")
    gui_app.check_display()
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")  # not xcb: the plugin's libraries do not matter
    _ldd_called = []
    monkeypatch.setattr(gui_app.subprocess, "run", lambda *a, **k: _ldd_called.append(a))
    assert gui_app.missing_display_libraries() == [] and not _ldd_called


def test_demo_with_a_display_but_missing_libraries_runs_headless(monkeypatch, tiny_model, tmp_path):
    from livepsf.cli import app

    _x11_session(monkeypatch, "\tlibxcb-cursor.so.0 => not found\n")
    result = CliRunner().invoke(app, ["demo", "--frames", "3", "--size", "256", "--model", str(tiny_model.path),
                                      "--snapshot", str(tmp_path / "snap.png")])
    assert result.exit_code == 0, result.output
    assert "apt-get install libxcb-cursor0" in result.output and "running headless" in result.output
    assert "summary" in result.output


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="None is immortal on Python >= 3.12")
def test_a_binding_that_drops_references_to_none_is_refused(qapp):
    gui_app.check_qt_binding()  # the tested binding passes

    stolen = []

    def leaky_void_call() -> None:
        # What PySide6 6.12.0 does on Python 3.11 on every call that returns nothing.
        ctypes.pythonapi.Py_DecRef(ctypes.py_object(None))
        stolen.append(1)

    try:
        with pytest.raises(SetupError, match="loses a reference to None"):
            gui_app.check_qt_binding(leaky_void_call)
    finally:
        for _ in stolen:  # give the references back before anything else needs them
            ctypes.pythonapi.Py_IncRef(ctypes.py_object(None))

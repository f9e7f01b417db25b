"""Soak test of the live window: drive the real window on the simulator for minutes and count what breaks.

Every few seconds one user action, in a fixed rotation: switch the overlay, move the stage, toggle the
cylindrical lens, start or stop a recording, open or close the calibration dialog, change the model,
change the stride. Every ``--report-s`` seconds a line with the frame rate, latency, resident memory and
(on Python < 3.12) the reference count of ``None``, which a binding that drops references to ``None``
drives towards the fatal ``none_dealloc``.

The process exits 0 only when it is alive at the end with zero errors: the loop's error count,
exceptions raised in Qt slots or threads, and Qt critical/fatal messages. The last line is a JSON
summary (the unit test ``tests/gui/test_soak.py`` reads it).

Usage::

    QT_QPA_PLATFORM=offscreen python benchmarks/soak.py --seconds 120      # what `make test` runs
    make soak                                                             # 10 minutes, Xvfb if present
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import logging
import os
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def _rss_mb() -> float:
    """Current resident set size (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class SoakDriver:
    """Drives a :class:`~livepsf.gui.window.LiveWindow` through the user actions, on the Qt thread."""

    def __init__(self, window: Any, models: list[Any], calibration: Any, record_dir: Path,
                 seed: int = 0) -> None:
        self.window = window
        self.core = window.core
        self.models = models
        self.calibration = calibration
        self.record_dir = record_dir
        self.rng = np.random.default_rng(seed)
        self.actions = Counter()
        self.dialog: Any = None
        self.step = 0
        self.recordings = 0

    #: The rotation of user actions (overlay twice: it is the most frequent thing a user does).
    ROTATION = ("switch_overlay", "move_stage", "toggle_lens", "toggle_recording", "toggle_dialog",
                "switch_overlay", "change_model", "change_stride")

    def act(self, only: tuple[str, ...] = ()) -> None:
        """One user action; the rotation visits every kind within eight steps (or only those in ``only``)."""
        kinds = [name for name in self.ROTATION if not only or name in only]
        action = getattr(self, kinds[self.step % len(kinds)])
        self.step += 1
        action()
        self.actions[action.__name__] += 1

    def switch_overlay(self) -> None:
        w = self.window
        choices = [w.overlay_combo.itemData(i) for i in range(w.overlay_combo.count())]
        w.set_overlay(str(self.rng.choice(choices)))

    def move_stage(self) -> None:
        self.core.setPosition(float(self.rng.uniform(-60.0, 60.0)))

    def toggle_lens(self) -> None:
        w = self.window
        w.lens_check.setChecked(not w.lens_check.isChecked())

    def toggle_recording(self) -> None:
        w = self.window
        if w._recorder is None:
            self.recordings += 1
            if not w.start_recording(self.record_dir / f"soak-{self.recordings}.ome.tif"):
                raise RuntimeError("recording did not start")
        else:
            path = w.stop_recording()
            if path is None or not path.exists():
                raise RuntimeError(f"recording was not saved: {path}")
            path.unlink()  # a ten-minute soak must not fill the disk

    def toggle_dialog(self) -> None:
        if self.dialog is None:
            self.dialog = self.window.open_calibration_dialog()
        else:
            self.dialog.close()  # the window frees it on close
            self.dialog = None

    def change_model(self) -> None:
        w = self.window
        current = w.model.name
        names = [m.name for m in self.models]
        model = self.models[(names.index(current) + 1) % len(self.models)] if current in names else self.models[0]
        w.set_model(model)
        if w.calibration is None and self.calibration is not None:
            try:
                w.set_calibration(self.calibration)
            except Exception:
                pass  # a model without astigmatism cannot use a depth calibration: expected

    def change_stride(self) -> None:
        w = self.window
        w.set_stride(int(self.rng.choice([32, 64, 128])))

    def finish(self) -> None:
        if self.dialog is not None:
            self.dialog.close()
        if self.window._recorder is not None:
            self.toggle_recording()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to drive the window")
    parser.add_argument("--action-s", type=float, default=2.0, help="seconds between user actions")
    parser.add_argument("--report-s", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--sample", default="printed-grid")
    parser.add_argument("--size", type=int, default=1024, help="simulated camera side in pixels")
    parser.add_argument("--only", nargs="*", default=[], choices=sorted(set(SoakDriver.ROTATION)),
                        help="drive only these actions (to find which one a problem follows)")
    args = parser.parse_args(argv)
    faulthandler.enable(all_threads=True)  # a native crash still prints every thread's stack

    from qtpy import QtCore

    import livepsf
    from livepsf.depth import Calibration
    from livepsf.gui.app import find_calibration, qt_application
    from livepsf.gui.window import LiveWindow
    from livepsf.sim import create_core

    logging.getLogger("pymmcore-plus").setLevel(logging.CRITICAL)
    problems: list[str] = []

    def excepthook(kind: type, value: BaseException, tb: Any) -> None:
        problems.append(f"exception in a Qt slot: {kind.__name__}: {value}")
        sys.__excepthook__(kind, value, tb)

    def thread_hook(hook_args: threading.ExceptHookArgs) -> None:
        problems.append(f"exception in thread {hook_args.thread.name if hook_args.thread else '?'}: "
                        f"{hook_args.exc_type.__name__}: {hook_args.exc_value}")

    sys.excepthook = excepthook
    threading.excepthook = thread_hook

    def qt_message(mode: Any, context: Any, message: str) -> None:
        if mode in (QtCore.QtMsgType.QtCriticalMsg, QtCore.QtMsgType.QtFatalMsg):
            problems.append(f"Qt: {message}")

    app = qt_application()
    QtCore.qInstallMessageHandler(qt_message)
    models = [livepsf.load_model(name) for name in ("default", "focus", "gaussian")]
    cal_path = find_calibration(models[0])
    calibration = Calibration.load(cal_path, model=models[0]) if cal_path is not None else None
    core = create_core(shape=(args.size, args.size), sample=args.sample, tilt_deg=6.0)
    window = LiveWindow(core, models[0], calibration=calibration, demo=True)
    window.resize(1280, 900)
    window.show()
    window.start()

    record_dir = Path(tempfile.mkdtemp(prefix="livepsf-soak-"))
    driver = SoakDriver(window, models, calibration, record_dir)
    t0 = time.monotonic()
    rss0 = _rss_mb()
    lines: list[dict[str, float]] = []

    def act() -> None:
        try:
            driver.act(tuple(args.only))
        except Exception as exc:  # an action a user can take must not fail
            problems.append(f"action {driver.step}: {type(exc).__name__}: {exc}")

    def report() -> None:
        s = window.loop.stats()
        row = {"t_s": time.monotonic() - t0, "maps_per_s": s.maps_per_s, "latency_ms": s.latency_ms_median,
               "on_screen_ms": s.drawn_latency_ms_median, "rss_mb": _rss_mb(), "errors": s.errors,
               "none_refs": sys.getrefcount(None) if sys.version_info < (3, 12) else -1}
        lines.append(row)
        print(f"t={row['t_s']:5.0f} s  maps {row['maps_per_s']:5.1f}/s  latency {row['latency_ms']:5.1f} ms  "
              f"on screen {row['on_screen_ms']:5.1f} ms  draws {window.draw_count:6d}  "
              f"rss {row['rss_mb']:6.0f} MB  None refs {row['none_refs']}  errors {s.errors}", flush=True)

    action_timer = QtCore.QTimer()
    action_timer.timeout.connect(act)
    action_timer.start(int(args.action_s * 1000))
    report_timer = QtCore.QTimer()
    report_timer.timeout.connect(report)
    report_timer.start(int(args.report_s * 1000))
    QtCore.QTimer.singleShot(int(args.seconds * 1000), app.quit)
    app.exec()

    action_timer.stop()
    report_timer.stop()
    driver.finish()
    whole = window.loop.stats(window_s=None)
    window.shutdown()
    window.close()
    app.processEvents()
    if whole.errors:
        problems.append(f"live loop: {whole.errors} errors, last: {whole.last_error}")
    elapsed = time.monotonic() - t0
    summary = {
        "seconds": round(elapsed, 1), "platform": app.platformName(), "alive": True,
        "errors": len(problems), "problems": problems[:20], "actions": dict(driver.actions),
        "maps": whole.maps, "draws": window.draw_count, "maps_per_s": round(whole.maps / elapsed, 2),
        "draws_per_s": round(window.draw_count / elapsed, 2),
        "latency_ms_median": round(whole.latency_ms_median, 1), "latency_ms_p95": round(whole.latency_ms_p95, 1),
        "on_screen_ms_median": round(whole.drawn_latency_ms_median, 1),
        "on_screen_ms_p95": round(whole.drawn_latency_ms_p95, 1),
        "rss_mb_start": round(rss0, 0), "rss_mb_end": round(_rss_mb(), 0),
    }
    print(f"soak: {elapsed:.0f} s on '{summary['platform']}', {summary['maps']} maps "
          f"({summary['maps_per_s']}/s), {summary['draws']} draws ({summary['draws_per_s']}/s), latency "
          f"{summary['latency_ms_median']} ms (p95 {summary['latency_ms_p95']}), on screen "
          f"{summary['on_screen_ms_median']} ms (p95 {summary['on_screen_ms_p95']}), "
          f"{summary['errors']} errors", flush=True)
    for p in problems:
        print(f"  problem: {p}", flush=True)
    print(json.dumps(summary), flush=True)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())

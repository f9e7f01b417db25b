"""Screenshots of the live window on the simulated microscope, for docs/ and the README.

Run: ``QT_QPA_PLATFORM=offscreen .venv/bin/python benchmarks/live_screenshots.py [--model M] [--out docs]``

The simulator shows a printed grid tilted by 6° about the y axis (height grows along x) with the
cylindrical lens in. While the window runs, the focus drive is stepped from -30 to +30 µm, as a user
turning the focus knob would, so the focus trace shows the frame's mean defocus following the stage.
Writes ``live-window.png`` (whole window, defocus overlay), ``live-astigmatism.png`` and
``live-depth.png`` (image area only; depth is "uncalibrated" unless a calibration made with this model
is found in ./calibration or given with --calibration).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model name or .pt (default: the shipped default)")
    parser.add_argument("--calibration", default=None, help="depth calibration JSON")
    parser.add_argument("--out", default="docs", help="output folder")
    parser.add_argument("--seconds", type=float, default=12.0, help="how long to run while focusing")
    args = parser.parse_args()

    import torch
    from qtpy import QtWidgets

    from livepsf.depth import Calibration
    from livepsf.gui.app import find_calibration, qt_application
    from livepsf.gui.window import LiveWindow
    from livepsf.net import load_model
    from livepsf.sim import create_core

    torch.set_num_threads(2)
    logging.getLogger("pymmcore-plus").setLevel(logging.CRITICAL)
    app: QtWidgets.QApplication = qt_application()
    model = load_model(args.model or "default")
    cal_path = Path(args.calibration) if args.calibration else find_calibration(model)
    cal = Calibration.load(cal_path, model=model) if cal_path else None
    core = create_core(sample="printed-grid", tilt_deg=6.0, lens=True, shape=(1024, 1024),
                       optics=model.optics, exposure_ms=20.0)
    window = LiveWindow(core, model, calibration=cal, demo=True)
    window.resize(1400, 980)
    window.show()
    window.start()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def pump(seconds: float) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            app.processEvents()
            time.sleep(0.005)

    pump(2.0)
    steps = [-30, -20, -10, 0, 10, 20, 30, 0]
    for z in steps:
        window.z_spin.setValue(float(z))
        pump(args.seconds / len(steps))
    window.set_overlay("focus")
    pump(1.0)
    window.grab().save(str(out / "live-window.png"))
    window.set_overlay("astigmatism")
    pump(1.0)
    window.grab_view().save(str(out / "live-astigmatism.png"))
    window.set_overlay("depth")
    pump(1.0)
    window.grab_view().save(str(out / "live-depth.png"))
    print(window.loop.stats(window_s=None).line())
    window.shutdown()
    for name in ("live-window.png", "live-astigmatism.png", "live-depth.png"):
        print(out / name)


if __name__ == "__main__":
    main()

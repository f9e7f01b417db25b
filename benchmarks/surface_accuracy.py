"""Surface depth on the simulator with a shipped calibration: per-window error against the fused surfaces.

Fresh frames of the printed grid tilted by 3°, 6° and 10° (other seeds and noise than any calibration,
in-focus column moved off-centre by +60 and -90 px) and of a bowl (curvature 1/mm); for each, the mean
|error| against the true height at the window centres of: each reliable window's own depth, the fused
surfaces of ``livepsf depth --surface plane|poly2|smooth`` (the full texture gate), and the live view's
(:func:`livepsf.depth.surface.live_depth`: prior :data:`~livepsf.depth.surface.LIVE_PRIOR`, gate on
every 8th pixel). Unlike ``depth_accuracy.py`` nothing is calibrated here: it measures the file as shipped.

    python benchmarks/surface_accuracy.py [--calibration calibration/sim-default.json] [--model default]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from depth_accuracy import Simulator, window_truth

CASES = [(3.0, 0.0), (6.0, 0.0), (10.0, 0.0), (0.0, 1.0)]  # (tilt °, curvature 1/mm)
SHIFTS_PX = ((101, 60.0), (102, -90.0))  # (seed, in-focus column offset from the centre)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calibration", default=str(Path(__file__).parents[1] / "calibration" / "sim-default.json"))
    parser.add_argument("--model", default="default")
    args = parser.parse_args(argv)

    import torch

    from livepsf.depth import Calibration, surface_depth
    from livepsf.depth.surface import LIVE_PRIOR, live_depth, window_depth_and_sigma
    from livepsf.mapping import PSFMapper
    from livepsf.net import load_model

    torch.set_num_threads(1)
    net = load_model(args.model)
    cal = Calibration.load(args.calibration, model=net)
    mapper = PSFMapper(net, stride_px=cal.stride_px or 64)
    sim = Simulator()
    columns = ["window", "plane", "poly2", "smooth", f"live ({LIVE_PRIOR})"]
    print(f"calibration {args.calibration} ({cal.summary()})")
    print("| sample | " + " | ".join(f"{c} (µm)" for c in columns) + " | reliable windows |")
    print("| --- |" + " --- |" * (len(columns) + 1))
    for tilt, curvature in CASES:
        errors: dict[str, list[float]] = {c: [] for c in columns}
        reliable = []
        for seed, shift in SHIFTS_PX:
            f = sim.snap(tilt, seed=seed, in_focus_shift_px=shift if curvature == 0 else 0.0, exposure_ms=8.0,
                         curvature_per_mm=curvature)
            pmap = mapper(f.frame)
            truth = window_truth(pmap, f.height_rel_focus_um)
            depth, _, ok = window_depth_and_sigma(cal, pmap, f.frame)
            errors["window"].append(float(np.mean(np.abs(depth - truth)[ok])))
            reliable.append(float(ok.mean()))
            for prior in ("plane", "poly2", "smooth"):
                fused = surface_depth(cal, pmap, f.frame, prior)
                errors[prior].append(float(np.mean(np.abs(fused.depth_um - truth))))
            _, _, live = live_depth(cal, pmap, f.frame)
            errors[columns[-1]].append(float(np.mean(np.abs(live.depth_um - truth))) if live else float("nan"))
        name = f"printed grid {tilt:g}°" if curvature == 0 else f"bowl {curvature:g}/mm"
        print(f"| {name} | " + " | ".join(f"{np.mean(errors[c]):.2f}" for c in columns)
              + f" | {100 * np.mean(reliable):.0f} % |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

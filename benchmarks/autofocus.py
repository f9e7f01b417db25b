"""Autofocus on the simulated microscope: livepsf's estimate against the classical search (issue 15).

For each sample (printed grid, cells, filaments; flat) and with the cylindrical lens in and out, the
focus drive starts at offsets spread evenly over ±40 µm, each at a fresh place on the sample (the XY
stage moves 800 µm between starts, so every start sees other texture). From each start it runs

* ``livepsf.autofocus`` — with the lens, the one-frame estimate with the simulator's calibration
  (``calibration/sim-default.json``); without it, the frame-pair path (no calibration);
* the classical coarse-to-fine sharpness search (``search_focus``, ±50 µm around the start, 11 + 4
  frames) from the same start;

and measures the final |error| (the simulator's true defocus, median over the frame), frames, moves and
time. Prints a table per sample and lens (median and 95th percentile of |error|, frames, time) and, with
``--out``, writes every run as JSON. First, the focus lock: each sample drifting 2 µm/min for 10
simulated minutes (``SimClock``), one frame every 10 s; median and largest |error|, corrections.

Run: ``.venv/bin/python benchmarks/autofocus.py [--starts 17] [--size 1024] [--lens both|in|out]
[--out runs.json] [--part all|autofocus|lock]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import livepsf
from livepsf.acquisition.autofocus import autofocus, search_focus
from livepsf.acquisition.focus_lock import FocusLock
from livepsf.sim import LENS_ASTIG_0_WAVES, SAMPLES, SimClock, create_core, ground_truth

CALIBRATION = Path(__file__).resolve().parents[1] / "calibration" / "sim-default.json"


def _error_um(core) -> float:
    core.snapImage()
    return float(np.median(ground_truth(core).defocus_um))


def _run(core, starts: np.ndarray, lens: bool, mapper, calibration, xy_step_um: float) -> list[dict]:
    rows = []
    for i, start in enumerate(starts):
        core.setXYPosition(float(i * xy_step_um), 0.0)
        for method in ("livepsf", "search"):
            core.setZPosition(float(start))
            core.waitForSystem()
            t0 = time.perf_counter()
            if method == "livepsf":
                result = autofocus(core, mapper=mapper, calibration=calibration if lens else None,
                                   lens_astig_waves=LENS_ASTIG_0_WAVES if lens else None)
            else:
                result = search_focus(core, range_um=50.0)
            elapsed = time.perf_counter() - t0
            error = _error_um(core)
            rows.append({"start_um": float(start), "method": method, "used": result.method,
                         "fallback": result.fallback, "error_um": error, "frames": result.frames,
                         "moves": result.moves, "time_s": elapsed, "sigma_um": result.sigma_um})
    return rows


def _focus_lock_line(sample: str, size: int, calibration, drift_um_per_min: float = 2.0,
                     minutes: float = 10.0, step_s: float = 10.0) -> str:
    """Hold a sample drifting ``drift_um_per_min`` for ``minutes`` of simulated time, one frame per step."""
    clock = SimClock()
    core = create_core(sample=sample, tilt_deg=0.0, lens=True, shape=(size, size), seed=11,
                       drift_um_per_min=drift_um_per_min, clock=clock)
    lock = FocusLock(core, calibration=calibration, tolerance_um=0.5, clock=clock)
    lock.engage()
    errors = []
    for _ in range(int(round(minutes * 60 / step_s))):
        clock.advance(step_s)
        lock.step()
        errors.append(abs(_error_um(core)))
    return (f"| {sample} | {drift_um_per_min:g} µm/min, {minutes:g} min, a frame every {step_s:g} s | "
            f"{np.median(errors):.2f} | {max(errors):.2f} | {len(lock.corrections)} |")


def _line(sample: str, lens: bool, method: str, rows: list[dict]) -> str:
    err = np.abs([r["error_um"] for r in rows])
    frames = [r["frames"] for r in rows]
    moves = [r["moves"] for r in rows]
    times = [r["time_s"] for r in rows]
    fallbacks = sum(r["fallback"] for r in rows)
    return (f"| {sample} | {'in' if lens else 'out'} | {method} | {np.median(err):.2f} | "
            f"{np.percentile(err, 95):.2f} | {err.max():.2f} | {np.median(frames):.0f} (max {max(frames)}) | "
            f"{np.median(moves):.0f} | {np.median(times):.2f} | {fallbacks} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=17, help="starting offsets over ±40 µm")
    parser.add_argument("--size", type=int, default=1024, help="frame side, px")
    parser.add_argument("--samples", default=",".join(SAMPLES))
    parser.add_argument("--lens", choices=("both", "in", "out"), default="both")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: leave a core to others)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file of every run")
    parser.add_argument("--part", choices=("all", "autofocus", "lock"), default="all")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = livepsf.load_model("default")
    mapper = livepsf.PSFMapper(model, stride_px=64)
    calibration = livepsf.Calibration.load(CALIBRATION, model)
    starts = np.linspace(-40.0, 40.0, args.starts)
    if args.part in ("all", "lock"):
        print(f"# focus lock, {args.size}² frames, lens in")
        print("| sample | drift | median \\|error\\| µm | max µm | corrections |")
        print("| --- | --- | --- | --- | --- |")
        for sample in args.samples.split(","):
            print(_focus_lock_line(sample, args.size, calibration), flush=True)
    if args.part == "lock":
        return
    print(f"# autofocus benchmark: {args.starts} starts over ±40 µm, {args.size}² frames, "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__} ({args.threads} thread)")
    print("| sample | lens | method | median \\|error\\| µm | p95 µm | max µm | frames | moves | time s "
          "| fallbacks |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    everything = []
    t0 = time.perf_counter()
    for sample in args.samples.split(","):
        for lens in {"both": (True, False), "in": (True,), "out": (False,)}[args.lens]:
            core = create_core(sample=sample, tilt_deg=0.0, lens=lens, shape=(args.size, args.size), seed=11)
            rows = _run(core, starts, lens, mapper, calibration, xy_step_um=800.0)
            for method in ("livepsf", "search"):
                print(_line(sample, lens, method, [r for r in rows if r["method"] == method]), flush=True)
            everything += [{"sample": sample, "lens": lens, **r} for r in rows]
            del core
    print(f"# total {time.perf_counter() - t0:.0f} s")
    if args.out is not None:
        args.out.write_text(json.dumps(everything, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()

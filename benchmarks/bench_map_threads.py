"""`livepsf map` over simulated 1024² frames, on an idle machine and with one core kept busy: torch threads.

On a 2-core machine a busy core stalls every parallel region of a 2-thread map at its barrier
(:mod:`livepsf.acquisition.thread_tuner`). ``livepsf map`` therefore measures its first frames with
torch's count and with 1 and keeps the faster (``--threads`` unset), or runs with ``--threads N``. This
script runs the real command (a subprocess per run, fresh output folder) over ``--frames`` simulated
frames (one file each; printed grid, 6° tilt, each frame's sample and noise seeded, so every run maps the
same frames) for each setting, first with the machine as it is, then with ``yes > /dev/null`` running
beside it at the same niceness (ended by its PID), and prints per setting the median time per frame (from the maps' JSON
summaries: warm-up passes excluded) and the median wall time of the whole command.

    nice -n 10 .venv/bin/python benchmarks/bench_map_threads.py              # 8 frames, 3 rounds
    nice -n 10 .venv/bin/python benchmarks/bench_map_threads.py --settings 2  # one setting only
    PYTHONPATH=/tmp/old/src .venv/bin/python benchmarks/bench_map_threads.py --settings default
                                                # an older checkout (without --threads): torch's default

Measured (2-core AMD EPYC, torch 2.13.0 CPU, other jobs keeping the load average at ~5; medians of 3
runs): threads chosen on the first frames 36 ms/frame (torch's 2 threads before this option: 169 ms);
with `yes` on one core as well 63 ms (before: 269 ms); `--threads 1` 45 / 64 ms, `--threads 2` 265 / 273 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def make_frames(folder: Path, n: int, size: int) -> list[Path]:
    """``n`` simulated frames, one uint16 TIFF each (sample seed and camera-noise seed = frame index)."""
    import tifffile

    from livepsf.sim import create_core

    core = create_core(sample="printed-grid", tilt_deg=6.0, shape=(size, size))
    paths = []
    for i in range(n):
        core.setProperty("Sample", "Seed", i)
        core.setProperty("Camera", "NoiseSeed", i)
        core.snapImage()
        paths.append(folder / f"frame{i:02d}.tif")
        tifffile.imwrite(paths[-1], np.asarray(core.getImage()))
    return paths


@contextmanager
def busy_core(on: bool) -> Iterator[None]:
    """``yes > /dev/null`` for the duration (it keeps one core busy), then ended by its PID."""
    if not on:
        yield
        return
    # At the script's own niceness: on an equal footing with the `livepsf map` runs it competes with.
    proc = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield
    finally:
        proc.kill()
        proc.wait()


def run_map(files: list[Path], out: Path, setting: str) -> tuple[float, list[float]]:
    """Wall seconds of one ``livepsf map`` run and the time of every frame (ms, from the summaries)."""
    threads = [] if setting in ("auto", "default") else ["--threads", setting]
    cmd = [sys.executable, "-m", "livepsf", "map", *map(str, files), "--out", str(out), *threads]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall_s = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"livepsf map failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    times = [f["time_ms"] for p in sorted(out.glob("*_psfmap.json")) for f in json.loads(p.read_text())["frames"]]
    return wall_s, times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3, help="runs per setting and load (medians over them)")
    parser.add_argument("--settings", nargs="+", default=["2", "1", "auto"],
                        help="thread counts, 'auto' (no --threads) or 'default' (an older livepsf)")
    parser.add_argument("--loads", nargs="+", default=["as-is", "busy"], choices=["as-is", "busy"])
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        files = make_frames(Path(tmp), args.frames, args.size)
        print(f"# livepsf map, {args.frames} frames of {args.size}² (one file each), {args.rounds} rounds; "
              f"{os.cpu_count()} cores, load average at start {os.getloadavg()[0]:.1f}")
        print("| load | setting | median ms/frame | frames (ms, last round) | median wall s |")
        print("| --- | --- | --- | --- | --- |")
        for load in args.loads:
            with busy_core(load == "busy"):
                for setting in args.settings:
                    walls, frame_ms, last = [], [], []
                    for r in range(args.rounds):
                        wall_s, last = run_map(files, Path(tmp) / f"out-{load}-{setting}-{r}", setting)
                        walls.append(wall_s)
                        frame_ms += last
                    print(f"| {load} | {setting} | {statistics.median(frame_ms):.1f} | "
                          f"{' '.join(f'{t:.0f}' for t in last)} | {statistics.median(walls):.2f} |", flush=True)
        print(f"(load average at end {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

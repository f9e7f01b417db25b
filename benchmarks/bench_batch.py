"""Batch throughput on Dask (issue 17): frames/s of map + deconvolution with 1 and 2 local workers.

Run: ``.venv/bin/python benchmarks/bench_batch.py`` (defaults: 64 frames of 1024², 20 iterations, 1 and
2 workers) or ``--frames 16 --size 512`` for a quicker look; ``make bench`` runs it through pytest
(``test_batch_scaling``) with the defaults.

The acquisition is one multi-frame OME-TIFF (the benchmark texture of ``livepsf bench`` with fresh
Poisson noise in every frame), deconvolved by ``run_batch(..., BatchOptions("deconvolve"))``: each task
reads its frame lazily, maps it with the shipped default network and runs 20 TV-RL iterations; the
client stores every frame and writes ``<name>_deconv.ome.tif``. Each worker is a process with one
thread (torch uses one thread per task). The time runs from submission to the written output; the
cluster's start-up is not counted, the first task's model load on each worker is.

Measured (2-core AMD EPYC, torch 2.13.0 CPU, shared with other jobs): 64 frames, load average 10-12:
1 worker 0.035 frames/s (1851 s), 2 workers 0.060 frames/s (1066 s), x1.74; ``--frames 16`` at load 4:
0.115 / 0.110 frames/s, x0.95. On a loaded machine the ratio says more about the other jobs than
about Dask; measure on a quiet one before quoting a scaling.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile


def make_acquisition(folder: Path, frames: int, size: int) -> Path:
    from livepsf.throughput import _texture_frame

    base = _texture_frame(size).astype(np.float64)
    rng = np.random.default_rng(0)
    path = folder / "acquisition.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write((rng.poisson(base[None] * np.ones((frames, 1, 1))).clip(0, 65535)).astype(np.uint16),
                  metadata={"axes": "TYX"}, photometric="minisblack")
    return path


def measure(frames: int = 64, size: int = 1024, iterations: int = 20,
            workers: tuple[int, ...] = (1, 2)) -> dict[int, float]:
    """frames/s for each number of local workers (a fresh cluster and output folder each)."""
    from distributed import Client

    from livepsf.batch import BatchOptions, local_cluster, run_batch

    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = make_acquisition(Path(tmp), frames, size)
        for n in workers:
            out = Path(tmp) / f"out-{n}"
            with local_cluster(n) as cluster, Client(cluster) as client:
                client.wait_for_workers(n)
                start = time.perf_counter()
                report = run_batch([source], BatchOptions("deconvolve", iterations=iterations, out_dir=str(out)),
                                   client=client)
                seconds = time.perf_counter() - start
            if not report.ok:
                raise RuntimeError(f"batch failed: {report.results}")
            rates[n] = frames / seconds
            print(f"{n} worker(s): {frames} frames of {size}² in {seconds:.1f} s = {rates[n]:.3f} frames/s",
                  flush=True)
    return rates


def report_table(rates: dict[int, float]) -> str:
    first = rates[min(rates)]
    lines = [f"machine: {platform.processor() or platform.machine()}, {_cores()} cores",
             "workers | frames/s | scaling"]
    lines += [f"{n:7d} | {r:8.3f} | {r / first:.2f}x" for n, r in sorted(rates.items())]
    return "\n".join(lines)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@pytest.mark.timeout(3600)
def test_batch_scaling(benchmark) -> None:
    rates = benchmark.pedantic(measure, rounds=1, iterations=1)
    benchmark.extra_info.update({f"frames_per_s_{n}_workers": r for n, r in rates.items()})
    benchmark.extra_info["scaling_2_over_1"] = rates[2] / rates[1]
    print("\n" + report_table(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    rates = measure(args.frames, args.size, args.iterations, tuple(args.workers))
    print(report_table(rates))


if __name__ == "__main__":
    main()

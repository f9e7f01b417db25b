"""Throughput measurements on this machine, for ``livepsf bench`` and the README's tables.

Each suite is a function returning :class:`BenchRow` s; :data:`SUITES` lists them by name, so a new
measurement (deconvolution, the live loop...) is one function plus one entry there, and the command
prints every suite in one table. Times are wall-clock per call, after warm-up runs, reported as median
and 95th percentile; the thread count is fixed (``torch.set_num_threads``) so figures are comparable.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["BenchRow", "SUITES", "machine_description", "mapping_suite", "run_suites", "time_calls"]


@dataclass
class BenchRow:
    """One line of the throughput table.

    ``relative`` is this row's median divided by the median of the row it is compared with (e.g. the
    ResNet-34 reference against the default model on the same frames); ``None`` when not compared.
    ``cpu_median_ms`` is the median process CPU time per call (all threads), see :func:`time_calls`.
    """

    task: str
    subject: str
    size: str
    device: str
    median_ms: float
    p95_ms: float
    runs: int
    cpu_median_ms: float | None = None
    relative: float | None = None
    note: str = ""


def time_calls(fn: Callable[[], object], runs: int, warmup: int = 2,
               sync: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and process-CPU milliseconds of ``runs`` calls of ``fn`` after ``warmup`` untimed calls.

    The CPU time (all threads of this process) is the work a call needs whatever else runs on the
    machine; on a shared, busy machine it is the steadier figure, while wall time is what a user waits.
    ``sync`` (e.g. ``torch.cuda.synchronize``) is called after each call, inside the timing, for devices
    that run asynchronously.
    """
    for _ in range(warmup):
        fn()
    if sync is not None:
        sync()
    wall = np.empty(runs)
    cpu = np.empty(runs)
    for i in range(runs):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        if sync is not None:
            sync()
        wall[i] = (time.perf_counter() - start) * 1e3
        cpu[i] = (time.process_time() - start_cpu) * 1e3
    return wall, cpu


def _texture_frame(size: int, seed: int = 0) -> np.ndarray:
    """A textured uint16 camera frame (content does not change the cost, but keeps windows valid)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random((size, size), dtype=np.float32), 2.0)
    img = (img - img.min()) / (np.ptp(img) + 1e-9)
    return (200 + 3000 * img + rng.poisson(20, img.shape)).astype(np.uint16)


def _network(architecture: str, psf_model: str, folder: Path):
    """An untrained network of ``architecture``, exported and loaded like a shipped model (timing only)."""
    from livepsf.net import ModelCard, export_model, load_model
    from livepsf.net.architectures import build_network
    from livepsf.optics import Optics, get_psf_model

    spec = get_psf_model(psf_model)
    net = build_network(architecture, spec.n_params, window_px=128)
    card = ModelCard.for_spec(f"{architecture}-untrained", spec, Optics(), window_px=128,
                              architecture=architecture, input_normalisation="see architecture",
                              notes="untrained weights, for timing only")
    return load_model(export_model(net, card, folder / f"{architecture}.pt"))


def mapping_suite(sizes: tuple[int, ...] = (1024, 2048), stride_px: int = 64, quick: bool = False,
                  reference: str | None = "resnet34") -> list[BenchRow]:
    """Frame -> PSF map with :class:`~livepsf.mapping.PSFMapper`: the default model and ResNet-34.

    The default model is the shipped ``default`` when there is one, else the fast architecture with
    untrained weights (the cost does not depend on the weights). The ResNet-34 reference (the paper's
    network, untrained weights) maps the same windows and is reported relative to the default model;
    ``reference`` names its architecture (``None``: no reference rows). On a CUDA machine the same rows
    are repeated on the GPU.
    """
    from livepsf.mapping import PSFMapper
    from livepsf.net import available_models, load_model

    rows: list[BenchRow] = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "default" in available_models():
            fast, fast_label, fast_note = load_model("default"), "default", ""
        else:
            fast = _network("shared-trunk", "Z-3", folder)
            fast_label, fast_note = "shared-trunk", "default model not shipped: untrained weights"
        subjects = [(fast_label, fast, fast_note)]
        if reference:
            label = "ResNet-34" if reference == "resnet34" else reference
            subjects.append((label, _network(reference, fast.spec.name, folder), "untrained weights"))
        for device in devices:
            sync = torch.cuda.synchronize if device == "cuda" else None
            for size in sizes:
                frame = _texture_frame(size)
                base: float | None = None
                for label, model, note in subjects:
                    model.to(device)
                    mapper = PSFMapper(model, stride_px=stride_px)
                    heavy = model is not fast and device == "cpu"  # the reference takes seconds per frame
                    runs = (2 if heavy else 5) if quick else (3 if heavy else 30)
                    times, cpu = time_calls(lambda: mapper(frame), runs=runs, warmup=2 if heavy else 3, sync=sync)
                    median = float(np.median(times))
                    gy, gx = mapper.grid_shape(frame.shape)
                    rows.append(BenchRow(
                        task=f"PSF map, stride {stride_px} ({gy}x{gx} windows)", subject=label,
                        size=f"{size}x{size} uint16", device=device, median_ms=median,
                        p95_ms=float(np.percentile(times, 95)), runs=runs, cpu_median_ms=float(np.median(cpu)),
                        relative=None if base is None else median / base, note=note,
                    ))
                    base = median if base is None else base
                for _, model, _ in subjects:
                    model.to("cpu")
    return rows


#: Suites of ``livepsf bench`` by name, in table order. Add new measurements here.
SUITES: dict[str, Callable[..., list[BenchRow]]] = {
    "mapping": mapping_suite,
}


def run_suites(names: list[str] | None = None, quick: bool = False, threads: int = 2) -> list[BenchRow]:
    """Run the named suites (all by default) with ``threads`` CPU threads; returns all rows."""
    unknown = sorted(set(names or []) - set(SUITES))
    if unknown:
        from livepsf.errors import InputError

        raise InputError(f"unknown benchmark suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows: list[BenchRow] = []
        for name in names or list(SUITES):
            rows.extend(SUITES[name](quick=quick))
        return rows
    finally:
        torch.set_num_threads(previous)


def machine_description(threads: int | None = None) -> str:
    """One line naming the CPU, cores, torch threads and GPU, to quote beside the figures."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    used = threads if threads is not None else torch.get_num_threads()
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {used} threads, {gpu}"

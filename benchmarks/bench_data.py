"""Training-data throughput (issue 3): Z-3 patches of 128² with noise, per second, on the target's 2 threads.

Run: ``.venv/bin/python -m pytest benchmarks/bench_data.py --benchmark-only``.
patches/s = batch size / median time per batch (``extra_info["patches_per_second"]``).

- ``test_z3_batch_128``: one full training batch of 64 (the default pools: 256 PSFs refreshed at 2 per
  batch, 48 textures refreshed at 0.15 per batch — the pool refreshes are part of the measured time).
- ``test_blur_64``: the FFT blur of 64 crops (240²) alone.
- ``test_camera_noise_64``: the Poisson–Gaussian camera model on 64 patches alone.
- ``test_dataloader_2_workers``: the training configuration, ``DataLoader(num_workers=2)`` (each worker
  one torch thread, as DataLoader sets it), time per batch received once the workers are warm.

On a shared, oversubscribed machine 2 OpenMP threads per process can be ~10x slower than 1 (spin
waits); compare with ``LIVEPSF_BENCH_THREADS=1``.
"""

from __future__ import annotations

import pytest
import torch

from livepsf.data.dataset import PatchDataset
from livepsf.data.degrade import blur_fft, camera_noise

BATCH = 64


@pytest.fixture(scope="module")
def synth():
    s = PatchDataset("Z-3", window_px=128, batch_size=BATCH, seed=0).synthesizer()
    for _ in range(3):  # warm caches (pupil basis, FFT plans)
        s.next_batch()
    return s


def test_z3_batch_128(benchmark, synth) -> None:
    patches, targets = benchmark.pedantic(synth.next_batch, rounds=30, iterations=1)
    assert patches.shape == (BATCH, 1, 128, 128) and targets.shape == (BATCH, 4)
    benchmark.extra_info["patches_per_second"] = BATCH / benchmark.stats.stats.median


def test_blur_64(benchmark, synth) -> None:
    f = synth.fft_px
    crops = torch.rand(BATCH, f, f)
    spectra = synth.pool_spectra[:BATCH]
    out = benchmark.pedantic(blur_fft, args=(crops, spectra, synth.psf_size_px, 128), rounds=20, iterations=1)
    assert out.shape == (BATCH, 128, 128)
    benchmark.extra_info["patches_per_second"] = BATCH / benchmark.stats.stats.median


def test_camera_noise_64(benchmark) -> None:
    electrons = torch.rand(BATCH, 128, 128) * 200.0
    gen = torch.Generator().manual_seed(0)
    out = benchmark.pedantic(camera_noise, args=(electrons, 3.0, 1.5, 100.0, gen), rounds=20, iterations=1)
    assert out.shape == (BATCH, 128, 128)
    benchmark.extra_info["patches_per_second"] = BATCH / benchmark.stats.stats.median


def test_dataloader_2_workers(benchmark) -> None:
    ds = PatchDataset("Z-3", window_px=128, batch_size=BATCH, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, prefetch_factor=2)
    it = iter(loader)
    for _ in range(4):  # both workers started and warm
        next(it)
    patches, targets = benchmark.pedantic(next, args=(it,), rounds=30, iterations=1)
    assert patches.shape == (BATCH, 1, 128, 128)
    benchmark.extra_info["patches_per_second"] = BATCH / benchmark.stats.stats.median
    del it

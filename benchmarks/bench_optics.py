"""PSF generator throughput: 129x129 Z-3 PSFs per second in batches of 256 (issue 2).

Run: ``make bench`` or ``.venv/bin/python -m pytest benchmarks/bench_optics.py --benchmark-only``.
PSFs/s = 256 / median time per batch.
"""

from __future__ import annotations

import torch

from livepsf.optics import get_psf_model, psf_batch

BATCH = 256


def test_z3_psfs_129px_batch_256(benchmark) -> None:
    values = get_psf_model("Z-3").sample(BATCH, torch.Generator().manual_seed(0))
    psf_batch("Z-3", values[:2], size_px=129)  # warm the pupil-basis cache
    out = benchmark.pedantic(psf_batch, args=("Z-3", values, 129), rounds=5, iterations=1)
    assert out.shape == (BATCH, 129, 129)
    benchmark.extra_info["psfs_per_second"] = BATCH / benchmark.stats.stats.median


def test_g2_psfs_129px_batch_256(benchmark) -> None:
    values = get_psf_model("G-2").sample(BATCH, torch.Generator().manual_seed(0))
    out = benchmark.pedantic(psf_batch, args=("G-2", values, 129), rounds=5, iterations=1)
    assert out.shape == (BATCH, 129, 129)
    benchmark.extra_info["psfs_per_second"] = BATCH / benchmark.stats.stats.median

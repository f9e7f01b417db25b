"""PSF-map throughput: one uint16 frame -> PSFMap, stride 64 (issue 5).

Run: ``make bench`` or ``.venv/bin/python -m pytest benchmarks/bench_mapping.py --benchmark-only``
(2 torch threads, see conftest.py). ``livepsf bench`` prints the same figures as a table with p95 and
the ratio against the ResNet-34 reference at 2048x2048 too.

The default model is the shipped ``default`` when there is one, else the fast architecture with
untrained weights (the cost does not depend on the weights); ResNet-34 is the paper's network on the
same windows.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from livepsf.mapping import PSFMapper
from livepsf.throughput import _network, _texture_frame


@pytest.fixture(scope="module")
def models():
    from livepsf.net import available_models, load_model

    with tempfile.TemporaryDirectory() as tmp:
        fast = load_model("default") if "default" in available_models() else _network("shared-trunk", "Z-3", Path(tmp))
        reference = _network("resnet34", fast.spec.name, Path(tmp))
        yield {"default": fast, "resnet34": reference}


def _bench_map(benchmark, model, size: int, rounds: int, warmup_rounds: int = 2) -> None:
    frame = _texture_frame(size)
    mapper = PSFMapper(model, stride_px=64)
    mapper(frame)  # warm-up: buffer and TorchScript's first-call optimisation
    pmap = benchmark.pedantic(mapper, args=(frame,), rounds=rounds, iterations=1,
                              warmup_rounds=warmup_rounds)
    assert pmap.grid_shape == mapper.grid_shape(frame.shape)
    assert np.isfinite(pmap.invalid).all()
    if benchmark.stats is not None:  # None with --benchmark-disable
        benchmark.extra_info["p95_ms"] = float(np.percentile(benchmark.stats.stats.data, 95) * 1e3)
    benchmark.extra_info["windows"] = int(np.prod(pmap.grid_shape))
    benchmark.extra_info["model"] = model.card.name


def test_map_1024_default(benchmark, models) -> None:
    _bench_map(benchmark, models["default"], 1024, rounds=30)


def test_map_2048_default(benchmark, models) -> None:
    _bench_map(benchmark, models["default"], 2048, rounds=15)


def test_map_1024_resnet34_reference(benchmark, models) -> None:
    _bench_map(benchmark, models["resnet34"], 1024, rounds=2, warmup_rounds=0)  # seconds per call

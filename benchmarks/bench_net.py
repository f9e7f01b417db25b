"""Network inference speed (issue 4): 64 windows of 128² and a 1024² frame map, per architecture.

Run: ``.venv/bin/python -m pytest benchmarks/bench_net.py --benchmark-only``.

- ``test_windows_64``: ``forward`` on a batch of 64 windows (the paper's "64 PSFs"), the cost of
  per-window inference; ResNet-34 (the paper's network) against the fast shared-trunk variants.
- ``test_map_frame_1024``: ``map_frame`` on a 1024² frame at stride 64 (15 x 15 windows) — what the live
  mapper runs per frame; the shared-trunk nets compute the trunk once for all windows.

Untrained networks: the cost does not depend on the weights. torch uses 2 threads (the target machine).
"""

from __future__ import annotations

import pytest
import torch

from livepsf.net.architectures import build_network

ARCHS = ["shared-trunk", "shared-trunk-separable", "resnet34"]


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _scripted(arch: str):
    torch.manual_seed(0)
    return torch.jit.script(build_network(arch, n_params=3).eval())


@pytest.mark.parametrize("arch", ARCHS)
def test_windows_64(benchmark, arch: str) -> None:
    net = _scripted(arch)
    x = torch.rand(64, 1, 128, 128) * 1000
    rounds = 3 if arch == "resnet34" else 20

    def run():
        with torch.inference_mode():
            return net(x)

    run()
    out = benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
    assert out.shape == (64, 4)


@pytest.mark.parametrize("arch", ARCHS)
def test_map_frame_1024(benchmark, arch: str) -> None:
    net = _scripted(arch)
    frame = torch.rand(1, 1, 1024, 1024) * 1000
    rounds = 2 if arch == "resnet34" else 20

    def run():
        with torch.inference_mode():
            return net.map_frame(frame, 64)

    run()
    out = benchmark.pedantic(run, rounds=rounds, warmup_rounds=1)
    assert out.shape == (4, 15, 15)

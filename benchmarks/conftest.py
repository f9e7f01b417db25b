"""Benchmarks run with the thread count of the target machine (2 cores) unless told otherwise."""

from __future__ import annotations

import os

import torch

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def pytest_configure(config) -> None:
    torch.set_num_threads(int(os.environ.get("LIVEPSF_BENCH_THREADS", "2")))

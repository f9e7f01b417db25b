"""Shared test set-up: deterministic seeds, few threads, offscreen Qt."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


def pytest_configure(config: pytest.Config) -> None:
    # The machine has 2 cores; more threads only add contention between tests and Qt.
    torch.set_num_threads(2)

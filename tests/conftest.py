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


@pytest.fixture
def one_torch_thread():
    """torch with one thread for the test (as in a worker process with one thread), then as before."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory):
    """Export (once per PSF model) a tiny untrained network with a valid card and load it.

    For tests of everything downstream of the network (mapping, depth, deconvolution, live loop): the
    outputs are meaningless but have the right shapes, units and contract.
    """
    from livepsf.net import ModelCard, export_model, load_model
    from livepsf.net.architectures import build_network
    from livepsf.optics import Optics, get_psf_model

    cache: dict[str, object] = {}

    def make(psf_model: str = "Z-3"):
        if psf_model not in cache:
            spec = get_psf_model(psf_model)
            torch.manual_seed(1234)
            net = build_network("shared-trunk-tiny", spec.n_params, window_px=128)
            card = ModelCard.for_spec(
                f"tiny-{spec.name}", spec, Optics(), window_px=128, architecture="shared-trunk-tiny",
                input_normalisation="none (offset/gain invariant by construction)",
                notes="untrained; for tests only",
            )
            path = tmp_path_factory.mktemp("models") / f"tiny-{spec.name}.pt"
            export_model(net, card, path)
            cache[psf_model] = load_model(path)
        return cache[psf_model]

    return make


@pytest.fixture()
def tiny_model(tiny_model_factory):
    """A tiny untrained Z-3 network (see :func:`tiny_model_factory`)."""
    return tiny_model_factory("Z-3")


@pytest.fixture
def ramp_network(monkeypatch):
    """A stand-in Z-3 network for CLI depth tests: the defocus is encoded in each window's mean value.

    ``livepsf.net.load_model`` returns a :class:`synthetic_depth.FakeNet` and ``PSFMapper`` is
    :class:`synthetic_depth.RampMapper` (frames from :func:`synthetic_depth.ramp_frame`).
    """
    import livepsf.mapping
    import livepsf.net
    from synthetic_depth import FakeNet, RampMapper

    monkeypatch.setattr(livepsf.net, "load_model", lambda name, device=None: FakeNet("ramp", "d" * 64))
    monkeypatch.setattr(livepsf.mapping, "PSFMapper", RampMapper)

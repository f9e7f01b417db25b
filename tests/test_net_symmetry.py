"""Dihedral averaging: the 8 readings of a window are mapped back to the frame's windows and parameters."""

from __future__ import annotations

import pytest
import torch

from livepsf.net.architectures import build_network
from livepsf.net.symmetry import (
    DIHEDRAL_OPS,
    dihedral_average_map,
    dihedral_average_windows,
    dihedral_spread_windows,
    transform_image,
    transform_values,
)
from livepsf.optics import get_psf_model, psf_batch

WINDOW, STRIDE = 128, 64


def _equivariant_oracle(frame: torch.Tensor, truth: torch.Tensor, spec):
    """A perfectly equivariant 'network': it recognises which transform of ``frame`` it is given and
    answers the transformed true parameters on the transformed grid (raw output columns)."""

    def map_frame(x: torch.Tensor, stride: int) -> torch.Tensor:
        for k, flip in DIHEDRAL_OPS:
            t = transform_image(frame, k, flip)
            if t.shape == x.shape and torch.equal(t, x):
                values = transform_values(truth.movedim(0, -1), spec, k, flip)
                norm = spec.normalise(values).movedim(-1, 0)
                log_sigma = torch.full_like(norm, -2.0)
                raw = torch.cat([torch.zeros_like(norm[:1]), norm, log_sigma])
                return transform_image(raw, k, flip)
        raise AssertionError("not a dihedral transform of the frame")

    return map_frame


@pytest.mark.parametrize("psf_model", ["Z-3", "G-2"])
def test_a_perfectly_equivariant_network_is_returned_unchanged(psf_model: str) -> None:
    """Every inverse transform of grid and parameters is right: the average of 8 exact answers is the answer
    (Z-3 includes windows at focus 0, where the canonical sign of the astigmatism flips)."""
    spec = get_psf_model(psf_model)
    gen = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 1, WINDOW + 2 * STRIDE, WINDOW + 3 * STRIDE, generator=gen)  # 3 x 4 windows
    truth = spec.sample(12, gen).reshape(3, 4, spec.n_params)
    if psf_model == "Z-3":
        truth[0, :, 0] = 0.0  # in focus: a and -a are both canonical
    truth = truth.movedim(-1, 0)
    raw = dihedral_average_map(_equivariant_oracle(frame, truth, spec), frame, STRIDE, spec)
    assert raw.shape == (1 + 2 * spec.n_params, 3, 4)
    got = spec.canonical(spec.denormalise(raw[1:1 + spec.n_params].movedim(0, -1).double()))
    torch.testing.assert_close(got, spec.canonical(truth.movedim(0, -1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(raw[1 + spec.n_params:], torch.full((spec.n_params, 3, 4), -2.0, dtype=raw.dtype), atol=1e-6, rtol=0)


def test_the_average_is_equivariant_for_any_network() -> None:
    """Averaging over the group makes a trained or untrained network's map follow rotations and mirrors."""
    torch.manual_seed(1)
    spec = get_psf_model("G-2")  # no sign symmetry: the equivariance is exact
    net = build_network("shared-trunk-tiny", n_params=spec.n_params).eval()
    frame = torch.rand(1, 1, WINDOW + 2 * STRIDE, WINDOW + 2 * STRIDE) * 500.0
    with torch.no_grad():
        base = dihedral_average_map(net.map_frame, frame, STRIDE, spec)
        for k, flip in [(1, False), (0, True), (3, True)]:
            moved = dihedral_average_map(net.map_frame, transform_image(frame, k, flip), STRIDE, spec)
            expected = transform_image(base, k, flip).clone()
            phys = spec.denormalise(expected[1:3].movedim(0, -1).double())
            expected[1:3] = spec.normalise(transform_values(phys, spec, k, flip)).movedim(-1, 0).float()
            if k % 2:  # a quarter turn swaps the x and y variances, and their σ
                expected[3:] = expected[3:][[1, 0]]
            torch.testing.assert_close(moved, expected, atol=1e-4, rtol=1e-4)


def test_transform_values_follow_the_rendered_psf() -> None:
    """The parameter transform matches what a rotated or mirrored image of a rendered PSF shows."""
    spec = get_psf_model("Z-3")
    values = torch.tensor([[0.4, 0.3, -0.2]], dtype=torch.float64)
    psf = psf_batch(spec, values, 33)
    for k, flip in DIHEDRAL_OPS:
        moved = transform_image(psf, k, flip)
        rendered = psf_batch(spec, transform_values(values, spec, k, flip), 33)
        torch.testing.assert_close(moved, rendered, atol=1e-6, rtol=1e-4)


def test_windows_and_frames_average_alike() -> None:
    """A frame tiled from windows at stride = window gives the same average as the windows on their own."""
    torch.manual_seed(4)
    spec = get_psf_model("Z-3")
    net = build_network("shared-trunk-tiny", n_params=spec.n_params).eval()
    windows = torch.rand(6, 1, WINDOW, WINDOW) * 300.0
    frame = windows.reshape(2, 3, WINDOW, WINDOW).permute(0, 2, 1, 3).reshape(1, 1, 2 * WINDOW, 3 * WINDOW)
    with torch.no_grad():
        per_window = dihedral_average_windows(net, windows, spec)
        mapped = dihedral_average_map(net.map_frame, frame, WINDOW, spec)
    assert per_window.shape == (6, 1 + 2 * spec.n_params)
    torch.testing.assert_close(mapped.reshape(per_window.shape[1], 6).T, per_window, atol=1e-4, rtol=1e-4)


def test_the_spread_measures_how_far_readings_follow_orientation() -> None:
    """A network that answers the same round Gaussian whatever it sees is orientation-consistent
    (spread 0); one that always answers an elongated Gaussian contradicts itself under a quarter turn,
    which swaps the widths: its readings of x and y spread by half their difference."""
    spec = get_psf_model("G-2")
    windows = torch.rand(5, 1, WINDOW, WINDOW)

    def constant(normalised: list[float]):
        def module(x: torch.Tensor) -> torch.Tensor:
            row = torch.tensor([0.0, *normalised, -1.0, -1.0])
            return row.expand(x.shape[0], -1)
        return module

    round_spread = dihedral_spread_windows(constant([0.2, 0.2]), windows, spec)
    assert round_spread.shape == (5, 2)
    torch.testing.assert_close(round_spread, torch.zeros(5, 2), atol=1e-6, rtol=0)
    elongated = dihedral_spread_windows(constant([-0.6, 0.4]), windows, spec)
    torch.testing.assert_close(elongated, torch.full((5, 2), 0.5), atol=1e-5, rtol=0)

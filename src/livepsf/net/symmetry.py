"""Dihedral averaging: a network's map of a frame, averaged over the frame's 8 rotations and mirrors.

A PSF seen in a rotated or mirrored window is the rotated or mirrored PSF, with parameters that follow
exactly (:meth:`~livepsf.optics.PSFModelSpec.rot90`, :meth:`~livepsf.optics.PSFModelSpec.flip`). A
trained network is only approximately equivariant, so its 8 readings of the same window differ a
little; mapping each transformed frame, mapping the answers back and averaging them removes part of the
network's error at 8x the cost. On the Z-3 test set this raised the previous ``default``'s mean R² from
0.540 to 0.567; the shipped one, trained to read alike in all 8 orientations (dihedral-consistency term,
:func:`livepsf.net.train.consistency_loss`), gains less: 0.563 to 0.571 (see the CHANGELOG). It is
meant for offline work (``livepsf map``, ``depth``, ``calibrate``, ``deconvolve``), where a 1024² frame
maps in about 0.2 s on 2 cores (22 ms in one pass).

The frame handed to :func:`dihedral_average_map` must be exactly covered by the window grid (the padded
frame :class:`~livepsf.mapping.PSFMapper` builds), so that a rotated or mirrored grid of windows lands
on the same windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from livepsf.net.outputs import nearest_equivalent
from livepsf.optics import PSFModelSpec

__all__ = ["DIHEDRAL_OPS", "dihedral_average_map", "dihedral_average_windows", "dihedral_spread_windows",
           "inverse_op", "transform_image", "transform_values"]

DIHEDRAL_OPS: tuple[tuple[int, bool], ...] = tuple((k, flip) for flip in (False, True) for k in range(4))
"""The 8 symmetries of the square as ``(quarter turns, then a mirror of the rows)``."""


def transform_image(image: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """``torch.rot90(image, k, dims=(-2, -1))``, then, with ``flip``, a mirror of the rows (axis -2)."""
    out = torch.rot90(image, k % 4, dims=(-2, -1)) if k % 4 else image
    return torch.flip(out, dims=(-2,)) if flip else out


def transform_values(values: torch.Tensor, spec: PSFModelSpec, k: int, flip: bool) -> torch.Tensor:
    """Physical parameters ``(..., N)`` of the PSF after :func:`transform_image` (canonical form)."""
    out = spec.rot90(values, k % 4)
    return spec.flip(out, 0) if flip else out


def _sigma_order(spec: PSFModelSpec, k: int) -> list[int]:
    """Which parameter's σ each parameter takes after ``k`` quarter turns (signs do not change a σ;
    a quarter turn swaps the x and y widths of a Gaussian)."""
    order = list(range(spec.n_params))
    if k % 2 and "variance_x" in spec.names:
        ix, iy = spec.index("variance_x"), spec.index("variance_y")
        order[ix], order[iy] = iy, ix
    return order


def inverse_op(k: int, flip: bool) -> tuple[int, bool]:
    """The op that undoes ``(k, flip)``: a turn then a mirror is its own inverse, a turn by k is undone by -k."""
    return (k % 4, True) if flip else ((-k) % 4, False)


def dihedral_average_map(map_frame: Callable[[torch.Tensor, int], torch.Tensor], frame: torch.Tensor,
                         stride: int, spec: PSFModelSpec) -> torch.Tensor:
    """Raw outputs ``(K, gy, gx)`` of every window, averaged over the 8 dihedral transforms of the frame.

    Parameters
    ----------
    map_frame
        A network's frame pass, ``(1, 1, H, W) -> (K, gy, gx)`` raw outputs (see
        :mod:`livepsf.net.outputs` for the columns).
    frame
        ``(1, 1, H, W)``, with ``H`` and ``W`` exactly ``window + stride * (g - 1)``.
    stride
        Window step in pixels.
    spec
        The network's PSF model.

    Returns
    -------
    torch.Tensor
        Same layout as ``map_frame``'s: the mean invalid logit, the mean normalised parameters (each
        reading first put on the same side of the sign symmetry PSF(a) = PSF(-a) as the untransformed
        frame's), and for networks with σ the log of the root-mean-square σ.
    """
    def reading(k: int, flip: bool) -> torch.Tensor:
        raw = map_frame(transform_image(frame, k, flip), stride)
        return transform_image(raw, *inverse_op(k, flip))  # the grid, back to the frame's windows

    return _average(reading, spec)


def dihedral_average_windows(module: Callable[[torch.Tensor], torch.Tensor], windows: torch.Tensor,
                             spec: PSFModelSpec) -> torch.Tensor:
    """Raw outputs ``(B, K)`` of a network over windows ``(B, 1, W, W)``, averaged over their 8 transforms.

    The same average as :func:`dihedral_average_map`, for a batch of separate windows (evaluation).
    """
    return _average(lambda k, flip: module(transform_image(windows, k, flip)).movedim(-1, 0), spec).movedim(0, -1)


def dihedral_spread_windows(module: Callable[[torch.Tensor], torch.Tensor], windows: torch.Tensor,
                            spec: PSFModelSpec) -> torch.Tensor:
    """How much a network's reading of each window depends on the window's orientation.

    The standard deviation over the 8 dihedral transforms of each window's normalised parameters
    (each reading mapped back to the untransformed window and put on its side of the sign symmetry,
    as :func:`dihedral_average_windows` averages them). An exactly equivariant network gives 0; a
    reading that follows the texture's orientation, not the PSF, gives a large spread.

    Returns
    -------
    torch.Tensor
        ``(B, N)``: the spread of each window's ``N`` parameters, in normalised units (the parameter
        ranges map to [-1, 1]).
    """
    readings = torch.stack([norm for _, norm, _ in _aligned_readings(
        lambda k, flip: module(transform_image(windows, k, flip)).movedim(-1, 0), spec)])
    return readings.std(dim=0, correction=0)


def _aligned_readings(reading: Callable[[int, bool], torch.Tensor], spec: PSFModelSpec
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
    """For each of the 8 transforms: the raw reading (columns first, already in the original layout),
    its normalised parameters transformed back and put on the first reading's side of the sign
    symmetry (parameters last), and the quarter turns that undo the transform."""
    n = spec.n_params
    reference: torch.Tensor | None = None
    for k, flip in DIHEDRAL_OPS:
        raw = reading(k, flip)
        back_k, back_flip = inverse_op(k, flip)
        phys = spec.denormalise(raw[1:1 + n].movedim(0, -1).double())
        norm = spec.normalise(transform_values(phys, spec, back_k, back_flip)).to(raw.dtype)
        if reference is None:
            reference = norm
        else:
            norm = nearest_equivalent(reference, norm, spec)
        yield raw, norm, back_k


def _average(reading: Callable[[int, bool], torch.Tensor], spec: PSFModelSpec) -> torch.Tensor:
    """Mean of the 8 readings ``reading(k, flip)`` (raw columns first, already in the original layout),
    with the parameters transformed back, put on one side of the sign symmetry, and σ as RMS."""
    n = spec.n_params
    invalid = values = variance = None
    for raw, norm, back_k in _aligned_readings(reading, spec):
        invalid = raw[0] if invalid is None else invalid + raw[0]
        values = norm if values is None else values + norm
        if raw.shape[0] == 1 + 2 * n:
            var = torch.exp(2.0 * raw[1 + n:].clamp(-20.0, 20.0))[_sigma_order(spec, back_k)]
            variance = var if variance is None else variance + var
    count = float(len(DIHEDRAL_OPS))
    columns = [invalid[None] / count, (values / count).movedim(-1, 0)]
    if variance is not None:
        columns.append(0.5 * torch.log(variance / count))
    return torch.cat(columns, dim=0)

"""The raw output columns of a PSF network, and the sign symmetry of Zernike parameters.

A network gives ``(..., K)`` raw columns: the invalid logit, the N parameters normalised to ``[0, 1]``
and, with uncertainty (``K = 1 + 2N``), the N natural logs of their standard deviations in normalised
units. :func:`split_outputs` separates them and puts the parameters in canonical form.

The sign symmetry: PSF(W) = PSF(-W), so the Zernike parameter sets ``a`` and ``-a`` are the same PSF.
Training compares a prediction with both (:func:`mirror_normalised`; the smaller error counts), so the
targets have no jump where the canonical form (focus >= 0) flips the astigmatism's sign at focus 0; a
prediction is reported in canonical form (:func:`canonical_normalised`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from livepsf.optics import PSFModelSpec

__all__ = ["SplitOutputs", "canonical_normalised", "has_sign_symmetry", "mirror_normalised",
           "nearest_equivalent", "sign_invariant_l1", "split_outputs"]


class SplitOutputs(NamedTuple):
    """Raw network outputs, separated (all tensors share the leading shape)."""

    invalid_logit: torch.Tensor
    values: torch.Tensor
    """``(..., N)`` normalised parameters, canonical form, not clipped."""
    sigma: torch.Tensor | None
    """``(..., N)`` standard deviations in normalised units, or ``None`` for a network without them."""


def has_sign_symmetry(spec: PSFModelSpec) -> bool:
    """True for Zernike models, whose parameter sets ``a`` and ``-a`` give the same PSF."""
    return spec.kind == "zernike"


def mirror_normalised(values: torch.Tensor, spec: PSFModelSpec) -> torch.Tensor:
    """The normalised parameters of ``-a`` for normalised parameters of ``a`` (any shape ``(..., N)``)."""
    return spec.normalise(-spec.denormalise(values))


def nearest_equivalent(values: torch.Tensor, target: torch.Tensor, spec: PSFModelSpec) -> torch.Tensor:
    """Per row, ``target`` or its sign mirror, whichever parameter *set* is nearer to ``values`` (squared error).

    The two sets are one PSF, so errors are measured against the nearer one, as the training loss does.
    The whole set is mirrored or none of it: far from focus the astigmatism's sign is visible, and a
    per-parameter choice would excuse a wrong one. Models without the sign symmetry: ``target``.
    """
    if not has_sign_symmetry(spec):
        return target
    mirrored = mirror_normalised(target, spec)
    use_mirror = ((values - mirrored) ** 2).sum(-1, keepdim=True) < ((values - target) ** 2).sum(-1, keepdim=True)
    return torch.where(use_mirror, mirrored, target)


def sign_invariant_l1(values: torch.Tensor, target: torch.Tensor, spec: PSFModelSpec) -> torch.Tensor:
    """Mean over ``(B, N)`` rows of the L1 error against ``target`` or its mirror, whichever is smaller.

    The plain parameter loss of the probes in ``benchmarks/`` (the trainings use
    :func:`~livepsf.net.train.psf_loss`); for models without the sign symmetry it is the plain L1.
    """
    error = (values - target).abs().sum(-1)
    if has_sign_symmetry(spec):
        error = torch.minimum(error, (values - mirror_normalised(target, spec)).abs().sum(-1))
    return error.mean()


def canonical_normalised(values: torch.Tensor, spec: PSFModelSpec) -> torch.Tensor:
    """Normalised parameters in canonical form (focus >= 0; Z-2: astig_0 >= 0); others unchanged."""
    if not has_sign_symmetry(spec):
        return values
    return spec.normalise(spec.canonical(spec.denormalise(values)))


def split_outputs(raw: torch.Tensor, spec: PSFModelSpec) -> SplitOutputs:
    """Separate raw outputs ``(..., 1 + N)`` or ``(..., 1 + 2N)`` (last axis) and canonicalise the parameters.

    Raises
    ------
    ValueError
        The last axis has neither ``1 + N`` nor ``1 + 2N`` columns.
    """
    n = spec.n_params
    k = raw.shape[-1]
    if k not in (1 + n, 1 + 2 * n):
        raise ValueError(f"{spec.name} network outputs have 1 + {n} or 1 + {2 * n} columns, got {k}")
    values = canonical_normalised(raw[..., 1 : 1 + n], spec)
    sigma = torch.exp(raw[..., 1 + n :].clamp(-20.0, 20.0)) if k == 1 + 2 * n else None
    return SplitOutputs(raw[..., 0], values, sigma)

"""Zernike polynomials in the ANSI/OSA convention, RMS-normalised on the unit disc.

``Z(n, m)`` with ``m >= 0`` is ``N R_n^m(rho) cos(m theta)`` and with ``m < 0`` it is
``N R_n^|m|(rho) sin(|m| theta)``, where ``N = sqrt(2 (n + 1) / (1 + delta_m0))`` makes the RMS over the
unit disc equal to one. A coefficient of 1 therefore means one wave RMS of wavefront error.

The angle ``theta`` is measured from array axis 1 (x, columns) towards array axis 0 (y, rows), so
``Z(2, 2)`` (astigmatism 0°) is largest along x and ``Z(2, -2)`` (astigmatism 45°) along the (row, col) ∝
(1, 1) diagonal.
"""

from __future__ import annotations

import math

import torch

__all__ = ["ansi_index", "ansi_to_nm", "radial_polynomial", "zernike"]


def ansi_index(n: int, m: int) -> int:
    """ANSI/OSA single index ``j = (n (n + 2) + m) / 2`` of ``Z(n, m)``."""
    _check_nm(n, m)
    return (n * (n + 2) + m) // 2


def ansi_to_nm(j: int) -> tuple[int, int]:
    """Inverse of :func:`ansi_index`: radial order ``n`` and azimuthal frequency ``m`` of index ``j``."""
    if j < 0:
        raise ValueError(f"ANSI Zernike index must be >= 0, got {j}")
    n = int(math.ceil((-3 + math.sqrt(9 + 8 * j)) / 2))
    m = 2 * j - n * (n + 2)
    return n, m


def radial_polynomial(n: int, m: int, rho: torch.Tensor) -> torch.Tensor:
    """Zernike radial polynomial ``R_n^|m|(rho)`` (not normalised)."""
    _check_nm(n, m)
    m = abs(m)
    out = torch.zeros_like(rho)
    for k in range((n - m) // 2 + 1):
        c = (-1) ** k * math.factorial(n - k) / (
            math.factorial(k) * math.factorial((n + m) // 2 - k) * math.factorial((n - m) // 2 - k)
        )
        out = out + c * rho ** (n - 2 * k)
    return out


def zernike(n: int, m: int, rho: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """RMS-normalised Zernike polynomial ``Z(n, m)`` at polar pupil coordinates.

    Parameters
    ----------
    n, m
        Radial order and azimuthal frequency (``|m| <= n``, ``n - |m|`` even).
    rho, theta
        Normalised pupil radius (1 at the pupil edge) and angle in radians, from x towards y.

    Returns
    -------
    torch.Tensor
        The polynomial, same shape as ``rho``; defined everywhere, meaningful for ``rho <= 1``.
    """
    norm = math.sqrt(2 * (n + 1) / (1 + (m == 0)))
    radial = radial_polynomial(n, m, rho)
    if m > 0:
        return norm * radial * torch.cos(m * theta)
    if m < 0:
        return norm * radial * torch.sin(-m * theta)
    return norm * radial


def _check_nm(n: int, m: int) -> None:
    if n < 0 or abs(m) > n or (n - abs(m)) % 2:
        raise ValueError(f"invalid Zernike indices n={n}, m={m}: need |m| <= n and n - |m| even")

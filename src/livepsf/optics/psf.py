"""Batched PSF generation in torch for the paper's PSF models (Z-1, Z-2, Z-3, G-1, G-2).

Zernike PSFs are computed by Fourier optics: ``PSF = |IFFT(P(f) exp(i 2 pi W(f)))|^2`` with the pupil
``P`` a disc of radius ``NA / wavelength`` in spatial frequency and ``W`` the wavefront error in waves.
The frequency grid is scaled so that this cut-off matches the camera pixel size in the sample plane.
Because the intensity spectrum reaches ``2 NA / wavelength``, which is beyond the camera's Nyquist
limit at the default optics, the PSF is computed on a grid ``q`` times finer than the camera pixels and
then integrated over each camera pixel (sum of ``q x q`` sub-pixels): this is how a camera samples it.
The grid is padded so that no PSF energy wraps round, then cropped to the requested odd size and
normalised to sum 1. The PSF is centred on the central pixel ``size_px // 2``.

Gaussian PSFs are sampled at pixel centres: ``exp(-x^2 / (2 var_x) - y^2 / (2 var_y))``, so that their
measured variance is the parameter.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch

from livepsf.optics.params import PSFModelSpec, get_psf_model
from livepsf.optics.zernike import zernike

__all__ = ["Optics", "make_psf", "psf_batch", "zernike_psf", "gaussian_psf", "fast_fft_size"]

# Beyond the geometric blur, keep this many diffraction lengths (wavelength / NA) of margin.
_DIFFRACTION_MARGIN = 4.0
# Largest batch transformed at once; bounds memory to a few hundred MB for the largest grids.
_CHUNK = 64


@dataclass(frozen=True)
class Optics:
    """Optical sampling of the microscope, in the sample plane.

    Parameters
    ----------
    na
        Numerical aperture of the objective.
    wavelength_nm
        Emission wavelength.
    pixel_size_um
        Camera pixel size divided by the magnification.
    immersion_index
        Refractive index of the immersion medium (1.0 for air); enters the defocus conversion.
    """

    na: float = 0.3
    wavelength_nm: float = 550.0
    pixel_size_um: float = 0.65
    immersion_index: float = 1.0

    def __post_init__(self) -> None:
        for name in ("na", "wavelength_nm", "pixel_size_um", "immersion_index"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"Optics.{name} must be a positive finite number, got {value!r}")
        if self.na >= self.immersion_index:
            raise ValueError(f"Optics.na ({self.na}) must be below immersion_index ({self.immersion_index})")

    @property
    def wavelength_um(self) -> float:
        return self.wavelength_nm / 1000.0

    @property
    def cutoff_cycles_per_px(self) -> float:
        """Pupil cut-off ``NA / wavelength`` in cycles per camera pixel."""
        return self.na * self.pixel_size_um / self.wavelength_um

    @property
    def oversampling(self) -> int:
        """Sub-pixels per camera pixel needed so the intensity spectrum (up to ``2 NA / wavelength``) is not aliased."""
        return max(1, math.ceil(4.0 * self.cutoff_cycles_per_px - 1e-9))

    @property
    def airy_radius_um(self) -> float:
        """Radius of the first dark ring of the in-focus PSF, ``0.61 wavelength / NA``."""
        return 0.61 * self.wavelength_um / self.na

    @property
    def depth_of_field_um(self) -> float:
        """Axial distance over which the defocus stays below a quarter wave peak-to-valley."""
        return self.immersion_index * self.wavelength_um / self.na**2

    def defocus_waves(self, z_um: float | np.ndarray | torch.Tensor):
        """Zernike defocus coefficient (RMS waves) for an axial offset ``z_um`` from the focal plane.

        Paraxial: the defocus wavefront ``z NA^2 rho^2 / (2 n lambda)`` projected on ``Z(2, 0) =
        sqrt(3) (2 rho^2 - 1)``. Positive ``z_um`` gives a positive coefficient.
        """
        return z_um * self.na**2 / (4.0 * math.sqrt(3.0) * self.immersion_index * self.wavelength_um)

    def defocus_um(self, waves: float | np.ndarray | torch.Tensor):
        """Inverse of :meth:`defocus_waves`."""
        return waves * (4.0 * math.sqrt(3.0) * self.immersion_index * self.wavelength_um) / self.na**2

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def fast_fft_size(n: int) -> int:
    """Smallest even integer ``>= n`` whose prime factors are 2, 3 and 5 (fast for every FFT backend)."""
    m = max(2, int(n))
    while True:
        if m % 2 == 0:
            k = m
            for p in (2, 3, 5):
                while k % p == 0:
                    k //= p
            if k == 1:
                return m
        m += 1


def psf_batch(
    model: str | PSFModelSpec,
    values: torch.Tensor | Mapping[str, torch.Tensor | float],
    size_px: int,
    optics: Optics | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """PSFs of a PSF model for a batch of parameter sets.

    Parameters
    ----------
    model
        PSF model name (``"Z-3"``, ...) or spec.
    values
        ``(B, N)`` tensor in the order of the model's parameters, or ``{name: scalar or (B,)}``, in
        physical units (waves for Zernike models, px² for Gaussian ones).
    size_px
        Side of the returned PSFs; must be odd so the PSF has a central pixel.
    optics
        Optical sampling; the default optics of DESIGN.md when omitted. Ignored by Gaussian models.
    dtype
        ``torch.float32`` or ``torch.float64``.
    device
        Where to compute (CPU or CUDA).

    Returns
    -------
    torch.Tensor
        ``(B, size_px, size_px)``, non-negative, each summing to 1.
    """
    spec = get_psf_model(model) if isinstance(model, str) else model
    optics = optics or Optics()
    if isinstance(values, Mapping):
        values = spec.stack(dict(values))
    values = torch.as_tensor(values)
    if values.ndim != 2 or values.shape[1] != spec.n_params:
        raise ValueError(f"{spec.name} values must have shape (B, {spec.n_params}), got {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise ValueError(f"{spec.name} parameter values must be finite")
    named = {n: values[:, i] for i, n in enumerate(spec.names)}
    if spec.kind == "gaussian":
        var_x = named.get("variance_x", named.get("variance"))
        var_y = named.get("variance_y", named.get("variance"))
        return gaussian_psf(var_x, var_y, size_px, dtype=dtype, device=device)
    zero = torch.zeros(values.shape[0], dtype=values.dtype)
    return zernike_psf(
        named.get("focus", zero),
        named.get("astig_0", zero),
        named.get("astig_45", zero),
        size_px,
        optics,
        dtype=dtype,
        device=device,
    )


def make_psf(
    model: str,
    size_px: int = 129,
    optics: Optics | None = None,
    **params: float,
) -> np.ndarray:
    """One PSF as a float64 NumPy array of shape ``(size_px, size_px)`` summing to 1.

    Examples
    --------
    >>> psf = make_psf("Z-3", size_px=65, focus=1.0, astig_0=0.3, astig_45=0.0)
    >>> psf.shape
    (65, 65)
    """
    spec = get_psf_model(model)
    # Parameters the model does not use may be given as zero (handy when switching models).
    unused = {k: v for k, v in params.items() if k not in spec.names}
    if any(v != 0 for v in unused.values()):
        raise ValueError(f"PSF model {spec.name} has no parameters {sorted(unused)}; it takes {spec.names}")
    used = {k: v for k, v in params.items() if k in spec.names}
    if spec.kind == "zernike":
        used = {n: used.get(n, 0.0) for n in spec.names}
    out = psf_batch(spec, used, size_px, optics, dtype=torch.float64)
    return out[0].cpu().numpy()


def zernike_psf(
    focus: torch.Tensor,
    astig_0: torch.Tensor,
    astig_45: torch.Tensor,
    size_px: int,
    optics: Optics | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Pixel-integrated PSFs for defocus and astigmatism (RMS waves), ``(B, size_px, size_px)`` summing to 1."""
    _check_size(size_px)
    optics = optics or Optics()
    focus, astig_0, astig_45 = (torch.as_tensor(t, dtype=torch.float64).reshape(-1) for t in (focus, astig_0, astig_45))
    focus, astig_0, astig_45 = torch.broadcast_tensors(focus, astig_0, astig_45)
    # Geometric blur radius: the largest ray deviation |grad W| / cutoff, in camera pixels.
    # The grid is sized for the whole training range (not just this batch), so that a PSF does not
    # depend on which batch it was computed in, and the pupil is always sampled finely.
    slope_waves = max(_max_slope_waves(focus, astig_0, astig_45), _RANGE_SLOPE_WAVES)
    diffraction_px = 1.0 / optics.cutoff_cycles_per_px
    radius_px = (slope_waves + _DIFFRACTION_MARGIN) * diffraction_px
    grid_px = fast_fft_size(max(size_px + 1, math.ceil(size_px / 2 + radius_px), math.ceil(2 * radius_px)))
    basis = _pupil_basis(grid_px, optics.oversampling, optics.cutoff_cycles_per_px, str(device or "cpu"), dtype)
    coeffs = torch.stack([focus, astig_0, astig_45], dim=1).to(device=basis.device, dtype=dtype)
    outs = [_zernike_chunk(coeffs[i : i + _CHUNK], basis, grid_px, optics.oversampling, size_px)
            for i in range(0, len(coeffs), _CHUNK)]
    if not outs:
        return torch.zeros(0, size_px, size_px, dtype=dtype, device=basis.device)
    return torch.cat(outs)


def gaussian_psf(
    var_x: torch.Tensor,
    var_y: torch.Tensor,
    size_px: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Anisotropic Gaussian PSFs sampled at pixel centres, ``(B, size_px, size_px)`` summing to 1."""
    _check_size(size_px)
    var_x = torch.as_tensor(var_x, dtype=dtype, device=device).reshape(-1, 1, 1)
    var_y = torch.as_tensor(var_y, dtype=dtype, device=device).reshape(-1, 1, 1)
    if (var_x <= 0).any() or (var_y <= 0).any():
        raise ValueError("Gaussian PSF variances must be positive")
    r = torch.arange(size_px, dtype=dtype, device=var_x.device) - size_px // 2
    psf = torch.exp(-(r[None, None, :] ** 2) / (2 * var_x) - (r[None, :, None] ** 2) / (2 * var_y))
    return psf / psf.sum(dim=(-2, -1), keepdim=True)


# -- internals -------------------------------------------------------------------------------------


class _PupilBasis:
    """Pupil samples and the Zernike modes on an oversampled frequency grid, cached per geometry.

    Only the samples inside the pupil are stored (about a tenth of the grid): the phase and its complex
    exponential are evaluated there and scattered into the zero-padded grid before the FFT.
    """

    def __init__(self, size: int, inside: torch.Tensor, weights: torch.Tensor, modes: torch.Tensor) -> None:
        self.size = size  # N: side of the oversampled grid
        self.inside = inside  # (K,) flat indices of the pupil samples
        self.weights = weights  # (K,) complex: pupil transmission x centring phase ramp
        self.modes = modes  # (K, 3) real: Z(2,0), Z(2,2), Z(2,-2) at those samples
        self.device = inside.device


@functools.lru_cache(maxsize=16)
def _pupil_basis(grid_px: int, oversampling: int, cutoff_cycles_per_px: float, device: str, dtype: torch.dtype) -> _PupilBasis:
    n = grid_px * oversampling
    k = torch.fft.fftfreq(n, dtype=torch.float64) * n  # integer frequency index, signed
    # Frequency in cycles per camera pixel: index / (n sub-pixels * (1 / oversampling) px per sub-pixel).
    f = k * oversampling / n
    fy, fx = torch.meshgrid(f, f, indexing="ij")
    rho = torch.hypot(fx, fy) / cutoff_cycles_per_px
    theta = torch.atan2(fy, fx)  # from x (axis 1) towards y (axis 0)
    # Anti-aliased disc: each sample weighted by (approximately) the fraction of it inside the pupil,
    # so the PSF converges quickly with the grid size instead of carrying a staircase-edge error.
    samples_per_radius = grid_px * cutoff_cycles_per_px
    pupil = torch.clamp(0.5 + (1.0 - rho) * samples_per_radius, 0.0, 1.0)
    modes = torch.stack([zernike(2, 0, rho, theta), zernike(2, 2, rho, theta), zernike(2, -2, rho, theta)], dim=-1)
    # Shift by (q - 1) / 2 sub-pixels along both axes so the PSF centre is the centre of a q x q block,
    # i.e. of camera pixel 0, before the blocks are summed.
    shift = (oversampling - 1) / 2.0
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    ramp = torch.exp(-2j * math.pi * (kx + ky) * shift / n)
    inside = torch.nonzero(pupil.reshape(-1) > 0).reshape(-1)
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    return _PupilBasis(
        n,
        inside.to(device=device),
        (pupil * ramp).reshape(-1)[inside].to(device=device, dtype=cdtype),
        modes.reshape(-1, 3)[inside].to(device=device, dtype=dtype),
    )


def _zernike_chunk(coeffs: torch.Tensor, basis: _PupilBasis, grid_px: int, q: int, size_px: int) -> torch.Tensor:
    b, n = coeffs.shape[0], basis.size
    phase = coeffs @ basis.modes.T  # (b, K) waves
    field = torch.zeros(b, n * n, dtype=basis.weights.dtype, device=coeffs.device)
    field[:, basis.inside] = basis.weights * torch.polar(torch.ones_like(phase), 2.0 * math.pi * phase)
    amplitude = torch.fft.ifft2(field.reshape(b, n, n))
    intensity = amplitude.real**2 + amplitude.imag**2
    # Integrate over camera pixels: camera pixel j holds sub-pixels [j q, j q + q).
    camera = intensity.reshape(b, grid_px, q, grid_px, q).sum(dim=(2, 4))
    camera = torch.roll(camera, shifts=(size_px // 2, size_px // 2), dims=(-2, -1))[:, :size_px, :size_px]
    camera = camera.clamp_min(0)
    return camera / camera.sum(dim=(-2, -1), keepdim=True)


def _max_slope_waves(focus: torch.Tensor, astig_0: torch.Tensor, astig_45: torch.Tensor) -> float:
    """Largest wavefront slope over the pupil edge (waves per unit pupil radius) in a batch."""
    if focus.numel() == 0:
        return 0.0
    slope = 4.0 * math.sqrt(3.0) * focus.abs() + 2.0 * math.sqrt(6.0) * torch.hypot(astig_0, astig_45)
    return float(slope.max())


_Z3 = get_psf_model("Z-3")
_RANGE_SLOPE_WAVES = _max_slope_waves(
    torch.tensor([max(abs(_Z3.params[0].min), abs(_Z3.params[0].max))]),
    torch.tensor([max(abs(_Z3.params[1].min), abs(_Z3.params[1].max))]),
    torch.tensor([max(abs(_Z3.params[2].min), abs(_Z3.params[2].max))]),
)


def _check_size(size_px: int) -> None:
    if int(size_px) != size_px or size_px < 3 or size_px % 2 == 0:
        raise ValueError(f"PSF size_px must be an odd integer >= 3, got {size_px!r}")

"""Degradation of sharp textures into camera frames: PSF blur, illumination, Poisson–Gaussian noise, labels.

The image model of one training patch (paper eq. 9–10, with a camera added)::

    electrons(r) = photons * illumination(r) * (background + contrast * (h_a * t)(r))   expected signal
    raw(r)       = offset + gain * (Poisson(electrons(r)) + N(0, read_noise_e^2)) rounded to ADU

``t`` is the sharp texture in ``[0, 1]`` (``contrast`` scales it down for faint, low-contrast samples
such as unstained cells in transmitted light), ``h_a`` the PSF of parameters ``a``, ``photons`` the
expected photo-electrons at texture value 1 (global illumination level x exposure x quantum
efficiency: the paper's beta), ``illumination`` a smooth linear ramp (non-uniform illumination),
``gain`` in ADU per electron and ``offset`` in ADU. Patches are *raw* camera values: brightness,
offset and gain vary from patch to patch so that nothing can be learnt from absolute intensities; the
network normalises its input itself (see :func:`livepsf.data.textures.standardise`).

Blur is an FFT convolution of a texture crop that is larger than the patch by the PSF radius on every
side; only the "valid" part is kept, so no wrap-around and no padding artefact reaches the patch. When
a texture is too small, :func:`blur_fft` mirror-pads it (reflect padding).

Invalid rule (label a_0 = 1, paper Section II-E1: "minimal variance and white pixel ratio"). Three
criteria are decided on the sharp texture inside the central window (a strongly blurred but textured
patch is still a valid sample of a large PSF), one on the blurred window. With ``tw`` the window of the
sharp texture times its contrast, a patch is invalid when any of these holds:

* **SNR**: ``photons * modulation < min_snr * sqrt(photons * (mean(tw) + background) + read_noise_e^2)``
  with ``modulation = max(max(tw) - mean(tw), mean(tw) - min(tw))``: not even the strongest
  feature (a single bead counts) stands out of one pixel's noise (covers black and very dim patches);
* **contrast**: ``std(tw) < min_contrast * (mean(tw) + background)`` — a flat field, whatever the light;
* **white ratio**: more than ``max_white_ratio`` of the window's pixels are within 2 % of the window's
  maximum (saturated or blank areas with a few specks);
* **blurred SNR** (:func:`blurred_invalid`): ``photons * std(bw) < min_blurred_snr * sqrt(photons *
  (mean(bw) + background) + read_noise_e^2)`` with ``bw`` the *blurred* window: the blur has spread the
  texture below the noise (a few faint beads under a large PSF), so the window shows no PSF to measure.
  Such patches made the labels unlearnable noise (measured: focus R² 0.3 on them).

Explicit blank (flat grey) and black (no light) patches are added at ``invalid_fraction``.

Signal level and camera are drawn independently of the blur, so that neither the noise level nor the
brightness can stand in for the label: photons log-uniformly from 10² to 10⁶ per pixel at texture value
1, plus a ``noise_free_fraction`` of patches with no noise at all (expected values in ADU, unrounded),
the continuum's limit. Gain, offset and read noise are drawn on their own; the gain is then lowered
where the brightest expected pixel would pass 90 % of the 16-bit range (a user sets exposure or gain
below saturation: clipped highlights would erase the blur they hold).

For the robustness sweep of the paper's Fig. 7, :func:`apply_strength` applies one degradation of a
given *strength* to clean (noise-free) patches; see its docstring for the definition of strength.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch

__all__ = [
    "DegradationConfig",
    "DEGRADATION_KINDS",
    "apply_strength",
    "blur_fft",
    "blurred_invalid",
    "blurred_patch",
    "camera_noise",
    "invalid_rule",
    "psf_spectrum",
    "texture_spectrum",
]

Range = tuple[float, float]
DegradationKind = Literal["gaussian", "poisson", "mixed", "illumination", "gradient"]
DEGRADATION_KINDS: tuple[str, ...] = ("gaussian", "poisson", "mixed", "illumination", "gradient")

# From this expected count up, Poisson(lam) is drawn as lam + sqrt(lam) N(0, 1): same mean and
# variance, skewness 1/sqrt(lam) <= 0.32 ignored (read noise dilutes it further); torch.poisson costs
# ~70 ns per pixel and would dominate the batch time.
_POISSON_EXACT_BELOW = 10.0
_ADC_MAX = 65535.0


@dataclass(frozen=True)
class DegradationConfig:
    """Ranges of the random degradations applied to training patches (drawn independently per patch).

    Attributes
    ----------
    photons
        Expected photo-electrons per pixel at texture value 1, drawn log-uniformly: the global
        illumination level (exposure x brightness x quantum efficiency).
    background
        Uniform background added to the texture, as a fraction of the texture's full scale (uniform).
    contrast
        Factor on the texture (log-uniform): 1 uses the full ``[0, 1]`` range, 0.25 gives a faint,
        low-contrast sample on its background.
    read_noise_e
        Camera read noise, RMS electrons (uniform).
    gain_adu
        Camera gain, ADU per electron (log-uniform).
    offset_adu
        Camera offset (bias), ADU (uniform).
    gradient
        Non-uniform illumination: relative drop of a linear ramp across the patch in a random direction
        (uniform; 0.5 means one edge gets half the light of the opposite edge).
    invert_fraction
        Fraction of textures inverted (``1 - t``: dark objects on a bright background, transmitted light).
    invalid_fraction
        Fraction of explicit invalid patches (flat grey or black).
    noise_free_fraction
        Fraction of patches without any noise (expected values in ADU, not rounded): the limit of the
        photon continuum, so that the network sees what more signal converges to.
    black_fraction
        Among the explicit invalid patches, the fraction that are black (no light at all).
    min_snr, min_contrast, max_white_ratio, min_blurred_snr
        Thresholds of the invalid rule (module docstring).
    noise
        Draw Poisson and read noise; ``False`` gives the expected values (still with offset and gain).
    quantise
        Round to whole ADU and clip to the 16-bit range, as an ADC does.
    """

    photons: Range = (100.0, 1.0e6)
    background: Range = (0.0, 0.3)
    contrast: Range = (0.25, 1.0)
    read_noise_e: Range = (0.5, 6.0)
    gain_adu: Range = (0.5, 4.0)
    offset_adu: Range = (0.0, 1000.0)
    gradient: Range = (0.0, 0.6)
    invert_fraction: float = 0.3
    invalid_fraction: float = 0.08
    noise_free_fraction: float = 0.1
    black_fraction: float = 0.5
    min_snr: float = 1.0
    min_contrast: float = 0.02
    max_white_ratio: float = 0.98
    min_blurred_snr: float = 0.5
    noise: bool = True
    quantise: bool = True

    def __post_init__(self) -> None:
        ranges = ("photons", "background", "contrast", "read_noise_e", "gain_adu", "offset_adu", "gradient")
        for name in ranges:
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
                raise ValueError(f"DegradationConfig.{name} must be a range 0 <= lo <= hi, got {(lo, hi)}")
        for name in ("photons", "gain_adu", "contrast"):
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"DegradationConfig.{name} must be positive, got {getattr(self, name)}")
        if self.gradient[1] > 1:
            raise ValueError(f"DegradationConfig.gradient must lie in [0, 1], got {self.gradient}")
        for name in ("invert_fraction", "invalid_fraction", "black_fraction", "max_white_ratio",
                     "noise_free_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"DegradationConfig.{name} must lie in [0, 1], got {getattr(self, name)}")

    @classmethod
    def clean(cls, **overrides) -> DegradationConfig:
        """No noise, no camera, no illumination changes: patches are ``background + h * t`` in texture units.

        The starting point of the robustness sweep (:func:`apply_strength`). Textured patches are all
        valid unless the contrast or white-ratio rule flags them: with no noise, neither SNR rule applies.
        """
        base = dict(photons=(1.0, 1.0), background=(0.0, 0.0), contrast=(1.0, 1.0), read_noise_e=(0.0, 0.0),
                    gain_adu=(1.0, 1.0), offset_adu=(0.0, 0.0), gradient=(0.0, 0.0), noise=False,
                    quantise=False, min_snr=0.0, min_blurred_snr=0.0, noise_free_fraction=0.0)
        return cls(**(base | overrides))

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> DegradationConfig:
        return replace(self, **changes)


@dataclass
class PatchConditions:
    """Per-patch random draws of a batch (all ``(B,)`` float64 tensors), kept for inspection and tests."""

    photons: torch.Tensor
    background: torch.Tensor
    contrast: torch.Tensor
    read_noise_e: torch.Tensor
    gain_adu: torch.Tensor
    offset_adu: torch.Tensor
    gradient: torch.Tensor
    gradient_angle: torch.Tensor
    invert: torch.Tensor
    blank: torch.Tensor
    black: torch.Tensor
    noise_free: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.bool))
    extras: dict = field(default_factory=dict)

    @classmethod
    def draw(cls, n: int, config: DegradationConfig, generator: torch.Generator) -> PatchConditions:
        def uni(r: Range) -> torch.Tensor:
            return r[0] + (r[1] - r[0]) * torch.rand(n, generator=generator, dtype=torch.float64)

        def logu(r: Range) -> torch.Tensor:
            return torch.exp(uni((math.log(r[0]), math.log(r[1]))))

        u_invalid = torch.rand(n, generator=generator, dtype=torch.float64)
        u_black = torch.rand(n, generator=generator, dtype=torch.float64)
        explicit = u_invalid < config.invalid_fraction
        conditions = cls(
            photons=logu(config.photons),
            background=uni(config.background),
            contrast=logu(config.contrast),
            read_noise_e=uni(config.read_noise_e),
            gain_adu=logu(config.gain_adu),
            offset_adu=uni(config.offset_adu),
            gradient=uni(config.gradient),
            gradient_angle=uni((0.0, 2 * math.pi)),
            invert=torch.rand(n, generator=generator, dtype=torch.float64) < config.invert_fraction,
            blank=explicit & (u_black >= config.black_fraction),
            black=explicit & (u_black < config.black_fraction),
        )
        # Drawn last, so that the other draws of a stream do not depend on this fraction.
        conditions.noise_free = torch.rand(n, generator=generator, dtype=torch.float64) < config.noise_free_fraction
        return conditions

    def photons_for_rules(self) -> torch.Tensor:
        """Photons as the invalid rules see them: 0 for black patches, "infinite" (1e12) without noise."""
        photons = torch.where(self.black, 0.0, self.photons)
        return torch.where(self.noise_free & ~self.black, 1e12, photons)

    def gain_below_saturation(self, peak_electrons: torch.Tensor, fill: float = 0.9) -> torch.Tensor:
        """The drawn gain, lowered where ``offset + gain * peak_electrons`` would pass ``fill`` of the ADC range."""
        room = (fill * _ADC_MAX - self.offset_adu).clamp_min(1.0)
        return torch.minimum(self.gain_adu, room / peak_electrons.to(torch.float64).clamp_min(1e-9))


# -- blur ------------------------------------------------------------------------------------------


def _spectrum(x: torch.Tensor) -> torch.Tensor:
    """2D real FFT of ``(B, F, F)`` laid out transposed, ``(B, F // 2 + 1, F)`` (x frequency first).

    One 1D transform per axis with the second one on contiguous memory: ~1.5-2x faster on CPU than
    ``torch.fft.rfft2``, whose transform along the strided axis is slow.
    """
    return torch.fft.fft(torch.fft.rfft(x, dim=-1).transpose(-2, -1).contiguous(), dim=-1)


def psf_spectrum(psfs: torch.Tensor, fft_px: int) -> torch.Tensor:
    """Spectra of odd-sized PSFs ``(B, S, S)`` embedded in an ``fft_px`` square with their centre at (0, 0).

    Layout ``(B, fft_px // 2 + 1, fft_px)``: the transpose of ``torch.fft.rfft2``'s, as :func:`blur_fft`
    wants.
    """
    b, s, s2 = psfs.shape
    if s != s2 or s % 2 == 0 or s > fft_px:
        raise ValueError(f"PSFs must be odd squares no larger than {fft_px}, got {tuple(psfs.shape)}")
    r = s // 2
    kernel = torch.zeros(b, fft_px, fft_px, dtype=torch.float32, device=psfs.device)
    kernel[:, :s, :s] = psfs.to(torch.float32)
    kernel = torch.roll(kernel, shifts=(-r, -r), dims=(-2, -1))
    return _spectrum(kernel)


def blur_fft(
    textures: torch.Tensor, spectra: torch.Tensor, psf_size_px: int, out_px: int
) -> torch.Tensor:
    """Blur texture crops with PSFs by FFT and return the central ``out_px`` square of each.

    Parameters
    ----------
    textures
        ``(B, C, C)`` sharp crops. The output is exact ("valid" convolution, no wrap-around) when
        ``C >= out_px + psf_size_px - 1``; smaller crops are first mirror-padded (reflect) up to the
        spectra's size.
    spectra
        ``(B, F // 2 + 1, F)`` from :func:`psf_spectrum` with ``F >= out_px + psf_size_px - 1``.
    psf_size_px
        Side ``S`` of the PSFs the spectra were made from.
    out_px
        Side of the returned patches.

    Returns
    -------
    torch.Tensor
        ``(B, out_px, out_px)`` float32: the patch centred in the crop.
    """
    fft_px = spectra.shape[-1]
    _check_valid_patch(fft_px, psf_size_px, out_px)
    return blurred_patch(texture_spectrum(textures, fft_px).mul_(spectra), psf_size_px, out_px)


def texture_spectrum(textures: torch.Tensor, fft_px: int) -> torch.Tensor:
    """Spectra ``(B, F // 2 + 1, F)`` of sharp crops ``(B, C, C)`` as :func:`blur_fft` makes them.

    Crops smaller than ``fft_px`` are mirror-padded (reflect), larger ones cut to their centre. With
    :func:`blurred_patch`, one texture spectrum serves many PSFs (``blurred_patch(t * psf_spectra, ...)``).
    """
    c = textures.shape[-1]
    x = textures.to(torch.float32)
    if c < fft_px:
        # Mirror-pad (reflect) to the FFT size: whatever wraps around is then mirrored texture.
        lo = (fft_px - c) // 2
        pad = (lo, fft_px - c - lo, lo, fft_px - c - lo)
        x = torch.nn.functional.pad(x[:, None], pad, mode="reflect")[:, 0]
    elif c > fft_px:
        lo = (c - fft_px) // 2
        x = x[:, lo : lo + fft_px, lo : lo + fft_px]
    return _spectrum(x)


def blurred_patch(product: torch.Tensor, psf_size_px: int, out_px: int) -> torch.Tensor:
    """The central ``out_px`` square ``(B, out_px, out_px)`` of the inverse transform of texture x PSF spectra.

    ``product`` is ``texture_spectrum(...) * psf_spectrum(...)``, ``(B, F // 2 + 1, F)``; the result is
    the "valid" part of the convolution, as :func:`blur_fft` returns it.
    """
    fft_px = product.shape[-1]
    _check_valid_patch(fft_px, psf_size_px, out_px)
    # Output pixel i sees inputs i - r .. i + r; the patch is centred in the crop.
    start = (fft_px - out_px) // 2
    # Inverse transform one axis at a time (contiguous each time), keeping only the patch's rows
    # before the second axis: cheaper than a full irfft2 followed by a crop.
    rows = torch.fft.ifft(product, dim=-1)[..., start : start + out_px].transpose(-2, -1).contiguous()
    return torch.fft.irfft(rows, n=fft_px, dim=-1)[..., start : start + out_px]


def _check_valid_patch(fft_px: int, psf_size_px: int, out_px: int) -> None:
    r = psf_size_px // 2
    if fft_px < out_px + 2 * r:
        raise ValueError(f"FFT size {fft_px} cannot hold a {out_px}px patch with a {psf_size_px}px PSF")
    if (fft_px - out_px) // 2 < r:
        raise ValueError("patch does not fit inside the valid region of the convolution")


# -- illumination and camera -----------------------------------------------------------------------


def illumination_ramp(n_px: int, drop: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Linear illumination ramps ``(B, n, n)``: 1 at one edge, ``1 - drop`` at the opposite edge."""
    coord = torch.linspace(-0.5, 0.5, n_px, dtype=torch.float32)
    c, s = torch.cos(angle).float(), torch.sin(angle).float()
    norm = c.abs() + s.abs()
    # proj = (x cos + y sin) / (|cos| + |sin|) lies in [-0.5, 0.5] over the square: separable in x and y.
    px = (c / norm)[:, None] * coord[None, :]
    py = (s / norm)[:, None] * coord[None, :]
    d = drop.float()[:, None, None]
    return (1.0 - 0.5 * d) + d * (py[:, :, None] + px[:, None, :])


def camera_noise(
    electrons: torch.Tensor,
    read_noise_e: torch.Tensor | float,
    gain_adu: torch.Tensor | float,
    offset_adu: torch.Tensor | float,
    generator: torch.Generator | None = None,
    *,
    noise: bool = True,
    quantise: bool = True,
) -> torch.Tensor:
    """Mixed Poisson–Gaussian camera model (paper eq. 10 with gain and offset), per image.

    ``raw = offset + gain * (Poisson(electrons) + N(0, read_noise_e^2))``, rounded to whole ADU and
    clipped to ``[0, 65535]`` when ``quantise``. Expected value ``offset + gain * electrons``; variance
    ``gain^2 (electrons + read_noise_e^2)`` (+ 1/12 ADU² of rounding). Counts of 10 and more are drawn
    from the matching normal distribution (same mean and variance).

    Parameters
    ----------
    electrons
        ``(B, ...)`` expected photo-electrons per pixel (>= 0).
    read_noise_e, gain_adu, offset_adu
        Scalars or ``(B,)`` per image.
    """
    lam = electrons.to(torch.float32).clamp_min(0)
    read, gain, offset = (_per_image(v, lam.ndim) for v in (read_noise_e, gain_adu, offset_adu))
    if noise:
        # Where the Poisson part is drawn as a normal, shot and read noise are one normal of variance
        # lam + read^2: a single draw per pixel. Elsewhere, exact Poisson plus read * the same draw.
        z = torch.randn(lam.shape, generator=generator, dtype=torch.float32)
        counts = torch.addcmul(lam, (lam + read**2).sqrt_(), z)
        small = lam < _POISSON_EXACT_BELOW
        if bool(small.any()):
            read_small = read.expand_as(lam)[small] if read.ndim else read
            counts[small] = torch.poisson(lam[small], generator=generator) + read_small * z[small]
    else:
        counts = lam.clone()
    raw = torch.addcmul(offset, counts, gain, out=counts)  # offset + gain * counts, in place
    if quantise:
        raw = raw.round_().clamp_(0.0, _ADC_MAX)
    return raw


def _per_image(value: torch.Tensor | float, ndim: int) -> torch.Tensor:
    """A scalar, or a ``(B,)`` tensor reshaped to broadcast over the trailing image axes."""
    v = torch.as_tensor(value, dtype=torch.float32)
    return v.reshape((-1,) + (1,) * (ndim - 1)) if v.ndim else v


# -- labels ----------------------------------------------------------------------------------------


def _pixel_noise_e(photons: torch.Tensor, mean: torch.Tensor, background: torch.Tensor,
                   read_noise_e: torch.Tensor) -> torch.Tensor:
    """Noise (electrons RMS) of a pixel at texture level ``mean``: shot noise and read noise, float64."""
    level = mean.to(torch.float64) + background.to(torch.float64)
    return torch.sqrt(photons.to(torch.float64) * level + read_noise_e.to(torch.float64) ** 2)


def invalid_rule(
    windows: torch.Tensor,
    photons: torch.Tensor,
    background: torch.Tensor,
    read_noise_e: torch.Tensor,
    config: DegradationConfig,
) -> torch.Tensor:
    """The invalid label (1.0 = textureless) of each sharp texture window ``(B, W, W)`` in ``[0, 1]``.

    See the module docstring for the three criteria (SNR, contrast, white ratio).
    """
    t = windows.to(torch.float32)  # (B, W, W), possibly a strided view: reduce without copying
    dims = (-2, -1)
    var, mean = torch.var_mean(t, dim=dims, unbiased=False)
    mean, std = mean.to(torch.float64), var.to(torch.float64).sqrt()
    top, bottom = t.amax(dim=dims).to(torch.float64), t.amin(dim=dims).to(torch.float64)
    modulation = torch.maximum(top - mean, mean - bottom)
    photons = photons.to(torch.float64)
    noise = _pixel_noise_e(photons, mean, background, read_noise_e)
    low_snr = photons * modulation < config.min_snr * noise
    low_contrast = std < config.min_contrast * (mean + background)
    white = (t >= top.float()[:, None, None] - 0.02).sum(dim=dims) > config.max_white_ratio * t[0].numel()
    return (low_snr | low_contrast | white).to(torch.float32)


def blurred_invalid(
    blurred: torch.Tensor,
    photons: torch.Tensor,
    background: torch.Tensor,
    read_noise_e: torch.Tensor,
    config: DegradationConfig,
) -> torch.Tensor:
    """The blurred-SNR part of the invalid rule (1.0 = no PSF visible) for blurred windows ``(B, W, W)``.

    ``blurred`` is the texture (times contrast, in texture units) after the PSF, before illumination
    and noise: invalid where its per-pixel modulation ``photons * std`` is below ``min_blurred_snr``
    times the noise of the mean pixel.
    """
    var, mean = torch.var_mean(blurred.to(torch.float32), dim=(-2, -1), unbiased=False)
    photons = photons.to(torch.float64)
    noise = _pixel_noise_e(photons, mean, background, read_noise_e)
    return (photons * var.to(torch.float64).sqrt() < config.min_blurred_snr * noise).to(torch.float32)


# -- the robustness sweep (paper Fig. 7) -----------------------------------------------------------


def apply_strength(
    clean: torch.Tensor,
    kind: DegradationKind,
    strength: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Apply one degradation of a given strength to clean patches (paper Section III-C, Fig. 7).

    Strength is dimensionless, 0 = no degradation, and is defined relative to each patch's peak value
    ``p = max(patch)`` (its white level), so that it means the same for any brightness:

    * ``"gaussian"`` — add zero-mean Gaussian noise of standard deviation ``strength * p``
      (strength 0.5: the noise std is half the white level);
    * ``"poisson"`` — photon noise with ``1 / strength^2`` photons at the white level: each pixel
      becomes ``Poisson(x / p / strength^2) * p * strength^2``, so the noise std at the white level is
      ``strength * p`` (strength 0.5: 4 photons at the white level, SNR 2);
    * ``"mixed"`` — both of the above at the same strength (total std at the white level
      ``sqrt(2) * strength * p``);
    * ``"illumination"`` — global illumination level scaled by ``1 - strength`` (strength in [0, 1));
    * ``"gradient"`` — non-uniform illumination: a linear ramp from 1 to ``1 - strength`` across the
      patch along a random direction (strength in [0, 1]).

    Parameters
    ----------
    clean
        ``(B, ..., H, W)`` non-negative noise-free patches, e.g. from
        ``eval_set(..., degradation=DegradationConfig.clean())``.

    Returns
    -------
    torch.Tensor
        Degraded patches, float32, same shape (not clipped: Gaussian noise may go negative, as
        offset-subtracted camera data do).
    """
    if kind not in DEGRADATION_KINDS:
        raise ValueError(f"unknown degradation {kind!r}; choose from {', '.join(DEGRADATION_KINDS)}")
    if not (math.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    x = clean.to(torch.float32)
    if strength == 0:
        return x.clone()
    b = x.shape[0]
    flat = x.reshape(b, -1)
    peak = flat.max(dim=1).values.clamp_min(1e-12).reshape((b,) + (1,) * (x.ndim - 1))
    if kind == "illumination":
        if strength >= 1:
            raise ValueError("illumination strength must be below 1 (1 would be no light at all)")
        return x * (1.0 - strength)
    if kind == "gradient":
        if strength > 1:
            raise ValueError("gradient strength must lie in [0, 1]")
        angle = 2 * math.pi * torch.rand(b, generator=generator, dtype=torch.float64)
        ramp = illumination_ramp(x.shape[-1], torch.full((b,), strength, dtype=torch.float64), angle)
        if x.shape[-2] != x.shape[-1]:
            raise ValueError("gradient degradation needs square patches")
        return x * ramp.reshape((b,) + (1,) * (x.ndim - 3) + ramp.shape[-2:])
    out = x
    if kind in ("poisson", "mixed"):
        photons_at_peak = 1.0 / strength**2
        lam = (x / peak).clamp_min(0) * photons_at_peak
        out = torch.poisson(lam, generator=generator) * (peak / photons_at_peak)
    if kind in ("gaussian", "mixed"):
        out = out + strength * peak * torch.randn(x.shape, generator=generator, dtype=torch.float32)
    return out

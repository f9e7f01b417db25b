"""Image formation of the simulated microscope: spatially-variant defocus blur, then a noisy camera.

Blur. Every pixel of a thin sample lies at its own height, so its local defocus (stage Z minus surface
height, in µm) maps to a Zernike defocus coefficient through :meth:`Optics.defocus_waves`; a cylindrical
lens adds a fixed astigmatism everywhere. Instead of a different PSF per pixel, the renderer blurs the
sample with the PSFs of a few *defocus levels* spaced ``level_step_waves`` apart (the levels sit on a
fixed grid ``k * level_step_waves``, so their PSFs are cached across stage positions) and mixes, at each
pixel, the two levels that bracket its defocus with linear (hat-function) weights. The weights are
continuous in the defocus, so a smoothly varying surface gives a seamless image. Each level is
convolved only over the band of the frame that needs it, by FFT, with enough surrounding sample
(``margin``) that the frame edges are blurred with real content rather than padding.

Camera. The noiseless render is relative brightness (1 = fully transmitting / brightest sample); the
camera turns it into photo-electrons ``brightness * photon_flux_per_ms * exposure_ms``, draws shot noise
(Poisson; its Gaussian limit above :data:`EXACT_POISSON_BELOW_E` electrons, where the two cannot be told
apart and the Gaussian is 6x cheaper), adds Gaussian read noise, multiplies by the gain and adds the
offset: the mixed Poisson–Gaussian model of the paper (eq. 10) in camera units.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
import torch

from livepsf.optics import Optics, fast_fft_size, zernike_psf

__all__ = [
    "EXACT_POISSON_BELOW_E",
    "LENS_ASTIG_0_WAVES",
    "CameraSensor",
    "DefocusRenderer",
    "ExposureModel",
    "render_defocus",
]

#: Astigmatism added by the cylindrical lens when it is in, Zernike Z(2, 2), RMS waves. With it, a point
#: *below* the focal plane (local defocus = stage Z - height > 0, focus > 0) images longer along x
#: (array axis 1) and a point *above* it (focus < 0) longer along y (axis 0); see PAPER.md.
LENS_ASTIG_0_WAVES = 0.3

#: Shot noise is drawn exactly (Poisson) where fewer photo-electrons than this are expected per pixel;
#: above, its Gaussian limit N(lambda, lambda) is used.
EXACT_POISSON_BELOW_E = 30.0

# PSF support: geometric blur radius plus this many diffraction lengths (wavelength / NA) on each side.
# Beyond it the PSF holds under 1 % of its energy (checked in tests/test_sim_render.py).
_PSF_MARGIN_DIFFRACTION = 5.0


class DefocusRenderer:
    """Blurs a sample with a spatially-variant defocus (+ fixed astigmatism) PSF.

    Parameters
    ----------
    optics
        Optical sampling (NA, wavelength, pixel size); the default optics when omitted.
    level_step_waves
        Spacing of the defocus levels, RMS waves. 0.1 waves (4.2 µm at the default optics) keeps the
        difference to a per-pixel-exact render at the percent level; smaller is finer and slower.
    max_cached_psfs
        How many level PSFs to keep (they are reused across stage positions).
    level_cache_mb
        Memory for whole-frame level images when :meth:`render` is given a ``cache_key`` (see there).
    spectrum_cache_mb
        Memory for the Fourier transforms of level PSFs at the band sizes in use. A frame-sized
        transform is about 5 MB: bounded by count alone, they grew to 1.4 GB in an hour of stage moves.
    """

    def __init__(
        self,
        optics: Optics | None = None,
        level_step_waves: float = 0.1,
        max_cached_psfs: int = 256,
        level_cache_mb: float = 256.0,
        spectrum_cache_mb: float = 256.0,
    ) -> None:
        if not (math.isfinite(level_step_waves) and level_step_waves > 0):
            raise ValueError(f"level_step_waves must be positive, got {level_step_waves!r}")
        self.optics = optics or Optics()
        self.level_step_waves = float(level_step_waves)
        self._psfs: OrderedDict[tuple[int, float, float], torch.Tensor] = OrderedDict()
        self._spectra: OrderedDict[tuple[int, float, float, tuple[int, int]], torch.Tensor] = OrderedDict()
        self._levels: OrderedDict[tuple[Hashable, int, float, float], torch.Tensor] = OrderedDict()
        self._max_cached = int(max_cached_psfs)
        self._level_cache_bytes = int(level_cache_mb * 2**20)
        self._spectrum_cache_bytes = int(spectrum_cache_mb * 2**20)
        self._lock = threading.Lock()

    # -- PSFs of the levels ----------------------------------------------------------------------
    def psf_radius_px(self, focus_waves: float, astig_0_waves: float = 0.0, astig_45_waves: float = 0.0) -> int:
        """Half-width of the PSF support used for a level: geometric blur plus a diffraction margin."""
        slope_waves = 4.0 * math.sqrt(3.0) * abs(focus_waves) + 2.0 * math.sqrt(6.0) * math.hypot(astig_0_waves, astig_45_waves)
        return math.ceil((slope_waves + _PSF_MARGIN_DIFFRACTION) / self.optics.cutoff_cycles_per_px)

    def level_psf(self, level: int, astig_0_waves: float = 0.0, astig_45_waves: float = 0.0) -> torch.Tensor:
        """PSF (float32, odd square, sum 1) of defocus level ``level`` (focus = level * step)."""
        # PSF(d, A) == PSF(-d, -A): store one of each pair.
        key = (level, astig_0_waves, astig_45_waves) if level >= 0 else (-level, -astig_0_waves, -astig_45_waves)
        key = (key[0], float(key[1]) + 0.0, float(key[2]) + 0.0)
        with self._lock:
            if key in self._psfs:
                self._psfs.move_to_end(key)
                return self._psfs[key]
        focus = key[0] * self.level_step_waves
        size = 2 * self.psf_radius_px(focus, key[1], key[2]) + 1
        psf = zernike_psf(torch.tensor([focus]), torch.tensor([key[1]]), torch.tensor([key[2]]), size, self.optics)[0]
        with self._lock:
            self._psfs[key] = psf
            while len(self._psfs) > self._max_cached:
                self._psfs.popitem(last=False)
        return psf

    # -- rendering -------------------------------------------------------------------------------
    def render(
        self,
        sample: np.ndarray,
        defocus_um: np.ndarray,
        *,
        astig_0_waves: float = 0.0,
        astig_45_waves: float = 0.0,
        cache_key: Hashable | None = None,
    ) -> np.ndarray:
        """Blur ``sample`` with the local PSF given by ``defocus_um`` at every output pixel.

        Without ``cache_key`` each level is convolved only over the band of pixels that needs it (the
        cheapest one-off render). With a ``cache_key`` naming the sample (the caller promises the same
        key means the same sample), every level is blurred over the whole frame once and kept: a
        level image does not depend on the stage Z or the surface, so re-rendering after a stage move
        or a tilt change only re-mixes cached levels and blurs the few new ones that come into range.

        Parameters
        ----------
        sample
            Sharp sample, ``(H + 2m, W + 2m)``: the frame plus a margin of ``m`` pixels of real sample
            on every side (``m >= 0``), used so the frame edges blur with true neighbours. Where a PSF
            reaches beyond the margin, the sample is mirrored.
        defocus_um
            ``(H, W)`` local defocus (stage Z - surface height), µm, of each output pixel.
        astig_0_waves, astig_45_waves
            Fixed astigmatism (e.g. a cylindrical lens), RMS waves.

        Returns
        -------
        np.ndarray
            ``(H, W)`` float32 blurred image (same units as ``sample``).
        """
        sample = np.asarray(sample, dtype=np.float32)
        defocus_um = np.asarray(defocus_um)
        if sample.ndim != 2 or defocus_um.ndim != 2:
            raise ValueError("sample and defocus_um must be 2D arrays")
        pad_y, pad_x = (sample.shape[0] - defocus_um.shape[0]), (sample.shape[1] - defocus_um.shape[1])
        if pad_y < 0 or pad_x < 0 or pad_y % 2 or pad_x % 2 or pad_y != pad_x:
            raise ValueError(
                f"sample {sample.shape} must be the defocus map {defocus_um.shape} plus an equal margin on every side"
            )
        if not np.isfinite(defocus_um).all():
            raise ValueError("defocus_um must be finite")
        margin = pad_y // 2
        h, w = defocus_um.shape

        level_pos = torch.from_numpy(self.optics.defocus_waves(defocus_um) / self.level_step_waves).float()
        lower = torch.floor(level_pos)
        frac = level_pos - lower
        lower = lower.to(torch.int32)
        k_min, k_max = int(lower.min()), int(lower.max()) + 1

        radii = {k: self.psf_radius_px(k * self.level_step_waves, astig_0_waves, astig_45_waves) for k in range(k_min, k_max + 1)}
        extra = max(0, max(radii.values()) - margin)
        canvas = torch.from_numpy(sample)
        if extra:
            # Mirror beyond the sample's own margin ("reflect" needs the pad below the size: repeat if not).
            while extra:
                step = min(extra, min(canvas.shape) - 1)
                canvas = torch.nn.functional.pad(canvas[None, None], (step, step, step, step), mode="reflect")[0, 0]
                extra -= step
        offset = (canvas.shape[0] - h) // 2  # canvas index of output pixel (0, 0)

        # Rows / columns whose lower level spans [lo, hi]: level k is needed there only if lo <= k <= hi + 1.
        row_lo, row_hi = lower.amin(dim=1), lower.amax(dim=1)
        col_lo, col_hi = lower.amin(dim=0), lower.amax(dim=0)
        out = torch.zeros(h, w, dtype=torch.float32)
        for k in range(k_min, k_max + 1):
            rows = torch.nonzero((row_lo <= k) & (row_hi >= k - 1)).flatten()
            cols = torch.nonzero((col_lo <= k) & (col_hi >= k - 1)).flatten()
            if len(rows) == 0 or len(cols) == 0:
                continue
            y0, y1 = int(rows[0]), int(rows[-1]) + 1
            x0, x1 = int(cols[0]), int(cols[-1]) + 1
            # Hat weight of level k: 1 - frac where k is the lower level, frac where it is the upper one.
            low, fr = lower[y0:y1, x0:x1], frac[y0:y1, x0:x1]
            weight = torch.where(low == k, 1.0 - fr, torch.where(low == k - 1, fr, 0.0))
            if cache_key is None:
                blurred = self._blur(canvas, offset, (y0, y1, x0, x1), k, astig_0_waves, astig_45_waves)
            else:
                blurred = self._level_image(cache_key, canvas, offset, (h, w), k, astig_0_waves, astig_45_waves)[y0:y1, x0:x1]
            out[y0:y1, x0:x1] += weight * blurred
        return out.numpy()

    def _blur(self, canvas: torch.Tensor, offset: int, box: tuple[int, int, int, int], level: int,
              astig_0_waves: float, astig_45_waves: float) -> torch.Tensor:
        """Output pixels ``box`` = (y0, y1, x0, x1) of the canvas blurred with the PSF of ``level``."""
        y0, y1, x0, x1 = box
        r = self.level_psf(level, astig_0_waves, astig_45_waves).shape[-1] // 2
        crop = canvas[offset + y0 - r : offset + y1 + r, offset + x0 - r : offset + x1 + r]
        fft_shape = (fast_fft_size(crop.shape[0]), fast_fft_size(crop.shape[1]))
        spectrum = self._psf_spectrum(level, astig_0_waves, astig_45_waves, fft_shape)
        return _fft_convolve_valid(crop, spectrum, r, fft_shape)

    def _level_image(self, cache_key: Hashable, canvas: torch.Tensor, offset: int, shape: tuple[int, int],
                     level: int, astig_0_waves: float, astig_45_waves: float) -> torch.Tensor:
        key = (cache_key, level, float(astig_0_waves), float(astig_45_waves))
        with self._lock:
            if key in self._levels and self._levels[key].shape == shape:
                self._levels.move_to_end(key)
                return self._levels[key]
        image = self._blur(canvas, offset, (0, shape[0], 0, shape[1]), level, astig_0_waves, astig_45_waves).contiguous()
        with self._lock:
            self._levels[key] = image
            _evict_oldest(self._levels, self._level_cache_bytes)
        return image

    def clear_level_cache(self) -> None:
        """Forget the cached whole-frame level images (e.g. after the sample changed under the same key)."""
        with self._lock:
            self._levels.clear()

    def _psf_spectrum(self, level: int, astig_0_waves: float, astig_45_waves: float, fft_shape: tuple[int, int]) -> torch.Tensor:
        # Band sizes repeat between nearby stage positions, so the transformed PSFs are worth keeping.
        key = (level, float(astig_0_waves), float(astig_45_waves), fft_shape)
        with self._lock:
            if key in self._spectra:
                self._spectra.move_to_end(key)
                return self._spectra[key]
        spectrum = torch.fft.rfft2(self.level_psf(level, astig_0_waves, astig_45_waves), s=fft_shape)
        with self._lock:
            self._spectra[key] = spectrum
            _evict_oldest(self._spectra, self._spectrum_cache_bytes, self._max_cached)
        return spectrum


def _evict_oldest(cache: OrderedDict, max_bytes: int, max_items: int | None = None) -> None:
    """Drop least recently used tensors until the cache holds at most ``max_bytes`` (and ``max_items``).

    The newest entry always stays, so a single entry larger than the budget still works.
    """
    used = sum(v.numel() * v.element_size() for v in cache.values())
    while len(cache) > 1 and (used > max_bytes or (max_items is not None and len(cache) > max_items)):
        _, dropped = cache.popitem(last=False)
        used -= dropped.numel() * dropped.element_size()


def _fft_convolve_valid(crop: torch.Tensor, psf_spectrum: torch.Tensor, r: int, fft_shape: tuple[int, int]) -> torch.Tensor:
    """Linear convolution of ``crop`` (h + 2r, w + 2r) with a (2r + 1)² PSF given by its ``fft_shape`` rfft2.

    Returns the (h, w) interior, where the PSF lies entirely on the crop.
    """
    hh, ww = crop.shape[0] - 2 * r, crop.shape[1] - 2 * r
    full = torch.fft.irfft2(torch.fft.rfft2(crop, s=fft_shape) * psf_spectrum, s=fft_shape)
    # full[j] = sum_m crop[j - m] psf[m]; output pixel y (crop index y + r) is full[y + 2r]. No wrap-around
    # reaches it because the transform is at least as long as the crop.
    return full[2 * r : 2 * r + hh, 2 * r : 2 * r + ww]


def render_defocus(
    sample: np.ndarray,
    defocus_um: np.ndarray,
    optics: Optics | None = None,
    *,
    astig_0_waves: float = 0.0,
    astig_45_waves: float = 0.0,
    level_step_waves: float = 0.1,
) -> np.ndarray:
    """One-off spatially-variant render; see :meth:`DefocusRenderer.render` (reuse a renderer for speed)."""
    renderer = DefocusRenderer(optics, level_step_waves)
    return renderer.render(sample, defocus_um, astig_0_waves=astig_0_waves, astig_45_waves=astig_45_waves)


# -- camera ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraSensor:
    """Photon-to-ADU model of a scientific camera.

    Parameters
    ----------
    photon_flux_per_ms
        Photo-electrons per millisecond in a pixel of brightness 1.
    gain_adu_per_e
        ADU per photo-electron.
    read_noise_e
        Standard deviation of the Gaussian read noise, electrons.
    offset_adu
        Camera offset (bias) added to every pixel.
    """

    photon_flux_per_ms: float = 300.0
    gain_adu_per_e: float = 0.5
    read_noise_e: float = 2.0
    offset_adu: float = 100.0
    max_adu: int = 65535

    def __post_init__(self) -> None:
        for name in ("photon_flux_per_ms", "gain_adu_per_e"):
            if not (getattr(self, name) > 0):
                raise ValueError(f"CameraSensor.{name} must be positive, got {getattr(self, name)!r}")
        for name in ("read_noise_e", "offset_adu"):
            if not (getattr(self, name) >= 0):
                raise ValueError(f"CameraSensor.{name} must be non-negative, got {getattr(self, name)!r}")

    def exposure(self, brightness: np.ndarray, exposure_ms: float) -> ExposureModel:
        """Precompute the per-pixel noise model of one exposure of a noiseless image."""
        return ExposureModel(self, brightness, exposure_ms)


class ExposureModel:
    """Mean and spread of every pixel for one (noiseless image, exposure); draws noisy frames fast.

    Build it once per render and exposure time, then call :meth:`draw` per frame.
    """

    def __init__(self, sensor: CameraSensor, brightness: np.ndarray, exposure_ms: float) -> None:
        if not (exposure_ms >= 0):
            raise ValueError(f"exposure_ms must be non-negative, got {exposure_ms!r}")
        self.sensor = sensor
        self.exposure_ms = float(exposure_ms)
        electrons = torch.from_numpy(np.clip(np.asarray(brightness, dtype=np.float32), 0, None)) * (
            sensor.photon_flux_per_ms * self.exposure_ms
        )
        self.shape = tuple(electrons.shape)
        g = sensor.gain_adu_per_e
        self._mean = (electrons * g + sensor.offset_adu).flatten()
        self._std = ((electrons + sensor.read_noise_e**2).sqrt() * g).flatten()
        low = torch.nonzero(electrons.flatten() < EXACT_POISSON_BELOW_E).flatten()
        self._low_index = low
        self._low_electrons = electrons.flatten()[low]
        self.mean_electrons = float(electrons.mean())

    def draw(self, out: np.ndarray, generator: torch.Generator) -> None:
        """Fill ``out`` (uint16, the image shape) with one noisy frame."""
        s = self.sensor
        noise = torch.randn(self._mean.shape, generator=generator, dtype=torch.float32)
        adu = torch.addcmul(self._mean, self._std, noise)
        if len(self._low_index):
            read = torch.randn(self._low_index.shape, generator=generator, dtype=torch.float32) * s.read_noise_e
            shot = torch.poisson(self._low_electrons, generator=generator)
            adu[self._low_index] = (shot + read) * s.gain_adu_per_e + s.offset_adu
        adu = adu.round_().clamp_(0, s.max_adu).to(torch.int32)
        out[...] = adu.numpy().reshape(self.shape)

"""The physics core: Zernike pupils, PSF models and their parameter specifications.

Training-data synthesis, the simulator and deconvolution all draw their PSFs from here, so that a PSF
parameter means the same thing everywhere.
"""

from livepsf.optics.params import PSF_MODELS, ParamSpec, PSFModelSpec, cylinder_axis, get_psf_model
from livepsf.optics.psf import Optics, fast_fft_size, gaussian_psf, make_psf, psf_batch, zernike_psf

__all__ = [
    "PSF_MODELS",
    "Optics",
    "PSFModelSpec",
    "ParamSpec",
    "cylinder_axis",
    "fast_fft_size",
    "gaussian_psf",
    "get_psf_model",
    "make_psf",
    "psf_batch",
    "zernike_psf",
]

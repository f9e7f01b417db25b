"""livepsf: real-time spatially-variant PSF estimation, depth from astigmatism and deconvolution.

The public API (kept stable; scripts and notebooks depend on it)::

    import livepsf
    psf = livepsf.make_psf("Z-3", size_px=129, optics=livepsf.Optics(), focus=1.0, astig_0=0.3, astig_45=0.0)
    model = livepsf.load_model("default")          # shipped name, or a .pt path with its .json card
    mapper = livepsf.PSFMapper(model, stride_px=64)
    pmap = mapper(frame)                           # PSFMap
    cal = livepsf.Calibration.load(path)
    z_um = cal.depth_um(pmap)
    cal = livepsf.calibrate_tilted_grid(frames, tilt_deg=[3, 6, 10], pixel_size_um=0.65, mapper=mapper)
    out = livepsf.deconvolve(image, pmap, iterations=20)
    result = livepsf.autofocus(core, mapper=mapper, calibration=cal)   # AutofocusResult

The simulator is ``livepsf.sim.create_core``; the live loop ``livepsf.acquisition.loop.LiveLoop``; the
window ``livepsf.gui`` (imports Qt, so it is not loaded here).
"""

__version__ = "0.1.0"

from livepsf.acquisition.autofocus import AutofocusResult, autofocus
from livepsf.deconv import deconvolve
from livepsf.depth import Calibration, calibrate_tilted_grid
from livepsf.errors import InputError
from livepsf.mapping import PSFMap, PSFMapper
from livepsf.net import ModelCard, PSFNet, available_models, load_model
from livepsf.optics import Optics, make_psf

__all__ = [
    "AutofocusResult",
    "Calibration",
    "InputError",
    "ModelCard",
    "Optics",
    "PSFMap",
    "PSFMapper",
    "PSFNet",
    "__version__",
    "autofocus",
    "available_models",
    "calibrate_tilted_grid",
    "deconvolve",
    "load_model",
    "make_psf",
]

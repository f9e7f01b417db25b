"""Simulated microscope on pymmcore-plus: real Micro-Manager devices over a physical image model.

``create_core()`` returns a ``UniMMCore`` (a ``CMMCorePlus``) with a camera ``Camera``, focus stage
``Z``, XY stage ``XY`` (the sample extends beyond the field), cylindrical lens ``Lens`` (state device
Out/In), specimen ``Sample`` (properties ``Sample``, ``TiltDeg``, ``TiltAxis``, ``CurvaturePerMm``,
``Seed``, ``DriftUmPerMin``) and lamp ``Shutter``; any code written against ``CMMCorePlus`` (snap,
sequence acquisition, MDA, events) drives it unchanged. The image of a thin sample on a tilted / curved
surface is blurred pixel by pixel with the Zernike PSF of its local defocus
(stage Z - surface height), plus the lens astigmatism, then recorded with Poisson–Gaussian noise.
``ground_truth(core)`` gives the true height and defocus maps of the last frame.

Conventions: local defocus = Z - height (µm), > 0 below the focal plane; ``Optics.defocus_waves`` turns
it into the Zernike focus coefficient. With the lens in, a point below focus images longer along x
(columns), above focus longer along y (rows).
"""

from livepsf.sim.microscope import (
    GroundTruth,
    SceneState,
    SimCamera,
    SimClock,
    SimLens,
    SimSample,
    SimScene,
    SimShutter,
    SimXYStage,
    SimZStage,
    create_core,
    get_scene,
    ground_truth,
)
from livepsf.sim.render import LENS_ASTIG_0_WAVES, CameraSensor, DefocusRenderer, render_defocus
from livepsf.sim.samples import SAMPLES, TILT_AXES, SurfaceGeometry, sample_brightness

__all__ = [
    "LENS_ASTIG_0_WAVES",
    "SAMPLES",
    "TILT_AXES",
    "CameraSensor",
    "DefocusRenderer",
    "GroundTruth",
    "SceneState",
    "SimCamera",
    "SimClock",
    "SimLens",
    "SimSample",
    "SimScene",
    "SimShutter",
    "SimXYStage",
    "SimZStage",
    "SurfaceGeometry",
    "create_core",
    "get_scene",
    "ground_truth",
    "render_defocus",
    "sample_brightness",
]

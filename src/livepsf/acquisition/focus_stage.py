"""The focus drive and camera of a core, for code that moves focus and snaps (autofocus, z-stacks)."""

from __future__ import annotations

from typing import Any

import numpy as np

from livepsf.errors import InputError

__all__ = ["FocusStage"]


class FocusStage:
    """Snaps and focus moves on a core, counted; keeps moves within the focus drive's limits.

    Refuses a core without a focus drive or camera, or one whose live view (a sequence acquisition) is
    running: moving the stage under a running acquisition would mix positions within the frames.
    """

    def __init__(self, core: Any, z_limits_um: tuple[float, float] | None) -> None:
        if not core.getFocusDevice():
            raise InputError("the microscope has no focus drive (core.getFocusDevice() is empty)")
        if not core.getCameraDevice():
            raise InputError("the microscope has no camera (core.getCameraDevice() is empty)")
        if core.isSequenceRunning():
            raise InputError("a sequence acquisition (live view) is running: stop it before autofocus, or "
                             "use FocusLock on the live results")
        self.core = core
        self.limits = z_limits_um
        self.frames = 0
        self.moves = 0

    @property
    def z(self) -> float:
        return float(self.core.getZPosition())

    def move(self, z_um: float) -> float:
        if self.limits is not None:
            z_um = min(max(z_um, self.limits[0]), self.limits[1])
        if abs(z_um - self.z) > 1e-6:
            self.core.setZPosition(float(z_um))
            self.core.waitForDevice(self.core.getFocusDevice())
            self.moves += 1
        return self.z

    def snap(self) -> np.ndarray:
        self.core.snapImage()
        self.frames += 1
        img = np.asarray(self.core.getImage())
        return img if img.ndim == 2 else img[..., 0]

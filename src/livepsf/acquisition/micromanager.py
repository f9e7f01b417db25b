"""A Micro-Manager core from a configuration file, with every way it can fail said in one line.

``livepsf live``, ``livepsf autofocus`` and ``livepsf calibrate --zstack --mm-config`` all start real
hardware the same way: :func:`load_micromanager_core` checks the file, the device adapters, the load and
the camera, and raises :class:`~livepsf.errors.InputError` naming the file and the problem.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from livepsf.errors import InputError

__all__ = ["load_micromanager_core"]


def load_micromanager_core(config_path: str | Path, camera: str | None = None) -> Any:
    """A ``CMMCorePlus`` with the Micro-Manager configuration ``config_path`` loaded.

    Parameters
    ----------
    config_path
        Micro-Manager hardware configuration (``.cfg``).
    camera
        Label of the camera device to use; default: the configuration's camera.

    Returns
    -------
    pymmcore_plus.CMMCorePlus
        The loaded core, with a camera device set.

    Raises
    ------
    InputError
        No such file, no Micro-Manager installation (device adapters) found, a configuration that does
        not load, an unknown ``camera`` label, or no camera at all.
    """
    from pymmcore_plus import CMMCorePlus, find_micromanager

    config_path = Path(config_path)
    if not config_path.is_file():
        raise InputError(f"{config_path}: no such Micro-Manager configuration file")
    logging.getLogger("pymmcore-plus").setLevel(logging.CRITICAL)  # its discovery error, said better below
    if not find_micromanager():
        raise InputError(f"{config_path}: no Micro-Manager installation (device adapters) found; install one "
                         "with `mmcore install` or set MICROMANAGER_PATH")
    core = CMMCorePlus()
    try:
        core.loadSystemConfiguration(str(config_path))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{config_path}: Micro-Manager could not load this configuration ({first})") from None
    if camera is not None:
        if camera not in core.getLoadedDevices():
            loaded = ", ".join(core.getLoadedDevices())
            raise InputError(f"{config_path}: no device {camera!r}; loaded: {loaded}")
        core.setCameraDevice(camera)
    if not core.getCameraDevice():
        raise InputError(f"{config_path}: the configuration has no camera; name one with --camera")
    return core

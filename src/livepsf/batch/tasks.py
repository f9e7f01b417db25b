"""The per-frame work of a batch, as it runs on a Dask worker.

:func:`compute_frame` reads one frame lazily, maps it with the network (or takes the PSF map recorded
with it) and, for deconvolution, deconvolves it, using the same functions as the one-machine commands
(:class:`~livepsf.mapping.PSFMapper`, :func:`livepsf.acquisition.jobs.deconvolve_frame`), so the
results are the same. It returns plain arrays and JSON-ready metadata: the client writes them to disk.

Each worker process keeps its mappers (one per model, stride and dihedral averaging) between tasks, and
runs torch with one thread per task (Dask's own convention: parallelism comes from workers and their
threads).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["compute_frame", "psfmap_from_arrays", "psfmap_to_arrays"]

_MAPPERS: dict[tuple[str, int, bool], Any] = {}
_WARM: set[tuple[str, int, bool, tuple[int, int]]] = set()


def compute_frame(task: dict[str, Any], path: str, index: int, recorded: dict[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Process frame ``index`` of ``path``: ``{"arrays": {...}, "meta": {...}}``.

    ``task`` holds ``command`` (``map``, ``depth`` or ``deconvolve``), ``model``, ``stride_px``,
    ``torch_threads``, ``dihedral_average`` (absent: False) and, for deconvolution, ``iterations`` and
    ``tv_weight``. ``recorded`` is the frame's PSF map from a livepsf recording
    (:func:`livepsf.acquisition.recorder.psfmap_to_dict`), used instead of the network when given.

    Raises
    ------
    InputError
        The frame cannot be read or mapped (the message names the file and the frame).
    """
    import torch

    from livepsf.batch.inputs import read_frame
    from livepsf.errors import InputError

    torch.set_num_threads(int(task.get("torch_threads", 1)))
    frame = read_frame(path, index)
    try:
        if recorded is not None:
            from livepsf.acquisition.recorder import psfmap_from_dict

            pmap, map_ms = psfmap_from_dict(recorded), 0.0
        else:
            pmap, map_ms = _map(task, frame)
    except InputError as exc:
        raise InputError(f"{path} (frame {index}): {exc}") from None
    if task["command"] == "deconvolve":
        from livepsf.acquisition.jobs import deconvolve_frame

        image, grid = deconvolve_frame(frame, pmap, iterations=task["iterations"], tv_weight=task["tv_weight"])
        return {"arrays": {"image": image}, "meta": {"grid": grid, "pixel_size_um": pmap.optics.pixel_size_um}}
    arrays, meta = psfmap_to_arrays(pmap)
    meta["time_ms"] = map_ms
    return {"arrays": arrays, "meta": meta}


def _map(task: dict[str, Any], frame: np.ndarray) -> tuple[Any, float]:
    """Map a frame with this process's mapper; returns the map and the time of the mapping alone."""
    from livepsf.mapping import PSFMapper
    from livepsf.net import load_model

    key = (str(task["model"]), int(task["stride_px"]), bool(task.get("dihedral_average", False)))
    if key not in _MAPPERS:
        _MAPPERS[key] = PSFMapper(load_model(key[0]), stride_px=key[1], dihedral_average=key[2])
    mapper = _MAPPERS[key]
    warm_key = (*key, tuple(frame.shape))
    if warm_key not in _WARM:  # as `livepsf map`: TorchScript optimises a graph on its first two calls
        mapper(frame)
        mapper(frame)
        _WARM.add(warm_key)
    start = time.perf_counter()
    pmap = mapper(frame)
    return pmap, (time.perf_counter() - start) * 1e3


def psfmap_to_arrays(pmap: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A PSF map as named arrays and JSON metadata, losslessly (:func:`psfmap_from_arrays` inverts it)."""
    arrays = {"invalid": np.asarray(pmap.invalid, np.float32), "centers_y": np.asarray(pmap.centers_y),
              "centers_x": np.asarray(pmap.centers_x)}
    arrays.update({f"p.{k}": np.asarray(v, np.float32) for k, v in pmap.params.items()})
    arrays.update({f"s.{k}": np.asarray(v, np.float32) for k, v in pmap.sigma.items()})
    meta = {"params": list(pmap.params), "sigma": list(pmap.sigma), "window_px": int(pmap.window_px),
            "stride_px": int(pmap.stride_px), "frame_shape": [int(n) for n in pmap.frame_shape],
            "psf_model": pmap.psf_model, "model_name": pmap.model_name, "model_sha256": pmap.model_sha256,
            "optics": pmap.optics.to_dict(), "model_card": pmap.model_card,
            "dihedral_average": bool(pmap.dihedral_average)}
    return arrays, meta


def psfmap_from_arrays(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
    """Inverse of :func:`psfmap_to_arrays`."""
    from livepsf.mapping import PSFMap
    from livepsf.optics import Optics

    return PSFMap(params={k: arrays[f"p.{k}"] for k in meta["params"]}, invalid=arrays["invalid"],
                  centers_y=arrays["centers_y"], centers_x=arrays["centers_x"], window_px=meta["window_px"],
                  stride_px=meta["stride_px"], frame_shape=tuple(meta["frame_shape"]), psf_model=meta["psf_model"],
                  model_name=meta["model_name"], model_sha256=meta["model_sha256"], optics=Optics(**meta["optics"]),
                  model_card=meta["model_card"], sigma={k: arrays[f"s.{k}"] for k in meta["sigma"]},
                  dihedral_average=bool(meta.get("dihedral_average", False)))  # absent in older frame stores

"""Depth-map files: ``<name>_depth.ome.tif`` and ``<name>_depth.json`` beside the source.

With a surface prior also ``<name>_surface.ome.tif``: the fused surface (:mod:`livepsf.depth.surface`)
over the full frame and its σ, as two channels of one file (``surface_um``, ``sigma_um``), so the pair
never gets separated; its figures go into the JSON summary.

The depth map holds each window's own depth, with the side of focus checked against a fused surface (the
user's prior, else the live view's :data:`~livepsf.depth.surface.LIVE_PRIOR`): a window whose reading is
clearly the mirror of the surface's (the network misread its astigmatism's sign) is written with the
other sign, as the live depth overlay shows it (:func:`~livepsf.depth.surface.surface_depth`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from livepsf.depth.calibration import Calibration, package_version
from livepsf.depth.surface import LIVE_PRIOR, DepthSurface, surface_depth
from livepsf.depth.texture import WindowTexture, gate_texture, reliable_windows
from livepsf.errors import InputError
from livepsf.mapping import PSFMap


def depth_stats(cal: Calibration, pmap: PSFMap, frame: np.ndarray | None = None,
                median_windows: int = 1, *, texture: WindowTexture | None = None,
                window_depth_um: np.ndarray | None = None) -> dict[str, Any]:
    """Summary of one frame's depth: range over reliable windows, invalid fraction, the window grid.

    ``texture``: the frame's texture for the calibration's gate when already measured (:func:`gate_texture`).
    ``window_depth_um``: the windows' depth with the side of focus resolved (:meth:`Calibration.depth_um`).
    """
    grid = cal.depth_um(pmap, frame, median_windows, texture=texture, window_depth_um=window_depth_um)
    valid = reliable_windows(pmap, frame, cal.max_texture_coherence, texture=texture)
    vals = grid[valid] if valid.any() else np.array([np.nan])
    return {
        "min_um": float(np.min(vals)),
        "max_um": float(np.max(vals)),
        "mean_um": float(np.mean(vals)),
        "median_um": float(np.median(vals)),
        "invalid_fraction": float(pmap.invalid_mask.mean()),
        "unreliable_fraction": float(1.0 - valid.mean()),
        "grid_depth_um": np.round(grid.astype(np.float64), 3).tolist(),
        "grid_reliable": valid.tolist(),
        "centers_y_px": np.asarray(pmap.centers_y, dtype=np.float64).tolist(),
        "centers_x_px": np.asarray(pmap.centers_x, dtype=np.float64).tolist(),
    }


def write_depth_outputs(source: str | Path, pmaps: Sequence[PSFMap], cal: Calibration,
                        calibration_path: str | Path | None = None,
                        out_dir: str | Path | None = None,
                        frames: Sequence[np.ndarray] | None = None,
                        median_windows: int = 1,
                        surface: str | None = None) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Write ``<name>_depth.ome.tif`` (float32 µm, one plane per frame) and ``<name>_depth.json``.

    Names come from :func:`livepsf.imageio.output_path`: beside ``source`` (or in ``out_dir``), never
    overwriting anything. ``frames`` (the images the maps were made from) enable the texture gate.
    ``surface`` (``"plane"``, ``"poly2"`` or ``"smooth"``) also writes ``<name>_surface.ome.tif``
    (:func:`write_surface_output`; its path is ``surface_map`` in the JSON) and each frame's surface
    figures (``frames[i]["surface"]``). Mirrored windows are read back by that surface, or by a
    :data:`LIVE_PRIOR` surface when ``surface`` is ``None`` (``frames[i]["n_read_back"]``; ``None`` where
    too few windows carried depth for it, and the windows are written as read). The JSON records whether
    the maps were dihedral averages (``dihedral_average``) and whether the calibration's were. Returns
    the two depth paths and the per-frame summaries.
    """
    import tifffile

    from livepsf.imageio import output_path

    if not pmaps:
        raise InputError(f"{source}: no frames to turn into depth maps")
    averaged = {bool(p.dihedral_average) for p in pmaps}
    if len(averaged) > 1:
        raise InputError(f"{source}: some PSF maps are dihedral averages and others plain; map every frame alike")
    frames = list(frames) if frames is not None else [None] * len(pmaps)
    try:
        # The texture gate's measure of each frame, once: depth, σ, surface and summary all gate on it.
        textures = [gate_texture(f, p, cal.max_texture_coherence) for p, f in zip(pmaps, frames)]
        # Fitted first: a prior that cannot be fitted leaves no files behind.
        fused = [_side_of_focus_surface(cal, p, f, t, surface) for p, f, t in zip(pmaps, frames, textures)]
    except InputError as exc:
        raise InputError(f"{source}: {exc}") from None
    windows = [None if s is None else s.window_depth_um for s in fused]
    full = np.stack([cal.depth_um_full(p, frame=f, median_windows=median_windows, texture=t, window_depth_um=w)
                     for p, f, t, w in zip(pmaps, frames, textures, windows)]).astype(np.float32)
    stats = [depth_stats(cal, p, f, median_windows, texture=t, window_depth_um=w)
             for p, f, t, w in zip(pmaps, frames, textures, windows)]
    for s, f in zip(stats, fused):
        s["n_read_back"] = None if f is None or f.mirrored is None else int(np.count_nonzero(f.mirrored))
    tif_path = output_path(source, "_depth.ome.tif", out_dir)
    data = full[0] if len(full) == 1 else full
    metadata = {
        "axes": "YX" if data.ndim == 2 else "TYX",
        "Name": f"depth (µm) of {Path(source).name}",
        "PhysicalSizeX": cal.pixel_size_um,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": cal.pixel_size_um,
        "PhysicalSizeYUnit": "µm",
    }
    tifffile.imwrite(tif_path, data, ome=True, metadata=metadata, photometric="minisblack")
    json_path = output_path(source, "_depth.json", out_dir)
    summary = {
        "source": str(source),
        "depth_map": str(tif_path),
        "unit": "µm",
        "meaning": "height of the surface relative to the focal plane",
        "calibration": str(calibration_path) if calibration_path is not None else None,
        "metric": cal.metric,
        "slope_um_per_unit": cal.slope_um_per_unit,
        "offset_um": cal.offset_um,
        "model_name": cal.model_name,
        "model_sha256": cal.model_sha256,
        "median_windows": int(median_windows),
        "side_of_focus": f"checked against a fused {surface or LIVE_PRIOR} surface: mirrored windows read back",
        "dihedral_average": averaged.pop(),  # how the maps were made
        "calibration_dihedral_average": cal.dihedral_average,
        "window_px": int(pmaps[0].window_px),
        "stride_px": int(pmaps[0].stride_px),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "livepsf_version": package_version(),
        "frames": stats,
    }
    if surface is not None:
        surface_path = write_surface_output(source, fused, cal.pixel_size_um, out_dir)
        summary["surface_map"] = str(surface_path)
        summary["surface_prior"] = surface
        for s, f in zip(stats, fused):
            s["surface"] = f.figures()
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return tif_path, json_path, stats


def _side_of_focus_surface(cal: Calibration, pmap: PSFMap, frame: np.ndarray | None,
                           texture: WindowTexture | None, prior: str | None) -> DepthSurface | None:
    """The surface that reads mirrored windows back: the user's ``prior`` (its errors propagate), or
    :data:`LIVE_PRIOR`, ``None`` when too few windows carry depth for it."""
    if prior is not None:
        return surface_depth(cal, pmap, frame, prior, texture=texture)
    try:
        return surface_depth(cal, pmap, frame, LIVE_PRIOR, texture=texture)
    except InputError:
        return None


def write_surface_output(source: str | Path, surfaces: Sequence[DepthSurface], pixel_size_um: float,
                         out_dir: str | Path | None = None, path: str | Path | None = None) -> Path:
    """Write ``<name>_surface.ome.tif``: float32 µm, channel 0 the fused surface, channel 1 its σ.

    Axes ``CYX`` for one frame, ``TCYX`` for several; full frame (:meth:`DepthSurface.full`). Named by
    :func:`livepsf.imageio.output_path` unless ``path`` is given (a name reserved by the caller).
    """
    import tifffile

    from livepsf.imageio import output_path

    data = np.stack([np.stack([s.full(), s.full(sigma=True)]) for s in surfaces]).astype(np.float32)
    data = data[0] if len(surfaces) == 1 else data
    target = Path(path) if path is not None else output_path(source, "_surface.ome.tif", out_dir)
    metadata = {
        "axes": "CYX" if data.ndim == 3 else "TCYX",
        "Name": f"depth surface ({surfaces[0].prior}) and σ (µm) of {Path(source).name}",
        "Channel": {"Name": ["surface_um", "sigma_um"]},
        "PhysicalSizeX": pixel_size_um,
        "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": pixel_size_um,
        "PhysicalSizeYUnit": "µm",
    }
    tifffile.imwrite(target, data, ome=True, metadata=metadata, photometric="minisblack")
    return target

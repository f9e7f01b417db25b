"""Depth-map files: ``<name>_depth.ome.tif`` and ``<name>_depth.json`` beside the source."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from livepsf.depth.calibration import Calibration, package_version
from livepsf.depth.texture import reliable_windows
from livepsf.errors import InputError
from livepsf.mapping import PSFMap


def depth_stats(cal: Calibration, pmap: PSFMap, frame: np.ndarray | None = None,
                median_windows: int = 1) -> dict[str, Any]:
    """Summary of one frame's depth: range over reliable windows, invalid fraction, the window grid."""
    grid = cal.depth_um(pmap, frame, median_windows)
    valid = reliable_windows(pmap, frame, cal.max_texture_coherence)
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
                        median_windows: int = 1) -> tuple[Path, Path, list[dict[str, Any]]]:
    """Write ``<name>_depth.ome.tif`` (float32 µm, one plane per frame) and ``<name>_depth.json``.

    Names come from :func:`livepsf.imageio.output_path`: beside ``source`` (or in ``out_dir``), never
    overwriting anything. ``frames`` (the images the maps were made from) enable the texture gate.
    Returns the two paths and the per-frame summaries.
    """
    import tifffile

    from livepsf.imageio import output_path

    if not pmaps:
        raise InputError(f"{source}: no frames to turn into depth maps")
    frames = list(frames) if frames is not None else [None] * len(pmaps)
    full = np.stack([cal.depth_um_full(p, frame=f, median_windows=median_windows)
                     for p, f in zip(pmaps, frames)]).astype(np.float32)
    stats = [depth_stats(cal, p, f, median_windows) for p, f in zip(pmaps, frames)]
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
        "window_px": int(pmaps[0].window_px),
        "stride_px": int(pmaps[0].stride_px),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "livepsf_version": package_version(),
        "frames": stats,
    }
    json_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return tif_path, json_path, stats

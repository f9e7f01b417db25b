"""What a batch writes for each command, and how it recognises an output it already wrote.

The files and their contents are those of the one-machine commands (``<name>_psfmap.ome.tif`` +
``.json``, ``<name>_depth.ome.tif`` + ``.json`` [+ ``<name>_surface.ome.tif`` with a surface prior],
``<name>_deconv.ome.tif``), named by
:func:`livepsf.imageio.output_path` (never overwriting), plus the run's *settings* (input identity
and options): under ``batch_settings`` in the JSON summaries, under ``settings`` in the
deconvolution's OME description. A later run with equal settings takes such an output as done; any
other settings make a new one.

Names are reserved (created empty and recorded in the frame store) before the files are written, and
the file that marks an output complete is written last and atomically (the JSON summary; the
deconvolved OME-TIFF itself), so an output cut short by a crash is never taken for done and is
rewritten under the same names by the next run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livepsf.deconv import DEFAULT_ITERATIONS, DEFAULT_TV_WEIGHT
from livepsf.errors import InputError
from livepsf.framestore import FrameStore, atomic_write_bytes, source_identity
from livepsf.imageio import existing_outputs, output_path

__all__ = ["COMMANDS", "BatchOptions", "OutputWriter"]

COMMANDS = ("map", "depth", "deconvolve")

# The output each command's frame store is named after.
_STORE_SUFFIX = {"map": "_psfmap.ome.tif", "depth": "_depth.ome.tif", "deconvolve": "_deconv.ome.tif"}


@dataclass(frozen=True)
class BatchOptions:
    """The options of a batch run (those of the matching one-machine command).

    Parameters
    ----------
    command
        ``"map"``, ``"depth"`` or ``"deconvolve"``.
    model, stride_px
        Network (shipped name or ``.pt`` path, visible to the workers) and window step. For ``depth``,
        ``None`` takes the calibration's.
    out_dir
        Output folder; beside each input when ``None``.
    iterations, tv_weight
        Deconvolution: Richardson-Lucy iterations and TV weight.
    calibration, median_windows, surface
        Depth: calibration JSON, median over N x N windows, and the surface prior (``"plane"``,
        ``"poly2"``, ``"smooth"``; ``None``: no fused surface).
    torch_threads
        Torch threads per task on the workers.
    dihedral_average
        Average each window over the frame's 8 rotations and mirrors (:class:`~livepsf.mapping.PSFMapper`;
        8x slower). For ``depth`` an averaged calibration maps averaged whatever this says
        (:meth:`~livepsf.depth.Calibration.mapping_dihedral_average`).
    """

    command: str
    model: str | None = "default"
    stride_px: int | None = 64
    out_dir: str | None = None
    iterations: int = DEFAULT_ITERATIONS
    tv_weight: float = DEFAULT_TV_WEIGHT
    calibration: str | None = None
    median_windows: int = 1
    surface: str | None = None
    torch_threads: int = 1
    dihedral_average: bool = False

    def __post_init__(self) -> None:
        if self.command not in COMMANDS:
            raise InputError(f"unknown batch command {self.command!r}; choose one of {', '.join(COMMANDS)}")
        if self.command == "depth" and not self.calibration:
            raise InputError("depth needs --calibration")
        if self.surface is not None:
            from livepsf.depth.surface import check_prior

            check_prior(self.surface)
            if self.command != "depth":
                raise InputError("--surface is an option of depth")
        if self.iterations < 1:
            raise InputError(f"--iterations must be at least 1, got {self.iterations}")
        if not 0 <= self.tv_weight < 0.25:
            raise InputError(f"--tv must be in [0, 0.25), got {self.tv_weight}")
        if self.torch_threads < 1:
            raise InputError(f"torch threads must be at least 1, got {self.torch_threads}")


class OutputWriter:
    """Settings, finished-output lookup and writing for one batch; built once on the client.

    For ``map`` it loads the network (the summary records its card); for ``depth`` the calibration
    and the network it was made with (refused when they do not match).
    """

    def __init__(self, options: BatchOptions) -> None:
        self.options = options
        self.model = options.model or "default"
        self.stride_px = options.stride_px or 64
        self.dihedral_average = bool(options.dihedral_average)
        self.calibration = None
        self._calibration_sha256 = ""
        self._mapper = None
        if options.command in ("map", "depth"):
            from livepsf.mapping import PSFMapper
            from livepsf.net import load_model

            if options.command == "depth":
                from livepsf.depth import Calibration

                self.calibration = Calibration.load(options.calibration)
                self._calibration_sha256 = hashlib.sha256(Path(options.calibration).read_bytes()).hexdigest()
                self.model = options.model or self.calibration.model_name
                self.stride_px = options.stride_px or self.calibration.stride_px or 64
                # As `livepsf depth`: map the way the calibration was made (the CLI prints the warning).
                self.dihedral_average, _ = self.calibration.mapping_dihedral_average(self.dihedral_average)
            net = load_model(self.model)
            if self.calibration is not None:
                self.calibration.check_model(net)
            self._mapper = PSFMapper(net, stride_px=self.stride_px, dihedral_average=self.dihedral_average)

    def task(self) -> dict[str, Any]:
        """What a worker needs (:func:`livepsf.batch.tasks.compute_frame`)."""
        o = self.options
        return {"command": o.command, "model": self.model, "stride_px": self.stride_px,
                "iterations": o.iterations, "tv_weight": o.tv_weight, "torch_threads": o.torch_threads,
                "dihedral_average": self.dihedral_average}

    def folder(self, source: Path) -> Path:
        return Path(self.options.out_dir) if self.options.out_dir is not None else source.parent

    def settings(self, source: Path) -> dict[str, Any]:
        """Everything that decides the output of ``source``."""
        o = self.options
        if o.command == "deconvolve":
            from livepsf.acquisition.jobs import deconv_settings

            return deconv_settings(source, iterations=o.iterations, tv_weight=o.tv_weight, model=self.model,
                                   stride_px=self.stride_px, dihedral_average=self.dihedral_average)
        settings = {"command": o.command, **source_identity(source), "model": self.model, "stride_px": self.stride_px}
        if self.dihedral_average:  # absent for plain maps: earlier outputs stay recognised
            settings["dihedral_average"] = True
        if o.command == "depth":
            settings.update(calibration=str(Path(o.calibration).resolve()),
                            calibration_sha256=self._calibration_sha256, median_windows=int(o.median_windows))
            if o.surface is not None:  # absent without a surface: earlier outputs stay recognised
                settings["surface"] = o.surface
        return settings

    def store(self, source: Path, settings: dict[str, Any], n_frames: int) -> FrameStore:
        return FrameStore.for_output(source, _STORE_SUFFIX[self.options.command], self.folder(source), settings,
                                     n_frames)

    def find_finished(self, source: Path, settings: dict[str, Any]) -> list[Path] | None:
        """The complete outputs of an earlier run with the same settings, or ``None``."""
        if self.options.command == "deconvolve":
            from livepsf.acquisition.jobs import find_finished_output

            found = find_finished_output(source, self.options.out_dir, settings)
            return None if found is None else [found]
        suffix = "_psfmap.json" if self.options.command == "map" else "_depth.json"
        for json_path in existing_outputs(source, suffix, self.options.out_dir):
            try:
                summary = json.loads(json_path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue  # a reservation or a file cut short: not a finished output
            if not isinstance(summary, dict) or summary.get("batch_settings") != settings:
                continue
            image = json_path.parent / summary["psfmap"] if self.options.command == "map" \
                else Path(summary["depth_map"])
            surface = Path(summary["surface_map"]) if summary.get("surface_map") else None
            if image.is_file() and (surface is None or surface.is_file()):
                return [image, json_path] + ([surface] if surface is not None else [])
        return None

    def write(self, source: Path, store: FrameStore, recorded_maps: bool) -> list[Path]:
        """Write the outputs of a complete store under reserved names; returns their paths."""
        names = store.reserved
        if names is None:
            names = self._reserve(source)
            store.reserve(names)
        if self.options.command == "deconvolve":
            self._write_deconv(source, store, names[0], recorded_maps)
        elif self.options.command == "map":
            self._write_map(source, store, *names)
        else:
            self._write_depth(source, store, *names)
        store.discard()
        return names

    # -- per command ------------------------------------------------------------------------------

    def _reserve(self, source: Path) -> list[Path]:
        out = self.options.out_dir
        if self.options.command == "deconvolve":
            names = [output_path(source, "_deconv.ome.tif", out)]
        elif self.options.command == "map":  # the JSON beside the map, as `livepsf map` names it
            ome = output_path(source, "_psfmap.ome.tif", out)
            json_path = ome.with_name(ome.name[: -len(".ome.tif")] + ".json")
            names = [ome, json_path if not json_path.exists() else output_path(source, "_psfmap.json", out)]
        else:
            names = [output_path(source, "_depth.ome.tif", out), output_path(source, "_depth.json", out)]
            if self.options.surface is not None:
                names.append(output_path(source, "_surface.ome.tif", out))
        for name in names:
            name.touch(exist_ok=False)
        return names

    def _write_deconv(self, source: Path, store: FrameStore, final: Path, recorded_maps: bool) -> None:
        from livepsf.acquisition.jobs import deconv_params, write_deconv_output
        from livepsf.acquisition.recorder import read_frame_metadata

        metas = [store.meta(i) for i in range(store.n_frames)]
        header, _ = read_frame_metadata(source)
        pixel_size_um = header.get("pixel_size_um") or metas[-1]["pixel_size_um"]
        write_deconv_output(final, store.planes("image"),  # one frame in memory at a time
                            deconv_params(store.settings, recorded_maps, [m["grid"] for m in metas]), pixel_size_um)

    def _maps(self, store: FrameStore) -> tuple[list[Any], list[float]]:
        from livepsf.batch.tasks import psfmap_from_arrays

        maps, times_ms = [], []
        for i in range(store.n_frames):
            arrays, meta = store.get(i)
            maps.append(psfmap_from_arrays(arrays, meta))
            times_ms.append(float(meta["time_ms"]))
        return maps, times_ms

    def _write_map(self, source: Path, store: FrameStore, ome: Path, json_path: Path) -> None:
        from livepsf.mapping import _summary, save_psfmaps  # the summary `livepsf map` writes

        maps, times_ms = self._maps(store)
        save_psfmaps(ome, maps, overwrite=True)  # onto our own reservation
        summary = _summary(source, ome, maps, times_ms, self._mapper)
        summary["batch_settings"] = store.settings
        atomic_write_bytes(json_path, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))

    def _write_depth(self, source: Path, store: FrameStore, tif: Path, json_path: Path,
                     surface_tif: Path | None = None) -> None:
        from livepsf.batch.inputs import read_frame
        from livepsf.depth import write_depth_outputs

        maps, _ = self._maps(store)
        staging = store.path / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        # The texture gate needs the frames; the maps (the costly part) come from the workers.
        frames = [read_frame(source, i) for i in range(store.n_frames)]
        tmp_tif, tmp_json, _ = write_depth_outputs(source, maps, self.calibration, self.options.calibration,
                                                   staging, frames=frames, median_windows=self.options.median_windows,
                                                   surface=self.options.surface)
        os.replace(tmp_tif, tif)
        summary = json.loads(tmp_json.read_text(encoding="utf-8"))
        summary["depth_map"] = str(tif)
        if surface_tif is not None:
            os.replace(summary["surface_map"], surface_tif)
            summary["surface_map"] = str(surface_tif)
        summary["batch_settings"] = store.settings
        atomic_write_bytes(json_path, (json.dumps(summary, indent=2) + "\n").encode("utf-8"))

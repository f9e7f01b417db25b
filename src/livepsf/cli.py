"""The ``livepsf`` command line: a thin typer layer over the library.

Exit codes (DESIGN.md): 0 success; 2 bad input, with a one-line message naming the file and the
problem and no traceback; 1 unexpected failure. Each command's body only parses options, calls the
library and prints; the work lives in the package modules.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

from livepsf.deconv import DEFAULT_TV_WEIGHT
from livepsf.errors import InputError, SetupError

app = typer.Typer(
    name="livepsf",
    help="Real-time spatially-variant PSF estimation, depth from astigmatism and deconvolution.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Look at the synthetic training data.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

_DIHEDRAL_HELP = "average each window over the frame's 8 rotations and mirrors: more accurate, 8x slower"


def _print_error(message: object) -> None:
    """Print ``error: message`` on stderr, unwrapped (one line per error)."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def fail_input(message: str) -> typer.Exit:
    """Print a one-line bad-input message and return the exit to raise (code 2)."""
    _print_error(message)
    return typer.Exit(code=2)


@app.command()
def version() -> None:
    """Print the livepsf version."""
    from livepsf import __version__

    console.print(__version__)


# Commands are added below, one function each; keep their bodies thin.


# -- depth from astigmatism: calibrate, depth, grid (issue 8) -----------------------------------------


def _split_numbers(values: list[str] | None, option: str) -> list[float]:
    """``--tilt-deg 3 --tilt-deg 6`` and ``--tilt-deg 3,6`` both give ``[3.0, 6.0]``."""
    out: list[float] = []
    for value in values or []:
        for part in str(value).split(","):
            if part.strip():
                try:
                    out.append(float(part))
                except ValueError:
                    raise InputError(f"{option}: {part.strip()!r} is not a number") from None
    return out


@app.command()
def calibrate(
    images: list[Path] = typer.Argument(None, help="Frames of a printed grid tilted by known angles; with "
                                        "--zstack, the saved z-stack (OME-TIFF)."),
    tilt_deg: list[str] = typer.Option(None, "--tilt-deg", help="Tilt in degrees: one for all images, or one "
                                       "per image (repeat the option or separate with commas)."),
    pixel_size_um: float = typer.Option(None, "--pixel-size-um", help="Pixel size in the sample plane, µm "
                                        "(--zstack: default the file's or the microscope's)."),
    tilt_axis: str = typer.Option("x", "--tilt-axis", help="Array axis along which the height grows: x or y."),
    in_focus_px: list[str] = typer.Option(None, "--in-focus-px", help="In-focus column (x) or row (y), per "
                                          "image or one for all; estimated from the data when omitted."),
    model: str = typer.Option("default", "--model", help="Shipped model name or path to a .pt file (Z-3)."),
    stride: int = typer.Option(None, "--stride", help="Window step of the PSF maps, px (default 32, half the "
                               "live view's: more windows on line crossings; `livepsf depth` maps as the "
                               "calibration did)."),
    dihedral_average: bool = typer.Option(False, "--dihedral-average", help=_DIHEDRAL_HELP),
    metric: str = typer.Option(None, "--metric", help="Force the depth metric: signed, projected "
                               "or eq14 (default: the best fit)."),
    curve: str = typer.Option("monotone", "--curve", help="Metric-to-depth curve: monotone (default; the "
                              "measured relation is S-shaped), linear (the robust line, for comparison) or auto "
                              "(per metric, monotone unless the line predicts held-out frames better)."),
    out: Path = typer.Option(None, "--out", help="Calibration JSON to write (never overwritten); default "
                             "beside the first image."),
    zstack: bool = typer.Option(False, "--zstack", help="Calibrate from a z-stack instead: a saved stack "
                                "(IMAGE) or one acquired now (--sim or --mm-config)."),
    z_um: list[str] = typer.Option(None, "--z-um", help="--zstack: Z of every plane, µm (default: the file's "
                                   "OME PositionZ)."),
    z_step_um: float = typer.Option(None, "--z-step-um", help="--zstack: uniform Z step between planes, µm."),
    focus_z_um: float = typer.Option(None, "--focus-z-um", help="--zstack: Z where the sample is in focus "
                                     "(estimated when omitted)."),
    sim: bool = typer.Option(False, "--sim", help="--zstack: acquire on the simulated microscope."),
    mm_config: Path = typer.Option(None, "--mm-config", help="--zstack: acquire on this Micro-Manager "
                                   "configuration (.cfg)."),
    camera: str = typer.Option(None, "--camera", help="--mm-config: camera device label."),
    sample: str = typer.Option(None, "--sample", help="--sim: printed-grid, cells or filaments (flat; "
                               "default printed-grid)."),
    size: int = typer.Option(None, "--size", help="--sim: camera frame side, px (default 1024)."),
    range_um: float = typer.Option(None, "--range-um", help="Acquired z-stack: half range around the present "
                                   "Z, µm (default 40)."),
    step_um: float = typer.Option(None, "--step-um", help="Acquired z-stack: step, µm (default 2)."),
    settle_ms: float = typer.Option(None, "--settle-ms", help="Acquired z-stack: wait after each move, ms "
                                    "(default 10)."),
) -> None:
    """Fit a depth calibration on a tilted printed grid, or on a z-stack (--zstack); writes JSON and a PNG plot.

    \b
    Tilted grid:   livepsf calibrate IMG... --tilt-deg D... --pixel-size-um P [--tilt-axis x|y] --out FILE
    Saved stack:   livepsf calibrate --zstack STACK.ome.tif [--z-um Z,... | --z-step-um S] --out FILE
    Acquire now:   livepsf calibrate --zstack --sim [--sample cells] --range-um R --step-um S --out FILE
                   livepsf calibrate --zstack --mm-config MM.cfg --range-um R --step-um S --out FILE
    """
    from rich.table import Table

    from livepsf.depth import (
        CALIBRATION_STRIDE_PX,
        CURVE_CHOICES,
        calibrate_tilted_grid,
        write_calibration_files,
    )
    from livepsf.imageio import output_path, read_frames
    from livepsf.mapping import PSFMapper
    from livepsf.net import load_model

    if curve not in CURVE_CHOICES:  # before any mapping or acquisition
        raise InputError(f"--curve {curve!r}: choose one of {', '.join(CURVE_CHOICES)}")
    stride = CALIBRATION_STRIDE_PX if stride is None else stride
    zstack_options = {"--z-um": z_um, "--z-step-um": z_step_um, "--focus-z-um": focus_z_um, "--sim": sim or None,
                      "--mm-config": mm_config, "--camera": camera, "--sample": sample, "--size": size,
                      "--range-um": range_um, "--step-um": step_um, "--settle-ms": settle_ms}
    if zstack:
        if tilt_deg or in_focus_px or tilt_axis != "x":
            raise InputError("--zstack calibrates from stage positions: --tilt-deg, --tilt-axis and "
                             "--in-focus-px belong to the tilted grid")
        _calibrate_zstack(images or [], out=out, model=model, stride=stride, metric=metric, curve=curve,
                          pixel_size_um=pixel_size_um, dihedral_average=dihedral_average,
                          **{k.lstrip("-").replace("-", "_"): v for k, v in zstack_options.items()})
        return
    given = [name for name, value in zstack_options.items() if value is not None and value != []]
    if given:
        raise InputError(f"{', '.join(given)}: only with --zstack")
    if not images:
        raise InputError("give the frames of the tilted grid (or calibrate from a z-stack with --zstack)")
    if pixel_size_um is None:
        raise InputError("--pixel-size-um is required")
    tilts = _split_numbers(tilt_deg, "--tilt-deg")
    foci = _split_numbers(in_focus_px, "--in-focus-px")
    _check_calibration_out(out)
    per_image = [read_frames(p) for p in images]
    frame_tilts = _per_image_values(tilts, per_image, images, "--tilt-deg", required=True)
    frame_foci = _per_image_values(foci, per_image, images, "--in-focus-px", required=False)
    cal = calibrate_tilted_grid([frame for frames in per_image for frame in frames], frame_tilts, pixel_size_um,
                                mapper=PSFMapper(load_model(model), stride_px=stride,
                                                 dihedral_average=dihedral_average), tilt_axis=tilt_axis,
                                in_focus_px=frame_foci, metric=metric, curve=curve)
    json_path, png_path = write_calibration_files(
        cal, out if out is not None else output_path(images[0], "_calibration.json"))

    table = Table(title=f"Depth calibration ({cal.metric} metric, model {cal.model_name})")
    for col in ("tilt °", "in focus px", "range µm", "R²", "mean |err| µm", "sd µm", "rel. %", "held out µm"):
        table.add_column(col, justify="right")
    for r in cal.per_tilt:
        table.add_row(f"{r.tilt_deg:g}", f"{r.in_focus_px:.0f}" + ("*" if r.in_focus_estimated else ""),
                      f"{r.depth_range_um:.1f}", f"{r.r2:.4f}", f"{r.mean_abs_error_um:.2f}",
                      f"{r.sd_abs_error_um:.2f}", f"{r.relative_error_pct:.2f}", _um_or_na(r.lofo_mean_abs_error_um))
    console.print(table)
    _print_calibration_fit(cal, "  (* in-focus position estimated)"
                           if any(r.in_focus_estimated for r in cal.per_tilt) else "")
    console.print(f"wrote {json_path} and {png_path}", highlight=False)


def _check_calibration_out(out: Path | None) -> None:
    if out is not None and out.exists():
        raise InputError(f"{out}: already exists; calibrations are never overwritten, choose another --out")
    if out is not None and out.suffix.lower() != ".json":
        raise InputError(f"{out}: the calibration is written as JSON; give a name ending in .json")


def _um_or_na(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _print_calibration_fit(cal, suffix: str = "") -> None:
    """Every metric's line and curve figures, the fit used (in-sample and leave-one-frame-out), warnings."""
    for s in cal.metrics:
        line_held_out = ("" if s.line_lofo_mean_abs_error_um is None
                         else f", held out {s.line_lofo_mean_abs_error_um:.2f} µm")
        console.print(f"  {s.metric:>9}: line slope {s.slope_um_per_unit:.3f} µm/unit, R² {s.r2:.4f}, "
                      f"mean |err| {s.mean_abs_error_um:.2f} ± {s.sd_abs_error_um:.2f} µm{line_held_out}; "
                      f"{cal.curve.kind} curve "
                      f"mean |err| {_um_or_na(s.curve_mean_abs_error_um)} µm, held out "
                      f"{_um_or_na(s.lofo_mean_abs_error_um)} µm" + ("  (used)" if s.metric == cal.metric else ""),
                      highlight=False)
    console.print(f"{cal.curve.kind} curve ({len(cal.curve.metric_knots)} knots; line slope "
                  f"{cal.slope_um_per_unit:.3f} µm/unit), R² {cal.r2:.4f}, in-sample mean |err| "
                  f"{cal.mean_abs_error_um:.2f} ± {cal.sd_abs_error_um:.2f} µm, leave-one-frame-out "
                  f"{_um_or_na(cal.lofo_mean_abs_error_um)} µm{suffix}", highlight=False)
    if cal.dihedral_average:
        console.print("fitted on dihedral-averaged PSF maps: `livepsf depth` with this calibration maps the same "
                      "way", highlight=False)
    if cal.notes:
        err_console.print(f"[bold yellow]warning:[/] {cal.notes}", highlight=False)


def _calibrate_zstack(images: list[Path], *, out: Path | None, model: str, stride: int, metric: str | None,
                      curve: str, pixel_size_um: float | None, dihedral_average: bool, z_um: list[str] | None,
                      z_step_um: float | None, focus_z_um: float | None, sim: bool | None,
                      mm_config: Path | None, camera: str | None, sample: str | None, size: int | None,
                      range_um: float | None, step_um: float | None, settle_ms: float | None) -> None:
    """``livepsf calibrate --zstack``: a saved stack (one IMAGE) or one acquired now (--sim / --mm-config)."""
    from livepsf.acquisition.micromanager import load_micromanager_core
    from livepsf.acquisition.zstack import (
        DEFAULT_RANGE_UM,
        DEFAULT_SETTLE_MS,
        DEFAULT_STEP_UM,
        calibrate_from_zstack,
        load_zstack,
        record_zstack,
    )
    from livepsf.depth import write_calibration_files, zstack_focus_z_um
    from livepsf.imageio import output_path
    from livepsf.mapping import PSFMapper
    from livepsf.net import load_model

    acquire = bool(sim) or mm_config is not None
    _check_calibration_out(out)
    if acquire:
        if images:
            raise InputError(f"{images[0]}: --zstack takes a saved stack or acquires one (--sim, --mm-config), "
                             "not both")
        if sim and mm_config is not None:
            raise InputError("--sim and --mm-config: choose one microscope")
        saved_only = {"--z-um": z_um, "--z-step-um": z_step_um}
        if any(saved_only.values()):
            raise InputError(f"{', '.join(k for k, v in saved_only.items() if v)}: only for a saved stack; an "
                             "acquired stack records the stage positions itself")
    else:
        if len(images) != 1:
            raise InputError("--zstack: give one saved stack (OME-TIFF with Z positions), or acquire one with "
                             "--sim or --mm-config" if not images else
                             f"--zstack takes one stack file, got {len(images)}")
        acquired_only = {"--camera": camera, "--sample": sample, "--size": size, "--range-um": range_um,
                         "--step-um": step_um, "--settle-ms": settle_ms}
        if any(v is not None for v in acquired_only.values()):
            given = ", ".join(k for k, v in acquired_only.items() if v is not None)
            raise InputError(f"{given}: only when acquiring the stack (--sim or --mm-config)")
    net = load_model(model)
    mapper = PSFMapper(net, stride_px=stride, dihedral_average=dihedral_average)
    if acquire:
        # The simulator's sample is flat for a z-stack, with the lens in.
        core = (_simulator_core(net, sample or "printed-grid", 1024 if size is None else size, tilt_deg=0.0,
                                lens=True) if sim else load_micromanager_core(mm_config, camera))
        console.print(f"[bold]z-stack[/]: ±{range_um or DEFAULT_RANGE_UM:g} µm in {step_um or DEFAULT_STEP_UM:g} "
                      f"µm steps around Z {core.getZPosition():+.2f} µm on "
                      f"{'the simulated microscope' if sim else mm_config}", highlight=False)
        json_path = out if out is not None else output_path(Path.cwd() / ("sim-zstack" if sim else "zstack"),
                                                            "_calibration.json")
        stack, stack_path = record_zstack(
            core, json_path, range_um=DEFAULT_RANGE_UM if range_um is None else range_um,
            step_um=DEFAULT_STEP_UM if step_um is None else step_um,
            settle_ms=DEFAULT_SETTLE_MS if settle_ms is None else settle_ms, pixel_size_um=pixel_size_um)
        console.print(f"recorded {stack.summary()} to {stack_path}", highlight=False)
    else:
        positions = _split_numbers(z_um, "--z-um") or None
        stack = load_zstack(images[0], positions, pixel_size_um, z_step_um=z_step_um)
        json_path = out if out is not None else output_path(images[0], "_calibration.json")
        console.print(f"[bold]z-stack[/] {images[0]}: {stack.summary()}", highlight=False)
        if stack.z_relative and focus_z_um is None:
            console.print("  Z positions are relative (no stage positions in the file): the in-focus position "
                          "is estimated", highlight=False)
    cal = calibrate_from_zstack(stack, mapper, focus_z_um=focus_z_um, metric=metric, curve=curve)
    json_path, png_path = write_calibration_files(cal, json_path)
    _print_calibration_fit(cal, f", in focus at Z {zstack_focus_z_um(cal):+.2f} µm")
    console.print(f"wrote {json_path} and {png_path}", highlight=False)


def _per_image_values(values: list[float], per_image: list, images: list[Path], option: str,
                      required: bool) -> list[float | None]:
    """Spread one value per image (or one for all, or one per frame) over the frames of the images."""
    n_frames = sum(len(f) for f in per_image)
    if not values:
        if required:
            raise InputError(f"{option} is required")
        return [None] * n_frames
    if len(values) == 1:
        return values * n_frames
    if len(values) == len(images):
        return [v for v, frames in zip(values, per_image) for _ in frames]
    if len(values) == n_frames:
        return list(values)
    raise InputError(f"{option}: got {len(values)} values for {len(images)} images ({n_frames} frames); "
                     "give one for all, one per image or one per frame")


_MAP_THREADS_HELP = ("Torch threads for the mapping (default: measured on the first frames, the faster of torch's "
                     "count and 1, re-checked as the load changes; with --scheduler: 1 per task).")


@app.command()
def depth(
    images: list[Path] = typer.Argument(..., help="Images to turn into depth maps."),
    calibration: Path = typer.Option(..., "--calibration", help="Calibration JSON from `livepsf calibrate`."),
    model: str = typer.Option(None, "--model", help="Model to map with (default: the calibration's model)."),
    stride: int = typer.Option(None, "--stride", help="Window step, px (default: the calibration's)."),
    median: int = typer.Option(1, "--median", help="Median over N x N windows (smooth surfaces; 1: none)."),
    surface: str = typer.Option(None, "--surface", help="Also fuse the windows into one surface (plane, "
                                "poly2 or smooth) weighted by their σ: <name>_surface.ome.tif (surface, σ)."),
    out: Path = typer.Option(None, "--out", help="Output folder (default: beside each image)."),
    scheduler: str = typer.Option(None, "--scheduler", help="Run on Dask: a scheduler address "
                                  "(tcp://host:8786) or 'local' for a local cluster of --workers processes."),
    workers: int = typer.Option(1, "--workers", help="With --scheduler local: worker processes."),
    threads: int = typer.Option(None, "--threads", help=_MAP_THREADS_HELP),
    dihedral_average: bool = typer.Option(False, "--dihedral-average", help=_DIHEDRAL_HELP + " (default: as "
                                          "the calibration was made)"),
) -> None:
    """Depth maps in µm: <name>_depth.ome.tif (one plane per frame) and <name>_depth.json.

    The PSF maps are made the way the calibration's were (dihedral averaging or not).
    """
    _check_workers_option(scheduler, workers)
    _check_threads(threads)
    from livepsf.depth import Calibration
    from livepsf.depth.surface import check_prior

    check_prior(surface)
    cal = Calibration.load(calibration)
    average, warning = cal.mapping_dihedral_average(dihedral_average)
    if warning:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if scheduler is not None:
        from livepsf.batch import BatchOptions

        _run_batch(images, BatchOptions("depth", model=model, stride_px=stride, out_dir=_folder(out),
                                        calibration=str(calibration), median_windows=median, surface=surface,
                                        torch_threads=threads or 1, dihedral_average=average), scheduler, workers)
        return
    from livepsf.acquisition.thread_tuner import batch_threads
    from livepsf.depth import write_depth_outputs
    from livepsf.imageio import read_frames
    from livepsf.mapping import PSFMapper, map_frames
    from livepsf.net import load_model

    net = load_model(model or cal.model_name)
    cal.check_model(net)
    mapper = PSFMapper(net, stride_px=stride or cal.stride_px or 64, dihedral_average=average)
    with batch_threads(threads) as tuner:
        for image in images:
            frames = read_frames(image)
            pmaps, _ = map_frames(frames, mapper, image, tuner.run)
            tif_path, json_path, stats = write_depth_outputs(image, pmaps, cal, calibration, out, frames=frames,
                                                             median_windows=median, surface=surface)
            for i, s in enumerate(stats):
                plane = f" [{i}]" if len(stats) > 1 else ""
                console.print(f"{image}{plane}: depth {s['min_um']:.1f} … {s['max_um']:.1f} µm (median "
                              f"{s['median_um']:.1f}), {100 * s['invalid_fraction']:.0f}% windows invalid, "
                              f"{100 * s['unreliable_fraction']:.0f}% not used"
                              + (f", {s['n_read_back']} read back to the other side of focus" if s["n_read_back"]
                                 else ""), highlight=False)
                if "surface" in s:
                    f = s["surface"]
                    console.print(f"{image}{plane}: {surface} surface {f['min_um']:.1f} … {f['max_um']:.1f} µm, "
                                  f"tilt {f['tilt_x_deg']:.2f}° along x, {f['tilt_y_deg']:.2f}° along y, "
                                  f"σ {f['median_sigma_um']:.2f} µm (median), {f['n_used']} of {f['n_windows']} "
                                  "informative windows used", highlight=False, soft_wrap=True)
            if surface is None:
                console.print(f"wrote {tif_path} and {json_path}", highlight=False)
            else:
                import json

                surface_path = json.loads(json_path.read_text(encoding="utf-8"))["surface_map"]
                console.print(f"wrote {tif_path}, {json_path} and {surface_path}", highlight=False, soft_wrap=True)


@app.command()
def grid(
    square_um: float = typer.Option(200.0, "--square-um", help="Grid period (square size), µm."),
    out: Path = typer.Option(None, "--out", help="Output .svg or .pdf (default grid_<square>um_<paper>.svg)."),
    paper: str = typer.Option("a4", "--paper", help="a4 or letter."),
    line_um: float = typer.Option(None, "--line-um", help="Line width, µm (default a quarter of the square)."),
) -> None:
    """A printable calibration grid at true scale, with 10 mm scale bars and instructions."""
    from livepsf.grid import write_grid

    out = out or Path(f"grid_{square_um:g}um_{paper.lower()}.svg")
    layout = write_grid(out, square_um, line_um, paper)
    console.print(f"wrote {out}: {layout.n_squares[0]} x {layout.n_squares[1]} squares of {layout.square_um:g} µm, "
                  f"lines {layout.line_um:g} µm, {layout.paper.upper()}. Print at 100 %.", highlight=False)


# -- PSF maps and throughput (issue 5) ----------------------------------------------------------------


@app.command("map")
def map_images(
    images: list[Path] = typer.Argument(..., help="TIFF (each page is a frame), PNG or JPEG images."),
    model: str = typer.Option("default", "--model", help="Shipped model name or path to a .pt file."),
    stride: int = typer.Option(64, "--stride", help="Window step, px (a multiple of 8 for the shipped models)."),
    out: Path = typer.Option(None, "--out", help="Folder for the outputs (default: beside each image)."),
    scheduler: str = typer.Option(None, "--scheduler", help="Run on Dask: a scheduler address "
                                  "(tcp://host:8786) or 'local' for a local cluster of --workers processes."),
    workers: int = typer.Option(1, "--workers", help="With --scheduler local: worker processes."),
    threads: int = typer.Option(None, "--threads", help=_MAP_THREADS_HELP),
    dihedral_average: bool = typer.Option(False, "--dihedral-average", help=_DIHEDRAL_HELP),
) -> None:
    """PSF maps: <name>_psfmap.ome.tif (one channel per parameter + invalid) and <name>_psfmap.json."""
    _check_workers_option(scheduler, workers)
    _check_threads(threads)
    if scheduler is not None:
        from livepsf.batch import BatchOptions

        _run_batch(images, BatchOptions("map", model=model, stride_px=stride, out_dir=_folder(out),
                                        torch_threads=threads or 1, dihedral_average=dihedral_average),
                   scheduler, workers)
        return
    from livepsf.acquisition.thread_tuner import batch_threads
    from livepsf.mapping import PSFMapper, map_image_file
    from livepsf.net import load_model

    mapper = PSFMapper(load_model(model), stride_px=stride, dihedral_average=dihedral_average)
    failed = 0
    with batch_threads(threads) as tuner:
        for image in images:
            try:
                result = map_image_file(image, mapper, out, run=tuner.run)
            except InputError as exc:  # report it and go on with the other images; exit code 2 at the end
                _print_error(exc)
                failed += 1
                continue
            s = result.summary
            values = ", ".join(
                f"{name} {p['median']:.3g} {p['unit']}" if p["median"] is not None else f"{name} n/a"
                for name, p in s["params"].items()
            )
            all_invalid = sum(f["all_invalid"] for f in s["frames"])
            warn = f" [yellow]({all_invalid} frame(s) without any valid window: raw values kept)[/]" if all_invalid else ""
            console.print(
                f"{image} → {result.ome_path.name}, {result.json_path.name}: {s['n_frames']} frame(s), "
                f"{s['grid_shape'][0]}x{s['grid_shape'][1]} windows, {100 * s['fraction_invalid']:.0f} % invalid, "
                f"{s['time_per_frame_ms']['median']:.1f} ms/frame ({tuner.current} torch thread"
                f"{'s' if tuner.current != 1 else ''}); medians: {values}{warn}",
                highlight=False, soft_wrap=True,
            )
    if failed:
        raise typer.Exit(code=2)


def _check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")


def _check_workers_option(scheduler: str | None, workers: int) -> None:
    """map and depth run in this process unless --scheduler is given: --workers alone would do nothing."""
    if scheduler is None and workers != 1:
        raise InputError("--workers needs --scheduler local (a local Dask cluster of that many processes)")


def _folder(out: Path | None) -> str | None:
    return None if out is None else str(out.resolve())


def _run_batch(images: list[Path], options, scheduler: str, workers: int) -> None:
    """``map|depth|deconvolve --scheduler``: the batch on Dask, a progress bar, one line per input."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from livepsf.batch import run_batch

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console) as progress:
            report = run_batch(images, options, scheduler=scheduler, workers=workers, progress=progress)
    except KeyboardInterrupt:
        err_console.print("interrupted: the frames finished so far are kept; run the same command again to "
                          "finish the rest", highlight=False)
        raise typer.Exit(code=130) from None
    for message in report.errors:
        _print_error(message)
    for r in report.results:
        if r.state in ("done", "reused"):
            note = " (already done with these settings)" if r.state == "reused" else ""
            console.print(f"{r.source} → {', '.join(p.name for p in r.outputs)}{note}", highlight=False,
                          soft_wrap=True)
        elif r.state == "failed":
            _print_error(r.error)
        else:
            err_console.print(f"[yellow]unfinished:[/] {r.source}: {r.computed} frame(s) of {r.frames} done in this "
                              "run and kept; run the same command again to finish", highlight=False, soft_wrap=True)
    console.print(f"{report.frames_computed} frame(s) in {report.seconds:.1f} s ({report.frames_per_s:.2f} frames/s)",
                  highlight=False)
    if any(r.state == "unfinished" or (r.state == "failed" and not r.bad_input) for r in report.results):
        raise typer.Exit(code=1)
    if report.errors or any(r.state == "failed" for r in report.results):
        raise typer.Exit(code=2)


@app.command()
def bench(
    suite: list[str] = typer.Option(None, "--suite", help="Only these suites (repeatable); default: all."),
    quick: bool = typer.Option(False, "--quick", help="Fewer runs: rough figures in a few seconds."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for torch (the README quotes 2)."),
) -> None:
    """Throughput table on this machine: median and p95 wall ms per call, median CPU ms (all threads)."""
    from rich.table import Table

    from livepsf.throughput import machine_description, run_suites

    _check_threads(threads)
    rows = run_suites(suite or None, quick=quick, threads=threads)
    table = Table(title=f"livepsf throughput — {machine_description(threads)}", title_justify="left")
    for col, justify in (("task", "left"), ("model", "left"), ("input", "left"), ("device", "left"),
                         ("median ms", "right"), ("p95 ms", "right"), ("CPU ms", "right"), ("runs", "right"),
                         ("× first row", "right"), ("note", "left")):
        table.add_column(col, justify=justify)
    for r in rows:
        cpu = "" if r.cpu_median_ms is None else f"{r.cpu_median_ms:.1f}"
        table.add_row(r.task, r.subject, r.size, r.device, f"{r.median_ms:.1f}", f"{r.p95_ms:.1f}", cpu, str(r.runs),
                      "" if r.relative is None else f"{r.relative:.1f}×", r.note)
    # Piped to a file (no terminal width to respect), print full rows rather than rich's default 80 columns.
    (console if console.is_terminal else Console(width=160)).print(table)


@app.command()
def train(
    psf_model: str = typer.Option("Z-3", "--psf-model", help="Z-1, Z-2, Z-3, G-1 or G-2."),
    architecture: str = typer.Option("shared-trunk", help="Network architecture (shared-trunk, resnet34, ...)."),
    name: str = typer.Option("default", help="Model name (file name and card name)."),
    minutes: float = typer.Option(None, help="Training budget in wall-clock minutes."),
    steps: int = typer.Option(None, help="Training budget in optimisation steps."),
    out: Path = typer.Option(Path("runs"), help="Folder for the checkpoint and the exported model."),
    resume: Path = typer.Option(None, help="Checkpoint to continue from."),
    init_from: Path = typer.Option(None, "--init-from", help="Trained model (.pt) or checkpoint whose weights "
                                   "start a new run (e.g. shared-trunk-spectral from the default model)."),
    seed: int = typer.Option(0, help="Random seed (network initialisation and data stream)."),
    batch_size: int = typer.Option(32, help="Patches per step."),
    lr: float = typer.Option(2e-3, help="Peak learning rate (cosine decay)."),
    device: str = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
    threads: int = typer.Option(None, help="torch threads for training."),
    workers: int = typer.Option(1, help="Background processes making training batches (0: inline)."),
    export: Path = typer.Option(None, help="Where to write the .pt model (default OUT/NAME.pt)."),
    n_test: int = typer.Option(2000, help="Test-set size for the card's evaluation."),
    photons_max: float = typer.Option(None, help="Upper end of the training photon range (electrons at "
                                                 "texture value 1; default: the data layer's)."),
) -> None:
    """Train a PSF-parameter network, evaluate it on the held-out test set and export it with its card."""
    import shlex
    import sys

    from livepsf.net.train import TrainConfig, run_training

    from livepsf.data.degrade import DegradationConfig

    data = {}
    if photons_max is not None:
        low = DegradationConfig().photons[0]
        if not photons_max > low:
            raise InputError(f"--photons-max must exceed the lower end of the photon range ({low:g})")
        data["photons"] = [low, photons_max]
    config = TrainConfig(psf_model=psf_model, architecture=architecture, name=name, steps=steps, minutes=minutes,
                         batch_size=batch_size, lr=lr, seed=seed, device=device, threads=threads, workers=workers,
                         data=data, init_from=None if init_from is None else str(init_from))
    command = "livepsf " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result, path = run_training(config, out, export_path=export, resume=resume, command=command, n_test=n_test)
    from livepsf.net import ModelCard

    card = ModelCard.load(path.with_suffix(".json"))
    test = card.evaluation["test"]
    console.print(f"trained {result.step} steps in {result.seconds / 60:.1f} min; exported {path}")
    console.print("test R²: " + ", ".join(f"{k} {v:.3f}" for k, v in test["r2"].items() if v is not None)
                  + f"; mean {test['mean_r2']:.3f}; validity accuracy {test['validity_accuracy']:.3f}")


@app.command()
def evaluate(
    model: str = typer.Argument("default", help="Shipped model name or a .pt file with its .json card."),
    n_test: int = typer.Option(2000, help="Test-set size."),
    n_robustness: int = typer.Option(500, help="Clean patches for the robustness sweep (0: skip)."),
    plot: Path = typer.Option(None, help="PNG of the robustness sweep (default: beside a .pt file, or "
                                         "./<name>_robustness.png for a shipped model)."),
    battery: int = typer.Option(300, "--battery", help="Patches per set of the cue battery: R² per photon "
                                "decade and texture family, single lines vs crossings, σ calibration, "
                                "signed focus near focus (0: skip)."),
) -> None:
    """R² per parameter on the held-out test set, validity accuracy, robustness sweep (Fig. 7), cue battery."""
    from rich.table import Table

    from livepsf.imageio import output_path
    from livepsf.net import load_model
    from livepsf.net.evaluate import evaluate_model, robustness_plot

    net = load_model(model)
    if battery < 0:
        raise InputError(f"--battery must be 0 or more, got {battery}")
    report = evaluate_model(net.module, net.spec.name, net.optics, net.window_px, n_test=n_test,
                            n_robustness=n_robustness, device=net.device, n_battery=battery)
    table = Table(title=f"{net.name} ({net.spec.name}, {net.card.architecture}) on {report.test.n_valid} valid "
                        f"+ {report.test.n_invalid} invalid test patches")
    table.add_column("parameter")
    table.add_column("R²", justify="right")
    table.add_column("MAE (normalised)", justify="right")
    for k, v in report.test.r2.items():
        table.add_row(k, f"{v:.4f}", f"{report.test.mae[k]:.4f}")
    table.add_row("[bold]mean", f"[bold]{report.test.mean_r2:.4f}", "")
    table.add_row("validity accuracy", f"{report.test.validity_accuracy:.4f}", "")
    console.print(table)
    if report.battery is not None:
        cues = Table(title=f"cue battery ({report.battery.n_per_set} patches per set; livepsf.net.battery)")
        cues.add_column("check")
        cues.add_column("result", justify="right")
        for what, result in report.battery.rows():
            cues.add_row(what, result)
        console.print(cues)
    if report.robustness is not None:
        rob = Table(title="mean R² under degradation (strength as in livepsf.data.degrade.apply_strength)")
        rob.add_column("degradation")
        for s in report.robustness.strengths:
            rob.add_column(f"{s:g}", justify="right")
        for row in report.robustness.table():
            rob.add_row(*row)
        console.print(rob)
        if plot is None:
            from livepsf.net import models_dir

            shipped = net.path.resolve().parent == models_dir().resolve()  # never write into the package
            plot = output_path(Path.cwd() / f"{net.name}.pt" if shipped else net.path, "_robustness.png")
        robustness_plot(report.robustness, plot, title=f"{net.name} ({net.spec.name}): R² under degradation")
        console.print(f"plot: {plot}")


# -- live: demo (simulator) and live (Micro-Manager) -------------------------------------------------


def _live_model(model: str | None):
    """The network for the live commands: ``--model``, else the shipped default, else a clear error."""
    from livepsf.net import available_models, load_model

    if model is not None:
        return load_model(model)
    if "default" not in available_models():
        raise InputError("no trained model is shipped in this installation yet (livepsf/models has no "
                         "default.pt); pass --model PATH to a .pt model with its .json card")
    return load_model("default")


def _check_simulator_options(sample: str, size: int) -> None:
    from livepsf.sim import SAMPLES

    if sample not in SAMPLES:
        raise InputError(f"--sample {sample!r}: choose one of {', '.join(SAMPLES)}")
    if not 128 <= size <= 4096:
        raise InputError(f"--size {size}: use 128 to 4096 px")


def _simulator_core(net, sample: str, size: int, **options):
    """The simulated microscope of demo, autofocus and calibrate --zstack --sim, after checking --sample, --size."""
    import logging

    from livepsf.sim import create_core

    _check_simulator_options(sample, size)
    # pymmcore-plus looks for a Micro-Manager installation the simulator does not need; keep it quiet.
    logging.getLogger("pymmcore-plus").setLevel(logging.CRITICAL)
    return create_core(sample=sample, shape=(size, size), optics=net.optics, **options)


def _check_live_options(frames: int, overlay: str | None) -> None:
    from livepsf.gui.overlays import OVERLAYS

    if frames < 1:
        raise InputError(f"--frames must be at least 1, got {frames}")
    if overlay is not None and overlay not in OVERLAYS:
        raise InputError(f"--overlay {overlay!r}: choose one of {', '.join(OVERLAYS)}")


def _run_live(core, net, cal, *, headless: bool, frames: int, stride: int, snapshot: Path | None,
              overlay: str | None, demo: bool, label: str) -> None:
    from livepsf.gui.app import check_display, has_display, run_headless, run_window

    if not headless and has_display():
        try:
            check_display()
        except SetupError as exc:  # Qt would abort the process: say what to install, then run headless
            err_console.print(f"[yellow]warning:[/] {exc}; running headless", highlight=False)
            os.environ["QT_QPA_PLATFORM"] = "offscreen"  # the snapshot is drawn without the display
        else:
            raise typer.Exit(code=run_window(core, net, stride_px=stride, calibration=cal, demo=demo))
    if snapshot is None:
        from livepsf.imageio import output_path

        snapshot = output_path(Path.cwd() / f"livepsf-{label}.png", "_snapshot.png")
    console.print(f"[bold]{label}[/]: model {net.name} ({net.spec.name}), stride {stride} px, "
                  f"{frames} maps, headless" + ("" if cal is not None else ", depth uncalibrated"))
    run = run_headless(core, net, frames=frames, stride_px=stride, calibration=cal, snapshot=snapshot,
                       overlay=overlay,
                       on_tick=lambda st: console.print(f"  {st.line()}", highlight=False, soft_wrap=True),
                       on_error=lambda msg: err_console.print(f"[yellow]warning:[/] {msg}", highlight=False))
    console.print(f"[bold]summary[/]: {run.summary()}", highlight=False, soft_wrap=True)
    if run.snapshot is not None:
        console.print(f"snapshot: {run.snapshot}")
    _exit_if_ended_early(run)


def _exit_if_ended_early(run) -> None:
    """A headless live run (view or focus lock) that stopped before its frames: say why, exit code 1."""
    if not run.completed:
        err_console.print(f"[bold red]error:[/] live view ended early: {run.reason}", highlight=False)
        raise typer.Exit(code=1)


@app.command()
def demo(
    sample: str = typer.Option("printed-grid", "--sample", help="printed-grid, cells or filaments."),
    tilt_deg: float = typer.Option(6.0, "--tilt-deg", help="Tilt of the simulated sample, degrees."),
    headless: bool = typer.Option(False, "--headless", help="No window (automatic without a display)."),
    frames: int = typer.Option(300, "--frames", help="Headless: number of frames to map."),
    snapshot: Path = typer.Option(None, "--snapshot", help="Headless: PNG of the last frame with its overlay "
                                  "(default livepsf-demo_snapshot.png here, never overwritten)."),
    model: str = typer.Option(None, "--model", help="Shipped model name or .pt file (default: the shipped "
                              "default model)."),
    calibration: Path = typer.Option(None, "--calibration", help="Depth calibration JSON (default: one in "
                                     "./calibration made with this model, if any)."),
    stride: int = typer.Option(64, "--stride", help="Window step of the PSF map, px."),
    overlay: str = typer.Option(None, "--overlay", help="Snapshot overlay: focus, astigmatism, depth, ..."),
    size: int = typer.Option(1024, "--size", help="Simulated camera frame side, px."),
    focus_lock: bool = typer.Option(False, "--focus-lock", help="Hold the focus of --roi (whole frame) "
                                    "against drift, headless; logs every correction."),
    roi: str = typer.Option(None, "--roi", help="Focus-lock region x,y,width,height in pixels."),
    drift: float = typer.Option(0.0, "--drift-um-per-min", help="Slow Z drift of the simulated sample."),
) -> None:
    """Live PSF maps of a simulated microscope (tilted printed grid, cylindrical lens)."""
    from livepsf.depth.discovery import calibration_for_model

    _check_simulator_options(sample, size)
    _check_live_options(frames, overlay)
    net = _live_model(model)
    cal, cal_path = calibration_for_model(net, calibration)
    if cal_path is not None:
        console.print(f"depth calibration: {cal_path}")
    # 20 ms exposure (~50 fps): the simulated camera spends CPU on every frame (noise), which a real
    # camera does not; frames beyond the map rate would only be skipped.
    core = _simulator_core(net, sample, size, tilt_deg=tilt_deg, exposure_ms=20.0, drift_um_per_min=drift)
    if focus_lock:
        _run_focus_lock(core, net, cal, frames=frames, stride=stride, roi=_parse_roi(roi))
        return
    _run_live(core, net, cal, headless=headless, frames=frames, stride=stride, snapshot=snapshot,
              overlay=overlay, demo=True, label="demo")


@app.command()
def live(
    mm_config: Path = typer.Option(..., "--mm-config", help="Micro-Manager configuration file (.cfg)."),
    camera: str = typer.Option(None, "--camera", help="Camera device label (default: the configuration's)."),
    model: str = typer.Option(None, "--model", help="Shipped model name or .pt file (default: default)."),
    calibration: Path = typer.Option(None, "--calibration", help="Depth calibration JSON."),
    stride: int = typer.Option(64, "--stride", help="Window step of the PSF map, px."),
    headless: bool = typer.Option(False, "--headless", help="No window (automatic without a display)."),
    frames: int = typer.Option(300, "--frames", help="Headless: number of frames to map."),
    snapshot: Path = typer.Option(None, "--snapshot",
                                  help="Headless: PNG of the last frame with its overlay."),
    focus_lock: bool = typer.Option(False, "--focus-lock", help="Hold the focus of --roi (whole frame) "
                                    "against drift, headless; logs every correction (cylindrical lens in)."),
    roi: str = typer.Option(None, "--roi", help="Focus-lock region x,y,width,height in pixels."),
) -> None:
    """Live PSF maps on a real microscope through Micro-Manager (pymmcore-plus)."""
    from livepsf.acquisition.micromanager import load_micromanager_core
    from livepsf.depth.discovery import calibration_for_model

    _check_live_options(frames, None)
    core = load_micromanager_core(mm_config, camera)
    net = _live_model(model)
    cal, _ = calibration_for_model(net, calibration)
    if focus_lock:
        _run_focus_lock(core, net, cal, frames=frames, stride=stride, roi=_parse_roi(roi), settle_s=0.2)
        return
    _run_live(core, net, cal, headless=headless, frames=frames, stride=stride, snapshot=snapshot,
              overlay=None, demo=False, label="live")


# -- autofocus and focus lock (issue 15) ---------------------------------------------------------------


def _parse_roi(roi: str | None) -> tuple[int, int, int, int] | None:
    if roi is None:
        return None
    parts = [p.strip() for p in roi.split(",")]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise InputError(f"--roi {roi!r}: give x,y,width,height in pixels, e.g. 256,256,512,512")
    return values  # type: ignore[return-value]


def _run_focus_lock(core, net, cal, *, frames: int, stride: int, roi, settle_s: float = 0.0) -> None:
    from livepsf.acquisition.focus_lock import run_headless_focus_lock

    def said(c) -> None:
        console.print(f"  correction: drift {c.offset_um:+.2f} ± {c.sigma_um:.2f} µm ({c.source}), "
                      f"Z {c.z_before_um:.2f} → {c.z_after_um:.2f} µm", highlight=False)

    run = run_headless_focus_lock(
        core, net, frames=frames, stride_px=stride, roi=roi, calibration=cal, settle_s=settle_s,
        on_correction=said,
        on_engaged=lambda lock: console.print(
            f"[bold]focus lock[/] engaged at Z {core.getZPosition():.2f} µm (headless; in the live window it is "
            f"the Focus lock toggle), {frames} maps", highlight=False),
        on_tick=lambda st: console.print(f"  {st.line()}", highlight=False, soft_wrap=True))
    console.print(f"[bold]summary[/]: {run.results} maps, {len(run.corrections)} corrections",
                  highlight=False)
    _exit_if_ended_early(run)


@app.command("autofocus")
def autofocus_command(
    mm_config: Path = typer.Option(None, "--mm-config", help="Micro-Manager configuration (.cfg); default: "
                                   "the simulated microscope."),
    camera: str = typer.Option(None, "--camera", help="Camera device label (default: the configuration's)."),
    model: str = typer.Option(None, "--model", help="Shipped model name or .pt file (default: default)."),
    calibration: Path = typer.Option(None, "--calibration", help="Depth calibration JSON (default: one made "
                                     "with the model in ./calibration, if any)."),
    lens: bool = typer.Option(None, "--lens/--no-lens", help="Cylindrical lens in (default: in when a "
                              "calibration is found; the simulator's lens follows it)."),
    roi: str = typer.Option(None, "--roi", help="Region x,y,width,height in pixels (default: whole frame)."),
    search: bool = typer.Option(False, "--search", help="Classical coarse-to-fine sharpness search only."),
    max_frames: int = typer.Option(None, "--max-frames", help="Most frames (3 with lens, 4 without)."),
    sample: str = typer.Option("cells", "--sample", help="Simulator: printed-grid, cells or filaments."),
    start_um: float = typer.Option(25.0, "--start-um", help="Simulator: focus offset to start from, µm."),
    size: int = typer.Option(1024, "--size", help="Simulator: frame side, px."),
) -> None:
    """Bring the sample into focus: one frame with the cylindrical lens, two without, else a search.

    Exit code 1 when no focus was found (a blank field, or out of the searched range).
    """
    from livepsf.acquisition.autofocus import autofocus, search_focus
    from livepsf.depth.discovery import calibration_for_model
    from livepsf.mapping import PSFMapper

    net = _live_model(model)
    cal, cal_path = calibration_for_model(net, calibration)
    use_lens = (cal is not None) if lens is None else lens
    if use_lens and cal is None and not search:
        raise InputError("--lens needs a depth calibration made with this model: pass --calibration FILE")
    simulated = mm_config is None
    lens_waves = None
    if simulated:
        from livepsf.sim import LENS_ASTIG_0_WAVES

        core = _simulator_core(net, sample, size, tilt_deg=0.0, lens=use_lens, z_um=start_um)
        lens_waves = LENS_ASTIG_0_WAVES if use_lens else None
    else:
        from livepsf.acquisition.micromanager import load_micromanager_core

        core = load_micromanager_core(mm_config, camera)
    if cal_path is not None and use_lens:
        console.print(f"depth calibration: {cal_path}")
    if search:
        result = search_focus(core, roi=_parse_roi(roi))
    else:
        result = autofocus(core, roi=_parse_roi(roi), mapper=PSFMapper(net, stride_px=64),
                           calibration=cal if use_lens else None, lens=use_lens, lens_astig_waves=lens_waves,
                           max_frames=max_frames)
    for i, step in enumerate(result.steps, 1):
        console.print(f"  frame {i}: Z {step.z_um:+.2f} µm, network {step.network_um:+.2f} ± "
                      f"{step.network_sigma_um:.2f} µm, anisotropy {step.anisotropy:+.3f}, sharpness "
                      f"{step.sharpness:.3f} → focus {step.focus_estimate_um:+.2f} ± "
                      f"{step.focus_sigma_um:.2f} µm ({step.method})", highlight=False, soft_wrap=True)
    console.print(f"[bold]autofocus[/]: {result.summary()}", highlight=False, soft_wrap=True)
    if simulated:
        import numpy as np

        from livepsf.sim import ground_truth

        core.snapImage()
        truth = ground_truth(core)
        console.print(f"simulator truth: remaining defocus {float(np.median(truth.defocus_um)):+.2f} µm "
                      f"(started {start_um:+.2f} µm)", highlight=False)
    if result.offset_um != result.offset_um:  # NaN: no focus found
        raise typer.Exit(code=1)



# -- training data (issue 3) -------------------------------------------------------------------------


@data_app.command("preview")
def data_preview(
    psf_model: str = typer.Option("Z-3", "--psf-model", help="Z-1, Z-2, Z-3, G-1 or G-2."),
    out: Path = typer.Option(Path("preview.png"), "--out", help="PNG to write (a new name if it exists)."),
    n: int = typer.Option(24, "--n", help="Number of patches."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the training stream."),
    columns: int = typer.Option(6, "--columns", help="Patches per row."),
    split: str = typer.Option("train", "--split", help="train (random stream) or the fixed val / test sets."),
) -> None:
    """A contact sheet of training patches with their PSF parameters printed above each."""
    from livepsf.data.preview import write_preview
    from livepsf.imageio import output_path
    from livepsf.optics import get_psf_model

    try:
        get_psf_model(psf_model)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if not 1 <= n <= 1000:
        raise InputError(f"--n must be between 1 and 1000, got {n}")
    if columns < 1:
        raise InputError(f"--columns must be at least 1, got {columns}")
    if split not in ("train", "val", "test"):
        raise InputError(f"--split must be train, val or test, got {split!r}")
    if out.suffix.lower() != ".png":
        raise InputError(f"{out}: the preview is written as PNG; give a .png name")
    if out.exists():
        out = output_path(out, ".png")
    path = write_preview(out, psf_model, n=n, seed=seed, columns=columns, split=split)
    console.print(f"wrote {path}: {n} {psf_model.upper()} patches (seed {seed}, {split})", highlight=False)


# -- deconvolution (issue 9) --------------------------------------------------------------------------


@app.command("deconvolve")
def deconvolve_images(
    images: list[Path] = typer.Argument(..., help="TIFF (each page is a frame), PNG or JPEG images."),
    iterations: int = typer.Option(20, "--iterations", help="Richardson-Lucy iterations."),
    tv: float = typer.Option(DEFAULT_TV_WEIGHT, "--tv", help="Total-variation weight lambda_TV (0 = plain RL; below 0.25)."),
    out: Path = typer.Option(None, "--out", help="Folder for the outputs (default: beside each image)."),
    model: str = typer.Option("default", "--model", help="Network for the PSF maps (images without recorded maps)."),
    stride: int = typer.Option(64, "--stride", help="Window step of the PSF map, px."),
    workers: int = typer.Option(1, "--workers", help="Background worker processes (with --scheduler local: "
                                "Dask worker processes)."),
    journal: Path = typer.Option(None, "--journal",
                                 help="Job journal (default: the per-user one; unfinished jobs there resume)."),
    scheduler: str = typer.Option(None, "--scheduler", help="Run on Dask: a scheduler address "
                                  "(tcp://host:8786) or 'local' for a local cluster of --workers processes."),
    threads: int = typer.Option(None, "--threads", help="Torch threads per worker (default: the cores shared "
                                "among --workers; with --scheduler: 1 per task)."),
    dihedral_average: bool = typer.Option(False, "--dihedral-average", help=_DIHEDRAL_HELP + " (images "
                                          "without recorded maps)"),
) -> None:
    """Spatially-variant TV-RL deconvolution into <name>_deconv.ome.tif; inputs are never modified.

    Recordings made by livepsf use the PSF maps estimated live for each frame; other images are
    mapped by the network first. Jobs run in background worker processes and are journalled, so an
    interrupted run resumes the next time the queue starts; a rerun with the same settings skips the
    outputs already made. With --scheduler the frames are tasks on a Dask cluster instead.
    """
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    from livepsf.acquisition.jobs import DeconvolutionQueue
    from livepsf.imageio import read_frames

    if iterations < 1:
        raise InputError(f"--iterations must be at least 1, got {iterations}")
    if not 0 <= tv < 0.25:
        raise InputError(f"--tv must be in [0, 0.25), got {tv}")
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    _check_threads(threads)
    if scheduler is not None:
        from livepsf.batch import BatchOptions

        _run_batch(images, BatchOptions("deconvolve", model=model, stride_px=stride, out_dir=_folder(out),
                                        iterations=iterations, tv_weight=tv, torch_threads=threads or 1,
                                        dihedral_average=dihedral_average),
                   scheduler, workers)
        return
    readable, bad = [], 0
    for image in images:
        try:
            read_frames(image)  # fail fast, with the file's name, before starting any worker
            readable.append(image)
        except InputError as exc:
            _print_error(exc)
            bad += 1
    if not readable:
        raise typer.Exit(code=2)
    queue = DeconvolutionQueue(journal, workers=workers, start=False, torch_threads=threads)
    if queue.resumed:
        console.print(f"resuming {len(queue.resumed)} unfinished job(s) from {queue.journal_path}", highlight=False)
    ids = [queue.submit(image, iterations=iterations, tv_weight=tv, out_dir=out, model=model, stride_px=stride,
                        dihedral_average=dihedral_average) for image in readable]
    watched = list(dict.fromkeys(list(queue.resumed) + ids))  # submit returns a resumed job's id again
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        tasks = {job_id: progress.add_task(Path(queue.job(job_id).input).name, total=None) for job_id in watched}
        queue.progress.connect(lambda job_id, done, total: progress.update(tasks[job_id], completed=done, total=total)
                               if job_id in tasks else None)
        try:
            queue.start()
            queue.wait()
        finally:
            queue.close()
    failed_input = failed_other = 0
    for job_id in watched:
        job = queue.job(job_id)
        if job.state == "done":
            note = " (already done with these settings)" if job.reused else ""
            console.print(f"{job.input} → {job.output}{note}", highlight=False, soft_wrap=True)
        else:
            _print_error(job.error)
            failed_input += job.bad_input
            failed_other += not job.bad_input
    if failed_other:
        raise typer.Exit(code=1)
    if failed_input or bad:
        raise typer.Exit(code=2)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``livepsf`` console script and of ``python -m livepsf``.

    typer's standalone mode already turns usage errors into exit code 2; an :class:`InputError` or
    :class:`SetupError` raised anywhere below a command becomes the same one-line message and exit code 2.
    """
    try:
        app(args=argv)
    except (InputError, SetupError) as exc:
        raise SystemExit(fail_input(str(exc)).exit_code) from None


if __name__ == "__main__":
    main()

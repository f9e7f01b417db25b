"""Batch layer on Dask (livepsf.batch): inputs, same results as one machine, killed worker, resume."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livepsf.acquisition.jobs import output_settings, run_job
from livepsf.batch import BatchOptions, expand_inputs, open_source, read_frame, run_batch
from livepsf.errors import InputError
from livepsf.imageio import read_frames
from livepsf.mapping import PSFMapper, load_psfmaps, map_image_file
from test_jobs import _recording

distributed = pytest.importorskip("distributed")
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster():
    """A local cluster of 2 worker processes with one thread each, shared by the tests of this file."""
    from livepsf.batch import local_cluster

    with local_cluster(2) as cluster:
        yield cluster


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster) as client:
        client.wait_for_workers(2, timeout=120)
        yield client


def _reference_deconv(source: Path, folder: Path, iterations: int) -> Path:
    return run_job({"id": "ref", "input": str(source), "iterations": iterations, "tv_weight": 0.01,
                    "out_dir": str(folder), "model": "default", "stride_px": 64, "output": None})


def _hidden(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


# -- inputs -------------------------------------------------------------------------------------------


def test_folders_expand_to_their_tiffs_without_livepsf_outputs(tmp_path: Path) -> None:
    for name in ("b.tif", "a.ome.tiff", "a_psfmap.ome.tif", "b_deconv-2.ome.tif", "x_depth.ome.tif", "x_surface.ome.tif",
                 ".hidden.tif",
                 "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    files, errors = expand_inputs([tmp_path, tmp_path / "b.tif", tmp_path / "nope.tif", tmp_path / "empty"])
    assert [f.name for f in files] == ["a.ome.tiff", "b.tif"]  # sorted, each once
    assert errors == [f"{tmp_path / 'nope.tif'}: no such file or folder",
                      f"{tmp_path / 'empty'}: folder holds no TIFF files or OME-Zarr stores to process"]


@pytest.mark.parametrize("shape", [(96, 80), (3, 96, 80), (2, 3, 96, 80)])
def test_lazy_frames_are_the_frames_of_read_frames(tmp_path: Path, shape: tuple[int, ...]) -> None:
    data = np.random.default_rng(0).integers(0, 4000, shape, dtype=np.uint16)
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TCYX"[-len(shape):]})
    source = open_source(path)
    expected = read_frames(path)
    assert source.n_frames == len(expected) and source.frame_shape == (96, 80)
    for i, frame in enumerate(expected):
        np.testing.assert_array_equal(read_frame(path, i), frame)
    with pytest.raises(InputError, match="frame 6 does not exist"):
        read_frame(path, 6)


def test_rgb_and_broken_files_read_like_read_frames(tmp_path: Path) -> None:
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.random.default_rng(1).integers(0, 255, (64, 72, 3), dtype=np.uint8), photometric="rgb")
    assert open_source(rgb).n_frames == 1
    np.testing.assert_array_equal(read_frame(rgb, 0), read_frames(rgb)[0])
    broken = tmp_path / "broken.tif"
    broken.write_bytes(b"II*\x00 not really a tiff")
    with pytest.raises(InputError, match="broken.tif"):
        open_source(broken)


def _ome_zarr(path: Path, data: np.ndarray, version: str = "0.4") -> Path:
    """A minimal OME-Zarr store: one multiscale level "0" holding ``data`` (NGFF 0.4 or 0.5 layout)."""
    zarr = pytest.importorskip("zarr")
    group = zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)
    axes = [{"name": n, "type": "time" if n == "t" else "channel" if n == "c" else "space"}
            for n in "tczyx"[-data.ndim:]]
    multiscales = [{"version": version, "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0] * data.ndim}]}]}]
    group.attrs.update({"multiscales": multiscales} if version == "0.4" else {"ome": {"version": version,
                                                                                      "multiscales": multiscales}})
    array = group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=(1,) * (data.ndim - 2) + (64, 64))
    array[...] = data
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_frames_are_read_plane_by_plane(tmp_path: Path, version: str) -> None:
    data = np.random.default_rng(3).integers(0, 4000, (2, 3, 96, 80), dtype=np.uint16)
    store = _ome_zarr(tmp_path / "acq.ome.zarr", data, version)
    (tmp_path / "notes.txt").write_text("not an image")
    files, errors = expand_inputs([tmp_path])
    assert files == [store.resolve()] and errors == []
    source = open_source(store)
    assert source.n_frames == 6 and source.frame_shape == (96, 80)
    for i, plane in enumerate(data.reshape(6, 96, 80)):
        np.testing.assert_array_equal(read_frame(store, i), plane)
    with pytest.raises(InputError, match="frame 6 does not exist"):
        read_frame(store, 6)


# -- torch threads --------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2])
def test_a_task_maps_with_the_runs_torch_thread_count_in_the_worker_thread(tmp_path: Path, tiny_model,
                                                                          threads: int) -> None:
    import threading

    import torch

    from livepsf.batch.outputs import OutputWriter
    from livepsf.batch.tasks import compute_frame

    source = tmp_path / "a.tif"
    tifffile.imwrite(source, np.random.default_rng(4).integers(0, 4000, (128, 128), dtype=np.uint16))
    task = OutputWriter(BatchOptions("map", model=str(tiny_model.path), torch_threads=threads)).task()
    seen = {}

    def worker() -> None:  # a worker thread of its own: OpenMP's count is per thread
        torch.set_num_threads(3)
        seen["out"] = compute_frame(task, str(source), 0)
        seen["threads"] = torch.get_num_threads()

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["threads"] == threads
    assert seen["out"]["arrays"]["p.focus"].shape == (1, 1)


def test_cli_threads_reach_the_dask_tasks_and_bad_counts_are_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    import livepsf.batch
    from livepsf.batch import BatchReport
    from livepsf.cli import main

    given = []
    monkeypatch.setattr(livepsf.batch, "run_batch", lambda images, options, **kw: given.append(options)
                        or BatchReport([], [], 0, 0.0))
    for argv in (["map", str(tmp_path), "--threads", "2"], ["deconvolve", str(tmp_path), "--threads", "3"],
                 ["map", str(tmp_path)]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--scheduler", "tcp://127.0.0.1:1"])
        assert exit_info.value.code in (0, None)
    assert [o.torch_threads for o in given] == [2, 3, 1]  # 1 per task unless told (Dask's convention)
    with pytest.raises(SystemExit) as exit_info:
        main(["deconvolve", str(tmp_path), "--threads", "0", "--scheduler", "tcp://127.0.0.1:1"])
    assert exit_info.value.code == 2 and "--threads must be at least 1, got 0" in capsys.readouterr().err
    assert len(given) == 3


# -- dihedral averaging -----------------------------------------------------------------------------------


def _tiny_calibration(path: Path, model, dihedral_average: bool) -> Path:
    from synthetic_depth import standard_calibration

    raw = json.loads(standard_calibration().model_dump_json())
    raw.update(model_name=model.card.name, model_sha256=model.card.weights_sha256, dihedral_average=dihedral_average)
    path.write_text(json.dumps(raw))
    return path


def test_a_task_returns_an_averaged_map_when_asked_and_depth_follows_the_calibration(
        tmp_path: Path, tiny_model, one_torch_thread) -> None:
    from livepsf.batch.outputs import OutputWriter
    from livepsf.batch.tasks import compute_frame, psfmap_from_arrays

    source = tmp_path / "a.tif"
    frame = np.random.default_rng(5).integers(0, 4000, (192, 192), dtype=np.uint16)
    tifffile.imwrite(source, frame)
    maps = {}
    for average in (False, True):
        task = OutputWriter(BatchOptions("map", model=str(tiny_model.path), dihedral_average=average)).task()
        out = compute_frame(task, str(source), 0)
        maps[average] = psfmap_from_arrays(out["arrays"], out["meta"])
    want = PSFMapper(tiny_model, stride_px=64, dihedral_average=True)(frame)
    assert maps[True].dihedral_average and not maps[False].dihedral_average
    for name in want.params:
        np.testing.assert_allclose(maps[True].params[name], want.params[name], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(maps[True].sigma[name], want.sigma[name], rtol=1e-5, atol=1e-6)
    assert not np.allclose(maps[True].params["focus"], maps[False].params["focus"])  # the two mappers are apart
    averaged_cal = _tiny_calibration(tmp_path / "averaged.json", tiny_model, True)
    writer = OutputWriter(BatchOptions("depth", model=str(tiny_model.path), calibration=str(averaged_cal)))
    assert writer.task()["dihedral_average"]  # not asked, but the calibration was made so
    plain_cal = _tiny_calibration(tmp_path / "plain.json", tiny_model, False)
    plain = OutputWriter(BatchOptions("depth", model=str(tiny_model.path), calibration=str(plain_cal)))
    assert not plain.task()["dihedral_average"] and plain.settings(source) != writer.settings(source)


def test_cli_dihedral_average_reaches_the_dask_tasks(tmp_path: Path, tiny_model, monkeypatch, capsys) -> None:
    import livepsf.batch
    from livepsf.batch import BatchReport
    from livepsf.cli import main

    given = []
    monkeypatch.setattr(livepsf.batch, "run_batch", lambda images, options, **kw: given.append(options)
                        or BatchReport([], [], 0, 0.0))
    averaged_cal = _tiny_calibration(tmp_path / "averaged.json", tiny_model, True)
    plain_cal = _tiny_calibration(tmp_path / "plain.json", tiny_model, False)
    for argv in (["map", str(tmp_path), "--dihedral-average"], ["deconvolve", str(tmp_path), "--dihedral-average"],
                 ["map", str(tmp_path)], ["depth", str(tmp_path), "--calibration", str(averaged_cal)],
                 ["depth", str(tmp_path), "--calibration", str(plain_cal)],
                 ["depth", str(tmp_path), "--calibration", str(plain_cal), "--dihedral-average"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--scheduler", "tcp://127.0.0.1:1"])
        assert exit_info.value.code in (0, None)
    assert [o.dihedral_average for o in given] == [True, True, False, True, False, True]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "plain PSF maps" in warnings[0]  # only the plain calibration asked to average


# -- on the cluster -----------------------------------------------------------------------------------


def test_deconvolution_equals_the_one_machine_path_and_a_rerun_reuses_it(tmp_path: Path, client,
                                                                         one_torch_thread) -> None:
    source = _recording(tmp_path, frames=3, size=96)
    source_bytes = source.read_bytes()
    options = BatchOptions("deconvolve", iterations=4)
    report = run_batch([tmp_path], options, client=client)
    assert report.ok and report.frames_computed == 3
    (result,) = report.results
    assert result.state == "done" and [p.name for p in result.outputs] == ["rec_deconv.ome.tif"]
    reference = _reference_deconv(source, tmp_path / "reference", 4)
    np.testing.assert_array_equal(tifffile.imread(result.outputs[0]), tifffile.imread(reference))
    assert output_settings(result.outputs[0]) == output_settings(reference)
    assert _hidden(tmp_path) == []  # the frame store is gone once the output is written

    again = run_batch([tmp_path], options, client=client)
    assert again.results[0].state == "reused" and again.frames_computed == 0
    other = run_batch([source], BatchOptions("deconvolve", iterations=5), client=client)
    assert [p.name for p in other.results[0].outputs] == ["rec_deconv-1.ome.tif"]  # other settings: new name
    assert sorted(p.name for p in tmp_path.glob("rec_deconv*")) == ["rec_deconv-1.ome.tif", "rec_deconv.ome.tif"]
    assert source.read_bytes() == source_bytes


def test_maps_and_depth_equal_the_one_machine_commands(tmp_path: Path, client, one_torch_thread,
                                                       tiny_model_factory) -> None:
    from livepsf.depth import write_depth_outputs
    from synthetic_depth import standard_calibration

    model = tiny_model_factory("Z-3")
    rng = np.random.default_rng(2)
    stack = tmp_path / "stack.ome.tif"
    tifffile.imwrite(stack, rng.integers(0, 4000, (2, 256, 256), dtype=np.uint16), ome=True)
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, rng.integers(0, 4000, (64, 64), dtype=np.uint16))
    report = run_batch([tmp_path], BatchOptions("map", model=str(model.path)), client=client)
    results = {r.source.name: r for r in report.results}
    assert results["small.tif"].state == "failed" and results["small.tif"].bad_input
    assert "small.tif" in results["small.tif"].error and "smaller than one" in results["small.tif"].error
    assert results["stack.ome.tif"].state == "done"
    ome, summary_path = results["stack.ome.tif"].outputs
    assert (ome.name, summary_path.name) == ("stack_psfmap.ome.tif", "stack_psfmap.json")
    mapper = PSFMapper(model, stride_px=64)
    reference = map_image_file(stack, mapper, tmp_path / "reference")
    for got, want in zip(load_psfmaps(ome), load_psfmaps(reference.ome_path), strict=True):
        for name in want.params:
            np.testing.assert_array_equal(got.params[name], want.params[name])
        np.testing.assert_array_equal(got.invalid, want.invalid)
    summary = json.loads(summary_path.read_text())
    assert summary["params"] == reference.summary["params"] and summary["n_frames"] == 2
    zarr_store = _ome_zarr(tmp_path / "zarr" / "stack.ome.zarr", tifffile.imread(stack))
    (from_zarr,) = run_batch([zarr_store.parent], BatchOptions("map", model=str(model.path)), client=client).results
    assert [p.name for p in from_zarr.outputs] == ["stack_psfmap.ome.tif", "stack_psfmap.json"]
    for got, want in zip(load_psfmaps(from_zarr.outputs[0]), load_psfmaps(ome), strict=True):
        np.testing.assert_array_equal(got.params["focus"], want.params["focus"])

    raw = json.loads(standard_calibration().model_dump_json())
    raw.update(model_name=model.card.name, model_sha256=model.card.weights_sha256)
    cal_path = tmp_path / "cal.json"
    cal_path.write_text(json.dumps(raw))
    report = run_batch([stack], BatchOptions("depth", model=str(model.path), stride_px=None,
                                             calibration=str(cal_path)), client=client)
    assert report.ok, report.results
    tif, depth_json = report.results[0].outputs
    assert (tif.name, depth_json.name) == ("stack_depth.ome.tif", "stack_depth.json")
    from livepsf.depth import Calibration

    cal = Calibration.load(cal_path)
    frames = read_frames(stack)
    want_tif, _, want_stats = write_depth_outputs(stack, [mapper(f) for f in frames], cal, cal_path,
                                                  tmp_path / "reference", frames=frames)
    np.testing.assert_array_equal(tifffile.imread(tif), tifffile.imread(want_tif))
    got_stats = json.loads(depth_json.read_text())["frames"]
    assert json.dumps(got_stats, sort_keys=True) == json.dumps(want_stats, sort_keys=True)  # NaN where all invalid


def test_a_worker_killed_mid_run_loses_no_finished_frame(tmp_path: Path, client, one_torch_thread) -> None:
    source = _recording(tmp_path, frames=6, size=128)
    victim = next(iter(client.run(os.getpid).values()))
    stored: list[int] = []

    def kill_a_worker_after_the_first_frame(path: Path, index: int) -> None:
        stored.append(index)
        if len(stored) == 1:
            os.kill(victim, signal.SIGKILL)

    report = run_batch([source], BatchOptions("deconvolve", iterations=30), client=client,
                       on_frame=kill_a_worker_after_the_first_frame)
    assert report.ok and report.results[0].state == "done"
    assert sorted(stored) == list(range(6))  # every frame stored once: none lost, none redone
    reference = _reference_deconv(source, tmp_path / "reference", 30)
    np.testing.assert_array_equal(tifffile.imread(report.results[0].outputs[0]), tifffile.imread(reference))
    assert victim not in client.run(os.getpid).values()  # it really died (its nanny started another)


def test_an_interrupted_run_resumes_with_only_the_missing_frames(tmp_path: Path, client,
                                                                 one_torch_thread) -> None:
    source = _recording(tmp_path, frames=6, size=96)
    options = BatchOptions("deconvolve", iterations=20)
    first: list[int] = []

    def interrupt_after_two(path: Path, index: int) -> None:
        first.append(index)
        if len(first) == 2:
            raise KeyboardInterrupt  # Ctrl-C

    with pytest.raises(KeyboardInterrupt):
        run_batch([source], options, client=client, on_frame=interrupt_after_two)
    assert not list(tmp_path.glob("rec_deconv*"))
    (store,) = [tmp_path / name for name in _hidden(tmp_path)]
    assert len(list(store.glob("frame-*.npz"))) == 2

    second: list[int] = []
    report = run_batch([source], options, client=client, on_frame=lambda path, index: second.append(index))
    assert report.ok and report.frames_computed == 4
    assert sorted(first + second) == list(range(6))  # only the missing frames were computed
    reference = _reference_deconv(source, tmp_path / "reference", 20)
    np.testing.assert_array_equal(tifffile.imread(report.results[0].outputs[0]), tifffile.imread(reference))
    assert _hidden(tmp_path) == []


def test_cli_runs_on_an_existing_scheduler(tmp_path: Path, cluster) -> None:
    from typer.testing import CliRunner

    from livepsf.cli import app

    _recording(tmp_path, frames=2, size=96)
    args = ["deconvolve", str(tmp_path), "--iterations", "3", "--scheduler", cluster.scheduler_address]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "rec_deconv.ome.tif" in result.output and (tmp_path / "rec_deconv.ome.tif").is_file()
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "already done with these settings" in result.output
    result = CliRunner().invoke(app, ["map", str(tmp_path / "missing.tif"), "--scheduler", cluster.scheduler_address])
    assert result.exit_code == 2 and "missing.tif: no such file or folder" in result.output


def test_cli_workers_without_a_scheduler_is_refused_for_map(tmp_path: Path) -> None:
    from livepsf.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["map", str(tmp_path / "a.tif"), "--workers", "2"])
    assert exit_info.value.code == 2


def test_cli_depth_surface_on_a_scheduler_equals_the_one_machine_command(tmp_path: Path, cluster) -> None:
    from typer.testing import CliRunner

    from livepsf.cli import app
    from livepsf.depth import Calibration, write_depth_outputs
    from livepsf.net import load_model

    # The shipped network and its simulator calibration, on a textured (checkerboard) stack.
    cal_path = Path(__file__).resolve().parents[1] / "calibration" / "sim-default.json"
    yy, xx = np.mgrid[:256, :256]
    checker = np.where((yy // 12 + xx // 12) % 2 == 0, 3000.0, 800.0)
    rng = np.random.default_rng(3)
    stack = tmp_path / "stack.ome.tif"
    tifffile.imwrite(stack, np.stack([rng.poisson(checker), rng.poisson(checker[:, ::-1])]).astype(np.uint16),
                     ome=True)
    args = ["depth", str(stack), "--calibration", str(cal_path), "--surface", "plane",
            "--scheduler", cluster.scheduler_address]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "stack_surface.ome.tif" in result.output
    surface = tifffile.imread(tmp_path / "stack_surface.ome.tif")
    assert surface.shape == (2, 2, 256, 256)  # frames, (surface, σ), rows, columns
    frames = read_frames(stack)
    cal = Calibration.load(cal_path)
    mapper = PSFMapper(load_model(cal.model_name), stride_px=cal.stride_px or 64)
    write_depth_outputs(stack, [mapper(f) for f in frames], cal, cal_path, tmp_path / "reference", frames=frames,
                        surface="plane")
    np.testing.assert_allclose(surface, tifffile.imread(tmp_path / "reference" / "stack_surface.ome.tif"), atol=1e-4)
    summary = json.loads((tmp_path / "stack_depth.json").read_text())
    assert summary["surface_map"] == str(tmp_path / "stack_surface.ome.tif")
    assert summary["batch_settings"]["surface"] == "plane" and "surface" in summary["frames"][1]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "already done with these settings" in result.output
    # Another prior is another output, beside the first; a folder run does not take outputs for inputs.
    result = CliRunner().invoke(app, [*args[:-3], "smooth", *args[-2:]])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "stack_surface-1.ome.tif").is_file() and (tmp_path / "stack_depth-1.json").is_file()
    assert [p.name for p in expand_inputs([tmp_path])[0]] == ["stack.ome.tif"]

"""DeconvolutionQueue: background worker processes, journal, failures, crash and restart."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livepsf.acquisition.jobs import DeconvolutionQueue, run_job
from livepsf.acquisition.recorder import Recorder
from livepsf.deconv import grid_centers
from livepsf.mapping import PSFMap

pytestmark = pytest.mark.timeout(240)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _recording(folder: Path, name: str = "rec.ome.tif", frames: int = 2, size: int = 96) -> Path:
    """A recording whose frames carry PSF maps (G-1), so no network is needed to deconvolve it."""
    rng = np.random.default_rng(0)
    centres = grid_centers(size, 2)
    pmap = PSFMap(params={"variance": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)},
                  invalid=np.zeros((2, 2), np.float32), centers_y=centres, centers_x=centres,
                  window_px=size // 2, stride_px=size // 2, frame_shape=(size, size), psf_model="G-1")
    with Recorder(folder / name, pixel_size_um=0.65) as rec:
        for _ in range(frames):
            rec.append(rng.poisson(100.0, (size, size)).astype(np.uint16), exposure_ms=10.0, psfmap=pmap)
    return rec.path


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_run_job_in_process_writes_output_with_parameters(tmp_path: Path) -> None:
    source = _recording(tmp_path, frames=2, size=64)
    out = run_job({"id": "x", "input": str(source), "iterations": 3, "tv_weight": 0.01, "out_dir": None,
                   "model": "default", "stride_px": 64, "output": None})
    assert out.name == "rec_deconv.ome.tif"
    with tifffile.TiffFile(out) as tif:
        assert tif.series[0].shape == (2, 64, 64) and tif.series[0].dtype == np.float32
        assert 'PhysicalSizeX="0.65"' in tif.ome_metadata
        desc = tif.ome_metadata.split("<Description>")[1].split("</Description>")[0]
    params = json.loads(desc.replace("&quot;", '"'))
    assert params["iterations"] == 3 and params["psf_source"] == "recorded PSF maps"
    assert params["frames"][0]["psf_model"] == "G-1"


def test_run_job_maps_with_dihedral_averaging_when_asked_and_records_it(tmp_path: Path, tiny_model) -> None:
    from livepsf.acquisition.jobs import deconvolve_frame, output_settings
    from livepsf.mapping import PSFMapper

    frame = np.random.default_rng(3).integers(0, 4000, (128, 128)).astype(np.uint16)
    source = tmp_path / "plain.tif"
    tifffile.imwrite(source, frame)
    spec = {"id": "x", "input": str(source), "iterations": 2, "tv_weight": 0.01, "out_dir": None,
            "model": str(tiny_model.path), "stride_px": 64, "output": None}
    averaged = run_job({**spec, "dihedral_average": True})
    want, _ = deconvolve_frame(frame, PSFMapper(tiny_model, stride_px=64, dihedral_average=True)(frame),
                               iterations=2, tv_weight=0.01)
    np.testing.assert_allclose(tifffile.imread(averaged), want, rtol=1e-5, atol=1e-3)
    assert output_settings(averaged)["dihedral_average"] is True
    plain = run_job(spec)  # older specs have no such key: plain maps, a new output
    assert plain.name == "plain_deconv-1.ome.tif" and "dihedral_average" not in output_settings(plain)


def test_queue_runs_jobs_records_failures_and_reports_progress(tmp_path: Path) -> None:
    good = _recording(tmp_path)
    good_hash = _sha(good)
    corrupt = tmp_path / "broken.tif"
    corrupt.write_bytes(b"II*\x00 not really a tiff")
    journal = tmp_path / "journal.jsonl"
    progress: list[tuple[str, int, int]] = []
    finished, failed = [], []
    with DeconvolutionQueue(journal, torch_threads=1) as queue:
        queue.progress.connect(lambda j, d, t: progress.append((j, d, t)))
        queue.finished.connect(finished.append)
        queue.failed.connect(failed.append)
        bad_id = queue.submit(corrupt, iterations=2)
        good_id = queue.submit(good, iterations=4, tv_weight=0.01)
        assert queue.wait(timeout=200)
        bad, ok = queue.job(bad_id), queue.job(good_id)
    assert bad.state == "failed" and "broken.tif" in bad.error
    assert ok.state == "done" and Path(ok.output).name == "rec_deconv.ome.tif"
    assert tifffile.imread(ok.output).shape == (2, 96, 96)
    assert [j.id for j in failed] == [bad_id] and [j.id for j in finished] == [good_id]
    assert progress[-1] == (good_id, 8, 8)  # 2 frames x 4 iterations
    assert _sha(good) == good_hash
    assert not list(tmp_path.glob("broken_deconv*"))  # no empty reservation left behind
    events = [json.loads(line)["event"] for line in journal.read_text().splitlines()]
    assert events.count("done") == 1 and events.count("failed") == 1


def test_killed_worker_is_replaced_and_the_job_completes(tmp_path: Path) -> None:
    source = _recording(tmp_path, frames=1, size=128)
    source_hash = _sha(source)
    started = threading.Event()
    with DeconvolutionQueue(tmp_path / "journal.jsonl", torch_threads=1) as queue:
        queue.progress.connect(lambda j, d, t: started.set())
        job_id = queue.submit(source, iterations=150, tv_weight=0.01)
        assert started.wait(120)
        os.kill(queue.worker_pids[0], signal.SIGKILL)
        assert queue.wait(timeout=200)
        job = queue.job(job_id)
    assert job.state == "done" and job.attempts == 2
    assert "crashed" in job.history
    assert tifffile.imread(job.output).shape == (128, 128)
    assert _sha(source) == source_hash
    assert not list(tmp_path.glob(".*partial"))


def test_unfinished_job_resumes_after_restart(tmp_path: Path) -> None:
    source = _recording(tmp_path, frames=1, size=128)
    source_hash = _sha(source)
    journal = tmp_path / "journal.jsonl"
    started = threading.Event()
    queue = DeconvolutionQueue(journal, torch_threads=1)
    queue.progress.connect(lambda j, d, t: started.set())
    job_id = queue.submit(source, iterations=150, tv_weight=0.01)
    assert started.wait(120)
    queue.close(timeout=1.0)  # the program stops mid-job: the worker is killed, the job stays unfinished
    assert queue.job(job_id).state == "running"

    with DeconvolutionQueue(journal, torch_threads=1) as restarted:
        assert restarted.resumed == [job_id]
        assert restarted.wait(timeout=200)
        job = restarted.job(job_id)
    assert job.state == "done"
    outputs = sorted(p.name for p in tmp_path.glob("rec_deconv*"))
    assert outputs == ["rec_deconv.ome.tif"]  # the reserved name is reused, no duplicate
    assert tifffile.imread(job.output).shape == (128, 128)
    assert _sha(source) == source_hash


def test_cli_deconvolve_writes_beside_input_and_reports_bad_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from livepsf.cli import app, main

    source = _recording(tmp_path, frames=1, size=64)
    source_hash = _sha(source)
    runner = CliRunner()
    args = ["deconvolve", str(source), str(tmp_path / "missing.tif"), "--iterations", "3", "--tv", "0.01",
            "--journal", str(tmp_path / "journal.jsonl")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output  # one input was bad; the good one is still done
    assert "missing.tif: no such file" in result.output
    assert (tmp_path / "rec_deconv.ome.tif").is_file()
    result = runner.invoke(app, ["deconvolve", str(source), "--iterations", "2", "--journal",
                                 str(tmp_path / "journal.jsonl")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rec_deconv-1.ome.tif").is_file()  # never overwrites the first output
    assert _sha(source) == source_hash
    with pytest.raises(SystemExit) as exit_info:  # through main(): bad options are input errors
        main(["deconvolve", str(source), "--tv", "0.5"])
    assert exit_info.value.code == 2


def test_cli_deconvolve_dihedral_average_reaches_the_worker(tmp_path: Path, tiny_model) -> None:
    from livepsf.acquisition.jobs import output_settings
    from livepsf.cli import main

    source = tmp_path / "plain.tif"
    tifffile.imwrite(source, np.random.default_rng(6).integers(0, 4000, (128, 128)).astype(np.uint16))
    with pytest.raises(SystemExit) as exit_info:
        main(["deconvolve", str(source), "--model", str(tiny_model.path), "--iterations", "1", "--dihedral-average",
              "--threads", "1", "--journal", str(tmp_path / "journal.jsonl")])
    assert exit_info.value.code in (0, None)
    assert output_settings(tmp_path / "plain_deconv.ome.tif")["dihedral_average"] is True


def test_rerun_with_the_same_settings_reuses_the_output_and_other_settings_do_not(tmp_path: Path) -> None:
    source = _recording(tmp_path, frames=1, size=64)
    journal = tmp_path / "journal.jsonl"
    with DeconvolutionQueue(journal, torch_threads=1) as queue:
        first = queue.submit(source, iterations=2)
        assert queue.wait(timeout=200)
    output = Path(queue.job(first).output)
    stamp = output.stat().st_mtime_ns
    # A new journal (another user, a lost cache): the output itself records its settings.
    with DeconvolutionQueue(tmp_path / "other.jsonl", torch_threads=1) as queue:
        again = queue.submit(source, iterations=2)
        changed = queue.submit(source, iterations=3)
        assert queue.job(again).state == "done" and queue.job(again).reused
        assert queue.wait(timeout=200)
        assert queue.job(changed).state == "done" and not queue.job(changed).reused
    assert Path(queue.job(again).output) == output and output.stat().st_mtime_ns == stamp
    assert Path(queue.job(changed).output).name == "rec_deconv-1.ome.tif"
    assert sorted(p.name for p in tmp_path.glob("*deconv*")) == ["rec_deconv-1.ome.tif", "rec_deconv.ome.tif"]


def test_run_job_interrupted_mid_file_redoes_only_the_missing_frames(tmp_path: Path) -> None:
    source = _recording(tmp_path, frames=3, size=64)
    spec = {"id": "a", "input": str(source), "iterations": 3, "tv_weight": 0.01, "out_dir": None,
            "model": "default", "stride_px": 64, "output": None}
    reference = run_job({**spec, "out_dir": str(tmp_path / "reference")})

    class Stop(Exception):
        pass

    def stop_in_third_frame(done: int, total: int) -> None:
        if done > 2 * 3:
            raise Stop

    with pytest.raises(Stop):
        run_job(spec, progress=stop_in_third_frame)
    assert not list(tmp_path.glob("rec_deconv*"))  # no output yet, two finished frames kept aside
    steps: list[int] = []
    out = run_job(spec, progress=lambda done, total: steps.append(done))
    assert steps[0] == 2 * 3 + 1 and steps[-1] == 9  # only the third frame was computed
    np.testing.assert_array_equal(tifffile.imread(out), tifffile.imread(reference))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the frame store is gone


def test_cli_batch_dies_with_its_parent_and_a_rerun_finishes_without_duplicates(tmp_path: Path) -> None:
    import subprocess
    import sys

    psutil = pytest.importorskip("psutil")
    sources = [_recording(tmp_path, name=f"f{i}.ome.tif", frames=1, size=128) for i in range(2)]
    journal = tmp_path / "journal.jsonl"
    args = ["deconvolve", *map(str, sources), "--iterations", "200", "--workers", "2", "--journal", str(journal)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-m", "livepsf", *args], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: journal.is_file() and journal.read_text().count('"started"') == 2, timeout=120)
        workers = [c for c in psutil.Process(parent.pid).children(recursive=True)
                   if "resource_tracker" not in " ".join(c.cmdline())]
        assert len(workers) >= 2
        time.sleep(0.5)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=60)  # a worker still importing torch exits after it
        assert not alive, f"workers outlived their parent: {alive}"
    finally:
        if parent.poll() is None:
            parent.kill()

    def sizes() -> dict[str, int]:
        return {p.name: p.stat().st_size for p in tmp_path.glob("f*_deconv*.ome.tif")}

    at_kill = sizes()
    time.sleep(1.5)
    assert sizes() == at_kill  # nobody goes on writing after the parent is gone

    from typer.testing import CliRunner

    from livepsf.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.glob("f*_deconv*"))
    assert names == ["f0_deconv.ome.tif", "f1_deconv.ome.tif"]
    assert all(tifffile.imread(tmp_path / n).shape == (128, 128) for n in names)

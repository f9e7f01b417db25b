"""LiveLoop: newest-frame-wins mapping on a pymmcore-plus core, its statistics and its failure modes."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch
from pymmcore_plus.experimental.unicore import CameraDevice, SimpleCameraDevice, UniMMCore

from livepsf.acquisition.loop import LiveLoop, LiveResult
from livepsf.mapping import PSFMapper

pytestmark = pytest.mark.timeout(60)


class PatternCamera(SimpleCameraDevice):
    """A textured test camera; raises after ``fail_at`` frames when set (a camera error mid-stream)."""

    def __init__(self, shape: tuple[int, int] = (256, 256), exposure_ms: float = 5.0,
                 fail_at: int | None = None) -> None:
        super().__init__()
        self._shape = shape
        self._exposure = exposure_ms
        self.fail_at = fail_at
        self.count = 0
        rng = np.random.default_rng(0)
        self._base = (1000 + 800 * rng.random(shape)).astype(np.uint16)

    def sensor_shape(self) -> tuple[int, int]:
        return self._shape

    def dtype(self) -> type:
        return np.uint16

    def get_exposure(self) -> float:
        return self._exposure

    def set_exposure(self, exposure: float) -> None:
        self._exposure = exposure

    def snap(self, buffer: np.ndarray) -> dict:
        time.sleep(self._exposure / 1000)
        if self.fail_at is not None and self.count >= self.fail_at:
            self.fail_at = None  # fails once; a restart works again
            raise RuntimeError("sensor overheated")
        buffer[:] = self._base
        buffer[0, 0] = self.count % 60000
        self.count += 1
        return {}


class ResizingCamera(CameraDevice):
    """A camera whose frames change size when ``resize`` is set (ROI/binning changed in the device)."""

    def __init__(self) -> None:
        super().__init__()
        self.resize = threading.Event()
        self._big = False

    def get_exposure(self) -> float:
        return 5.0

    def set_exposure(self, exposure: float) -> None:
        pass

    def shape(self) -> tuple[int, int]:
        return (192, 256) if self._big else (256, 256)

    def dtype(self) -> type:
        return np.uint16

    def start_sequence(self, n, get_buffer):
        rng = np.random.default_rng(1)
        i = 0
        while n is None or i < n:
            time.sleep(0.005)
            self._big = self.resize.is_set()
            buf = get_buffer(self.shape(), np.uint16)
            buf[:] = rng.integers(500, 3000, size=buf.shape, dtype=np.uint16)
            yield {}
            i += 1


def make_core(camera: CameraDevice) -> UniMMCore:
    core = UniMMCore()
    core.loadPyDevice("Camera", camera)
    core.initializeDevice("Camera")
    core.setCameraDevice("Camera")
    return core


def collect(loop: LiveLoop, n: int, timeout_s: float = 20.0) -> list[LiveResult]:
    results: list[LiveResult] = []
    done = threading.Event()

    def on_result(result: LiveResult) -> None:
        results.append(result)
        if len(results) >= n:
            done.set()

    loop.resultReady.connect(on_result)
    loop.stopped.connect(lambda reason: done.set())
    loop.start()
    done.wait(timeout_s)
    return results


@pytest.fixture()
def mapper(tiny_model):
    return PSFMapper(tiny_model, stride_px=64)


def test_results_arrive_with_maps_and_stats(mapper):
    core = make_core(PatternCamera())
    loop = LiveLoop(core, mapper)
    results = collect(loop, 8)
    loop.stop()
    assert len(results) >= 8
    r = results[-1]
    assert r.frame.shape == (256, 256) and r.frame.dtype == np.uint16
    assert r.pmap.frame_shape == (256, 256) and r.pmap.grid_shape == (3, 3)
    assert r.depth_um is None
    assert r.t_read <= r.t_mapped <= r.t_published and r.latency_ms > 0
    numbers = [x.image_number for x in results]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    stats = loop.stats(window_s=None)
    assert stats.maps >= 8 and stats.frames >= stats.maps
    assert stats.maps_per_s > 0 and stats.camera_fps > 0
    assert 0 < stats.latency_ms_median <= stats.latency_ms_p95
    assert stats.errors == 0 and not stats.running
    assert "maps" in stats.line()
    assert stats.torch_threads in (torch.get_num_threads(), 1)  # measured choice (ThreadTuner)


def test_a_fixed_torch_thread_count_is_used_in_the_mapping_thread(mapper):
    seen = []

    def counting(frame):
        seen.append(torch.get_num_threads())
        return mapper(frame)

    loop = LiveLoop(make_core(PatternCamera()), counting, torch_threads=1)
    collect(loop, 4)
    loop.stop()
    assert seen and set(seen) == {1}
    assert loop.stats().torch_threads == 1 and "1 torch thread" in loop.stats().line()


def test_slow_mapper_skips_frames_instead_of_queueing(mapper):
    delay_s = 0.06

    def slow(frame):
        time.sleep(delay_s)
        return mapper(frame)

    core = make_core(PatternCamera(exposure_ms=4.0))
    loop = LiveLoop(core, slow)
    results = collect(loop, 6)
    loop.stop()
    stats = loop.stats(window_s=None)
    # ~15 frames arrive per map: most are passed over, and every one is accounted for.
    assert stats.skipped > 2 * stats.maps
    assert stats.skipped == sum(r.skipped for r in results[1:]) + results[0].skipped
    assert stats.frames == stats.skipped + stats.maps
    # Latest frame wins: a result is never older than one map behind the camera.
    assert max(r.latency_ms for r in results) < 1e3 * delay_s + 150
    assert all(b.image_number - a.image_number == b.skipped + 1 for a, b in zip(results, results[1:]))


def test_stop_is_prompt_and_leaves_no_thread(mapper):
    def slowish(frame):
        time.sleep(0.2)
        return mapper(frame)

    core = make_core(PatternCamera())
    loop = LiveLoop(core, slowish)
    reasons: list[str] = []
    loop.stopped.connect(reasons.append)
    collect(loop, 1)
    t0 = time.perf_counter()
    loop.stop()
    assert time.perf_counter() - t0 < 1.0
    assert not loop.is_running
    assert not core.isSequenceRunning()  # the loop started the acquisition, so it stopped it
    assert reasons == ["stopped"]
    assert not [t for t in threading.enumerate() if t.name == "livepsf-live-loop"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_camera_error_is_reported_and_recovered(mapper):
    core = make_core(PatternCamera(fail_at=5))
    loop = LiveLoop(core, mapper, restart_attempts=1)
    errors: list[str] = []
    loop.errorOccurred.connect(errors.append)
    results = collect(loop, 12)
    loop.stop()
    assert any("sensor overheated" in e and "restarting" in e for e in errors)
    assert len(results) >= 12  # frames flowed again after the restart
    assert loop.stats().errors >= 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_camera_error_without_restart_stops_cleanly(mapper):
    core = make_core(PatternCamera(fail_at=3))
    loop = LiveLoop(core, mapper, restart_attempts=0)
    reasons: list[str] = []
    loop.stopped.connect(reasons.append)
    collect(loop, 1000, timeout_s=10)
    assert loop.wait(2.0)
    assert len(reasons) == 1 and "camera stopped" in reasons[0] and "sensor overheated" in reasons[0]
    assert loop.stats().last_error == reasons[0]


def test_acquisition_stopped_elsewhere_ends_the_loop(mapper):
    core = make_core(PatternCamera())
    loop = LiveLoop(core, mapper, restart_grace_s=0.3)
    reasons: list[str] = []
    loop.stopped.connect(reasons.append)
    collect(loop, 2)
    core.stopSequenceAcquisition()  # e.g. another widget's "stop live", not followed by a restart
    assert loop.wait(2.0)
    assert reasons and "outside the live loop" in reasons[0]


def test_roi_change_with_a_restart_elsewhere_is_followed(mapper):
    core = make_core(PatternCamera())
    loop = LiveLoop(core, mapper)
    shapes: list[tuple] = []
    reasons: list[str] = []
    loop.frameShapeChanged.connect(shapes.append)
    loop.stopped.connect(reasons.append)
    collect(loop, 2)
    # What Micro-Manager's live mode does around an ROI change: stop, set the ROI, start again.
    core.stopSequenceAcquisition()
    core.setROI(0, 0, 192, 128)
    core.startContinuousSequenceAcquisition(0)
    deadline = time.monotonic() + 10
    while (loop.latest().frame.shape != (128, 192)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop.is_running and shapes == [(128, 192)], reasons
    assert loop.latest().pmap.frame_shape == (128, 192) and loop.latest().pmap.grid_shape == (1, 2)
    loop.stop()
    assert core.isSequenceRunning()  # restarted by somebody else: theirs to stop
    core.stopSequenceAcquisition()


def test_mapper_exceptions_are_reported_then_stop_the_loop(mapper):
    calls = {"n": 0}

    def flaky(frame):
        if not frame.any():  # the loop's warm-up on a blank frame
            return mapper(frame)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory (simulated)")
        if calls["n"] > 6:
            raise RuntimeError("model broken")
        return mapper(frame)

    core = make_core(PatternCamera())
    loop = LiveLoop(core, flaky, max_consecutive_errors=3)
    errors: list[str] = []
    reasons: list[str] = []
    loop.errorOccurred.connect(errors.append)
    loop.stopped.connect(reasons.append)
    results = collect(loop, 1000, timeout_s=10)
    assert loop.wait(2.0)
    assert len(results) == 5  # calls 1, 3, 4, 5, 6 succeeded: the first failure did not stop the loop
    assert any("out of memory" in e for e in errors)
    assert "3 failed frames in a row" in reasons[0] and "model broken" in reasons[0]
    assert not core.isSequenceRunning()


def test_new_frame_size_is_reported_and_mapped(mapper):
    camera = ResizingCamera()
    core = make_core(camera)
    loop = LiveLoop(core, mapper)
    shapes: list[tuple] = []
    loop.frameShapeChanged.connect(shapes.append)
    loop.resultReady.connect(lambda r: camera.resize.set() if r.image_number >= 3 else None)
    results = collect(loop, 10)
    loop.stop()
    assert shapes == [(192, 256)]
    assert results[0].pmap.frame_shape == (256, 256)
    assert results[-1].pmap.frame_shape == (192, 256) and results[-1].pmap.grid_shape == (2, 3)


def test_depth_model_and_frame_sinks(mapper):
    class HalfFocus:  # any object with depth_um(pmap) is a depth model
        def depth_um(self, pmap):
            return pmap.params["focus"] * 0.5

    seen: list[int] = []
    core = make_core(PatternCamera())
    loop = LiveLoop(core, mapper, calibration=HalfFocus())
    loop.add_frame_sink(lambda frame, meta: seen.append(int(meta["ImageNumber"])))
    results = collect(loop, 4)
    loop.stop()
    np.testing.assert_allclose(results[-1].depth_um, results[-1].pmap.params["focus"] * 0.5)
    assert results[-1].depth_sigma_um is None  # a depth model without σ: none is made up
    # The sink saw every frame the loop took, mapped or skipped, in order.
    assert seen == list(range(len(seen))) and len(seen) >= results[-1].image_number + 1


def test_depth_results_carry_sigma_and_the_fused_surface(mapper):
    """Each result has the windows' own depth, its σ, and one surface fused across them (the live prior)."""
    from types import SimpleNamespace

    from livepsf.depth import DepthSurface

    class TiltedWithDoubts:  # a calibration whose windows see a tilted plane; some read nothing or mirrored
        max_texture_coherence = None

        def depth_um(self, pmap):
            return self.depth_estimate(pmap).depth_um

        def depth_estimate(self, pmap, frame=None):
            xx = np.broadcast_to(pmap.centers_x, pmap.grid_shape)
            depth = (0.07 * (xx - 255.5)).astype(np.float32)
            depth[1, ::2] *= -1  # mirrored: the astigmatism's sign was misread
            sigma = np.full(pmap.grid_shape, 0.5, np.float32)
            sigma[4, 1:5] = np.inf  # one-directional texture: no information
            depth[4, 1:5] = 99.0
            return SimpleNamespace(depth_um=depth, sigma_um=sigma, reliable=np.isfinite(sigma))  # DepthEstimate

    core = make_core(PatternCamera(shape=(512, 512)))
    loop = LiveLoop(core, mapper, calibration=TiltedWithDoubts())
    results = collect(loop, 2)
    loop.stop()
    r = results[-1]
    assert np.isinf(r.depth_sigma_um[4, 1:5]).all() and np.isfinite(r.depth_sigma_um[0]).all()
    assert isinstance(r.depth_surface, DepthSurface) and r.depth_surface.prior == "poly2"  # the live prior
    truth = 0.07 * (np.broadcast_to(r.pmap.centers_x, r.pmap.grid_shape) - 255.5)
    assert np.abs(r.depth_surface.depth_um - truth).max() < 0.2  # the doubtful windows did not pull it
    assert (r.depth_surface.weights[1, ::2][np.abs(truth[1, ::2]) > 3] == 0).all()


def test_a_new_mapper_and_its_calibration_change_together(mapper):
    """A network switch brings its own calibration: no frame is mapped by one and converted by the other's."""

    class Tagged:  # the mapper of network ``tag``
        def __init__(self, tag):
            self.tag = tag

        def __call__(self, frame):
            return dataclasses.replace(mapper(frame), model_name=self.tag)

    class CalibrationFor:  # like Calibration.check_model: refuses maps of another network
        def __init__(self, tag):
            self.tag = tag

        def depth_um(self, pmap):
            if pmap.model_name != self.tag:
                raise ValueError(f"calibration of {self.tag} given a map of {pmap.model_name}")
            return np.zeros(pmap.grid_shape, np.float32)

    core = make_core(PatternCamera(exposure_ms=1.0))
    loop = LiveLoop(core, Tagged("a"), calibration=CalibrationFor("a"))
    results = collect(loop, 3)
    for i in range(300):
        tag = "ab"[i % 2]
        loop.set_mapper(Tagged(tag), calibration=CalibrationFor(tag))
        time.sleep(0.002)
    loop.stop()
    assert results and loop.stats(window_s=None).errors == 0
    loop.set_mapper(Tagged("c"))  # without ``calibration``: the current one is kept
    assert loop.mapper.tag == "c" and loop.calibration.tag == "b"


@pytest.mark.slow
def test_on_the_simulator_follows_the_focus_drive(mapper):
    sim = pytest.importorskip("livepsf.sim")
    core = sim.create_core(shape=(256, 256))
    loop = LiveLoop(core, mapper)
    moved = threading.Event()
    loop.resultReady.connect(lambda r: moved.set() if r.stage_z_um == pytest.approx(12.5) else None)
    results = collect(loop, 3)
    core.setPosition(12.5)  # stagePositionChanged reaches the loop
    assert moved.wait(5.0)
    loop.stop()
    assert results[0].frame.shape == (256, 256) and results[0].stage_z_um == pytest.approx(0.0)
    assert not core.isSequenceRunning()


def test_result_recorder_drops_instead_of_queueing_when_the_disk_is_slow(mapper):
    from livepsf.acquisition.loop import ResultRecorder

    class SlowDisk:
        def __init__(self):
            self.frames = []
            self.closed = False

        def append(self, frame, *, exposure_ms=None, z_um=None, psfmap=None, extra=None):
            time.sleep(0.02)
            self.frames.append((extra["image_number"], psfmap is not None, exposure_ms))

        def close(self):
            self.closed = True
            return "done"

    core = make_core(PatternCamera())
    loop = LiveLoop(core, mapper)
    results = collect(loop, 1)
    loop.stop()
    disk = SlowDisk()
    rec = ResultRecorder(disk, exposure_ms=5.0, max_queue=4)
    for i in range(30):  # a burst much faster than the disk
        rec.submit(dataclasses.replace(results[0], image_number=i))
    assert rec.close() == "done" and disk.closed
    assert rec.written + rec.dropped == 30 and rec.dropped > 10
    assert disk.frames[0] == (0, True, 5.0)
    assert [n for n, _, _ in disk.frames] == sorted(n for n, _, _ in disk.frames)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_core_events_queued_for_a_stopped_loop_are_harmless(qapp, mapper):
    """With a QApplication the core's events are Qt signals, queued to the main thread when the camera
    thread emits them. Calls still queued when a stopped loop has been collected must not reach freed
    memory (they did: a segfault in the next test that processed Qt events)."""
    import gc

    for fail_at in (None, 5, None):  # a plain run, a camera error with a restart, a plain run
        core = make_core(PatternCamera() if fail_at is None else PatternCamera(fail_at=fail_at))
        loop = LiveLoop(core, mapper, restart_attempts=1)
        assert len(collect(loop, 6)) >= 6
        loop.stop()
        core.setExposure(core.getExposure())  # more events from this thread for the stopped loop
        del loop
        gc.collect()
        for _ in range(10):  # deliver whatever the camera thread queued
            qapp.processEvents()
            time.sleep(0.01)

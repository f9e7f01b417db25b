"""Simulated microscope speed (issue 6): sequence frame rate with a still stage, re-render after a move.

Run: ``.venv/bin/python -m pytest benchmarks/bench_sim.py --benchmark-only``.

- ``test_continuous_fps_1024``: frames per second of ``startContinuousSequenceAcquisition`` at 1024²
  with a still stage, 1 ms exposure (so the camera's own pacing does not cap it) — target >= 30 fps.
  fps = FRAMES / median time from start to the FRAMES-th frame in the buffer.
- ``test_rerender_after_stage_move_1024`` (and ``_while_streaming_1024``, camera running at 10 ms): seconds
  from ``setPosition`` to the new focal plane's image being ready (printed grid, 6° tilt, lens in; the
  level images of the positions visited are cached, as when focusing back and forth) — target <= 0.5 s.
- ``test_rerender_into_a_new_range_1024``: a 30 µm move into never-visited defocus (new levels to blur).
- ``test_first_render_cold_1024``: ``create_core`` at 1024² (sample texture, PSFs, every level).
"""

from __future__ import annotations

import itertools
import time

import pytest

from livepsf.sim import create_core, get_scene

FRAMES = 60


@pytest.fixture(scope="module")
def core():
    return create_core(sample="printed-grid", tilt_deg=6.0, lens=True, shape=(1024, 1024), exposure_ms=1.0)


def _acquire(core, n: int) -> int:
    core.startContinuousSequenceAcquisition(0)
    try:
        deadline = time.perf_counter() + 60
        while core.getRemainingImageCount() < n and time.perf_counter() < deadline:
            time.sleep(0.001)
        return core.getRemainingImageCount()
    finally:
        core.stopSequenceAcquisition()
        core.clearCircularBuffer()


def test_continuous_fps_1024(benchmark, core) -> None:
    _acquire(core, 5)  # warm: exposure model, buffers
    got = benchmark.pedantic(_acquire, args=(core, FRAMES), rounds=3, iterations=1)
    assert got >= FRAMES
    benchmark.extra_info["fps"] = FRAMES / benchmark.stats.stats.median


def test_rerender_after_stage_move_1024(benchmark, core) -> None:
    scene = get_scene(core)
    positions = itertools.cycle([3.0, -4.0, 5.0, -2.0, 1.0, 0.0])

    def move_and_wait() -> None:
        core.setPosition(next(positions))
        scene.current()  # the render of the new focal plane

    for _ in range(6):  # visit every position once: the level images in range are cached, as when focusing
        move_and_wait()
    benchmark.pedantic(move_and_wait, rounds=6, iterations=1)
    benchmark.extra_info["seconds"] = benchmark.stats.stats.median


def test_rerender_into_a_new_range_1024(benchmark, core) -> None:
    """A stage move into a defocus range never visited: the new level images must be blurred first."""
    scene = get_scene(core)
    positions = itertools.count(60.0, 30.0)  # 30 µm steps: ~7 new levels each

    def move_and_wait() -> None:
        core.setPosition(next(positions))
        scene.current()

    benchmark.pedantic(move_and_wait, rounds=3, iterations=1)
    core.setPosition(0.0)
    scene.current()


def test_first_render_cold_1024(benchmark) -> None:
    """Cold start of a new core: sample texture, level PSFs and the first render (for the demo's start-up)."""
    benchmark.pedantic(lambda: create_core(sample="printed-grid", tilt_deg=6.0, shape=(1024, 1024)), rounds=1, iterations=1)


def test_rerender_while_streaming_1024(benchmark, core) -> None:
    """As above, with the camera streaming at the default 10 ms exposure (the live demo's situation)."""
    scene = get_scene(core)
    positions = itertools.cycle([2.0, -3.0, 4.0, -1.0, 0.0])
    core.setExposure(10.0)
    core.startContinuousSequenceAcquisition(0)
    try:
        def move_and_wait() -> None:
            core.setPosition(next(positions))
            scene.current()

        for _ in range(5):
            move_and_wait()
        benchmark.pedantic(move_and_wait, rounds=5, iterations=1)
    finally:
        core.stopSequenceAcquisition()
        core.clearCircularBuffer()
        core.setExposure(1.0)
    benchmark.extra_info["seconds"] = benchmark.stats.stats.median

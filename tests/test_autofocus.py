"""Autofocus, focus lock and the MDA autofocus step, on the simulated microscope (issue 15)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import useq

import livepsf
from livepsf.acquisition.autofocus import autofocus, lens_split_um, search_focus
from livepsf.acquisition.focus_lock import FocusLock
from livepsf.acquisition.mda_autofocus import METADATA_KEY, LivePSFAutofocusEngine
from livepsf.sim import LENS_ASTIG_0_WAVES, SimClock, create_core, ground_truth

CALIBRATION = Path(__file__).resolve().parents[1] / "calibration" / "sim-default.json"
SHAPE = (512, 512)
# One torch thread: the simulator renders in its own thread, and the machine has two cores.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def mapper() -> livepsf.PSFMapper:
    return livepsf.PSFMapper(livepsf.load_model("default"), stride_px=64)


@pytest.fixture(scope="module")
def calibration(mapper) -> livepsf.Calibration:
    return livepsf.Calibration.load(CALIBRATION, mapper.model)


def _centre_defocus_um(core) -> float:
    """True defocus of the frame centre after one more snap (the simulator's ground truth)."""
    core.snapImage()
    d = ground_truth(core).defocus_um
    h, w = d.shape
    return float(np.median(d[h // 2 - 32 : h // 2 + 32, w // 2 - 32 : w // 2 + 32]))


def test_one_frame_autofocus_with_the_lens_converges_from_far_and_near(mapper, calibration) -> None:
    core = create_core(sample="cells", tilt_deg=0.0, lens=True, shape=SHAPE, seed=5)
    for start_um in (-30.0, -6.0, 18.0, 38.0):
        core.setZPosition(start_um)
        core.waitForSystem()
        result = autofocus(core, mapper=mapper, calibration=calibration, lens_astig_waves=LENS_ASTIG_0_WAVES)
        error = _centre_defocus_um(core)
        assert abs(error) < 1.5, (start_um, result.summary())
        assert result.method == "one-frame" and not result.fallback
        assert result.frames <= 3 and result.moves <= 3
        assert result.z_um == pytest.approx(core.getZPosition())
        assert result.correction_um == pytest.approx(result.z_um - start_um)
        assert np.isfinite(result.offset_um) and 0 < result.sigma_um < 5
        assert len(result.steps) == result.frames


def test_a_region_of_a_tilted_sample_is_focused_at_its_own_height(mapper, calibration) -> None:
    core = create_core(sample="cells", tilt_deg=4.0, lens=True, shape=SHAPE, seed=2)
    right = (320, 0, 192, 512)  # columns 320-511: the surface there is 6-10 µm above the centre's
    result = autofocus(core, mapper=mapper, calibration=calibration, roi=right,
                       lens_astig_waves=LENS_ASTIG_0_WAVES)
    core.snapImage()
    defocus = ground_truth(core).defocus_um
    assert abs(float(np.median(defocus[:, 320:]))) < 2.0, result.summary()
    assert result.z_um > 5.0


def test_without_lens_the_side_of_focus_comes_from_a_pair_of_frames(mapper) -> None:
    core = create_core(sample="cells", tilt_deg=0.0, lens=False, shape=SHAPE, seed=5)
    for start_um in (-20.0, 12.0):
        core.setZPosition(start_um)
        core.waitForSystem()
        result = autofocus(core, mapper=mapper)  # no calibration: distance only, side from two frames
        error = _centre_defocus_um(core)
        assert result.method == "frame-pair" and result.frames <= 4
        # The side was right: the focus drive went towards focus and ended in focus as the simulator's
        # ground truth defines it (within half a depth of field, 3.06 µm here: `GroundTruth.in_focus_mask`).
        assert abs(error) <= 0.5 * mapper.model.optics.depth_of_field_um, (start_um, result.summary())
        assert np.sign(result.correction_um) == -np.sign(start_um)


def test_a_blank_field_falls_back_to_the_search_and_says_nothing_was_found(mapper, calibration) -> None:
    core = create_core(sample="cells", tilt_deg=0.0, lens=True, shape=(256, 256), seed=5, z_um=10.0)
    core.setShutterOpen(False)  # dark frames: offset and read noise only
    result = autofocus(core, mapper=mapper, calibration=calibration, search_range_um=20.0)
    assert result.fallback and result.method == "search" and not result.converged
    assert "uncertain" in result.message and "no sharpness peak" in result.message
    assert np.isnan(result.offset_um)
    assert core.getZPosition() == pytest.approx(10.0)  # back where it started


def test_classical_search_finds_focus_without_the_network() -> None:
    core = create_core(sample="filaments", tilt_deg=0.0, lens=False, shape=(256, 256), seed=2, z_um=-17.0)
    result = search_focus(core, range_um=30.0, coarse_steps=7)
    assert result.converged and result.frames == 7 + 4
    assert abs(_centre_defocus_um(core)) < 1.5, result.summary()


def test_autofocus_refuses_what_it_cannot_do(mapper, calibration) -> None:
    core = create_core(sample="cells", tilt_deg=0.0, shape=(256, 256))
    with pytest.raises(livepsf.InputError, match="roi"):
        autofocus(core, mapper=mapper, calibration=calibration, roi=(200, 200, 128, 128))
    with pytest.raises(livepsf.InputError, match="calibration"):
        autofocus(core, mapper=mapper, lens=True)
    core.startContinuousSequenceAcquisition(0)
    try:
        with pytest.raises(livepsf.InputError, match="live"):
            autofocus(core, mapper=mapper, calibration=calibration)
    finally:
        core.stopSequenceAcquisition()
    # The lens's line foci: ±A/√2 waves of defocus, 9.0 µm for the simulator's lens at 10×/0.3.
    assert lens_split_um(LENS_ASTIG_0_WAVES, livepsf.Optics()) == pytest.approx(9.0, abs=0.1)


def test_focus_lock_holds_a_drifting_sample_for_ten_minutes(calibration) -> None:
    clock = SimClock()
    core = create_core(sample="cells", tilt_deg=0.0, lens=True, shape=(256, 256), seed=3,
                       drift_um_per_min=2.0, clock=clock)
    corrections = []
    lock = FocusLock(core, calibration=calibration, tolerance_um=0.5, clock=clock,
                     on_correction=corrections.append)
    lock.engage()
    worst = 0.0
    for _ in range(60):  # 10 minutes in 10 s steps: 20 µm of drift in all
        clock.advance(10.0)
        lock.step()
        worst = max(worst, abs(_centre_defocus_um(core)))
    assert worst < 1.0
    assert len(corrections) >= 10 and corrections == lock.corrections
    assert all(abs(c.offset_um) > 0.5 and c.source == "anisotropy" for c in corrections)
    # The drift is upwards: the corrections raise the focus drive by about 20 µm in all.
    assert sum(c.z_after_um - c.z_before_um for c in corrections) == pytest.approx(20.0, abs=1.0)


def test_focus_lock_on_a_live_loop_undoes_a_focus_jump(mapper, calibration) -> None:
    from livepsf.acquisition.focus_lock import run_focus_lock
    from livepsf.acquisition.loop import LiveLoop

    core = create_core(sample="cells", tilt_deg=0.0, lens=True, shape=(256, 256), seed=4, exposure_ms=5.0)
    lock = FocusLock(core, calibration=calibration)
    lock.engage()
    core.setZPosition(2.5)  # a knock of 2.5 µm while live
    run = run_focus_lock(LiveLoop(core, mapper), lock, frames=30, tick_s=0.2)
    assert run.completed and run.results == 30
    assert 1 <= len(run.corrections) <= 3 and run.corrections[0].offset_um == pytest.approx(-2.5, abs=0.6)
    assert abs(_centre_defocus_um(core)) < 0.6


def test_headless_focus_lock_holds_the_focus_it_was_engaged_at(mapper, calibration) -> None:
    from livepsf.acquisition.focus_lock import run_headless_focus_lock

    core = create_core(sample="cells", tilt_deg=0.0, lens=True, shape=(256, 256), seed=4, exposure_ms=5.0)
    seen = []

    def knock(lock) -> None:  # engaged at Z 0; then a knock of 2.5 µm before the live maps start
        assert lock.status == "locked" and core.getZPosition() == pytest.approx(0.0)
        core.setZPosition(2.5)

    run = run_headless_focus_lock(core, mapper.model, frames=30, calibration=calibration, on_engaged=knock,
                                  on_correction=seen.append, tick_s=0.2)
    assert run.completed and run.results == 30 and list(run.corrections) == seen
    assert 1 <= len(seen) <= 3 and seen[0].offset_um == pytest.approx(-2.5, abs=0.6)
    assert abs(_centre_defocus_um(core)) < 0.6


def test_focus_lock_engages_on_live_results_and_then_holds(mapper, calibration) -> None:
    from livepsf.acquisition.focus_lock import run_focus_lock
    from livepsf.acquisition.loop import LiveLoop

    core = create_core(sample="cells", tilt_deg=0.0, lens=True, shape=(256, 256), seed=6, exposure_ms=5.0)
    lock = FocusLock(core, calibration=calibration)
    lock.engage_live()
    assert lock.status == "engaging"
    run = run_focus_lock(LiveLoop(core, mapper), lock, frames=20, tick_s=0.2)
    assert run.completed and lock.status == "locked" and not run.corrections
    assert core.getZPosition() == pytest.approx(0.0)  # the dither came back
    assert lock.slope_per_um > 0.02  # anisotropy along the calibration's lens direction grows with Z
    core.setZPosition(-2.0)
    run = run_focus_lock(LiveLoop(core, mapper), lock, frames=20, tick_s=0.2)
    assert run.corrections and abs(_centre_defocus_um(core)) < 0.6


def test_focus_lock_needs_the_lens() -> None:
    core = create_core(sample="cells", tilt_deg=0.0, lens=False, shape=(256, 256))
    with pytest.raises(livepsf.InputError, match="lens"):
        FocusLock(core).engage()
    idle = FocusLock(core)
    assert idle.status == "off" and idle.step() is None  # not engaged: looks, never moves
    with pytest.raises(livepsf.InputError, match="engage"):
        idle.estimate(np.zeros((256, 256)))


def test_mda_with_an_autofocus_plan_records_the_corrections_in_the_frame_metadata(mapper,
                                                                                   calibration) -> None:
    # A tilted slide: the second position (300 µm along x) lies tan(3°) · 300 = 15.7 µm higher.
    core = create_core(sample="cells", tilt_deg=3.0, lens=True, shape=SHAPE, seed=1)
    engine = LivePSFAutofocusEngine(core, mapper=mapper, calibration=calibration,
                                    autofocus_options={"lens_astig_waves": LENS_ASTIG_0_WAVES})
    core.register_mda_engine(engine)
    sequence = useq.MDASequence(stage_positions=[(0.0, 0.0, 4.0), (300.0, 0.0, 0.0)],
                                time_plan={"interval": 0, "loops": 2},
                                autofocus_plan=useq.AxesBasedAF(axes=("p",)))
    frames = []

    def on_frame(image, event, meta) -> None:
        frames.append((event.index.get("p"), meta.get(METADATA_KEY), _centre_defocus_um(core)))

    core.mda.events.frameReady.connect(on_frame)
    core.mda.run(sequence)
    assert len(frames) == 4 and len(engine.results) >= 2
    for p, record, defocus in frames:
        assert record is not None and record["method"] == "one-frame"
        assert abs(defocus) < 1.5
    by_position = {p: record for p, record, _ in frames}
    assert by_position[0]["z_correction_um"] == pytest.approx(-4.0, abs=1.5)
    assert by_position[1]["z_correction_um"] == pytest.approx(np.tan(np.radians(3.0)) * 300.0, abs=1.5)


def test_cli_autofocus_on_the_simulator_and_its_bad_input(capsys) -> None:
    import re

    from typer.testing import CliRunner

    from livepsf.cli import app, main

    runner = CliRunner()
    result = runner.invoke(app, ["autofocus", "--size", "512", "--start-um", "15", "--sample", "cells"])
    assert result.exit_code == 0, result.output
    assert "one-frame" in result.output and "3 frames" in result.output
    remaining = float(re.search(r"remaining defocus ([-+0-9.]+) µm", result.output).group(1))
    assert abs(remaining) < 2.0
    with pytest.raises(SystemExit) as info:
        main(["autofocus", "--roi", "1,2"])
    assert info.value.code == 2
    assert "--roi '1,2'" in capsys.readouterr().err

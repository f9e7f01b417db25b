"""The simulated microscope driven through the ordinary pymmcore-plus (CMMCorePlus) API."""

from __future__ import annotations

import time

import numpy as np
import pytest
import useq
from pymmcore_plus import CMMCorePlus

from livepsf.sim import LENS_ASTIG_0_WAVES, SimClock, create_core, get_scene, ground_truth

SHAPE = (192, 192)


def _gradient_energy(image: np.ndarray) -> tuple[float, float]:
    """Mean squared finite difference along y (rows) and x (columns), after 2x2 binning.

    Binning divides the shot noise's share by four while keeping the blur (several pixels) visible.
    """
    h, w = image.shape[0] // 2 * 2, image.shape[1] // 2 * 2
    f = image[:h, :w].astype(np.float64).reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return float(np.mean(np.diff(f, axis=0) ** 2)), float(np.mean(np.diff(f, axis=1) ** 2))


def _snap(core: CMMCorePlus) -> np.ndarray:
    core.snapImage()
    return core.getImage().copy()


def _wait_sequence(core: CMMCorePlus, timeout_s: float = 20.0) -> None:
    deadline = time.perf_counter() + timeout_s
    while core.isSequenceRunning() and time.perf_counter() < deadline:
        time.sleep(0.01)
    assert not core.isSequenceRunning(), "sequence acquisition did not finish"


@pytest.fixture(scope="module")
def core() -> CMMCorePlus:
    """A small printed-grid microscope, flat, lens in (tests restore what they change)."""
    return create_core(sample="printed-grid", tilt_deg=0.0, lens=True, shape=SHAPE, exposure_ms=10.0)


def test_it_is_a_cmmcoreplus_with_the_documented_devices(core: CMMCorePlus) -> None:
    assert isinstance(core, CMMCorePlus)
    assert {"Camera", "Z", "Lens", "Sample", "Shutter"} <= set(core.getLoadedDevices())
    assert core.getCameraDevice() == "Camera" and core.getFocusDevice() == "Z"
    assert core.getPixelSizeUm() == pytest.approx(0.65)
    assert core.getStateLabel("Lens") == "In"
    assert float(core.getProperty("Lens", "Astigmatism0_waves")) == pytest.approx(LENS_ASTIG_0_WAVES)


def test_snap_gives_a_uint16_frame_of_the_camera_size(core: CMMCorePlus) -> None:
    frame = _snap(core)
    assert frame.shape == SHAPE and frame.dtype == np.uint16
    assert (core.getImageHeight(), core.getImageWidth()) == SHAPE
    assert 100 < frame.mean() < 60000  # offset + signal, not saturated


def test_sequence_acquisition_delivers_n_frames_with_true_z_and_a_frame_counter(core: CMMCorePlus) -> None:
    core.setPosition(7.5)
    core.waitForSystem()
    core.startSequenceAcquisition(5, 0, True)
    _wait_sequence(core)
    assert core.getRemainingImageCount() == 5
    counters = []
    for _ in range(5):
        frame, md = core.popNextImageAndMD()
        assert frame.shape == SHAPE
        assert float(md["SimZ_um"]) == pytest.approx(7.5)
        assert float(md["StageZ_um"]) == pytest.approx(7.5)
        counters.append(int(md["SimFrameCounter"]))
    assert counters == sorted(counters) and len(set(counters)) == 5
    truth = ground_truth(core)
    assert truth.z_um == pytest.approx(7.5)
    np.testing.assert_allclose(truth.defocus_um, 7.5 - truth.height_um, atol=1e-5)
    # Any recent frame's truth by its counter (for consumers that process frames late).
    assert ground_truth(core, counters[0]).frame_number == counters[0]
    with pytest.raises(KeyError, match="frame"):
        ground_truth(core, -5)
    core.setPosition(0.0)
    core.waitForSystem()


def test_frames_carry_fresh_noise(core: CMMCorePlus) -> None:
    a, b = _snap(core), _snap(core)
    assert not np.array_equal(a, b)
    assert abs(a.astype(float).mean() - b.astype(float).mean()) < 0.01 * a.mean()


def test_setting_the_noise_seed_repeats_a_frame_set_whatever_came_before(core: CMMCorePlus) -> None:
    core.setProperty("Camera", "NoiseSeed", 42)
    first = [_snap(core) for _ in range(2)]
    _snap(core)  # frames drawn in between (a benchmark's other options) must not matter
    core.setProperty("Camera", "NoiseSeed", 42)
    again = [_snap(core) for _ in range(2)]
    assert int(core.getProperty("Camera", "NoiseSeed")) == 42
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    # After a reseed the frames still differ one from the next: a live view does not freeze.
    assert not np.array_equal(first[0], first[1])


def test_different_noise_seeds_give_independent_noise_on_the_same_image(core: CMMCorePlus) -> None:
    core.setProperty("Camera", "NoiseSeed", 1)
    a = _snap(core).astype(np.float64)
    core.setProperty("Camera", "NoiseSeed", 2)
    b = _snap(core).astype(np.float64)
    render = get_scene(core).current()
    gain = float(core.getProperty("Camera", "Gain"))
    electrons = float(core.getProperty("Camera", "PhotonFlux_e_per_ms")) * core.getExposure() * render.brightness
    sigma_adu = gain * np.sqrt(electrons + float(core.getProperty("Camera", "ReadNoise_e")) ** 2)
    # Two independent draws: their difference is zero-mean with √2 times the per-pixel noise.
    z = (a - b) / (np.sqrt(2) * sigma_adu)
    assert abs(z.mean()) < 0.05 and 0.9 < z.std() < 1.15


def test_the_default_noise_seed_is_the_core_seed_and_bad_seeds_are_refused() -> None:
    fresh = create_core(sample="cells", tilt_deg=0.0, shape=(64, 64), seed=5)
    used = create_core(sample="cells", tilt_deg=0.0, shape=(64, 64), seed=5)
    assert int(fresh.getProperty("Camera", "NoiseSeed")) == 5
    _snap(used)
    used.setProperty("Camera", "NoiseSeed", 5)
    np.testing.assert_array_equal(_snap(used), _snap(fresh))
    with pytest.raises(ValueError, match="NoiseSeed"):
        used.setProperty("Camera", "NoiseSeed", -1)


def test_the_focal_plane_is_sharper_than_20_um_away(core: CMMCorePlus) -> None:
    # Lens out: with it in, even the best focus carries the lens astigmatism (circle of least confusion).
    core.setState("Lens", 0)
    core.waitForSystem()
    sharp = sum(_gradient_energy(_snap(core)))
    core.setPosition(20.0)
    core.waitForSystem()
    blurred = sum(_gradient_energy(_snap(core)))
    core.setState("Lens", 1)
    core.setPosition(0.0)
    core.waitForSystem()
    assert sharp > 2.0 * blurred


def test_with_the_lens_below_focus_blurs_along_x_and_above_focus_along_y(core: CMMCorePlus) -> None:
    # The frame shows a line crossing: vertical-line edges make x gradients, horizontal ones y gradients.
    # Stage Z > height: the sample is below the focal plane, PSF longer along x: x gradients weaken.
    ratios = {}
    for z in (20.0, -20.0):
        core.setPosition(z)
        core.waitForSystem()
        gy, gx = _gradient_energy(_snap(core))
        ratios[z] = gx / gy
    core.setPosition(0.0)
    core.waitForSystem()
    assert ratios[20.0] < 0.7 < 1.4 < ratios[-20.0]


def test_without_the_lens_above_and_below_focus_look_alike(core: CMMCorePlus) -> None:
    core.setState("Lens", 0)
    assert core.getStateLabel("Lens") == "Out"
    ratios = []
    for z in (20.0, -20.0):
        core.setPosition(z)
        core.waitForSystem()
        gy, gx = _gradient_energy(_snap(core))
        ratios.append(gx / gy)
    assert ground_truth(core).astig_0_waves == 0.0
    core.setState("Lens", 1)
    core.setPosition(0.0)
    core.waitForSystem()
    assert ratios[0] == pytest.approx(ratios[1], rel=0.15)


def test_a_tilted_sample_is_sharp_along_one_line_and_blurs_away_from_it() -> None:
    tilted = create_core(sample="cells", tilt_deg=15.0, tilt_axis="x", lens=False, shape=(128, 384), seed=2)
    frame = _snap(tilted).astype(np.float64)
    truth = ground_truth(tilted)
    # Sharpness per column band; focus is where the height equals the stage Z (the centre column).
    bands = np.array_split(np.arange(frame.shape[1]), 6)
    energy = [np.mean(np.diff(frame[:, b], axis=0) ** 2) for b in bands]
    assert int(np.argmax(energy)) in (2, 3)
    assert energy[0] < 0.5 * max(energy) and energy[-1] < 0.5 * max(energy)
    # Ground truth: height grows along columns, defocus crosses zero in the middle.
    assert truth.height_um[0, -1] > 0 > truth.height_um[0, 0]
    assert np.abs(truth.defocus_um[:, 190:194]).max() < 0.5
    assert truth.in_focus_mask[:, 192].all() and not truth.in_focus_mask[:, 0].any()


def test_sample_properties_change_what_is_rendered(core: CMMCorePlus) -> None:
    core.setProperty("Sample", "TiltDeg", 10.0)
    core.waitForSystem()
    _snap(core)
    assert np.ptp(ground_truth(core).height_um) > 10.0
    core.setProperty("Sample", "TiltAxis", "y")
    core.waitForSystem()
    h = ground_truth(core).height_um if _snap(core) is not None else None
    assert h[-1, 0] > h[0, 0] and h[0, -1] == pytest.approx(h[0, 0])
    core.setProperty("Sample", "TiltDeg", 0.0)
    core.setProperty("Sample", "TiltAxis", "x")
    core.waitForSystem()
    with pytest.raises(Exception, match="TiltDeg|range|allowed"):
        core.setProperty("Sample", "TiltDeg", 60.0)
    with pytest.raises(Exception, match="allowed"):
        core.setProperty("Sample", "Sample", "no-such-sample")


def test_a_closed_shutter_gives_dark_frames(core: CMMCorePlus) -> None:
    core.setShutterOpen(False)
    try:
        dark = _snap(core)
    finally:
        core.setShutterOpen(True)
    assert dark.mean() == pytest.approx(float(core.getProperty("Camera", "Offset")), abs=2.0)


def test_exposure_scales_the_signal(core: CMMCorePlus) -> None:
    offset = float(core.getProperty("Camera", "Offset"))
    short = _snap(core).mean() - offset
    core.setExposure(20.0)
    long = _snap(core).mean() - offset
    core.setExposure(10.0)
    assert long == pytest.approx(2 * short, rel=0.02)


def test_continuous_acquisition_keeps_delivering_while_the_stage_moves_and_re_renders() -> None:
    moving = create_core(sample="cells", tilt_deg=0.0, shape=SHAPE, exposure_ms=1.0, seed=1)
    moving.startContinuousSequenceAcquisition(0)
    try:
        time.sleep(0.1)
        moving.setPosition(15.0)
        seen_z: list[float] = []
        deadline = time.perf_counter() + 20.0
        while time.perf_counter() < deadline:
            if moving.getRemainingImageCount():
                _, md = moving.popNextImageAndMD()
                seen_z.append(float(md["SimZ_um"]))
                if seen_z[-1] == 15.0:
                    break
            else:
                time.sleep(0.002)
    finally:
        moving.stopSequenceAcquisition()
    assert seen_z and seen_z[-1] == 15.0
    assert set(seen_z) <= {0.0, 15.0}
    assert not moving.isSequenceRunning()


def test_an_mda_z_stack_completes_and_the_middle_plane_is_sharpest(core: CMMCorePlus) -> None:
    frames: list[tuple[float, np.ndarray]] = []
    core.mda.events.frameReady.connect(lambda img, event, meta: frames.append((event.z_pos, img.copy())))
    core.setState("Lens", 0)
    try:
        core.mda.run(useq.MDASequence(z_plan={"range": 40.0, "step": 20.0}))
    finally:
        core.setState("Lens", 1)
    assert [z for z, _ in frames] == pytest.approx([-20.0, 0.0, 20.0])
    energy = [sum(_gradient_energy(img)) for _, img in frames]
    assert energy[1] > 2.0 * max(energy[0], energy[2])
    core.setPosition(0.0)
    core.waitForSystem()


def test_software_roi_crops_the_frame(core: CMMCorePlus) -> None:
    core.setROI(10, 20, 64, 48)
    try:
        assert _snap(core).shape == (48, 64)
    finally:
        core.clearROI()
    assert _snap(core).shape == SHAPE


def test_bad_construction_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown sample"):
        create_core(sample="beads", shape=(64, 64))
    with pytest.raises(ValueError, match="tilt axis"):
        create_core(tilt_axis="z", shape=(64, 64))
    with pytest.raises(ValueError, match="create_core"):
        get_scene(object())  # type: ignore[arg-type]


def test_every_snap_shows_the_render_of_the_current_state(core: CMMCorePlus) -> None:
    # Regression: the camera once keyed its noise model on id(render), which Python reuses after a
    # render is freed, and then served the image of an older state.
    scene = get_scene(core)
    sensor_gain = float(core.getProperty("Camera", "Gain"))
    offset = float(core.getProperty("Camera", "Offset"))
    flux = float(core.getProperty("Camera", "PhotonFlux_e_per_ms"))
    read_noise = float(core.getProperty("Camera", "ReadNoise_e"))
    for z_um, lens in [(0.0, 1), (25.0, 0), (0.0, 0), (25.0, 1), (-25.0, 0), (0.0, 1)]:
        core.setState("Lens", lens)
        core.setPosition(z_um)
        frame = _snap(core).astype(np.float64)
        render = scene.current()
        assert (render.state.z_um, render.state.lens_in) == (z_um, bool(lens))
        expected = offset + sensor_gain * flux * core.getExposure() * render.brightness
        # Pixel-wise agreement within the shot noise: the right image, not just the right mean.
        electrons = flux * core.getExposure() * render.brightness
        residual = (frame - expected) / (sensor_gain * np.sqrt(electrons + read_noise**2))
        assert abs(residual.mean()) < 0.05 and residual.std() < 1.1


# -- XY stage and drift (issue 15) ------------------------------------------------------------------


def test_xy_stage_moves_the_sample_under_the_field_and_the_surface_with_it() -> None:
    core = create_core(sample="cells", tilt_deg=3.0, lens=True, shape=(128, 128), seed=1)
    assert core.getXYStageDevice() == "XY"
    before = _snap(core).astype(np.float64)
    step_px = 40
    core.setXYPosition(step_px * 0.65, 0.0)  # +x µm: the content moves towards lower columns
    core.waitForSystem()
    after = _snap(core).astype(np.float64)
    assert np.allclose(core.getXYPosition(), (step_px * 0.65, 0.0))
    shifted = np.corrcoef(before[:, step_px:].ravel(), after[:, :-step_px].ravel())[0, 1]
    unshifted = np.corrcoef(before.ravel(), after.ravel())[0, 1]
    assert shifted > 0.95 and unshifted < 0.5
    # The tilt belongs to the sample: the height under the frame centre rises by tan(3°) · 26 µm.
    truth = ground_truth(core)
    centre_um = float(truth.height_um[63:65, 63:65].mean())
    assert centre_um == pytest.approx(np.tan(np.radians(3.0)) * step_px * 0.65, abs=0.05)
    # Far from the origin the sample is still there (not a blank or mirrored edge); flat, so in focus.
    core.setProperty("Sample", "TiltDeg", 0.0)
    core.setXYPosition(-4000.0, 2500.0)
    core.waitForSystem()
    far = _snap(core).astype(np.float64)
    assert far.std() > 0.2 * before.std()


def test_drift_moves_the_sample_on_the_scene_clock() -> None:
    clock = SimClock()
    core = create_core(sample="cells", tilt_deg=0.0, shape=(64, 64), drift_um_per_min=2.0, clock=clock)
    _snap(core)
    assert float(np.median(ground_truth(core).defocus_um)) == pytest.approx(0.0, abs=0.01)
    clock.advance(90.0)
    _snap(core)
    # The sample rose by 3 µm: the same stage Z is now 3 µm below it.
    assert float(np.median(ground_truth(core).defocus_um)) == pytest.approx(-3.0, abs=0.01)
    core.setProperty("Sample", "DriftUmPerMin", 0.0)
    clock.advance(600.0)
    _snap(core)
    assert float(np.median(ground_truth(core).height_um)) == pytest.approx(3.0, abs=0.01)
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1.0)

"""The texture gate measured once per frame and passed down (``texture=``) decides exactly as the frame does."""

from __future__ import annotations

import numpy as np
import pytest

from livepsf import depth as D
from livepsf.depth.outputs import depth_stats
from livepsf.depth.texture import gate_texture, window_texture
from livepsf.errors import InputError
from synthetic_depth import standard_calibration, synthetic_map, textured_frame


@pytest.fixture(scope="module")
def gated_case():
    """A gated calibration, a fresh map whose left half sees horizontal lines only, and its frame."""
    frame = textured_frame(stripes_below_x=512)
    cal = standard_calibration(frames=[textured_frame()] * 3)
    pmap, _ = synthetic_map(7, 600, seed=5)
    return cal, pmap, frame


def test_texture_stands_in_for_the_frame(gated_case):
    cal, pmap, frame = gated_case
    texture = gate_texture(frame, pmap, cal.max_texture_coherence)
    by_frame = D.reliable_windows(pmap, frame, cal.max_texture_coherence)
    left = pmap.centers_x + 64 <= 512
    assert not by_frame[:, left].any() and by_frame[:, ~left].mean() > 0.9  # the gate matters here
    np.testing.assert_array_equal(D.reliable_windows(pmap, None, cal.max_texture_coherence, texture=texture),
                                  by_frame)
    np.testing.assert_array_equal(cal.depth_um(pmap, frame, 3, texture=texture), cal.depth_um(pmap, frame, 3))
    np.testing.assert_array_equal(cal.depth_um(pmap, texture=texture), cal.depth_um(pmap, frame))
    est, est_frame = cal.depth_estimate(pmap, texture=texture), cal.depth_estimate(pmap, frame)
    np.testing.assert_array_equal(est.sigma_um, est_frame.sigma_um)
    np.testing.assert_array_equal(est.depth_um, est_frame.depth_um)
    assert depth_stats(cal, pmap, frame, texture=texture) == depth_stats(cal, pmap, frame)
    with_texture = D.surface_depth(cal, pmap, frame, "plane", texture=texture)
    assert with_texture.figures() == D.surface_depth(cal, pmap, frame, "plane").figures()


def test_gate_texture_only_where_the_gate_applies(gated_case):
    cal, pmap, frame = gated_case
    assert gate_texture(None, pmap, cal.max_texture_coherence) is None
    assert gate_texture(frame, pmap, None) is None
    # Without a threshold a texture changes nothing: only the network's validity flag counts.
    texture = window_texture(frame, pmap)
    np.testing.assert_array_equal(D.reliable_windows(pmap, frame, None, texture=texture), ~pmap.invalid_mask)


def test_texture_of_another_grid_is_refused(gated_case):
    cal, pmap, frame = gated_case
    small, _ = synthetic_map(7, 300, shape=(512, 512))
    texture = window_texture(frame[:512, :512], small)
    with pytest.raises(InputError, match="does not match the PSF map's window grid"):
        cal.depth_um(pmap, frame, texture=texture)

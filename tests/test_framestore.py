"""FrameStore: per-frame results kept atomically, found again only by a run with the same settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from livepsf.framestore import FrameStore, settings_key, source_identity
from livepsf.imageio import existing_outputs, output_path, output_stem


def test_frames_survive_a_new_process_only_for_the_same_settings(tmp_path: Path) -> None:
    settings = {"command": "deconvolve", "iterations": 20, "source": "/data/a.tif"}
    store = FrameStore(tmp_path, "a_deconv", settings, n_frames=3)
    assert not store.exists and store.missing() == [0, 1, 2]
    image = np.random.default_rng(0).random((8, 6)).astype(np.float32)
    store.put(1, {"image": image}, {"grid": [2, 2]})
    assert store.done() == {1} and not store.complete

    reopened = FrameStore(tmp_path, "a_deconv", dict(reversed(settings.items())), n_frames=3)  # order is irrelevant
    assert reopened.missing() == [0, 2]
    arrays, meta = reopened.get(1)
    np.testing.assert_array_equal(arrays["image"], image)
    assert meta == {"grid": [2, 2]} and reopened.meta(1) == meta
    other = FrameStore(tmp_path, "a_deconv", {**settings, "iterations": 30}, n_frames=3)
    assert other.missing() == [0, 1, 2] and other.path != reopened.path
    assert not [p for p in reopened.path.iterdir() if p.name.endswith(".tmp")]  # no half-written frame


def test_reserved_outputs_and_planes_then_discard(tmp_path: Path) -> None:
    store = FrameStore(tmp_path, "b_psfmap", {"k": 1}, n_frames=2)
    for i in range(2):
        store.put(i, {"image": np.full((4, 4), i, np.float32)})
    assert store.complete
    store.reserve([tmp_path / "b_psfmap.ome.tif", tmp_path / "b_psfmap.json"])
    again = FrameStore(tmp_path, "b_psfmap", {"k": 1}, n_frames=2)
    assert again.reserved == [tmp_path / "b_psfmap.ome.tif", tmp_path / "b_psfmap.json"]
    planes = again.planes("image")
    assert len(planes) == 2 and float(planes[1][0, 0]) == 1.0
    with pytest.raises(IndexError):
        planes[2]
    with pytest.raises(ValueError, match="pickle"):
        again.put(0, {"bad": np.array([object()])})
    again.discard()
    assert not again.exists and not list(tmp_path.iterdir())


def test_settings_identify_the_input_and_names_follow_output_path(tmp_path: Path) -> None:
    source = tmp_path / "cell.ome.tif"
    source.write_bytes(b"1234")
    identity = source_identity(source)
    assert identity["source"] == str(source.resolve()) and identity["source_bytes"] == 4
    assert settings_key({"a": 1, "b": 2}) == settings_key({"b": 2, "a": 1}) != settings_key({"a": 1, "b": 3})
    assert output_stem(source, "_deconv.ome.tif") == "cell_deconv"
    assert existing_outputs(source, "_deconv.ome.tif") == []
    first = output_path(source, "_deconv.ome.tif")
    first.touch()
    second = output_path(source, "_deconv.ome.tif")
    second.touch()
    assert existing_outputs(source, "_deconv.ome.tif") == [first, second]
    assert [p.name for p in (first, second)] == ["cell_deconv.ome.tif", "cell_deconv-1.ome.tif"]
    store = FrameStore.for_output(source, "_deconv.ome.tif", tmp_path, {"x": 1}, 1)
    assert store.path.name.startswith(".cell_deconv.")

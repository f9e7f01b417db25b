"""Recorder: OME-TIFF streaming with metadata, crash safety, no overwriting, full-disk handling."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from livepsf.acquisition import recorder as recorder_module
from livepsf.acquisition.recorder import (
    Recorder,
    RecordingError,
    psfmap_from_dict,
    psfmap_to_dict,
    read_frame_metadata,
    recorded_psfmaps,
)
from livepsf.errors import InputError
from livepsf.mapping import PSFMap
from livepsf.optics import Optics


def _frames(n: int, shape=(48, 64)) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 4000, shape, dtype=np.uint16) for _ in range(n)]


def _pmap(shape=(48, 64)) -> PSFMap:
    return PSFMap(params={"focus": np.array([[0.5, 1.0]], np.float32)}, invalid=np.array([[0.1, 0.9]], np.float32),
                  centers_y=np.array([23.5]), centers_x=np.array([15.5, 47.5]), window_px=32, stride_px=32,
                  frame_shape=shape, psf_model="Z-1", model_name="focus", optics=Optics(na=0.25))


def test_frames_and_metadata_round_trip(tmp_path: Path) -> None:
    frames = _frames(4)
    closed = []
    with Recorder(tmp_path / "run.ome.tif", pixel_size_um=0.65, metadata={"objective": "10x/0.3"},
                  on_close=closed.append) as rec:
        for i, f in enumerate(frames):
            rec.append(f, exposure_ms=10.0 + i, z_um=2.5 * i, psfmap=_pmap() if i % 2 == 0 else None)
    assert closed == [rec.path]
    np.testing.assert_array_equal(tifffile.imread(rec.path), np.stack(frames))
    with tifffile.TiffFile(rec.path) as tif:
        assert tif.is_ome and tif.series[0].axes == "TYX"
        xml = tif.ome_metadata
    assert 'PhysicalSizeX="0.65"' in xml and 'PositionZ="5.0"' in xml and 'ExposureTime="13.0"' in xml
    header, records = read_frame_metadata(rec.path)
    assert header["objective"] == "10x/0.3" and header["pixel_size_um"] == 0.65
    assert [r["z_um"] for r in records] == [0.0, 2.5, 5.0, 7.5]
    assert all(records[i + 1]["time_s"] >= records[i]["time_s"] for i in range(3))
    maps = recorded_psfmaps(rec.path)
    assert maps[1] is None and maps[3] is None
    np.testing.assert_allclose(maps[0].params["focus"], [[0.5, 1.0]])
    assert maps[2].optics == Optics(na=0.25) and maps[2].model_name == "focus"


def test_psfmap_dict_round_trip() -> None:
    pmap = _pmap()
    back = psfmap_from_dict(psfmap_to_dict(pmap))
    np.testing.assert_allclose(back.invalid, pmap.invalid)
    assert back.frame_shape == pmap.frame_shape and back.psf_model == "Z-1"


def test_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "run.ome.tif"
    target.write_bytes(b"precious raw data")
    with Recorder(target, pixel_size_um=1.0) as rec:
        rec.append(_frames(1)[0])
    assert target.read_bytes() == b"precious raw data"
    assert rec.path.name == "run-1.ome.tif"
    with Recorder(target, pixel_size_um=1.0) as rec2:
        rec2.append(_frames(1)[0])
    assert rec2.path.name == "run-2.ome.tif"


def test_killed_process_leaves_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "killed.ome.tif"
    script = textwrap.dedent(f"""
        import os, signal
        import numpy as np
        from livepsf.acquisition.recorder import Recorder
        rec = Recorder({str(path)!r}, pixel_size_um=0.65)
        for i in range(5):
            rec.append(np.full((32, 40), i, np.uint16), z_um=float(i))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode != 0  # killed, never closed
    data = tifffile.imread(path)
    assert data.shape == (5, 32, 40)
    np.testing.assert_array_equal(data[:, 0, 0], np.arange(5))
    _, records = read_frame_metadata(path)
    assert [r["z_um"] for r in records] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_full_disk_stops_recording_and_keeps_frames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = _frames(5)
    real_write = tifffile.TiffWriter.write
    calls = {"n": 0}

    def write_until_full(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffWriter, "write", write_until_full)
    failures: list[str] = []
    rec = Recorder(tmp_path / "full.ome.tif", pixel_size_um=0.65)
    rec.failed.connect(failures.append)
    for f in frames[:3]:
        rec.append(f)
    with pytest.raises(RecordingError, match="disk full"):
        rec.append(frames[3])
    assert failures and "after 3 frame(s)" in failures[0]
    assert not rec.is_open
    with pytest.raises(RecordingError):  # stays stopped
        rec.append(frames[4])
    path = rec.close()
    np.testing.assert_array_equal(tifffile.imread(path), np.stack(frames[:3]))
    assert len(read_frame_metadata(path)[1]) == 3


def test_failure_after_page_was_written_cuts_it_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The page reaches the file but flushing it to disk fails: the half-saved frame must not linger.
    frames = _frames(3)
    real_fsync = os.fsync
    calls = {"n": 0}

    def fsync_until_full(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 6:  # header line, then (page, line) per frame: the 3rd page's fsync
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(recorder_module.os, "fsync", fsync_until_full)
    rec = Recorder(tmp_path / "late.ome.tif", pixel_size_um=0.65)
    rec.append(frames[0])
    rec.append(frames[1])
    with pytest.raises(RecordingError):
        rec.append(frames[2])
    path = rec.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tifffile may note the dangling next-page offset
        data = tifffile.imread(path)
    np.testing.assert_array_equal(data, np.stack(frames[:2]))


def test_bad_frames_are_refused(tmp_path: Path) -> None:
    with Recorder(tmp_path / "r.ome.tif", pixel_size_um=0.65) as rec:
        rec.append(np.zeros((8, 8), np.uint16))
        with pytest.raises(InputError, match="holds"):
            rec.append(np.zeros((8, 9), np.uint16))
        with pytest.raises(InputError):
            rec.append(np.zeros((2, 8, 8), np.uint16))
    assert rec.frames_written == 1
    with pytest.raises(RecordingError, match="closed"):
        rec.append(np.zeros((8, 8), np.uint16))

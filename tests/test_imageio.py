"""Reading user images and naming outputs without ever overwriting."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from livepsf.errors import InputError
from livepsf.imageio import check_frame, output_path, read_frames


def test_reads_multipage_tiff_as_frames(tmp_path) -> None:
    stack = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")
    frames = read_frames(path)
    assert len(frames) == 3
    assert frames[1].dtype == np.uint16
    np.testing.assert_array_equal(frames[2], stack[2])


def test_reads_png_as_grey(tmp_path) -> None:
    rgb = np.zeros((16, 24, 3), dtype=np.uint8)
    rgb[..., 1] = 200
    Image.fromarray(rgb).save(tmp_path / "a.png")
    (frame,) = read_frames(tmp_path / "a.png")
    assert frame.shape == (16, 24)
    assert 100 < frame.mean() < 130  # green weighted by ~0.59


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.tif", None, "no such file"),
        ("corrupt.tif", b"II*\x00garbage", "cannot read"),
        ("notes.txt", b"hello", "unsupported image type"),
    ],
)
def test_bad_files_raise_input_error_naming_the_file(tmp_path, name, content, message) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message) as info:
        read_frames(path)
    assert name in str(info.value)


def test_nan_plane_is_reported_with_its_index(tmp_path) -> None:
    stack = np.ones((2, 8, 8), dtype=np.float32)
    stack[1, 3, 3] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", stack)
    with pytest.raises(InputError, match=r"plane 1.*NaN"):
        read_frames(tmp_path / "nan.tif")


def test_check_frame_rejects_bad_arrays() -> None:
    with pytest.raises(InputError, match="2D"):
        check_frame(np.zeros((2, 3, 4)))
    with pytest.raises(InputError, match="complex"):
        check_frame(np.zeros((4, 4), dtype=complex))
    with pytest.raises(InputError, match="smaller than one"):
        check_frame(np.zeros((100, 300)), min_shape=(128, 128))
    check_frame(np.zeros((128, 128), dtype=np.uint16), min_shape=(128, 128))


def test_output_path_never_overwrites_and_keeps_input(tmp_path) -> None:
    source = tmp_path / "cells.ome.tif"
    source.write_bytes(b"raw data")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    first = output_path(source, "_psfmap.ome.tif")
    assert first.name == "cells_psfmap.ome.tif"
    first.write_bytes(b"x")
    second = output_path(source, "_psfmap.ome.tif")
    assert second.name == "cells_psfmap-1.ome.tif"
    elsewhere = output_path(source, "_deconv.ome.tif", tmp_path / "out")
    assert elsewhere.parent == tmp_path / "out" and elsewhere.parent.is_dir()
    assert output_path(source, ".ome.tif") != source  # an output is never the input itself
    assert hashlib.sha256(source.read_bytes()).hexdigest() == digest

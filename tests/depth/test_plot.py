"""The calibration's files: the JSON and its plot beside it, never replacing anything."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from livepsf.depth import Calibration, write_calibration_files
from livepsf.errors import InputError

SIM_DEFAULT = Path(__file__).resolve().parents[2] / "calibration" / "sim-default.json"


def test_writes_the_calibration_and_a_plot_beside_it(tmp_path):
    cal = Calibration.load(SIM_DEFAULT)
    json_path, png_path = write_calibration_files(cal, tmp_path / "scope.json")
    assert json_path == tmp_path / "scope.json" and png_path == tmp_path / "scope.png"
    again = Calibration.load(json_path)
    assert again.slope_um_per_unit == cal.slope_um_per_unit and again.metric == cal.metric
    np.testing.assert_allclose(again.metric_to_depth_um(np.array([-0.1, 0.0, 0.1])),
                               cal.metric_to_depth_um(np.array([-0.1, 0.0, 0.1])))
    with Image.open(png_path) as image:
        assert image.format == "PNG" and image.size[0] == 900
        assert np.asarray(image.convert("L")).std() > 10  # something is drawn on the white page


def test_never_replaces_a_calibration_or_a_plot(tmp_path):
    cal = Calibration.load(SIM_DEFAULT)
    old_plot = tmp_path / "scope.png"
    old_plot.write_bytes(b"someone's picture")
    json_path, png_path = write_calibration_files(cal, tmp_path / "scope.json")
    assert png_path == tmp_path / "scope-1.png" and old_plot.read_bytes() == b"someone's picture"
    before = json_path.read_bytes()
    with pytest.raises(InputError, match="already exists"):
        write_calibration_files(cal, json_path)
    assert json_path.read_bytes() == before

"""The default calibration: the newest one made with exactly this network's weights, whatever its name."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from livepsf.depth.discovery import calibration_for_model, find_calibration
from livepsf.errors import InputError

SIM_DEFAULT = Path(__file__).resolve().parents[2] / "calibration" / "sim-default.json"
RAW = json.loads(SIM_DEFAULT.read_text(encoding="utf-8"))


def network(sha: str, name: str = "default") -> SimpleNamespace:
    """Stands in for a loaded network: only its card's name and weights hash are read."""
    return SimpleNamespace(card=SimpleNamespace(name=name, weights_sha256=sha))


def write(folder: Path, name: str, **changes) -> Path:
    path = folder / name
    path.write_text(json.dumps({**RAW, **changes}), encoding="utf-8")
    return path


def test_newest_calibration_of_this_network_is_found_by_its_weights(tmp_path):
    mine = RAW["model_sha256"]
    write(tmp_path, "older.json", created="2026-01-01T00:00:00Z")
    newest = write(tmp_path, "zz-named-like-another.json", created="2026-06-01T00:00:00Z")
    write(tmp_path, "other-network.json", created="2027-01-01T00:00:00Z", model_sha256="0" * 64)
    write(tmp_path, "not-a-calibration.json", format="something-else", created="2028-01-01T00:00:00Z")
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    assert find_calibration(network(mine), [tmp_path]) == newest
    assert find_calibration(network("1" * 64), [tmp_path]) is None
    assert find_calibration(network(""), [tmp_path]) is None  # no recorded hash: nothing can match


def test_calibration_for_model_loads_the_named_file_or_the_one_found(tmp_path):
    mine = network(RAW["model_sha256"])
    cal, path = calibration_for_model(mine, SIM_DEFAULT)
    assert path == SIM_DEFAULT and cal.model_sha256 == RAW["model_sha256"]
    found = write(tmp_path, "scope.json")
    cal, path = calibration_for_model(mine, folders=[tmp_path])
    assert path == found and cal.slope_um_per_unit == pytest.approx(RAW["slope_um_per_unit"])
    assert calibration_for_model(network("1" * 64), folders=[tmp_path]) == (None, None)
    with pytest.raises(InputError, match="calibrate again with this model"):
        calibration_for_model(network("1" * 64, name="other"), SIM_DEFAULT)
    with pytest.raises(InputError, match="no such calibration file"):
        calibration_for_model(mine, tmp_path / "missing.json")

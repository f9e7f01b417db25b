"""load_micromanager_core: every way a configuration can fail is one InputError naming the file."""

from __future__ import annotations

import pymmcore_plus
import pytest

from livepsf.acquisition.micromanager import load_micromanager_core
from livepsf.errors import InputError


@pytest.fixture
def adapters_found(monkeypatch, tmp_path):
    """Pretend a Micro-Manager installation exists (this machine need not have one)."""
    monkeypatch.setattr(pymmcore_plus, "find_micromanager", lambda *a, **k: str(tmp_path / "mm"))


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "scope.cfg"
    with pytest.raises(InputError, match="no such Micro-Manager configuration file") as exc:
        load_micromanager_core(missing)
    assert str(missing) in str(exc.value)


def test_no_installation_says_how_to_get_one(tmp_path, monkeypatch):
    config = tmp_path / "scope.cfg"
    config.write_text("# a configuration\n", encoding="utf-8")
    monkeypatch.setattr(pymmcore_plus, "find_micromanager", lambda *a, **k: None)
    with pytest.raises(InputError, match="mmcore install") as exc:
        load_micromanager_core(config)
    assert str(exc.value).startswith(f"{config}: no Micro-Manager installation")


def test_unloadable_configuration_gives_the_first_line_of_the_reason(tmp_path, adapters_found):
    config = tmp_path / "broken.cfg"
    config.write_text("Device,Cam,NoSuchAdapterLibrary,Camera\n", encoding="utf-8")
    with pytest.raises(InputError, match="could not load this configuration") as exc:
        load_micromanager_core(config)
    message = str(exc.value)
    assert message.startswith(str(config)) and "\n" not in message


def test_configuration_without_camera_is_refused(tmp_path, adapters_found):
    config = tmp_path / "empty.cfg"
    config.write_text("# no devices\n", encoding="utf-8")
    with pytest.raises(InputError, match="has no camera"):
        load_micromanager_core(config)
    with pytest.raises(InputError, match="no device 'Camera'; loaded: Core"):
        load_micromanager_core(config, camera="Camera")

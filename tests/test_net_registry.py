"""Export and loading: round trip, card checks, predict on any real dtype, shipped models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from livepsf.errors import InputError
from livepsf.net import ModelCard, available_models, export_model, load_model
from livepsf.net.architectures import build_network
from livepsf.optics import Optics, get_psf_model


def _export(tmp_path, psf_model: str = "Z-3", name: str = "m"):
    spec = get_psf_model(psf_model)
    torch.manual_seed(7)
    net = build_network("shared-trunk", spec.n_params).eval()
    card = ModelCard.for_spec(name, spec, Optics(), architecture="shared-trunk", input_normalisation="none")
    return net, export_model(net, card, tmp_path / f"{name}.pt")


def test_export_load_round_trip_gives_identical_outputs(tmp_path) -> None:
    net, path = _export(tmp_path)
    loaded = load_model(path)
    x = torch.rand(5, 1, 128, 128) * 3000
    frame = torch.rand(1, 1, 256, 320) * 3000
    with torch.no_grad():
        assert torch.equal(loaded.module(x), net(x))
        assert torch.equal(loaded.module.map_frame(frame, 64), net.map_frame(frame, 64))
    assert loaded.card.weights_sha256 and loaded.spec.names == ("focus", "astig_0", "astig_45")
    out = loaded.predict(x[:, 0].numpy())
    assert loaded.card.uncertainty and loaded.has_sigma
    assert set(out) == {"focus", "astig_0", "astig_45", "cylinder", "axis", "invalid",
                        "focus_sigma", "astig_0_sigma", "astig_45_sigma"} == set(loaded.output_names)
    assert np.all((out["focus"] >= 0) & (out["focus"] <= 2)) and np.all((out["axis"] >= 0) & (out["axis"] < np.pi))
    assert all(np.all(out[f"{n}_sigma"] > 0) for n in loaded.spec.names)


def test_sigma_is_in_physical_units_and_predictions_are_canonical(tmp_path) -> None:
    """decode: σ = exp(log σ) x the parameter's span; a negative focus is mirrored to (-f, -A)."""
    _, path = _export(tmp_path)
    model = load_model(path)
    raw = torch.tensor([[-3.0, -0.1, 0.8, 0.5, np.log(0.05), np.log(0.1), np.log(0.2)]])
    out = model.decode(raw)
    # focus -0.2 waves, astig_0 +0.3, astig_45 0.0 is the same PSF as focus 0.2, astig_0 -0.3, astig_45 0.
    np.testing.assert_allclose([out["focus"].item(), out["astig_0"].item(), out["astig_45"].item()],
                               [0.2, -0.3, 0.0], atol=1e-6)
    np.testing.assert_allclose([out["focus_sigma"].item(), out["astig_0_sigma"].item(),
                                out["astig_45_sigma"].item()], [0.05 * 2.0, 0.1 * 1.0, 0.2 * 1.0], rtol=1e-5)


def test_models_without_sigma_still_load_and_predict(tmp_path) -> None:
    spec = get_psf_model("Z-3")
    net = build_network("shared-trunk-tiny", spec.n_params, uncertainty=False).eval()
    card = ModelCard.for_spec("old", spec, Optics(), architecture="shared-trunk-tiny", input_normalisation="none")
    path = export_model(net, card, tmp_path / "old.pt")
    raw_card = json.loads(path.with_suffix(".json").read_text())
    assert raw_card["uncertainty"] is False
    del raw_card["uncertainty"]  # a card written before the field existed
    path.with_suffix(".json").write_text(json.dumps(raw_card))
    model = load_model(path)
    assert not model.has_sigma
    out = model.predict(np.random.default_rng(0).random((2, 128, 128)))
    assert set(out) == {"focus", "astig_0", "astig_45", "cylinder", "axis", "invalid"}


def test_card_mismatch_is_refused(tmp_path) -> None:
    _, path = _export(tmp_path)
    card_path = path.with_suffix(".json")
    original = json.loads(card_path.read_text())

    edited = dict(original, weights_sha256="0" * 64)
    card_path.write_text(json.dumps(edited))
    with pytest.raises(InputError, match="does not match its card"):
        load_model(path)

    # A card for another PSF model (4 outputs expected, the network gives 2) is refused too.
    spec = get_psf_model("Z-1")
    other = dict(original, psf_model="Z-1", params=[{"name": "focus", "unit": spec.params[0].unit,
                                                     "min": 0.0, "max": 2.0}])
    card_path.write_text(json.dumps(other))
    with pytest.raises(InputError, match="outputs of shape"):
        load_model(path)

    card_path.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_model(path)
    card_path.unlink()
    with pytest.raises(InputError, match="model card not found"):
        load_model(path)


def test_predict_handles_any_real_dtype(tmp_path) -> None:
    _, path = _export(tmp_path, "Z-1")
    model = load_model(path)
    rng = np.random.default_rng(0)
    as_u8 = rng.integers(0, 256, size=(3, 128, 128), dtype=np.uint8)
    ref = model.predict(as_u8.astype(np.float64))
    for arr in (as_u8, as_u8.astype(np.uint16), as_u8.astype(np.float32), as_u8.astype(np.int32),
                torch.from_numpy(as_u8.astype(np.float64))):
        out = model.predict(arr)
        np.testing.assert_allclose(out["focus"], ref["focus"], rtol=1e-5, atol=1e-6)
        assert out["focus"].dtype == np.float32
    # A uint16 camera frame (gain x 200, offset 100) gives the same answer: invariance by construction.
    np.testing.assert_allclose(model.predict(as_u8.astype(np.uint16) * 200 + 100)["focus"], ref["focus"],
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="windows"):
        model.predict(np.zeros((2, 64, 64)))
    with pytest.raises(InputError, match="NaN"):
        model.predict(np.full((1, 128, 128), np.nan))
    with pytest.raises(InputError, match="complex"):
        model.predict(np.zeros((1, 128, 128), dtype=complex))


def test_unknown_names_are_refused(tmp_path) -> None:
    with pytest.raises(InputError, match="unknown model"):
        load_model("no-such-model")
    with pytest.raises(InputError, match="no such model file"):
        load_model(tmp_path / "missing.pt")


@pytest.mark.parametrize("name, psf_model", [("default", "Z-3"), ("focus", "Z-1"), ("gaussian", "G-2")])
def test_shipped_models_load_with_their_cards(name: str, psf_model: str) -> None:
    assert name in available_models(), f"shipped model {name!r} missing from src/livepsf/models"
    model = load_model(name)
    assert model.spec.name == psf_model
    # The card records the command that trained it: the CLI, or the GPU script of training/.
    assert model.card.training.get("command", "").startswith(("livepsf train", "python training/gpu_train.py"))
    assert "test" in model.card.evaluation
    if model.has_sigma:  # σ heads come with their calibration and its test-set coverage
        assert set(model.card.training["sigma_calibration"]["factors"]) == set(model.spec.names)
        assert set(model.card.evaluation["test"]["within_1_sigma"]) == set(model.spec.names)
    x = np.random.default_rng(1).random((2, 128, 128)) * 1000
    out = model.predict(x)
    assert out["invalid"].shape == (2,)


# --- the frame pass of shared-trunk models -----------------------------------------------------------


@pytest.fixture(scope="module")
def simulated_frames() -> dict[str, np.ndarray]:
    """1024² uint16 camera frames of the simulator: tilted printed grid (blank foil too) and cells."""
    from livepsf.sim import create_core

    frames = {}
    for sample in ("printed-grid", "cells"):
        core = create_core(sample=sample, tilt_deg=6.0, tilt_axis="x", lens=True, shape=(1024, 1024), seed=1)
        core.snapImage()
        frames[sample] = core.getImage().copy()
    return frames


@pytest.mark.parametrize("name", ["default", "focus", "gaussian"])
def test_shipped_models_fast_frame_pass_gives_their_files_outputs(name: str, simulated_frames) -> None:
    """Every output channel of a map agrees with the model file's own TorchScript within 1e-4 of its range."""
    model = load_model(name)
    assert model.fast_frame_pass  # otherwise both sides below run the same code
    for sample, frame in simulated_frames.items():
        x = torch.from_numpy(frame.astype(np.float32))[None, None]
        with torch.inference_mode():
            fast = model.decode(model.map_frame(x, 64), channel_dim=0)
            reference = model.decode(model.module.map_frame(x, 64), channel_dim=0)
        for channel in (*model.spec.names, "invalid", *model.sigma_names):
            ref = reference[channel].numpy()
            assert fast[channel].shape == ref.shape == (15, 15)
            spread = float(ref.max() - ref.min())
            error = float(np.abs(fast[channel].numpy() - ref).max())
            assert error <= 1e-4 * spread + 1e-7, f"{name}, {sample}: {channel} differs by {error:.3g} (range {spread:.3g})"


def test_a_file_whose_code_differs_from_the_architecture_keeps_its_own_frame_pass(tmp_path) -> None:
    spec = get_psf_model("Z-1")
    torch.manual_seed(5)
    net = build_network("shared-trunk-tiny", spec.n_params).eval()
    net.log_features = False  # exported code that the package's shared-trunk-tiny no longer computes
    card = ModelCard.for_spec("changed", spec, Optics(), architecture="shared-trunk-tiny", input_normalisation="none")
    model = load_model(export_model(net, card, tmp_path / "changed.pt"))
    assert not model.fast_frame_pass
    frame = torch.rand(1, 1, 256, 192) * 1000
    with torch.inference_mode():
        assert torch.equal(model.map_frame(frame, 64), net.map_frame(frame, 64))
    # The unchanged architecture gets the package's frame pass.
    net.log_features = True
    assert load_model(export_model(net, card, tmp_path / "same.pt")).fast_frame_pass

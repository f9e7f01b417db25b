"""Training: eq. 11, tiny runs that learn, checkpoints and resuming, export with a full card."""

from __future__ import annotations

import pytest
import torch

from livepsf.errors import InputError
from livepsf.net.train import TrainConfig, eq11_loss, export_checkpoint, load_checkpoint, run_training, train

# Small pools keep the data synthesiser's start-up to a fraction of a second.
SMALL = {"texture_pool": 4, "texture_px": 256, "psf_pool": 16}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEPSF_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def held_out():
    """A small held-out G-2 set from the validation stream (small pools: fast)."""
    import numpy as np

    from livepsf.data.dataset import BatchSynthesizer
    from livepsf.optics import Optics, get_psf_model

    synth = BatchSynthesizer(get_psf_model("G-2"), Optics(), batch_size=48, seed=np.random.SeedSequence(99),
                             split="val", psf_pool=48, psf_refresh=48, **{k: v for k, v in SMALL.items()
                                                                          if k != "psf_pool"})
    return synth.next_batch()


def _config(**kw) -> TrainConfig:
    base = dict(psf_model="G-2", architecture="shared-trunk-tiny", name="tiny", batch_size=8, lr=1e-2,
                warmup_steps=2, val_n=32, val_every=10, checkpoint_every=10, workers=0, synth=SMALL, seed=3)
    return TrainConfig(**(base | kw))


def test_eq11_by_hand() -> None:
    # N = 2; patch 1 valid: 0.1² (validity) + (0.2² + 0.4²) / 4; patch 2 invalid: only its validity term.
    out = torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.9, 0.1]])  # sigmoid(0) = 0.5
    target = torch.tensor([[0.0, 0.3, 0.9], [1.0, 0.0, 0.0]])
    expected = ((0.5**2 + (0.2**2 + 0.4**2) / 4) + 0.5**2) / 2
    assert eq11_loss(out, target).item() == pytest.approx(expected, rel=1e-6)


def test_tiny_run_reduces_the_loss(tmp_path, held_out) -> None:
    held_x, held_t = held_out
    config = _config(steps=40)
    from livepsf.net.architectures import build_network

    torch.manual_seed(config.seed)
    start = build_network(config.architecture, 2).eval()
    with torch.no_grad():
        before = eq11_loss(start(held_x), held_t).item()
    result = train(config, tmp_path, progress=False, val_set=held_out)
    with torch.no_grad():
        after = eq11_loss(result.module(held_x), held_t).item()
    assert result.step == 40
    assert after < 0.8 * before
    assert result.history and result.history[-1]["step"] == 40


def test_checkpoint_and_resume(tmp_path, held_out) -> None:
    first = train(_config(steps=10), tmp_path / "a", progress=False, val_set=held_out)
    ckpt = load_checkpoint(first.checkpoint)
    assert ckpt["step"] == 10 and ckpt["config"]["psf_model"] == "G-2"
    resumed = train(_config(steps=20), tmp_path / "b", resume=first.checkpoint, progress=False, val_set=held_out)
    assert resumed.step == 20
    assert [h["step"] for h in resumed.history] == [10, 20]
    # Resuming with another PSF model or architecture is refused.
    with pytest.raises(InputError, match="psf_model"):
        train(_config(steps=20, psf_model="Z-1"), tmp_path / "c", resume=first.checkpoint, progress=False)


def test_bad_checkpoint_and_budget_are_refused(tmp_path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="not a livepsf training checkpoint"):
        load_checkpoint(junk)
    with pytest.raises(InputError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.ckpt")
    with pytest.raises(InputError, match="budget"):
        train(_config(), tmp_path, progress=False)
    with pytest.raises(InputError, match="unknown architecture"):
        train(_config(steps=1, architecture="alexnet"), tmp_path, progress=False)


def test_run_training_exports_a_full_card(tmp_path, held_out) -> None:
    from livepsf.net import load_model

    result, path = run_training(_config(steps=12), tmp_path, command="livepsf train --steps 12", progress=False,
                                n_robustness=0, val_set=held_out, test_set=held_out)
    net = load_model(path)
    card = net.card
    assert card.psf_model == "G-2" and card.architecture == "shared-trunk-tiny"
    assert card.training["steps"] == 12 and card.training["seed"] == 3
    assert card.training["command"] == "livepsf train --steps 12"
    assert "CPU" in card.training["hardware"] or "CUDA" in card.training["hardware"]
    assert set(card.evaluation["test"]["r2"]) == {"variance_x", "variance_y"}
    # The exported module gives the trained module's outputs.
    x = torch.rand(2, 1, 128, 128) * 100
    with torch.no_grad():
        torch.testing.assert_close(net.module(x), result.module(x))
    # An intermediate checkpoint exports the same way.
    again = export_checkpoint(result.checkpoint, tmp_path / "from_ckpt.pt", n_robustness=0, test_set=held_out)
    assert load_model(again).card.training["steps"] == 12

"""Training: eq. 11, tiny runs that learn, checkpoints and resuming, export with a full card."""

from __future__ import annotations

import pytest
import torch

from livepsf.errors import InputError
from livepsf.net.outputs import nearest_equivalent, sign_invariant_l1
from livepsf.net.train import (
    TrainConfig,
    calibrate_sigma,
    consistency_loss,
    eq11_loss,
    export_checkpoint,
    load_checkpoint,
    psf_loss,
    run_training,
    train,
    transform_targets,
)
from livepsf.optics import get_psf_model

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


def test_sign_invariant_loss_accepts_the_mirrored_parameter_set() -> None:
    """PSF(a) = PSF(-a): predicting (-f, -A) for a label (f, A) costs nothing in Z-3, something in G-2."""
    z3 = get_psf_model("Z-3")
    label = torch.tensor([[0.0, 0.05, 0.8, 0.4]])  # focus 0.1 waves, astig_0 +0.3, astig_45 -0.1
    mirror = torch.cat([torch.tensor([[-20.0]]), z3.normalise(-z3.denormalise(label[:, 1:]))], dim=1)
    assert psf_loss(mirror, label, z3, nll_weight=0.0).item() == pytest.approx(0.0, abs=1e-6)
    plain = psf_loss(mirror, label, z3, sign_invariant=False, nll_weight=0.0).item()
    assert plain == pytest.approx(eq11_loss(mirror, label).item()) and plain > 0.05
    g2 = get_psf_model("G-2")
    out, target = torch.tensor([[-20.0, 0.2, 0.7]]), torch.tensor([[0.0, 0.8, 0.3]])
    assert psf_loss(out, target, g2, nll_weight=0.0).item() == pytest.approx(eq11_loss(out, target).item())
    # The probes' plain-parameter L1 (livepsf.net.outputs) follows the same symmetry.
    assert sign_invariant_l1(mirror[:, 1:], label[:, 1:], z3).item() == pytest.approx(0.0, abs=1e-6)
    assert sign_invariant_l1(out[:, 1:], target[:, 1:], g2).item() == pytest.approx(0.6 + 0.4)


def test_errors_are_measured_against_the_nearer_parameter_set_never_per_parameter() -> None:
    """Near focus the mirrored set is the same PSF and is taken whole; far from focus a wrong astigmatism
    sign stays an error (a per-parameter choice would excuse it, flattering the σ calibration)."""
    z3 = get_psf_model("Z-3")
    phys = torch.tensor([[0.05, 0.3, -0.1], [1.5, 0.3, -0.1]])  # focus 0.05 and 1.5 waves
    label = z3.normalise(phys)
    canonical_guess = z3.normalise(phys * torch.tensor([1.0, -1.0, -1.0]))  # astigmatism's sign wrong
    chosen = nearest_equivalent(canonical_guess, label, z3)
    torch.testing.assert_close(chosen[0], z3.normalise(-phys[:1])[0])  # near focus: the mirror, whole
    torch.testing.assert_close(chosen[1], label[1])  # far from focus: the label; the astigmatism error counts
    assert float((canonical_guess[1] - chosen[1]).abs()[1]) == pytest.approx(0.6)  # 0.6 waves of 1.0 range
    g2 = get_psf_model("G-2")
    target = torch.tensor([[0.8, 0.3]])
    assert torch.equal(nearest_equivalent(torch.tensor([[0.2, 0.7]]), target, g2), target)


def test_nll_is_smallest_where_sigma_equals_the_error() -> None:
    """The σ column's loss is minimal at σ = |error| (valid) and at the prior spread (invalid patches)."""
    spec = get_psf_model("Z-1")
    target = torch.tensor([[0.0, 0.40], [1.0, 0.9]])
    mean = torch.tensor([0.46, 0.1])  # error 0.06 on the valid patch; the invalid one's mean is unused
    log_sigma = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([log_sigma], lr=0.05)
    for _ in range(600):
        out = torch.stack([torch.tensor([-20.0, 20.0]), mean, log_sigma], dim=1)
        loss = psf_loss(out, target, spec, nll_weight=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.exp(log_sigma[0]).item() == pytest.approx(0.06, rel=0.02)
    assert torch.exp(log_sigma[1]).item() == pytest.approx(0.4, rel=0.02)  # |0.9 - 0.5|


class _KnownErrors(torch.nn.Module):
    """Returns fixed outputs (log σ column shifted by its buffer), like a trained network would."""

    def __init__(self, raw: torch.Tensor) -> None:
        super().__init__()
        self.raw = raw
        self.register_buffer("log_sigma_shift", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idx = x[:, 0, 0, 0].long()
        out = self.raw[idx].clone()
        out[:, 2:] += self.log_sigma_shift
        return out


def test_calibrate_sigma_makes_the_coverage_right() -> None:
    from livepsf.net.evaluate import evaluate_outputs

    spec = get_psf_model("G-1")
    g = torch.Generator().manual_seed(0)
    n = 4000
    true_sigma = 0.02 + 0.1 * torch.rand(n, generator=g)
    truth = 0.3 + 0.4 * torch.rand(n, generator=g)
    pred = truth + true_sigma * torch.randn(n, generator=g)
    # The network's σ is right in shape but 3x too small: calibration must find the factor.
    raw = torch.stack([torch.full((n,), -20.0), pred, torch.log(true_sigma / 3.0)], dim=1)
    targets = torch.stack([torch.zeros(n), truth], dim=1)
    module = _KnownErrors(raw)
    x = torch.arange(n, dtype=torch.float32)[:, None, None, None].expand(n, 1, 2, 2)
    info = calibrate_sigma(module, x, targets, spec)
    assert info["factors"]["variance"] == pytest.approx(3.0, rel=0.06)
    res = evaluate_outputs(module(x), targets, spec)
    assert 0.66 <= res.within_1_sigma["variance"] <= 0.72
    assert res.within_2_sigma["variance"] >= 0.95


def _outputs(target: torch.Tensor) -> torch.Tensor:
    """Raw outputs (logit, normalised parameters, log σ) that read exactly ``target``."""
    n = target.shape[1] - 1
    return torch.cat([torch.full((len(target), 1), -5.0), target[:, 1:], torch.zeros(len(target), n)], dim=1)


@pytest.mark.parametrize("psf_model", ["Z-3", "G-2"])
def test_consistency_loss_is_zero_when_the_reading_follows_the_turn(psf_model) -> None:
    from livepsf.net.symmetry import DIHEDRAL_OPS

    spec = get_psf_model(psf_model)
    g = torch.Generator().manual_seed(0)
    target = torch.cat([torch.zeros(64, 1), spec.normalise(spec.canonical(spec.denormalise(
        torch.rand(64, spec.n_params, generator=g))))], dim=1)
    target[:8, 0] = 1.0  # invalid windows: their readings do not count
    first = _outputs(target)
    for k, flip in DIHEDRAL_OPS[1:]:
        turned = transform_targets(target, spec, k, flip)
        # A reading of the turned window that is the turned PSF agrees with the first reading.
        assert consistency_loss(first, _outputs(turned), target, spec, k, flip).item() < 1e-10
        # A reading that ignores the turn disagrees wherever the turn changes the PSF: a quarter turn flips
        # both astigmatism signs (Z-3) and swaps the x / y widths (G-2), a mirror flips astig_45; a half
        # turn changes neither, nor does a mirror a Gaussian's widths.
        ignored = consistency_loss(first, first, target, spec, k, flip).item()
        if k % 2 or (flip and psf_model == "Z-3"):
            assert ignored > 1e-3
        else:
            assert ignored < 1e-10
    if spec.name == "Z-3":  # the sign mirror of a reading is the same PSF
        mirrored = transform_targets(target, spec, 1, False)
        mirrored[:, 1:] = spec.normalise(-spec.denormalise(mirrored[:, 1:]))
        assert consistency_loss(first, _outputs(mirrored), target, spec, 1, False).item() < 1e-10
    # Only valid windows count: disagreement on the invalid ones alone costs nothing.
    noisy = transform_targets(target, spec, 2, True)
    noisy[:8, 1:] = 1.0 - noisy[:8, 1:]
    assert consistency_loss(first, _outputs(noisy), target, spec, 2, True).item() < 1e-10


def test_tiny_run_with_dihedral_consistency(tmp_path, held_out) -> None:
    result = train(_config(steps=12, consistency_weight=0.5), tmp_path, progress=False, val_set=held_out)
    assert result.step == 12 and all(torch.isfinite(p).all() for p in result.module.parameters())
    assert load_checkpoint(result.checkpoint)["config"]["consistency_weight"] == 0.5
    with pytest.raises(InputError, match="consistency_weight"):
        train(_config(steps=1, consistency_weight=-1.0), tmp_path / "bad", progress=False)


def test_tiny_run_reduces_the_loss(tmp_path, held_out) -> None:
    held_x, held_t = held_out
    config = _config(steps=40)
    from livepsf.net.architectures import build_network

    torch.manual_seed(config.seed)
    start = build_network(config.architecture, 2).eval()
    assert start.n_outputs == 1 + 2 * 2  # σ outputs by default
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
    # Checkpoints written before learning-rate factors and warm starts (training/checkpoints/) still resume.
    for key in ("pretrained",):
        ckpt.pop(key)
    for group in ckpt["optimiser"]["param_groups"]:
        group.pop("lr_factor")
    older = tmp_path / "older.ckpt"
    torch.save(ckpt, older)
    assert train(_config(steps=12), tmp_path / "g", resume=older, progress=False, val_set=held_out).step == 12
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
    assert card.uncertainty and set(card.training["sigma_calibration"]["factors"]) == {"variance_x", "variance_y"}
    assert set(card.evaluation["test"]["within_1_sigma"]) == {"variance_x", "variance_y"}
    assert set(net.predict(torch.rand(2, 128, 128) * 100)) >= {"variance_x_sigma", "variance_y_sigma"}
    # The exported module gives the trained module's outputs.
    x = torch.rand(2, 1, 128, 128) * 100
    with torch.no_grad():
        torch.testing.assert_close(net.module(x), result.module(x))
    assert card.training["sigma_calibration"]["n_windows"] == len(held_out[0])  # the val_set given
    # An intermediate checkpoint exports the same way; σ can be calibrated there on a larger validation set.
    again = export_checkpoint(result.checkpoint, tmp_path / "from_ckpt.pt", n_robustness=0, test_set=held_out,
                              calibration_n=40, name="shipped")
    assert load_model(again).card.training["steps"] == 12 and load_model(again).card.name == "shipped"
    assert load_model(again).card.training["sigma_calibration"]["n_windows"] == 40


def test_lineage_lists_the_segments_behind_a_warm_started_run_in_training_order() -> None:
    from livepsf.net.train import lineage

    gpu = [{"command": "a", "hardware": "CUDA"}, {"command": "b", "hardware": "CUDA"}]
    cpu = {"command": "c", "hardware": "CPU", "init_from_segments": gpu}
    later = {"command": "d", "hardware": "CPU"}
    assert [s["command"] for s in lineage([cpu, later])] == ["a", "b", "c", "d"]
    assert lineage([]) == []


def test_a_run_can_start_from_trained_weights(tmp_path, held_out) -> None:
    """``init_from`` starts a new run (step 0, fresh optimiser) from an exported model or a checkpoint."""
    first = train(_config(steps=10), tmp_path / "a", progress=False, val_set=held_out)
    trained = {k: v.clone() for k, v in first.module.state_dict().items()}
    # Zero steps of learning rate: the new run's network is the trained one, whichever file it came from.
    for source in (first.checkpoint, export_checkpoint(first.checkpoint, tmp_path / "a.pt", n_robustness=0,
                                                        test_set=held_out)):
        again = train(_config(steps=1, lr=0.0, warmup_steps=0, init_from=str(source)), tmp_path / "b",
                      progress=False, val_set=held_out)
        assert again.step == 1 and again.segments[-1]["init_from"] == str(source)
        # The run records the segments that made its starting weights: its card lists them all.
        assert again.segments[-1]["init_from_segments"] == first.segments
        for key, value in trained.items():
            if key != "log_sigma_shift":  # the σ calibration after training adds to the shift
                torch.testing.assert_close(again.module.state_dict()[key], value)
    # With a learning-rate factor of 0 the supplied weights stay put while the run trains; a resumed run
    # re-makes the same optimiser groups from its checkpoint.
    frozen = train(_config(steps=3, init_from=str(first.checkpoint), init_lr_factor=0.0), tmp_path / "e",
                   progress=False, val_set=held_out)
    assert frozen.segments[-1]["init_lr_factor"] == 0.0
    for key, value in trained.items():
        if key != "log_sigma_shift":
            torch.testing.assert_close(frozen.module.state_dict()[key], value)
    resumed = train(_config(steps=5), tmp_path / "f", resume=frozen.checkpoint, progress=False, val_set=held_out)
    assert resumed.step == 5
    with pytest.raises(InputError, match="do not fit"):
        train(_config(steps=1, architecture="shared-trunk", init_from=str(first.checkpoint)), tmp_path / "c",
              progress=False, val_set=held_out)
    with pytest.raises(InputError, match="no such model"):
        train(_config(steps=1, init_from=str(tmp_path / "missing.pt")), tmp_path / "d", progress=False)

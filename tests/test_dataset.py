"""The on-the-fly dataset: batch format, reproducibility, split separation, exact labels, eval-set cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from livepsf.data import textures as T
from livepsf.data.dataset import (
    EVAL_IMAGES,
    TRAIN_IMAGES,
    BatchSynthesizer,
    PatchDataset,
    default_psf_size_px,
    eval_set,
    eval_synthesizer,
)
from livepsf.data.degrade import DegradationConfig, blur_fft, illumination_ramp
from livepsf.optics import Optics, get_psf_model, psf_batch

# Small and quick: 32 px windows, small pools.
SMALL = dict(window_px=32, batch_size=8, psf_pool=8, psf_refresh=2, texture_pool=3, texture_px=192)


def _ds(**kw) -> PatchDataset:
    return PatchDataset(**({"psf_model": "Z-3"} | SMALL | kw))


def test_batches_are_raw_camera_values_with_normalised_targets():
    patches, targets = next(iter(_ds(seed=1, degradation=DegradationConfig(noise_free_fraction=0.0))))
    assert patches.shape == (8, 1, 32, 32) and patches.dtype == torch.float32
    assert targets.shape == (8, 4) and targets.dtype == torch.float32
    assert set(targets[:, 0].tolist()) <= {0.0, 1.0}
    assert float(targets[:, 1:].min()) >= 0.0 and float(targets[:, 1:].max()) <= 1.0
    # Not normalised: whole ADU, offsets and gains differ from patch to patch.
    assert torch.equal(patches, patches.round())
    assert float(patches.amax(dim=(1, 2, 3)).max()) > 10.0
    assert len(set(patches.mean(dim=(1, 2, 3)).round().tolist())) > 4


def test_patch_larger_than_window_keeps_one_psf_per_patch():
    patches, targets = next(iter(_ds(patch_px=48)))
    assert patches.shape == (8, 1, 48, 48) and targets.shape == (8, 4)


def test_same_seed_same_batches_other_seed_other_batches():
    a = [b for _, b in zip(range(2), _ds(seed=3))]
    b = [b for _, b in zip(range(2), _ds(seed=3))]
    c = next(iter(_ds(seed=4)))
    for (pa, ta), (pb, tb) in zip(a, b):
        assert torch.equal(pa, pb) and torch.equal(ta, tb)
    assert not torch.equal(a[0][0], c[0])


def test_splits_and_epochs_draw_different_streams():
    train = next(iter(_ds(seed=0, split="train")))
    val = next(iter(_ds(seed=0, split="val")))
    test = next(iter(_ds(seed=0, split="test")))
    assert not torch.equal(train[1], val[1]) and not torch.equal(val[1], test[1])
    ds = _ds(seed=0)
    ds.set_epoch(1)
    assert not torch.equal(next(iter(ds))[1], train[1])


def test_training_never_uses_the_held_out_images():
    assert not set(EVAL_IMAGES) & set(TRAIN_IMAGES)
    assert set(EVAL_IMAGES) | set(TRAIN_IMAGES) == set(T.SHIPPED_IMAGES)
    synth = _ds(split="train").synthesizer()
    assert set(synth._shipped["names"]) == set(TRAIN_IMAGES)
    val, test = _ds(split="val").synthesizer(), _ds(split="test").synthesizer()
    # val and test crop disjoint halves (columns) of the held-out images.
    assert val._shipped["region"][3] <= test._shipped["region"][2]


def test_dataloader_workers_split_the_epoch_without_duplicates():
    ds = _ds(seed=2, n_batches=4, psf_pool=4, psf_refresh=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    batches = list(loader)
    assert len(batches) == 4
    patches = torch.cat([p for p, _ in batches]).flatten(1)
    assert len({tuple(row[:64].tolist()) for row in patches}) == len(patches)
    # The two workers' streams differ from each other and from a single-process run.
    assert not torch.equal(batches[0][1], batches[1][1])


def test_labels_are_the_physical_psf_of_each_patch_after_the_dihedral_transform():
    """A delta texture, no noise: each patch must be the PSF of its (transformed) label."""
    spec = get_psf_model("Z-3")
    synth = BatchSynthesizer(spec, Optics(), window_px=128, batch_size=8,
                             degradation=DegradationConfig.clean(invert_fraction=0.0, invalid_fraction=0.0),
                             seed=5, psf_pool=8, psf_refresh=0, texture_pool=1, texture_refresh=0.0)
    f = synth.fft_px
    delta = np.zeros((f, f), dtype=np.float32)
    delta[f // 2, f // 2] = 1.0
    synth.textures = [delta]  # crop offset is always 0: the PSF lands on the patch centre
    patches, targets, info = synth.next_batch(details=True)
    assert bool((info["dihedral"] % 4 % 2 == 1).any()), "want at least one quarter turn in this batch"
    labels = spec.denormalise(targets[:, 1:].double())
    pool_values = synth.pool_values[info["psf_index"]]

    def moments(img: torch.Tensor) -> torch.Tensor:
        img = img.double() / img.sum(dim=(-2, -1), keepdim=True)
        r = torch.arange(img.shape[-1], dtype=torch.float64)
        my, mx = (img.sum(-1) * r).sum(-1), (img.sum(-2) * r).sum(-1)
        dy, dx = r[None] - my[:, None], r[None] - mx[:, None]
        vyy = (img.sum(-1) * dy**2).sum(-1)
        vxx = (img.sum(-2) * dx**2).sum(-1)
        vxy = (img * dy[:, :, None] * dx[:, None, :]).sum((-2, -1))
        return torch.stack([vxx, vyy, vxy], dim=1)

    got = moments(patches[:, 0])
    expected = moments(psf_batch(spec, labels, 127))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0.05, atol=0.5)
    untransformed = moments(psf_batch(spec, pool_values, 127))
    turned = (info["dihedral"] % 2 == 1) & (pool_values[:, 1:].abs().max(dim=1).values > 0.15)
    if bool(turned.any()):  # the pre-transform label would be wrong on those patches
        assert float((untransformed[turned] - got[turned]).abs().max()) > 5.0


def test_details_hold_the_sharp_crop_and_texture_kind_that_made_each_patch():
    """Blurring details["sharp"] with the patch's PSF, turning it and lighting it gives its electrons."""
    synth = _ds(sources={"cells": 1.0, "lines": 1.0}, psf_refresh=8, batch_size=16).synthesizer()
    info = synth.next_batch(details=True)[2]
    cond = info["conditions"]
    assert info["sharp"].shape == (16, synth.fft_px, synth.fft_px)
    assert set(info["texture_kind"]) <= {"cells", "lines", "blank"}
    assert [k == "blank" for k in info["texture_kind"]] == cond.blank.tolist()
    blurred = blur_fft(info["sharp"], synth.pool_spectra[info["psf_index"]], synth.psf_size_px, synth.patch_px)
    for i in range(16):
        op = int(info["dihedral"][i])
        turned = torch.rot90(blurred[i], op % 4, dims=(0, 1))
        turned = torch.flip(turned, dims=(0,)) if op >= 4 else turned
        ramp = illumination_ramp(synth.patch_px, cond.gradient[i:i + 1], cond.gradient_angle[i:i + 1])[0]
        photons = 0.0 if bool(cond.black[i]) else float(cond.photons[i])
        expected = (turned + float(cond.background[i])) * photons * ramp
        torch.testing.assert_close(info["electrons"][i], expected, rtol=1e-4, atol=1e-3 * max(photons, 1.0))


def test_eval_synthesizer_makes_eval_sets_patches(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEPSF_CACHE_DIR", str(tmp_path))
    spec, optics = get_psf_model("Z-3"), Optics()
    patches, targets = eval_set(spec, "test", n=12, window_px=32)
    synth = eval_synthesizer(spec, "test", 12, 32, 32, DegradationConfig(), optics)
    x, t, info = synth.next_batch(details=True)
    assert torch.equal(x, patches) and torch.equal(t, targets)
    assert len(info["texture_kind"]) == 12


def test_invalid_fraction_and_explicit_blank_black_patches():
    cfg = DegradationConfig(invalid_fraction=1.0, black_fraction=0.5)
    _, targets, info = _ds(degradation=cfg, batch_size=16).synthesizer().next_batch(details=True)
    assert torch.all(targets[:, 0] == 1.0)
    cond = info["conditions"]
    assert bool(cond.black.any()) and bool(cond.blank.any())
    _, targets = next(iter(_ds(degradation=DegradationConfig(invalid_fraction=0.0), sources={"fractal_noise": 1.0})))
    assert float(targets[:, 0].mean()) < 0.5


def test_default_psf_size_covers_the_largest_blur():
    optics = Optics()
    size = default_psf_size_px(get_psf_model("Z-3"), optics)
    assert size % 2 == 1 and 100 <= size <= 130
    psf = psf_batch("Z-3", torch.tensor([[2.0, 0.5, 0.5]]), 201, optics)[0]
    c, r = 100, size // 2
    assert float(psf[c - r : c + r + 1, c - r : c + r + 1].sum()) > 0.99
    assert default_psf_size_px(get_psf_model("G-2"), optics) == 49


def test_eval_set_is_fixed_cached_and_disjoint_from_test(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEPSF_CACHE_DIR", str(tmp_path))
    p1, t1 = eval_set("Z-1", "val", n=10, window_px=32)
    files = list((tmp_path / "eval").glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as data:  # plain arrays, no pickle
        # Whole ADU are stored as uint16; a set holding noise-free (unrounded) patches stays float32.
        whole = bool(torch.equal(p1, p1.round()))
        assert data["patches"].dtype == (np.uint16 if whole else np.float32)
        assert data["patches"].shape == (10, 1, 32, 32)
    p2, t2 = eval_set("Z-1", "val", n=10, window_px=32)
    assert torch.equal(p1, p2) and torch.equal(t1, t2)
    p3, t3 = eval_set("Z-1", "val", n=10, window_px=32, cache=False)
    assert torch.equal(p1, p3) and torch.equal(t1, t3)  # regenerated from scratch: same set
    pt, tt = eval_set("Z-1", "test", n=10, window_px=32)
    assert not torch.equal(t1, tt)
    with pytest.raises(ValueError, match="val"):
        eval_set("Z-1", "train", n=4)


def test_clean_eval_set_feeds_the_robustness_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVEPSF_CACHE_DIR", str(tmp_path))
    clean, targets = eval_set("G-1", "test", n=64, window_px=32, degradation=DegradationConfig.clean())
    assert clean.dtype == torch.float32 and float(clean.min()) >= 0.0 and float(clean.max()) <= 1.0 + 1e-5
    # Noise-free patches have no noise to be buried in: only the explicit blank/black ones and flat or
    # white windows are invalid, so the sweep scores most of the set (regression: the blurred-SNR rule
    # once flagged nearly all of it, with photons = 1).
    assert float((targets[:, 0] < 0.5).float().mean()) > 0.6


def test_preview_command_writes_a_png_and_never_overwrites(tmp_path):
    from qtpy.QtGui import QImage

    from livepsf.cli import main

    out = tmp_path / "preview.png"
    with pytest.raises(SystemExit) as exc:
        main(["data", "preview", "--psf-model", "G-1", "--out", str(out), "--n", "4", "--columns", "2"])
    assert exc.value.code in (0, None)
    img = QImage(str(out))
    assert not img.isNull() and img.width() > 2 * 128 and img.height() > 2 * 128
    before = out.read_bytes()
    with pytest.raises(SystemExit):
        main(["data", "preview", "--psf-model", "G-1", "--out", str(out), "--n", "2"])
    assert out.read_bytes() == before and (tmp_path / "preview-1.png").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["data", "preview", "--psf-model", "Q-7", "--out", str(tmp_path / "x.png")])
    assert exc.value.code == 2


def test_held_out_textures_only_outside_training():
    with pytest.raises(ValueError, match="not allowed in the train split"):
        _ds(split="train", sources={"voronoi": 1.0}).synthesizer()
    patches, targets = next(iter(_ds(split="test", sources={"voronoi": 1.0})))
    assert patches.shape == (8, 1, 32, 32)


def test_noise_free_patches_are_expected_values_and_the_camera_never_saturates():
    """Noise-free patches: offset + gain x electrons exactly; every patch stays below 90 % of the ADC."""
    cfg = DegradationConfig(noise_free_fraction=0.5, photons=(1e5, 1e6), gain_adu=(4.0, 4.0))
    synth = _ds(degradation=cfg, batch_size=16).synthesizer()
    patches, targets, info = synth.next_batch(details=True)
    cond, electrons = info["conditions"], info["electrons"]
    nf = cond.noise_free
    assert bool(nf.any()) and bool((~nf).any())
    gain = cond.gain_below_saturation(electrons.flatten(1).amax(dim=1))
    assert bool((gain < 4.0).all())  # 1e5+ photons x 4 ADU/e would pass 65535: the gain was lowered
    expected = cond.offset_adu[:, None, None] + gain[:, None, None] * electrons.double()
    np.testing.assert_allclose(patches[nf, 0].numpy(), expected[nf].numpy(), rtol=1e-5)
    assert float(patches.max()) < 0.9 * 65535 + 1000  # noise of up to ~1000 ADU above the expected peak
    noisy = patches[~nf, 0].double() - expected[~nf]
    assert float(noisy.std()) > 1.0 and torch.equal(patches[~nf], patches[~nf].round())


def test_shortcut_statistics_measure_what_they_say():
    """Noise level, orientation and contrast statistics behave on known patches; the report's R² is sane."""
    from livepsf.data.shortcuts import patch_statistics, shortcut_report

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2, 64, 64, generator=g) * 10 + 500
    ramp = torch.linspace(0, 1, 64)[None, None, :].expand(2, 64, 64) * 100 + 500
    lines = torch.from_numpy(np.stack([T.lines((64, 64), np.random.default_rng(i), n_lines=0, spacing_px=9.0,
                                               width_px=3.0, angle_deg=20.0) for i in range(2)]))
    stats = patch_statistics(torch.cat([noise, ramp, lines]))
    assert np.all(np.abs(stats["noise"][:2] - 1.0) < 0.1) and np.all(stats["noise"][2:4] < 0.05)
    assert np.all(stats["orientation"][4:] > 0.9) and np.all(stats["orientation"][:2] < 0.2)
    # A label that is a function of the mean is found; an independent one is not.
    spec = get_psf_model("G-2")
    x = torch.rand(400, 1, 16, 16, generator=g) * torch.linspace(1, 100, 400)[:, None, None, None]
    u = torch.rand(400, generator=g)
    targets = torch.stack([torch.zeros(400), torch.linspace(0, 1, 400), u], dim=1)
    report = shortcut_report(x, targets, spec)
    assert report["mean"]["variance_x"] > 0.9 and report["mean"]["variance_y"] < 0.1

"""Architectures: the module contract (forward/map_frame agree, offset/gain invariance, TorchScript)."""

from __future__ import annotations

import pytest
import torch

from livepsf.net.architectures import (
    ARCHITECTURES,
    BinnedSpectrum,
    ResNet34,
    SharedTrunkNet,
    SpectralBranch,
    build_network,
)


def _unfolded_forward(net: torch.nn.Module, frame: torch.Tensor, stride: int) -> torch.Tensor:
    w = net.window_px
    windows = frame[0, 0].unfold(0, w, stride).unfold(1, w, stride)
    gy, gx = windows.shape[:2]
    return net(windows.reshape(gy * gx, 1, w, w)).reshape(gy, gx, -1).permute(2, 0, 1)


@pytest.mark.parametrize("arch", ["shared-trunk", "shared-trunk-separable", "shared-trunk-tiny", "shared-trunk-m2",
                                  "shared-trunk-deep", "shared-trunk-wide", "shared-trunk-spectral",
                                  "shared-trunk-spectrum-bins", "resnet34-tiny"])
def test_map_frame_equals_per_window_forward(arch: str) -> None:
    torch.manual_seed(0)
    net = build_network(arch, n_params=3).eval()
    frame = torch.rand(1, 1, 128 + 2 * 64, 128 + 3 * 64) * 1000.0
    with torch.no_grad():
        mapped = net.map_frame(frame, 64)
        reference = _unfolded_forward(net, frame, 64)
    assert mapped.shape == (1 + 2 * 3, 3, 4)  # invalid logit, 3 parameters, 3 log-sigmas
    torch.testing.assert_close(mapped, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["shared-trunk", "shared-trunk-deep", "shared-trunk-wide", "shared-trunk-spectral"])
@pytest.mark.parametrize("stride", [16, 32, 128])
def test_map_frame_equals_per_window_forward_at_other_strides(arch: str, stride: int) -> None:
    """Pooling steps of 2, 4 and 16 trunk cells: windows much longer than the step, and shorter than it."""
    torch.manual_seed(0)
    net = build_network(arch, n_params=1).eval()
    frame = torch.rand(1, 1, 128 + 2 * stride, 128 + stride) * 1000.0
    with torch.no_grad():
        mapped = net.map_frame(frame, stride)
        reference = _unfolded_forward(net, frame, stride)
    assert mapped.shape == (3, 3, 2)
    torch.testing.assert_close(mapped, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["shared-trunk", "resnet34-tiny"])
def test_networks_without_uncertainty_keep_the_old_contract(arch: str) -> None:
    net = build_network(arch, n_params=3, uncertainty=False).eval()
    with torch.no_grad():
        assert net(torch.rand(2, 1, 128, 128)).shape == (2, 4)
    assert net.n_outputs == 4 and net.log_sigma_shift.numel() == 0


def test_log_sigma_shift_scales_sigma_only() -> None:
    torch.manual_seed(3)
    net = build_network("shared-trunk-tiny", n_params=2).eval()
    x = torch.rand(2, 1, 128, 128) * 100.0
    with torch.no_grad():
        before = net(x)
        net.log_sigma_shift.copy_(torch.tensor([0.5, -1.0]))
        after = net(x)
        scripted = torch.jit.script(net)(x)
    torch.testing.assert_close(after[:, :3], before[:, :3])
    torch.testing.assert_close(after[:, 3:] - before[:, 3:], torch.tensor([[0.5, -1.0]] * 2))
    torch.testing.assert_close(scripted, after)


@pytest.mark.parametrize("arch", ["shared-trunk", "shared-trunk-separable", "shared-trunk-deep", "shared-trunk-wide",
                                  "shared-trunk-spectral", "shared-trunk-spectrum-bins", "resnet34-tiny"])
def test_offset_and_gain_invariance(arch: str) -> None:
    torch.manual_seed(1)
    net = build_network(arch, n_params=2).double().eval()
    x = torch.rand(3, 1, 128, 128, dtype=torch.float64) * 200.0
    with torch.no_grad():
        ref = net(x)
        for a, b in [(0.01, 0.0), (37.0, 1e4), (1.0, -50.0)]:
            torch.testing.assert_close(net(a * x + b), ref, atol=1e-6, rtol=1e-6)


def test_wide_stem_is_pooled_and_squeezed() -> None:
    """The wide stem's filters all reach the head; the blocks see ``width`` channels."""
    net = SharedTrunkNet(2, width=16, depth=2, stem_width=40, hidden=8).eval()
    with torch.no_grad():
        stages = net.stages(torch.rand(1, 1, 128, 128))
    assert [h.shape[1] for h in stages] == [40, 16, 16]
    assert net.head[0].in_features == 40 + 2 * 16
    assert isinstance(build_network("shared-trunk", 1).squeeze, torch.nn.Identity)  # old files keep their keys


def test_spectral_warm_start_reproduces_the_trained_trunk() -> None:
    """Started from a trunk network, the spectral network gives its outputs exactly until it trains."""
    torch.manual_seed(4)
    trunk = build_network("shared-trunk", n_params=3).eval()
    with torch.no_grad():
        trunk.log_sigma_shift.copy_(torch.tensor([0.1, -0.2, 0.3]))  # a calibrated σ comes along
    spectral = build_network("shared-trunk-spectral", n_params=3).eval()
    spectral.warm_start(trunk.state_dict())
    x = torch.rand(4, 1, 128, 128) * 300.0
    frame = torch.rand(1, 1, 256, 320) * 300.0
    with torch.no_grad():
        torch.testing.assert_close(spectral(x), trunk(x))
        torch.testing.assert_close(spectral.map_frame(frame, 64), trunk.map_frame(frame, 64))
    assert float(spectral.spectral_in.weight.detach().abs().max()) == 0.0


DISK_RADIUS_PX = 8.0
#: The first zeros of a uniform disk's MTF, in frequency samples of a 128-px window (0.61 / r, 1.117 / r
#: and 1.619 / r cycles per pixel): the rings the spectral features are there to see.
DISK_ZEROS_BINS = [0.61 / DISK_RADIUS_PX * 128, 1.117 / DISK_RADIUS_PX * 128, 1.619 / DISK_RADIUS_PX * 128]


def _disk_blurred_noise(window: int = 128) -> torch.Tensor:
    """A ``(1, 1, window, window)`` crop of white noise blurred by a uniform disk of DISK_RADIUS_PX."""
    gen = torch.Generator().manual_seed(5)
    n = 2 * window
    yy, xx = torch.meshgrid(torch.arange(n) - n // 2, torch.arange(n) - n // 2, indexing="ij")
    disk = ((yy ** 2 + xx ** 2) <= DISK_RADIUS_PX ** 2).double()
    disk = torch.fft.ifftshift(disk / disk.sum())
    noise = torch.rand(n, n, generator=gen, dtype=torch.float64)
    blurred = torch.fft.irfft2(torch.fft.rfft2(noise) * torch.fft.rfft2(disk), s=(n, n))
    return blurred[None, None, :window, :window]


def _dips(profile: torch.Tensor) -> list[int]:
    """Indices lower than both neighbours on each side, two deep."""
    return [k for k in range(2, len(profile) - 2) if profile[k] < profile[[k - 2, k - 1, k + 1, k + 2]].min()]


def test_binned_spectrum_shows_the_defocus_disk_zeros() -> None:
    """Averaged over the angular sectors, the rings of the binned log spectrum dip at the disk's zeros
    and nowhere else."""
    bins = BinnedSpectrum(128, n_radial=32, n_angular=8).double()
    features = bins(_disk_blurred_noise())[0]
    assert features.shape == (bins.n_features,) and bool(torch.isfinite(features).all())
    # Ring k of 32 holds frequencies [2k, 2k + 2) samples.
    profile = torch.stack([features[bins.ring_of_feature == k].mean() for k in range(16)])
    dips = [2 * k + 1 for k in _dips(profile)]  # ring centres in frequency samples
    assert len(dips) == 3  # the three zeros below 32 samples, and nothing else
    assert all(abs(dip - zero) <= 1.5 for dip, zero in zip(dips, DISK_ZEROS_BINS))


def test_spectral_branch_shows_the_defocus_disk_zero() -> None:
    """The log spectrum of noise blurred by a uniform disk dips at the disk's MTF zeros and nowhere
    else: the rings the branch is there to see."""
    window = 128
    branch = SpectralBranch(window).double()
    log_spectrum = branch.log_spectrum(_disk_blurred_noise(window))[0, 0]
    # Radial profile in one-bin rings (rows are centred by the fftshift, columns start at frequency 0).
    fy = torch.fft.fftshift(torch.fft.fftfreq(window))[:, None]
    fx = torch.fft.rfftfreq(window)[None, :]
    ring = torch.round(torch.sqrt(fy ** 2 + fx ** 2) * window).long()
    profile = torch.stack([log_spectrum[ring == k].mean() for k in range(24)])
    dips = _dips(profile)
    assert len(dips) == 2  # the two zeros below 22 samples, and nothing else
    assert all(abs(dip - zero) <= 1.0 for dip, zero in zip(dips, DISK_ZEROS_BINS))


@pytest.mark.parametrize("arch", ["shared-trunk", "shared-trunk-spectral", "shared-trunk-spectrum-bins"])
def test_scripted_network_keeps_contract(tmp_path, arch: str) -> None:
    torch.manual_seed(2)
    net = build_network(arch, n_params=1).eval()
    scripted = torch.jit.script(net)
    path = tmp_path / "m.pt"
    scripted.save(str(path))
    loaded = torch.jit.load(str(path))
    x = torch.rand(2, 1, 128, 128)
    frame = torch.rand(1, 1, 256, 192)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
        torch.testing.assert_close(loaded.map_frame(frame, 64), net.map_frame(frame, 64))


def test_resnet34_has_the_paper_layout() -> None:
    net = ResNet34(n_params=3)
    blocks = [m for m in net.body]
    assert len(blocks) == 3 + 4 + 6 + 3
    assert net.fc.out_features == 1 + 2 * 3
    # ~21.3 M parameters for the grey, 4-output ResNet-34
    assert 20e6 < sum(p.numel() for p in net.parameters()) < 22e6


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="multiple of patch_px"):
        SharedTrunkNet(1, window_px=100, patch_px=8)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network("vgg", 1)
    with pytest.raises(ValueError, match="stride"):
        build_network("shared-trunk", 1).map_frame(torch.zeros(1, 1, 256, 256), 12)
    assert "resnet34" in ARCHITECTURES

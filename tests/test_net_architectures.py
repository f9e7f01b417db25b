"""Architectures: the module contract (forward/map_frame agree, offset/gain invariance, TorchScript)."""

from __future__ import annotations

import pytest
import torch

from livepsf.net.architectures import ARCHITECTURES, ResNet34, SharedTrunkNet, build_network


def _unfolded_forward(net: torch.nn.Module, frame: torch.Tensor, stride: int) -> torch.Tensor:
    w = net.window_px
    windows = frame[0, 0].unfold(0, w, stride).unfold(1, w, stride)
    gy, gx = windows.shape[:2]
    return net(windows.reshape(gy * gx, 1, w, w)).reshape(gy, gx, -1).permute(2, 0, 1)


@pytest.mark.parametrize("arch", ["shared-trunk", "shared-trunk-separable", "shared-trunk-tiny", "shared-trunk-m2",
                                  "shared-trunk-deep", "shared-trunk-wide", "resnet34-tiny"])
def test_map_frame_equals_per_window_forward(arch: str) -> None:
    torch.manual_seed(0)
    net = build_network(arch, n_params=3).eval()
    frame = torch.rand(1, 1, 128 + 2 * 64, 128 + 3 * 64) * 1000.0
    with torch.no_grad():
        mapped = net.map_frame(frame, 64)
        reference = _unfolded_forward(net, frame, 64)
    assert mapped.shape == (1 + 2 * 3, 3, 4)  # invalid logit, 3 parameters, 3 log-sigmas
    torch.testing.assert_close(mapped, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["shared-trunk", "shared-trunk-deep", "shared-trunk-wide"])
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
                                  "resnet34-tiny"])
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


def test_scripted_network_keeps_contract(tmp_path) -> None:
    torch.manual_seed(2)
    net = build_network("shared-trunk", n_params=1).eval()
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

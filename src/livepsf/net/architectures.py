"""Network architectures in plain torch (no torchvision).

Every network maps raw-intensity windows ``(B, 1, W, W)`` to ``(B, 1 + N)`` (invalid logit, then the N
parameters normalised to [0, 1]) and has ``map_frame(frame (1, 1, H, W), stride) -> (1 + N, gy, gx)``
giving the same outputs for all windows whose top-left corners lie on a ``stride`` grid.

:class:`SharedTrunkNet` is the fast architecture for the live map. Its trunk is fully convolutional and
runs once over the whole frame; each window's features are an average pool of the trunk over the window.
Two properties make the frame pass give *exactly* the per-window result:

* all trunk convolutions are "valid" (no padding), and each window pools only trunk positions whose
  receptive field lies inside the window, so nothing outside a window leaks into its features;
* the trunk is bias-free with ReLUs and its first layer has zero-sum kernels, so it is invariant to an
  intensity offset and scales linearly with gain; dividing the pooled feature vector by its norm then
  makes the features independent of offset and gain, per window, without per-window normalisation of
  the input (which could not be shared between overlapping windows).
"""

# No `from __future__ import annotations`: TorchScript needs real annotations on these classes.

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SharedTrunkNet", "build_network", "ARCHITECTURES"]


class _ZeroSumConv(nn.Conv2d):
    """Bias-free convolution whose kernels are made zero-sum on every forward (offset invariance)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)


class _SeparableBlock(nn.Module):
    """Depthwise 3x3 (valid) then pointwise conv, ReLU; bias-free so the trunk stays homogeneous."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(channels_in, channels_in, 3, groups=channels_in, bias=False)
        self.pointwise = nn.Conv2d(channels_in, channels_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.pointwise(self.depthwise(x)))


class SharedTrunkNet(nn.Module):
    """Fast PSF-parameter network whose trunk is shared by overlapping windows.

    Parameters
    ----------
    n_params
        Number of PSF parameters N (outputs are 1 + N).
    window_px
        Window side in pixels; a multiple of ``patch_px``.
    width
        Trunk channels.
    depth
        Number of separable 3x3 blocks after the patchify stem.
    patch_px
        Side of the non-overlapping pixel blocks the stem projects (the trunk's stride).
    """

    window_px: int
    patch_px: int
    n_outputs: int
    pool_cells: int

    def __init__(self, n_params: int, window_px: int = 128, width: int = 48, depth: int = 3,
                 patch_px: int = 8, hidden: int = 96) -> None:
        super().__init__()
        if window_px % patch_px:
            raise ValueError(f"window_px ({window_px}) must be a multiple of patch_px ({patch_px})")
        cells = window_px // patch_px - 2 * depth
        if cells < 1:
            raise ValueError("window too small for the trunk's depth")
        self.window_px = window_px
        self.patch_px = patch_px
        self.n_outputs = 1 + n_params
        self.pool_cells = cells
        self.stem = _ZeroSumConv(1, width, kernel_size=patch_px, stride=patch_px, bias=False)
        self.blocks = nn.Sequential(*[_SeparableBlock(width, width) for _ in range(depth)])
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, self.n_outputs))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(F.relu(self.stem(x)))

    def _head(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled`` is ``(..., width)``; returns ``(..., 1 + N)``."""
        norm = torch.linalg.vector_norm(pooled, 2.0, dim=-1, keepdim=True)
        return self.head(pooled / (norm + 1e-6 * (1.0 + norm)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x)
        pooled = features[:, :, : self.pool_cells, : self.pool_cells].mean(dim=(-2, -1))
        return self._head(pooled)

    @torch.jit.export
    def map_frame(self, frame: torch.Tensor, stride: int) -> torch.Tensor:
        if stride % self.patch_px != 0:
            raise ValueError("stride must be a multiple of the network's patch size")
        features = self.trunk(frame)
        step = stride // self.patch_px
        pooled = F.avg_pool2d(features, kernel_size=self.pool_cells, stride=step)  # (1, C, gy, gx)
        return self._head(pooled[0].permute(1, 2, 0)).permute(2, 0, 1)


ARCHITECTURES = {
    # name: (class, keyword arguments)
    "shared-trunk-tiny": (SharedTrunkNet, {"width": 8, "depth": 1, "hidden": 16}),
    "shared-trunk": (SharedTrunkNet, {"width": 48, "depth": 3, "hidden": 96}),
}


def build_network(architecture: str, n_params: int, window_px: int = 128) -> nn.Module:
    """A fresh, untrained network by architecture name (see :data:`ARCHITECTURES`)."""
    try:
        cls, kwargs = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}") from None
    return cls(n_params=n_params, window_px=window_px, **kwargs)

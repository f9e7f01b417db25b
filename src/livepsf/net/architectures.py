"""Network architectures in plain torch (no torchvision).

Every network maps raw-intensity windows ``(B, 1, W, W)`` to ``(B, K)`` and has ``map_frame(frame (1, 1,
H, W), stride) -> (K, gy, gx)`` giving the same outputs for all windows whose top-left corners lie on a
``stride`` grid. The columns are the invalid logit, the N parameters normalised to [0, 1] and, for
networks with uncertainty (the default, ``K = 1 + 2N``), the N natural logs of each parameter's standard
deviation in the same normalised units; networks without it give ``K = 1 + N``. The log-σ columns carry
a per-parameter shift (buffer ``log_sigma_shift``) that the σ calibration on the validation set sets.

:class:`SharedTrunkNet` is the fast architecture for the live map. Its trunk is fully convolutional and
runs once over the whole frame; each window's features are average pools of the trunk over the window.
Two properties make the frame pass give *exactly* the per-window result:

* all trunk convolutions are "valid" (no padding), and each window pools only trunk positions whose
  receptive field lies inside the window, so nothing outside a window leaks into its features;
* the trunk is bias-free with ReLUs and its first layer has zero-sum kernels, so it is invariant to an
  intensity offset and scales linearly with gain; dividing the pooled feature vector by its norm then
  makes the features independent of offset and gain, per window, without per-window normalisation of
  the input (which could not be shared between overlapping windows).

The pooled features are non-negative "energies" of the window at several scales (one pool per trunk
stage). Blur is read from their *ratios*, so the head sees ``log(f / |f|)``: gain-free, and a ratio of
energies becomes a difference, which a small MLP learns from far fewer examples than raw ratios.

:class:`ResNet34` is the paper's reference network, adapted to one grey channel with per-window
``(x - mean) / std`` normalisation in ``forward``; its ``map_frame`` unfolds the windows.
"""

# No `from __future__ import annotations`: TorchScript needs real annotations on these classes.

from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ARCHITECTURES", "BinnedSpectrum", "ResNet34", "SharedTrunkNet", "SpectralBranch", "SpectralTrunkNet",
           "build_network", "count_parameters"]


def _shift_log_sigma(out: torch.Tensor, n_params: int, shift: torch.Tensor) -> torch.Tensor:
    """Add the calibration shift to the log-σ columns (the last ``n_params`` of ``out``), if any."""
    if shift.numel() == 0:
        return out
    return torch.cat([out[..., : 1 + n_params], out[..., 1 + n_params:] + shift], dim=-1)


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
        return F.relu(self.pointwise(self.depthwise(x)), inplace=True)  # conv outputs are not saved for backward


class _DenseBlock(nn.Module):
    """Dense 3x3 (valid) conv, ReLU; bias-free. Faster than separable on CPU at small widths."""

    def __init__(self, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x), inplace=True)


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
        Number of 3x3 blocks after the patchify stem.
    patch_px
        Side of the non-overlapping pixel blocks the stem projects (the trunk's stride).
    hidden
        Width of the head's hidden layers.
    block
        ``"separable"`` (depthwise + pointwise) or ``"dense"`` 3x3 convolutions.
    log_features
        Feed the head ``log`` of the normalised energies (default) rather than the energies.
    second_moment
        Also pool ``sqrt(mean(h²))`` of every channel: with the mean it measures how sparse a response
        is (edges and points are sparse, noise is not), still linear in gain.
    downsample
        Indices of blocks followed by a 2x2 stride-2 convolution (larger receptive field for large
        blurs at little cost). ``map_frame`` then needs strides that are multiples of the total stride.
    uncertainty
        Also predict a log standard deviation per parameter (outputs ``1 + 2N``, see the module docstring).
    stem_width
        Channels of the patchify stem (default ``width``). A wider stem, pooled as it is and squeezed to
        ``width`` by a bias-free 1x1 conv for the blocks, describes each cell's fine structure with more
        filters at little cost: the stem runs once per cell, the 3x3 blocks cost ``width²`` per cell.
    """

    window_px: int
    patch_px: int
    n_params: int
    n_outputs: int
    log_features: bool
    second_moment: bool
    cells: List[int]
    scales: List[int]

    def __init__(self, n_params: int, window_px: int = 128, width: int = 48, depth: int = 3,
                 patch_px: int = 8, hidden: int = 96, block: str = "separable",
                 log_features: bool = True, second_moment: bool = False,
                 downsample: List[int] = [], uncertainty: bool = True,  # noqa: B006 - read-only default
                 stem_width: int = 0) -> None:
        super().__init__()
        if window_px % patch_px:
            raise ValueError(f"window_px ({window_px}) must be a multiple of patch_px ({patch_px})")
        if block not in ("separable", "dense"):
            raise ValueError(f"block must be 'separable' or 'dense', got {block!r}")
        self.window_px = window_px
        self.patch_px = patch_px
        self.n_params = n_params
        self.n_outputs = 1 + n_params * (2 if uncertainty else 1)
        self.register_buffer("log_sigma_shift", torch.zeros(n_params if uncertainty else 0))
        self.log_features = log_features
        self.second_moment = second_moment
        # Trunk cells of stage k that lie wholly inside a window (valid 3x3 convs shrink by 2 each,
        # a 2x2 stride-2 conv halves), and the stage's stride in units of the stem's cells.
        cells, scale = window_px // patch_px, 1
        self.cells, self.scales = [cells], [scale]
        stem_width = stem_width or width
        self.stem = _ZeroSumConv(1, stem_width, kernel_size=patch_px, stride=patch_px, bias=False)
        self.squeeze = (nn.Sequential(nn.Conv2d(stem_width, width, 1, bias=False), nn.ReLU())
                        if stem_width != width else nn.Identity())
        make = _SeparableBlock if block == "separable" else _DenseBlock
        blocks: List[nn.Module] = []
        for k in range(depth):
            cells -= 2
            if k in downsample:
                if cells % 2:
                    raise ValueError("a downsampling stage needs an even number of cells")
                blocks.append(nn.Sequential(make(width, width), nn.Conv2d(width, width, 2, 2, bias=False), nn.ReLU()))
                cells, scale = cells // 2, scale * 2
            else:
                blocks.append(make(width, width))
            if cells < 1:
                raise ValueError("window too small for the trunk's depth")
            self.cells.append(cells)
            self.scales.append(scale)
        self.blocks = nn.ModuleList(blocks)
        n_features = (stem_width + width * depth) * (2 if second_moment else 1)
        self.head = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, self.n_outputs),
        )

    def stages(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Trunk feature maps after the stem and after each block."""
        h = F.relu(self.stem(x), inplace=True)
        out = [h]
        h = self.squeeze(h)
        for blk in self.blocks:
            h = blk(h)
            out.append(h)
        return out

    def trunk_features(self, pooled: torch.Tensor) -> torch.Tensor:
        """The head's input from pooled energies ``(..., features)``: normalised (gain-free), logged."""
        norm = torch.linalg.vector_norm(pooled, 2.0, dim=-1, keepdim=True)
        f = pooled / (norm + 1e-6 * (1.0 + norm))
        if self.log_features:
            f = torch.log(f + 1e-4)
        return f

    def _head(self, pooled: torch.Tensor) -> torch.Tensor:
        """``pooled`` is ``(..., features)``, non-negative and linear in gain; returns ``(..., 1 + N)``."""
        return _shift_log_sigma(self.head(self.trunk_features(pooled)), self.n_params, self.log_sigma_shift)

    def pooled_windows(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's pooled energies of ``(B, 1, W, W)`` windows, ``(B, features)``."""
        pooled: List[torch.Tensor] = []
        for k, h in enumerate(self.stages(x)):
            c = self.cells[k]
            inside = h[:, :, :c, :c]
            pooled.append(inside.mean(dim=(-2, -1)))
            if self.second_moment:
                pooled.append(torch.sqrt((inside * inside).mean(dim=(-2, -1)) + 1e-30))
        return torch.cat(pooled, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._head(self.pooled_windows(x))

    @torch.jit.export
    def map_frame(self, frame: torch.Tensor, stride: int) -> torch.Tensor:
        return self._head(self.pooled_frame(frame, stride)).permute(2, 0, 1)

    def pooled_frame(self, frame: torch.Tensor, stride: int) -> torch.Tensor:
        """The pooled energies of every window on a ``stride`` grid of ``frame``, ``(gy, gx, features)``."""
        if stride % (self.patch_px * self.scales[-1]) != 0:
            raise ValueError("stride must be a multiple of the network's patch size (times its downsampling)")
        # Speed, same numbers: a one-channel frame is the same memory in NCHW and NHWC, and these
        # strides make the whole trunk run channels-last: oneDNN convolves without converting layouts
        # around each conv, and avg_pool2d's channels-last kernel is several times faster.
        height, width = frame.shape[-2], frame.shape[-1]
        nhwc = frame.contiguous().reshape(1, height, width, 1).permute(0, 3, 1, 2)
        pooled: List[torch.Tensor] = []
        for k, h in enumerate(self.stages(nhwc)):
            step = stride // (self.patch_px * self.scales[k])
            pooled.append(F.avg_pool2d(h, kernel_size=self.cells[k], stride=step))  # (1, C, gy, gx)
            if self.second_moment:
                pooled.append(torch.sqrt(F.avg_pool2d(h * h, kernel_size=self.cells[k], stride=step) + 1e-30))
        return torch.cat(pooled, dim=1)[0].permute(1, 2, 0)


class SpectralBranch(nn.Module):
    """A small CNN on a window's log power spectrum: it sees the rings of a defocus OTF.

    Blur multiplies the texture's spectrum by the OTF, so in the log power spectrum it *adds* the log
    MTF, whose zeros (rings, ellipses under astigmatism) sit at radii set by the blur. Natural textures
    have smooth spectra, so the rings are a blur cue that energies of small spatial filters cannot
    resolve (they read any high-frequency energy, side lobes included, as "sharp"). The spectrum is taken
    with a Hann taper after removing the window's mean, normalised to unit sum and logged: offset- and
    gain-free like the trunk. Three coordinate channels (radius, cos 2θ, sin 2θ) tell the convolutions
    where in the frequency plane they are.

    Parameters
    ----------
    window_px
        Window side in pixels.
    channels
        Channels of the conv stages; each is a 3x3 conv, a 2x2 max pool and a ReLU.
    features
        Length of the output feature vector.
    """

    def __init__(self, window_px: int = 128, channels: List[int] = [8, 16, 32, 32],  # noqa: B006
                 features: int = 64) -> None:
        super().__init__()
        hann = torch.hann_window(window_px, periodic=False)
        self.register_buffer("taper", hann[:, None] * hann[None, :])
        fy = torch.fft.fftshift(torch.fft.fftfreq(window_px))[:, None].expand(window_px, window_px // 2 + 1)
        fx = torch.fft.rfftfreq(window_px)[None, :].expand(window_px, window_px // 2 + 1)
        radius = torch.sqrt(fy * fy + fx * fx)
        angle = torch.atan2(fy, fx)
        self.register_buffer("coords", torch.stack([radius / 0.5, torch.cos(2 * angle), torch.sin(2 * angle)]))
        layers: List[nn.Module] = []
        c_in = 1 + 3
        for c in channels:
            # ReLU after the pool: the same result (they commute), on 4x fewer elements.
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.MaxPool2d(2), nn.ReLU()]
            c_in = c
        self.convs = nn.Sequential(*layers)
        size = (window_px // 2**len(channels)) * ((window_px // 2 + 1) // 2**len(channels))
        self.fc = nn.Sequential(nn.Linear(c_in * size, features), nn.ReLU())

    def log_spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, W, W)`` windows to their centred log power spectra ``(B, 1, W, W // 2 + 1)``."""
        x = x - x.mean(dim=(-2, -1), keepdim=True)
        power = torch.fft.rfft2(x * self.taper).abs() ** 2
        power = power / (power.sum(dim=(-2, -1), keepdim=True) + 1e-30)
        # A floor far below any camera's noise keeps noise-free and blank windows finite.
        log_power = torch.log(power + 1e-9)
        log_power = (log_power - log_power.mean(dim=(-2, -1), keepdim=True)) / 4.0
        return torch.fft.fftshift(log_power, dim=[-2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.log_spectrum(x)
        # The first conv of the stack [spectrum, coordinates]: the coordinates' part is the same for every
        # window, so it is computed once and added (4x less work than convolving the stack).
        first = self.convs[0]
        h = F.conv2d(s, first.weight[:, :1], first.bias, padding=1) \
            + F.conv2d(self.coords[None], first.weight[:, 1:], None, padding=1)
        for i, layer in enumerate(self.convs):
            if i > 0:
                h = layer(h)
        return self.fc(h.flatten(1))


class BinnedSpectrum(nn.Module):
    """A window's log power spectrum averaged in radial × angular bins: a fixed feature vector.

    Hann taper after removing the window's mean, power normalised to unit sum (offset- and gain-free
    like the trunk), logged and scaled to about unit spread.
    ``n_radial`` rings of equal width up to Nyquist, ``n_angular`` sectors of the half plane (the power
    spectrum of a real image is point-symmetric); bins that hold no frequency sample are left out.
    Each ring is two frequency samples wide at the defaults: it resolves the MTF zeros of a defocus of
    up to about 1.5 waves RMS at the default optics, which the trunk's 8×8 filters cannot.
    """

    n_features: int

    def __init__(self, window_px: int = 128, n_radial: int = 32, n_angular: int = 8) -> None:
        super().__init__()
        fy = torch.fft.fftfreq(window_px, dtype=torch.float64)[:, None].expand(window_px, window_px // 2 + 1)
        fx = torch.fft.rfftfreq(window_px, dtype=torch.float64)[None, :].expand(window_px, window_px // 2 + 1)
        radius = torch.sqrt(fy * fy + fx * fx)
        angle = torch.atan2(fy, fx) % torch.pi
        ring = torch.clamp((radius / 0.5 * n_radial).long(), max=n_radial)
        sector = ((angle + torch.pi / (2 * n_angular)) / (torch.pi / n_angular)).long() % n_angular
        keep = ((ring < n_radial) & (radius > 0)).flatten()
        raw_bin = (ring * n_angular + sector).flatten()[keep]
        counts = torch.bincount(raw_bin, minlength=n_radial * n_angular)
        occupied = torch.nonzero(counts > 0).flatten()
        # Renumber the occupied bins 0..n-1, so the features have no empty (undefined) entries.
        renumber = torch.full((n_radial * n_angular,), -1, dtype=torch.long)
        renumber[occupied] = torch.arange(len(occupied))
        self.n_features = int(len(occupied))
        self.register_buffer("sample_index", torch.nonzero(keep).flatten())
        self.register_buffer("bin_index", renumber[raw_bin])
        self.register_buffer("bin_counts", counts[occupied].float())
        # Which ring (0 = lowest frequencies) each feature belongs to; derived, so not saved.
        self.register_buffer("ring_of_feature", torch.div(occupied, n_angular, rounding_mode="floor"),
                             persistent=False)
        hann = torch.hann_window(window_px, periodic=False)
        self.register_buffer("taper", hann[:, None] * hann[None, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x - x.mean(dim=(-2, -1), keepdim=True)
        power = (torch.fft.rfft2(x[:, 0] * self.taper).abs() ** 2).flatten(1)[:, self.sample_index]
        bins = torch.zeros(power.shape[0], self.n_features, dtype=power.dtype, device=power.device)
        bins = bins.index_add(1, self.bin_index, power) / self.bin_counts
        bins = bins / (bins.sum(dim=1, keepdim=True) + 1e-30)
        # The floor keeps blank windows finite and must lie below what a noise-free blurred window's
        # outer rings hold (1e-9 cut them off: the probe's R² fell from 0.44 to 0.32); the affine maps
        # the typical range of the logs (-16 ... 0) to about unit spread.
        return (torch.log(bins + 1e-12) + 8.0) / 4.0


class SpectralTrunkNet(SharedTrunkNet):
    """:class:`SharedTrunkNet` whose head also reads each window's spectrum.

    ``branch="cnn"``: a :class:`SpectralBranch` (a small CNN on the full log power spectrum);
    ``branch="bins"``: the :class:`BinnedSpectrum` feature vector as it is (no parameters).

    The offline estimator: the trunk runs once over the frame as in the live network, the spectral branch
    runs per window (each window's own spectrum). The spectral features enter the head's first layer
    through their own bias-free linear map (``spectral_in``) added to the trunk's (``head.0``), so the trunk
    and head keep the keys and shapes of :class:`SharedTrunkNet`: :meth:`warm_start` loads a trained one
    as it is and zeroes ``spectral_in``, so training starts exactly at that network's outputs, and the
    trained parts can learn at a lower rate than the new ones (``TrainConfig.init_lr_factor``).
    """

    def __init__(self, n_params: int, window_px: int = 128, spectral_features: int = 64,
                 spectral_channels: List[int] = [8, 16, 32, 32], hidden: int = 96,  # noqa: B006
                 branch: str = "cnn", **trunk: Any) -> None:
        super().__init__(n_params, window_px=window_px, hidden=hidden, **trunk)
        if branch == "cnn":
            self.spectral = SpectralBranch(window_px, spectral_channels, spectral_features)
        elif branch == "bins":
            self.spectral = BinnedSpectrum(window_px)
            spectral_features = self.spectral.n_features
        else:
            raise ValueError(f"branch must be 'cnn' or 'bins', got {branch!r}")
        self.spectral_in = nn.Linear(spectral_features, hidden, bias=False)

    @torch.no_grad()
    def warm_start(self, trunk_state: Dict[str, torch.Tensor]) -> None:
        """Load a trained :class:`SharedTrunkNet`'s weights; the spectral inputs start at zero weight."""
        missing, unexpected = self.load_state_dict(trunk_state, strict=False)
        if unexpected or any(not k.startswith(("spectral.", "spectral_in.")) for k in missing):
            raise KeyError(f"not a matching shared-trunk state: missing {missing}, unexpected {unexpected}")
        self.spectral_in.weight.zero_()

    def _joint_head(self, pooled: torch.Tensor, spectral: torch.Tensor) -> torch.Tensor:
        h = self.spectral_in(spectral)
        for i, layer in enumerate(self.head):
            h = layer(self.trunk_features(pooled)) + h if i == 0 else layer(h)
        return _shift_log_sigma(h, self.n_params, self.log_sigma_shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._joint_head(self.pooled_windows(x), self.spectral(x))

    @torch.jit.export
    def map_frame(self, frame: torch.Tensor, stride: int) -> torch.Tensor:
        pooled = self.pooled_frame(frame, stride)  # (gy, gx, F): the trunk is shared by the windows
        w = self.window_px
        windows = frame[0, 0].unfold(0, w, stride).unfold(1, w, stride)
        gy, gx = windows.shape[0], windows.shape[1]
        flat = windows.reshape(gy * gx, 1, w, w)
        spectral: List[torch.Tensor] = []
        for start in range(0, gy * gx, 64):
            spectral.append(self.spectral(flat[start:start + 64]))
        out = self._joint_head(pooled.reshape(gy * gx, -1), torch.cat(spectral, dim=0))
        return out.reshape(gy, gx, self.n_outputs).permute(2, 0, 1)


class _BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels_out))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet34(nn.Module):
    """The paper's ResNet-34, one grey channel in, ``1 + N`` outputs.

    Each window is normalised to zero mean and unit standard deviation in :meth:`forward` (offset/gain
    invariance); :meth:`map_frame` unfolds the frame into windows and runs them in chunks.
    """

    window_px: int
    n_params: int
    n_outputs: int

    def __init__(self, n_params: int, window_px: int = 128, width: int = 64,
                 layers: List[int] = [3, 4, 6, 3], uncertainty: bool = True) -> None:  # noqa: B006
        super().__init__()
        self.window_px = window_px
        self.n_params = n_params
        self.n_outputs = 1 + n_params * (2 if uncertainty else 1)
        self.register_buffer("log_sigma_shift", torch.zeros(n_params if uncertainty else 0))
        self.stem = nn.Sequential(nn.Conv2d(1, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        stages: List[nn.Module] = []
        c_in = width
        for i, n in enumerate(layers):
            c_out = width * 2**i
            for j in range(n):
                stages.append(_BasicBlock(c_in, c_out, 2 if (j == 0 and i > 0) else 1))
                c_in = c_out
        self.body = nn.Sequential(*stages)
        self.fc = nn.Linear(c_in, self.n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(-3, -2, -1), keepdim=True)
        std = x.std(dim=(-3, -2, -1), keepdim=True)
        x = (x - mean) / (std + 1e-6 * (1.0 + mean.abs()))
        h = self.body(self.stem(x))
        return _shift_log_sigma(self.fc(h.mean(dim=(-2, -1))), self.n_params, self.log_sigma_shift)

    @torch.jit.export
    def map_frame(self, frame: torch.Tensor, stride: int) -> torch.Tensor:
        w = self.window_px
        windows = frame[0, 0].unfold(0, w, stride).unfold(1, w, stride)  # (gy, gx, W, W)
        gy, gx = windows.shape[0], windows.shape[1]
        flat = windows.reshape(gy * gx, 1, w, w)
        outs: List[torch.Tensor] = []
        for start in range(0, gy * gx, 64):
            outs.append(self.forward(flat[start:start + 64]))
        return torch.cat(outs, dim=0).reshape(gy, gx, self.n_outputs).permute(2, 0, 1)


ARCHITECTURES = {
    # name: (class, keyword arguments)
    "shared-trunk-tiny": (SharedTrunkNet, {"width": 8, "depth": 1, "hidden": 16}),
    # The fast default: dense 3x3 convs at width 32 run ~3x faster on CPU than separable ones at 48.
    "shared-trunk": (SharedTrunkNet, {"width": 32, "depth": 3, "hidden": 96, "block": "dense"}),
    "shared-trunk-m2": (SharedTrunkNet, {"width": 32, "depth": 3, "hidden": 96, "block": "dense",
                                         "second_moment": True}),
    "shared-trunk-deep": (SharedTrunkNet, {"width": 32, "depth": 4, "hidden": 128, "block": "dense",
                                           "second_moment": True, "downsample": [1]}),
    "shared-trunk-separable": (SharedTrunkNet, {"width": 48, "depth": 3, "hidden": 96, "block": "separable"}),
    # Offline candidate: a wide stem (96 filters per 8x8 cell) and a receptive field of 112 px (a 2-wave
    # defocus disk is ~80 px at the default optics), about 2.5x the default's compute per window.
    "shared-trunk-wide": (SharedTrunkNet, {"width": 48, "depth": 4, "hidden": 128, "block": "dense",
                                           "downsample": [1], "stem_width": 96}),
    # Offline candidate: the default trunk plus a CNN on each window's log power spectrum (#13).
    "shared-trunk-spectral": (SpectralTrunkNet, {"width": 32, "depth": 3, "hidden": 96, "block": "dense"}),
    "shared-trunk-spectrum-bins": (SpectralTrunkNet, {"width": 32, "depth": 3, "hidden": 96, "block": "dense",
                                                      "branch": "bins"}),
    "resnet34": (ResNet34, {}),
    "resnet34-tiny": (ResNet34, {"width": 4, "layers": [1, 1, 1, 1]}),
    "resnet18-narrow": (ResNet34, {"width": 16, "layers": [2, 2, 2, 2]}),
}


def build_network(architecture: str, n_params: int, window_px: int = 128, uncertainty: bool = True) -> nn.Module:
    """A fresh, untrained network by architecture name (see :data:`ARCHITECTURES`).

    With ``uncertainty`` (default) it also predicts a log standard deviation per parameter.
    """
    try:
        cls, kwargs = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}") from None
    return cls(n_params=n_params, window_px=window_px, uncertainty=uncertainty, **kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)

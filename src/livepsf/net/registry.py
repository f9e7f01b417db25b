"""Loading trained networks: shipped models by name, or a ``.pt`` file with its ``.json`` card.

This is the one place that knows models are TorchScript files, so that a later move to ``torch.export``
touches only this module and :mod:`livepsf.net.export`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from livepsf.errors import InputError
from livepsf.net.card import ModelCard
from livepsf.net.export import file_sha256
from livepsf.net.outputs import split_outputs
from livepsf.optics import Optics, PSFModelSpec, cylinder_axis

__all__ = ["PSFNet", "available_models", "load_model", "models_dir"]


def models_dir() -> Path:
    """Folder of the models shipped inside the package."""
    return Path(str(resources.files("livepsf") / "models"))


def available_models() -> list[str]:
    """Names of the shipped models (those with both a ``.pt`` file and a ``.json`` card)."""
    folder = models_dir()
    return sorted(p.stem for p in folder.glob("*.pt") if p.with_suffix(".json").is_file())


class PSFNet:
    """A loaded PSF-parameter network with its card.

    Use :func:`load_model` to create one. :meth:`predict` takes windows and returns physical units;
    the mapper uses :meth:`map_frame` and :meth:`decode` directly. :attr:`module` is the loaded
    TorchScript module; for shared-trunk networks :meth:`map_frame` runs this package's own copy of
    the architecture with the same weights instead (see :attr:`fast_frame_pass`).
    """

    def __init__(self, module: torch.jit.ScriptModule, card: ModelCard, path: Path, device: torch.device,
                 frame_net: nn.Module | None = None) -> None:
        self.module = module
        self._frame_net = frame_net
        self.card = card
        self.path = path
        self.device = device
        self.spec: PSFModelSpec = card.spec
        self.optics: Optics = card.optics.to_optics()
        self.window_px: int = card.window_px
        self._lo = torch.tensor([p.min for p in self.spec.params], dtype=torch.float32, device=device)
        self._span = torch.tensor([p.span for p in self.spec.params], dtype=torch.float32, device=device)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def fast_frame_pass(self) -> bool:
        """True when :meth:`map_frame` runs the package's current shared-trunk code on this model's weights.

        A TorchScript file keeps the ``map_frame`` code it was exported with, so models exported
        before the frame pass was sped up would not get faster. :func:`load_model` rebuilds
        shared-trunk networks from this package's architecture, copies the weights and keeps the
        rebuilt network only when it gives the file's own outputs on a probe frame.
        """
        return self._frame_net is not None

    def map_frame(self, frame: torch.Tensor, stride: int) -> torch.Tensor:
        """Raw outputs ``(K, gy, gx)`` of every window of a ``(1, 1, H, W)`` frame on a ``stride`` grid."""
        if self._frame_net is not None:
            return self._frame_net.map_frame(frame, stride)
        return self.module.map_frame(frame, stride)

    @property
    def has_sigma(self) -> bool:
        """True when the network predicts a standard deviation per parameter (its card's ``uncertainty``)."""
        return self.card.uncertainty

    @property
    def sigma_names(self) -> tuple[str, ...]:
        """``<name>_sigma`` for each parameter when the network predicts σ, else empty."""
        return tuple(f"{n}_sigma" for n in self.spec.names) if self.has_sigma else ()

    @property
    def output_names(self) -> tuple[str, ...]:
        """Names of :meth:`predict`'s outputs: parameters, derived cylinder/axis, ``invalid``, σ's."""
        derived = ("cylinder", "axis") if self.spec.has_astigmatism else ()
        return (*self.spec.names, *derived, "invalid", *self.sigma_names)

    def decode(self, raw: torch.Tensor, channel_dim: int = -1) -> dict[str, torch.Tensor]:
        """Turn raw network outputs into physical units.

        Parameters are put in canonical form (focus >= 0), denormalised with the card's ranges and
        clipped to them (the network knows nothing outside the range it was trained on); ``invalid`` is
        the sigmoid of the validity logit; ``<name>_sigma`` (networks with uncertainty) is the standard
        deviation of each parameter in its unit.
        """
        raw = raw.movedim(channel_dim, -1).float()
        if raw.shape[-1] != self.card.n_outputs:
            raise ValueError(f"model {self.name} gave {raw.shape[-1]} outputs, its card describes "
                             f"{self.card.n_outputs}")
        parts = split_outputs(raw, self.spec)
        lo, span = self._lo.to(raw.device), self._span.to(raw.device)
        values = torch.clamp(parts.values, 0.0, 1.0) * span + lo
        out = {name: values[..., i] for i, name in enumerate(self.spec.names)}
        if self.spec.has_astigmatism:
            out["cylinder"], out["axis"] = cylinder_axis(out["astig_0"], out["astig_45"])
        out["invalid"] = torch.sigmoid(parts.invalid_logit)
        if parts.sigma is not None:
            sigma = parts.sigma * span
            out.update({f"{name}_sigma": sigma[..., i] for i, name in enumerate(self.spec.names)})
        return out

    @torch.inference_mode()
    def predict(self, patches: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
        """PSF parameters of windows.

        Parameters
        ----------
        patches
            ``(B, H, W)`` real array of raw intensities (uint8, uint16, float...), ``H == W ==
            window_px``; normalised inside the network exactly as in training.

        Returns
        -------
        dict
            ``{name: (B,) float32}`` in the card's units, ``cylinder`` (waves) and ``axis`` (radians,
            ``[0, pi)``) for astigmatic models, ``invalid`` (probability that a window is textureless)
            and, for networks with uncertainty (:attr:`has_sigma`), ``<name>_sigma``: the standard
            deviation of each parameter in its unit (calibrated on the validation set).
        """
        x = _as_float_tensor(patches, "patches")
        if x.ndim != 3 or x.shape[-2:] != (self.window_px, self.window_px):
            raise InputError(f"model {self.name} takes (B, {self.window_px}, {self.window_px}) windows, "
                             f"got shape {tuple(x.shape)}")
        raw = self.module(x[:, None].to(self.device))
        return {k: v.cpu().numpy().astype(np.float32) for k, v in self.decode(raw).items()}

    def to(self, device: str | torch.device) -> PSFNet:
        """Move the network to ``device`` (returns self)."""
        self.device = torch.device(device)
        self.module = self.module.to(self.device)
        if self._frame_net is not None:
            self._frame_net = self._frame_net.to(self.device)
        return self

    def __repr__(self) -> str:
        return f"PSFNet({self.name!r}, psf_model={self.spec.name}, architecture={self.card.architecture!r})"


def load_model(name_or_path: str | Path = "default", device: str | torch.device | None = None) -> PSFNet:
    """Load a shipped model by name (``"default"``, ``"focus"``, ``"gaussian"``) or a ``.pt`` file.

    The card (``.json`` beside the ``.pt``) must match the file's SHA-256 and describe as many outputs
    as the network gives; otherwise :class:`InputError` says what does not match.
    """
    path = _resolve(name_or_path)
    card = ModelCard.load(path.with_suffix(".json"))
    digest = file_sha256(path)
    if card.weights_sha256 != digest:
        raise InputError(f"{path}: the model file does not match its card (SHA-256 {digest[:12]}…, card says "
                         f"{card.weights_sha256[:12] or 'nothing'}…); re-export the model with its card")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    try:
        module = torch.jit.load(str(path), map_location=dev)
    except Exception as exc:  # torch raises RuntimeError subclasses with long messages
        raise InputError(f"{path}: not a loadable TorchScript model ({str(exc).splitlines()[0]})") from None
    module.eval()
    net = PSFNet(module, card, path, dev, frame_net=_rebuilt_shared_trunk(module, card, dev))
    _check_outputs(net)
    return net


def _rebuilt_shared_trunk(module: torch.jit.ScriptModule, card: ModelCard, device: torch.device) -> nn.Module | None:
    """The package's :class:`SharedTrunkNet` with ``module``'s weights, compiled, or None where it would differ.

    Checked on a fixed pseudo-random probe of 3x2 windows: its frame pass must give the file's own
    outputs within float rounding, or the file's code is kept.
    """
    from livepsf.net.architectures import ARCHITECTURES, SharedTrunkNet, build_network

    if ARCHITECTURES.get(card.architecture, (None, None))[0] is not SharedTrunkNet:
        return None
    try:
        net = build_network(card.architecture, card.spec.n_params, window_px=card.window_px,
                            uncertainty=card.uncertainty)
        # Files exported before the σ calibration shift existed have no such buffer: a zero shift.
        missing, unexpected = net.load_state_dict(module.state_dict(), strict=False)
        if unexpected or set(missing) - {"log_sigma_shift"}:
            return None
        # Inference only, like the TorchScript module; weights channels-last like the frame pass's maps,
        # which saves a copy of every weight per call.
        net = net.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)
        # Compiled: the frame pass runs about 0.7 ms (7 %) faster per 1024² frame than the eager module.
        net = torch.jit.script(net)
        grid_px = net.patch_px * net.scales[-1]
        stride = max(grid_px, card.window_px // 2 // grid_px * grid_px)
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand((1, 1, card.window_px + 2 * stride, card.window_px + stride), generator=generator)
        with torch.inference_mode():
            probe = (probe * 1000.0).to(device)
            expected = module.map_frame(probe, stride)
            got = net.map_frame(probe, stride)
    except Exception:  # a shape or attribute mismatch: this file is not the current architecture
        return None
    tolerance = 1e-4 * max(1.0, float(expected.abs().max()))
    if got.shape != expected.shape or float((got - expected).abs().max()) > tolerance:
        return None
    return net


def _resolve(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix == ".pt" or candidate.exists():
        if not candidate.is_file():
            raise InputError(f"{candidate}: no such model file")
        return candidate
    shipped = models_dir() / f"{name_or_path}.pt"
    if shipped.is_file():
        return shipped
    names = ", ".join(available_models()) or "none shipped"
    raise InputError(f"unknown model {str(name_or_path)!r}: give a .pt file or one of: {names}")


@torch.inference_mode()
def _check_outputs(net: PSFNet) -> None:
    probe = torch.zeros(1, 1, net.window_px, net.window_px, device=net.device)
    try:
        out = net.module(probe)
    except Exception as exc:
        raise InputError(f"{net.path}: model does not accept {net.window_px}x{net.window_px} windows as its "
                         f"card says ({str(exc).splitlines()[0]})") from None
    expected = net.card.n_outputs
    if tuple(out.shape) != (1, expected):
        with_sigma = " with uncertainty" if net.card.uncertainty else ""
        raise InputError(f"{net.path}: model gives outputs of shape {tuple(out.shape)}, its card "
                         f"({net.spec.name}{with_sigma}) needs (1, {expected})")


def _as_float_tensor(data: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        if data.is_complex():
            raise InputError(f"{what}: complex values; expected real intensities")
        x = data.float()
    else:
        arr = np.asarray(data)
        if np.iscomplexobj(arr) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise InputError(f"{what}: unsupported dtype {arr.dtype}; expected real intensities")
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
    if not torch.isfinite(x).all():
        raise InputError(f"{what}: contains NaN or infinite values")
    return x

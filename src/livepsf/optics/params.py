"""Parameter specifications of the PSF models: names, units, training ranges, normalisation, canonical form.

The Zernike models carry astigmatism as two signed components, ``astig_0`` (Z(2, 2)) and ``astig_45``
(Z(2, -2)); the paper's ``cylinder`` and ``axis`` are derived from them (:func:`cylinder_axis`).

The sign ambiguity: for an even, real pupil phase W, PSF(-W) == PSF(W), so (focus, astig) and
(-focus, -astig) give the same image. Targets are therefore reported in *canonical* form, focus >= 0
(for Z-2, which has no focus, astig_0 >= 0). See PAPER.md, "the sign ambiguity".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

__all__ = [
    "PSF_MODELS",
    "ParamSpec",
    "PSFModelSpec",
    "cylinder_axis",
    "get_psf_model",
]


@dataclass(frozen=True)
class ParamSpec:
    """One PSF parameter: its name, physical unit and the range used for training.

    Normalisation maps ``[min, max]`` linearly to ``[0, 1]``; that is the scale the networks regress.
    """

    name: str
    unit: str
    min: float
    max: float
    description: str = ""

    @property
    def span(self) -> float:
        return self.max - self.min

    def normalise(self, value: torch.Tensor) -> torch.Tensor:
        return (value - self.min) / self.span

    def denormalise(self, value: torch.Tensor) -> torch.Tensor:
        return value * self.span + self.min


Kind = Literal["zernike", "gaussian"]

_FOCUS = ParamSpec("focus", "waves", 0.0, 2.0, "defocus, Zernike Z(2,0), RMS waves (canonical: >= 0)")
_ASTIG_0 = ParamSpec("astig_0", "waves", -0.5, 0.5, "astigmatism 0°, Zernike Z(2,2), RMS waves")
_ASTIG_45 = ParamSpec("astig_45", "waves", -0.5, 0.5, "astigmatism 45°, Zernike Z(2,-2), RMS waves")
_VAR = ParamSpec("variance", "px^2", 0.5, 36.0, "isotropic Gaussian variance")
_VAR_X = ParamSpec("variance_x", "px^2", 0.5, 36.0, "Gaussian variance along x (array axis 1)")
_VAR_Y = ParamSpec("variance_y", "px^2", 0.5, 36.0, "Gaussian variance along y (array axis 0)")


@dataclass(frozen=True)
class PSFModelSpec:
    """A PSF model of the paper's Table II: which parameters it has and how they transform.

    Parameter values are handled as tensors of shape ``(B, N)`` in the order of :attr:`params`.
    """

    name: str
    kind: Kind
    params: tuple[ParamSpec, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def n_params(self) -> int:
        return len(self.params)

    @property
    def has_astigmatism(self) -> bool:
        return "astig_0" in self.names

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"PSF model {self.name} has no parameter {name!r}; it has {self.names}") from None

    # -- conversions -------------------------------------------------------------------------------
    def stack(self, values: dict[str, torch.Tensor | float]) -> torch.Tensor:
        """Stack named values (scalars or ``(B,)`` tensors) into a ``(B, N)`` tensor."""
        missing = [n for n in self.names if n not in values]
        extra = [n for n in values if n not in self.names]
        if missing or extra:
            raise ValueError(
                f"PSF model {self.name} takes parameters {self.names}; missing {missing}, unexpected {extra}"
            )
        cols = [torch.as_tensor(values[n], dtype=torch.float64).reshape(-1) for n in self.names]
        cols = torch.broadcast_tensors(*cols)
        return torch.stack(cols, dim=-1)

    def unstack(self, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a ``(B, N)`` tensor into ``{name: (B,)}``."""
        return {n: values[..., i] for i, n in enumerate(self.names)}

    def normalise(self, values: torch.Tensor) -> torch.Tensor:
        lo, span = self._lo_span(values)
        return (values - lo) / span

    def denormalise(self, values: torch.Tensor) -> torch.Tensor:
        lo, span = self._lo_span(values)
        return values * span + lo

    def _lo_span(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.tensor([p.min for p in self.params], dtype=like.dtype, device=like.device)
        span = torch.tensor([p.span for p in self.params], dtype=like.dtype, device=like.device)
        return lo, span

    # -- canonical form and sampling ---------------------------------------------------------------
    def canonical(self, values: torch.Tensor) -> torch.Tensor:
        """Map equivalent parameter sets to one representative (focus >= 0; Z-2: astig_0 >= 0)."""
        if self.kind != "zernike":
            return values
        pivot = self.index("focus") if "focus" in self.names else self.index("astig_0")
        sign = torch.where(values[..., pivot] < 0, -1.0, 1.0).to(values.dtype)
        return values * sign[..., None]

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw ``n`` parameter sets uniformly in the training ranges, in canonical form, ``(n, N)`` float64."""
        u = torch.rand(n, self.n_params, generator=generator, dtype=torch.float64)
        return self.canonical(self.denormalise(u))

    # -- label transforms that follow image transforms ---------------------------------------------
    def rot90(self, values: torch.Tensor, k: int = 1) -> torch.Tensor:
        """Parameters of the PSF after ``torch.rot90(image, k, dims=(-2, -1))``.

        A quarter turn swaps x and y: both astigmatism components change sign, Gaussian variances swap.
        """
        if k % 2 == 0:
            return values.clone()
        out = values.clone()
        if self.has_astigmatism:
            for name in ("astig_0", "astig_45"):
                out[..., self.index(name)] *= -1
            out = self.canonical(out)
        if "variance_x" in self.names:
            ix, iy = self.index("variance_x"), self.index("variance_y")
            out[..., ix], out[..., iy] = values[..., iy], values[..., ix]
        return out

    def flip(self, values: torch.Tensor, axis: int) -> torch.Tensor:
        """Parameters of the PSF after mirroring the image along array axis ``axis`` (0: rows, 1: columns).

        A mirror keeps the x and y widths but reverses the diagonals: astig_45 changes sign.
        """
        if axis not in (0, 1, -1, -2):
            raise ValueError(f"axis must be 0 or 1, got {axis}")
        out = values.clone()
        if self.has_astigmatism:
            out[..., self.index("astig_45")] *= -1
            out = self.canonical(out)
        return out


def cylinder_axis(astig_0: torch.Tensor, astig_45: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's cylinder (magnitude, waves) and axis (radians in ``[0, pi)``) from the two components."""
    cylinder = torch.hypot(astig_0, astig_45)
    axis = torch.remainder(0.5 * torch.atan2(astig_45, astig_0), math.pi)
    return cylinder, axis


PSF_MODELS: dict[str, PSFModelSpec] = {
    "Z-1": PSFModelSpec("Z-1", "zernike", (_FOCUS,)),
    "Z-2": PSFModelSpec("Z-2", "zernike", (_ASTIG_0, _ASTIG_45)),
    "Z-3": PSFModelSpec("Z-3", "zernike", (_FOCUS, _ASTIG_0, _ASTIG_45)),
    "G-1": PSFModelSpec("G-1", "gaussian", (_VAR,)),
    "G-2": PSFModelSpec("G-2", "gaussian", (_VAR_X, _VAR_Y)),
}


def get_psf_model(name: str) -> PSFModelSpec:
    """Look up a PSF model by its paper name (``Z-1``, ``Z-2``, ``Z-3``, ``G-1``, ``G-2``)."""
    try:
        return PSF_MODELS[name.upper()]
    except KeyError:
        raise ValueError(f"unknown PSF model {name!r}; choose one of {', '.join(PSF_MODELS)}") from None

"""Model cards: what a shipped network was trained for, and how well it does.

A card travels beside its TorchScript file as JSON (``<name>.json`` next to ``<name>.pt``). Loading a
model checks the card against the file (SHA-256) and against the PSF model specs, so a network is never
used with the wrong parameters, units or optics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from livepsf.errors import InputError
from livepsf.optics import Optics, PSFModelSpec, get_psf_model

__all__ = ["ModelCard", "OpticsCard", "ParamCard"]


class ParamCard(BaseModel):
    """One regressed parameter: name, unit and the range the network was trained on."""

    model_config = ConfigDict(extra="forbid")
    name: str
    unit: str
    min: float
    max: float


class OpticsCard(BaseModel):
    """The optical sampling the network was trained for."""

    model_config = ConfigDict(extra="forbid")
    na: float = Field(gt=0)
    wavelength_nm: float = Field(gt=0)
    pixel_size_um: float = Field(gt=0)
    immersion_index: float = Field(gt=0)

    def to_optics(self) -> Optics:
        return Optics(**self.model_dump())

    @classmethod
    def from_optics(cls, optics: Optics) -> OpticsCard:
        return cls(**optics.to_dict())


class ModelCard(BaseModel):
    """Everything needed to use (and to trust) a trained PSF-parameter network.

    The TorchScript module a card describes takes raw intensities ``(B, 1, window_px, window_px)`` and
    returns ``(B, 1 + N)``: column 0 is the invalid logit, columns 1.. the parameters normalised to
    ``[0, 1]`` over ``[min, max]`` of :attr:`params`. With :attr:`uncertainty` it returns ``(B, 1 + 2N)``:
    the last N columns are ``log`` of each parameter's standard deviation in the same normalised units
    (calibrated on the validation set; ``training["sigma_calibration"]`` records how). Cards written before
    uncertainty existed read as ``uncertainty=False``.
    """

    model_config = ConfigDict(extra="forbid")
    format_version: int = 1
    name: str
    psf_model: str
    params: list[ParamCard]
    optics: OpticsCard
    window_px: int = Field(default=128, ge=16)
    input_normalisation: str
    architecture: str
    uncertainty: bool = False
    training: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] = Field(default_factory=dict)
    weights_sha256: str = ""
    livepsf_version: str = ""
    created: str = ""
    notes: str = ""

    @field_validator("psf_model")
    @classmethod
    def _known_psf_model(cls, value: str) -> str:
        return get_psf_model(value).name

    @model_validator(mode="after")
    def _params_match_spec(self) -> ModelCard:
        spec = get_psf_model(self.psf_model)
        names = tuple(p.name for p in self.params)
        if names != spec.names:
            raise ValueError(f"card lists parameters {names}, but PSF model {spec.name} has {spec.names}")
        for card, ref in zip(self.params, spec.params):
            if card.unit != ref.unit:
                raise ValueError(f"parameter {card.name}: card unit {card.unit!r} != {ref.unit!r}")
            if not card.max > card.min:
                raise ValueError(f"parameter {card.name}: max must exceed min")
        return self

    @property
    def n_outputs(self) -> int:
        """Columns of the network's output: ``1 + N``, or ``1 + 2N`` with :attr:`uncertainty`."""
        return 1 + len(self.params) * (2 if self.uncertainty else 1)

    @property
    def spec(self) -> PSFModelSpec:
        """The PSF model spec with this card's trained ranges (they may differ from the defaults)."""
        from dataclasses import replace

        base = get_psf_model(self.psf_model)
        params = tuple(replace(p, min=c.min, max=c.max) for p, c in zip(base.params, self.params))
        return replace(base, params=params)

    @classmethod
    def for_spec(cls, name: str, spec: PSFModelSpec, optics: Optics, **fields: Any) -> ModelCard:
        """A card for a network regressing ``spec``'s parameters at ``optics``."""
        params = [ParamCard(name=p.name, unit=p.unit, min=p.min, max=p.max) for p in spec.params]
        return cls(name=name, psf_model=spec.name, params=params, optics=OpticsCard.from_optics(optics), **fields)

    @classmethod
    def load(cls, path: str | Path) -> ModelCard:
        """Read and validate a card; :class:`InputError` names the file and the problem."""
        path = Path(path)
        try:
            return cls.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise InputError(f"{path}: model card not found (expected beside the model file)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: model card is not valid JSON ({exc})") from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "card"
            raise InputError(f"{path}: invalid model card: {where}: {first['msg']}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2) + "\n", encoding="utf-8")

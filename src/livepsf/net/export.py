"""Export a trained network as TorchScript with its JSON model card."""

from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path

import torch

from livepsf.net.card import ModelCard

__all__ = ["export_model", "file_sha256"]


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_model(module: torch.nn.Module, card: ModelCard, path: str | Path) -> Path:
    """Script ``module``, save it to ``path`` (``.pt``) and its card beside it (``.json``).

    The module must follow the contract of :class:`~livepsf.net.card.ModelCard` (``forward`` and
    ``map_frame``). The card's ``weights_sha256``, ``created`` and ``livepsf_version`` are filled in, and
    ``uncertainty`` is set from the module (``n_outputs == 1 + 2N``: it predicts a σ per parameter).

    Returns
    -------
    pathlib.Path
        The path of the TorchScript file.
    """
    from livepsf import __version__

    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"model files end in .pt, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    scripted = torch.jit.script(module.cpu().eval())
    scripted.save(str(path))
    n_params = len(card.params)
    card = card.model_copy(
        update={
            "uncertainty": int(getattr(module, "n_outputs", 1 + n_params)) == 1 + 2 * n_params,
            "weights_sha256": file_sha256(path),
            "livepsf_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    card.save(path.with_suffix(".json"))
    return path

"""Which depth calibration to use when none is named: the newest one made with exactly this network.

The live view, the focus lock and autofocus use depth when a calibration is at hand. Calibrations are
looked for in ``./calibration`` and in the source checkout's ``calibration/`` folder, and matched to the
network by the SHA-256 of its weights recorded in the calibration, never by file name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from livepsf.depth.calibration import Calibration

__all__ = ["calibration_folders", "calibration_for_model", "find_calibration"]


def calibration_folders() -> list[Path]:
    """Where default calibrations are looked for: ``./calibration`` and the source checkout's."""
    here = Path(__file__).resolve()
    folders = [Path.cwd() / "calibration"]
    if len(here.parents) > 3:
        folders.append(here.parents[3] / "calibration")  # src/livepsf/depth/ -> the checkout
    unique: list[Path] = []
    for f in folders:
        if f.is_dir() and f.resolve() not in [u.resolve() for u in unique]:
            unique.append(f)
    return unique


def find_calibration(model: Any, folders: list[Path] | None = None) -> Path | None:
    """The newest calibration JSON in ``folders`` made with exactly this model's weights, if any.

    Matching is by the weights' SHA-256 recorded in the calibration, so a calibration is never applied
    to another network whatever its file name.

    Parameters
    ----------
    model
        The network (:func:`livepsf.load_model`); one without a recorded weights hash matches nothing.
    folders
        Where to look; default :func:`calibration_folders`.
    """
    sha = getattr(getattr(model, "card", None), "weights_sha256", "")
    if not sha:
        return None
    found: list[tuple[str, Path]] = []
    for folder in folders if folders is not None else calibration_folders():
        for path in folder.glob("*.json"):
            try:
                raw = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(raw, dict) and raw.get("format") == "livepsf-depth-calibration" \
                    and raw.get("model_sha256") == sha:
                found.append((str(raw.get("created", "")), path))
    return max(found)[1] if found else None


def calibration_for_model(model: Any, path: str | Path | None = None,
                          folders: list[Path] | None = None) -> tuple[Calibration | None, Path | None]:
    """The calibration to use with ``model``: the file ``path``, else the one :func:`find_calibration` finds.

    Parameters
    ----------
    model
        The network the calibration will be used with.
    path
        A calibration named by the user; it must have been made with ``model``.
    folders
        Where to look when ``path`` is None; default :func:`calibration_folders`.

    Returns
    -------
    tuple
        ``(calibration, its path)``, or ``(None, None)`` when none was named and none matches.

    Raises
    ------
    InputError
        ``path`` is missing, invalid or made with another network.
    """
    found = Path(path) if path is not None else find_calibration(model, folders)
    return (Calibration.load(found, model=model), found) if found is not None else (None, None)

"""Finished frames of an output kept one file per frame, so an interrupted run resumes where it stopped.

A batch (``livepsf deconvolve``, or ``map|depth|deconvolve --scheduler``) computes an output file frame
by frame. Each finished frame goes into a :class:`FrameStore`: a hidden folder beside the output,
``.<name><suffix>.<key>.parts/``, where ``key`` hashes the *settings* of the run (input identity,
iterations, model, ...). A frame file is written under a temporary name and renamed into place, so a
frame file that exists is whole; a process killed mid-frame loses only that frame. A rerun with the
same settings opens the same folder and computes only the missing frames; a rerun with other settings
gets another folder and never reuses these frames. When every frame is there, the caller writes the
real output from them and :meth:`FrameStore.discard` removes the folder.

The store also remembers the output names it reserved (:meth:`FrameStore.reserve`): a run killed while
writing the final files finds them again and rewrites them instead of leaving a half-written file and
choosing new names.

Frames are ``.npz`` files of named arrays plus a JSON string of metadata; no pickle.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FrameStore", "atomic_write_bytes", "settings_key", "source_identity"]

_MANIFEST = "manifest.json"
_META_KEY = "__meta__"


def source_identity(path: str | Path) -> dict[str, Any]:
    """What identifies an input file for resuming: its absolute path, size and modification time."""
    path = Path(path).resolve()
    stat = path.stat()
    return {"source": str(path), "source_bytes": int(stat.st_size), "source_mtime_ns": int(stat.st_mtime_ns)}


def settings_key(settings: dict[str, Any]) -> str:
    """A short, stable hash of JSON-compatible settings (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary name in the same folder: ``path`` is whole or absent."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class FrameStore:
    """Per-frame results of one output file, resumable (see the module docstring).

    Parameters
    ----------
    folder
        Folder the output goes to (the store is a hidden sub-folder of it).
    stem
        Output name without extension, e.g. ``"cell_deconv"``.
    settings
        JSON-compatible settings of the run; a store is only reused by a run with equal settings.
    n_frames
        Number of frames of the output.
    """

    def __init__(self, folder: str | Path, stem: str, settings: dict[str, Any], n_frames: int) -> None:
        if n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {n_frames}")
        self.settings = dict(settings)
        self.n_frames = int(n_frames)
        self.path = Path(folder) / f".{stem}.{settings_key(self.settings)}.parts"
        self._manifest: dict[str, Any] = {"settings": self.settings, "n_frames": self.n_frames, "outputs": None}
        manifest = self.path / _MANIFEST
        if manifest.is_file():
            try:
                found = json.loads(manifest.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                found = None
            if isinstance(found, dict) and found.get("settings") == self.settings \
                    and found.get("n_frames") == self.n_frames:
                self._manifest = found
        self._done = {i for i in range(self.n_frames) if self._frame_path(i).is_file()}

    @classmethod
    def for_output(cls, source: str | Path, suffix: str, folder: str | Path, settings: dict[str, Any],
                   n_frames: int) -> FrameStore:
        """The store of the output ``source`` + ``suffix`` (named as :func:`livepsf.imageio.output_path` does)."""
        from livepsf.imageio import output_stem

        return cls(folder, output_stem(source, suffix), settings, n_frames)

    @property
    def exists(self) -> bool:
        """Whether the store's folder is on disk (a previous run left frames or reserved outputs)."""
        return self.path.is_dir()

    def done(self) -> set[int]:
        """Indices of the frames already stored."""
        return set(self._done)

    def missing(self) -> list[int]:
        """Indices of the frames still to compute, in order."""
        return [i for i in range(self.n_frames) if i not in self._done]

    @property
    def complete(self) -> bool:
        return len(self._done) == self.n_frames

    def put(self, index: int, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> None:
        """Store frame ``index`` (named arrays and JSON metadata); atomic: whole or absent."""
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} outside 0..{self.n_frames - 1}")
        if _META_KEY in arrays:
            raise ValueError(f"array name {_META_KEY!r} is reserved")
        if any(np.asarray(v).dtype.hasobject for v in arrays.values()):
            raise ValueError("object arrays cannot be stored (they would need pickle)")
        self._ensure_folder()
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()},
                 **{_META_KEY: np.asarray(json.dumps(meta or {}))})
        atomic_write_bytes(self._frame_path(index), buffer.getvalue())
        self._done.add(index)

    def get(self, index: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The arrays and metadata stored for frame ``index``."""
        with np.load(self._frame_path(index), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files if k != _META_KEY}
            meta = json.loads(str(data[_META_KEY]))
        return arrays, meta

    def meta(self, index: int) -> dict[str, Any]:
        """The metadata stored for frame ``index`` (without reading its arrays)."""
        with np.load(self._frame_path(index), allow_pickle=False) as data:
            return json.loads(str(data[_META_KEY]))

    def planes(self, name: str) -> Sequence[np.ndarray]:
        """Array ``name`` of every frame, as a sequence that reads one frame from disk per item."""
        return _Planes(self, name)

    def reserve(self, outputs: list[Path]) -> None:
        """Record the final output names chosen for this store (before writing them)."""
        self._manifest["outputs"] = [str(p) for p in outputs]
        self._write_manifest()

    @property
    def reserved(self) -> list[Path] | None:
        """The output names recorded by :meth:`reserve`, or ``None``."""
        outputs = self._manifest.get("outputs")
        return None if outputs is None else [Path(p) for p in outputs]

    def discard(self) -> None:
        """Remove the store (call once the final output is written)."""
        shutil.rmtree(self.path, ignore_errors=True)
        self._done.clear()

    def _frame_path(self, index: int) -> Path:
        return self.path / f"frame-{index:06d}.npz"

    def _ensure_folder(self) -> None:
        if not (self.path / _MANIFEST).is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_manifest()

    def _write_manifest(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path / _MANIFEST, (json.dumps(self._manifest, indent=1) + "\n").encode("utf-8"))

    def __repr__(self) -> str:
        return f"FrameStore({str(self.path)!r}, {len(self._done)}/{self.n_frames} frames)"


class _Planes(Sequence):
    """One named array of every frame of a store, read from disk on access."""

    def __init__(self, store: FrameStore, name: str) -> None:
        self._store, self._name = store, name

    def __len__(self) -> int:
        return self._store.n_frames

    def __getitem__(self, index: int) -> np.ndarray:  # type: ignore[override]
        if not 0 <= index < len(self):
            raise IndexError(index)
        with np.load(self._store._frame_path(index), allow_pickle=False) as data:
            return data[self._name]

"""On-the-fly training batches and fixed-seed evaluation sets.

A batch is ``(patches, targets)``: ``patches`` ``(B, 1, P, P)`` float32 raw camera values (not
normalised), ``targets`` ``(B, 1 + N)`` float32 with ``targets[:, 0]`` the invalid label (1 =
textureless) and ``targets[:, 1:]`` the PSF parameters in canonical form normalised to ``[0, 1]`` by
the model's :class:`~livepsf.optics.PSFModelSpec`. ``P = patch_px`` (default ``window_px``); with
``patch_px > window_px`` the same PSF blurs the whole patch and the window is its centre, so a network
can see context around the window. The invalid rule is evaluated on the window.

How a batch is made (:class:`BatchSynthesizer`):

1. *Textures*: a pool of sharp textures (default 48 of 512²; kinds and weights from ``sources``) is
   kept and a fraction is replaced by new random textures every batch; each patch crops a random
   ``F x F`` square (``F`` = FFT size ``>= P + S - 1``) from a random pool texture.
2. *PSFs*: a pool of PSFs (default 256) with continuous random parameters drawn uniformly in the
   spec's ranges (canonical form) is kept as FFT spectra; ``psf_refresh`` of them are replaced every
   batch; each patch picks one. Labels are exact, only the reuse is pooled: a 113² Zernike PSF costs
   ~2 ms, the blur of a patch ~0.3 ms.
3. *Blur* by FFT of the crop ("valid" part kept, no wrap-around), then a random rotation by a multiple
   of 90° and optional mirror of the blurred patch with the matching label transform
   (:func:`livepsf.data.textures.dihedral`) — 4 distinct astigmatism labels per pool PSF.
4. *Degradation*: illumination, background, Poisson–Gaussian camera noise, offset, gain and the
   invalid rule of :mod:`livepsf.data.degrade`.

Splits never overlap:

* every split draws from its own random stream: ``numpy.random.SeedSequence(entropy, spawn_key=(split,
  worker, epoch))`` with split 0 = train, 1 = val, 2 = test. The fixed evaluation sets of
  :func:`eval_set` use the fixed entropy :data:`EVAL_ENTROPY`, the training stream the user's seed; so
  procedural textures, PSF parameters, crops and noise are independent draws;
* the images shipped with scikit-image are split by image: :data:`EVAL_IMAGES` are never used for
  training; validation crops come from their left halves, test crops from their right halves.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from livepsf.data.degrade import (
    DegradationConfig,
    PatchConditions,
    blur_fft,
    blurred_invalid,
    camera_noise,
    illumination_ramp,
    invalid_rule,
    psf_spectrum,
)
from livepsf.data.textures import HELD_OUT_KINDS, SHIPPED_IMAGES, TEXTURE_KINDS, blank, dihedral, random_texture
from livepsf.optics import Optics, PSFModelSpec, fast_fft_size, get_psf_model, psf_batch

__all__ = [
    "EVAL_ENTROPY",
    "EVAL_IMAGES",
    "SPLITS",
    "TRAIN_IMAGES",
    "BatchSynthesizer",
    "PatchDataset",
    "cache_dir",
    "default_psf_size_px",
    "eval_set",
    "eval_synthesizer",
]

SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
#: Entropy of the fixed validation and test sets (a constant: the sets are the same on every machine).
EVAL_ENTROPY = 0x5EED_2020_7E57
#: Shipped images held out of training; val uses their left halves, test their right halves.
EVAL_IMAGES: tuple[str, ...] = ("cell", "clock", "coffee", "coins", "gravel", "page")
TRAIN_IMAGES: tuple[str, ...] = tuple(n for n in SHIPPED_IMAGES if n not in EVAL_IMAGES)
_SPLIT_IMAGES = {
    "train": (TRAIN_IMAGES, (0.0, 1.0, 0.0, 1.0)),
    "val": (EVAL_IMAGES, (0.0, 1.0, 0.0, 0.5)),
    "test": (EVAL_IMAGES, (0.0, 1.0, 0.5, 1.0)),
}
# Bump when the synthesis changes so that cached evaluation sets are regenerated.
_DATA_VERSION = 6


def default_psf_size_px(spec: PSFModelSpec, optics: Optics) -> int:
    """Odd PSF side that holds the largest blur of the spec's ranges.

    Zernike models: geometric blur radius of the largest defocus + astigmatism plus 2.5 diffraction
    lengths of margin for the rings (113 px at the default optics: the most blurred Z-3 PSF keeps
    > 99.2 % of its energy, the in-focus one > 99.6 %). Gaussian models: 4 standard deviations.
    """
    if spec.kind == "gaussian":
        radius = 4.0 * math.sqrt(max(p.max for p in spec.params))
    else:
        top = {p.name: max(abs(p.min), abs(p.max)) for p in spec.params}
        slope = 4.0 * math.sqrt(3.0) * top.get("focus", 0.0) + 2.0 * math.sqrt(6.0) * math.hypot(
            top.get("astig_0", 0.0), top.get("astig_45", 0.0))
        radius = (slope + 2.5) / optics.cutoff_cycles_per_px
    return 2 * math.ceil(radius) + 1


# PSFs are regenerated in chunks of at least this many (batched FFTs amortise the per-call overhead).
_PSF_CHUNK = 16


def _dihedral_index(n: int) -> torch.Tensor:
    """``(8, n * n)`` gather indices: op o = ``rot90(k=o % 4)`` then, for o >= 4, a flip of the rows."""
    grid = torch.arange(n * n).view(n, n)
    out = []
    for op in range(8):
        g = torch.rot90(grid, op % 4, dims=(0, 1))
        if op >= 4:
            g = torch.flip(g, dims=(0,))
        out.append(g.reshape(-1))
    return torch.stack(out)


def _dihedral_values(values: torch.Tensor, spec: PSFModelSpec, op: int) -> torch.Tensor:
    """Labels after dihedral op ``op`` (see :func:`_dihedral_index`)."""
    dummy = torch.zeros(values.shape[0], 1, 1)
    return dihedral(dummy, values, spec, k=op % 4, flip_axis=0 if op >= 4 else None)[1]


def _seed_torch(seq: np.random.SeedSequence) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(seq.generate_state(1, np.uint64)[0]) & ((1 << 63) - 1))
    return g


class BatchSynthesizer:
    """Makes training batches from one random stream; see the module docstring for the pipeline.

    Parameters
    ----------
    spec
        PSF model spec.
    optics
        Optical sampling of the PSFs.
    window_px, patch_px
        Network window and patch size (``patch_px >= window_px``).
    batch_size
        Patches per batch.
    degradation
        Random degradation ranges.
    seed
        The random stream (a :class:`numpy.random.SeedSequence` or an int).
    split
        Which shipped images and regions may be used (``"train"``, ``"val"``, ``"test"``).
    sources
        Texture kinds and weights (default :data:`~livepsf.data.textures.TEXTURE_KINDS`); the
        held-out families (:data:`~livepsf.data.textures.HELD_OUT_KINDS`) only outside ``"train"``.
    psf_pool, psf_refresh
        PSFs kept, and replaced per batch. ``psf_refresh >= psf_pool`` gives every patch its own PSF.
    texture_pool, texture_px, texture_refresh
        Textures kept, their side, and the mean number replaced per batch.
    psf_size_px
        PSF side (default :func:`default_psf_size_px`).
    texture_options
        Fixed generator keywords per texture kind, e.g. ``{"lines": {"n_lines": 1}}`` (single lines
        only); they replace the random scales of :func:`~livepsf.data.textures.random_scales`.
    """

    def __init__(
        self,
        spec: PSFModelSpec,
        optics: Optics,
        window_px: int = 128,
        patch_px: int | None = None,
        batch_size: int = 64,
        degradation: DegradationConfig | None = None,
        seed: np.random.SeedSequence | int = 0,
        split: str = "train",
        sources: Mapping[str, float] | None = None,
        psf_pool: int = 256,
        psf_refresh: int = 2,
        texture_pool: int = 48,
        texture_px: int | None = None,
        texture_refresh: float = 0.15,
        psf_size_px: int | None = None,
        texture_options: Mapping[str, Mapping] | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.spec, self.optics = spec, optics
        self.window_px = int(window_px)
        self.patch_px = int(patch_px or window_px)
        if self.window_px < 8 or self.patch_px < self.window_px:
            raise ValueError(f"need 8 <= window_px <= patch_px, got {window_px} and {patch_px}")
        self.batch_size = int(batch_size)
        self.degradation = degradation or DegradationConfig()
        self.sources = dict(sources) if sources is not None else dict(TEXTURE_KINDS)
        # Held-out families are for evaluation only: training never sees them.
        allowed = (*TEXTURE_KINDS, *HELD_OUT_KINDS) if split != "train" else tuple(TEXTURE_KINDS)
        unknown = set(self.sources) - set(allowed)
        if unknown:
            raise ValueError(f"texture sources {sorted(unknown)} are not allowed in the {split} split; "
                             f"choose from {', '.join(allowed)}")
        self.psf_size_px = int(psf_size_px or default_psf_size_px(spec, optics))
        self.fft_px = fast_fft_size(self.patch_px + self.psf_size_px - 1)
        self.texture_px = int(texture_px or max(512, self.fft_px + 64))
        self.psf_pool, self.psf_refresh = int(psf_pool), int(psf_refresh)
        self.texture_pool_size, self.texture_refresh = int(texture_pool), float(texture_refresh)
        names, region = _SPLIT_IMAGES[split]
        self._shipped = {"names": names, "region": region, "min_shape": self.fft_px}
        self._kind_options = {k: dict(v) for k, v in (texture_options or {}).items()}
        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(int(seed))
        self.rng = np.random.default_rng(seq)
        self.gen = _seed_torch(seq.spawn(1)[0])
        # Kinds ride beside the pool (details of a batch name each patch's texture family).
        self.texture_kinds: list[str] = []
        self.textures: list[np.ndarray] = []
        for _ in range(self.texture_pool_size):
            tex, kind = self._new_texture_and_kind()
            self.textures.append(tex)
            self.texture_kinds.append(kind)
        self._dihedral_index = _dihedral_index(self.patch_px)
        self._psf_debt = 0.0
        self.pool_values = torch.empty(0, spec.n_params, dtype=torch.float64)
        self.pool_spectra = torch.empty(0, self.fft_px // 2 + 1, self.fft_px, dtype=torch.complex64)
        self._refresh_psfs(self.psf_pool)

    # -- pools ---------------------------------------------------------------------------------------
    def _new_texture_and_kind(self) -> tuple[np.ndarray, str]:
        return random_texture(self.texture_px, self.rng, self.sources,
                              **{"shipped": self._shipped, **self._kind_options})

    def _refresh_psfs(self, n: int) -> None:
        n = min(n, self.psf_pool)
        values = self.spec.sample(n, self.gen)
        psfs = psf_batch(self.spec, values, self.psf_size_px, self.optics)
        spectra = psf_spectrum(psfs, self.fft_px)
        if n >= self.psf_pool or len(self.pool_values) < self.psf_pool:
            self.pool_values, self.pool_spectra = values, spectra
            return
        slots = torch.randperm(self.psf_pool, generator=self.gen)[:n]
        self.pool_values[slots] = values
        self.pool_spectra[slots] = spectra

    def _refresh_textures(self) -> None:
        n = int(self.texture_refresh) + int(self.rng.random() < self.texture_refresh % 1)
        for _ in range(min(n, self.texture_pool_size)):
            tex, kind = self._new_texture_and_kind()  # drawn before the slot, as the streams always were
            slot = int(self.rng.integers(self.texture_pool_size))
            self.textures[slot], self.texture_kinds[slot] = tex, kind

    # -- one batch -----------------------------------------------------------------------------------
    def next_batch(self, details: bool = False):
        """The next ``(patches, targets)``; with ``details``, also a dict of physical values and draws."""
        b, f, p, w = self.batch_size, self.fft_px, self.patch_px, self.window_px
        cfg = self.degradation
        if self.psf_refresh >= self.psf_pool:
            self._refresh_psfs(self.psf_pool)
            idx = torch.randperm(self.psf_pool, generator=self.gen)[:b] if b <= self.psf_pool else \
                torch.randint(self.psf_pool, (b,), generator=self.gen)
        else:
            # Replace psf_refresh PSFs per batch on average, in chunks: one call per few batches is cheaper.
            self._psf_debt += self.psf_refresh
            if self._psf_debt >= _PSF_CHUNK:
                self._refresh_psfs(int(self._psf_debt))
                self._psf_debt -= int(self._psf_debt)
            idx = torch.randint(self.psf_pool, (b,), generator=self.gen)
        self._refresh_textures()
        cond = PatchConditions.draw(b, cfg, self.gen)

        crops = np.empty((b, f, f), dtype=np.float32)
        which = self.rng.integers(len(self.textures), size=b)
        for i in range(b):
            if cond.blank[i]:
                crops[i] = blank(f, self.rng)
                continue
            tex = self.textures[int(which[i])]  # >= f x f; shipped images may be below texture_px
            oy = int(self.rng.integers(0, tex.shape[0] - f + 1))
            ox = int(self.rng.integers(0, tex.shape[1] - f + 1))
            if cond.invert[i]:
                np.subtract(1.0, tex[oy : oy + f, ox : ox + f], out=crops[i])
            else:
                crops[i] = tex[oy : oy + f, ox : ox + f]
        t = torch.from_numpy(crops).mul_(cond.contrast.float()[:, None, None])
        photons = torch.where(cond.black, 0.0, cond.photons)
        rule_photons = cond.photons_for_rules()  # noise-free patches are limited by texture, not noise

        lo = (f - w) // 2
        window = t[:, lo : lo + w, lo : lo + w]
        invalid = invalid_rule(window, rule_photons, cond.background, cond.read_noise_e, cfg)
        invalid = torch.maximum(invalid, (cond.blank | cond.black).float())

        values = self.pool_values[idx].clone()
        blurred = blur_fft(t, self.pool_spectra[idx], self.psf_size_px, p)
        m = (p - w) // 2  # the window inside the (possibly larger) patch
        buried = blurred_invalid(blurred[:, m : m + w, m : m + w], rule_photons, cond.background,
                                 cond.read_noise_e, cfg)
        invalid = torch.maximum(invalid, buried)
        # Dihedral op o: o % 4 quarter turns, then a row flip when o >= 4 (one gather for the images).
        ops = torch.randint(8, (b,), generator=self.gen)
        blurred = blurred.flatten(1).gather(1, self._dihedral_index[ops]).view(b, p, p)
        for op in range(1, 8):
            m = ops == op
            if bool(m.any()):
                values[m] = _dihedral_values(values[m], self.spec, op)

        scale = photons.float()[:, None, None]
        if bool((cond.gradient > 0).any()):
            scale = scale * illumination_ramp(p, cond.gradient, cond.gradient_angle)
        electrons = blurred.add_(cond.background.float()[:, None, None]).mul_(scale)
        gain = cond.gain_below_saturation(electrons.flatten(1).amax(dim=1))
        raw = camera_noise(electrons, cond.read_noise_e, gain, cond.offset_adu, self.gen,
                           noise=cfg.noise, quantise=cfg.quantise)
        if bool(cond.noise_free.any()):  # the continuum's limit: expected ADU, no noise, no rounding
            nf = cond.noise_free
            raw[nf] = (cond.offset_adu[nf, None, None] + gain[nf, None, None] * electrons[nf].double()).float()
        targets = torch.cat([invalid[:, None], self.spec.normalise(values).float()], dim=1)
        patches = raw[:, None].contiguous()
        if not details:
            return patches, targets
        kinds = ["blank" if bool(cond.blank[i]) else self.texture_kinds[int(which[i])] for i in range(b)]
        # "sharp": the F x F crops times contrast, before blur (what blur_fft received; blank ones included).
        return patches, targets, {"values": values, "conditions": cond, "electrons": electrons,
                                  "psf_index": idx, "dihedral": ops, "sharp": t, "gain": gain,
                                  "texture_kind": kinds}


class PatchDataset(IterableDataset):
    """Endless (or ``n_batches`` long) stream of training batches; use ``DataLoader(ds, batch_size=None)``.

    Reproducible: the same ``seed``, ``split``, epoch (:meth:`set_epoch`) and number of DataLoader
    workers give the same batches. Each worker draws from its own stream
    (``SeedSequence(seed, spawn_key=(split, worker, epoch))``) so workers never duplicate each other.

    Parameters
    ----------
    psf_model
        ``"Z-1"``, ``"Z-2"``, ``"Z-3"``, ``"G-1"``, ``"G-2"`` or a spec.
    optics
        Optical sampling (default :class:`~livepsf.optics.Optics`).
    window_px, patch_px
        Network window (128) and patch side (default = window).
    seed
        Stream seed.
    split
        ``"train"`` (default), ``"val"`` or ``"test"``; see the module docstring for the separation.
    batch_size
        Patches per batch.
    degradation
        :class:`~livepsf.data.degrade.DegradationConfig` (default ranges when omitted).
    sources
        ``{texture kind: weight}`` (default :data:`~livepsf.data.textures.TEXTURE_KINDS`).
    n_batches
        Batches per epoch over all workers; ``None`` for an endless stream.
    synth_options
        Extra :class:`BatchSynthesizer` options (``psf_pool``, ``psf_refresh``, ``texture_pool`` ...).

    Examples
    --------
    >>> ds = PatchDataset("Z-3", batch_size=32, n_batches=100)
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
    >>> patches, targets = next(iter(loader))       # (32, 1, 128, 128), (32, 4)
    """

    def __init__(
        self,
        psf_model: str | PSFModelSpec,
        optics: Optics | None = None,
        window_px: int = 128,
        patch_px: int | None = None,
        seed: int = 0,
        split: str = "train",
        batch_size: int = 64,
        degradation: DegradationConfig | None = None,
        sources: Mapping[str, float] | None = None,
        n_batches: int | None = None,
        **synth_options,
    ) -> None:
        super().__init__()
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.spec = get_psf_model(psf_model) if isinstance(psf_model, str) else psf_model
        self.optics = optics or Optics()
        self.window_px, self.patch_px = int(window_px), int(patch_px or window_px)
        self.seed, self.split, self.batch_size = int(seed), split, int(batch_size)
        self.degradation = degradation or DegradationConfig()
        self.sources = dict(sources) if sources is not None else None
        self.n_batches = n_batches
        self.synth_options = synth_options
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the stream of an epoch (call before iterating, as with ``DistributedSampler``)."""
        self.epoch = int(epoch)

    def synthesizer(self, worker: int = 0) -> BatchSynthesizer:
        seq = np.random.SeedSequence(self.seed, spawn_key=(SPLITS[self.split], int(worker), self.epoch))
        return BatchSynthesizer(self.spec, self.optics, self.window_px, self.patch_px, self.batch_size,
                                self.degradation, seq, self.split, self.sources, **self.synth_options)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.n_batches is None:
            count = None
        else:
            count = self.n_batches // workers + (1 if worker < self.n_batches % workers else 0)
            if count == 0:
                return
        synth = self.synthesizer(worker)
        made = 0
        while count is None or made < count:
            yield synth.next_batch()
            made += 1


# -- fixed evaluation sets -------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where evaluation sets are cached: ``$LIVEPSF_CACHE_DIR`` or the user cache dir (platformdirs)."""
    env = os.environ.get("LIVEPSF_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("livepsf"))


def eval_synthesizer(
    spec: PSFModelSpec,
    split: str,
    n: int,
    window_px: int,
    patch_px: int,
    degradation: DegradationConfig,
    optics: Optics,
    sources: Mapping[str, float] | None = None,
    texture_options: Mapping[str, Mapping] | None = None,
) -> BatchSynthesizer:
    """The synthesizer whose first ``ceil(n / 64)`` batches are :func:`eval_set`'s ``n`` patches.

    For studies that need each evaluation patch's draws (``next_batch(details=True)``: sharp crop,
    conditions, dihedral op): the same arguments give the same patches, bit for bit. The texture pool
    size depends on ``n``, so pass the ``n`` of the set you mean (e.g. 2000 for the test set).
    """
    batch = min(64, n)
    return BatchSynthesizer(spec, optics, window_px, patch_px, batch, degradation,
                            np.random.SeedSequence(EVAL_ENTROPY, spawn_key=(SPLITS[split],)), split, sources,
                            psf_pool=batch, psf_refresh=batch, texture_pool=min(32, math.ceil(n / 8)),
                            texture_refresh=1.0, texture_options=texture_options)


def eval_set(
    psf_model: str | PSFModelSpec,
    split: str = "val",
    n: int = 2000,
    window_px: int = 128,
    patch_px: int | None = None,
    degradation: DegradationConfig | None = None,
    optics: Optics | None = None,
    sources: Mapping[str, float] | None = None,
    cache: bool = True,
    texture_options: Mapping[str, Mapping] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed validation or test set, the same on every call and machine, never produced by training.

    Every patch has its own PSF (no pool reuse). The set is cached as ``.npz`` (loaded with
    ``allow_pickle=False``) under :func:`cache_dir` ``/eval``, keyed by a hash of all arguments
    (including the spec's parameter ranges: a spec with narrowed ranges makes a set of its own).
    Sets that differ only in ``degradation``'s photon range or noise draw the same textures, crops
    and PSFs: the photon decades of the test battery compare like with like.

    Returns
    -------
    (patches, targets)
        ``(n, 1, P, P)`` float32 raw values and ``(n, 1 + N)`` float32 targets, as the training batches.
    """
    if split not in ("val", "test"):
        raise ValueError(f"eval_set split must be 'val' or 'test', got {split!r}")
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    spec = get_psf_model(psf_model) if isinstance(psf_model, str) else psf_model
    optics = optics or Optics()
    degradation = degradation or DegradationConfig()
    patch_px = int(patch_px or window_px)
    key = {
        "version": _DATA_VERSION, "psf_model": spec.name, "split": split, "n": n, "window_px": window_px,
        "patch_px": patch_px, "degradation": degradation.to_dict(), "optics": optics.to_dict(),
        "sources": dict(sources) if sources is not None else dict(TEXTURE_KINDS),
        "ranges": [[p.name, p.min, p.max] for p in spec.params],
        "texture_options": {k: dict(v) for k, v in (texture_options or {}).items()},
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "eval" / f"{spec.name}-{split}-{n}-{digest}.npz"
    if cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                return torch.from_numpy(data["patches"].astype(np.float32)), torch.from_numpy(data["targets"])
        except (OSError, ValueError, KeyError):
            pass  # damaged cache file: regenerate it below
    synth = eval_synthesizer(spec, split, n, window_px, patch_px, degradation, optics, sources, texture_options)
    parts = [synth.next_batch() for _ in range(math.ceil(n / synth.batch_size))]
    patches = torch.cat([q for q, _ in parts])[:n]
    targets = torch.cat([t for _, t in parts])[:n]
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        stored = patches.numpy()
        if degradation.quantise and np.array_equal(stored, np.round(stored)):
            stored = stored.astype(np.uint16)  # whole ADU in [0, 65535]: lossless and half the size
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, patches=stored, targets=targets.numpy())
        os.replace(tmp, path)
    return patches, targets

"""Training of PSF-parameter networks (paper Section II-E2) and export of the result with its card.

Loss (:func:`psf_loss`): eq. 11 with gamma = 1 on parameters normalised to [0, 1],
``E = (a0 - â0)² + (1 - a0) / (2N) · Σ_n (a_n - â_n)²``, where ``â0`` is the sigmoid of the network's
invalid logit, with two additions:

* **sign symmetry** (Zernike models): PSF(a) = PSF(-a), so the squared error is the smaller of those
  against ``a`` and against ``-a``. The canonical form (focus >= 0) flips the astigmatism's sign at
  focus 0, where images of (f, A) and (-f, -A) are nearly the same: a plain error would ask the network
  for a jump there. Predictions are put back in canonical form after the network
  (:func:`livepsf.net.outputs.split_outputs`).
* **uncertainty** (networks with log-σ outputs): a heteroscedastic Gaussian negative log-likelihood
  ``½ (r² / σ² + 2 log σ)`` per parameter, weighted by ``nll_weight``, where ``r`` is the (detached)
  error of the mean on valid patches, and on invalid patches the label's distance from the middle of
  its range (σ learns "anything in the range": textureless windows say they do not know). The mean is
  learnt by eq. 11 alone, so the σ head cannot buy a lower loss by giving up on hard patches. After
  training, σ is calibrated on the validation set (:func:`calibrate_sigma`).
* **dihedral consistency** (optional, ``consistency_weight``): every batch is also seen after one random
  rotation or mirror (:data:`~livepsf.net.symmetry.DIHEDRAL_OPS`), with its labels transformed; besides
  the loss above on both, the two readings of each valid window, mapped into one frame, are pulled
  together (:func:`consistency_loss`). The PSF of a turned window is the turned PSF, so a network that
  reads it otherwise reads the content's orientation (the dihedral average of 8 readings is more
  accurate than one); the term trains that out of the single reading the live view gets.

Adam, cosine learning-rate decay over the budget (steps or wall-clock minutes), gradient
clipping, checkpoints (plain state dicts, loaded with ``weights_only=True``) and resuming.
Training data are generated on the fly by :mod:`livepsf.data` (never seen twice); validation and test
sets are fixed-seed sets that the training stream never produces.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from livepsf.data.dataset import PatchDataset, eval_set
from livepsf.data.degrade import DegradationConfig
from livepsf.errors import InputError
from livepsf.net.architectures import ARCHITECTURES, build_network, count_parameters
from livepsf.net.card import ModelCard
from livepsf.net.evaluate import EvalResult, evaluate_outputs, predict_raw
from livepsf.net.export import export_model
from livepsf.net.outputs import canonical_normalised, has_sign_symmetry, nearest_equivalent, split_outputs
from livepsf.net.symmetry import DIHEDRAL_OPS, inverse_op, transform_image, transform_values
from livepsf.optics import Optics, PSFModelSpec, get_psf_model

__all__ = ["TrainConfig", "TrainResult", "calibrate_sigma", "consistency_loss", "eq11_loss", "lineage",
           "load_checkpoint", "pick_device", "psf_loss", "train"]

CHECKPOINT_VERSION = 1


def eq11_loss(output: torch.Tensor, target: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Paper eq. 11, averaged over the batch.

    Parameters
    ----------
    output
        ``(B, 1 + N)`` raw network outputs: invalid logit, then normalised parameters (further columns,
        such as log σ, are ignored).
    target
        ``(B, 1 + N)``: invalid label (0/1), then normalised parameters (ignored where invalid).
    """
    a0 = target[:, 0]
    n = target.shape[1] - 1  # σ columns after the N parameters (if any) are not part of eq. 11
    validity = (a0 - torch.sigmoid(output[:, 0])) ** 2
    params = ((target[:, 1:] - output[:, 1 : 1 + n]) ** 2).sum(dim=1) * (1.0 - a0) / (2 * n)
    return (gamma * validity + params).mean()


#: log σ (normalised units) is clamped to this range in the loss: σ from 0.0009 to 1.6 x the range.
_LOG_SIGMA_RANGE = (-7.0, 0.5)


def psf_loss(output: torch.Tensor, target: torch.Tensor, spec: PSFModelSpec, gamma: float = 1.0,
             sign_invariant: bool = True, nll_weight: float = 0.05) -> torch.Tensor:
    """Eq. 11 with the sign symmetry and, for outputs with log σ, the Gaussian NLL (module docstring).

    Parameters
    ----------
    output
        ``(B, 1 + N)`` or ``(B, 1 + 2N)`` raw network outputs (invalid logit, normalised parameters,
        log σ).
    target
        ``(B, 1 + N)``: invalid label, then canonical normalised parameters.
    spec
        The PSF model (its parameter ranges define the sign mirror).
    sign_invariant
        Take the smaller error against ``a`` and ``-a`` (Zernike models only; ignored otherwise).
    nll_weight
        Weight of the mean NLL of the σ outputs relative to eq. 11.
    """
    n = spec.n_params
    if output.shape[1] not in (1 + n, 1 + 2 * n) or target.shape[1] != 1 + n:
        raise ValueError(f"{spec.name}: outputs {tuple(output.shape)} and targets {tuple(target.shape)} do not "
                         f"match 1 + {n} parameters")
    a0 = target[:, 0]
    mean, truth = output[:, 1 : 1 + n], target[:, 1:]
    squared = (mean - (nearest_equivalent(mean, truth, spec) if sign_invariant else truth)) ** 2
    validity = (a0 - torch.sigmoid(output[:, 0])) ** 2
    loss = (gamma * validity + squared.sum(dim=1) * (1.0 - a0) / (2 * n)).mean()
    if output.shape[1] == 1 + 2 * n:
        log_sigma = output[:, 1 + n :].clamp(*_LOG_SIGMA_RANGE)
        residual = torch.where(a0[:, None] > 0.5, (truth - 0.5) ** 2, squared.detach())
        nll = 0.5 * (residual * torch.exp(-2.0 * log_sigma) + 2.0 * log_sigma)
        loss = loss + nll_weight * nll.mean()
    return loss


def transform_targets(target: torch.Tensor, spec: PSFModelSpec, k: int, flip: bool) -> torch.Tensor:
    """Targets ``(B, 1 + N)`` of windows after :func:`~livepsf.net.symmetry.transform_image` ``(k, flip)``."""
    values = transform_values(spec.denormalise(target[:, 1:]), spec, k, flip)
    return torch.cat([target[:, :1], spec.normalise(values)], dim=1)


def consistency_loss(output: torch.Tensor, output_turned: torch.Tensor, target: torch.Tensor, spec: PSFModelSpec,
                     k: int, flip: bool) -> torch.Tensor:
    """Disagreement of two readings of the same windows, the second taken after the dihedral op ``(k, flip)``.

    The second reading's parameters are mapped back to the untransformed window; the loss is the mean
    over valid windows (label ``a0 = 0``) of the squared difference of the normalised parameters, against
    the nearer sign mirror for Zernike models (PSF(a) = PSF(-a)). Both readings get gradients.
    """
    n = spec.n_params
    first = canonical_normalised(output[:, 1 : 1 + n], spec)
    turned = canonical_normalised(output_turned[:, 1 : 1 + n], spec)
    back = spec.normalise(transform_values(spec.denormalise(turned), spec, *inverse_op(k, flip)))
    squared = ((first - nearest_equivalent(first, back, spec)) ** 2).sum(dim=1) / n
    valid = 1.0 - target[:, 0]
    return (squared * valid).sum() / valid.sum().clamp_min(1.0)


def calibrate_sigma(module: torch.nn.Module, patches: torch.Tensor, targets: torch.Tensor, spec: PSFModelSpec,
                    device: torch.device | str = "cpu") -> dict[str, Any]:
    """Scale a network's σ outputs so that they are calibrated on a labelled (validation) set.

    Per parameter, on valid patches, with ``z = |error| / σ`` (errors of the canonical prediction against
    the label or its sign mirror, whichever parameter set is nearer: :func:`nearest_equivalent`), σ is
    multiplied by
    ``k = max(q68(z), q95(z) / 2)``: then at least 68.3 % of errors lie within 1σ and at least 95.4 %
    within 2σ on this set (heavy tails make the second condition the binding one). ``k`` goes into the
    module's ``log_sigma_shift`` buffer, so the exported network gives calibrated σ.

    Returns
    -------
    dict
        ``{"factors": {name: k}, "n_windows": ..., "n_valid": ...}`` for the model card; empty when the
        module has no σ.
    """
    shift = getattr(module, "log_sigma_shift", None)
    if shift is None or shift.numel() == 0:
        return {}
    raw = predict_raw(module, patches, device=device)
    valid = targets[:, 0] < 0.5
    parts = split_outputs(raw[valid], spec)
    err = (parts.values - nearest_equivalent(parts.values, targets[valid, 1:], spec)).abs()
    z = (err / parts.sigma.clamp_min(1e-12)).double()
    if len(z) < 10:
        raise ValueError(f"σ calibration needs at least 10 valid patches, got {len(z)}")
    k = torch.maximum(torch.quantile(z, 0.6827, dim=0), torch.quantile(z, 0.9545, dim=0) / 2.0).clamp_min(1e-6)
    with torch.no_grad():
        shift.add_(torch.log(k).to(shift))
    return {"factors": {name: round(float(k[i]), 4) for i, name in enumerate(spec.names)},
            "n_windows": len(patches), "n_valid": int(valid.sum()),
            "rule": "sigma *= max(q68(|err|/sigma), q95(|err|/sigma) / 2) per parameter on the validation set"}


@dataclass
class TrainConfig:
    """Everything that defines a training run (recorded in checkpoints and in the model card).

    Attributes
    ----------
    psf_model, architecture, name
        What to regress, with which network (:data:`~livepsf.net.architectures.ARCHITECTURES`), and the
        model's name.
    steps, minutes
        The budget; training stops at whichever ends first, and the cosine schedule runs over it.
    batch_size, lr, lr_min_fraction, warmup_steps, weight_decay, grad_clip
        Optimisation (AdamW; the learning rate decays from ``lr`` to ``lr * lr_min_fraction``).
    seed
        Network initialisation and training data stream.
    val_n, val_every, checkpoint_every
        Validation-set size and how often (steps) to validate and to write the checkpoint.
    calibration_n
        Size of the validation set that σ is calibrated on after training (None: the ``val_n`` set).
        The 68th percentile of a few hundred valid windows moves the 1σ coverage on other data by
        several percent; the shipped models are calibrated on 4000 windows.
    device, threads, workers
        Where to train (default CUDA when present), torch threads, data-making processes.
    uncertainty, sign_invariant, nll_weight
        Predict a σ per parameter; take the smaller error against ``a`` and ``-a`` (Zernike models);
        weight of the σ's negative log-likelihood (see :func:`psf_loss`).
    consistency_weight
        Weight of the dihedral-consistency term (module docstring, :func:`consistency_loss`); 0: off. On,
        each step also runs the network on the batch turned or mirrored (about twice the compute per step).
    data_echo
        Optimisation steps per training batch (1: every step a new batch). "Data echoing" (Choi et al.
        2019): when making patches is slower than learning from them (a GPU fed by CPU workers), reusing
        each batch a few times gains steps at little cost.
    optics
        Optical sampling of the training PSFs (:class:`~livepsf.optics.Optics` fields).
    data
        Overrides of :class:`~livepsf.data.degrade.DegradationConfig` (e.g. ``{"photons": [10, 1e5]}``).
    synth
        Extra :class:`~livepsf.data.dataset.BatchSynthesizer` options (pool sizes).
    init_from
        A trained model (``.pt`` with its card) or checkpoint (``.ckpt``) whose weights start a new run:
        loaded as they are into the same architecture, or through the network's ``warm_start`` (e.g.
        :class:`~livepsf.net.architectures.SpectralTrunkNet` from a ``shared-trunk`` model). Ignored when
        resuming (the checkpoint has the weights).
    init_lr_factor
        Learning-rate factor for the parameters ``init_from`` supplied whole (e.g. 0.1: the trained trunk
        moves slowly while new parts learn at ``lr``).
    command
        The command line that started the run (recorded in the card).
    """

    psf_model: str = "Z-3"
    architecture: str = "shared-trunk"
    name: str = "default"
    steps: int | None = None
    minutes: float | None = None
    batch_size: int = 32
    lr: float = 2e-3
    lr_min_fraction: float = 0.02
    warmup_steps: int = 100
    weight_decay: float = 1e-5
    grad_clip: float = 1.0
    seed: int = 0
    window_px: int = 128
    val_n: int = 512
    calibration_n: int | None = None
    val_every: int = 200
    checkpoint_every: int = 200
    device: str | None = None
    threads: int | None = None
    workers: int = 1
    uncertainty: bool = True
    sign_invariant: bool = True
    nll_weight: float = 0.05
    consistency_weight: float = 0.0
    data_echo: int = 1
    optics: dict[str, float] = field(default_factory=lambda: Optics().to_dict())
    data: dict[str, Any] = field(default_factory=dict)
    synth: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    init_lr_factor: float = 1.0
    command: str = ""

    def budget(self) -> str:
        parts = []
        if self.steps:
            parts.append(f"{self.steps} steps")
        if self.minutes:
            parts.append(f"{self.minutes:g} min")
        return " or ".join(parts)

    def validate(self) -> None:
        get_psf_model(self.psf_model)
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if not self.steps and not self.minutes:
            raise InputError("give a training budget: --steps N or --minutes M")
        if (self.steps is not None and self.steps < 1) or (self.minutes is not None and self.minutes <= 0):
            raise InputError("the training budget must be positive")
        if self.batch_size < 2:
            raise InputError("batch size must be at least 2")
        if self.data_echo < 1:
            raise InputError("data_echo must be at least 1")
        if not (math.isfinite(self.consistency_weight) and self.consistency_weight >= 0):
            raise InputError(f"consistency_weight must be a non-negative number, got {self.consistency_weight}")


@dataclass
class TrainResult:
    """The trained network and what happened."""

    module: torch.nn.Module
    config: TrainConfig
    step: int
    seconds: float
    history: list[dict[str, float]]
    validation: EvalResult | None
    checkpoint: Path | None
    segments: list[dict[str, Any]] = field(default_factory=list)
    sigma_calibration: dict[str, Any] = field(default_factory=dict)


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when present, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint (a dict of tensors and plain values; never unpickles objects)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a livepsf training checkpoint ({str(exc).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "livepsf-checkpoint":
        raise InputError(f"{path}: not a livepsf training checkpoint")
    return ckpt


def initial_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a trained model (TorchScript ``.pt``) or of a training checkpoint (``.ckpt``)."""
    path = Path(path)
    if path.suffix == ".ckpt":
        return dict(load_checkpoint(path)["model"])
    if not path.is_file():
        raise InputError(f"{path}: no such model")
    try:
        return dict(torch.jit.load(str(path), map_location="cpu").state_dict())
    except Exception as exc:
        raise InputError(f"{path}: not a TorchScript model ({str(exc).splitlines()[0]})") from None


def _source_segments(path: str | Path) -> list[dict[str, Any]]:
    """The training segments that made the weights in ``path``: a checkpoint's, or an exported model's card's.

    A run started from them (:attr:`TrainConfig.init_from`) records them in its first segment
    (``init_from_segments``), so its card lists every segment behind the model. Empty when ``path`` has no
    record (a model without a card).
    """
    path = Path(path)
    if path.suffix == ".ckpt":
        return list(load_checkpoint(path).get("segments", []))
    card = path.with_suffix(".json")
    if not card.is_file():
        return []
    try:
        return list(ModelCard.load(card).training.get("segments", []))
    except (InputError, ValueError, OSError):  # a damaged card does not stop a training: lineage unknown
        return []


def lineage(segments: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every segment behind a run in training order: a segment's ``init_from_segments`` come before it."""
    flat: list[dict[str, Any]] = []
    for segment in segments:
        flat += lineage(segment.get("init_from_segments") or [])
        flat.append(segment)
    return flat


def _start_from(module: torch.nn.Module, path: str | Path) -> set[str]:
    """Initialise ``module`` from trained weights (see :attr:`TrainConfig.init_from`).

    Returns the names of the parameters that the file supplied whole (same shape): the pretrained ones.
    """
    state = initial_weights(path)
    try:
        if hasattr(module, "warm_start"):
            module.warm_start(state)
        else:
            module.load_state_dict(state)
    except (KeyError, RuntimeError) as exc:
        raise InputError(f"{path}: its weights do not fit this architecture ({str(exc).splitlines()[0]})") from None
    return {name for name, p in module.named_parameters() if name in state and state[name].shape == p.shape}


def _optimiser(module: torch.nn.Module, config: TrainConfig, pretrained: set[str]) -> torch.optim.Optimizer:
    """AdamW; parameters in ``pretrained`` learn at ``config.init_lr_factor`` times the rate of the others."""
    groups = [{"params": [p for n, p in module.named_parameters() if n not in pretrained], "lr_factor": 1.0}]
    if pretrained:
        groups.append({"params": [p for n, p in module.named_parameters() if n in pretrained],
                       "lr_factor": config.init_lr_factor})
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, weight_decay=config.weight_decay)


def _save_checkpoint(path: Path, module, optimiser, config: TrainConfig, step: int, seconds: float,
                     history: list[dict[str, float]], segments: list[dict[str, Any]], pretrained: set[str]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({
        "format": "livepsf-checkpoint", "version": CHECKPOINT_VERSION, "config": asdict(config),
        "model": module.state_dict(), "optimiser": optimiser.state_dict(), "step": step,
        "seconds": seconds, "history": history, "segments": segments, "pretrained": sorted(pretrained),
    }, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never leaves a broken checkpoint


def _degradation(config: TrainConfig) -> DegradationConfig:
    """The training (and validation) degradation ranges: the data layer's defaults plus ``config.data``."""
    known = {k: v for k, v in config.data.items() if k in DegradationConfig.__dataclass_fields__}
    return DegradationConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in known.items()})


def _train_stream(config: TrainConfig, spec: PSFModelSpec, optics: Optics, start_step: int) -> Iterator:
    """Endless training batches. A resumed run continues on a fresh stream keyed by its step count.

    With ``workers`` > 0 the batches are made in background processes while the network trains.
    """
    dataset = PatchDataset(spec, optics, window_px=config.window_px, seed=config.seed, split="train",
                           batch_size=config.batch_size, degradation=_degradation(config), **config.synth)
    dataset.set_epoch(start_step)
    if config.workers <= 0:
        return iter(dataset)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=config.workers,
                                         prefetch_factor=4, persistent_workers=False,
                                         worker_init_fn=_one_thread)
    return iter(loader)


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)


def _lr_factor(progress: float, step: int, config: TrainConfig) -> float:
    warm = min(1.0, (step + 1) / max(1, config.warmup_steps))
    cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return warm * (config.lr_min_fraction + (1.0 - config.lr_min_fraction) * cos)


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: str | Path | None = None,
    progress: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    val_set: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainResult:
    """Train a network as ``config`` says; checkpoints go to ``out_dir/<name>.ckpt``.

    Parameters
    ----------
    config
        The run's settings; the budget is ``steps``, ``minutes`` or both (whichever ends first).
    out_dir
        Folder for the checkpoint (created).
    resume
        A checkpoint to continue from (same PSF model and architecture); its step count, elapsed time,
        optimiser state and data-stream position are restored.
    progress
        Show a rich progress bar with the loss and the validation R².
    on_step
        Called with ``(step, loss)`` after each optimisation step (tests, logging).
    val_set
        ``(patches, targets)`` for validation; default: ``eval_set(psf_model, "val", n=config.val_n)``.
    """
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    spec = get_psf_model(config.psf_model)
    optics = Optics(**config.optics)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / f"{config.name}.ckpt"

    _seed_all(config.seed)
    module = build_network(config.architecture, spec.n_params, config.window_px, config.uncertainty).to(device)
    step, seconds, history = 0, 0.0, []
    segments: list[dict[str, Any]] = []
    pretrained: set[str] = set()
    ckpt: dict[str, Any] | None = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        old = ckpt["config"]
        for key in ("psf_model", "architecture", "window_px", "uncertainty"):
            if old.get(key, False if key == "uncertainty" else None) != getattr(config, key):
                raise InputError(f"{resume}: checkpoint was trained with {key}={old.get(key)!r}, "
                                 f"not {getattr(config, key)!r}")
        pretrained = set(ckpt.get("pretrained", []))  # the optimiser's parameter groups, as they were
    elif config.init_from:
        pretrained = _start_from(module, config.init_from)
    optimiser = _optimiser(module, config, pretrained)
    if ckpt is not None:
        module.load_state_dict(ckpt["model"])
        optimiser.load_state_dict(ckpt["optimiser"])
        step, seconds, history = int(ckpt["step"]), float(ckpt["seconds"]), list(ckpt["history"])
        segments = list(ckpt.get("segments", []))

    # One segment per train() call: a resumed model's card lists every command that made it.
    segments.append({"command": config.command, "start_step": step, "start_seconds": round(seconds, 1),
                     "init_from": None if resume is not None else config.init_from,
                     "init_from_segments": _source_segments(config.init_from)
                     if resume is None and config.init_from else [],
                     "init_lr_factor": config.init_lr_factor if pretrained else None,
                     "budget": config.budget(), "lr": config.lr, "data": dict(config.data),
                     "hardware": hardware_description(device), "batch_size": config.batch_size,
                     "data_echo": config.data_echo, "workers": config.workers})
    stream = _train_stream(config, spec, optics, start_step=step)
    if val_set is None:  # default degradations whatever the training ranges, so runs stay comparable
        val_set = eval_set(spec, "val", n=config.val_n, window_px=config.window_px, optics=optics)
    val_x, val_t = val_set

    def validate() -> EvalResult:
        module.eval()
        res = evaluate_outputs(predict_raw(module, val_x, device=device), val_t, spec)
        module.train()
        return res

    total_steps = config.steps or 0
    budget_s = (config.minutes or 0) * 60.0

    def fraction() -> float:
        f = 0.0
        if total_steps:
            f = max(f, step / total_steps)
        if budget_s:
            f = max(f, seconds / budget_s)
        return f

    bar = _Progress(progress, config)
    x = t = None
    op_generator = torch.Generator().manual_seed(config.seed * 1009 + step)  # the dihedral op of each step

    def loss_of(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return psf_loss(output, target, spec, sign_invariant=config.sign_invariant, nll_weight=config.nll_weight)

    validation: EvalResult | None = None
    running = float("nan")
    module.train()
    t_last = time.perf_counter()
    with bar:
        while fraction() < 1.0:
            if step % config.data_echo == 0 or x is None:  # data echoing: reuse a batch while data are scarce
                x, t = next(stream)
                x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
            for group in optimiser.param_groups:
                # Checkpoints from before init_lr_factor restore groups without a factor.
                group["lr"] = config.lr * group.get("lr_factor", 1.0) * _lr_factor(fraction(), step, config)
            if config.consistency_weight > 0:
                k, flip = DIHEDRAL_OPS[1 + int(torch.randint(len(DIHEDRAL_OPS) - 1, (1,), generator=op_generator))]
                out, out_turned = module(torch.cat([x, transform_image(x, k, flip)])).chunk(2)
                loss = 0.5 * (loss_of(out, t) + loss_of(out_turned, transform_targets(t, spec, k, flip))) \
                    + config.consistency_weight * consistency_loss(out, out_turned, t, spec, k, flip)
            else:
                loss = loss_of(module(x), t)
            if not torch.isfinite(loss):
                raise RuntimeError(f"training diverged at step {step} (loss {loss.item()})")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
            optimiser.step()
            step += 1
            now = time.perf_counter()
            seconds += now - t_last
            t_last = now
            value = float(loss.item())
            running = value if math.isnan(running) else 0.98 * running + 0.02 * value
            if on_step is not None:
                on_step(step, value)
            done = fraction() >= 1.0
            if step % config.val_every == 0 or done:
                validation = validate()
                history.append({"step": step, "seconds": round(seconds, 1), "loss": round(running, 6),
                                "val_mean_r2": round(validation.mean_r2, 4),
                                "val_validity_accuracy": round(validation.validity_accuracy, 4)})
                t_last = time.perf_counter()  # validation time is not training time
            if step % config.checkpoint_every == 0 or done:
                _save_checkpoint(ckpt_path, module, optimiser, config, step, seconds, history, segments, pretrained)
                t_last = time.perf_counter()
            bar.update(fraction(), step, running, validation)
    module.eval()
    # Calibrate σ after the checkpoint is written: a resumed run continues from the uncalibrated network.
    calib_x, calib_t = (val_x, val_t) if config.calibration_n is None else _calibration_set(config, spec)
    sigma_calibration = calibrate_sigma(module, calib_x, calib_t, spec, device=device)
    return TrainResult(module, config, step, seconds, history, validation, ckpt_path, segments, sigma_calibration)


class _Progress:
    """A rich progress bar (or nothing) showing the budget used, the loss and the validation R²."""

    def __init__(self, enabled: bool, config: TrainConfig) -> None:
        self.enabled = enabled
        self.config = config
        self._progress = None
        self._task = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                      TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
                                      TextColumn("{task.fields[info]}"))
            self._progress.__enter__()
            self._task = self._progress.add_task(f"train {self.config.name}", total=1.0, info="")
        return self

    def update(self, fraction: float, step: int, loss: float, validation: EvalResult | None) -> None:
        if self._progress is None:
            return
        r2 = f" val R² {validation.mean_r2:.3f}" if validation is not None else ""
        self._progress.update(self._task, completed=min(1.0, fraction), info=f"step {step} loss {loss:.4f}{r2}")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def hardware_description(device: torch.device | str = "cpu") -> str:
    """A one-line description of where training ran."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"CUDA {torch.cuda.get_device_name(device)}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, " \
           f"{os.cpu_count()} cores visible"


def _loss_description(config: TrainConfig) -> str:
    parts = ["paper eq. 11, gamma = 1, on parameters normalised to [0, 1]"]
    if config.sign_invariant and has_sign_symmetry(get_psf_model(config.psf_model)):
        parts.append("smaller of the errors against a and -a (PSF(a) = PSF(-a))")
    if config.uncertainty:
        parts.append(f"+ {config.nll_weight:g} x Gaussian NLL of the per-parameter sigma (detached errors)")
    return "; ".join(parts)


def build_card(result: TrainResult, spec: PSFModelSpec, evaluation: dict[str, Any], command: str,
               data_description: str, notes: str = "") -> ModelCard:
    """The model card of a finished run (training data, seed, steps, wall time, hardware, evaluation)."""
    config = result.config
    module = result.module
    architecture = config.architecture
    normalisation = ("none needed: zero-sum first layer, bias-free ReLU trunk and per-window feature "
                     "normalisation make the output invariant to a*x+b (a>0)"
                     if architecture.startswith("shared-trunk") else "per-window (x - mean) / std in forward")
    training = {
        "command": command,
        "budget": config.budget(),
        "steps": result.step,
        "wall_time_s": round(result.seconds, 1),
        # Where each segment ran (a model trained on a GPU is exported and evaluated elsewhere).
        "hardware": "; ".join(dict.fromkeys(s["hardware"] for s in lineage(result.segments)
                                            if "hardware" in s)) or hardware_description(config.device or "cpu"),
        "seed": config.seed,
        "batch_size": config.batch_size,
        "optimiser": f"AdamW lr {config.lr:g} (cosine to {config.lr_min_fraction:g}x, warm-up "
                     f"{config.warmup_steps} steps), weight decay {config.weight_decay:g}, grad clip {config.grad_clip:g}",
        "loss": _loss_description(config),
        "sigma_calibration": result.sigma_calibration,
        "data": data_description,
        "n_parameters": count_parameters(module),
        "segments": result.segments,
        "history": result.history[-20:],
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return ModelCard.for_spec(config.name, spec, Optics(**config.optics), window_px=config.window_px,
                              input_normalisation=normalisation, architecture=architecture,
                              training=training, evaluation=evaluation, notes=notes)


def export_trained(result: TrainResult, path: str | Path, evaluation: dict[str, Any], command: str,
                   data_description: str, notes: str = "") -> Path:
    """Export a finished run as TorchScript + card (see :func:`livepsf.net.export.export_model`)."""
    spec = get_psf_model(result.config.psf_model)
    card = build_card(result, spec, evaluation, command, data_description, notes)
    return export_model(result.module, card, path)


def run_training(config: TrainConfig, out_dir: str | Path, export_path: str | Path | None = None,
                 resume: str | Path | None = None, command: str = "", progress: bool = True,
                 n_test: int = 2000, n_robustness: int = 500, notes: str = "",
                 val_set: tuple[torch.Tensor, torch.Tensor] | None = None,
                 test_set: tuple[torch.Tensor, torch.Tensor] | None = None,
                 n_battery: int = 0) -> tuple[TrainResult, Path]:
    """Train, evaluate on the test set (+ robustness sweep, + test battery) and export with a full card.

    ``export_path`` defaults to ``out_dir/<name>.pt``; ``val_set``/``test_set`` replace the fixed-seed
    sets of :func:`livepsf.data.dataset.eval_set`. Returns the training result and the exported path.
    """
    from livepsf.net.evaluate import evaluate_model

    if command:
        config.command = command
    result = train(config, out_dir, resume=resume, progress=progress, val_set=val_set)
    report = evaluate_model(result.module, config.psf_model, Optics(**config.optics), config.window_px,
                            n_test=n_test, n_robustness=n_robustness, device=pick_device(config.device),
                            test_set=test_set, n_battery=n_battery)
    result.module.cpu()
    path = Path(export_path) if export_path else Path(out_dir) / f"{config.name}.pt"
    data = (f"livepsf.data.dataset.PatchDataset({config.psf_model!r}, split='train', seed={config.seed}, "
            f"batch_size={config.batch_size}, degradation=DegradationConfig(**{config.data})): procedural "
            "textures (cells, points, filaments, fractal noise, shapes, printed grid) and scikit-image's "
            "shipped images minus the held-out ones, blurred by PSFs drawn uniformly in the parameter "
            "ranges, random dihedral transforms, illumination ramps and Poisson-Gaussian camera noise; "
            "generated on the fly")
    export_trained(result, path, report.to_dict(), command, data, notes)
    return result, path


def _calibration_set(config: TrainConfig, spec: PSFModelSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation set that σ is calibrated on: ``calibration_n`` windows (default ``val_n``)."""
    n = config.calibration_n or config.val_n
    return eval_set(spec, "val", n=n, window_px=config.window_px, optics=Optics(**config.optics))


def export_checkpoint(checkpoint: str | Path, export_path: str | Path, command: str = "",
                      n_test: int = 2000, n_robustness: int = 500, notes: str = "",
                      test_set: tuple[torch.Tensor, torch.Tensor] | None = None, n_battery: int = 0,
                      calibration_n: int | None = None, name: str | None = None) -> Path:
    """Evaluate and export the network of a (possibly unfinished) training checkpoint with its card.

    ``calibration_n`` overrides the checkpoint's :attr:`TrainConfig.calibration_n` (the size of the
    validation set σ is calibrated on); the card records the size used. ``name`` is the model's name on
    its card (default: the run's name), e.g. the shipped name of a run trained under another one.
    """
    from livepsf.net.evaluate import evaluate_model

    ckpt = load_checkpoint(checkpoint)
    known = set(TrainConfig.__dataclass_fields__)
    # Checkpoints from before uncertainty existed have no such key: their networks have no σ outputs.
    config = TrainConfig(**{"uncertainty": False, **{k: v for k, v in ckpt["config"].items() if k in known}})
    if calibration_n is not None:
        config.calibration_n = calibration_n
    if name is not None:
        config.name = name
    spec = get_psf_model(config.psf_model)
    module = build_network(config.architecture, spec.n_params, config.window_px, config.uncertainty)
    module.load_state_dict(ckpt["model"])
    module.eval()
    sigma_calibration = {}
    if config.uncertainty:
        sigma_calibration = calibrate_sigma(module, *_calibration_set(config, spec), spec)
    result = TrainResult(module, config, int(ckpt["step"]), float(ckpt["seconds"]), list(ckpt["history"]),
                         None, Path(checkpoint), list(ckpt.get("segments", [])), sigma_calibration)
    report = evaluate_model(module, config.psf_model, Optics(**config.optics), config.window_px,
                            n_test=n_test, n_robustness=n_robustness, test_set=test_set, n_battery=n_battery)
    data = (f"livepsf.data.dataset.PatchDataset({config.psf_model!r}, split='train', seed={config.seed}, "
            f"batch_size={config.batch_size}) with the default DegradationConfig; generated on the fly")
    return export_trained(result, export_path, report.to_dict(), command, data, notes)

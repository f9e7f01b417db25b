"""How much of the PSF can the test windows reveal at all? A known-object information bound on R².

The estimator's targets (R² ≥ 0.95 / 0.90) are stated on the fixed-seed test set. This script asks how
far any estimator could get on those very windows if it also knew the sharp object: for every valid test
patch it rebuilds the expected camera signal ``μ(θ)`` from the synthesiser's own draws (sharp crop,
contrast, PSF, dihedral turn, background, photons, illumination ramp; :func:`eval_synthesizer`), and
computes the Fisher information of the PSF parameters under the camera model (Poisson + read noise +
rounding, in electrons)::

    I_jk = Σ_pixels (∂μ/∂θ_j)(∂μ/∂θ_k) / (μ + σ_read² + 1 / (12 gain²))

by central differences of the PSF (``±STEP`` of each parameter's range). The Cramér-Rao bound
``(I⁻¹)_jj`` is the least error variance of an unbiased estimator that knows the object; a biased one
can do no worse than predicting the label mean, so each window's bound is ``min(CRB_jj, var(labels))``
and the R² bound is ``1 - mean(bound) / var(labels)``. With the object unknown (blind estimation, what
the network does) the achievable R² is lower still, so where this bound is below a target the target
cannot be met on that content by any estimator; where it is high, the gap is the estimator's.

    python benchmarks/information_bound.py [--psf-model Z-3] [--n 2000] [--model default]

Reported per parameter: the bound, the network's own R² on the same windows (``--model``; errors against
the label or its sign mirror, whichever the parameter set is nearer, as the training loss: 0.549 for the
shipped ``default`` against 0.540 in canonical form), by texture family and by photon decade, and the
fraction of windows whose bound is the label variance itself (content that reveals nothing about the
parameter).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import torch

from livepsf.data.dataset import eval_set, eval_synthesizer
from livepsf.data.degrade import DegradationConfig, blur_fft, illumination_ramp, psf_spectrum
from livepsf.optics import Optics, get_psf_model, psf_batch

#: Central-difference step, as a fraction of each parameter's range.
STEP = 0.01


def fisher_information(synth, patches_info: dict, spec, optics: Optics) -> torch.Tensor:
    """``(B, N, N)`` Fisher information (physical units) of the batch's patches about their PSF parameters."""
    cond = patches_info["conditions"]
    idx, ops, sharp = patches_info["psf_index"], patches_info["dihedral"], patches_info["sharp"]
    values = synth.pool_values[idx].clone()  # before the dihedral turn, like the sharp crops
    b, n = values.shape
    p = synth.patch_px
    ranges = torch.tensor([q.max - q.min for q in spec.params], dtype=torch.float64)
    scale = cond.photons.float()[:, None, None]
    if bool((cond.gradient > 0).any()):
        scale = scale * illumination_ramp(p, cond.gradient, cond.gradient_angle)

    def expected(v: torch.Tensor) -> torch.Tensor:
        psfs = psf_batch(spec, v, synth.psf_size_px, optics)
        blurred = blur_fft(sharp, psf_spectrum(psfs, synth.fft_px), synth.psf_size_px, p)
        blurred = blurred.flatten(1).gather(1, synth._dihedral_index[ops]).view(b, p, p)
        return (blurred + cond.background.float()[:, None, None]) * scale

    mu = expected(values).double()
    derivs = []
    for j in range(n):
        h = STEP * float(ranges[j])
        up, down = values.clone(), values.clone()
        up[:, j] += h
        down[:, j] -= h
        derivs.append(((expected(up) - expected(down)).double() / (2 * h)).flatten(1))
    d = torch.stack(derivs, dim=1)  # (B, N, P²)
    gain = patches_info["gain"].double()
    var = (mu + cond.read_noise_e.double()[:, None, None] ** 2 + 1.0 / (12.0 * gain[:, None, None] ** 2)).flatten(1)
    info = torch.einsum("bjp,bkp,bp->bjk", d, d, 1.0 / var)
    info[cond.noise_free | cond.black] = float("inf")
    return info


def window_bounds(info: torch.Tensor, spec, label_var: np.ndarray) -> np.ndarray:
    """``(B, N)`` error-variance bound per window in normalised units: ``min(CRB, var(labels))``."""
    ranges = np.array([q.max - q.min for q in spec.params])
    out = np.empty((info.shape[0], info.shape[1]))
    for i, m in enumerate(info.numpy()):
        if not np.all(np.isfinite(m)):
            out[i] = 0.0  # noise-free: the known object reveals everything
            continue
        try:
            crb = np.diag(np.linalg.pinv(m, hermitian=True)) / ranges**2
        except np.linalg.LinAlgError:
            crb = np.full(info.shape[1], np.inf)
        crb = np.where(np.diag(m) > 0, crb, np.inf)
        out[i] = np.minimum(crb, label_var)
    return out


def r2_rows(bound: np.ndarray, sq_err: np.ndarray | None, targets: np.ndarray, label_var: np.ndarray,
            names: list[str]) -> str:
    b = 1.0 - bound.mean(0) / label_var
    cells = [f"{x:.3f}" for x in b]
    if sq_err is not None:
        cells += [f"{x:.3f}" for x in 1.0 - sq_err.mean(0) / label_var]
    return " | ".join(cells)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--psf-model", default="Z-3")
    parser.add_argument("--n", type=int, default=2000, help="test patches (the fixed test set's first n)")
    parser.add_argument("--model", default="default", help="network to compare with (name or .pt); '' for none")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    spec, optics = get_psf_model(args.psf_model), Optics()
    t0 = time.time()
    synth = eval_synthesizer(spec, "test", args.n, 128, 128, DegradationConfig(), optics)
    infos, targets, kinds, photons, noise_free, patches = [], [], [], [], [], []
    remaining = args.n
    while remaining > 0:
        x, t, details = synth.next_batch(details=True)
        keep = min(remaining, len(t))
        infos.append(fisher_information(synth, details, spec, optics)[:keep])
        targets.append(t[:keep])
        patches.append(x[:keep])
        kinds += details["texture_kind"][:keep]
        photons.append(details["conditions"].photons[:keep])
        noise_free.append(details["conditions"].noise_free[:keep])
        remaining -= keep
    info, t = torch.cat(infos), torch.cat(targets)
    ref_x, ref_t = eval_set(spec, "test", n=args.n)
    if not torch.equal(ref_t, t):
        print("warning: the rebuilt targets differ from eval_set's: the bound is not on the test set", file=sys.stderr)
    valid = (t[:, 0] < 0.5).numpy()
    labels = t[:, 1:].double().numpy()[valid]
    label_var = labels.var(0)
    bound = window_bounds(info[torch.from_numpy(valid)], spec, label_var)
    kinds = np.array(kinds)[valid]
    photons = torch.cat(photons).numpy()[valid]
    noise_free = torch.cat(noise_free).numpy()[valid]

    sq_err = None
    if args.model:
        from livepsf.net import load_model
        from livepsf.net.evaluate import predict_raw
        from livepsf.net.outputs import mirror_normalised, split_outputs

        net = load_model(args.model)
        raw = predict_raw(net.module, torch.cat(patches)[torch.from_numpy(valid)])
        values = split_outputs(raw, spec).values.clamp(0.0, 1.0).double()
        tv = torch.from_numpy(labels)
        # Against the label or its sign mirror, whichever the whole parameter set is nearer (as the loss).
        direct, mirrored = (values - tv) ** 2, (values - mirror_normalised(tv, spec)) ** 2
        sq_err = torch.where((mirrored.sum(1) < direct.sum(1))[:, None], mirrored, direct).numpy()

    names = list(spec.names)
    head = " | ".join([f"bound {n}" for n in names] + ([f"net {n}" for n in names] if sq_err is not None else []))
    print(f"# known-object information bound on R², {spec.name}, test set first {args.n} patches "
          f"({int(valid.sum())} valid){', network ' + args.model if args.model else ''}\n")
    print(f"| windows | n | {head} |")
    print("| --- " * (2 + len(names) * (2 if sq_err is not None else 1)) + "|")

    def row(label: str, m: np.ndarray) -> None:
        if m.sum() < 5:
            return
        # R² against the whole set's label variance, so the rows compare the same scale.
        print(f"| {label} | {int(m.sum())} | {r2_rows(bound[m], None if sq_err is None else sq_err[m], labels[m], label_var, names)} |")

    row("all", np.ones(len(bound), bool))
    for k in sorted(set(kinds)):
        row(f"family {k}", kinds == k)
    edges = [1e2, 1e3, 1e4, 1e5, 1e6, math.inf]
    for lo, hi in zip(edges[:-1], edges[1:]):
        row(f"photons {lo:.0e}–{hi:.0e}", (photons >= lo) & (photons < hi) & ~noise_free)
    row("noise-free", noise_free)
    uninformative = (bound >= label_var[None, :] * 0.999).mean(0)
    print("\nwindows whose bound is the label variance (content reveals nothing): "
          + ", ".join(f"{n} {100 * u:.1f} %" for n, u in zip(names, uninformative)))
    print(f"\n({time.time() - t0:.0f} s, {args.threads} thread(s); central differences ±{STEP:g} of each range)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

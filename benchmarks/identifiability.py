"""How much of the PSF parameters can the test patches reveal at all? A non-blind oracle on the Z-3 test set.

Issue #13 asks for R² >= 0.95 (focus) and a mean >= 0.90 on ``eval_set("Z-3", "test", n=2000)``. This
script bounds what an estimator can reach there. The oracle knows, for each test patch, everything but
the PSF: the sharp texture crop, its contrast, the dihedral op, background, photons, illumination ramp,
gain, offset and read noise. It fits only (focus, astig_0, astig_45) by maximum likelihood (weighted
least squares: Gaussian approximation of Poisson + read noise + 1/12 ADU² of rounding, each pixel's
variance fixed at its observed level on the grid and at the best grid node's model for the refinement;
noise-free patches: plain least squares):

1. the patches are regenerated with their draws by :func:`livepsf.data.dataset.eval_synthesizer` and
   asserted equal, bit for bit, to the cached ``eval_set``'s; the forward model at the true parameters
   is asserted to reproduce each patch's expected electrons;
2. a coarse grid over the box (focus 0..2 waves in 9 steps, each astigmatism -0.5..0.5 in 7 steps;
   the PSFs rendered once with ``psf_batch``, their spectra reused for every patch); its 4 best local
   minima and the best one's sign mirror (focus, -astig) are the starts: near focus the two mirrors are
   nearly the same image while the canonical labels differ (PSF(a) = PSF(-a); the fit is unconstrained,
   then made canonical);
3. Levenberg–Marquardt (finite-difference Jacobian, batched over patches): 4 steps from every start,
   then 10 from the best of them and from the true parameters. The ML estimate is the lower chi² of
   the two, chosen by chi² only. The truth start is needed because at high photon counts the
   likelihood's basin is narrower than the grid spacing (19 of 260 patches); the grid-only estimate is
   printed too, so the bound is bracketed.

A blind estimator, which must also work out the texture, cannot beat this bound on average. R² follows
:mod:`livepsf.net.evaluate` (canonical normalised values, valid patches only), for the oracle and for a
shipped model on the same patches, overall and by photon decade, true focus and texture family; RMS
errors in waves beside them; then the oracle's largest errors.

    nice -n 10 python benchmarks/identifiability.py                # first 320 test patches, default model
    nice -n 10 python benchmarks/identifiability.py --n 640        # more patches (~2x the time)
    nice -n 10 python benchmarks/identifiability.py --model PATH.pt  # another Z-3 model

Measured 2026-11-30 (``nice -n 10 python benchmarks/identifiability.py``; 2-core AMD EPYC, torch
2.13.0 CPU, 1 thread, shared with a training run and another benchmark, load average ~5: 374 s wall,
213 s CPU, 1.4 GB peak RSS). First 320 test patches, 260 valid:

| R² on the same 260 patches | focus | astig_0 | astig_45 | mean |
| --- | --- | --- | --- | --- |
| oracle, ML | 1.00 | 0.99 | 1.00 | 1.00 |
| oracle, grid starts only (19 patches left in a wrong basin) | 0.990 | 0.957 | 0.961 | 0.970 |
| shipped ``default`` (v7) | 0.52 | 0.44 | 0.55 | 0.50 |

Oracle R² is >= 0.98 in every photon decade (1e2-1e3: 0.99 mean, RMS 0.024-0.037 waves), noise-free
1.00, true focus < 0.5 waves 0.98 / 0.99 / 1.00 (RMS 0.02 waves: the undersampled in-focus PSF is no
barrier when the texture is known) and every texture family >= 0.99 except single/parallel ``lines``
(9 patches: astig_0 0.87, RMS 0.10 waves; a line shows no blur along itself). The shipped model has
RMS errors of 0.39 / 0.21 / 0.19 waves against the oracle's 0.016 / 0.022 / 0.016; near focus its
focus R² is -9 (RMS 0.47 waves). So the information is in the patches: the test set's targets are
not limited by noise, undersampling or the labels; whatever keeps a blind estimator from 0.95 is not
knowing the texture (texture/blur ambiguity) — this bound cannot say how much of that is recoverable.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from livepsf.data.dataset import default_psf_size_px, eval_set, eval_synthesizer
from livepsf.data.degrade import (
    DegradationConfig,
    blurred_patch,
    illumination_ramp,
    psf_spectrum,
    texture_spectrum,
)
from livepsf.data.textures import dihedral
from livepsf.net.evaluate import predict_raw, r2_score
from livepsf.net.outputs import mirror_normalised, split_outputs
from livepsf.net.registry import load_model
from livepsf.optics import Optics, PSFModelSpec, fast_fft_size, get_psf_model, psf_batch

TEST_SET_N = 2000  # the test set: eval_set("Z-3", "test", n=2000)
WINDOW_PX = 128
GRID_FOCUS_WAVES = np.linspace(0.0, 2.0, 9)
GRID_ASTIG_WAVES = np.linspace(-0.5, 0.5, 7)
FD_STEP_WAVES = 1e-3
GRID_STARTS = 4  # local minima of the grid refined (plus the best one's sign mirror)
SCOUT_ITERATIONS, REFINE_ITERATIONS = 4, 10
PHOTON_DECADES = (1e2, 1e3, 1e4, 1e5, 1e6 + 1)
NEAR_FOCUS_WAVES = 0.5


@dataclass
class Patches:
    """Valid test patches in their pre-dihedral frame, with everything the oracle may know (batched)."""

    index: torch.Tensor  # (B,) position in the test set
    observed_adu: torch.Tensor  # (B, P, P) float64
    texture_spectra: torch.Tensor  # (B, F // 2 + 1, F) complex64
    scale_e: torch.Tensor  # (B, P, P) photons x illumination ramp, float64
    background: torch.Tensor  # (B,) float64, texture units
    gain_adu: torch.Tensor
    offset_adu: torch.Tensor
    read_noise_e: torch.Tensor
    noise_free: torch.Tensor  # (B,) bool
    op: torch.Tensor  # (B,) dihedral op of the synthesizer
    true_raw_values: torch.Tensor  # (B, 3) pre-dihedral physical values (only for the fit-quality check)

    def __len__(self) -> int:
        return len(self.index)

    def take(self, sel: slice | torch.Tensor) -> Patches:
        return Patches(*(getattr(self, f)[sel] for f in self.__dataclass_fields__))


def undo_dihedral(images: torch.Tensor, op: int) -> torch.Tensor:
    """Inverse of the synthesizer's op ``o`` (``rot90(k=o % 4)``, then a row flip for ``o >= 4``)."""
    out = torch.flip(images, dims=(-2,)) if op >= 4 else images
    return torch.rot90(out, -(op % 4), dims=(-2, -1))


def regenerate(spec: PSFModelSpec, optics: Optics, n: int) -> tuple[Patches, torch.Tensor, torch.Tensor, dict]:
    """The first ``n`` test patches with their draws; asserts they are eval_set's and the model is exact.

    Returns the valid patches, the test set's ``(patches, targets)`` (first ``n``) and per-patch info
    (photons, noise-free flag, texture kind; all patches).
    """
    degradation = DegradationConfig()
    ref_x, ref_t = eval_set(spec, "test", n=TEST_SET_N, window_px=WINDOW_PX, optics=optics)
    synth = eval_synthesizer(spec, "test", TEST_SET_N, WINDOW_PX, WINDOW_PX, degradation, optics)
    p, f = synth.patch_px, synth.fft_px
    parts: dict[str, list] = {k: [] for k in Patches.__dataclass_fields__}
    info: dict[str, list] = {"photons": [], "noise_free": [], "kind": []}
    xs, ts = [], []
    done = 0
    while done < n:
        x, t, d = synth.next_batch(details=True)
        b = len(x)
        cond, ops = d["conditions"], d["dihedral"]
        raw_values = synth.pool_values[d["psf_index"]]  # psf_refresh >= pool: the pool is this batch's
        ramp = illumination_ramp(p, cond.gradient, cond.gradient_angle).double()
        spectra = texture_spectrum(d["sharp"], f)
        # Self-check of the forward model: the true PSF reproduces the expected electrons of every patch.
        blurred = blurred_patch(spectra * synth.pool_spectra[d["psf_index"]], synth.psf_size_px, p).double()
        for i in range(b):
            if done + i >= n:
                break
            op = int(ops[i])
            scale = undo_dihedral(ramp[i], op) * float(cond.photons[i])
            if not bool(cond.black[i]):
                expected = (blurred[i] + float(cond.background[i])) * scale
                got = undo_dihedral(d["electrons"][i].double(), op)
                assert torch.allclose(got, expected, rtol=1e-4, atol=1e-3 * float(cond.photons[i])), \
                    f"forward model does not reproduce test patch {done + i}"
            info["photons"].append(float(cond.photons[i]))
            info["noise_free"].append(bool(cond.noise_free[i]))
            info["kind"].append(d["texture_kind"][i])
            if float(t[i, 0]) > 0.5:
                continue  # invalid patches do not count in R² (evaluate.py)
            parts["index"].append(done + i)
            parts["observed_adu"].append(undo_dihedral(x[i, 0].double(), op))
            parts["texture_spectra"].append(spectra[i])
            parts["scale_e"].append(scale)
            for name in ("background", "offset_adu", "read_noise_e", "noise_free"):
                parts[name].append(getattr(cond, name)[i])
            parts["gain_adu"].append(d["gain"][i])
            parts["op"].append(op)
            parts["true_raw_values"].append(raw_values[i].double())
        xs.append(x)
        ts.append(t)
        done += b
    x_all, t_all = torch.cat(xs)[:n], torch.cat(ts)[:n]
    assert torch.equal(x_all, ref_x[:n]) and torch.equal(t_all, ref_t[:n]), \
        "regenerated patches differ from eval_set's: the bound would not be on the test set"
    valid = Patches(*(torch.stack([torch.as_tensor(v) for v in parts[k]]) for k in Patches.__dataclass_fields__))
    return valid, x_all, t_all, info


class ForwardModel:
    """Expected ADU of patches for candidate PSF parameters, and the fixed pixel weights (1 / variance)."""

    def __init__(self, spec: PSFModelSpec, optics: Optics, psf_size_px: int, patch_px: int) -> None:
        self.spec, self.optics, self.psf_size_px, self.patch_px = spec, optics, psf_size_px, patch_px

    def spectra(self, values: torch.Tensor, fft_px: int) -> torch.Tensor:
        return psf_spectrum(psf_batch(self.spec, values, self.psf_size_px, self.optics), fft_px)

    def adu(self, pt: Patches, psf_spectra: torch.Tensor) -> torch.Tensor:
        """``(M, B, P, P)`` expected ADU for ``psf_spectra`` ``(M, B, ...)`` (or ``(M, 1, ...)``: one PSF for all)."""
        m = psf_spectra.shape[0]
        prod = pt.texture_spectra[None] * psf_spectra
        blurred = blurred_patch(prod.flatten(0, 1), self.psf_size_px, self.patch_px)
        blurred = blurred.view(m, -1, self.patch_px, self.patch_px).double()
        electrons = (blurred + pt.background[None, :, None, None]) * pt.scale_e[None]
        return pt.offset_adu[None, :, None, None] + pt.gain_adu[None, :, None, None] * electrons

    def weights(self, pt: Patches, level_adu: torch.Tensor) -> torch.Tensor:
        """1 / variance per pixel at expected level ``level_adu`` ``(B, P, P)``; 1 for noise-free patches."""
        g = pt.gain_adu[:, None, None]
        electrons = ((level_adu - pt.offset_adu[:, None, None]) / g).clamp_min(0.0)
        var = g**2 * (electrons + pt.read_noise_e[:, None, None] ** 2) + 1.0 / 12.0
        return torch.where(pt.noise_free[:, None, None], torch.ones_like(var), 1.0 / var)


def chi2(observed: torch.Tensor, model: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return ((observed - model) ** 2 * weights).sum(dim=(-2, -1))


def grid_starts(fm: ForwardModel, pt: Patches, fft_px: int, starts: int = GRID_STARTS,
                chunk: int = 49) -> torch.Tensor:
    """Starting points ``(B, starts + 1, 3)`` (physical, pre-dihedral frame) for each patch's refinement.

    The ``starts`` best local minima of the chi² on the grid (a node no worse than its 26 neighbours),
    then the sign mirror (focus, -astig) of the best one. Several are needed: on smooth textures a node
    with another mix of defocus and astigmatism but a similar blur size can win on the coarse grid
    (measured: 2 of 48 patches refined into a wrong basin from the single best node).
    """
    axes = [torch.as_tensor(g, dtype=torch.float64) for g in (GRID_FOCUS_WAVES, GRID_ASTIG_WAVES, GRID_ASTIG_WAVES)]
    grid = torch.cartesian_prod(*axes)
    shape = tuple(len(g) for g in axes)
    bank = fm.spectra(grid, fft_px)  # (K, F//2+1, F): rendered once, reused for every patch
    out = torch.empty(len(pt), starts + 1, 3, dtype=torch.float64)
    for i in range(len(pt)):
        one = pt.take(slice(i, i + 1))
        w = fm.weights(one, one.observed_adu)
        scores = torch.cat([chi2(one.observed_adu, fm.adu(one, bank[k:k + chunk, None])[:, 0], w[0])
                            for k in range(0, len(bank), chunk)])
        cube = scores.view(1, 1, *shape)
        lowest_near = -torch.nn.functional.max_pool3d(-cube, 3, stride=1, padding=1)
        minima = torch.nonzero((cube <= lowest_near).flatten()).flatten()
        order = minima[torch.argsort(scores[minima])][:starts]
        order = torch.cat([order, order[:1].expand(starts - len(order))])  # fewer minima: repeat the best
        out[i, :starts] = grid[order]
        out[i, starts] = grid[order[0]] * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)
    return out


def levenberg_marquardt(fm: ForwardModel, pt: Patches, start: torch.Tensor, weights: torch.Tensor, fft_px: int,
                        iterations: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine ``start`` ``(B, 3)`` for each patch; returns the parameters and their chi²."""
    lo = torch.tensor([-fm.spec.params[0].max, *(p.min for p in fm.spec.params[1:])], dtype=torch.float64)
    hi = torch.tensor([p.max for p in fm.spec.params], dtype=torch.float64)
    theta = start.clone()
    mu = fm.adu(pt, fm.spectra(theta, fft_px)[None])[0]
    best = chi2(pt.observed_adu, mu, weights)
    lam = torch.full((len(pt),), 1e-2, dtype=torch.float64)
    sw = weights.sqrt().flatten(1)
    eye = torch.eye(3, dtype=torch.float64)
    for _ in range(iterations):
        shifted = (theta[None] + FD_STEP_WAVES * eye[:, None, :]).reshape(-1, 3)
        spectra = fm.spectra(shifted, fft_px)
        mus = fm.adu(pt, spectra.view(3, len(pt), *spectra.shape[1:]))
        jac = ((mus - mu[None]) / FD_STEP_WAVES).flatten(2).permute(1, 2, 0) * sw[..., None]  # (B, P², 3)
        resid = ((pt.observed_adu - mu).flatten(1) * sw)[..., None]
        a = jac.transpose(1, 2) @ jac
        g = (jac.transpose(1, 2) @ resid)[..., 0]
        damped = a + lam[:, None, None] * torch.diag_embed(torch.diagonal(a, dim1=1, dim2=2)) + 1e-12 * eye
        step = torch.linalg.solve(damped, g)
        trial = torch.maximum(torch.minimum(theta + step, hi), lo)
        mu_t = fm.adu(pt, fm.spectra(trial, fft_px)[None])[0]
        chi_t = chi2(pt.observed_adu, mu_t, weights)
        ok = chi_t < best
        theta[ok], mu[ok], best[ok] = trial[ok], mu_t[ok], chi_t[ok]
        lam = torch.where(ok, lam / 3.0, lam * 4.0)
    return theta, best


def to_label_frame(values: torch.Tensor, ops: torch.Tensor, spec: PSFModelSpec) -> torch.Tensor:
    """Pre-dihedral physical values ``(B, 3)`` -> canonical normalised labels (the synthesizer's op applied)."""
    out = []
    for value, op in zip(values, ops.tolist(), strict=True):
        value = value[None]
        if op:
            value = dihedral(torch.zeros(1, 1, 1), value, spec, k=op % 4, flip_axis=0 if op >= 4 else None)[1]
        out.append(spec.normalise(spec.canonical(value))[0].clamp(0.0, 1.0))
    return torch.stack(out)


@dataclass
class OracleFit:
    """The oracle's estimates (canonical normalised, label frame) and how well its search did."""

    ml: torch.Tensor
    """``(B, 3)`` maximum-likelihood estimate: the lowest chi² of all refinements (grid starts and truth)."""
    grid_only: torch.Tensor
    """``(B, 3)`` the best refinement from the grid starts alone (what a search without the truth finds)."""
    grid_excess_chi2: torch.Tensor
    """``(B,)`` chi²(grid_only) - chi²(ml): above 1, the grid search alone missed the global minimum."""
    ml_minus_truth_chi2: torch.Tensor
    """``(B,)`` chi²(ml) - chi²(true parameters): <= 0 up to convergence (the truth is not the ML estimate)."""


def oracle_fit(spec: PSFModelSpec, optics: Optics, pt: Patches, psf_size_px: int, fft_px: int,
               chunk: int = 16) -> OracleFit:
    """Fit every patch: scout from the grid starts, refine the best of them and, as one more start, the truth.

    The ML estimate is the argmin of chi² over all refinements, chosen by chi² only (never by distance to
    the truth): starting one refinement at the truth only helps find the global minimum where the
    likelihood is so sharp (high photon counts) that the coarse grid has no node in its basin.
    """
    fm = ForwardModel(spec, optics, psf_size_px, pt.observed_adu.shape[-1])
    t0 = time.perf_counter()
    starts = grid_starts(fm, pt, fft_px)
    t_grid = time.perf_counter() - t0
    k = starts.shape[1]
    parts: dict[str, list[torch.Tensor]] = {f: [] for f in OracleFit.__dataclass_fields__}
    for s in range(0, len(pt), chunk):
        part = pt.take(slice(s, s + chunk))
        b = len(part)
        # Pixel variances at the best grid node's model, fixed for the refinement (weighted least squares).
        w = fm.weights(part, fm.adu(part, fm.spectra(starts[s:s + b, 0], fft_px)[None])[0])
        rep = torch.arange(b).repeat(k)  # start j of patch i at row j * b + i
        theta, chi = levenberg_marquardt(fm, part.take(rep), starts[s:s + b].transpose(0, 1).reshape(-1, 3),
                                         w[rep], fft_px, SCOUT_ITERATIONS)
        best = torch.argmin(chi.view(k, b), dim=0)
        lead = theta.view(k, b, 3)[best, torch.arange(b)]
        two = torch.cat([torch.arange(b), torch.arange(b)])
        fit, chi_fit = levenberg_marquardt(fm, part.take(two), torch.cat([lead, part.true_raw_values]), w[two],
                                           fft_px, REFINE_ITERATIONS)
        grid_fit, grid_chi, truth_fit, truth_chi = fit[:b], chi_fit[:b], fit[b:], chi_fit[b:]
        ml_is_truth_start = truth_chi < grid_chi
        ml = torch.where(ml_is_truth_start[:, None], truth_fit, grid_fit)
        ml_chi = torch.minimum(truth_chi, grid_chi)
        chi_true = chi2(part.observed_adu, fm.adu(part, fm.spectra(part.true_raw_values, fft_px)[None])[0], w)
        parts["ml"].append(to_label_frame(ml, part.op, spec))
        parts["grid_only"].append(to_label_frame(grid_fit, part.op, spec))
        parts["grid_excess_chi2"].append(grid_chi - ml_chi)
        parts["ml_minus_truth_chi2"].append(ml_chi - chi_true)
    print(f"  grid {t_grid:.0f} s, refinement {time.perf_counter() - t0 - t_grid:.0f} s for {len(pt)} patches")
    return OracleFit(*(torch.cat(parts[f]) for f in OracleFit.__dataclass_fields__))


# -- report ----------------------------------------------------------------------------------------


def sign_tolerant(pred: torch.Tensor, true: torch.Tensor, spec: PSFModelSpec) -> torch.Tensor:
    """Per patch, the label or its sign mirror (same PSF), whichever is nearer the prediction."""
    mirror = mirror_normalised(true, spec)
    use_mirror = ((pred - mirror) ** 2).sum(dim=1) < ((pred - true) ** 2).sum(dim=1)
    return torch.where(use_mirror[:, None], mirror, true)


def rows_for(name: str, sel: np.ndarray, true: torch.Tensor, preds: dict[str, torch.Tensor],
             spans: np.ndarray) -> tuple[str, str]:
    """A markdown row of R² and one of RMS error (waves) for the patches ``sel``."""
    n = int(sel.sum())
    r2_cells, rms_cells = [], []
    for pred in preds.values():
        if n < 2:
            r2_cells += ["–"] * 4
            rms_cells += ["–"] * 3
            continue
        r2 = r2_score(true[sel], pred[sel])
        r2_cells += [f"{v:.2f}" for v in r2] + [f"**{np.nanmean(r2):.2f}**"]
        rms = np.sqrt(((pred[sel] - true[sel]).numpy() ** 2).mean(axis=0)) * spans
        rms_cells += [f"{v:.3f}" for v in rms]
    return f"| {name} | {n} | " + " | ".join(r2_cells) + " |", f"| {name} | {n} | " + " | ".join(rms_cells) + " |"


def report(spec: PSFModelSpec, true: torch.Tensor, preds: dict[str, torch.Tensor], photons: np.ndarray,
           noise_free: np.ndarray, kinds: np.ndarray) -> None:
    spans = np.array([p.span for p in spec.params])
    focus_waves = spec.denormalise(true.double())[:, 0].numpy()
    groups: list[tuple[str, np.ndarray]] = [("all valid", np.ones(len(true), dtype=bool))]
    for lo, hi in itertools.pairwise(PHOTON_DECADES):
        groups.append((f"photons 1e{round(math.log10(lo))}–1e{round(math.log10(lo)) + 1}",
                       ~noise_free & (photons >= lo) & (photons < hi)))
    groups.append(("noise-free", noise_free))
    groups.append((f"focus < {NEAR_FOCUS_WAVES} waves", focus_waves < NEAR_FOCUS_WAVES))
    groups.append((f"focus ≥ {NEAR_FOCUS_WAVES} waves", focus_waves >= NEAR_FOCUS_WAVES))
    groups += [(f"texture: {k}", kinds == k) for k in sorted(set(kinds))]
    who = list(preds)
    head_r2 = "| patches | n | " + " | ".join(f"{w} {c}" for w in who for c in (*spec.names, "mean")) + " |"
    head_rms = "| patches | n | " + " | ".join(f"{w} {c}" for w in who for c in spec.names) + " |"
    r2_rows, rms_rows = [], []
    for name, sel in groups:
        a, b = rows_for(name, sel, true, preds, spans)
        r2_rows.append(a)
        rms_rows.append(b)
    # Sign-tolerant: each prediction scored against the label or its mirror (the same PSF), whichever is nearer.
    cells = []
    for pred in preds.values():
        r2 = r2_score(sign_tolerant(pred, true, spec), pred)
        cells += [f"{v:.2f}" for v in r2] + [f"**{np.nanmean(r2):.2f}**"]
    r2_rows.insert(1, f"| all, sign-tolerant | {len(true)} | " + " | ".join(cells) + " |")
    print("\nR² (canonical normalised values, valid patches; evaluate.py's definition)\n")
    print(head_r2)
    print("|" + " --- |" * (head_r2.count("|") - 1))
    print("\n".join(r2_rows))
    print("\nRMS error, waves\n")
    print(head_rms)
    print("|" + " --- |" * (head_rms.count("|") - 1))
    print("\n".join(rms_rows))


def worst(spec: PSFModelSpec, true: torch.Tensor, oracle: torch.Tensor, ml_minus_truth_chi2: torch.Tensor,
          index: torch.Tensor, photons: np.ndarray, noise_free: np.ndarray, kinds: np.ndarray, n: int = 10) -> None:
    """The oracle's largest errors: where the patches do not reveal the PSF (or the fit failed)."""
    err = ((oracle - true) ** 2).sum(dim=1)
    print(f"\nThe oracle's {n} largest errors (waves; Δχ² = chi²(oracle) - chi²(truth): < 0, the data prefer "
          "the oracle's answer)\n")
    print("| test patch | texture | photons | true (focus, astig_0, astig_45) | oracle | Δχ² |")
    print("| --- | --- | --- | --- | --- | --- |")
    for i in torch.argsort(err, descending=True)[:n].tolist():
        t, o = spec.denormalise(true[i:i + 1])[0].tolist(), spec.denormalise(oracle[i:i + 1])[0].tolist()
        light = "noise-free" if noise_free[i] else f"{photons[i]:.3g}"
        print(f"| {int(index[i])} | {kinds[i]} | {light} | {', '.join(f'{v:.2f}' for v in t)} | "
              f"{', '.join(f'{v:.2f}' for v in o)} | {float(ml_minus_truth_chi2[i]):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=320, help="first N patches of the Z-3 test set (default 320)")
    parser.add_argument("--model", default="default", help="shipped Z-3 model name or .pt path to compare")
    args = parser.parse_args()
    if not 1 <= args.n <= TEST_SET_N:
        parser.error(f"--n must lie in 1..{TEST_SET_N} (the test set's size)")
    torch.set_num_threads(1)
    spec, optics = get_psf_model("Z-3"), Optics()
    t0 = time.perf_counter()
    pt, x, t, info = regenerate(spec, optics, args.n)
    psf_px = default_psf_size_px(spec, optics)
    fft_px = fast_fft_size(WINDOW_PX + psf_px - 1)
    print(f"{args.n} test patches regenerated and equal to eval_set's bit for bit; {len(pt)} valid "
          f"({time.perf_counter() - t0:.0f} s)")
    t1 = time.perf_counter()
    fit = oracle_fit(spec, optics, pt, psf_px, fft_px)
    t_oracle = time.perf_counter() - t1
    net = load_model(args.model)
    if net.spec.names != spec.names:
        raise SystemExit(f"{args.model} is a {net.card.psf_model} model; this study is on Z-3")
    model_pred = split_outputs(predict_raw(net.module, x[pt.index]), spec).values.clamp(0.0, 1.0)
    true = t[pt.index, 1:].double()
    idx = pt.index.numpy()
    photons = np.asarray(info["photons"])[idx]
    noise_free = np.asarray(info["noise_free"])[idx]
    kinds = np.asarray(info["kind"])[idx]
    grid_r2 = r2_score(true, fit.grid_only.double())
    print(f"oracle: {t_oracle:.0f} s. The grid search alone (no truth start) missed the global minimum "
          f"(chi² higher by > 1) on {int((fit.grid_excess_chi2 > 1).sum())} of {len(pt)} patches; its R² "
          f"{', '.join(f'{n} {v:.3f}' for n, v in zip(spec.names, grid_r2, strict=True))}, mean {grid_r2.mean():.3f}. "
          f"The ML estimate fits better than the true parameters on {int((fit.ml_minus_truth_chi2 < 0).sum())}; "
          f"worse by > 1 on {int((fit.ml_minus_truth_chi2 > 1).sum())} (non-converged).")
    report(spec, true, {"oracle": fit.ml.double(), args.model: model_pred.double()}, photons, noise_free, kinds)
    worst(spec, true, fit.ml.double(), fit.ml_minus_truth_chi2, pt.index, photons, noise_free, kinds)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s, torch {torch.__version__}, {torch.get_num_threads()} thread")


if __name__ == "__main__":
    main()

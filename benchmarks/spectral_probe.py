"""Probe (#13): how much of the Z-3 labels does a window's power spectrum alone reveal, to a small MLP?

The shipped trunk reads blur from mean-pooled energies of 8×8 filters, which cannot resolve the rings
(zeros and side lobes) of a defocus MTF; with more signal those side lobes carry visible fine structure
and the network reads them as less blur (see the CHANGELOG / training/README.md). This probe gives an MLP
the window's log power spectrum instead: Hann-windowed, mean removed, averaged in 24 radial × 4 angular
bins up to Nyquist, normalised to unit sum (gain-free) and logged (``livepsf``'s ``BinnedSpectrum`` at
24 × 4; the probe standardises the features, so its affine scaling does not matter). It is trained on fresh batches of the
training stream (each used twice) with the sign-invariant L1 loss, and scored on the fixed validation set
every 1000 steps.

    python benchmarks/spectral_probe.py --minutes 45

Measured (2-core AMD EPYC, torch 2.13.0 CPU, 1 thread, sharing the machine with a training; the same
features, MLP and loss run from a scratch copy of this script): val mean R² 0.43 after 32k windows, 0.45–0.49 from 64k to 640k (best 0.488; constant learning rate, 42 min). For comparison the
shipped trunk's first segment reached 0.35 after 192k and ~0.44 after 416k windows and plateaus at 0.55–0.57
after millions; an MLP on that trunk's pooled features scored 0.38 from 16k windows.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=45.0, help="training time")
    parser.add_argument("--seed", type=int, default=778)
    args = parser.parse_args(argv)

    from livepsf.data.dataset import BatchSynthesizer, eval_set
    from livepsf.net.architectures import BinnedSpectrum
    from livepsf.net.evaluate import r2_score
    from livepsf.net.outputs import canonical_normalised, sign_invariant_l1
    from livepsf.optics import Optics, get_psf_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    spec = get_psf_model("Z-3")
    features = BinnedSpectrum(128, n_radial=24, n_angular=4)
    stream = BatchSynthesizer(spec, Optics(), 128, None, 64, None, args.seed, "train")
    first = torch.cat([features(stream.next_batch()[0]) for _ in range(64)])
    mean, std = first.mean(0), first.std(0) + 1e-6
    val_patches, val_targets = eval_set("Z-3", "val", n=2000)
    val_x = (features(val_patches) - mean) / std
    valid = val_targets[:, 0] < 0.5
    mlp = nn.Sequential(nn.Linear(val_x.shape[1], 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, spec.n_params))
    optimiser = torch.optim.Adam(mlp.parameters(), 1e-3, weight_decay=1e-5)
    start, step = time.time(), 0
    print("| step | training windows | minutes | val R² focus / astig_0 / astig_45 | mean |")
    print("| --- | --- | --- | --- | --- |")
    while time.time() - start < args.minutes * 60:
        patches, targets = stream.next_batch()
        x = (features(patches) - mean) / std
        ok = targets[:, 0] < 0.5
        for _ in range(2):  # each batch twice, as the trainings' data echo
            out, y = mlp(x[ok]), targets[ok, 1:]
            loss = sign_invariant_l1(out, y, spec)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            step += 1
        if step % 1000 == 0:
            with torch.no_grad():
                pred = canonical_normalised(mlp(val_x), spec)
            r2 = r2_score(val_targets[valid, 1:], pred[valid])
            print(f"| {step} | {step // 2 * 64} | {(time.time() - start) / 60:.1f} | "
                  + " / ".join(f"{v:.3f}" for v in r2) + f" | {r2.mean():.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

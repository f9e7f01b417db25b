"""Which window representation carries the blur? The same small MLP on different feature vectors.

A fixed-set probe for #13: an MLP (two hidden layers of 256, the sign-invariant L1 loss) is trained on
the valid windows of the Z-3 validation set (``--n`` windows) and scored on the fixed Z-3 test set (2000
windows), from

- ``trunk``: the shipped ``default`` trunk's pooled, normalised log energies (what its head reads);
- ``bins``: :class:`~livepsf.net.architectures.BinnedSpectrum`, the window's log power spectrum in 32
  rings × 8 sectors (no parameters; it resolves the MTF zeros the trunk's 8×8 filters cannot);
- ``trunk+bins``: both.

With a few thousand windows the MLP is far from the trained network (which saw millions), so compare
the rows with each other, not with the model card: a representation that lifts the row with the same
data is one that a network would learn from faster.

    python benchmarks/representation_probe.py [--n 8000] [--epochs 60]

Measured (2-core AMD EPYC, torch 2.13.0 CPU, sharing the machine with a training; 8000 validation
windows, 6,208 valid; 1,611 valid test windows): test R² focus / astig_0 / astig_45, mean: trunk 0.574 /
0.312 / 0.388, 0.425; bins 0.486 / 0.390 / 0.470, 0.448; trunk+bins 0.617 / 0.433 / 0.497, 0.515. From the
same few thousand windows the spectrum alone reads astigmatism better than the trunk's energies, and the
two together add 0.09: the rings carry what the trunk misses. (With the bins' log floor at 1e-9 instead
of 1e-12, which cuts off the outer rings of noise-free blurred windows, bins alone fell to 0.32.) Whether
a trained network gets the same lift from millions of windows is what ``shared-trunk-spectrum-bins``
is for (training/README.md).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from torch import nn


def fit_and_score(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, spec, epochs: int,
                  seed: int = 0) -> torch.Tensor:
    """Train the probe MLP on standardised features; canonical normalised predictions for ``test_x``."""
    from livepsf.net.outputs import canonical_normalised, sign_invariant_l1

    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(a.shape[1], 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                        nn.Linear(256, spec.n_params))
    optimiser = torch.optim.Adam(mlp.parameters(), 1e-3, weight_decay=1e-4)
    for _ in range(epochs):
        order = torch.randperm(len(a))
        for start in range(0, len(a), 128):
            j = order[start:start + 128]
            out, y = mlp(a[j]), train_y[j]
            loss = sign_invariant_l1(out, y, spec)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return canonical_normalised(mlp(b), spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8000, help="validation windows to train the probe on")
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args(argv)

    from livepsf.data.dataset import eval_set
    from livepsf.net.architectures import BinnedSpectrum, build_network
    from livepsf.net.evaluate import r2_score
    from livepsf.net.registry import load_model
    from livepsf.optics import get_psf_model

    torch.set_num_threads(1)
    spec = get_psf_model("Z-3")
    trunk = build_network("shared-trunk", spec.n_params).eval()
    trunk.load_state_dict(load_model("default").module.state_dict())
    bins = BinnedSpectrum(trunk.window_px)

    def features(x: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            chunks = [(trunk.trunk_features(trunk.pooled_windows(c)), bins(c)) for c in x.split(256)]
        return {"trunk": torch.cat([t for t, _ in chunks]), "bins": torch.cat([s for _, s in chunks])}

    start = time.time()
    train_x, train_t = eval_set(spec, "val", n=args.n)
    test_x, test_t = eval_set(spec, "test", n=2000)
    train_ok, test_ok = train_t[:, 0] < 0.5, test_t[:, 0] < 0.5
    train_f, test_f = features(train_x[train_ok]), features(test_x[test_ok])
    print(f"{int(train_ok.sum())} training windows, {int(test_ok.sum())} test windows "
          f"({time.time() - start:.0f} s)\n")
    print("| features | dimensions | test R² " + " / ".join(spec.names) + " | mean |")
    print("| --- | --- | --- | --- |")
    for combo in (("trunk",), ("bins",), ("trunk", "bins")):
        a = torch.cat([train_f[k] for k in combo], 1)
        b = torch.cat([test_f[k] for k in combo], 1)
        r2 = r2_score(test_t[test_ok, 1:], fit_and_score(a, train_t[train_ok, 1:], b, spec, args.epochs))
        print(f"| {'+'.join(combo)} | {a.shape[1]} | " + " / ".join(f"{v:.3f}" for v in r2)
              + f" | {r2.mean():.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

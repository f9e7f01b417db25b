"""What dihedral averaging buys: a model's test-set R² and σ coverage, plain and averaged over 8 transforms.

Each test window is also read rotated and mirrored; the readings are mapped back and averaged
(:func:`livepsf.net.symmetry.dihedral_average_windows`, the same average ``PSFMapper(...,
dihedral_average=True)`` computes for frames). Same fixed-seed test set as the model card.

    python benchmarks/dihedral_average.py                 # the shipped default (Z-3)
    python benchmarks/dihedral_average.py --model focus   # another shipped model or a .pt path

Measured (2-core AMD EPYC, torch 2.13.0 CPU; Z-3 test set n = 2000): shipped ``default`` 7d10b8c469b3 (trained
with the dihedral-consistency term) mean R² 0.563 -> 0.571 (focus 0.617 -> 0.623, astig_0 0.497 -> 0.507,
astig_45 0.576 -> 0.584), within 1σ 62 / 68 / 72 % -> 64 / 67 / 73 %; the previous ``default`` f116e1106d1f
0.540 -> 0.567 (focus 0.605 -> 0.621, astig_0 0.474 -> 0.506, astig_45 0.542 -> 0.573).
Also printed: the median spread of each window's 8 readings (:func:`livepsf.net.symmetry.dihedral_spread_windows`),
how much the network's answer follows the window's orientation instead of the PSF: shipped ``default`` focus
0.018, astig_0 0.017, astig_45 0.015; previous 0.034 / 0.037 / 0.037 (normalised units, the ranges span 2).
"""

from __future__ import annotations

import argparse
import sys

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="shipped model name or .pt path")
    parser.add_argument("--n", type=int, default=2000, help="test windows (the card uses 2000)")
    args = parser.parse_args(argv)

    from livepsf.data.dataset import eval_set
    from livepsf.net import load_model
    from livepsf.net.evaluate import evaluate_outputs, predict_raw
    from livepsf.net.symmetry import dihedral_average_windows, dihedral_spread_windows

    torch.set_num_threads(1)
    net = load_model(args.model)
    spec = net.spec
    patches, targets = eval_set(spec.name, "test", n=args.n, window_px=net.window_px)
    with torch.inference_mode():
        plain = predict_raw(net.module, patches)
        averaged = torch.cat([dihedral_average_windows(net.module, patches[i:i + 128], spec)
                              for i in range(0, len(patches), 128)])
        spread = torch.cat([dihedral_spread_windows(net.module, patches[i:i + 128], spec)
                            for i in range(0, len(patches), 128)])
    print(f"# {net.card.name} ({spec.name}, weights {net.card.weights_sha256[:12]}), test set n = {len(patches)}")
    print("| reading | mean R² | R² per parameter | within 1σ | within 2σ |")
    print("| --- | --- | --- | --- | --- |")
    for label, raw in (("plain", plain), ("dihedral average", averaged)):
        r = evaluate_outputs(raw, targets, spec)
        per = ", ".join(f"{k} {v:.3f}" for k, v in r.r2.items())
        one = ", ".join(f"{v:.2f}" for v in r.within_1_sigma.values()) or "–"
        two = ", ".join(f"{v:.2f}" for v in r.within_2_sigma.values()) or "–"
        print(f"| {label} | {r.mean_r2:.3f} | {per} | {one} | {two} |")
    medians = ", ".join(f"{name} {float(v):.3f}" for name, v in zip(spec.names, spread.median(dim=0).values))
    print(f"\nmedian spread of the 8 readings of a window (normalised units, 0 = orientation-consistent): {medians}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

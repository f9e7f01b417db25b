"""Does any simple statistic of the training patches predict the label on its own? (livepsf.data.shortcuts)

Prints, per PSF model, the R² of predicting each normalised parameter from the patch mean, relative noise
level, contrast or orientation alone (10 quantile bins, valid patches of the fixed validation set).

    python benchmarks/data_shortcuts.py [--n 2000] [--psf-model Z-3 ...]
"""

from __future__ import annotations

import argparse

import torch

from livepsf.data.dataset import eval_set
from livepsf.data.shortcuts import shortcut_report
from livepsf.optics import get_psf_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--psf-model", nargs="+", default=["Z-3", "Z-1", "G-2"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    for name in args.psf_model:
        spec = get_psf_model(name)
        x, t = eval_set(spec, "val", n=args.n)
        report = shortcut_report(x, t, spec)
        print(f"\n{name}: R² of the label from one statistic alone ({args.n} validation patches, "
              f"{int((t[:, 0] < 0.5).sum())} valid)")
        print(f"{'statistic':12s}" + "".join(f"{p:>12s}" for p in spec.names))
        for stat, row in report.items():
            print(f"{stat:12s}" + "".join(f"{row[p]:12.3f}" for p in spec.names))


if __name__ == "__main__":
    main()

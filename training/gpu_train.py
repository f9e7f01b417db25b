"""Train one PSF network on a GPU fed by CPU workers, writing only its resumable checkpoint and a log.

Evaluation and export (test set, robustness sweep, cue battery, σ calibration, model card) happen
afterwards on any machine with ``livepsf.net.train.export_checkpoint``: the GPU's time goes to training.
Several of these run side by side on one GPU (one per model), each with its own data workers.

    python training/gpu_train.py --psf-model Z-3 --name default --minutes 7 --workers 5 --out OUT [--resume CKPT]

The validation set is cached where ``livepsf.data.dataset.cache_dir`` says (``$LIVEPSF_CACHE_DIR``).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--psf-model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--architecture", default="shared-trunk")
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--data-echo", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--init-from", default=None, help="trained .pt/.ckpt whose weights start a new run")
    parser.add_argument("--init-lr-factor", type=float, default=1.0, help="learning-rate factor of those weights")
    parser.add_argument("--psf-pool", type=int, default=None,
                        help="PSFs kept by the data synthesiser (default 256); with --psf-refresh equal to it "
                             "and to the batch size, every patch has its own PSF")
    parser.add_argument("--psf-refresh", type=int, default=None, help="PSFs replaced per batch (default 2)")
    parser.add_argument("--consistency-weight", type=float, default=0.0,
                        help="weight of the dihedral-consistency term (livepsf.net.train.consistency_loss); 0: off")
    parser.add_argument("--calibration-n", type=int, default=4000,
                        help="validation windows that σ is calibrated on after training "
                             "(TrainConfig.calibration_n)")
    args = parser.parse_args(argv)

    from livepsf.net.train import TrainConfig, train

    torch.set_num_threads(1)  # the cores belong to the data workers
    config = TrainConfig(psf_model=args.psf_model, architecture=args.architecture, name=args.name,
                         minutes=args.minutes, batch_size=args.batch_size, lr=args.lr, warmup_steps=300,
                         seed=args.seed, device=args.device, threads=1, workers=args.workers,
                         data_echo=args.data_echo, val_every=500, checkpoint_every=500, init_from=args.init_from,
                         init_lr_factor=args.init_lr_factor, consistency_weight=args.consistency_weight,
                         calibration_n=args.calibration_n,
                         synth={k: v for k, v in (("psf_pool", args.psf_pool), ("psf_refresh", args.psf_refresh))
                                if v is not None},
                         command="python training/gpu_train.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    start = time.perf_counter()

    def log(step: int, loss: float) -> None:
        if step % 500 == 0:
            print(f"{args.name} step {step} loss {loss:.5f} wall {time.perf_counter() - start:.0f} s", flush=True)

    result = train(config, args.out, resume=args.resume, progress=False, on_step=log)
    v = result.validation
    print(f"{args.name}: {result.step} steps, {result.seconds:.0f} s of training; val mean R² "
          f"{v.mean_r2:.4f} {v.r2} within 1σ {v.within_1_sigma}; σ factors {result.sigma_calibration}; "
          f"checkpoint {result.checkpoint}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Write simulator frames of the tilted printed grid as TIFF files, for `livepsf calibrate`.

    python calibration/sim_frames.py OUT_DIR [--tilts 3 6 10] [--per-tilt 2]

Writes ``grid_tilt03deg_s1.tif`` ... (uint16, 1024×1024, 0.65 µm pixels, cylindrical lens in, tilt
along x, in focus mid-field). Existing files are never overwritten. See calibration/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--tilts", type=float, nargs="+", default=[3.0, 6.0, 10.0])
    parser.add_argument("--per-tilt", type=int, default=2, help="frames per tilt (different seeds)")
    parser.add_argument("--exposure-ms", type=float, default=10.0)
    args = parser.parse_args(argv)

    import tifffile

    from livepsf.sim import create_core

    args.out_dir.mkdir(parents=True, exist_ok=True)
    core = create_core(sample="printed-grid", tilt_deg=args.tilts[0], tilt_axis="x", lens=True, seed=1)
    core.setExposure(args.exposure_ms)
    for tilt in args.tilts:
        for k in range(args.per_tilt):
            seed = 1 + k
            path = args.out_dir / f"grid_tilt{f'{tilt:g}'.zfill(2)}deg_s{seed}.tif"
            if path.exists():
                print(f"{path} exists: kept")
                continue
            core.setProperty("Sample", "TiltDeg", tilt)
            core.setProperty("Sample", "Seed", seed)
            # Noise drawn per frame from its own seed: a frame is the same whether or not others were kept.
            core.setProperty("Camera", "NoiseSeed", 1000 * round(100 * tilt) + seed)
            core.setPosition("Z", 0.0)
            core.waitForDevice("Z")
            core.snapImage()
            tifffile.imwrite(path, core.getImage(), resolution=(1 / 0.65, 1 / 0.65),
                             metadata={"unit": "um", "tilt_deg": tilt, "tilt_axis": "x", "seed": seed})
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

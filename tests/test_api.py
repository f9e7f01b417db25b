"""The public API of DESIGN.md works end to end, as a notebook would use it."""

from __future__ import annotations

import numpy as np

import livepsf


def test_public_api_walkthrough(tmp_path) -> None:
    psf = livepsf.make_psf("Z-3", size_px=129, optics=livepsf.Optics(), focus=1.0, astig_0=0.3, astig_45=0.0)
    assert psf.shape == (129, 129) and abs(psf.sum() - 1) < 1e-9

    model = livepsf.load_model("default")
    assert model.card.psf_model == "Z-3"
    assert {p.name for p in model.card.params} == {"focus", "astig_0", "astig_45"}

    rng = np.random.default_rng(0)
    frame = rng.poisson(500, size=(320, 384)).astype(np.uint16)
    out = model.predict(frame[None, :128, :128])
    params = {"focus", "astig_0", "astig_45"}
    assert set(out) == params | {"cylinder", "axis", "invalid"} | {f"{n}_sigma" for n in params}  # σ heads

    mapper = livepsf.PSFMapper(model, stride_px=64)
    pmap = mapper(frame)
    assert pmap.grid_shape == (4, 5)  # ceil((320 - 128) / 64) + 1, ceil((384 - 128) / 64) + 1
    assert pmap.upsample(name="focus").shape == frame.shape
    assert set(pmap.sigma) == params and all(s.shape == pmap.grid_shape for s in pmap.sigma.values())

    restored = livepsf.deconvolve(frame.astype(np.float32), pmap, iterations=2)
    assert restored.shape == frame.shape and np.isfinite(restored).all()


def test_version_and_exports() -> None:
    assert livepsf.__version__
    for name in livepsf.__all__:
        assert hasattr(livepsf, name), name

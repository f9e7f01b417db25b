"""Spatially-variant TV-RL deconvolution: the operator, its adjoint, the RL reference, sharpening."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from scipy.signal import fftconvolve
from skimage.restoration import richardson_lucy

from livepsf.deconv import (
    OverlapAddOperator,
    crop_to_support,
    deconvolve,
    grid_centers,
    psfs_from_map,
    spatially_variant_blur,
)
from livepsf.errors import InputError
from livepsf.mapping import PSFMap
from livepsf.optics import Optics, make_psf


def _points(shape: tuple[int, int], n: int, seed: int = 0, background: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full(shape, background)
    img[rng.integers(8, shape[0] - 8, n), rng.integers(8, shape[1] - 8, n)] = 100.0
    return img


def _texture(shape: tuple[int, int], seed: int, grain_px: float = 1.0) -> np.ndarray:
    """A random texture around 1 with detail at the ``grain_px`` scale, non-negative."""
    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(0, 1, shape), grain_px)
    return np.clip(1 + 0.5 * field / field.std(), 0, None)


def _snr_db(estimate: np.ndarray, truth: np.ndarray) -> float:
    """SNR of the estimate against the truth's variations (its mean does not count as signal)."""
    return float(10 * np.log10(np.sum((truth - truth.mean()) ** 2) / np.sum((estimate - truth) ** 2)))


def _map(focus: np.ndarray, frame_shape=(96, 96), model="Z-1") -> PSFMap:
    gy, gx = focus.shape
    params = {"focus": focus.astype(np.float32)} if model == "Z-1" else {"variance": focus.astype(np.float32)}
    return PSFMap(
        params=params,
        invalid=np.zeros((gy, gx), np.float32),
        centers_y=grid_centers(frame_shape[0], gy),
        centers_x=grid_centers(frame_shape[1], gx),
        window_px=frame_shape[0] // gy,
        stride_px=frame_shape[0] // gy,
        frame_shape=frame_shape,
        psf_model=model,
        optics=Optics(),
    )


def test_adjoint_passes_dot_test() -> None:
    rng = np.random.default_rng(1)
    kernels = torch.tensor(rng.random((3, 2, 9, 9)))
    op = OverlapAddOperator(kernels, [10.0, 31.0, 50.0], [12.5, 44.0], (64, 60), dtype=torch.float64)
    x = torch.tensor(rng.random(op.extended_shape))
    r = torch.tensor(rng.random(op.frame_shape))
    lhs = float((op.forward(x) * r).sum())
    rhs = float((x * op.adjoint(r)).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_weights_are_a_partition_of_unity() -> None:
    # With one PSF repeated over the grid, sum_m h * (phi_m x) = h * x only if the phi_m sum to one.
    rng = np.random.default_rng(2)
    kernels = torch.tensor(rng.random((7, 7))).expand(4, 3, 7, 7)
    op = OverlapAddOperator(kernels, [5.0, 20.0, 52.0, 70.0], grid_centers(70, 3), (80, 70), dtype=torch.float64)
    x = torch.tensor(rng.random(op.extended_shape))
    single = OverlapAddOperator(kernels[:1, :1], [40.0], [35.0], (80, 70), dtype=torch.float64)
    np.testing.assert_allclose(op.forward(x).numpy(), single.forward(x).numpy(), atol=1e-12)
    np.testing.assert_allclose(op.forward(torch.ones_like(x)).numpy(), 1.0, atol=1e-12)


def test_single_psf_blur_matches_linear_convolution() -> None:
    img = _points((64, 72), 20)
    psf = make_psf("G-2", 11, variance_x=3.0, variance_y=1.5)
    np.testing.assert_allclose(spatially_variant_blur(img, psf), fftconvolve(img, psf, mode="same"), atol=1e-10)


def test_equal_psfs_match_richardson_lucy_reference() -> None:
    img = _points((128, 128), 40)
    psf = make_psf("G-1", 15, variance=4.0)
    blurry = fftconvolve(img, psf, mode="same")
    ours = deconvolve(blurry, psfs=np.tile(psf, (3, 2, 1, 1)), iterations=10, tv_weight=0.0, device="cpu",
                      start="flat", accelerate=False)  # scikit-image: constant start, plain iterations
    reference = richardson_lucy(blurry, psf, num_iter=10, clip=False)
    interior = np.s_[32:-32, 32:-32]  # skimage zero-pads at the borders; we extend the field
    np.testing.assert_allclose(ours[interior], reference[interior], rtol=0, atol=1e-4 * reference.max())


@pytest.mark.parametrize(("tv_weight", "gain_db"), [(0.0, 0.5), (0.01, 0.15)])
def test_acceleration_gets_closer_to_the_truth_in_the_same_iterations(tv_weight: float, gain_db: float) -> None:
    sharp = 10.0 + 100.0 * _texture((96, 96), seed=5)
    psf = make_psf("Z-1", 31, focus=0.5)
    blurry = fftconvolve(np.pad(sharp, 16, mode="reflect"), psf, mode="same")[16:-16, 16:-16]
    plain = deconvolve(blurry, psfs=psf, iterations=15, tv_weight=tv_weight, device="cpu", accelerate=False)
    fast = deconvolve(blurry, psfs=psf, iterations=15, tv_weight=tv_weight, device="cpu", accelerate=True)
    inner = np.s_[16:-16, 16:-16]
    assert _snr_db(fast[inner], sharp[inner]) > _snr_db(plain[inner], sharp[inner]) + gain_db
    assert fast.min() >= 0.0


def test_delta_sharpens() -> None:
    img = np.ones((64, 64))
    img[32, 32] = 1000.0
    psf = make_psf("Z-1", 31, focus=1.0)  # about 25 px across
    # Blur a larger field and crop, so the background is uniform up to the borders.
    blurry = fftconvolve(np.pad(img, 32, mode="edge"), psf, mode="same")[32:-32, 32:-32]
    out = deconvolve(blurry, psfs=psf, iterations=20, tv_weight=0.0, device="cpu")

    def central_fraction(a: np.ndarray) -> float:
        excess = a - 1.0  # above the background
        return float(excess[31:34, 31:34].sum() / excess.sum())

    assert out[32, 32] > 5 * blurry[32, 32]
    assert central_fraction(out) > 10 * central_fraction(blurry)


def test_spatially_variant_psfs_beat_blurry_and_wrong_psfs() -> None:
    sharp = _texture((128, 128), seed=3)
    psfs = np.stack([
        np.stack([make_psf("G-1", 21, variance=v) for v in row]) for row in ([1.0, 9.0], [16.0, 4.0])
    ])
    # Blur a larger field (same PSF positions) and crop, so the borders hold real content.
    blurry = spatially_variant_blur(np.pad(sharp, 16, mode="reflect"), psfs)[16:-16, 16:-16]
    good = deconvolve(blurry, psfs=psfs, iterations=20, tv_weight=0.0, device="cpu")
    single = deconvolve(blurry, psfs=psfs.mean(axis=(0, 1)), iterations=20, tv_weight=0.0, device="cpu")
    swapped = deconvolve(blurry, psfs=psfs[::-1, ::-1], iterations=20, tv_weight=0.0, device="cpu")
    inner = np.s_[10:-10, 10:-10]
    snr = {name: _snr_db(a[inner], sharp[inner])
           for name, a in [("blurry", blurry), ("good", good), ("single", single), ("swapped", swapped)]}
    assert snr["good"] > snr["blurry"] + 1.5
    assert snr["good"] > snr["single"]
    assert snr["good"] > snr["swapped"] + 0.5


def test_tv_regularisation_smooths_noise() -> None:
    rng = np.random.default_rng(5)
    flat = rng.poisson(50.0, (64, 64)).astype(np.float64)
    psf = make_psf("G-1", 9, variance=2.0)
    plain = deconvolve(flat, psfs=psf, iterations=20, tv_weight=0.0, device="cpu")
    tv = deconvolve(flat, psfs=psf, iterations=20, tv_weight=0.02, device="cpu")
    inner = np.s_[8:-8, 8:-8]
    assert tv[inner].std() < 0.6 * plain[inner].std()
    assert tv.mean() == pytest.approx(flat.mean(), rel=0.01)
    # The paper's weight (0.1) stays stable (no blow-up, flux kept) even where it over-corrects.
    strong = deconvolve(flat, psfs=psf, iterations=20, tv_weight=0.1, device="cpu")
    assert strong.mean() == pytest.approx(flat.mean(), rel=0.05) and strong.max() < 3 * flat.max()


def test_output_is_non_negative_float32_of_same_shape() -> None:
    rng = np.random.default_rng(6)
    img = (rng.random((40, 50)) * 200 - 20).astype(np.int16)  # some negative pixels
    out = deconvolve(img, psfs=make_psf("G-1", 7, variance=1.0), iterations=5, device="cpu")
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0


def test_psfs_from_map_follow_the_parameters() -> None:
    pmap = _map(np.array([[0.2, 1.0], [1.5, 0.5]]))
    kernels = psfs_from_map(pmap)
    assert kernels.shape[:2] == (2, 2) and kernels.shape[-1] % 2 == 1
    np.testing.assert_allclose(kernels.sum(dim=(-2, -1)).numpy(), 1.0, atol=1e-5)
    peaks = kernels.amax(dim=(-2, -1)).numpy()
    assert peaks[0, 0] > peaks[1, 1] > peaks[0, 1] > peaks[1, 0]  # more defocus, flatter PSF

    gauss = psfs_from_map(_map(np.array([[4.0]]), model="G-1"))[0, 0].numpy()
    r = np.arange(gauss.shape[0]) - gauss.shape[0] // 2
    assert float(np.sum(gauss.sum(axis=0) * r**2)) == pytest.approx(4.0, rel=0.02)


def test_crop_to_support_keeps_energy() -> None:
    big = torch.from_numpy(make_psf("G-1", 101, variance=4.0))[None]
    small = crop_to_support(big, energy=0.999)
    assert small.shape[-1] < 31
    assert float(small.sum()) == pytest.approx(1.0)


def test_deconvolve_with_a_psf_map() -> None:
    sharp = _texture((96, 96), seed=7, grain_px=2.0)
    pmap = _map(np.array([[0.2, 0.5], [0.5, 0.7]]))
    centres = (pmap.centers_y + 16, pmap.centers_x + 16)
    blurry = spatially_variant_blur(np.pad(sharp, 16, mode="reflect"), psfs_from_map(pmap), centres)[16:-16, 16:-16]
    out = deconvolve(blurry, pmap, iterations=15, tv_weight=0.01, device="cpu")
    inner = np.s_[8:-8, 8:-8]
    assert _snr_db(out[inner], sharp[inner]) > _snr_db(blurry[inner], sharp[inner]) + 0.6


def test_bad_input_is_refused() -> None:
    img = np.ones((32, 32))
    psf = make_psf("G-1", 5, variance=1.0)
    with pytest.raises(InputError, match="exactly one"):
        deconvolve(img)
    with pytest.raises(InputError, match="frame"):
        deconvolve(img, _map(np.ones((2, 2)), frame_shape=(64, 64)))
    with pytest.raises(InputError, match="odd"):
        deconvolve(img, psfs=np.ones((4, 4)))
    with pytest.raises(InputError, match="tv_weight"):
        deconvolve(img, psfs=psf, tv_weight=1.0)
    with pytest.raises(InputError, match="non-negative"):
        deconvolve(img, psfs=-psf)
    with pytest.raises(InputError, match="NaN"):
        deconvolve(np.full((8, 8), np.nan), psfs=psf)

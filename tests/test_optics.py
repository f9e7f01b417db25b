"""Physics of the optics core: Zernike modes, PSF models and their conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from livepsf.optics import Optics, cylinder_axis, get_psf_model, make_psf, psf_batch
from livepsf.optics.zernike import ansi_index, ansi_to_nm, zernike

ALL_MODELS = ["Z-1", "Z-2", "Z-3", "G-1", "G-2"]


def moments(psf: np.ndarray) -> tuple[float, float, float]:
    """Second central moments (var_y, var_x, cov_yx) of a PSF, in px²."""
    n = psf.shape[0]
    y, x = np.mgrid[:n, :n].astype(np.float64)
    total = psf.sum()
    cy, cx = (psf * y).sum() / total, (psf * x).sum() / total
    vy = (psf * (y - cy) ** 2).sum() / total
    vx = (psf * (x - cx) ** 2).sum() / total
    cov = (psf * (y - cy) * (x - cx)).sum() / total
    return vy, vx, cov


# -- Zernike polynomials -----------------------------------------------------------------------------


def _disc_grid(n: int = 801) -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.linspace(-1, 1, n, dtype=torch.float64)
    y, x = torch.meshgrid(u, u, indexing="ij")
    rho, theta = torch.hypot(x, y), torch.atan2(y, x)
    inside = rho <= 1
    return rho[inside], theta[inside]


@pytest.mark.parametrize("j", range(15))
def test_zernike_rms_normalised(j: int) -> None:
    rho, theta = _disc_grid()
    n, m = ansi_to_nm(j)
    z = zernike(n, m, rho, theta)
    rms = torch.sqrt((z**2).mean()) if (n, m) != (0, 0) else z.abs().mean()
    assert rms.item() == pytest.approx(1.0, abs=5e-3)


def test_zernike_modes_are_orthogonal() -> None:
    rho, theta = _disc_grid()
    modes = torch.stack([zernike(*ansi_to_nm(j), rho, theta) for j in range(10)])
    gram = modes @ modes.T / modes.shape[1]
    assert torch.allclose(gram, torch.eye(10, dtype=torch.float64), atol=1e-2)


def test_ansi_index_round_trip_and_known_values() -> None:
    assert [ansi_index(*ansi_to_nm(j)) for j in range(28)] == list(range(28))
    assert ansi_to_nm(4) == (2, 0)  # defocus
    assert ansi_to_nm(3) == (2, -2)  # oblique astigmatism (45°)
    assert ansi_to_nm(5) == (2, 2)  # vertical astigmatism (0°)
    with pytest.raises(ValueError):
        zernike(2, 1, torch.zeros(1), torch.zeros(1))


def test_astigmatism_orientation_on_the_pupil() -> None:
    # Z(2,2) is largest along x (theta = 0), Z(2,-2) along the (row, col) ∝ (1, 1) diagonal.
    rho = torch.ones(4, dtype=torch.float64)
    theta = torch.tensor([0.0, math.pi / 2, math.pi / 4, -math.pi / 4], dtype=torch.float64)
    z22, z2m2 = zernike(2, 2, rho, theta), zernike(2, -2, rho, theta)
    assert z22[0] > 0 > z22[1]
    assert z2m2[2] > 0 > z2m2[3]


# -- PSF basics ---------------------------------------------------------------------------------------


def _random_values(model: str, n: int, seed: int = 0) -> torch.Tensor:
    return get_psf_model(model).sample(n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("model", ALL_MODELS)
def test_psfs_are_normalised_non_negative_and_centred(model: str) -> None:
    psfs = psf_batch(model, _random_values(model, 6), size_px=65, dtype=torch.float64).numpy()
    assert psfs.shape == (6, 65, 65)
    assert (psfs >= 0).all()
    np.testing.assert_allclose(psfs.sum(axis=(1, 2)), 1.0, atol=1e-12)
    for psf in psfs:  # every model here is point-symmetric about the central pixel
        np.testing.assert_allclose(psf, psf[::-1, ::-1], atol=1e-12)


@pytest.mark.parametrize("model", ALL_MODELS)
def test_batched_equals_one_by_one(model: str) -> None:
    values = _random_values(model, 5, seed=1)
    batch = psf_batch(model, values, size_px=33, dtype=torch.float64)
    singles = torch.cat([psf_batch(model, values[i : i + 1], size_px=33, dtype=torch.float64) for i in range(5)])
    # One-by-one calls may pick a smaller padded grid; the PSF must not depend on it.
    torch.testing.assert_close(batch, singles, atol=1e-9, rtol=0)


@pytest.mark.parametrize("model", ["Z-3", "G-2"])
def test_float32_matches_float64(model: str) -> None:
    values = _random_values(model, 4, seed=2)
    p32 = psf_batch(model, values, size_px=65, dtype=torch.float32)
    p64 = psf_batch(model, values, size_px=65, dtype=torch.float64)
    assert p32.dtype == torch.float32
    assert (p32.double() - p64).abs().max().item() < 1e-5


@pytest.mark.parametrize("params", [dict(focus=2.0, astig_0=0.5, astig_45=-0.5), dict(focus=0.0, astig_0=0.0, astig_45=0.0)])
def test_padding_keeps_wrapped_energy_negligible(params: dict[str, float]) -> None:
    # A crop of a much larger computation is the reference: only the far diffraction tails (Airy
    # rings fall off as r^-3) can wrap round the padded grid, and they carry well under 2 % of the energy.
    small = make_psf("Z-3", size_px=129, **params)
    big = make_psf("Z-3", size_px=513, **params)[192:-192, 192:-192]
    assert np.abs(small - big / big.sum()).sum() < 0.02
    assert big.sum() > 0.99  # the 129 px crop itself keeps nearly all the energy, even at the largest blur


def test_make_psf_validates_its_input() -> None:
    with pytest.raises(ValueError, match="odd"):
        make_psf("Z-1", size_px=64, focus=0.5)
    with pytest.raises(ValueError, match="unknown PSF model"):
        make_psf("Z-9", size_px=33)
    with pytest.raises(ValueError, match="no parameters"):
        make_psf("Z-1", size_px=33, focus=0.5, variance=2.0)
    with pytest.raises(ValueError, match="finite"):
        make_psf("Z-1", size_px=33, focus=float("nan"))
    with pytest.raises(ValueError, match="positive"):
        make_psf("G-1", size_px=33, variance=-1.0)


# -- diffraction ----------------------------------------------------------------------------------


@pytest.mark.parametrize("pixel_size_um", [0.65, 0.05])
def test_in_focus_first_dark_ring_at_airy_radius(pixel_size_um: float) -> None:
    optics = Optics(pixel_size_um=pixel_size_um)
    size = 129
    psf = make_psf("Z-1", size_px=size, optics=optics, focus=0.0)
    # Radial profile over the distinct pixel distances from the centre (pixel-integrated samples).
    y, x = np.mgrid[:size, :size] - size // 2
    r2 = (y * y + x * x).ravel()
    radii2 = np.unique(r2[r2 < (size // 2) ** 2])
    profile = np.array([psf.ravel()[r2 == v].mean() for v in radii2])
    i = next(i for i in range(1, len(profile) - 1) if profile[i] <= profile[i - 1] and profile[i] < profile[i + 1])
    first_min = math.sqrt(radii2[i])
    expected_px = optics.airy_radius_um / pixel_size_um  # 0.61 lambda / NA
    assert abs(first_min - expected_px) <= 1.0


def test_in_focus_psf_is_round() -> None:
    vy, vx, cov = moments(make_psf("Z-3", size_px=65, focus=0.0, astig_0=0.0, astig_45=0.0))
    assert vy == pytest.approx(vx, rel=1e-9)
    assert abs(cov) < 1e-9


# -- conventions and symmetries -----------------------------------------------------------------------


def test_sign_ambiguity_psf_of_minus_w_equals_psf_of_w() -> None:
    a = make_psf("Z-3", size_px=97, focus=0.8, astig_0=0.3, astig_45=-0.2)
    b = make_psf("Z-3", size_px=97, focus=-0.8, astig_0=-0.3, astig_45=0.2)
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_cylinder_axis_equivalence_minus_focus_equals_axis_plus_90_degrees() -> None:
    cylinder, axis, focus = 0.35, math.radians(20.0), 0.7

    def psf(d: float, theta: float) -> np.ndarray:
        return make_psf("Z-3", size_px=97, focus=d, astig_0=cylinder * math.cos(2 * theta),
                        astig_45=cylinder * math.sin(2 * theta))

    np.testing.assert_allclose(psf(-focus, axis), psf(focus, axis + math.pi / 2), atol=1e-12)
    cyl, ax = cylinder_axis(torch.tensor(cylinder * math.cos(2 * axis)), torch.tensor(cylinder * math.sin(2 * axis)))
    assert cyl.item() == pytest.approx(cylinder) and ax.item() == pytest.approx(axis)


def test_second_moments_grow_with_defocus() -> None:
    sizes = [sum(moments(make_psf("Z-1", size_px=129, focus=f))[:2]) for f in np.linspace(0, 2, 9)]
    assert all(b > a for a, b in zip(sizes, sizes[1:]))


def test_elongation_conventions() -> None:
    vy, vx, cov = moments(make_psf("Z-3", size_px=129, focus=1.0, astig_0=0.3, astig_45=0.0))
    assert vx > 1.3 * vy, "focus > 0, astig_0 > 0: longer along x (axis 1)"
    vy, vx, cov = moments(make_psf("Z-3", size_px=129, focus=1.0, astig_0=0.0, astig_45=0.3))
    assert cov > 0.15 * (vx + vy) / 2, "focus > 0, astig_45 > 0: longer along the (row, col) ∝ (1, 1) diagonal"
    vy, vx, _ = moments(make_psf("Z-3", size_px=129, focus=-1.0, astig_0=0.3, astig_45=0.0))
    assert vy > 1.3 * vx, "below focus the same lens astigmatism elongates along y"


@pytest.mark.parametrize("k", [1, 2, 3])
def test_label_rotation_matches_image_rotation(k: int) -> None:
    spec = get_psf_model("Z-3")
    values = torch.tensor([[0.9, 0.25, -0.15]], dtype=torch.float64)
    rotated_image = torch.rot90(psf_batch(spec, values, 97, dtype=torch.float64), k, dims=(-2, -1))
    from_labels = psf_batch(spec, spec.rot90(values, k), 97, dtype=torch.float64)
    torch.testing.assert_close(rotated_image, from_labels, atol=1e-10, rtol=0)


@pytest.mark.parametrize("axis", [0, 1])
def test_label_flip_matches_image_flip(axis: int) -> None:
    spec = get_psf_model("Z-3")
    values = torch.tensor([[0.9, 0.25, -0.15]], dtype=torch.float64)
    flipped_image = torch.flip(psf_batch(spec, values, 97, dtype=torch.float64), dims=(1 + axis,))
    from_labels = psf_batch(spec, spec.flip(values, axis), 97, dtype=torch.float64)
    torch.testing.assert_close(flipped_image, from_labels, atol=1e-10, rtol=0)


def test_gaussian_label_rotation_swaps_widths() -> None:
    spec = get_psf_model("G-2")
    values = torch.tensor([[9.0, 2.0]], dtype=torch.float64)
    rotated = torch.rot90(psf_batch(spec, values, 33, dtype=torch.float64), 1, dims=(-2, -1))
    torch.testing.assert_close(rotated, psf_batch(spec, spec.rot90(values), 33, dtype=torch.float64))


@pytest.mark.parametrize(("model", "params"), [("G-1", {"variance": 4.0}), ("G-2", {"variance_x": 9.0, "variance_y": 2.5})])
def test_gaussian_measured_variance_equals_parameter(model: str, params: dict[str, float]) -> None:
    vy, vx, cov = moments(make_psf(model, size_px=65, **params))
    assert vx == pytest.approx(params.get("variance_x", params.get("variance")), rel=1e-6)
    assert vy == pytest.approx(params.get("variance_y", params.get("variance")), rel=1e-6)
    assert abs(cov) < 1e-12


# -- parameter specs -------------------------------------------------------------------------------


def test_normalisation_round_trip_and_range() -> None:
    spec = get_psf_model("Z-3")
    values = spec.sample(1000, torch.Generator().manual_seed(3))
    unit = spec.normalise(values)
    assert unit.min() >= 0 and unit.max() <= 1
    torch.testing.assert_close(spec.denormalise(unit), values)
    assert (values[:, 0] >= 0).all(), "samples are canonical: focus >= 0"


def test_canonical_form() -> None:
    spec = get_psf_model("Z-3")
    out = spec.canonical(torch.tensor([[-0.5, 0.2, -0.1], [0.5, 0.2, -0.1]]))
    torch.testing.assert_close(out, torch.tensor([[0.5, -0.2, 0.1], [0.5, 0.2, -0.1]]))
    z2 = get_psf_model("Z-2")
    torch.testing.assert_close(z2.canonical(torch.tensor([[-0.2, 0.3]])), torch.tensor([[0.2, -0.3]]))


def test_defocus_conversion_round_trip() -> None:
    optics = Optics()
    assert optics.defocus_um(optics.defocus_waves(37.5)) == pytest.approx(37.5)
    # Paraxial: one wave RMS of defocus is 4 sqrt(3) n lambda / NA^2 of axial distance.
    assert optics.defocus_um(1.0) == pytest.approx(4 * math.sqrt(3) * 0.55 / 0.09)


def test_optics_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        Optics(na=1.2)  # above the immersion index of air
    with pytest.raises(ValueError):
        Optics(pixel_size_um=0)

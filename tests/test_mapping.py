"""PSFMapper (frame -> PSF map), invalid-window filling, PSF-map OME-TIFF files and ``livepsf map``."""

# No `from __future__ import annotations`: TorchScript compiles _VarianceNet and needs real annotations.

import hashlib
import json
import math

import numpy as np
import pytest
import tifffile
import torch
from torch import nn

from livepsf.errors import InputError
from livepsf.mapping import PSFMap, PSFMapper, fill_invalid, load_psfmaps, save_psfmaps
from livepsf.optics import Optics

# --- helpers -------------------------------------------------------------------------------------------


def _texture(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A textured float frame (smoothed noise plus bright points) in camera-like counts."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.random(shape), 2.0) * 4000.0
    ys, xs = rng.integers(0, shape[0], 200), rng.integers(0, shape[1], 200)
    img[ys, xs] += 3000.0
    return img + 100.0


def _reference_windows(frame: np.ndarray, window: int, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Windows cut with numpy from the frame reflect-padded at the bottom/right (the documented geometry)."""
    h, w = frame.shape
    gy = math.ceil(max(h - window, 0) / stride) + 1
    gx = math.ceil(max(w - window, 0) / stride) + 1
    hp, wp = (gy - 1) * stride + window, (gx - 1) * stride + window
    padded = np.pad(frame.astype(np.float32), ((0, hp - h), (0, wp - w)), mode="reflect")
    windows = np.stack([padded[i * stride: i * stride + window, j * stride: j * stride + window]
                        for i in range(gy) for j in range(gx)])
    return windows, (gy, gx)


class _VarianceNet(nn.Module):
    """A hand-made Z-1 "network" for testing the fill end to end: blank windows are invalid.

    Invalid logit ``10 * (1 - variance)`` (a blank window is invalid with probability ~1), normalised
    focus = window mean / 1000, so the expected map can be computed with numpy.
    """

    window_px: int

    def __init__(self, window_px: int = 128) -> None:
        super().__init__()
        self.window_px = window_px

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(-3, -2, -1))
        var = x.var(dim=(-3, -2, -1))
        return torch.stack([10.0 * (1.0 - var), mean / 1000.0], dim=1)

    @torch.jit.export
    def map_frame(self, frame: torch.Tensor, stride: int) -> torch.Tensor:
        w = self.window_px
        windows = frame[0, 0].unfold(0, w, stride).unfold(1, w, stride)
        gy, gx = windows.shape[0], windows.shape[1]
        out = self.forward(windows.reshape(gy * gx, 1, w, w))
        return out.reshape(gy, gx, 2).permute(2, 0, 1)


@pytest.fixture(scope="module")
def variance_model(tmp_path_factory):
    from livepsf.net import ModelCard, export_model, load_model
    from livepsf.optics import get_psf_model

    spec = get_psf_model("Z-1")
    card = ModelCard.for_spec("variance-test", spec, Optics(), window_px=128, architecture="variance-test",
                              input_normalisation="none", notes="hand-made, for tests only")
    path = export_model(_VarianceNet(), card, tmp_path_factory.mktemp("varnet") / "variance.pt")
    return load_model(path)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- geometry ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(128, 128), (129, 131), (200, 333), (256, 384), (301, 128)])
def test_map_equals_per_window_network_on_reflect_padded_frame(tiny_model, shape):
    """Grid covers the whole frame; each window's result is the network's result on that window."""
    stride = 64
    frame = _texture(shape, seed=sum(shape))
    pmap = PSFMapper(tiny_model, stride_px=stride)(frame)
    windows, grid = _reference_windows(frame, 128, stride)

    assert pmap.grid_shape == grid
    assert pmap.frame_shape == shape
    half = (128 - 1) / 2
    np.testing.assert_allclose(pmap.centers_y, np.arange(grid[0]) * stride + half)
    np.testing.assert_allclose(pmap.centers_x, np.arange(grid[1]) * stride + half)
    # The last window reaches the frame's last pixel and overhangs it by less than one stride.
    for n, g in zip(shape, grid):
        end = (g - 1) * stride + 128
        assert n <= end < n + stride

    expected = tiny_model.predict(windows)
    np.testing.assert_allclose(pmap.invalid.ravel(), expected["invalid"], rtol=1e-4, atol=1e-5)
    raw_kept = ~pmap.invalid_mask | pmap.all_invalid  # filled windows differ from the raw output by design
    for name in tiny_model.spec.names:
        np.testing.assert_allclose(pmap.params[name][raw_kept], expected[name].reshape(grid)[raw_kept],
                                   rtol=1e-4, atol=1e-5)
        assert pmap.params[name].dtype == np.float32


def test_geometry_helpers_and_paper_grid(tiny_model):
    mapper = PSFMapper(tiny_model, stride_px=64)
    assert mapper.grid_shape((1024, 1024)) == (15, 15)      # (1024 - 128) / 64 + 1, no padding
    assert mapper.padded_shape((1024, 1024)) == (1024, 1024)
    assert mapper.grid_shape((1000, 777)) == (15, 12)
    assert mapper.padded_shape((1000, 777)) == (1024, 832)
    assert PSFMapper(tiny_model, stride_px=128).grid_shape((300, 128)) == (3, 1)


def test_mapper_reuses_its_input_buffer_and_handles_new_shapes(tiny_model):
    mapper = PSFMapper(tiny_model, stride_px=64)
    a, b = _texture((256, 320), seed=1), _texture((256, 320), seed=2)
    first = mapper(a)
    ptr = mapper._buffer.data_ptr()
    second = mapper(b)
    assert mapper._buffer.data_ptr() == ptr                     # same frame shape: no new input buffer
    again = mapper(a)                                           # and nothing stale from frame b
    np.testing.assert_array_equal(again.invalid, first.invalid)
    assert not np.array_equal(second.invalid, first.invalid)
    other = mapper(_texture((200, 150), seed=3))
    assert other.grid_shape == (3, 2)


# --- dtypes and bad input ------------------------------------------------------------------------------


def test_any_real_dtype_and_layout_gives_the_same_map(tiny_model):
    mapper = PSFMapper(tiny_model, stride_px=64)
    base = np.round(_texture((192, 256), seed=4) / 40.0)       # integer counts 0..~200 fit every dtype
    reference = mapper(base.astype(np.float32))
    variants = {
        "uint8": base.astype(np.uint8),
        "uint16": base.astype(np.uint16),
        "big-endian uint16": base.astype(">u2"),
        "int32": base.astype(np.int32),
        "float64": base.astype(np.float64),
        "float16": base.astype(np.float16),
        "Fortran order": np.asfortranarray(base.astype(np.uint16)),
        "negative strides": base.astype(np.float32)[::-1, ::-1].copy()[::-1, ::-1],
        "column view": np.ascontiguousarray(np.hstack([base, base]).astype(np.uint16))[:, : base.shape[1]],
        "torch tensor": torch.from_numpy(base.astype(np.float32)),
        "read-only": np.frombuffer(base.astype(np.uint16).tobytes(), np.uint16).reshape(base.shape),
    }
    for label, frame in variants.items():
        if label == "read-only":
            assert not frame.flags.writeable
        before = frame.clone() if isinstance(frame, torch.Tensor) else frame.copy()
        pmap = mapper(frame)
        np.testing.assert_allclose(pmap.invalid, reference.invalid, rtol=1e-5, atol=1e-6, err_msg=label)
        for name in reference.params:
            np.testing.assert_allclose(pmap.params[name], reference.params[name], rtol=1e-5, atol=1e-6,
                                       err_msg=label)
        if isinstance(frame, torch.Tensor):
            assert torch.equal(frame, before), label
        else:
            np.testing.assert_array_equal(frame, before, err_msg=f"{label}: input modified")


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (np.zeros((2, 200, 200)), "2D"),
        (np.zeros(40000), "2D"),
        (np.zeros((200, 200), dtype=np.complex64), "complex"),
        (np.full((200, 200), np.nan), "NaN"),
        (np.where(np.eye(200) > 0, np.inf, 1.0), "infinite"),
        (np.zeros((127, 500)), "smaller than one 128x128 px window"),
        (np.zeros((500, 64), dtype=np.uint16), "smaller"),
        (np.array([["a"] * 200] * 200), "pixel type"),
        (torch.zeros(200, 200, dtype=torch.complex64), "complex"),
        (torch.full((200, 200), float("nan")), "NaN"),
        (torch.zeros(100, 300), "smaller"),
    ],
)
def test_bad_frames_raise_input_error_naming_the_problem(tiny_model, frame, message):
    mapper = PSFMapper(tiny_model, stride_px=64)
    with pytest.raises(InputError, match=message) as info:
        mapper(frame)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(("stride", "message"), [(0, "out of range"), (-64, "out of range"),
                                                 (256, "out of range"), (60, "multiple of 8"),
                                                 (8.5, "whole number"), (True, "whole number")])
def test_bad_strides_raise_input_error(tiny_model, stride, message):
    with pytest.raises(InputError, match=message):
        PSFMapper(tiny_model, stride_px=stride)


# --- invalid windows -----------------------------------------------------------------------------------


def test_fill_uses_mean_of_valid_four_neighbours():
    values = np.arange(25, dtype=np.float32).reshape(5, 5) ** 1.5
    original = values.copy()
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True            # all four neighbours valid
    mask[0, 0] = True            # corner: two neighbours
    mask[3, 3] = mask[3, 4] = True  # (3, 3) has valid (2,3), (4,3), (3,2); (3,4) has (2,4), (4,4)
    filled = fill_invalid(values, mask)
    v = values
    assert filled[2, 2] == pytest.approx((v[1, 2] + v[3, 2] + v[2, 1] + v[2, 3]) / 4, rel=1e-6)
    assert filled[0, 0] == pytest.approx((v[0, 1] + v[1, 0]) / 2, rel=1e-6)
    assert filled[3, 3] == pytest.approx((v[2, 3] + v[4, 3] + v[3, 2]) / 3, rel=1e-6)
    assert filled[3, 4] == pytest.approx((v[2, 4] + v[4, 4]) / 2, rel=1e-6)
    np.testing.assert_array_equal(filled[~mask], values[~mask])     # valid windows untouched
    np.testing.assert_array_equal(values, original)                 # input not modified


def test_fill_inside_a_blank_region_uses_nearest_valid_windows_inverse_distance_weighted():
    yy, xx = np.mgrid[0:9, 0:9].astype(np.float32)
    values = np.stack([2.0 * yy + xx, -xx])                         # two parameters, (2, 9, 9)
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True                                           # a 5x5 blank region
    filled = fill_invalid(values, mask)
    assert filled.shape == values.shape and np.isfinite(filled).all()
    # Border of the region: mean of its valid 4-neighbours, e.g. (2, 2) sees (1, 2) and (2, 1).
    np.testing.assert_allclose(filled[:, 2, 2], (values[:, 1, 2] + values[:, 2, 1]) / 2, rtol=1e-6)
    # Inside, e.g. (4, 4): no valid neighbour; the four nearest valid windows are 3 steps away.
    valid_yx = np.argwhere(~mask)
    for y, x, n_used in [(4, 4, 4), (3, 3, 6), (3, 4, 5)]:
        d = np.hypot(*(valid_yx - (y, x)).T)
        used = d <= np.sort(d)[3] + 1e-9                 # the 4 nearest, and all tied with the 4th
        assert used.sum() == n_used
        w = 1.0 / d[used]
        expected = (values[:, valid_yx[used, 0], valid_yx[used, 1]] * w).sum(-1) / w.sum()
        np.testing.assert_allclose(filled[:, y, x], expected, rtol=1e-5)
    # By symmetry of the ramp about the region, the centre gets the ramp's value there.
    np.testing.assert_allclose(filled[:, 4, 4], values[:, 4, 4], rtol=1e-5)
    lo, hi = values[:, ~mask].min(axis=1), values[:, ~mask].max(axis=1)
    assert (filled[:, mask] >= lo[:, None] - 1e-5).all() and (filled[:, mask] <= hi[:, None] + 1e-5).all()


def test_fill_weights_neighbours_by_inverse_variance():
    """A confident neighbour (small σ) dominates the fill; equal σ gives the plain mean, as without σ."""
    values = np.array([[0.0, 1.0, 0.0], [2.0, 9.0, 4.0], [0.0, 3.0, 0.0]], np.float32)
    mask = np.zeros((3, 3), bool)
    mask[1, 1] = True
    sigma = np.ones((3, 3), np.float32)
    np.testing.assert_allclose(fill_invalid(values, mask, sigma)[1, 1], 2.5)
    np.testing.assert_allclose(fill_invalid(values, mask, sigma), fill_invalid(values, mask))
    sigma[0, 1] = 0.1                                           # the neighbour holding 1.0: 100x the weight
    np.testing.assert_allclose(fill_invalid(values, mask, sigma)[1, 1], (100 * 1 + 2 + 4 + 3) / 103, rtol=1e-6)
    # Far from any valid window: 1/d weights times 1/σ² (here two equally distant sources).
    grid = np.zeros((1, 5), np.float32)
    grid[0, 0], grid[0, 4] = 1.0, 5.0
    far = np.array([[False, True, True, True, False]])
    sig = np.array([[1.0, 1.0, 1.0, 1.0, 3.0]], np.float32)
    np.testing.assert_allclose(fill_invalid(grid, far, sig)[0, 2], (1.0 + 5.0 / 9) / (1 + 1 / 9), rtol=1e-6)


def test_fill_leaves_all_invalid_and_all_valid_grids_unchanged():
    values = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    np.testing.assert_array_equal(fill_invalid(values, np.ones((4, 5), bool)), values)
    np.testing.assert_array_equal(fill_invalid(values, np.zeros((4, 5), bool)), values)
    with pytest.raises(ValueError, match="one grid"):
        fill_invalid(values, np.zeros((5, 4), bool))


def test_blank_region_of_a_frame_is_flagged_and_filled(variance_model):
    """End to end with a network that flags blank windows: invalid mask kept, values filled."""
    rng = np.random.default_rng(7)
    frame = rng.uniform(0, 200, (640, 640)) + np.linspace(0, 800, 640)[None, :]
    frame[128:512, 128:512] = 500.0                                  # blank: windows inside it are invalid
    pmap = PSFMapper(variance_model, stride_px=64)(frame.astype(np.uint16))

    expected_mask = np.zeros((9, 9), bool)
    expected_mask[2:7, 2:7] = True                                   # windows lying entirely in the blank
    np.testing.assert_array_equal(pmap.invalid_mask, expected_mask)
    assert pmap.invalid[expected_mask].min() > 0.99 and pmap.invalid[~expected_mask].max() < 0.01

    windows, _ = _reference_windows(frame.astype(np.uint16), 128, 64)
    raw_focus = (windows.mean(axis=(1, 2)) / 1000.0 * 2.0).reshape(9, 9)   # Z-1 focus range 0..2 waves
    np.testing.assert_allclose(pmap.params["focus"][~expected_mask], raw_focus[~expected_mask], rtol=1e-4)
    np.testing.assert_allclose(pmap.params["focus"], fill_invalid(raw_focus, expected_mask), rtol=1e-4)


def test_all_invalid_frame_keeps_raw_values(variance_model):
    pmap = PSFMapper(variance_model, stride_px=64)(np.full((256, 256), 300, dtype=np.uint16))
    assert pmap.all_invalid
    np.testing.assert_allclose(pmap.params["focus"], 0.6, rtol=1e-5)   # 300 / 1000 * 2 waves


# --- OME-TIFF ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("psf_model", ["Z-3", "G-2"])
def test_ome_tiff_round_trip(tiny_model_factory, tmp_path, psf_model):
    model = tiny_model_factory(psf_model)
    pmap = PSFMapper(model, stride_px=64)(_texture((300, 420), seed=5).astype(np.uint16))
    path = pmap.to_ome_tiff(tmp_path / "m_psfmap.ome.tif")
    back = PSFMap.from_ome_tiff(path)

    assert set(back.params) == set(pmap.params)
    for name in pmap.params:
        np.testing.assert_array_equal(back.params[name], pmap.params[name])
    np.testing.assert_array_equal(back.invalid, pmap.invalid)
    np.testing.assert_array_equal(back.centers_y, pmap.centers_y)
    np.testing.assert_array_equal(back.centers_x, pmap.centers_x)
    for attr in ("window_px", "stride_px", "frame_shape", "psf_model", "model_name", "model_sha256", "optics"):
        assert getattr(back, attr) == getattr(pmap, attr), attr
    assert back.model_card == model.card.model_dump(mode="json")
    np.testing.assert_allclose(back.upsample(name=model.spec.names[0]), pmap.upsample(name=model.spec.names[0]))

    with tifffile.TiffFile(path) as tif:                       # a plain OME-TIFF for other tools
        assert tif.is_ome
        xml = tif.ome_metadata
    for channel in (*model.spec.names, "invalid"):
        assert f'Name="{channel}"' in xml
    assert 'PhysicalSizeX="41.6"' in xml                       # grid step 64 px x 0.65 µm

    with pytest.raises(FileExistsError):
        pmap.to_ome_tiff(path)                                 # never overwritten by default


def test_sigma_maps_match_predict_and_survive_the_ome_tiff(tiny_model, tmp_path):
    """σ per parameter: same keys and units as params, equal to model.predict's, saved as extra channels."""
    frame = _texture((256, 320), seed=8).astype(np.uint16)
    pmap = PSFMapper(tiny_model, stride_px=64)(frame)
    assert set(pmap.sigma) == set(pmap.params) and all(s.shape == pmap.grid_shape for s in pmap.sigma.values())
    windows, _ = _reference_windows(frame, 128, 64)
    direct = tiny_model.predict(windows)
    for name in pmap.params:
        np.testing.assert_allclose(pmap.sigma[name].ravel(), direct[f"{name}_sigma"], rtol=1e-4)
        assert np.all(pmap.sigma[name] > 0)
    path = pmap.to_ome_tiff(tmp_path / "s_psfmap.ome.tif")
    with tifffile.TiffFile(path) as tif:
        xml = tif.ome_metadata
    assert 'Name="focus_sigma"' in xml and 'Name="astig_45_sigma"' in xml
    back = load_psfmaps(path)[0]
    for name in pmap.params:
        np.testing.assert_array_equal(back.sigma[name], pmap.sigma[name])
        np.testing.assert_array_equal(back.params[name], pmap.params[name])


def test_maps_of_models_without_sigma_have_an_empty_sigma(variance_model, tmp_path):
    pmap = PSFMapper(variance_model, stride_px=64)(np.random.default_rng(1).uniform(0, 900, (256, 256)))
    assert pmap.sigma == {}
    back = load_psfmaps(pmap.to_ome_tiff(tmp_path / "v_psfmap.ome.tif"))[0]
    assert back.sigma == {} and set(back.params) == {"focus"}
    with pytest.raises(ValueError, match="sigma"):
        PSFMap(params=pmap.params, invalid=pmap.invalid, centers_y=pmap.centers_y, centers_x=pmap.centers_x,
               window_px=128, stride_px=64, frame_shape=(256, 256), psf_model="Z-1",
               sigma={"variance": pmap.params["focus"]})


def test_several_maps_in_one_file(tiny_model, tmp_path):
    mapper = PSFMapper(tiny_model, stride_px=64)
    maps = [mapper(_texture((256, 256), seed=s)) for s in (10, 11, 12)]
    path = save_psfmaps(tmp_path / "stack_psfmap.ome.tif", maps)
    back = load_psfmaps(path)
    assert len(back) == 3
    for a, b in zip(maps, back):
        np.testing.assert_array_equal(a.invalid, b.invalid)
        np.testing.assert_array_equal(a.params["astig_45"], b.params["astig_45"])
    assert PSFMap.from_ome_tiff(path, index=2).params["focus"].tolist() == maps[2].params["focus"].tolist()
    with pytest.raises(InputError, match="no map 3"):
        PSFMap.from_ome_tiff(path, index=3)
    other = PSFMapper(tiny_model, stride_px=128)(_texture((256, 256)))
    with pytest.raises(ValueError, match="share"):
        save_psfmaps(tmp_path / "mixed.ome.tif", [maps[0], other])


def test_dihedral_average_maps_are_marked_and_kept_apart(tiny_model, tiny_model_factory, tmp_path):
    """The averaged map is its own product: flagged in the map and the file, never mixed with plain maps."""
    frame = _texture((256, 320), seed=9)
    plain = PSFMapper(tiny_model, stride_px=64)(frame)
    mapper = PSFMapper(tiny_model, stride_px=64, dihedral_average=True)
    averaged = mapper(frame)
    assert averaged.dihedral_average and not plain.dihedral_average and "dihedral_average=True" in repr(mapper)
    assert averaged.grid_shape == plain.grid_shape and set(averaged.sigma) == set(plain.sigma)
    # A frame and its mirror image give mirrored averaged maps (G-2: no sign symmetry, so exactly; the
    # mirror keeps the x and y variances).
    gaussian = PSFMapper(tiny_model_factory("G-2"), stride_px=64, dihedral_average=True)
    once, mirrored = gaussian(frame), gaussian(frame[:, ::-1])
    for name in once.params:
        np.testing.assert_allclose(mirrored.params[name][:, ::-1], once.params[name], rtol=1e-4, atol=1e-5)
    assert load_psfmaps(averaged.to_ome_tiff(tmp_path / "avg_psfmap.ome.tif"))[0].dihedral_average
    with pytest.raises(ValueError, match="dihedral"):
        save_psfmaps(tmp_path / "mixed.ome.tif", [plain, averaged])


def test_loading_something_that_is_not_a_psf_map(tmp_path):
    plain = tmp_path / "plain.ome.tif"
    tifffile.imwrite(plain, np.zeros((4, 4), np.float32), ome=True)
    with pytest.raises(InputError, match="not a livepsf PSF map"):
        load_psfmaps(plain)
    junk = tmp_path / "junk.tif"
    junk.write_bytes(b"not a tiff at all")
    with pytest.raises(InputError, match="cannot read"):
        load_psfmaps(junk)
    with pytest.raises(InputError, match="no such file"):
        load_psfmaps(tmp_path / "missing.ome.tif")


# --- command line --------------------------------------------------------------------------------------


def _run_cli(argv: list[str]) -> int:
    from livepsf.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    return int(info.value.code or 0)


def test_map_command_writes_maps_and_summary_and_never_touches_input(tiny_model, tmp_path, capsys):
    pages = np.stack([_texture((300, 260), seed=s) for s in (20, 21)]).astype(np.uint16)
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, pages)
    single = tmp_path / "one.tif"
    tifffile.imwrite(single, pages[0])
    hashes = {p: _sha256(p) for p in (source, single)}
    model_path = str(tiny_model.path)

    assert _run_cli(["map", str(source), str(single), "--model", model_path, "--stride", "64"]) == 0
    ome, summary = tmp_path / "stack_psfmap.ome.tif", tmp_path / "stack_psfmap.json"
    assert ome.is_file() and summary.is_file() and (tmp_path / "one_psfmap.ome.tif").is_file()
    maps = load_psfmaps(ome)
    assert len(maps) == 2 and maps[0].grid_shape == (4, 4) and maps[0].frame_shape == (300, 260)
    direct = PSFMapper(tiny_model, stride_px=64)(pages[1])
    np.testing.assert_allclose(maps[1].params["focus"], direct.params["focus"], rtol=1e-5, atol=1e-6)

    info = json.loads(summary.read_text())
    assert info["n_frames"] == 2 and info["stride_px"] == 64 and info["window_px"] == 128
    assert info["model"]["psf_model"] == "Z-3"
    assert set(info["params"]) == {"focus", "astig_0", "astig_45"}
    assert info["params"]["focus"]["unit"] == "waves"
    sigma_median = info["params"]["focus"]["sigma_median"]            # over valid windows (None if none)
    assert sigma_median is None or sigma_median > 0
    assert set(maps[0].sigma) == {"focus", "astig_0", "astig_45"}
    assert 0.0 <= info["fraction_invalid"] <= 1.0
    assert len(info["frames"]) == 2 and all(f["time_ms"] > 0 for f in info["frames"])
    assert info["time_per_frame_ms"]["median"] > 0
    assert "stack_psfmap.ome.tif" in capsys.readouterr().out

    # A second run never overwrites the first outputs, and the inputs are untouched.
    assert _run_cli(["map", str(single), "--model", model_path, "--out", str(tmp_path / "maps")]) == 0
    assert _run_cli(["map", str(single), "--model", model_path, "--out", str(tmp_path / "maps")]) == 0
    assert (tmp_path / "maps" / "one_psfmap.ome.tif").is_file()
    assert (tmp_path / "maps" / "one_psfmap-1.ome.tif").is_file()
    assert (tmp_path / "maps" / "one_psfmap-1.json").is_file()
    assert {p: _sha256(p) for p in hashes} == hashes


def test_map_command_dihedral_average_reaches_the_mapper_and_the_files(tiny_model, tmp_path):
    frame = _texture((200, 200), seed=22).astype(np.uint16)
    tifffile.imwrite(tmp_path / "one.tif", frame)
    assert _run_cli(["map", str(tmp_path / "one.tif"), "--model", str(tiny_model.path), "--dihedral-average"]) == 0
    (pmap,) = load_psfmaps(tmp_path / "one_psfmap.ome.tif")
    want = PSFMapper(tiny_model, stride_px=64, dihedral_average=True)(frame)
    assert pmap.dihedral_average
    np.testing.assert_allclose(pmap.params["focus"], want.params["focus"], rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "one_psfmap.json").read_text())["dihedral_average"] is True
    assert _run_cli(["map", str(tmp_path / "one.tif"), "--model", str(tiny_model.path)]) == 0  # plain by default
    assert not load_psfmaps(tmp_path / "one_psfmap-1.ome.tif")[0].dihedral_average
    assert json.loads((tmp_path / "one_psfmap-1.json").read_text())["dihedral_average"] is False


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, m: [str(d / "missing.tif"), "--model", m], "no such file"),
        (lambda d, m: [str(d / "small.tif"), "--model", m], "small.tif: image of 100x300 px is smaller"),
        (lambda d, m: [str(d / "ok.tif"), "--model", m, "--stride", "60"], "multiple of 8"),
        (lambda d, m: [str(d / "ok.tif"), "--model", str(d / "nope.pt")], "no such model file"),
        (lambda d, m: [str(d / "ok.tif"), "--model", m, "--stride", "0"], "out of range"),
    ],
)
def test_map_command_bad_input_exits_2_with_one_line(tiny_model, tmp_path, capsys, make_args, message):
    tifffile.imwrite(tmp_path / "small.tif", np.zeros((100, 300), np.uint16))
    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((200, 200), np.uint16))
    code = _run_cli(["map", *make_args(tmp_path, str(tiny_model.path))])
    err = capsys.readouterr().err
    assert code == 2
    assert message in " ".join(err.split())
    assert "Traceback" not in err
    assert not list(tmp_path.glob("small_psfmap*"))


def test_map_command_maps_good_files_and_reports_bad_ones(tiny_model, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "good.tif", _texture((200, 200)).astype(np.uint16))
    (tmp_path / "bad.tif").write_bytes(b"garbage")
    code = _run_cli(["map", str(tmp_path / "bad.tif"), str(tmp_path / "good.tif"), "--model", str(tiny_model.path)])
    assert code == 2
    assert "bad.tif" in capsys.readouterr().err
    assert (tmp_path / "good_psfmap.ome.tif").is_file()


def test_map_frames_times_every_frame_through_run_after_one_warm_up_per_shape(tiny_model):
    from livepsf.mapping import map_frames

    mapper = PSFMapper(tiny_model, stride_px=64)
    calls: list[tuple[int, int]] = []

    def counted(frame):
        calls.append(frame.shape)
        return mapper(frame)

    ran: list[PSFMap] = []

    def run(call):  # what ThreadTuner.run does: call it (with its thread count), see the result
        ran.append(call())
        return ran[-1]

    frames = [_texture((200, 200), seed=s) for s in (1, 2)]
    maps, times_ms = map_frames(frames, counted, "a.tif", run)
    assert all(m is r for m, r in zip(maps, ran, strict=True)) and len(times_ms) == 2 and min(times_ms) > 0
    assert len(calls) == 2 + 2  # two untimed warm-up passes, then each frame once
    maps, _ = map_frames(frames[:1], counted, "b.tif", run)  # a second file of that shape: no warm-up
    assert len(calls) == 5 and maps[0] is ran[-1]
    np.testing.assert_array_equal(maps[0].params["focus"], mapper(frames[0]).params["focus"])
    with pytest.raises(InputError, match=r"c.tif \(page 1\)"):
        map_frames([frames[0], np.zeros((100, 300))], counted, "c.tif", run)


def test_map_command_threads_option_is_honoured_and_bad_counts_are_refused(tiny_model, tmp_path, capsys):
    tifffile.imwrite(tmp_path / "one.tif", _texture((200, 200)).astype(np.uint16))
    before = torch.get_num_threads()
    assert _run_cli(["map", str(tmp_path / "one.tif"), "--model", str(tiny_model.path), "--threads", "1"]) == 0
    assert "(1 torch thread)" in capsys.readouterr().out
    assert torch.get_num_threads() == before  # the command's count does not outlive it
    for bad in ("0", "-2"):
        code = _run_cli(["map", str(tmp_path / "one.tif"), "--model", str(tiny_model.path), "--threads", bad])
        err = capsys.readouterr().err
        assert code == 2 and f"--threads must be at least 1, got {bad}" in err and "Traceback" not in err
    assert _run_cli(["map", str(tmp_path / "one.tif"), "--threads", "two"]) == 2
    assert sorted(p.name for p in tmp_path.glob("one_psfmap*")) == ["one_psfmap.json", "one_psfmap.ome.tif"]


# --- with trained models -------------------------------------------------------------------------------


def _blurred_halves(model, brightness: float) -> tuple[PSFMap, np.ndarray, np.ndarray]:
    """Map a frame whose left half is blurred at focus 0.4 waves and right half at 1.4 waves.

    ``brightness`` scales the texture (1: about 2,000 photons per pixel). Returns the map and the
    column masks of the windows lying entirely in the left and in the right half.
    """
    from scipy.signal import fftconvolve

    from livepsf.optics import make_psf

    sharp = _texture((512, 1024), seed=30) * brightness
    extra = {"astig_0": 0.0, "astig_45": 0.0} if model.spec.name == "Z-3" else {}
    blurred = [fftconvolve(np.pad(sharp, 64, mode="reflect"),
                           make_psf(model.spec.name, 81, model.optics, focus=f, **extra), mode="same")[64:-64, 64:-64]
               for f in _HALVES_FOCUS]
    frame = np.where(np.arange(1024)[None, :] < 512, blurred[0], blurred[1])
    frame = np.random.default_rng(31).poisson(frame).astype(np.uint16)
    pmap = PSFMapper(model, stride_px=64)(frame)
    starts = np.arange(pmap.grid_shape[1]) * 64
    return pmap, starts + 128 <= 512, starts >= 512


_HALVES_FOCUS = (0.4, 1.4)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["focus", "default"])
def test_trained_map_separates_halves_blurred_with_different_focus(model_name):
    from livepsf.net import load_model

    # Twice the light of the threshold test below: the 1.4-wave half's windows are then above the training
    # labels' visibility rule (blurred SNR median 0.66 against 0.5), so this measures the readings, not
    # what the map fills into windows it may rightly flag.
    pmap, left, right = _blurred_halves(load_model(model_name), brightness=2.0)
    focus = pmap.params["focus"]
    pred = np.concatenate([focus[:, left].ravel(), focus[:, right].ravel()])
    truth = np.concatenate([np.full(focus[:, left].size, _HALVES_FOCUS[0]),
                            np.full(focus[:, right].size, _HALVES_FOCUS[1])])
    r2 = 1.0 - ((pred - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    print(f"{model_name}: R² of the map on the blurred halves = {r2:.3f}; "
          f"left median {np.median(focus[:, left]):.3f}, right median {np.median(focus[:, right]):.3f}")
    # The halves separate: a window of the sharper half reads below one of the blurrier half in at least
    # 98 % of the pairs (a window with little texture may miss), and the map explains most of the variance.
    misordered = np.mean(focus[:, left].ravel()[:, None] >= focus[:, right].ravel()[None, :])
    assert misordered <= 0.02
    assert r2 > 0.5


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["focus", "default"])
def test_trained_map_flags_rather_than_misreads_blur_at_the_visibility_threshold(model_name):
    """At half the light the 1.4-wave half sits at the labels' visibility rule (blurred SNR 0.38-0.58
    against 0.5: about half its windows show no PSF by the rule). Windows the map calls valid must still
    be ordered: where it cannot read the blur it flags the window instead of reporting a sharp one."""
    from livepsf.net import load_model

    pmap, left, right = _blurred_halves(load_model(model_name), brightness=1.0)
    focus, valid = pmap.params["focus"], ~pmap.invalid_mask
    sharper, blurrier = focus[:, left][valid[:, left]], focus[:, right][valid[:, right]]
    print(f"{model_name}: valid windows {sharper.size} left, {blurrier.size} right of {focus[:, right].size}")
    assert sharper.size == focus[:, left].size      # the sharper half is plainly textured
    assert blurrier.size >= 10                      # the map does not give up on the blurrier half
    assert np.mean(sharper[:, None] >= blurrier[None, :]) <= 0.02

"""Tests for bench.augment: exact flips, affine warp behaviour, determinism, config validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.augment import AugmentConfig, affine_grid, augment_batch
from bench.errors import UserError

ALL_ON = AugmentConfig(hflip=0.5, vflip=0.5, rotation=15, shift=0.1, zoom=0.1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=gen(seed)) * 2 - 1  # like (x - 0.5) / 0.5


def test_disabled_is_identity_same_object() -> None:
    x = batch(2, 1, 8, 8)
    assert not AugmentConfig().enabled
    assert augment_batch(x, AugmentConfig()) is x


@pytest.mark.parametrize("shape", [(3, 1, 28, 28), (3, 3, 16, 20), (2, 1, 8, 12, 10)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_preserved_and_input_untouched(shape: tuple[int, ...], dtype) -> None:
    x = batch(*shape).to(dtype)
    before = x.clone()
    y = augment_batch(x, ALL_ON, gen(1))
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.equal(x, before)
    assert not torch.equal(y, x)


def test_hflip_and_vflip_exact() -> None:
    x = batch(4, 2, 6, 7)
    assert torch.equal(augment_batch(x, AugmentConfig(hflip=1.0)), x.flip(-1))
    assert torch.equal(augment_batch(x, AugmentConfig(vflip=1.0)), x.flip(-2))
    v = batch(2, 1, 3, 4, 5)
    assert torch.equal(augment_batch(v, AugmentConfig(hflip=1.0)), v.flip(-1))
    assert torch.equal(augment_batch(v, AugmentConfig(vflip=1.0)), v.flip(-2).flip(-3))


@pytest.mark.parametrize("shape", [[5, 1, 28, 20], [3, 2, 7, 9, 11]])
def test_affine_grid_matches_torch(shape: list[int]) -> None:
    spatial = len(shape) - 2
    theta = torch.randn(shape[0], spatial, spatial + 1, generator=gen(0))
    expected = F.affine_grid(theta, shape, align_corners=False)
    assert torch.allclose(affine_grid(theta, shape), expected, atol=1e-5)


def test_flips_folded_into_the_warp_are_exact_flips() -> None:
    # With a negligible warp, the flip carried by theta must land every pixel on its mirror.
    x = batch(4, 1, 28, 20)
    y = augment_batch(x, AugmentConfig(hflip=1.0, rotation=1e-9), gen(0))
    assert torch.allclose(y, x.flip(-1), atol=1e-4)
    y = augment_batch(x, AugmentConfig(vflip=1.0, zoom=1e-9), gen(0))
    assert torch.allclose(y, x.flip(-2), atol=1e-4)
    v = batch(2, 1, 6, 7, 8)
    y = augment_batch(v, AugmentConfig(vflip=1.0, shift=1e-9), gen(0))
    assert torch.allclose(y, v.flip(-2).flip(-3), atol=1e-4)


def test_flip_is_per_sample() -> None:
    x = batch(64, 1, 5, 5)
    y = augment_batch(x, AugmentConfig(hflip=0.5), gen(0))
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    kept = (y == x).flatten(1).all(1)
    assert torch.all(flipped | kept) and flipped.any() and kept.any()


def test_rotation_changes_image_keeps_mean() -> None:
    # A smooth image, so border padding and interpolation barely move the mean.
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    img = torch.exp(-(xx**2 + (yy - 0.3) ** 2) * 4).expand(8, 1, 28, 28)
    y = augment_batch(img, AugmentConfig(rotation=90), gen(3))
    assert (y - img).abs().amax() > 0.3
    torch.testing.assert_close(y.mean(), img.mean(), atol=0.03, rtol=0)


def test_determinism() -> None:
    x = batch(16, 1, 28, 28)
    a = augment_batch(x, ALL_ON, gen(7))
    assert torch.equal(a, augment_batch(x, ALL_ON, gen(7)))
    assert not torch.equal(a, augment_batch(x, ALL_ON, gen(8)))


def test_pure_shift_moves_pixel() -> None:
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 8, 8] = 1.0
    y = augment_batch(x, AugmentConfig(shift=0.25), gen(0))
    peak = divmod(int(y.flatten().argmax()), 16)
    assert peak != (8, 8)
    assert y.sum().item() == pytest.approx(1.0, abs=1e-4)  # bilinear keeps the mass


def test_zoom_changes_output() -> None:
    x = batch(4, 1, 28, 28)
    assert not torch.allclose(augment_batch(x, AugmentConfig(zoom=0.2), gen(0)), x)


def test_large_batch() -> None:
    x = batch(4096, 1, 28, 28)
    y = augment_batch(x, ALL_ON, gen(0))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_from_config() -> None:
    cfg = AugmentConfig.from_config({"aug_hflip": 0.5, "aug_zoom": 0.1, "lr": 1e-3})
    assert cfg == AugmentConfig(hflip=0.5, zoom=0.1) and cfg.enabled
    assert AugmentConfig.from_config({}) == AugmentConfig()


@pytest.mark.parametrize(
    "bad",
    [
        {"aug_hflip": 1.5},
        {"aug_vflip": -0.1},
        {"aug_rotation": -5},
        {"aug_shift": -0.1},
        {"aug_zoom": 1.0},
        {"aug_zoom": -0.2},
        {"aug_rotation": float("nan")},
        {"aug_hflip": "yes"},
    ],
)
def test_invalid_config_raises(bad: dict) -> None:
    key = next(iter(bad))
    with pytest.raises(UserError, match=key):
        AugmentConfig.from_config(bad)


# --- volumes (N, C, D, H, W) -------------------------------------------------------------------


def blob(shape: tuple[int, int, int], centre: tuple[float, float, float], sigma: float,
         n: int = 1) -> torch.Tensor:
    """An isotropic (in voxels) Gaussian blob in a (n, 1, D, H, W) volume."""
    axes = [torch.arange(s, dtype=torch.float64) for s in shape]
    d, h, w = torch.meshgrid(*axes, indexing="ij")
    r2 = (d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2
    return torch.exp(-r2 / (2 * sigma**2)).expand(n, 1, *shape).contiguous()


def test_rotation_matrix_3d_is_a_rotation() -> None:
    from bench.augment import rotation_matrix_3d

    r = rotation_matrix_3d(torch.rand(16, 3, generator=gen(0), dtype=torch.float64) * 6 - 3)
    eye = torch.eye(3, dtype=torch.float64).expand(16, 3, 3)
    torch.testing.assert_close(r @ r.transpose(1, 2), eye)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(16, dtype=torch.float64))


def test_rotation_about_depth_axis_is_in_plane_rot90() -> None:
    # 90 degrees about z (depth) must turn every slice by 90 degrees in its (H, W) plane and
    # leave the depth axis alone: pins the axis order of rotation_matrix_3d and of theta.
    from bench.augment import rotation_matrix_3d

    v = batch(1, 1, 4, 6, 6, seed=3).double()
    theta = torch.zeros(1, 3, 4, dtype=torch.float64)
    theta[:, :, :3] = rotation_matrix_3d(torch.tensor([[0.0, 0.0, math.pi / 2]],
                                                      dtype=torch.float64))
    y = F.grid_sample(v, affine_grid(theta, list(v.shape)), align_corners=False)
    torch.testing.assert_close(y, torch.rot90(v, k=1, dims=(-2, -1)))


def test_volume_augmentation_keeps_shape_and_sample_order() -> None:
    # Each sample is a constant volume of its own value: whatever flips, rotations, shifts and
    # zooms do, sample i must still hold only value i (border padding), so labels stay aligned.
    values = torch.arange(12, dtype=torch.float32)
    v = values.view(12, 1, 1, 1, 1).expand(12, 1, 10, 12, 14).contiguous()
    y = augment_batch(v, ALL_ON, gen(0))
    assert y.shape == v.shape
    torch.testing.assert_close(y, v)
    y = augment_batch(v, AugmentConfig(hflip=0.5, vflip=0.5), gen(0))  # exact-flip path
    assert torch.equal(y, v)


def test_volume_rotation_turns_about_every_axis() -> None:
    # A blob off centre along depth: an in-plane-only rotation would keep the mass of every
    # depth slice; a rotation about the x or y axis must move mass between slices.
    v = blob((16, 16, 16), (4.0, 7.5, 7.5), sigma=2.0, n=8)
    y = augment_batch(v, AugmentConfig(rotation=30), gen(0))
    per_slice = v.sum(dim=(-1, -2)), y.sum(dim=(-1, -2))
    assert (per_slice[0] - per_slice[1]).abs().amax() > 0.1 * per_slice[0].amax()
    assert y.sum().item() == pytest.approx(v.sum().item(), rel=0.05)


@pytest.mark.parametrize("shape", [(16, 16, 16), (10, 14, 18)])
def test_volume_rotation_is_rigid_in_voxel_space(shape: tuple[int, int, int]) -> None:
    # A centred, isotropic blob is invariant under any rotation about the centre -- also in a
    # non-cubic volume, which shears it unless theta carries the per-axis size ratios.
    centre = tuple((s - 1) / 2 for s in shape)
    v = blob(shape, centre, sigma=2.0, n=6)
    y = augment_batch(v, AugmentConfig(rotation=40), gen(1))
    assert (y - v).abs().amax() < 0.1  # trilinear interpolation error of a sigma-2 blob: 0.07
    off = blob(shape, (centre[0], centre[1], centre[2] + 3), sigma=2.0, n=6)
    assert (augment_batch(off, AugmentConfig(rotation=40), gen(1)) - off).abs().amax() > 0.3

"""Tests for bench.augment: exact flips, affine warp behaviour, determinism, config validation."""

from __future__ import annotations

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

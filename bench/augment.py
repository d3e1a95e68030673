"""Batched, on-device data augmentation: random flips plus one affine warp per batch.

Everything is drawn as per-sample tensors and applied with tensor ops (no per-sample Python
loop), so augmenting a batch costs a few kernel launches on whatever device the batch is on,
instead of a CPU-side per-image transform pipeline that starves the GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from bench.errors import UserError

# "zeros" would pad with mid-grey after (x - 0.5) / 0.5 normalisation, drawing a visible frame
# the model can learn from. "border" repeats the image's own edge, which in MedMNIST is mostly
# background; "reflection" would mirror anatomy and can invent a second lesion at the edge.
PADDING_MODE = "border"


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; all zero (the default) means no augmentation at all."""

    hflip: float = 0.0  # probability of flipping the last (width) axis
    vflip: float = 0.0  # probability of flipping height; for 3D, depth too (independently)
    rotation: float = 0.0  # max in-plane rotation in degrees, uniform in [-r, r]
    shift: float = 0.0  # max translation as a fraction of the image size, per axis
    zoom: float = 0.0  # isotropic scale uniform in [1 - z, 1 + z]

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"aug_{f.name} must be a finite number, got {value!r}")
        for name in ("hflip", "vflip", "shift"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise UserError(f"aug_{name} must be in [0, 1], got {getattr(self, name)}")
        if self.rotation < 0:
            raise UserError(f"aug_rotation is a max angle and must be >= 0, got {self.rotation}")
        if not 0.0 <= self.zoom < 1.0:
            raise UserError(f"aug_zoom must be in [0, 1) (scale 1 +/- zoom), got {self.zoom}")

    @property
    def enabled(self) -> bool:
        return any(getattr(self, f.name) != 0 for f in fields(self))

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> AugmentConfig:
        """Read the flat `aug_*` training-config keys; a missing key means "off"."""
        return cls(**{f.name: cfg.get(f"aug_{f.name}", 0.0) for f in fields(cls)})


def _flip(x: torch.Tensor, p: float, dim: int, gen: torch.Generator | None) -> torch.Tensor:
    """Flip each sample along `dim` with probability p (a where() keeps it exact and batched)."""
    if p == 0:
        return x
    mask = torch.rand(x.shape[0], generator=gen, device=x.device) < p
    return torch.where(mask.view(-1, *[1] * (x.dim() - 1)), x.flip(dim), x)


def augment_batch(
    x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Randomly augment a float batch (N, C, H, W) or (N, C, D, H, W); x itself is untouched.

    Rotation, shift and zoom are folded into one (N, 2, 3) / (N, 3, 4) theta so that the whole
    batch is resampled by a single affine_grid + grid_sample. `generator` must live on x.device;
    with None the global RNG is used.
    """
    if not cfg.enabled:
        return x
    if x.dim() not in (4, 5) or not x.is_floating_point():
        raise ValueError(f"expected a float (N,C,H,W) or (N,C,D,H,W) batch, got {x.shape}")
    spatial = x.dim() - 2
    x = _flip(x, cfg.hflip, -1, generator)
    x = _flip(x, cfg.vflip, -2, generator)
    if spatial == 3:
        x = _flip(x, cfg.vflip, -3, generator)
    if cfg.rotation == 0 and cfg.shift == 0 and cfg.zoom == 0:
        return x

    n, dev = x.shape[0], x.device

    def uniform(bound: float, *shape: int) -> torch.Tensor:  # U[-bound, bound]
        return (torch.rand(n, *shape, generator=generator, device=dev) * 2 - 1) * bound

    angle = uniform(math.radians(cfg.rotation))
    scale = 1 + uniform(cfg.zoom)
    shift = uniform(cfg.shift, spatial)  # fraction of size; normalised coords span 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    h, w = x.shape[-2:]
    # theta maps output to input in normalised [-1, 1] coords (x = width first). Rotating in
    # pixel space needs the H/W aspect terms, else non-square images would shear.
    theta = torch.zeros(n, spatial, spatial + 1, device=dev)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    if spatial == 3:
        theta[:, 2, 2] = 1 / scale  # depth: zoom and shift only
    theta[:, :, -1] = -2 * shift
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=PADDING_MODE, align_corners=False)

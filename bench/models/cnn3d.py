"""Plain 3D CNNs a CPU can train, for the MedMNIST volumes (N, C, D, H, W) at 28^3 and 64^3.

* small:  stem 8 (stride 2), then stages of 16 and 32 filters, dense 64.
* medium: stem 16 (stride 2), then stages of 32, 64 and 128 filters, dense 128.

A stage = 3x3x3 convs ('same' padding, optional BN, ReLU) + a 2x2x2 max-pool, the pool skipped
once the map is down to 1 voxel so any depth works. Why the strided stem: a full-resolution
3x3x3 conv on a one-channel 28^3 volume is the most expensive layer per FLOP on a CPU
(im2col of a single channel), and a 28^3 MedMNIST volume is itself a 2x-or-more downsampled
crop, so halving once at the start keeps the lesion-sized structures while the epoch costs a
fraction (`stem_stride=1` restores the full-resolution first layer). Before the dense head an
adaptive average pool to min(2, final map size): a 2x2x2 grid keeps coarse layout while the head
stays the same size at 28^3 and 64^3.
"""

from __future__ import annotations

from torch import nn

from bench.errors import UserError
from bench.models import register_model
from bench.models.cnn import CNN, build_convnet
from bench.models.common import as_int

_HEAD_GRID = 2

# family -> (stem filters, filters per stage, dense widths)
_SPECS: dict[str, tuple[int, list[tuple[int, ...]], tuple[int, ...]]] = {
    "cnn3d_small": (8, [(16,), (32,)], (64,)),
    "cnn3d_medium": (16, [(32,), (64,), (128,)], (128,)),
}


def build_cnn3d(
    name: str,
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    width: float,
    depth: int,
    dropout: float,
    batch_norm: bool,
    stem_stride: int,
) -> CNN:
    """Build 3D family `name` from its _SPECS entry (bench.models.cnn.build_convnet, dims=3)."""
    stem, stages, dense = _SPECS[name]
    stem_stride = as_int(name, "stem_stride", stem_stride, lo=1)
    if stem_stride > 2:
        raise UserError(f"model {name!r}: stem_stride={stem_stride} is not supported; use 1 or 2")
    return build_convnet(name, 3, in_channels, n_classes, image_size, stages=stages,
                         dense=dense, head_grid=_HEAD_GRID, width=width, depth=depth,
                         dropout=dropout, batch_norm=batch_norm, stem=stem,
                         stem_stride=stem_stride)


@register_model(dims=3)
def cnn3d_small(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    width: float = 1.0,
    depth: int = 2,
    dropout: float = 0.0,
    batch_norm: bool = True,
    stem_stride: int = 2,
) -> nn.Module:
    """Stem conv8 (stride 2), conv16-pool, conv32-pool, dense 64."""
    return build_cnn3d("cnn3d_small", in_channels, n_classes, image_size, width=width,
                       depth=depth, dropout=dropout, batch_norm=batch_norm,
                       stem_stride=stem_stride)


@register_model(dims=3)
def cnn3d_medium(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    width: float = 1.0,
    depth: int = 3,
    dropout: float = 0.0,
    batch_norm: bool = True,
    stem_stride: int = 2,
) -> nn.Module:
    """Stem conv16 (stride 2), conv32-pool, conv64-pool, conv128-pool, dense 128."""
    return build_cnn3d("cnn3d_medium", in_channels, n_classes, image_size, width=width,
                       depth=depth, dropout=dropout, batch_norm=batch_norm,
                       stem_stride=stem_stride)

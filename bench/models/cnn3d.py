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

from torch import Tensor, nn

from bench.errors import UserError
from bench.models import register_model
from bench.models.common import as_float, as_int, check_dropout, check_inputs, scaled

_HEAD_GRID = 2

# family -> (stem filters, filters per stage, dense widths)
_SPECS: dict[str, tuple[int, list[tuple[int, ...]], tuple[int, ...]]] = {
    "cnn3d_small": (8, [(16,), (32,)], (64,)),
    "cnn3d_medium": (16, [(32,), (64,), (128,)], (128,)),
}


class CNN3d(nn.Module):
    def __init__(self, features: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _conv_bn_relu(cin: int, cout: int, stride: int, batch_norm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, 3, stride=stride, padding=1,
                                         bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm3d(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


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
) -> CNN3d:
    """Build family `name`; `depth` truncates its stages, or repeats the last stage to extend."""
    check_inputs(name, in_channels, n_classes, image_size)
    stem, stages, dense = _SPECS[name]
    width = as_float(name, "width", width, lo=0.05, hi=16.0)
    dropout = check_dropout(name, dropout)
    depth = as_int(name, "depth", depth, lo=1)
    stem_stride = as_int(name, "stem_stride", stem_stride, lo=1)
    if stem_stride > 2:
        raise UserError(f"model {name!r}: stem_stride={stem_stride} is not supported; use 1 or 2")
    stages = (stages + [stages[-1]] * depth)[:depth]

    channels = scaled(stem, width)
    layers = _conv_bn_relu(in_channels, channels, stem_stride, batch_norm)
    size = (image_size - 1) // stem_stride + 1
    for filters in stages:
        for f in filters:
            out = scaled(f, width)
            layers += _conv_bn_relu(channels, out, 1, batch_norm)
            channels = out
        if size >= 2:
            layers.append(nn.MaxPool3d(2))
            size //= 2
    grid = min(_HEAD_GRID, size)
    layers += [nn.AdaptiveAvgPool3d(grid), nn.Flatten()]

    head: list[nn.Module] = []
    features = channels * grid**3
    for units in dense:
        head += [nn.Linear(features, units), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        features = units
    head.append(nn.Linear(features, n_classes))
    return CNN3d(nn.Sequential(*layers), nn.Sequential(*head))


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

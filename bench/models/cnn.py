"""Plain CNNs in the three sizes of the OCTMNIST CNN study, built by one function.

* small:  two stages of one 32-filter 3x3 conv + max-pool each, dense 64.
* medium: three single-conv stages of 128, 512, 1024 filters, dense 256 and 128.
* large:  four stages 64-128-256-512 with two convs each, dense 512.

A stage = convs (3x3, 'same' padding, optional BN, ReLU) + a 2x2 max-pool, the pool skipped once
the map is down to 1 px so any depth works at 28 px. Before the dense head an adaptive average
pool to min(4, final map size): a 4x4 grid keeps some spatial layout (as the study's flatten head
did) while making the head's size the same at 28, 64, 128 and 224 px.
"""

from __future__ import annotations

from torch import Tensor, nn

from bench.models import register_model
from bench.models.common import as_float, as_int, check_dropout, check_inputs, scaled

_HEAD_GRID = 4

# family -> (conv filters per stage, dense widths)
_SPECS: dict[str, tuple[list[tuple[int, ...]], tuple[int, ...]]] = {
    "cnn_small": ([(32,), (32,)], (64,)),
    "cnn_medium": ([(128,), (512,), (1024,)], (256, 128)),
    "cnn_large": ([(64, 64), (128, 128), (256, 256), (512, 512)], (512,)),
}


class CNN(nn.Module):
    def __init__(self, features: nn.Sequential, head: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


# dims -> (conv, batch norm, max pool, adaptive average pool)
_LAYERS = {2: (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d),
           3: (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d)}


def conv_bn_relu(dims: int, cin: int, cout: int, stride: int, batch_norm: bool) -> list[nn.Module]:
    """3x3 (3x3x3) conv with 'same' padding, optional BN (then the conv has no bias), ReLU."""
    conv, norm = _LAYERS[dims][:2]
    layers: list[nn.Module] = [conv(cin, cout, 3, stride=stride, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(norm(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


def build_convnet(
    name: str,
    dims: int,
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    stages: list[tuple[int, ...]],
    dense: tuple[int, ...],
    head_grid: int,
    width: float,
    depth: int,
    dropout: float,
    batch_norm: bool,
    stem: int | None = None,
    stem_stride: int = 1,
) -> CNN:
    """The plain CNN of 2D (`dims=2`) and 3D (`dims=3`) families: an optional stem conv, then
    `stages` (each: its convs, then a 2x max-pool while the map is 2 px or more), an adaptive
    average pool to min(head_grid, map size) and the `dense` head. `depth` truncates the
    stages, or repeats the last one to extend."""
    check_inputs(name, in_channels, n_classes, image_size)
    width = as_float(name, "width", width, lo=0.05, hi=16.0)
    dropout = check_dropout(name, dropout)
    depth = as_int(name, "depth", depth, lo=1)
    stages = (stages + [stages[-1]] * depth)[:depth]
    pool, avg_pool = _LAYERS[dims][2:]

    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    if stem is not None:
        layers += conv_bn_relu(dims, channels, scaled(stem, width), stem_stride, batch_norm)
        channels, size = scaled(stem, width), (image_size - 1) // stem_stride + 1
    for filters in stages:
        for f in filters:
            out = scaled(f, width)
            layers += conv_bn_relu(dims, channels, out, 1, batch_norm)
            channels = out
        if size >= 2:
            layers.append(pool(2))
            size //= 2
    grid = min(head_grid, size)
    layers += [avg_pool(grid), nn.Flatten()]

    head: list[nn.Module] = []
    features = channels * grid**dims
    for units in dense:
        head += [nn.Linear(features, units), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        features = units
    head.append(nn.Linear(features, n_classes))
    return CNN(nn.Sequential(*layers), nn.Sequential(*head))


def build_cnn(name: str, in_channels: int, n_classes: int, image_size: int, **hp) -> CNN:
    """Build 2D family `name` from its _SPECS entry."""
    stages, dense = _SPECS[name]
    return build_convnet(name, 2, in_channels, n_classes, image_size, stages=stages,
                         dense=dense, head_grid=_HEAD_GRID, **hp)


@register_model
def cnn_small(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    width: float = 1.0,
    depth: int = 2,
    dropout: float = 0.0,
    batch_norm: bool = True,
) -> nn.Module:
    """conv32-pool-conv32-pool, dense 64 (the study's small CNN)."""
    return build_cnn("cnn_small", in_channels, n_classes, image_size, width=width, depth=depth,
                     dropout=dropout, batch_norm=batch_norm)


@register_model
def cnn_medium(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    width: float = 1.0,
    depth: int = 3,
    dropout: float = 0.0,
    batch_norm: bool = True,
) -> nn.Module:
    """Convs of 128, 512, 1024 filters, dense 256 and 128 (the study's medium CNN)."""
    return build_cnn("cnn_medium", in_channels, n_classes, image_size, width=width, depth=depth,
                     dropout=dropout, batch_norm=batch_norm)


@register_model
def cnn_large(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    width: float = 1.0,
    depth: int = 4,
    dropout: float = 0.0,
    batch_norm: bool = True,
) -> nn.Module:
    """Four two-conv stages 64-128-256-512, dense 512 (the study's large CNN)."""
    return build_cnn("cnn_large", in_channels, n_classes, image_size, width=width, depth=depth,
                     dropout=dropout, batch_norm=batch_norm)

"""ResNet-18 "2.5D" for the MedMNIST volumes (N, C, D, H, W): a 2D network run on every slice.

The MedMNIST v2 "ResNet-18 + 2.5D" baseline converts a 2D ResNet-18 with the ACSConv package's
`Conv2_5d`: each k x k kernel becomes a 1 x k x k kernel (the axial plane, no mixing across
slices), while BatchNorm, strides and pooling become 3D, so the features of neighbouring slices
are pooled together on the way down and by the final global average pool. That is what this file
builds, on the same trunk as `resnet18_3d` (so `width` and `stem` mean the same there).

`resnet18_2_5d_light` is the same network at width 0.25 with the stride-2 stem by default: on a
CPU the full-width, full-resolution form costs several minutes per AdrenalMNIST3D epoch, the light
one seconds (reports/ has the measured table).

`sliced_resnet18` is shared with `acs.py`: it builds the 3D trunk and swaps every k > 1
convolution for the one a family needs.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bench.models import register_model
from bench.models.resnet import ResNet
from bench.models.resnet3d import build_resnet18_3d

ConvFactory = Callable[[nn.Conv3d], nn.Module]


def _replace_convs(module: nn.Module, make: ConvFactory) -> None:
    """Swap, in place, every Conv3d with a k x k x k kernel (k > 1) for `make(conv)`; 1x1x1
    convolutions (the downsample shortcuts) are already per-voxel and stay as they are."""
    for name, child in module.named_children():
        if isinstance(child, nn.Conv3d) and child.kernel_size[0] > 1:
            new = make(child)
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
            setattr(module, name, new)
        else:
            _replace_convs(child, make)


def sliced_resnet18(
    name: str,
    make: ConvFactory,
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    width: float,
    stem: str,
    dropout: float,
) -> ResNet:
    """The `resnet18_3d` trunk (same width/stem rules) with its k > 1 convolutions replaced."""
    model = build_resnet18_3d(name, in_channels, n_classes, image_size, width=width, stem=stem,
                              dropout=dropout)
    _replace_convs(model, make)
    return model


def conv_2_5d(conv: nn.Conv3d) -> nn.Conv3d:
    """ACSConv's Conv2_5d: the k x k x k conv as 1 x k x k (axial plane), strides kept 3D."""
    k, p = conv.kernel_size[-1], conv.padding[-1]
    return nn.Conv3d(conv.in_channels, conv.out_channels, (1, k, k), stride=conv.stride,
                     padding=(0, p, p), bias=conv.bias is not None)


@register_model(dims=3)
def resnet18_2_5d(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    width: float = 1.0,
    stem: str = "auto",
    dropout: float = 0.0,
) -> nn.Module:
    """ResNet-18 with 1 x k x k kernels (2D per slice), 3D BN/strides/pooling; `width` scales
    64-128-256-512; stem 'auto' is 'stride1' below 64 px, else 'stride2'."""
    return sliced_resnet18("resnet18_2_5d", conv_2_5d, in_channels, n_classes, image_size,
                           width=width, stem=stem, dropout=dropout)


@register_model(dims=3)
def resnet18_2_5d_light(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    width: float = 0.25,
    stem: str = "stride2",
    dropout: float = 0.0,
) -> nn.Module:
    """resnet18_2_5d at width 0.25 (16-32-64-128) with a stride-2 stem: practical on a CPU."""
    return sliced_resnet18("resnet18_2_5d_light", conv_2_5d, in_channels, n_classes, image_size,
                           width=width, stem=stem, dropout=dropout)


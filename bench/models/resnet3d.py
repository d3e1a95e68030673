"""3D ResNet-18 for the MedMNIST 3D volumes (28^3 and 64^3), input (N, C, D, H, W).

Same trunk as `resnet.ResNet` with Conv3d/BatchNorm3d. The stem never max-pools: at 28 px a
3x3x3 stride-1 conv (the CIFAR-style form the MedMNIST 3D baselines use); from 64 px a 3x3x3
stride-2 conv, so layer1 sees 32^3 and the compute stays close to the 28 px model's while the
last stage still sees 4^3 voxels rather than a single one.
"""

from __future__ import annotations

from torch import nn

from bench.models import register_model
from bench.models.common import as_float, check_choice, check_dropout, check_inputs, scaled
from bench.models.resnet import BasicBlock, ResNet


class BasicBlock3d(BasicBlock):
    """torchvision's BasicBlock with 3x3x3 convolutions."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dims: int = 3,
    ) -> None:
        super().__init__(inplanes, planes, stride, downsample, dims=3)


def build_resnet18_3d(name: str, in_channels: int, n_classes: int, image_size: int, *,
                      width: float, stem: str, dropout: float) -> ResNet:
    """The 3D ResNet-18 trunk of `name` (resnet18_3d, and the 2.5D/ACS families that swap its
    convolutions): `width` scales 64-128-256-512; stem 'auto' is 'stride1' below 64 px."""
    check_inputs(name, in_channels, n_classes, image_size)
    width = as_float(name, "width", width, lo=0.05, hi=8.0)
    stem = check_choice(name, "stem", stem, ["auto", "stride1", "stride2"])
    dropout = check_dropout(name, dropout)
    if stem == "auto":
        stem = "stride1" if image_size < 64 else "stride2"
    return ResNet(BasicBlock3d, [2, 2, 2, 2], in_channels, n_classes, stem_kernel=3,
                  stem_stride=1 if stem == "stride1" else 2, stem_pool=False,
                  base_width=scaled(64, width), dropout=dropout, dims=3)


@register_model(dims=3)
def resnet18_3d(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    width: float = 1.0,
    stem: str = "auto",
    dropout: float = 0.0,
) -> nn.Module:
    """3D ResNet-18; `width` scales every stage (64-128-256-512 at 1.0); stem 'auto' is
    'stride1' below 64 px, else 'stride2'."""
    return build_resnet18_3d("resnet18_3d", in_channels, n_classes, image_size, width=width,
                             stem=stem, dropout=dropout)

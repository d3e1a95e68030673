"""ResNet-18 + ACS convolutions for the MedMNIST volumes, input (N, C, D, H, W).

ACS (Yang et al., "Reinventing 2D Convolutions for 3D Images", IEEE JBHI 2021; the MedMNIST v2
"ResNet-18 + ACS" baseline) keeps 2D k x k kernels -- so parameters and FLOPs are those of a 2D
network run on every slice -- but splits each layer's output channels in three groups and lays
the group's kernels in a different plane: axial (1 x k x k), coronal (k x 1 x k) and sagittal
(k x k x 1). Stacked layers then mix all three axes, which a 2.5D network never does.

Written here in PyTorch instead of depending on the `ACSConv` package: the package's module is
one forward function of three `F.conv3d` calls, and this project needs only the odd-kernel,
'same'-padding case (every ResNet conv), which needs none of its padding arithmetic. The split
is the package's: ceil-ish thirds, axial first (a, c, s = n//3 + (n%3>0), n//3 + (n%3>1), n//3).
The weight keeps the 2D shape (out, in, k, k), so a 2D checkpoint's conv weights fit as they are.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.models import register_model
from bench.models.resnet2_5d import sliced_resnet18


def acs_split(out_channels: int) -> tuple[int, int, int]:
    """Output channels per view (axial, coronal, sagittal), as the ACSConv package splits them."""
    third, rest = divmod(out_channels, 3)
    return third + (rest > 0), third + (rest > 1), third


class ACSConv(nn.Module):
    """A 2D-kernel convolution of 3D volumes, channels split across the three anatomical views.

    Equal to `F.conv3d` with a k x k x k kernel that is zero except for the 2D kernel placed in
    its middle plane along the group's axis (tests check this exactly)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | None = None, bias: bool = False) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"ACSConv needs an odd kernel size, got {kernel_size}")
        padding = kernel_size // 2 if padding is None else padding
        if padding != kernel_size // 2:
            raise ValueError(f"ACSConv supports 'same' padding (k // 2 = {kernel_size // 2}) "
                             f"only, got {padding}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.split = acs_split(out_channels)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size,
                                               kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Conv2d's default

    def forward(self, x: Tensor) -> Tensor:
        p, outs, start = self.padding, [], 0
        # (dimension that gets the singleton kernel axis, padding for that kernel shape)
        views = ((2, (0, p, p)), (3, (p, 0, p)), (4, (p, p, 0)))
        for n, (axis, padding) in zip(self.split, views, strict=True):
            if n:
                w = self.weight[start:start + n].unsqueeze(axis)
                b = None if self.bias is None else self.bias[start:start + n]
                outs.append(F.conv3d(x, w, b, self.stride, padding))
            start += n
        return torch.cat(outs, dim=1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, split(a,c,s)={self.split}")


def to_acs(conv: nn.Conv3d) -> ACSConv:
    """The ACS counterpart of a k x k x k Conv3d with 'same' padding and an isotropic stride."""
    return ACSConv(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                   conv.padding[0], bias=conv.bias is not None)


@register_model(dims=3)
def resnet18_acs(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    width: float = 1.0,
    stem: str = "auto",
    dropout: float = 0.0,
) -> nn.Module:
    """ResNet-18 with ACS convolutions, 3D BN/strides/pooling; `width` scales 64-128-256-512;
    stem 'auto' is 'stride1' below 64 px, else 'stride2' (as resnet18_3d)."""
    return sliced_resnet18("resnet18_acs", to_acs, in_channels, n_classes, image_size,
                           width=width, stem=stem, dropout=dropout)

"""ResNet-18/50 with torchvision's parameter names, in the two stems MedMNIST needs.

* ``cifar`` stem (3x3 stride-1 conv, no max-pool): what the official MedMNIST benchmark uses at
  28 px; the ImageNet stem would shrink a 28 px image to 7 px before the first block.
* ``imagenet`` stem (7x7 stride-2 conv + max-pool): torchvision's, used from 64 px up and the
  only form in which every ImageNet weight (conv1 included) loads.

Module names match torchvision (conv1, bn1, layer1.0.conv1, ..., fc), so its state dicts load
via `bench.models.pretrained`. The blocks and trunk take `dims` so `resnet3d` reuses them.
"""

from __future__ import annotations

from torch import Tensor, nn

from bench.models import register_model
from bench.models.common import check_choice, check_dropout, check_inputs
from bench.models.pretrained import check_pretrained_args, load_pretrained

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_BN = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_MAXPOOL = {2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVGPOOL = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def conv3x3(inp: int, out: int, stride: int = 1, dims: int = 2) -> nn.Module:
    return _CONV[dims](inp, out, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(inp: int, out: int, stride: int = 1, dims: int = 2) -> nn.Module:
    return _CONV[dims](inp, out, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dims)
        self.bn1 = _BN[dims](planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dims)
        self.bn2 = _BN[dims](planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes, 1, dims)
        self.bn1 = _BN[dims](planes)
        self.conv2 = conv3x3(planes, planes, stride, dims)  # stride here, as torchvision v1.5
        self.bn2 = _BN[dims](planes)
        self.conv3 = conv1x1(planes, planes * self.expansion, 1, dims)
        self.bn3 = _BN[dims](planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet trunk, generalised over the stem and over 2D/3D convolutions."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        in_channels: int,
        n_classes: int,
        *,
        stem_kernel: int = 7,
        stem_stride: int = 2,
        stem_pool: bool = True,
        base_width: int = 64,
        dropout: float = 0.0,
        dims: int = 2,
    ) -> None:
        super().__init__()
        self.dims = dims
        self.inplanes = base_width
        self.conv1 = _CONV[dims](
            in_channels,
            base_width,
            kernel_size=stem_kernel,
            stride=stem_stride,
            padding=stem_kernel // 2,
            bias=False,
        )
        self.bn1 = _BN[dims](base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = _MAXPOOL[dims](3, 2, 1) if stem_pool else nn.Identity()
        widths = [base_width, base_width * 2, base_width * 4, base_width * 8]
        self.layer1 = self._make_layer(block, widths[0], layers[0], 1)
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2)
        self.avgpool = _AVGPOOL[dims](1)
        self.dropout = nn.Dropout(dropout)  # no parameters: state-dict keys stay torchvision's
        self.fc = nn.Linear(widths[3] * block.expansion, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride, self.dims),
                _BN[self.dims](planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.dims)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None, self.dims) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x).flatten(1)
        return self.fc(self.dropout(x))


def _resnet(
    arch: str,
    block: type[BasicBlock] | type[Bottleneck],
    layers: list[int],
    in_channels: int,
    n_classes: int,
    image_size: int,
    stem: str,
    dropout: float,
    pretrained: bool,
    weights_path: str,
) -> ResNet:
    check_inputs(arch, in_channels, n_classes, image_size)
    stem = check_choice(arch, "stem", stem, ["auto", "cifar", "imagenet"])
    dropout = check_dropout(arch, dropout)
    check_pretrained_args(arch, pretrained, weights_path)
    if stem == "auto":
        stem = "cifar" if image_size < 64 else "imagenet"
    cifar = stem == "cifar"
    model = ResNet(
        block,
        layers,
        in_channels,
        n_classes,
        stem_kernel=3 if cifar else 7,
        stem_stride=1 if cifar else 2,
        stem_pool=not cifar,
        dropout=dropout,
    )
    if pretrained:
        load_pretrained(
            model,
            arch,
            in_channels=in_channels,
            first_conv="conv1",
            drop_prefixes=("fc.",),
            weights_path=weights_path,
        )
    return model


@register_model
def resnet18(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    stem: str = "auto",
    dropout: float = 0.0,
    pretrained: bool = False,
    weights_path: str = "",
) -> nn.Module:
    """ResNet-18; stem 'auto' is CIFAR-style below 64 px (as the MedMNIST paper), else ImageNet."""
    return _resnet(
        "resnet18",
        BasicBlock,
        [2, 2, 2, 2],
        in_channels,
        n_classes,
        image_size,
        stem,
        dropout,
        pretrained,
        weights_path,
    )


@register_model
def resnet50(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    stem: str = "auto",
    dropout: float = 0.0,
    pretrained: bool = False,
    weights_path: str = "",
) -> nn.Module:
    """ResNet-50 (bottleneck blocks); same stems and weight loading as resnet18."""
    return _resnet(
        "resnet50",
        Bottleneck,
        [3, 4, 6, 3],
        in_channels,
        n_classes,
        image_size,
        stem,
        dropout,
        pretrained,
        weights_path,
    )

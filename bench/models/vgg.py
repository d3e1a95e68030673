"""VGG-11/16 (with or without batch norm) under torchvision's parameter names.

Small images: torchvision's five 2x2 max-pools would take 28 px to 0, so a pool that would drop
the feature map below 1 px is replaced by an Identity *at the same index* (28 -> 14 -> 7 -> 3 -> 1,
fifth pool skipped). Keeping the index keeps `features.N` names identical, so ImageNet weights
still load. Head: below 224 px ('small') a global average pool and one dropout+linear layer, as in
the usual CIFAR VGGs -- the 7x7x512 -> 4096 -> 4096 head would be ~120M parameters fitted on
upsampled 1-4 px maps. At 224 px ('imagenet') torchvision's 7x7 pool and 3-layer classifier, so
its classifier.0/.3 weights load too.
"""

from __future__ import annotations

from torch import Tensor, nn

from bench.models import register_model
from bench.models.common import check_choice, check_dropout, check_inputs
from bench.models.pretrained import check_pretrained_args, load_pretrained

_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", *[256] * 3, "M", *[512] * 3, "M", *[512] * 3, "M"],
}


def make_features(
    cfg: list[int | str], in_channels: int, image_size: int, batch_norm: bool
) -> nn.Sequential:
    """torchvision's `make_layers`, skipping pools that would shrink the map below 1 px."""
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for v in cfg:
        if v == "M":
            if size // 2 >= 1:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                size //= 2
            else:
                layers.append(nn.Identity())
        else:
            assert isinstance(v, int)
            layers.append(nn.Conv2d(channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, features: nn.Sequential, n_classes: int, head: str, dropout: float) -> None:
        super().__init__()
        self.features = features
        if head == "imagenet":
            self.avgpool: nn.Module = nn.AdaptiveAvgPool2d((7, 7))
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(True),
                nn.Dropout(dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(True),
                nn.Dropout(dropout),
                nn.Linear(4096, n_classes),
            )
        else:
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(512, n_classes))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def _vgg(
    arch: str,
    in_channels: int,
    n_classes: int,
    image_size: int,
    batch_norm: bool,
    dropout: float,
    head: str,
    pretrained: bool,
    weights_path: str,
) -> VGG:
    check_inputs(arch, in_channels, n_classes, image_size)
    dropout = check_dropout(arch, dropout)
    head = check_choice(arch, "head", head, ["auto", "small", "imagenet"])
    check_pretrained_args(arch, pretrained, weights_path)
    if head == "auto":
        head = "imagenet" if image_size >= 224 else "small"
    model = VGG(
        make_features(_CFGS[arch], in_channels, image_size, bool(batch_norm)),
        n_classes,
        head,
        dropout,
    )
    if pretrained:
        load_pretrained(
            model,
            f"{arch}_bn" if batch_norm else arch,
            in_channels=in_channels,
            first_conv="features.0",
            drop_prefixes=("classifier.6.",) if head == "imagenet" else ("classifier.",),
            weights_path=weights_path,
        )
    return model


@register_model
def vgg11(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    batch_norm: bool = True,
    dropout: float = 0.5,
    head: str = "auto",
    pretrained: bool = False,
    weights_path: str = "",
) -> nn.Module:
    """VGG-11 (torchvision vgg11_bn / vgg11 names); head 'auto' = 'imagenet' at >= 224 px."""
    return _vgg(
        "vgg11",
        in_channels,
        n_classes,
        image_size,
        batch_norm,
        dropout,
        head,
        pretrained,
        weights_path,
    )


@register_model
def vgg16(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    batch_norm: bool = True,
    dropout: float = 0.5,
    head: str = "auto",
    pretrained: bool = False,
    weights_path: str = "",
) -> nn.Module:
    """VGG-16 (torchvision vgg16_bn / vgg16 names); head 'auto' = 'imagenet' at >= 224 px."""
    return _vgg(
        "vgg16",
        in_channels,
        n_classes,
        image_size,
        batch_norm,
        dropout,
        head,
        pretrained,
        weights_path,
    )

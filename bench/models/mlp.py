"""Multi-layer perceptron on the flattened image, and a sizing helper for CNN-vs-MLP comparisons.

A fair "does convolution help?" comparison holds the parameter budget fixed, so
`mlp_hidden_for_params` picks the hidden width that gives an MLP as many parameters as a CNN.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from bench.errors import UserError
from bench.models import register_model
from bench.models.common import as_int, check_dropout, check_inputs


class MLP(nn.Module):
    def __init__(
        self, in_features: int, n_classes: int, hidden: int, layers: int, dropout: float
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Flatten()]
        features = in_features
        for _ in range(layers):
            blocks += [nn.Linear(features, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            features = hidden
        blocks.append(nn.Linear(features, n_classes))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def mlp_param_count(hidden: int, in_features: int, n_classes: int, layers: int) -> int:
    """Parameters of `MLP`: in*h + h, then (layers-1) x (h*h + h), then h*n + n."""
    return (
        (in_features + 1) * hidden + (layers - 1) * (hidden + 1) * hidden + (hidden + 1) * n_classes
    )


def mlp_hidden_for_params(target_params: int, in_features: int, n_classes: int, layers: int) -> int:
    """Hidden width whose MLP has as close to `target_params` parameters as possible.

    The count is quadratic in h: (L-1) h^2 + (in + 1 + (L-1) + n) h + n = target. Solve it, then
    take whichever of floor/ceil of the root lands nearer the target.
    """
    if layers < 1:
        raise UserError(f"layers={layers}: sizing needs at least one hidden layer; use layers >= 1")
    a = layers - 1
    b = in_features + 1 + (layers - 1) + n_classes
    c = n_classes - target_params
    if c >= 0:
        raise UserError(
            f"target_params={target_params} is below the smallest MLP for {in_features} inputs and "
            f"{n_classes} classes; use a larger target"
        )
    root = -c / b if a == 0 else (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    candidates = {max(1, math.floor(root)), max(1, math.ceil(root))}
    return min(
        candidates,
        key=lambda h: abs(mlp_param_count(h, in_features, n_classes, layers) - target_params),
    )


@register_model
def mlp(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    hidden: int = 512,
    layers: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    """`layers` hidden ReLU layers of width `hidden` on the flattened C*H*W pixels."""
    check_inputs("mlp", in_channels, n_classes, image_size)
    hidden = as_int("mlp", "hidden", hidden, lo=1)
    layers = as_int("mlp", "layers", layers, lo=1)
    dropout = check_dropout("mlp", dropout)
    return MLP(in_channels * image_size * image_size, n_classes, hidden, layers, dropout)

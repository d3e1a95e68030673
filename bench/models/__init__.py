"""Model registry in the style of timm: `@register_model` on a constructor, one `create_model`.

Every constructor takes (in_channels, n_classes, image_size, **hp) and returns an nn.Module
mapping a float batch (N, C, H, W) -- or (N, C, D, H, W) for 3D families -- to logits
(N, n_classes).
Adding a family = one file here + one YAML search space; nothing else changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from bench.errors import UserError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    fn: Callable[..., nn.Module]
    dims: int  # 2 for images, 3 for volumes

    def hparams(self) -> dict[str, object]:
        """The family's own hyperparameters and their defaults (everything after image_size)."""
        params = list(inspect.signature(self.fn).parameters.values())[3:]
        return {p.name: p.default for p in params
                if p.kind is p.KEYWORD_ONLY or p.default is not p.empty}


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(fn: Callable[..., nn.Module] | None = None, *, name: str | None = None,
                   dims: int = 2):
    """Decorator: register a constructor under its function name (or `name`)."""

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or f.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} registered twice")
        _REGISTRY[key] = ModelEntry(key, f, dims)
        return f

    return wrap(fn) if fn is not None else wrap


def _load_families() -> None:
    # Importing the family modules runs their @register_model decorators.
    from bench.models import (  # noqa: F401
        acs,
        cnn,
        cnn3d,
        lstm,
        mlp,
        resnet,
        resnet2_5d,
        resnet3d,
        vgg,
    )


def list_models(dims: int | None = None) -> list[str]:
    _load_families()
    return sorted(k for k, e in _REGISTRY.items() if dims is None or e.dims == dims)


def get_entry(name: str) -> ModelEntry:
    _load_families()
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, in_channels: int, n_classes: int, image_size: int, **hp) -> nn.Module:
    """Build a registered model; unknown hyperparameters are a user error, not a silent no-op."""
    entry = get_entry(name)
    allowed = entry.hparams()
    unknown = sorted(set(hp) - set(allowed))
    if unknown:
        raise UserError(
            f"model {name!r} does not take {', '.join(unknown)}; "
            f"its hyperparameters are: {', '.join(sorted(allowed)) or '(none)'}"
        )
    return entry.fn(in_channels, n_classes, image_size, **hp)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)

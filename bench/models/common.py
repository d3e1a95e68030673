"""Argument checks shared by the model families.

Search spaces come from YAML and tuners, so a bad value should fail at build time with a message
that names the model, the hyperparameter and the fix -- not as a shape error deep in a forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from bench.errors import UserError


def check_inputs(model: str, in_channels: int, n_classes: int, image_size: int) -> None:
    """The three positional arguments every constructor takes."""
    as_int(model, "in_channels", in_channels, lo=1)
    as_int(model, "n_classes", n_classes, lo=1)
    as_int(model, "image_size", image_size, lo=8)


def as_int(model: str, name: str, value: object, *, lo: int | None = None) -> int:
    """An integer hyperparameter (integral floats from tuners are accepted), optionally >= lo."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise UserError(f"model {model!r}: {name} must be an integer, got {value!r}; fix the value")
    value = int(value)
    if lo is not None and value < lo:
        raise UserError(f"model {model!r}: {name}={value} is too small; use {name} >= {lo}")
    return value


def as_float(
    model: str, name: str, value: object, *, lo: float, hi: float, hi_open: bool = False
) -> float:
    """A float in [lo, hi] (or [lo, hi) with hi_open)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise UserError(f"model {model!r}: {name} must be a number, got {value!r}; fix the value")
    value = float(value)
    if value < lo or value > hi or (hi_open and value == hi):
        bracket = ")" if hi_open else "]"
        raise UserError(
            f"model {model!r}: {name}={value} is out of range; use a value in [{lo}, {hi}{bracket}"
        )
    return value


def check_dropout(model: str, dropout: object) -> float:
    return as_float(model, "dropout", dropout, lo=0.0, hi=1.0, hi_open=True)


def check_choice(model: str, name: str, value: object, choices: Iterable[str]) -> str:
    choices = list(choices)
    if value not in choices:
        raise UserError(
            f"model {model!r}: {name}={value!r} is not supported; use one of: {', '.join(choices)}"
        )
    return str(value)


def scaled(base: int, width: float) -> int:
    """Channel count `base` scaled by a width multiplier, never below 1."""
    return max(1, int(round(base * width)))

"""Load torchvision-style ImageNet weights into our VGG / ResNet (the one place that does it).

Our VGG and ResNet use torchvision's parameter names, so a published state dict maps key by key.
Three things differ and are handled here:

* the first conv: ImageNet weights expect 3 channels. For 1 channel we sum the RGB kernels (a grey
  image fed as R=G=B gives the same activations); for other counts we spread the mean over the
  channels, which generalises the sum.
* the final classifier (`fc` / `classifier.6`): n_classes differs, so it is always dropped.
* a first conv whose *shape* differs after channel adaptation (ResNet's 3x3 CIFAR stem vs the
  7x7 ImageNet one) is skipped and stays randomly initialised.

Everything else must load; a key that does not fit is a UserError (wrong file for the model),
never a silently half-initialised network.

Loading a saved model (`bench.predict`) builds the architecture inside `weights_from_checkpoint()`:
every weight is in its model.pt, so nothing is fetched, and a `weights_path` named in a model
file's config (someone else's file) is never opened.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from bench.errors import UserError

log = logging.getLogger(__name__)

TORCHVISION_URLS: dict[str, str] = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "vgg11_bn": "https://download.pytorch.org/models/vgg11_bn-6002323d.pth",
    "vgg16_bn": "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth",
    "vgg11": "https://download.pytorch.org/models/vgg11-8a719046.pth",
    "vgg16": "https://download.pytorch.org/models/vgg16-397923af.pth",
}


_FROM_CHECKPOINT = contextvars.ContextVar("medbench_weights_from_checkpoint", default=False)


@contextlib.contextmanager
def weights_from_checkpoint() -> Iterator[None]:
    """Build models without loading ImageNet weights (no download, no weights_path read):
    the caller loads a complete state dict of its own right after."""
    token = _FROM_CHECKPOINT.set(True)
    try:
        yield
    finally:
        _FROM_CHECKPOINT.reset(token)


def check_pretrained_args(model: str, pretrained: bool, weights_path: str) -> None:
    """`weights_path` without `pretrained` would be a silent no-op, so it is refused."""
    if weights_path and not pretrained:
        raise UserError(
            f"model {model!r}: weights_path={weights_path!r} is given but pretrained=False; "
            "set pretrained=True to load it, or drop weights_path"
        )


def fetch_state_dict(arch: str, weights_path: str = "") -> dict[str, torch.Tensor]:
    """The state dict from a local .pth file, or else torchvision's published URL for `arch`."""
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise UserError(f"weights file {str(path)!r} not found; fix weights_path")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
            raise UserError(
                f"could not read weights file {str(path)!r} ({e}); "
                "pass a state_dict saved with torch.save(model.state_dict(), path)"
            ) from e
    else:
        if arch not in TORCHVISION_URLS:
            raise UserError(f"no published weights for {arch!r}; pass weights_path=<file.pth>")
        url = TORCHVISION_URLS[arch]
        try:
            state = torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=False, check_hash=True, weights_only=True
            )
        except Exception as e:  # noqa: BLE001 - network, proxy, hash: all fixed the same way
            raise UserError(
                f"could not download {arch} weights from {url} ({e}); "
                "download the file elsewhere and pass weights_path=<file.pth>"
            ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint rather than a bare state dict
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(
            f"weights for {arch} are not a state dict of tensors; "
            "save them with torch.save(model.state_dict(), path)"
        )
    return dict(state)


def adapt_in_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn an RGB first-conv kernel (out, 3, ...) into one for `in_channels` inputs."""
    src = weight.shape[1]
    if src == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    # Spread the mean: for a constant input the response is unchanged, as with the sum for 1.
    mean = weight.mean(dim=1, keepdim=True)
    reps = [1] * weight.dim()
    reps[1] = in_channels
    return mean.repeat(*reps) * (src / in_channels)


def load_pretrained(
    model: nn.Module,
    arch: str,
    *,
    in_channels: int,
    first_conv: str,
    drop_prefixes: tuple[str, ...],
    weights_path: str = "",
) -> list[str]:
    """Load `arch`'s ImageNet weights into `model` in place; return the source keys skipped.

    `first_conv` names the input conv module (its `.weight` gets channel adaptation and may be
    skipped on a shape mismatch); keys under `drop_prefixes` (the classifier) are never loaded.
    Inside `weights_from_checkpoint()` nothing is loaded (and nothing fetched or read).
    """
    if _FROM_CHECKPOINT.get():
        log.info("%s: ImageNet weights not loaded; the checkpoint's own weights follow", arch)
        return []
    source = fetch_state_dict(arch, weights_path)
    target = model.state_dict()
    first_keys = {f"{first_conv}.weight", f"{first_conv}.bias"}
    to_load: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    bad: list[str] = []
    for key, value in source.items():
        if key.startswith(drop_prefixes):
            skipped.append(key)
            continue
        if key == f"{first_conv}.weight":
            value = adapt_in_channels(value, in_channels)
        if key not in target:
            bad.append(f"{key} (not in model)")
        elif target[key].shape != value.shape:
            if key in first_keys:
                skipped.append(key)  # e.g. CIFAR 3x3 stem vs ImageNet 7x7
            else:
                bad.append(f"{key} (shape {tuple(value.shape)} vs {tuple(target[key].shape)})")
        else:
            to_load[key] = value
    if bad:
        raise UserError(
            f"weights for {arch} do not fit the model: {', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}; pass weights saved from the matching "
            "torchvision architecture (with/without batch norm as configured)"
        )
    result = model.load_state_dict(to_load, strict=False)
    allowed_missing = set(first_keys) | {k for k in target if k.startswith(drop_prefixes)}
    missing = [
        k
        for k in result.missing_keys
        if k not in allowed_missing and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise UserError(
            f"weights for {arch} lack {len(missing)} parameters the model needs "
            f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); "
            "pass a complete torchvision state dict"
        )
    log.info(
        "loaded %d tensors of %s weights%s; skipped %s",
        len(to_load),
        arch,
        f" from {weights_path}" if weights_path else "",
        ", ".join(skipped) or "nothing",
    )
    return skipped

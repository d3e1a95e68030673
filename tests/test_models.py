"""Model families: shapes, gradients, hyperparameter validation, pretrained loading, MLP sizing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from bench.errors import UserError
from bench.models import count_parameters, create_model, get_entry, list_models
from bench.models.mlp import mlp_hidden_for_params, mlp_param_count
from bench.models.pretrained import TORCHVISION_URLS, adapt_in_channels

MODELS_2D = list_models(dims=2)
# Small widths keep the 3D sweep cheap; one test below runs the default width.
FAST_HP = {"resnet18_3d": {"width": 0.25}, "resnet18_2_5d": {"width": 0.25},
           "resnet18_acs": {"width": 0.25}}
# The backward check is about gradient flow, not resolution: ResNet-50 runs it on 16 px inputs.
BACKWARD_SIZE = {"resnet50": 16}


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _input(name: str, channels: int, size: int, batch: int = 2) -> torch.Tensor:
    spatial = (size,) * get_entry(name).dims
    return torch.randn(batch, channels, *spatial)


def test_registry_lists_all_families() -> None:
    assert list_models(dims=3) == ["cnn3d_medium", "cnn3d_small", "resnet18_2_5d",
                                   "resnet18_2_5d_light", "resnet18_3d", "resnet18_acs"]
    assert MODELS_2D == [
        "cnn_large",
        "cnn_medium",
        "cnn_small",
        "lstm",
        "mlp",
        "resnet18",
        "resnet50",
        "vgg11",
        "vgg16",
    ]


@pytest.mark.parametrize("name", list_models())
def test_hparams_are_keyword_only_with_defaults(name: str) -> None:
    import inspect

    params = list(inspect.signature(get_entry(name).fn).parameters.values())
    assert [p.name for p in params[:3]] == ["in_channels", "n_classes", "image_size"]
    for p in params[3:]:
        assert p.kind is p.KEYWORD_ONLY and p.default is not p.empty, p.name


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize(("channels", "n_classes", "size"), [(1, 2, 28), (3, 11, 28), (1, 11, 64)])
def test_forward_shapes(name: str, channels: int, n_classes: int, size: int) -> None:
    model = create_model(name, channels, n_classes, size, **FAST_HP.get(name, {})).eval()
    with torch.no_grad():
        out = model(_input(name, channels, size))
    assert out.shape == (2, n_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_backward(name: str) -> None:
    size = BACKWARD_SIZE.get(name, 28)
    model = create_model(name, 1, 3, size, **FAST_HP.get(name, {})).train()
    loss = torch.nn.functional.cross_entropy(model(_input(name, 1, size)), torch.tensor([0, 2]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        pytest.param("resnet50", marks=pytest.mark.slow),
        # VGG's 224 px head is 120M parameters: building it alone takes seconds.
        pytest.param("vgg11", marks=pytest.mark.slow),
        pytest.param("vgg16", marks=pytest.mark.slow),
    ],
)
def test_imagenet_form_at_224(name: str) -> None:
    model = create_model(name, 3, 5, 224).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 5)


def test_resnet_stems() -> None:
    small = create_model("resnet18", 1, 2, 28)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    big = create_model("resnet18", 1, 2, 64)
    assert big.conv1.kernel_size == (7, 7) and big.conv1.stride == (2, 2)
    forced = create_model("resnet18", 1, 2, 28, stem="imagenet")
    assert forced.conv1.kernel_size == (7, 7)


def test_vgg_skips_pools_that_would_vanish() -> None:
    model = create_model("vgg11", 1, 2, 28)
    pools = [m for m in model.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 4  # 28 -> 14 -> 7 -> 3 -> 1, the fifth skipped
    assert len(create_model("vgg11", 1, 2, 64).features) == len(model.features)  # same indices
    with torch.no_grad():
        assert model.eval().features(torch.randn(1, 1, 28, 28)).shape == (1, 512, 1, 1)


def test_resnet3d_stems_and_width() -> None:
    model = create_model("resnet18_3d", 1, 3, 28)
    assert model.conv1.stride == (1, 1, 1) and model.conv1.out_channels == 64
    assert model.fc.in_features == 512
    assert create_model("resnet18_3d", 1, 3, 64, width=0.25).conv1.stride == (2, 2, 2)
    assert create_model("resnet18_3d", 1, 3, 28, width=0.5).fc.in_features == 256


@pytest.mark.slow
def test_resnet3d_default_width_forward() -> None:
    model = create_model("resnet18_3d", 1, 3, 28).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 28, 28, 28)).shape == (1, 3)


def test_cnn_width_and_depth() -> None:
    base = count_parameters(create_model("cnn_small", 1, 2, 28))
    assert count_parameters(create_model("cnn_small", 1, 2, 28, width=2.0)) > base
    deep = create_model("cnn_large", 1, 2, 28, depth=6, batch_norm=False, dropout=0.2)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deep.modules())
    with torch.no_grad():
        assert deep.eval()(torch.randn(2, 1, 28, 28)).shape == (2, 2)
    with torch.no_grad():  # the larger MedMNIST+ sizes
        for size in (128, 224):
            model = create_model("cnn_small", 3, 4, size).eval()
            assert model(torch.randn(1, 3, size, size)).shape == (1, 4)


def test_lstm_bidirectional_stacked() -> None:
    model = create_model("lstm", 3, 4, 28, hidden=16, layers=2, bidirectional=True, dropout=0.1)
    assert model.fc.in_features == 32
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 28, 28)).shape == (2, 4)


@pytest.mark.parametrize(
    ("name", "hp"),
    [
        ("cnn_small", {"widht": 2.0}),
        ("resnet18", {"width": 2.0}),
        ("mlp", {"hiden": 64}),
        ("resnet18_3d", {"pretrained": True}),
    ],
)
def test_unknown_hparam_is_user_error(name: str, hp: dict) -> None:
    with pytest.raises(UserError, match="does not take"):
        create_model(name, 1, 2, 28, **hp)


@pytest.mark.parametrize(
    ("name", "hp", "match"),
    [
        ("cnn_small", {"depth": 0}, "depth"),
        ("cnn_small", {"depth": 1.5}, "integer"),
        ("cnn_medium", {"width": -1.0}, "width"),
        ("mlp", {"dropout": 1.0}, "dropout"),
        ("lstm", {"hidden": 0}, "hidden"),
        ("resnet18", {"stem": "huge"}, "stem"),
        ("vgg11", {"head": "tiny"}, "head"),
        ("resnet18_3d", {"stem": "imagenet"}, "stem"),
        ("resnet50", {"weights_path": "x.pth"}, "pretrained=False"),
    ],
)
def test_bad_hparam_values_are_user_errors(name: str, hp: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        create_model(name, 1, 2, 28, **hp)


def test_bad_image_size_is_user_error() -> None:
    with pytest.raises(UserError, match="image_size"):
        create_model("resnet18", 1, 2, 4)


# --- pretrained loading -----------------------------------------------------------------------


def _save_imagenet(tmp_path: Path, name: str, **hp) -> tuple[Path, dict[str, torch.Tensor]]:
    """A local stand-in for a torchvision file: a fresh ImageNet-shaped model's state dict.

    num_batches_tracked is left out, as in torchvision's older published files (e.g. vgg11_bn).
    """
    full = create_model(name, 3, 1000, 224, **hp).state_dict()
    state = {k: v for k, v in full.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / f"{name}.pth"
    torch.save(state, path)
    return path, state


def _assert_backbone_equal(model: torch.nn.Module, state: dict, skip: tuple[str, ...]) -> None:
    got = model.state_dict()
    checked = 0
    for key, value in state.items():
        if key.startswith(skip) or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(got[key], value), key
        checked += 1
    assert checked > 10


def test_resnet18_loads_local_weights(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, state = _save_imagenet(tmp_path, "resnet18", stem="imagenet")

    rgb = create_model("resnet18", 3, 7, 224, pretrained=True, weights_path=str(path))
    _assert_backbone_equal(rgb, state, ("fc.",))
    assert rgb.fc.out_features == 7

    grey = create_model("resnet18", 1, 2, 64, pretrained=True, weights_path=str(path))
    _assert_backbone_equal(grey, state, ("fc.", "conv1."))
    assert torch.allclose(grey.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))

    with caplog.at_level(logging.INFO, logger="bench.models.pretrained"):
        cifar = create_model("resnet18", 1, 2, 28, pretrained=True, weights_path=str(path))
    _assert_backbone_equal(cifar, state, ("fc.", "conv1."))
    assert cifar.conv1.weight.shape == (64, 1, 3, 3)
    assert "conv1.weight" in caplog.text and "fc.weight" in caplog.text  # skipped keys logged


@pytest.mark.slow
def test_resnet50_loads_local_weights(tmp_path: Path) -> None:
    path, state = _save_imagenet(tmp_path, "resnet50", stem="imagenet")
    model = create_model("resnet50", 1, 2, 64, pretrained=True, weights_path=str(path))
    _assert_backbone_equal(model, state, ("fc.", "conv1."))


@pytest.mark.parametrize("batch_norm", [True, False])
def test_vgg11_loads_local_weights(tmp_path: Path, batch_norm: bool) -> None:
    # A real torchvision file also holds the 7x7 classifier; the small head ignores it anyway,
    # and leaving it out keeps this test fast (the full file is the slow test below).
    path, state = _save_imagenet(tmp_path, "vgg11", batch_norm=batch_norm, head="small")
    small = create_model(
        "vgg11", 1, 2, 28, batch_norm=batch_norm, pretrained=True, weights_path=str(path)
    )
    _assert_backbone_equal(small, state, ("classifier.", "features.0.weight"))
    assert torch.allclose(small.features[0].weight, state["features.0.weight"].sum(1, True))


@pytest.mark.slow
def test_vgg11_imagenet_head_loads_classifier(tmp_path: Path) -> None:
    path, state = _save_imagenet(tmp_path, "vgg11")
    small = create_model("vgg11", 1, 2, 28, pretrained=True, weights_path=str(path))
    _assert_backbone_equal(small, state, ("classifier.", "features.0.weight"))
    big = create_model("vgg11", 3, 2, 224, pretrained=True, weights_path=str(path))
    _assert_backbone_equal(big, state, ("classifier.6.",))  # classifier.0/.3 load too


def test_vgg16_loads_local_weights(tmp_path: Path) -> None:
    path, state = _save_imagenet(tmp_path, "vgg16", head="small")
    model = create_model("vgg16", 3, 2, 64, pretrained=True, weights_path=str(path))
    _assert_backbone_equal(model, state, ("classifier.",))


def test_pretrained_mismatch_is_user_error(tmp_path: Path) -> None:
    path, _ = _save_imagenet(tmp_path, "vgg11", batch_norm=False, head="small")
    with pytest.raises(UserError, match="do not fit"):  # no-BN file into a BN model
        create_model("vgg11", 1, 2, 28, pretrained=True, weights_path=str(path))
    with pytest.raises(UserError, match="not found"):
        create_model("resnet18", 1, 2, 28, pretrained=True, weights_path=str(tmp_path / "no.pth"))


def test_pretrained_download_uses_torchvision_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, state = _save_imagenet(tmp_path, "resnet18", stem="imagenet")
    urls: list[str] = []

    def fake_download(url: str, **kwargs) -> dict:
        urls.append(url)
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = create_model("resnet18", 3, 2, 64, pretrained=True)
    assert urls == [TORCHVISION_URLS["resnet18"]]
    _assert_backbone_equal(model, state, ("fc.",))

    def offline(url: str, **kwargs) -> dict:
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="weights_path"):
        create_model("resnet18", 3, 2, 64, pretrained=True)


def test_adapt_in_channels_preserves_constant_response() -> None:
    w = torch.randn(8, 3, 3, 3)
    for c in (1, 2, 3, 4):
        adapted = adapt_in_channels(w, c)
        assert adapted.shape == (8, c, 3, 3)
        assert torch.allclose(adapted.sum(1), w.sum(1), atol=1e-5)


# --- MLP sizing -------------------------------------------------------------------------------


def test_mlp_param_count_formula() -> None:
    for layers in (1, 2, 3):
        model = create_model("mlp", 3, 7, 28, hidden=37, layers=layers)
        assert count_parameters(model) == mlp_param_count(37, 3 * 28 * 28, 7, layers)


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("cnn", ["cnn_small", "cnn_medium", "resnet18"])
def test_mlp_hidden_matches_cnn_budget(cnn: str, layers: int) -> None:
    target = count_parameters(create_model(cnn, 1, 2, 28))
    hidden = mlp_hidden_for_params(target, 28 * 28, 2, layers)
    got = count_parameters(create_model("mlp", 1, 2, 28, hidden=hidden, layers=layers))
    assert abs(got - target) / target < 0.02


def test_mlp_hidden_rejects_impossible_target() -> None:
    with pytest.raises(UserError):
        mlp_hidden_for_params(1, 784, 2, 2)

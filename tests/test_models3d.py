"""3D families: shapes at 28^3 and 64^3, a gradient step, the ACS convolution against a plain 3D
convolution, the 2.5D kernels, hyperparameter errors, and one trainer run with 3D augmentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.data import load_dataset
from bench.errors import UserError
from bench.models import count_parameters, create_model, list_models
from bench.models.acs import ACSConv, acs_split
from bench.train import fit

FAMILIES_3D = list_models(dims=3)
# Narrow ResNets keep the sweep cheap on a CPU; the conv layouts under test do not depend on it.
FAST_HP = {"resnet18_3d": {"width": 0.125}, "resnet18_2_5d": {"width": 0.125},
           "resnet18_acs": {"width": 0.125}, "resnet18_2_5d_light": {"width": 0.125}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_the_3d_families_are_registered() -> None:
    assert FAMILIES_3D == ["cnn3d_medium", "cnn3d_small", "resnet18_2_5d", "resnet18_2_5d_light",
                           "resnet18_3d", "resnet18_acs"]


@pytest.mark.parametrize("name", FAMILIES_3D)
@pytest.mark.parametrize(("channels", "n_classes", "size"), [(1, 2, 28), (1, 5, 64), (3, 3, 28)])
def test_output_shape(name: str, channels: int, n_classes: int, size: int) -> None:
    model = create_model(name, channels, n_classes, size, **FAST_HP.get(name, {})).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size, size))
    assert out.shape == (2, n_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", FAMILIES_3D)
def test_gradient_step_lowers_the_loss_on_a_fixed_batch(name: str) -> None:
    model = create_model(name, 1, 3, 28, **FAST_HP.get(name, {})).train()
    x, y = torch.randn(6, 1, 28, 28, 28), torch.tensor([0, 1, 2, 0, 1, 2])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def _acs_as_conv3d(conv: ACSConv) -> torch.Tensor:
    """The k x k x k kernel that ACS stands for: each output channel's 2D kernel in the middle
    plane of its view's axis (axial: depth, coronal: height, sagittal: width), zeros elsewhere."""
    w2d, k = conv.weight.detach(), conv.kernel_size
    w3d = torch.zeros(*w2d.shape[:2], k, k, k, dtype=w2d.dtype)
    a, c, _ = conv.split
    w3d[:a, :, k // 2, :, :] = w2d[:a]
    w3d[a:a + c, :, :, k // 2, :] = w2d[a:a + c]
    w3d[a + c:, :, :, :, k // 2] = w2d[a + c:]
    return w3d


@pytest.mark.parametrize(("cin", "cout", "k", "stride", "bias"), [
    (2, 7, 3, 1, False),   # split 3/2/2
    (3, 2, 3, 2, True),    # split 1/1/0: an empty sagittal group
    (1, 5, 5, 1, True),    # split 2/2/1, a 5x5 kernel
    (4, 6, 3, 2, False),   # even split, strided
])
def test_acs_conv_equals_conv3d_with_kernels_on_their_axis(cin, cout, k, stride, bias) -> None:
    conv = ACSConv(cin, cout, k, stride, bias=bias).double()
    x = torch.randn(2, cin, 7, 8, 9, dtype=torch.float64)
    w3d = _acs_as_conv3d(conv)
    b = None if conv.bias is None else conv.bias.detach()
    expected = F.conv3d(x, w3d, b, stride, k // 2)
    got = conv(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_acs_split_is_the_packages() -> None:
    assert [acs_split(n) for n in (1, 2, 3, 4, 5, 64)] == [
        (1, 0, 0), (1, 1, 0), (1, 1, 1), (2, 1, 1), (2, 2, 1), (22, 21, 21)]


def test_acs_rejects_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="odd kernel"):
        ACSConv(1, 3, 2)
    with pytest.raises(ValueError, match="'same' padding"):
        ACSConv(1, 3, 3, padding=0)


def test_acs_and_2_5d_resnets_swap_every_spatial_conv() -> None:
    """Both keep resnet18_3d's trunk (17 k>1 convs, 3 1x1x1 shortcuts) with the 2D-cost convs:
    ACS in every k>1 place; 2.5D with 1 x k x k kernels only (no mixing across slices)."""
    acs = create_model("resnet18_acs", 1, 2, 28, width=0.25)
    convs = [m for m in acs.modules() if isinstance(m, nn.Conv3d)]
    assert sum(isinstance(m, ACSConv) for m in acs.modules()) == 17
    assert len(convs) == 3 and all(m.kernel_size == (1, 1, 1) for m in convs)
    flat = create_model("resnet18_2_5d", 1, 2, 28, width=0.25)
    kernels = [m.kernel_size for m in flat.modules() if isinstance(m, nn.Conv3d)]
    assert kernels.count((1, 3, 3)) == 17 and kernels.count((1, 1, 1)) == 3
    # same parameter count: ACS and 2.5D both hold one 2D kernel per (out, in) pair
    assert count_parameters(acs) == count_parameters(flat)
    assert count_parameters(flat) < count_parameters(create_model("resnet18_3d", 1, 2, 28,
                                                                  width=0.25))


def test_2_5d_light_defaults_and_stems() -> None:
    light = create_model("resnet18_2_5d_light", 1, 2, 28)
    assert light.conv1.stride == (2, 2, 2) and light.fc.in_features == 128
    full = create_model("resnet18_2_5d", 1, 2, 28)
    assert full.conv1.stride == (1, 1, 1) and full.fc.in_features == 512
    assert create_model("resnet18_acs", 1, 2, 64, width=0.25).conv1.stride == 2


def test_cnn3d_stem_stride_and_sizes() -> None:
    small = create_model("cnn3d_small", 1, 2, 28)
    assert small.features[0].stride == (2, 2, 2)
    full_res = create_model("cnn3d_small", 1, 2, 28, stem_stride=1)
    assert full_res.features[0].stride == (1, 1, 1)
    assert count_parameters(small) < count_parameters(create_model("cnn3d_medium", 1, 2, 28))
    deep = create_model("cnn3d_medium", 1, 2, 64, depth=5, batch_norm=False, dropout=0.2)
    assert not any(isinstance(m, nn.BatchNorm3d) for m in deep.modules())
    with torch.no_grad():
        assert deep.eval()(torch.randn(1, 1, 64, 64, 64)).shape == (1, 2)


@pytest.mark.parametrize(("name", "hp", "match"), [
    ("cnn3d_small", {"stem_stride": 3}, "stem_stride"),
    ("cnn3d_medium", {"depth": 0}, "depth"),
    ("resnet18_acs", {"stem": "imagenet"}, "stem"),
    ("resnet18_2_5d", {"width": 0.0}, "width"),
    ("resnet18_2_5d_light", {"dropout": 1.0}, "dropout"),
    ("resnet18_acs", {"pretrained": True}, "does not take"),
])
def test_bad_hparams_are_user_errors(name: str, hp: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        create_model(name, 1, 2, 28, **hp)


def test_fit_trains_a_3d_family_with_3d_augmentation(synth_dir: Path) -> None:
    data = load_dataset("organmnist3d", data_dir=synth_dir, verify_md5=False)
    cfg = {"model": "cnn3d_small", "batch_size": 8, "device": "cpu", "epochs": 2,
           "aug_hflip": 0.5, "aug_vflip": 0.5, "aug_rotation": 10.0, "aug_zoom": 0.1}
    r = fit(cfg, data)
    assert len(r.history) == 2 and all(h["train_loss"] > 0 for h in r.history)
    assert r.val_scores.shape == (len(data.splits["val"]), data.info.n_classes)
    assert 0.0 <= r.test["auc"] <= 1.0


def test_channels_last_means_ndhwc_for_volumes(synth_dir: Path) -> None:
    from bench.train import Runner, TrainConfig, memory_format

    assert memory_format(True, 3) == torch.channels_last_3d
    assert memory_format(True, 2) == torch.channels_last
    assert memory_format(False, 3) == torch.contiguous_format
    data = load_dataset("organmnist3d", data_dir=synth_dir, verify_md5=False)
    cfg = TrainConfig.from_dict({"model": "cnn3d_small", "device": "cpu"})
    run = Runner(cfg, data, create_model("cnn3d_small", 1, data.info.n_classes, 28))
    x = run.inputs(data.splits["val"].images[:2])
    assert x.is_contiguous(memory_format=torch.channels_last_3d) and x.shape[1] == 1
    assert run.model.features[0].weight.is_contiguous(memory_format=torch.channels_last_3d)

"""`medbench predict`: safe loading, multi-label output, channel warnings, JSON, `medbench train`
directories, and 3D volumes (.npy, NIfTI) scored exactly as the trainer's evaluation scores them.

Models here are untrained but seeded (or have a hand-set last layer): what is tested is the
path from file to prediction, not accuracy.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_main
from PIL import Image
from typer.testing import CliRunner

from bench.cli import app
from bench.data import dataset_info, from_arrays, synthetic_arrays
from bench.errors import UserError
from bench.models import create_model
from bench.predict import THRESHOLD, predict
from bench.train import Runner, TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def cli(monkeypatch, capsys):
    """`medbench ARGS` through `bench.cli.main` (UserError -> exit 2): (code, stdout, stderr)."""
    return lambda *argv: run_main(monkeypatch, capsys, *argv)


def save_run(run: Path, dataset: str, model: str, **hp) -> torch.nn.Module:
    """A `medbench train`-style directory (model.pt at its top) with a seeded, untrained model."""
    conf = TrainConfig.from_dict({"dataset": dataset, "model": model, **hp})
    info = dataset_info(dataset)
    torch.manual_seed(0)
    net = create_model(conf.model, info.n_channels, info.n_classes, conf.size, **conf.model_hp)
    net.eval()
    run.mkdir(parents=True)
    torch.save({"config": conf.to_dict(), "state_dict": net.state_dict()}, run / "model.pt")
    return net


class Payload:
    """Unpickling this creates a file: what an attacker's model.pt would do (harmlessly)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_poisoned_model_file_is_refused_and_its_payload_never_runs(tmp_path, cli):
    run = tmp_path / "run"
    save_run(run, "breastmnist", "mlp")
    marker = tmp_path / "pwned"
    good = torch.load(run / "model.pt", weights_only=True)
    torch.save({**good, "extra": Payload(marker)}, run / "model.pt")
    pickle.loads(pickle.dumps(Payload(tmp_path / "check")))  # the payload does work when unpickled
    assert (tmp_path / "check").exists()
    img = tmp_path / "a.png"
    Image.new("L", (28, 28), 90).save(img)

    with pytest.raises(UserError, match="Python objects besides tensors.*refusing"):
        predict(run, "breastmnist", [img])
    assert not marker.exists()
    code, _, err = cli("predict", "--run", run, img)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("error: ") and "refusing it" in err and len(err.splitlines()) == 1
    assert not marker.exists()


def test_multi_label_lists_every_label_above_threshold(tmp_path):
    run = tmp_path / "run"
    net = save_run(run, "chestmnist", "mlp")
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    bias = torch.full((14,), -6.0)
    bias[[1, 4, 9]] = 6.0  # three labels far above 0.5, the rest far below
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(bias)
    torch.save({"config": TrainConfig.from_dict({"dataset": "chestmnist", "model": "mlp"})
                .to_dict(), "state_dict": net.state_dict()}, run / "model.pt")
    img = tmp_path / "x.png"
    Image.new("L", (28, 28), 128).save(img)

    _, (row,) = predict(run, None, [img])
    labels = dataset_info("chestmnist").labels
    assert [x["index"] for x in row["labels"]] == [1, 4, 9]
    assert [x["label"] for x in row["labels"]] == [labels["1"], labels["4"], labels["9"]]
    assert all(x["p"] > THRESHOLD for x in row["labels"])
    assert len(row["probabilities"]) == 14 and "class" not in row
    res = CliRunner().invoke(app, ["predict", "--run", str(run), str(img)])
    assert res.exit_code == 0, res.output
    assert f"{labels['1']} (1.00)" in res.output and labels["0"] not in res.output


def test_channel_conversion_warns_both_ways(tmp_path):
    grey_run, rgb_run = tmp_path / "grey", tmp_path / "rgb"
    save_run(grey_run, "breastmnist", "mlp")  # 1 channel
    save_run(rgb_run, "dermamnist", "mlp")  # 3 channels
    colour, grey = tmp_path / "colour.png", tmp_path / "grey.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(colour)
    Image.new("L", (28, 28), 50).save(grey)

    (_, (row,)) = predict(grey_run, None, [colour])
    assert "converted to greyscale" in " ".join(row["warnings"])
    (_, (row,)) = predict(rgb_run, None, [grey])
    assert "converted to RGB" in " ".join(row["warnings"])
    (_, (row,)) = predict(grey_run, None, [grey])
    assert row["warnings"] == []
    res = CliRunner().invoke(app, ["predict", "--run", str(grey_run), str(colour)])
    assert res.exit_code == 0 and "warning: colour.png: colour image" in res.output


def test_json_format_on_a_train_directory(tmp_path, cli):
    run = tmp_path / "train-run"
    save_run(run, "breastmnist", "mlp")
    imgs = []
    for i in range(2):
        imgs.append(tmp_path / f"{i}.png")
        Image.new("L", (28, 28), 40 * i).save(imgs[-1])
    res = CliRunner().invoke(app, ["predict", "--run", str(run), "--format", "json",
                                   *map(str, imgs)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["model"] == str(run)
    assert [p["input"] for p in out["predictions"]] == [str(p) for p in imgs]
    assert all(p["label"] in ("malignant", "normal, benign") for p in out["predictions"])
    code, _, err = cli("predict", "--run", run, "--dataset", "pneumoniamnist", imgs[0])
    assert code == 2 and "model for breastmnist, not pneumoniamnist" in err
    code, _, err = cli("predict", "--run", run, "--format", "xml", imgs[0])
    assert code == 2 and "xml" in err


# --- 3D -------------------------------------------------------------------------------------

FLAG_3D = "organmnist3d"


@pytest.fixture(scope="module")
def run_3d(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    run = tmp_path_factory.mktemp("r3d") / "run"
    net = save_run(run, FLAG_3D, "resnet18_3d", width=0.125)
    return run, net


def trainer_scores(volumes: np.ndarray, net: torch.nn.Module) -> np.ndarray:
    """The trainer's evaluation path (Runner.scores) on volumes in file layout."""
    info = dataset_info(FLAG_3D)
    arrays = synthetic_arrays(FLAG_3D, n=(2, 2, len(volumes)), seed=1)
    arrays["test_images"] = volumes
    data = from_arrays(info, 28, arrays)
    conf = TrainConfig.from_dict({"dataset": FLAG_3D, "model": "resnet18_3d", "width": 0.125})
    return Runner(conf, data, net).scores(data.splits["test"].images)


def test_npy_volume_matches_the_trainers_evaluation(tmp_path, run_3d):
    run, net = run_3d
    vols = synthetic_arrays(FLAG_3D, n=(2, 2, 3), seed=5)["test_images"]
    paths = []
    for i, v in enumerate(vols):
        paths.append(tmp_path / f"v{i}.npy")
        np.save(paths[-1], v)
    _, rows = predict(run, FLAG_3D, paths)
    expected = trainer_scores(vols, net)
    for row, p in zip(rows, expected, strict=True):
        assert row["class"] == int(np.argmax(p))
        assert row["probabilities"] == pytest.approx(p.tolist(), abs=1e-4)
        assert row["warnings"] == []


def test_volume_of_another_size_is_resampled(tmp_path, run_3d):
    run, _ = run_3d
    vol = np.random.default_rng(0).random((20, 36, 36)).astype(np.float32) * 1000 - 500
    np.save(tmp_path / "ct.npy", vol)
    _, (row,) = predict(run, None, [tmp_path / "ct.npy"])
    notes = " ".join(row["warnings"])
    assert "(20, 36, 36) -> (28, 28, 28)" in notes and "scaled to 0..255" in notes
    assert len(row["probabilities"]) == dataset_info(FLAG_3D).n_classes


def test_nifti_volume_gives_the_npy_result(tmp_path, run_3d):
    nibabel = pytest.importorskip("nibabel")
    run, _ = run_3d
    vol = synthetic_arrays(FLAG_3D, n=(2, 2, 1), seed=7)["test_images"][0].copy()
    vol.flat[0], vol.flat[1] = 0, 255  # full range: the min-max scaling of floats is identity
    np.save(tmp_path / "v.npy", vol)
    nibabel.save(nibabel.Nifti1Image(vol.astype(np.float32), np.eye(4)), tmp_path / "v.nii.gz")
    _, rows = predict(run, None, [tmp_path / "v.npy", tmp_path / "v.nii.gz"])
    assert rows[0]["probabilities"] == pytest.approx(rows[1]["probabilities"], abs=1e-4)


def test_missing_nibabel_names_the_extra(tmp_path, run_3d, monkeypatch):
    run, _ = run_3d
    (tmp_path / "v.nii.gz").write_bytes(b"\x00" * 10)
    monkeypatch.setitem(__import__("sys").modules, "nibabel", None)  # import fails
    with pytest.raises(UserError, match=r"needs nibabel.*medmnist-bench\[nifti\]"):
        predict(run, None, [tmp_path / "v.nii.gz"])


def test_wrong_kind_of_input_is_one_clear_error(tmp_path, run_3d):
    run, _ = run_3d
    Image.new("L", (28, 28)).save(tmp_path / "a.png")
    with pytest.raises(UserError, match="a 3D model reads volumes"):
        predict(run, None, [tmp_path / "a.png"])
    np.save(tmp_path / "flat.npy", np.zeros((28, 28), np.uint8))
    with pytest.raises(UserError, match=r"expected a volume of shape \(D, H, W\)"):
        predict(run, None, [tmp_path / "flat.npy"])
    with pytest.raises(UserError, match="neither model.pt"):
        predict(tmp_path, None, [tmp_path / "flat.npy"])

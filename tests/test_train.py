"""bench.train: one training run on synthetic (and, slow, real) data; optimizers, schedules,
losses, determinism, best-epoch selection, early stop, presets and config validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.data import MedData, Split, dataset_info, from_arrays, load_dataset, synthetic_arrays
from bench.errors import UserError
from bench.metrics import evaluate
from bench.models import create_model
from bench.train import (
    OPTIMIZERS,
    SCHEDULERS,
    TRAIN_PRESETS,
    Runner,
    TrainConfig,
    WeightAverage,
    fit,
    make_loss,
    resolve_device,
)

FAST = {"model": "cnn_small", "batch_size": 32, "device": "cpu", "scheduler": "constant"}
TIMING = ("epoch_s", "images_per_s")
TINY_3D = {"model": "resnet18_3d", "width": 0.125, "stem": "stride2", "batch_size": 11,
           "device": "cpu"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def organa(synth_dir: Path) -> MedData:
    return load_dataset("organamnist", data_dir=synth_dir, verify_md5=False)


@pytest.fixture(scope="module")
def chest(synth_dir: Path) -> MedData:
    return load_dataset("chestmnist", data_dir=synth_dir, verify_md5=False)


@pytest.fixture(scope="module")
def organ3d(synth_dir: Path) -> MedData:
    return load_dataset("organmnist3d", data_dir=synth_dir, verify_md5=False)


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in history]


def _check_result(r, data: MedData, epochs: int) -> None:
    k = data.info.n_classes
    assert len(r.history) == epochs
    assert [h["epoch"] for h in r.history] == list(range(1, epochs + 1))
    assert all(np.isfinite(h["train_loss"]) for h in r.history)
    assert r.val_scores.shape == (len(data.splits["val"]), k)
    assert r.test_scores.shape == (len(data.splits["test"]), k)
    assert r.val_scores.dtype == np.float64
    if data.info.multi_label:
        assert ((r.test_scores >= 0) & (r.test_scores <= 1)).all()
    else:
        np.testing.assert_allclose(r.test_scores.sum(axis=1), 1.0, atol=1e-5)
    # the reported numbers are the official metrics of the returned scores
    assert r.test == evaluate(data.splits["test"].raw_labels, r.test_scores, data.info.task)
    assert r.val == evaluate(data.splits["val"].raw_labels, r.val_scores, data.info.task)
    np.testing.assert_array_equal(r.test_labels, data.splits["test"].raw_labels)
    s = r.summary()
    assert s["epochs_run"] == epochs and s["best_epoch"] == r.best_epoch
    assert s["n_params"] > 0 and s["train_images_per_s"] > 0 and s["device"] == "cpu"


# --- optimizers and schedules ------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_learns(organa: MedData, optimizer: str) -> None:
    lr = 0.05 if optimizer == "sgd" else 3e-3
    r = fit({**FAST, "optimizer": optimizer, "lr": lr, "epochs": 3}, organa)
    _check_result(r, organa, 3)
    assert r.test["auc"] > 0.8, r.test
    assert r.history[-1]["train_loss"] < r.history[0]["train_loss"]


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_each_scheduler(organa: MedData, scheduler: str) -> None:
    lr = 1e-3
    r = fit({**FAST, "scheduler": scheduler, "lr": lr, "epochs": 4}, organa)
    _check_result(r, organa, 4)
    lrs = [h["lr"] for h in r.history]  # after the epoch's last step; 3 steps per epoch
    if scheduler == "multistep":  # x0.1 at 50% and 75% of the steps
        assert lrs == pytest.approx([lr, lr * 0.1, lr * 0.01, lr * 0.01])
    elif scheduler == "cosine":
        assert lrs == sorted(lrs, reverse=True) and lrs[0] < lr
        assert lrs[-1] == pytest.approx(0.0, abs=1e-12)
    elif scheduler == "onecycle":
        assert lrs[0] > lr / 25 and max(lrs) > lrs[-1] and lrs[-1] < 0.1 * lr
    else:
        assert lrs == [lr] * 4


# --- tasks -------------------------------------------------------------------------------------

def test_multi_label_trains_with_bce(chest: MedData) -> None:
    assert chest.info.multi_label and chest.splits["train"].labels.dtype == torch.float32
    r = fit({**FAST, "lr": 3e-3, "epochs": 5}, chest)
    _check_result(r, chest, 5)
    assert r.test_scores.shape[1] == 14
    assert not np.allclose(r.test_scores.sum(axis=1), 1.0)  # sigmoid, not softmax
    assert r.test["auc"] > 0.5


def test_3d_runs(organ3d: MedData) -> None:
    assert organ3d.splits["train"].images.ndim == 5
    r = fit({**TINY_3D, "epochs": 1}, organ3d)
    _check_result(r, organ3d, 1)


@pytest.mark.parametrize("flag", ["organamnist", "chestmnist"])
def test_class_weighting_and_label_smoothing_run(synth_dir: Path, flag: str) -> None:
    data = load_dataset(flag, data_dir=synth_dir, verify_md5=False)
    r = fit({**FAST, "epochs": 2, "class_weighting": True, "label_smoothing": 0.1}, data)
    _check_result(r, data, 2)


def _imbalanced() -> MedData:
    info = dataset_info("breastmnist")
    arrays = synthetic_arrays("breastmnist", n=(8, 4, 4))
    arrays["train_labels"] = np.array([[0], [0], [0], [0], [0], [0], [1], [1]], np.uint8)
    return from_arrays(info, 28, arrays)


def test_class_weights_are_inverse_frequency() -> None:
    data = _imbalanced()
    loss = make_loss(TrainConfig(class_weighting=True), data)
    torch.testing.assert_close(loss.weight, torch.tensor([8 / (2 * 6), 8 / (2 * 2)]))
    assert make_loss(TrainConfig(), data).weight is None


def test_label_smoothing_changes_the_loss() -> None:
    data = _imbalanced()
    logits, target = torch.tensor([[4.0, -4.0]]), torch.tensor([0])
    plain = make_loss(TrainConfig(), data)(logits, target)
    smooth = make_loss(TrainConfig(label_smoothing=0.2), data)(logits, target)
    assert smooth > plain


def test_multi_label_loss_smoothing_and_pos_weight(chest: MedData) -> None:
    logits = torch.full((2, 14), 6.0)
    target = torch.ones(2, 14)
    plain = make_loss(TrainConfig(), chest)(logits, target)
    assert make_loss(TrainConfig(label_smoothing=0.2), chest)(logits, target) > plain
    # positives are rarer than negatives (p=0.3), so weighting raises the loss on positives
    assert make_loss(TrainConfig(class_weighting=True), chest)(logits, target) > plain


# --- determinism, selection, early stop --------------------------------------------------------

def test_same_seed_same_run_different_seed_different(organa: MedData) -> None:
    cfg = {**FAST, "epochs": 2, "aug_hflip": 0.5, "aug_rotation": 10}
    a, b = fit({**cfg, "seed": 3}, organa), fit({**cfg, "seed": 3}, organa)
    assert _untimed(a.history) == _untimed(b.history)
    assert np.array_equal(a.val_scores, b.val_scores)
    assert np.array_equal(a.test_scores, b.test_scores)
    assert all(torch.equal(a.best_state[k], b.best_state[k]) for k in a.best_state)
    c = fit({**cfg, "seed": 4}, organa)
    assert not np.array_equal(a.test_scores, c.test_scores)
    assert _untimed(a.history) != _untimed(c.history)


def test_best_epoch_is_argmax_of_val_auc(organa: MedData) -> None:
    r = fit({**FAST, "optimizer": "sgd", "lr": 0.2, "epochs": 5, "seed": 1}, organa)
    aucs = [h["val_auc"] for h in r.history]
    assert r.best_epoch == int(np.argmax(aucs)) + 1
    # val/test are scored with the best epoch's weights: the same val AUC as that epoch
    assert r.val["auc"] == aucs[r.best_epoch - 1]


def test_kept_checkpoint_is_the_best_epochs_weights(organa: MedData) -> None:
    """Per-epoch snapshots of the live weights: the kept state is the best validation epoch's
    snapshot, not the last epoch's (a kept state that aliases the live weights would be the
    last), and val/test are scored with it. The run is chosen so the best epoch is not last."""
    held: list[torch.nn.Module] = []
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def keep_model(model: torch.nn.Module) -> torch.nn.Module:
        held.append(model)
        return model

    def snapshot(record: dict) -> None:
        snapshots[record["epoch"]] = {k: v.detach().clone()
                                      for k, v in held[0].state_dict().items()}

    cfg = {**FAST, "optimizer": "sgd", "lr": 0.2, "epochs": 5, "seed": 1}
    r = fit(cfg, organa, on_epoch=snapshot, wrap_model=keep_model)
    aucs = [h["val_auc"] for h in r.history]
    assert r.best_epoch == aucs.index(max(aucs)) + 1 < len(aucs)  # a best epoch before the last
    best, last = snapshots[r.best_epoch], snapshots[len(aucs)]
    assert any(not torch.equal(best[k], last[k]) for k in best)  # training moved on after it
    assert all(torch.equal(r.best_state[k], best[k]) for k in best)
    # the reported scores are the best epoch's: re-scored from its snapshot they agree
    model = create_model("cnn_small", organa.splits["test"].images.shape[1],
                         organa.info.n_classes, organa.size)
    model.load_state_dict(best)
    runner = Runner(TrainConfig.from_dict(cfg), organa, model)
    np.testing.assert_allclose(runner.scores(organa.splits["test"].images), r.test_scores,
                               atol=1e-6)
    assert r.val["auc"] == aucs[r.best_epoch - 1]


def test_weight_average_update_rule() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(net, decay=0.99)
    old = [p.detach().clone() for p in avg.model.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
        net[1].running_mean.fill_(7.0)
    avg.update()  # first step: decay warms up to min(0.99, 1/10) = 0.1
    for a, o, p in zip(avg.model.parameters(), old, net.parameters(), strict=True):
        torch.testing.assert_close(a, 0.1 * o + 0.9 * p)
        assert not a.requires_grad
    assert torch.equal(avg.model[1].running_mean, net[1].running_mean)  # buffers are copied
    for _ in range(10_000):
        avg.update()
    assert min(0.99, 10_001 / 10_010) == 0.99 and avg.steps == 10_001


def test_ema_scores_the_averaged_weights(organa: MedData) -> None:
    cfg = {**FAST, "epochs": 3, "seed": 2, "lr": 0.01}
    plain, ema = fit(cfg, organa), fit({**cfg, "ema": 0.9}, organa)
    _check_result(ema, organa, 3)
    assert not np.array_equal(plain.test_scores, ema.test_scores)
    # the kept weights are the average's: loading them reproduces the reported test scores
    test = organa.splits["test"]
    model = create_model("cnn_small", test.images.shape[1], organa.info.n_classes, organa.size)
    model.load_state_dict(ema.best_state)
    run = Runner(TrainConfig.from_dict(cfg), organa, model)
    np.testing.assert_allclose(run.scores(test.images), ema.test_scores, atol=1e-6)
    again = fit({**cfg, "ema": 0.9}, organa)
    assert np.array_equal(again.test_scores, ema.test_scores)
    assert all(torch.equal(again.best_state[k], ema.best_state[k]) for k in ema.best_state)
    assert any(not torch.equal(plain.best_state[k], ema.best_state[k]) for k in ema.best_state)


def test_on_epoch_true_stops_early(organa: MedData) -> None:
    seen = []

    def stop_at_2(record: dict) -> bool:
        seen.append(record)
        return record["epoch"] == 2

    r = fit({**FAST, "epochs": 5}, organa, on_epoch=stop_at_2)
    assert len(r.history) == 2 and r.stopped_early
    assert seen == r.history
    assert set(seen[0]) >= {"epoch", "train_loss", "val_auc", "val_acc", "lr", "epoch_s",
                            "images_per_s"}
    r = fit({**FAST, "epochs": 2}, organa, on_epoch=lambda rec: rec["epoch"] == 2)
    assert len(r.history) == 2 and not r.stopped_early  # stopping on the last epoch is no stop
    r = fit({**FAST, "epochs": 2}, organa, on_epoch=lambda rec: None)
    assert len(r.history) == 2 and not r.stopped_early


# --- configuration -----------------------------------------------------------------------------

def test_official_preset() -> None:
    c = TrainConfig.from_dict({"preset": "official"})
    assert (c.model, c.optimizer, c.lr, c.scheduler, c.batch_size, c.epochs, c.weight_decay) == \
        ("resnet18", "adam", 1e-3, "multistep", 128, 100, 0.0)
    assert TRAIN_PRESETS["official"]["model"] == "resnet18"
    c = TrainConfig.from_dict({"preset": "official", "epochs": 5, "dataset": "pneumoniamnist"})
    assert c.epochs == 5 and c.model == "resnet18" and c.dataset == "pneumoniamnist"


def test_config_round_trip_and_model_hp() -> None:
    c = TrainConfig.from_dict({"model": "resnet18_3d", "width": 0.5, "epochs": 3})
    assert c.model_hp == {"width": 0.5}
    d = c.to_dict()
    assert d["width"] == 0.5 and "model_hp" not in d
    assert TrainConfig.from_dict(d) == c
    # YAML reads `1e-3` as a string and a search may hand over numpy scalars
    c = TrainConfig.from_dict({"lr": "1e-3", "epochs": np.int64(4), "batch_size": 64.0})
    assert (c.lr, c.epochs, c.batch_size) == (1e-3, 4, 64)
    assert type(c.epochs) is int and type(c.batch_size) is int


BAD_CONFIGS = [
    ({"optimizer": "lion"}, "unknown optimizer 'lion'; choose one of: sgd, adam, adamw, nadam"),
    ({"scheduler": "step"}, "unknown scheduler 'step'"),
    ({"epochs": 0}, "epochs must be a positive integer, got 0"),
    ({"epochs": -2}, "epochs must be a positive integer"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
    ({"batch_size": -1}, "batch_size must be a positive integer, got -1"),
    ({"epochs": "ten"}, "epochs must be an integer, got 'ten'"),
    ({"epochs": 2.5}, "epochs must be an integer"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"lr": 0}, "lr must be positive"),
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"weight_decay": -0.1}, "weight_decay"),
    ({"model": "nosuchnet"}, "unknown model 'nosuchnet'; choose one of: .*cnn_small"),
    ({"model": "cnn_small", "widht": 2}, "widht: not a training option nor a hyperparameter of "
     "model 'cnn_small'.*width"),
    ({"model_hp": {"hidden": 8}}, "hidden: not a training option"),
    ({"preset": "fastest"}, "unknown preset 'fastest'; choose one of: official"),
    ({"amp": "maybe"}, "amp must be true or false"),
    ({"ema": 1.0}, "ema is a decay in \\[0, 1\\)"),
    ({"ema": -0.5}, "ema is a decay"),
]


@pytest.mark.parametrize(("cfg", "message"), BAD_CONFIGS, ids=[str(c) for c, _ in BAD_CONFIGS])
def test_bad_configs_are_user_errors(cfg: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        TrainConfig.from_dict(cfg)


def test_2d_model_on_3d_data_and_back(organ3d: MedData, organa: MedData) -> None:
    with pytest.raises(UserError, match="'cnn_small' is for 2D data but organmnist3d is 3D"):
        fit({**FAST, "epochs": 1}, organ3d)
    with pytest.raises(UserError, match="'resnet18_3d' is for 3D data but organamnist is 2D"):
        fit({**TINY_3D, "epochs": 1}, organa)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available; use --device cpu"):
            resolve_device("cuda")


def test_tiny_splits_train(organa: MedData) -> None:
    """A batch larger than the train split, and an eval batch smaller than val, both work."""
    tr = organa.splits["train"]
    small = MedData(organa.info, organa.size, {
        "train": Split(tr.images[:20], tr.labels[:20], tr.raw_labels[:20]),
        "val": organa.splits["val"], "test": organa.splits["test"]})
    r = fit({**FAST, "epochs": 1, "batch_size": 64, "eval_batch_size": 5}, small)
    _check_result(r, small, 1)


# --- real data ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_cnn_small_on_real_breastmnist(real_data_dir: Path) -> None:
    data = load_dataset("breastmnist", data_dir=real_data_dir)
    r = fit({"model": "cnn_small", "epochs": 10, "device": "cpu", "seed": 0}, data)
    _check_result(r, data, 10)
    assert r.test["auc"] > 0.75, r.test


@pytest.mark.slow
def test_breast_recipe_beats_published_resnet18_on_a_fresh_seed(real_data_dir: Path) -> None:
    """The val-selected BreastMNIST recipe (search_spaces/configs/breast_cnn.yaml): seeds
    100-102 gave test ACC 0.885, 0.885, 0.891 against the published ResNet-18 (28) 0.863. One
    fresh seed must stay clearly above the majority-class rate (0.731); 0.84 leaves room for
    thread-count numerics while catching a broken recipe (earlier ones: 0.76-0.83)."""
    import yaml

    cfg = yaml.safe_load((Path(__file__).parents[1] / "search_spaces/configs/breast_cnn.yaml")
                         .read_text())
    data = load_dataset("breastmnist", data_dir=real_data_dir)
    r = fit({**cfg, "seed": 100, "device": "cpu"}, data)
    _check_result(r, data, cfg["epochs"])
    assert r.test["acc"] >= 0.84 and r.test["auc"] >= 0.85, r.test


# --- test-time flip scores ---------------------------------------------------------------------

@pytest.mark.parametrize("fixture", ["organa", "organ3d"])
def test_hflip_scores_are_the_model_on_mirrored_images(request, fixture: str,
                                                       tmp_path: Path) -> None:
    """fit(hflip_scores=True) adds the kept model's probabilities of every val/test image
    mirrored along its last axis (2D and 3D), differing from the plain ones, and
    write_training_run stores them in scores.npz; without the flag there are none."""
    from bench.results import write_training_run

    data: MedData = request.getfixturevalue(fixture)
    cfg = {**(FAST if fixture == "organa" else TINY_3D), "epochs": 1, "seed": 2}
    r = fit(cfg, data, hflip_scores=True)
    model = create_model(cfg["model"], data.splits["test"].images.shape[1], data.info.n_classes,
                         data.size, **TrainConfig.from_dict(cfg).model_hp)
    model.load_state_dict(r.best_state)
    runner = Runner(TrainConfig.from_dict(cfg), data, model)
    for split in ("val", "test"):
        images = data.splits[split].images
        mirrored = runner.scores(torch.flip(images, dims=(-1,)))
        np.testing.assert_allclose(getattr(r, f"{split}_scores_hflip"), mirrored, atol=1e-6)
        assert not np.allclose(getattr(r, f"{split}_scores_hflip"),
                               getattr(r, f"{split}_scores"))
    out = write_training_run(tmp_path / "run", TrainConfig.from_dict(cfg).to_dict(), data.info,
                             data.size, r, run="x")
    with np.load(out / "scores.npz") as npz:
        np.testing.assert_array_equal(npz["test_scores_hflip"], r.test_scores_hflip)
    plain = fit(cfg, data)
    assert plain.val_scores_hflip is None and plain.test_scores_hflip is None


def test_epoch_scores_are_every_epochs_scored_weights(organa: MedData) -> None:
    """fit(epoch_scores=True) keeps one (val, test) pair per epoch from the weights that are
    scored (here the EMA average), and the kept epoch's pair is exactly what fit returns;
    without the flag there are none (checkpoint-rule studies re-choose the epoch from them)."""
    from bench.metrics import evaluate

    cfg = {**FAST, "epochs": 3, "seed": 4, "ema": 0.9}
    r = fit(cfg, organa, epoch_scores=True)
    assert r.epoch_scores is not None and len(r.epoch_scores) == len(r.history) == 3
    val, test = r.epoch_scores[r.best_epoch - 1]
    np.testing.assert_allclose(val, r.val_scores, atol=1e-6)
    np.testing.assert_allclose(test, r.test_scores, atol=1e-6)
    for (v, _), record in zip(r.epoch_scores, r.history, strict=True):
        assert evaluate(r.val_labels, v, organa.info.task)["auc"] == \
            pytest.approx(record["val_auc"])
    assert not np.allclose(r.epoch_scores[0][1], r.epoch_scores[-1][1])
    assert fit(cfg, organa).epoch_scores is None


def test_checkpoint_rule_study_chooses_epochs_from_validation_only() -> None:
    """scripts/checkpoint_rule_study.py: `best_auc` is fit's own choice (the first best epoch);
    `significant` moves on only for a gain beyond validation noise; `within_noise` goes back to
    the first epoch level with the best; and `summarise` scores each seed at its kept epoch, so
    scrambling test scores changes test numbers but never an epoch."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "checkpoint_rule_study",
        Path(__file__).resolve().parent.parent / "scripts" / "checkpoint_rule_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)  # type: ignore[union-attr]
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)

    def epoch(separation: float) -> np.ndarray:
        p1 = 1 / (1 + np.exp(-(separation * (2 * y - 1) + rng.normal(0, 1, y.size))))
        return np.stack([1 - p1, p1], axis=1)

    base = epoch(0.2)
    tiny = base.copy()
    tiny[y == 1, 1] += 1e-4  # the same ranking, a hair better on AUC only
    tiny[:, 0] = 1 - tiny[:, 1]
    strong = epoch(3.0)
    assert study.choose_epoch("best_auc", y, [base, strong, strong.copy()], "binary-class") == 1
    assert study.choose_epoch("significant", y, [base, tiny], "binary-class") == 0
    assert study.choose_epoch("significant", y, [base, strong], "binary-class") == 1
    assert study.choose_epoch("within_noise", y, [base, strong, strong], "binary-class") == 1
    assert study.choose_epoch("within_noise", y, [strong, base, strong], "binary-class") == 0

    y_test = np.repeat([0, 1], 50)
    runs = [{"split": "s", "dataset": "breastmnist", "family": "cnn", "seed": s,
             "task": "binary-class", "val_labels": y, "test_labels": y_test,
             "epoch_scores": [(v, rng.dirichlet([1, 1], y_test.size))
                              for v in (base, strong, tiny)]} for s in (1, 2)]
    rows = study.summarise(runs)
    for r in runs:
        r["epoch_scores"] = [(v, rng.dirichlet([1, 1], y_test.size))
                             for v, _ in r["epoch_scores"]]
    again = study.summarise(runs)
    assert [r["kept_epochs"] for r in rows] == [r["kept_epochs"] for r in again]
    assert {r["rule"]: r["kept_epochs"] for r in rows}["best_auc"] == [2, 2]
    assert [r["test_acc"] for r in rows] != [r["test_acc"] for r in again]
    verdict = study.verdict(rows, {"s"})
    assert {v["rule"] for v in verdict} == {"significant", "within_noise"}
    assert all(sum(v["wtl_ens_test_acc"]) == 1 for v in verdict)

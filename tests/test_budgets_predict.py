"""Per-family search budgets, and `medbench predict` on a model from a run's final phase."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.data import load_dataset, write_synthetic
from bench.errors import UserError
from bench.results import FINAL_COLUMNS, write_table, write_training_run
from bench.spaces import build_spec
from bench.train import TrainConfig, fit

BASE = {"name": "b", "datasets": ["breastmnist"], "families": ["cnn_small", "resnet18"],
        "num_samples": 6, "max_epochs": 10, "grace_period": 2}


def test_budget_overrides_only_the_named_family():
    spec = build_spec({**BASE, "budgets": {"resnet18": {"num_samples": 2, "max_epochs": 4}}})
    assert spec.budget("cnn_small") == {"num_samples": 6, "max_epochs": 10, "grace_period": 2}
    assert spec.budget("resnet18") == {"num_samples": 2, "max_epochs": 4, "grace_period": 2}


@pytest.mark.parametrize("budgets, text", [
    ({"nosuchnet": {"num_samples": 2}}, "budgets names unknown family 'nosuchnet'"),
    ({"resnet18": {"epochs": 2}}, "budgets must map families"),
    ({"resnet18": {"num_samples": 0}}, "num_samples must be at least 1 (budget of resnet18)"),
    ({"resnet18": {"max_epochs": 1}}, "grace_period 2 is above max_epochs 1 (budget of resnet18)"),
])
def test_bad_budgets_are_user_errors(budgets, text):
    with pytest.raises(UserError, match=text.replace("(", r"\(").replace(")", r"\)")):
        build_spec({**BASE, "budgets": budgets})


def test_predict_uses_the_final_model_and_matches_its_scores(tmp_path):
    from bench.predict import predict

    data_dir = tmp_path / "data"
    write_synthetic("breastmnist", data_dir, n=(64, 32, 32))
    data = load_dataset("breastmnist", data_dir=data_dir, verify_md5=False)
    conf = TrainConfig.from_dict({"dataset": "breastmnist", "model": "cnn_small", "epochs": 2,
                                  "seed": 3})
    result = fit(conf, data)
    run = tmp_path / "run"
    rel = "final/breastmnist/cnn_small/seed3"
    write_training_run(run / rel, conf.to_dict(), data.info, 28, result, run="cnn_small-seed3")
    write_table(run / "final.parquet", [{**result.summary(), "dataset": "breastmnist",
                                         "family": "cnn_small", "seed": 3, "size": 28,
                                         "run_dir": rel, "status": "ok"}], FINAL_COLUMNS)
    images = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(np.load(data_dir / "breastmnist.npz")["test_images"][i]).save(path)
        images.append(path)

    m, rows = predict(run, "breastmnist", images)
    assert m.path == run / rel and m.entry.name == "cnn_small"  # one seed: the entry is it
    for i, row in enumerate(rows):
        assert row["probabilities"] == pytest.approx(result.test_scores[i].tolist(), abs=1e-3)
        assert row["class"] == int(np.argmax(result.test_scores[i]))
        assert row["label"] == data.info.labels[str(row["class"])]
    with pytest.raises(UserError, match="no finished final model for pneumoniamnist"):
        predict(run, "pneumoniamnist", images)

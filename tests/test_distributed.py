"""Ray Train inside Tune: a family marked `distributed` trains each trial as a 2-worker DDP job
(gloo on CPU) and still reports per-epoch validation metrics to Tune."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from bench.data import write_synthetic

pytestmark = pytest.mark.slow


def test_distributed_trial_trains_with_two_workers(tmp_path):
    from bench.experiment import execute
    from bench.search import init_ray
    from bench.spaces import load_spec

    data = tmp_path / "data"
    write_synthetic("breastmnist", data, n=(256, 64, 64))
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "dist", "datasets": ["breastmnist"], "families": ["cnn_small"],
        "num_samples": 1, "scheduler": "fifo", "max_epochs": 4, "final_seeds": 1,
        "verify_md5": False, "distributed": {"cnn_small": 2},
        "overrides": {"cnn_small": {"optimizer": "adam", "lr": 3e-3, "scheduler": "constant",
                                    "batch_size": 32, "aug_rotation": 0.0, "aug_zoom": 0.0,
                                    "aug_shift": 0.0, "label_smoothing": 0.0}},
    }))
    spec = load_spec(spec_file)
    init_ray(None, num_cpus=2)
    run_dir = tmp_path / "run"
    execute(spec, run_dir, data_dir=data, wandb=False, echo=lambda _: None)

    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 1 and trials.status[0] == "ok"
    history = json.loads(trials.history[0])
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]  # every epoch reached Tune
    assert trials.best_val_auc[0] > 0.9  # the two workers really trained the shared model
    assert trials.device_s[0] == pytest.approx(2 * trials.wall_s[0])  # two workers' cost
    # the TorchTrainer run of this trial is stored beside the Tune experiment
    assert any((run_dir / "tune" / "train").iterdir())

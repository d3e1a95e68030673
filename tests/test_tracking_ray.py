"""W&B with real Ray Tune: every search trial (stopped by ASHA or run to the end) and every final
run leaves a complete offline W&B run, and resuming a finished run makes no second run.

One `medbench run` in a subprocess (its own Ray and wandb service), then the same command again
(a resume), on tiny synthetic data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from wandb_reader import read_all

from bench.tracking import run_id

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SPEC = {"name": "wb", "datasets": ["breastmnist"], "families": ["mlp"], "searcher": "random",
        "num_samples": 4, "scheduler": "asha", "grace_period": 1, "max_epochs": 3,
        "reduction_factor": 2, "final_seeds": 1, "resources": {"cpu": 1, "gpu": 0}}


def medbench_run(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"),
               WANDB_CACHE_DIR=str(tmp_path / "wandb-cache"), OMP_NUM_THREADS="1",
               WANDB_DATA_DIR=str(tmp_path / "wandb-data"))
    return subprocess.run(
        [sys.executable, "-m", "bench.cli", "run", "--spec", str(tmp_path / "spec.yaml"),
         "--data-dir", str(tmp_path / "data"), "--no-verify", "--out", str(tmp_path / "run")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_every_trial_and_final_run_is_complete_and_resume_adds_none(tmp_path):
    from bench.data import write_synthetic

    write_synthetic("breastmnist", tmp_path / "data", n=(64, 32, 32), seed=0)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC))
    first = medbench_run(tmp_path)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    run = tmp_path / "run"
    trials = pd.read_parquet(run / "trials.parquet")
    finals = pd.read_parquet(run / "final.parquet")
    assert (trials.status == "ok").all() and len(trials) == 4

    records = read_all(run)
    by_kind = {k: [r for r in records if r.job_type == k] for k in ("search", "final")}
    assert len(by_kind["search"]) == len(trials)
    assert len(by_kind["final"]) == len(finals)
    for rec in by_kind["search"] + by_kind["final"]:
        assert rec.complete and rec.exit_code == 0, rec.name
        assert rec.config.get("dataset") == "breastmnist", rec.name
        assert len(rec.history) >= 1 and "val_auc" in rec.history[0], rec.name
        assert rec.group == "wb/breastmnist/mlp" and "wb" in rec.tags
    # each search run belongs to one trial, its id derived from the trial id (resumable)
    epochs = {r.run_id: len(r.history) for r in by_kind["search"]}
    assert set(epochs) == {run_id("wb", t) for t in trials.trial_id}
    for t in trials.itertuples():
        assert epochs[run_id("wb", t.trial_id)] == t.epochs_run
    (board,) = [r for r in records if r.job_type == "leaderboard"]
    assert board.name == "wb-leaderboard"
    assert json.loads((run / "meta.json").read_text())["wandb_mode"] == "offline"

    again = medbench_run(tmp_path)  # resume a finished run: nothing trains again
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    rerun = [r for r in read_all(run) if r.job_type != "leaderboard"]
    assert sorted(r.run_id for r in rerun) == sorted(
        r.run_id for r in by_kind["search"] + by_kind["final"])

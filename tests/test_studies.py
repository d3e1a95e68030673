"""Tests for bench.studies: a run's trials.parquet becomes one persisted Optuna study per
(dataset, family) that optuna.load_study reloads, with the run's search-space distributions,
trials in finish order, ASHA-stopped trials PRUNED and failed ones FAIL."""

from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest
from fake_run import make_run
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from bench.results import TRIAL_COLUMNS, read_table, write_table
from bench.studies import (
    build_studies,
    equal_budget_study,
    load_studies,
    param_importances,
    storage_url,
)


@pytest.fixture()
def run(tmp_path):
    """A fake run with real families whose trials sampled real hyperparameters, one of them
    stopped early by ASHA, and finish times that disagree with the row order."""
    run = make_run(tmp_path, "run-s", strengths={"cnn_small": 3.0, "mlp": 1.2},
                   datasets=("breastmnist",))
    trials = read_table(run / "trials.parquet")
    rows = []
    for i, r in enumerate(trials.to_dict("records")):
        cfg = json.loads(r["config"])
        cfg.update(epochs=8, dropout=0.1 * (i % 4), optimizer=["adam", "sgd"][i % 2])
        if r["family"] == "mlp":
            cfg["layers"] = 1 + i % 3
            cfg["lr"] = max(cfg["lr"], 1e-4)  # inside the space; cnn_small keeps a 1e-5
        r["config"] = cfg
        r["history"] = json.loads(r["history"]) if r["history"] else []
        r["finished_at"] = 1000.0 - i  # the last row finished first
        if r["trial_id"] == "mlp_00001":  # stopped by ASHA after 2 of 8 epochs
            r["history"] = r["history"][:2]
            r["epochs_run"] = 2
            r["best_val_auc"] = max(h["val_auc"] for h in r["history"])
        rows.append(r)
    write_table(run / "trials.parquet", rows, TRIAL_COLUMNS)
    return run


def test_persisted_study_reloads_with_the_runs_search_space(run):
    db = build_studies(run)
    assert db == run / "studies.db"
    url = storage_url(db)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage=url))
    assert names == ["breastmnist__cnn_small", "breastmnist__mlp"]
    study = optuna.load_study(study_name="breastmnist__mlp", storage=url)
    trials = read_table(run / "trials.parquet")
    mine = trials[trials["family"] == "mlp"].sort_values("finished_at")
    assert [t.user_attrs["trial_id"] for t in study.trials] == list(mine["trial_id"])
    states = {t.user_attrs["trial_id"]: t.state for t in study.trials}
    assert states == {"mlp_00000": TrialState.COMPLETE, "mlp_00001": TrialState.PRUNED,
                      "mlp_00002": TrialState.COMPLETE, "mlp_00003": TrialState.FAIL}
    by_id = {t.user_attrs["trial_id"]: t for t in study.trials}
    for r in mine.itertuples():
        t = by_id[r.trial_id]
        hist = json.loads(r.history) if r.history else []
        assert t.intermediate_values == {h["epoch"]: pytest.approx(h["val_auc"]) for h in hist}
        if r.status == "ok":
            assert t.value == pytest.approx(r.best_val_auc)
    t = by_id["mlp_00000"]
    # distributions from the family's space (common.yaml + mlp.yaml), not from the values seen
    assert t.distributions["lr"] == FloatDistribution(1e-4, 3e-2, log=True)
    assert t.distributions["layers"] == IntDistribution(1, 3)
    assert t.distributions["optimizer"] == CategoricalDistribution(["adam", "adamw", "sgd"])
    assert "epochs" not in t.params and "dataset" not in t.params  # constants are not searched
    assert study.best_trial.user_attrs["trial_id"] in ("mlp_00000", "mlp_00002")
    cnn = optuna.load_study(study_name="breastmnist__cnn_small", storage=url)
    # a value outside today's space (the YAML may have narrowed since the run) widens it
    assert cnn.trials[0].distributions["lr"] == FloatDistribution(1e-5, 3e-2, log=True)


def test_rebuild_replaces_the_file_and_load_studies_reads_all(run):
    first = build_studies(run)
    again = build_studies(run)  # rebuilt whole, not appended to
    studies = load_studies(again)
    assert first == again
    assert {n: len(s.trials) for n, s in studies.items()} == {"breastmnist__cnn_small": 4,
                                                              "breastmnist__mlp": 4}
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


def test_no_trials_no_study(tmp_path):
    run = make_run(tmp_path, "run-e", strengths={"mlp": 1.0}, datasets=("breastmnist",))
    (run / "trials.parquet").unlink()
    assert build_studies(run) is None and not (run / "studies.db").exists()


def test_equal_budget_study_compares_all_trials_at_the_shortest_run(run):
    study = load_studies(build_studies(run))["breastmnist__mlp"]
    copy, rung = equal_budget_study(study)
    assert rung == 2  # the ASHA-stopped trial ran 2 epochs
    assert len(copy.trials) == 3  # the failed trial has no curve
    for t in copy.trials:
        orig = next(o for o in study.trials if o.user_attrs["trial_id"] == t.user_attrs[
            "trial_id"])
        steps = sorted(orig.intermediate_values)[:2]
        assert t.value == pytest.approx(max(orig.intermediate_values[s] for s in steps))
    imp = param_importances(copy)
    assert set(imp) <= {"lr", "dropout", "optimizer", "layers"} and imp
    assert sum(imp.values()) == pytest.approx(1.0)


def test_to_optuna_covers_every_space_kind():
    from bench.spaces import Param

    def to_distribution(p: dict):
        return Param.parse("x", p, "t").to_optuna()

    assert to_distribution({"value": 3}) is None
    assert to_distribution({"values": [1, 2]}) == CategoricalDistribution([1, 2])
    assert to_distribution({"distribution": "int_log_uniform", "min": 2.0, "max": 64.0}) == \
        IntDistribution(2, 64, log=True)
    assert to_distribution({"distribution": "uniform", "min": 0.0, "max": 0.5}) == \
        FloatDistribution(0.0, 0.5)
    assert to_distribution({"distribution": "log_uniform", "min": 1e-4, "max": 1e-2}) == \
        FloatDistribution(1e-4, 1e-2, log=True)


def test_finish_order_falls_back_to_row_order():
    from bench.studies import finish_order

    df = pd.DataFrame({"x": [1, 2, 3], "finished_at": [None, None, None]})
    assert finish_order(df)["x"].tolist() == [1, 2, 3]
    df["finished_at"] = [3.0, None, 1.0]
    assert finish_order(df)["x"].tolist() == [3, 1, 2]

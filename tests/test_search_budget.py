"""Compute budgets, the leave-one-dataset-out portfolio start, and the selection rule.

Unit tests on constructed rows, plus one real Ray Tune run on tiny synthetic data that checks
the wiring: portfolio points evaluated first, selection re-runs, budget accounting.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.budget import (
    SEARCH_FRACTION,
    Fidelity,
    accounting,
    epochs_for,
    final_epochs,
    full_run_costs,
    plan_rest,
    search_wall_s,
)
from bench.data import all_flags
from bench.portfolio import load_entries, start_points
from bench.selection import choose_configs, pick_entries, score, top_candidates
from bench.spaces import build_spec, load_family_space

# --- budgets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("images", "n_train", "lo", "hi", "want"), [
    (40_000, 546, 1, 1000, 74),     # BreastMNIST: many epochs of a tiny set
    (40_000, 4_708, 8, 1000, 9),    # PneumoniaMNIST
    (40_000, 165_466, 8, 1000, 8),  # TissueMNIST: at least min_epochs
    (40_000, 100, 1, 50, 50),       # capped at max_epochs
])
def test_epochs_for_turns_images_into_whole_epochs(images, n_train, lo, hi, want):
    assert epochs_for(images, n_train, lo, hi) == want


@pytest.mark.parametrize(("trial", "fidelity", "want"), [
    (9, {"trial_images": 1, "final_factor": 2, "max_epochs": 100}, 18),
    (74, {"trial_images": 1, "final_factor": 2, "max_epochs": 100}, 100),  # capped
    (9, {"trial_images": 1}, 9),                      # no factor: as long as a trial
    (9, "epochs", 9),                                 # a spec in epochs: as long as a trial
    (120, {"trial_images": 1, "final_factor": 2, "max_epochs": 100}, 120),  # never shorter
])
def test_final_seeds_train_final_factor_times_a_trial(trial, fidelity, want):
    f = Fidelity.in_epochs(9, 3) if fidelity == "epochs" else Fidelity(**fidelity)
    assert final_epochs(trial, f) == want


def test_search_phase_is_a_share_of_the_dataset_budget():
    assert search_wall_s(600) == pytest.approx(600 * SEARCH_FRACTION)
    assert search_wall_s(0) == 0.0


def test_budget_accounting_per_dataset_and_phase():
    spec = build_spec({"name": "t", "datasets": ["breastmnist", "retinamnist"],
                       "families": ["mlp"], "budget_s": 100})
    tables = {"trials": [{"dataset": "breastmnist", "device_s": 10.0},
                         {"dataset": "retinamnist", "device_s": 4.0},
                         {"dataset": "breastmnist", "device_s": None}],
              "selection": [{"dataset": "breastmnist", "device_s": 3.0}],
              "final": [{"dataset": "breastmnist", "device_s": 5.0},
                        {"dataset": "retinamnist", "device_s": 1.5}]}
    acc = accounting(spec, tables, slots=2, run_wall_s=42.0)
    b = acc["datasets"]["breastmnist"]
    assert (b["search_device_s"], b["selection_device_s"], b["final_device_s"]) == (10, 3, 5)
    assert b["spent_device_s"] == 18 and b["planned_device_s"] == 200
    assert acc["datasets"]["retinamnist"]["spent_device_s"] == 5.5


def _timed(family, device_s, epochs_run, epochs=4, dataset="pathmnist", status="ok"):
    return {"dataset": dataset, "family": family, "status": status, "device_s": device_s,
            "epochs_run": epochs_run, "config": {"epochs": epochs}}


def test_full_run_costs_from_the_median_cost_per_epoch_of_the_dataset_trials():
    trials = [_timed("cnn_small", 10.0, 1), _timed("cnn_small", 40.0, 4),
              _timed("cnn_small", 90.0, 2),  # 10, 10 and 45 s per epoch: median 10
              _timed("cnn_small", 500.0, 1, status="failed"),
              _timed("cnn_small", 500.0, 1, dataset="breastmnist"),
              _timed("mlp", 3.0, 1), _timed("mlp", 0.0, 0)]
    costs = full_run_costs(trials, "pathmnist",
                           Fidelity(trial_images=1, final_factor=2, max_epochs=100))
    assert costs["cnn_small"] == {"rerun_s": 40.0, "final_s": 80.0}
    assert costs["mlp"] == {"rerun_s": 12.0, "final_s": 24.0}
    assert full_run_costs(trials, "retinamnist", Fidelity.in_epochs(4, 1)) == {}


COSTS = {"cnn_small": {"rerun_s": 40.0, "final_s": 40.0}, "mlp": {"rerun_s": 10.0,
                                                               "final_s": 10.0}}


@pytest.mark.parametrize(("remaining", "want"), [
    (1000.0, (2, 2, 3)),  # 4 re-runs (200) + 3 seeds (150): the spec as written
    (300.0, (2, 1, 3)),   # 4 re-runs do not fit beside 3 seeds: one seed per candidate
    (200.0, (0, 0, 3)),   # not even 2 re-runs: no selection, the best trial is kept
    (120.0, (0, 0, 2)),   # fewer final seeds
    (10.0, (0, 0, 1)),    # never fewer than one
])
def test_plan_rest_pays_final_seeds_first_then_the_largest_selection(remaining, want):
    plan = plan_rest(remaining, COSTS, top_k=2, seeds=2, final_seeds=3)
    assert (plan["top_k"], plan["seeds"], plan["final_seeds"]) == want
    assert plan["estimated_device_s"] == pytest.approx(
        plan["top_k"] * plan["seeds"] * 50 + plan["final_seeds"] * 50)
    assert plan["estimated_device_s"] <= max(remaining, 50)


def test_plan_rest_prefers_more_re_runs_then_more_seeds():
    plan = plan_rest(50 * 4 + 50 * 3, COSTS, top_k=3, seeds=2, final_seeds=3)
    assert (plan["top_k"], plan["seeds"]) == (2, 2)  # 4 re-runs fit, 6 do not
    plan = plan_rest(50 * 3 + 50 * 3, COSTS, top_k=3, seeds=2, final_seeds=3)
    assert (plan["top_k"], plan["seeds"]) == (3, 1)


def test_rest_plans_cost_the_final_seeds_from_the_selection_re_runs():
    from bench.search import rest_plans

    spec = build_spec({"name": "t", "datasets": ["pathmnist"], "families": ["cnn_small"],
                       "budget_s": 100, "selection": {"top_k": 2, "seeds": 2},
                       "final_seeds": 3})
    trials = [_timed("cnn_small", 20.0, 4)]  # 5 s per epoch: a 4-epoch run costs 20
    plan = rest_plans(spec, slots=2, trials=trials)["pathmnist"]  # 180 left
    assert (plan["top_k"], plan["seeds"], plan["final_seeds"]) == (2, 2, 3)
    # the re-runs turned out to cost 40 each (a loaded box): 180 - 80 = 100 left -> 2 seeds
    reruns = [_timed("cnn_small", 40.0, 4), _timed("cnn_small", 40.0, 4)]
    plan = rest_plans(spec, slots=2, trials=trials, spent_before=reruns)["pathmnist"]
    assert plan["final_seeds"] == 2
    assert rest_plans(build_spec({"name": "t", "datasets": ["pathmnist"],
                                  "families": ["cnn_small"]}), 2, trials) == {}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("fidelity", {"min_epochs": 2}, "trial_images"),
    ("fidelity", {"trial_images": 0}, "trial_images"),
    ("fidelity", {"trial_images": 100, "min_epochs": 5, "max_epochs": 2}, "max_epochs"),
    ("fidelity", {"trial_images": 100, "grace_fraction": 2}, "grace_fraction"),
    ("fidelity", {"trial_images": 100, "epochs": 3}, "fidelity takes"),
    ("fidelity", {"trial_images": 100, "final_factor": 0.5}, "final_factor"),
    ("budget_s", -1, "budget_s"),
    ("budget_s", "ten", "budget_s"),
    ("portfolio", -1, "portfolio"),
    ("portfolio", True, "portfolio"),
    ("selection", {"top_k": 0}, "selection.top_k"),
    ("selection", {"k": 2}, "selection takes"),
    ("selection", [1], "mapping"),
])
def test_bad_budget_fields_are_refused_before_any_work(field, value, message):
    from bench.errors import UserError

    with pytest.raises(UserError, match=message):
        build_spec({"name": "t", "datasets": ["breastmnist"], "families": ["mlp"],
                    field: value})


def test_quick_preset_budget_is_compute_not_epochs():
    from bench.spaces import load_spec

    spec = load_spec(preset="quick")
    assert spec.fidelity["trial_images"] > 0 and spec.budget_s > 0
    assert spec.trial_epochs("cnn_small", 546) > 3 * spec.trial_epochs("cnn_small", 4708)
    assert spec.portfolio > 0 and spec.selection["top_k"] >= 2


# --- portfolio -------------------------------------------------------------------------------

ENTRIES = [
    {"id": "a", "family": "mlp", "found_on": ["retinamnist"],
     "config": {"hidden": 1024, "layers": 2, "lr": 0.002}},
    {"id": "b", "family": "mlp", "found_on": ["breastmnist", "retinamnist"],
     "config": {"hidden": 256, "layers": 1, "lr": 0.001}},
    {"id": "c", "family": "mlp", "found_on": ["pneumoniamnist"],
     "config": {"hidden": 333, "layers": 1}},  # 333 is not a choice of the space
    {"id": "d", "family": "cnn_small", "found_on": ["retinamnist"], "config": {"width": 2.0}},
]


def test_start_points_never_come_from_the_searched_dataset():
    space = load_family_space("mlp")
    for flag in ("breastmnist", "retinamnist", "pneumoniamnist", "dermamnist"):
        points = start_points(flag, "mlp", space, k=5, entries=ENTRIES)
        allowed = [e for e in ENTRIES if e["family"] == "mlp" and flag not in e["found_on"]]
        for p in points:
            src = [e for e in allowed if all(p[k] == v for k, v in e["config"].items())]
            assert src, f"{flag}: start point {p} is not from an allowed entry"
    assert start_points("retinamnist", "mlp", space, 5, ENTRIES) == []
    bp = start_points("breastmnist", "mlp", space, 5, ENTRIES)
    assert [p["hidden"] for p in bp] == [1024]  # b names breastmnist; c lies outside the space


def test_start_points_hold_every_searched_parameter_inside_the_space():
    space = load_family_space("mlp")
    (p,) = start_points("breastmnist", "mlp", space, 5, ENTRIES)
    searched = {n: d for n, d in space.items() if d.searched}
    assert set(p) == set(searched)
    assert all(searched[n].contains(v) for n, v in p.items())
    assert p["lr"] == 0.002 and p["label_smoothing"] == 0.0  # unset: the trainer's default
    # entries found on more datasets come first
    more = [*ENTRIES, {"id": "e", "family": "mlp", "found_on": ["dermamnist", "octmnist"],
                       "config": {"hidden": 512, "layers": 3}}]
    assert start_points("breastmnist", "mlp", space, 5, more)[0]["hidden"] == 512
    assert start_points("breastmnist", "mlp", space, 1, more)[0]["layers"] == 3
    assert start_points("breastmnist", "mlp", space, 0, more) == []


def test_shipped_portfolio_is_well_formed_and_leaves_each_dataset_out():
    entries = load_entries()
    assert entries, "bench/search_spaces/portfolio.yaml is empty"
    flags = set(all_flags())
    for e in entries:
        assert set(e["found_on"]) <= flags and e["found_on"]
        space = load_family_space(e["family"])
        for flag in e["found_on"]:
            assert e["config"] not in [
                {k: p[k] for k in e["config"] if k in p}
                for p in start_points(flag, e["family"], space, 50, [e])]
    # every 2D subset that has a real file here gets at least one start point per family
    for flag in ("breastmnist", "pneumoniamnist", "retinamnist", "dermamnist"):
        assert start_points(flag, "cnn_small", load_family_space("cnn_small"), 2)
    # 3D: entries chosen on 3D subsets only, and every 3D subset gets a start point
    from bench.data import dataset_info
    from bench.models import get_entry

    for e in entries:
        dims = {dataset_info(f).dims for f in e["found_on"]}
        assert dims == {get_entry(e["family"]).dims}, e["id"]
    for flag in ("adrenalmnist3d", "vesselmnist3d", "organmnist3d"):
        assert start_points(flag, "cnn3d_small", load_family_space("cnn3d_small"), 2)


# --- selection -------------------------------------------------------------------------------

def _trial(tid, auc, acc, epochs_run=10, family="mlp", dataset="breastmnist", **cfg):
    return {"dataset": dataset, "family": family, "trial_id": tid, "status": "ok",
            "best_val_auc": auc, "best_val_acc": acc, "epochs_run": epochs_run,
            "config": {"model": family, "epochs": 10, "tag": tid, **cfg}}


def test_top_candidates_prefer_full_fidelity_then_score():
    trials = [_trial("t1", 0.99, 0.99, epochs_run=3),  # ASHA-stopped early: ranked last
              _trial("t2", 0.90, 0.80), _trial("t3", 0.95, 0.85),
              {**_trial("t4", 0.99, 0.99), "status": "failed"},
              _trial("t5", 0.5, 0.5, dataset="retinamnist")]
    top = top_candidates(trials, 2)
    assert [t["trial_id"] for t in top[("breastmnist", "mlp")]] == ["t3", "t2"]
    assert [t["trial_id"] for t in top[("retinamnist", "mlp")]] == ["t5"]


def test_choose_configs_by_the_mean_over_seeds_and_never_reads_test():
    cands = {("breastmnist", "mlp"): [_trial("lucky", 0.99, 0.95), _trial("steady", 0.93, 0.9)]}
    reruns = [{"candidate": "lucky", "val_auc": 0.80, "val_acc": 0.75, "test_auc": 0.99},
              {"candidate": "lucky", "val_auc": 0.82, "val_acc": 0.76, "test_auc": 0.99},
              {"candidate": "steady", "val_auc": 0.92, "val_acc": 0.90, "test_auc": 0.10},
              {"candidate": "steady", "val_auc": 0.93, "val_acc": 0.89, "test_auc": 0.10},
              {"candidate": "steady", "val_auc": None, "val_acc": None, "status": "failed"}]
    chosen = choose_configs(cands, reruns)
    assert chosen[("breastmnist", "mlp")]["tag"] == "steady"
    flipped = [{**r, "test_auc": 1 - (r.get("test_auc") or 0), "test_acc": 0.0}
               for r in reruns]
    assert choose_configs(cands, flipped) == chosen
    # without re-runs the single trial's score decides
    assert choose_configs(cands, [])[("breastmnist", "mlp")]["tag"] == "lucky"


def test_pick_entries_by_validation_score():
    rows = [{"dataset": "breastmnist", "entry": "mlp", "val_score": score(0.9, 0.8)},
            {"dataset": "breastmnist", "entry": "cnn_small ×3 ens", "val_score": 0.9},
            {"dataset": "retinamnist", "entry": "mlp", "val_score": 0.1}]
    assert pick_entries(rows) == {"breastmnist": "cnn_small ×3 ens", "retinamnist": "mlp"}


# --- the wiring, in a real Ray Tune run --------------------------------------------------------

@pytest.mark.slow
def test_budgeted_search_starts_from_the_portfolio_selects_and_accounts(tmp_path, monkeypatch):
    import ray

    from bench import portfolio
    from bench.data import write_synthetic
    from bench.experiment import execute
    from bench.search import init_ray

    data = tmp_path / "data"
    write_synthetic("breastmnist", data, n=(64, 32, 32), seed=0)
    write_synthetic("retinamnist", data, n=(64, 32, 32), seed=1)
    pf = tmp_path / "portfolio.yaml"
    pf.write_text(yaml.safe_dump({"entries": [
        {"id": "ok", "family": "mlp", "found_on": ["retinamnist"],
         "config": {"hidden": 1024, "layers": 3, "lr": 0.0123, "batch_size": 64}},
        {"id": "own", "family": "mlp", "found_on": ["breastmnist"],
         "config": {"hidden": 256, "layers": 1, "lr": 0.0321, "batch_size": 64}}]}))
    monkeypatch.setattr(portfolio, "portfolio_file", lambda: pf)
    from bench import search as search_mod

    planned = search_mod.rest_plans

    def retina_cannot_pay(*args, **kwargs):  # as if a retina run cost more than is left
        plans = planned(*args, **kwargs)
        assert set(plans) == {"breastmnist", "retinamnist"}
        plans["retinamnist"] = {**plans["retinamnist"], "top_k": 0, "seeds": 0,
                                "final_seeds": 1}
        return plans

    monkeypatch.setattr(search_mod, "rest_plans", retina_cannot_pay)
    spec = build_spec({
        "name": "budgeted", "datasets": ["breastmnist", "retinamnist"], "families": ["mlp"],
        "searcher": "optuna", "num_samples": 3, "scheduler": "asha", "verify_md5": False,
        "fidelity": {"trial_images": 128, "min_epochs": 1, "grace_fraction": 0.5,
                     "final_factor": 3, "max_epochs": 5},
        "budget_s": 600, "portfolio": 2, "selection": {"top_k": 2, "seeds": 1},
        "final_seeds": 2, "resources": {"cpu": 1, "gpu": 0}})
    init_ray(None, num_cpus=2)
    try:
        lines: list[str] = []
        meta = execute(spec, tmp_path / "run", data_dir=data, wandb=False, num_cpus=2,
                       echo=lines.append)
    finally:
        ray.shutdown()
    run = tmp_path / "run"
    both = pd.read_parquet(run / "trials.parquet")
    # a budget runs one dataset's search at a time: every breast trial ends before any
    # retina trial starts (start = finish - wall)
    started = both["finished_at"] - both["wall_s"]
    assert both.loc[both.dataset == "breastmnist", "finished_at"].max() \
        <= started[both.dataset == "retinamnist"].min() + 1
    trials = both[both.dataset == "breastmnist"]
    configs = [yaml.safe_load(c) if isinstance(c, str) else c for c in trials["config"]]
    configs = [c if isinstance(c, dict) else __import__("json").loads(c) for c in configs]
    assert configs[0]["lr"] == 0.0123 and configs[0]["hidden"] == 1024  # evaluated first
    assert not any(c["lr"] == 0.0321 for c in configs)  # found on breastmnist: never used
    assert all(c["epochs"] == 2 for c in configs)  # 128 images / 64 per epoch
    hist = trials["history"].iloc[0]
    hist = __import__("json").loads(hist) if isinstance(hist, str) else hist
    assert "breastmnist/mlp: starts from 1 portfolio" in "\n".join(lines)
    sel = pd.read_parquet(run / "selection.parquet")
    sel = sel[sel.dataset == "breastmnist"]
    assert len(sel) == 2 and set(sel["seed"]) == {1}
    assert set(sel["candidate"]) <= set(trials["trial_id"])
    final = pd.read_parquet(run / "final.parquet")
    assert (final["status"] == "ok").all()
    # breast: the spec's 2 seeds; retina: what its (cut) plan pays, no selection re-runs
    assert final.groupby("dataset").size().to_dict() == {"breastmnist": 2, "retinamnist": 1}
    assert not (pd.read_parquet(run / "selection.parquet")["dataset"] == "retinamnist").any()
    said = "\n".join(lines)
    assert "budget retinamnist: selection re-runs cut to none" in said
    assert "budget retinamnist: 1 final seed(s) instead of 2" in said
    assert not [ln for ln in lines if ln.startswith("budget breastmnist:")
                and ("cut" in ln or "instead of" in ln)]  # breast's plan pays the spec
    # final seeds train final_factor x a trial's 2 epochs, capped at max_epochs
    assert (final["epochs_run"] == 5).all()
    sel_epochs = pd.read_parquet(run / "selection.parquet")["epochs_run"]
    assert (sel_epochs == 2).all()  # selection re-runs stay at the trials' fidelity
    b = meta["budget"]["datasets"]["breastmnist"]
    assert b["planned_device_s"] == 600 * meta["budget"]["slots"]
    assert b["search_device_s"] == pytest.approx(pd.to_numeric(trials["device_s"]).sum())
    assert b["selection_device_s"] == pytest.approx(pd.to_numeric(sel["device_s"]).sum())
    assert b["spent_device_s"] == pytest.approx(
        b["search_device_s"] + b["selection_device_s"] + b["final_device_s"])
    assert Path(run / "meta.json").is_file()
    assert hist and "images_seen" in hist[0]


def test_a_local_ray_that_does_not_start_is_one_runtime_error(monkeypatch):
    """An overloaded box can time out Ray's node start: one clear line, exit code 1."""
    import ray

    from bench.errors import RunFailure
    from bench.search import init_ray

    def fail(**_kw):
        raise RuntimeError("Timed out after 60 seconds waiting for the node to start\nmore")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fail)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(RunFailure, match="local Ray node did not start .*Timed out") as e:
        init_ray(None, num_cpus=1)
    assert e.value.exit_code == 1 and "\n" not in str(e.value)

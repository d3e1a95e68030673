"""Deterministic mode (`--deterministic`) and the pipeline reference (`--reference`).

Deterministic mode exists so a reader can re-run a report exactly: the search stops on a fixed
trial count, not on wall seconds, and each family's trials run one after another, so the
searcher and ASHA see results in the same order under any load. The Ray test
gives the spec a wall budget so small that the budgeted mode would cut the search short; the
deterministic mode must ignore it, run the fixed count, and give the same trials, picks and
numbers twice.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.results import REFERENCE_ENTRY, final_row
from bench.spaces import build_spec, load_spec


def _spec(**extra):
    raw = {"name": "det", "datasets": ["breastmnist", "chestmnist"], "families": ["mlp"],
           "searcher": "optuna", "num_samples": 60, "scheduler": "asha", "verify_md5": False,
           "fidelity": {"trial_images": 128, "min_epochs": 1, "grace_fraction": 0.5,
                        "max_epochs": 3},
           "budget_s": 1, "selection": {"top_k": 2, "seeds": 1}, "final_seeds": 2,
           "fixed_trials": {"mlp": 4}, "resources": {"cpu": 1, "gpu": 0}}
    return build_spec({**raw, **extra})


def test_fixed_trials_replace_num_samples_only_in_deterministic_mode():
    assert _spec().budget("mlp")["num_samples"] == 60
    assert _spec(deterministic=True).budget("mlp")["num_samples"] == 4
    quick = load_spec(preset="quick", datasets="breastmnist", deterministic=True)
    assert quick.budget("cnn_small")["num_samples"] == quick.fixed_trials["cnn_small"] < 60


def test_deterministic_rest_plans_never_follow_the_clock():
    from bench.search import rest_plans

    trials = [{"dataset": "breastmnist", "family": "mlp", "status": "ok", "device_s": 1e6,
               "epochs_run": 2, "config": {"epochs": 2}}]
    # a budget this spent would cut the selection and final seeds; deterministic mode keeps
    # the spec's counts whatever the trials cost
    assert rest_plans(_spec(), 1, trials)["breastmnist"]["final_seeds"] == 1
    assert rest_plans(_spec(deterministic=True), 1, trials) == {}


@pytest.mark.parametrize(("field", "value", "message"), [
    ("fixed_trials", {"mlp": 0}, "fixed_trials must map families to a trial count >= 1"),
    ("fixed_trials", [3], "fixed_trials must be a mapping"),
    ("deterministic", "yes", "deterministic must be true or false"),
    ("reference_seeds", 99, "reference_seeds is how many final seeds"),
])
def test_bad_deterministic_fields_are_refused(field, value, message):
    from bench.errors import UserError

    with pytest.raises(UserError, match=message):
        _spec(**{field: value})


def test_reference_jobs_are_the_official_recipe_on_2d_28px_final_seeds():
    from bench.search import reference_jobs
    from bench.train import TRAIN_PRESETS

    spec = build_spec({"name": "r", "datasets": ["breastmnist", "organmnist3d"],
                       "families": ["mlp", "cnn3d_small"], "reference_seeds": 2,
                       "fidelity": {"trial_images": 40000, "max_epochs": 100}})
    jobs = reference_jobs(spec, {"breastmnist": 546, "organmnist3d": 971})
    assert [j["dataset"] for j in jobs] == ["breastmnist", "breastmnist"]  # no 3D reference
    assert [j["seed"] for j in jobs] == [10_000, 10_001]  # the first final seeds
    official = TRAIN_PRESETS["official"]
    for j in jobs:
        assert j["epochs"] == 74  # the images of a full-fidelity trial: ceil(40000 / 546)
        assert {k: j[k] for k in official if k != "epochs"} == \
            {k: v for k, v in official.items() if k != "epochs"}
        row = final_row({k: v for k, v in j.items() if k != "phase"})
        assert row["family"] == REFERENCE_ENTRY and REFERENCE_ENTRY in row["run_dir"]
    assert reference_jobs(build_spec({"name": "r", "datasets": ["breastmnist"],
                                      "families": ["mlp"]}), {"breastmnist": 546}) == []


def _rows(run) -> tuple[list, pd.DataFrame]:
    trials = pd.read_parquet(run / "trials.parquet")
    configs = [json.dumps(json.loads(c) if isinstance(c, str) else c, sort_keys=True,
                          default=str) for c in trials["config"]]
    final = pd.read_parquet(run / "final.parquet").sort_values(["dataset", "family", "seed"])
    # sorted: a resumed run writes its replayed trials in Tune's restore order
    return (sorted(zip(trials["dataset"], configs, trials["best_val_auc"], trials["epochs_run"],
                       strict=True)),
            final[["dataset", "family", "seed", "val_auc", "test_auc", "test_acc"]]
            .reset_index(drop=True))


@pytest.mark.slow
def test_deterministic_runs_repeat_exactly_and_ignore_the_wall_budget(tmp_path, monkeypatch):
    """run0 is made with the reference; run1 without it, then resumed with it (`--reference`
    added to a finished run): both end the same, and the resume trains the reference seeds
    only (the trace counts trainings: every mlp final seed once, over both launches)."""
    import ray

    from bench.data import write_synthetic
    from bench.experiment import execute
    from bench.leaderboard import build_leaderboard
    from bench.search import init_ray

    data = tmp_path / "data"
    write_synthetic("breastmnist", data, n=(64, 32, 32), seed=0)
    write_synthetic("chestmnist", data, n=(64, 32, 32), seed=1)
    trace = tmp_path / "trace.txt"
    monkeypatch.setenv("MEDBENCH_TRACE", str(trace))
    spec = _spec(deterministic=True, reference_seeds=1)
    runs = []
    for k, reference in ((0, [1]), (1, [0, 1])):
        for n_ref in reference:
            init_ray(None, num_cpus=2)
            try:
                lines: list[str] = []
                execute(_spec(deterministic=True, reference_seeds=n_ref),
                        tmp_path / f"run{k}", data_dir=data, wandb=False, num_cpus=2,
                        echo=lines.append)
            finally:
                ray.shutdown()
            assert "deterministic: a fixed number of search trials" in "\n".join(lines)
        runs.append(_rows(tmp_path / f"run{k}"))
    assert (tmp_path / "run1" / "spec.yaml").read_text() == \
        (tmp_path / "run0" / "spec.yaml").read_text()
    assert spec.reference_seeds == 1
    (superseded,) = (tmp_path / "run1" / "tune").glob("final.superseded-*")
    finals = [line.split()[1] for line in trace.read_text().splitlines()
              if line.split()[0] == "finish" and line.split()[1].startswith("final:")]
    # run0: 4 mlp + 2 reference; run1: 4 mlp, then the 2 reference seeds; nothing twice
    assert len(finals) == 12 and len(set(finals)) == 6, finals
    (trials_a, final_a), (trials_b, final_b) = runs
    # the fixed count per dataset, though a 1 s budget would have stopped the search sooner
    assert sum(1 for t in trials_a if t[0] == "breastmnist") == 4
    assert trials_a == trials_b
    pd.testing.assert_frame_equal(final_a, final_b)
    # 2 final seeds per dataset as the spec says, plus the reference on breast's first seed
    # (chestmnist is 2D too: it gets one)
    assert set(final_a["family"]) == {"mlp", REFERENCE_ENTRY}
    assert (final_a["family"] == REFERENCE_ENTRY).sum() == 2
    board = build_leaderboard(tmp_path / "run0", n_boot=50)
    ref = board[board["family"] == REFERENCE_ENTRY]
    assert set(ref["kind"]) == {"reference"} and not ref["picked"].any()
    assert board.groupby("dataset")["picked"].sum().eq(1).all()

"""Every choice the pipeline makes, pinned on a case where a wrong rule gives another answer.

Why: a rule tested on fixtures whose orders agree (the best validation trial is also the best on
test, by AUC and by ACC, full-length and sorted) passes whichever rule the code follows. Each
case below orders its candidates differently by validation and by test, by AUC, by ACC and by
their mean, by a stopped trial's score and by full-length re-runs, and lists costs unsorted, so
that only the intended rule gives the asserted answer. The final board pick
(leaderboard.mark_picked / pickable) is pinned in its own tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench import selection
from bench.budget import Fidelity, full_run_costs, plan_rest
from bench.selection import choose_configs, score, top_candidates


def _trial(tid: str, auc: float, acc: float, epochs_run: int = 10, **extra) -> dict:
    """A search trial row as bench.search writes it (the config trains 10 epochs)."""
    return {"dataset": "breastmnist", "family": "mlp", "trial_id": tid, "status": "ok",
            "best_val_auc": auc, "best_val_acc": acc, "epochs_run": epochs_run,
            "config": {"model": "mlp", "epochs": 10, "tag": tid}, **extra}


# Three full-length trials whose orders disagree: by val AUC `auc_best` wins, by val ACC
# `acc_best`, by their mean (the rule) `balanced`; by test AUC `test_best`.
DISAGREE = [
    _trial("auc_best", 0.95, 0.70, test_auc=0.60),   # mean 0.825
    _trial("acc_best", 0.78, 0.90, test_auc=0.70),   # mean 0.840
    _trial("balanced", 0.90, 0.85, test_auc=0.50),   # mean 0.875
    _trial("test_best", 0.80, 0.80, test_auc=0.99),  # mean 0.800
]


def _tags(cands: dict) -> list[str]:
    return [t["trial_id"] for t in cands[("breastmnist", "mlp")]]


# --- search trials -> selection candidates -----------------------------------------------------

def test_candidates_rank_by_the_mean_of_val_auc_and_val_acc_never_test():
    """Wrong rules put another trial first: val AUC alone auc_best, val ACC alone acc_best,
    test AUC test_best."""
    assert _tags(top_candidates(DISAGREE, 4)) == ["balanced", "acc_best", "auc_best", "test_best"]
    flipped = [{**t, "test_auc": 1 - t["test_auc"]} for t in DISAGREE]
    assert _tags(top_candidates(flipped, 4)) == _tags(top_candidates(DISAGREE, 4))


def test_a_stopped_trial_ranks_after_every_full_length_one():
    """ASHA stopped `stopped` after 2 of 10 epochs with the best score of all; a rule that
    ranks by score alone would put it first and spend a re-run slot on a short schedule."""
    trials = [_trial("stopped", 0.99, 0.99, epochs_run=2), *DISAGREE[:2]]
    assert _tags(top_candidates(trials, 2)) == ["acc_best", "auc_best"]
    assert _tags(top_candidates(trials, 3))[-1] == "stopped"


def test_final_config_without_selection_follows_the_same_rule():
    """bench.search.best_configs (no selection phase): the old rule, best val AUC over every
    trial, would pick the stopped trial here, and among full-length ones `auc_best`."""
    from bench.search import best_configs

    trials = [_trial("stopped", 0.99, 0.99, epochs_run=2), *DISAGREE,
              {**_trial("failed", 1.0, 1.0), "status": "failed"}]
    assert best_configs(trials)[("breastmnist", "mlp")]["tag"] == "balanced"
    assert best_configs(trials) == {k: dict(c[0]["config"])
                                    for k, c in top_candidates(trials, 1).items()}


def test_ties_are_broken_by_trial_id_whatever_order_the_rows_come_in():
    """Tiny validation sets tie often, and a resume restores its trials in another order: a
    tie broken by row order chose another config after a resume and trained a final seed a
    second time under a new job name. Both orders must give the same candidates and config."""
    from bench.search import best_configs

    tied = [_trial("t3", 0.8, 0.8), _trial("t1", 0.8, 0.8), _trial("t2", 0.8, 0.8),
            _trial("t0", 0.7, 0.7)]
    for order in (tied, tied[::-1], tied[1:] + tied[:1]):
        assert _tags(top_candidates(order, 2)) == ["t1", "t2"]
        assert best_configs(order)[("breastmnist", "mlp")]["tag"] == "t1"
        cands = top_candidates(order, 3)
        assert choose_configs(cands, [])[("breastmnist", "mlp")]["tag"] == "t1"


# --- selection re-runs -> the chosen config ----------------------------------------------------

def _rerun(candidate: str, auc: float, acc: float, **extra) -> dict:
    return {"dataset": "breastmnist", "family": "mlp", "candidate": candidate,
            "val_auc": auc, "val_acc": acc, "status": "ok", **extra}


def test_a_stopped_trials_score_is_not_averaged_with_its_full_length_reruns():
    """`stopped` was cut at epoch 2 (score 0.50) but its two full-length re-runs score 0.85;
    `full` scored 0.86 itself and 0.84 twice on re-runs. Rule: stopped's mean is 0.85 (re-runs
    only), full's 0.8467 -> stopped. Averaging the stopped score in (0.733) -> full; the search
    score alone -> full; re-runs alone (0.85 vs 0.84) agree with the rule, so a second case
    pins that the full-length trial's own score does count."""
    cands = {("breastmnist", "mlp"): [_trial("full", 0.86, 0.86),
                                      _trial("stopped", 0.50, 0.50, epochs_run=2)]}
    reruns = [_rerun("stopped", 0.85, 0.85), _rerun("stopped", 0.85, 0.85),
              _rerun("full", 0.84, 0.84), _rerun("full", 0.84, 0.84)]
    assert choose_configs(cands, reruns)[("breastmnist", "mlp")]["tag"] == "stopped"
    # both full-length: a: (0.95 + 0.80 + 0.80) / 3 = 0.85; b: (0.70 + 0.84 + 0.84) / 3 = 0.793.
    # re-runs alone would pick b (0.84 > 0.80)
    cands = {("breastmnist", "mlp"): [_trial("a", 0.95, 0.95), _trial("b", 0.70, 0.70)]}
    reruns = [_rerun("a", 0.80, 0.80), _rerun("a", 0.80, 0.80),
              _rerun("b", 0.84, 0.84), _rerun("b", 0.84, 0.84)]
    assert choose_configs(cands, reruns)[("breastmnist", "mlp")]["tag"] == "a"


def test_reruns_are_chosen_by_validation_mean_never_test_and_failed_ones_drop_out():
    """By validation mean `steady` (0.875 over trial + 2 re-runs) beats `lucky` (0.80); by the
    re-runs' test numbers, or by counting a failed re-run as 0, the answer would change."""
    cands = {("breastmnist", "mlp"): [_trial("lucky", 0.99, 0.99), _trial("steady", 0.90, 0.90)]}
    reruns = [_rerun("lucky", 0.70, 0.70, test_auc=0.99), _rerun("lucky", 0.71, 0.71,
                                                                   test_auc=0.99),
              _rerun("steady", 0.86, 0.86, test_auc=0.10), _rerun("steady", 0.865, 0.865,
                                                                    test_auc=0.10),
              _rerun("steady", None, None, status="failed")]
    assert choose_configs(cands, reruns)[("breastmnist", "mlp")]["tag"] == "steady"
    flipped = [{**r, "test_auc": 1 - r["test_auc"]} if "test_auc" in r else r for r in reruns]
    assert choose_configs(cands, flipped) == choose_configs(cands, reruns)


def test_a_candidate_without_any_full_length_result_ranks_last():
    """`stopped` (cut at epoch 2, score 0.99) has only failed re-runs: nothing says how its
    config does on the full schedule. Before this rule its stopped score competed with full
    means and won; now `full` (0.80) is chosen."""
    cands = {("breastmnist", "mlp"): [_trial("full", 0.80, 0.80),
                                      _trial("stopped", 0.99, 0.99, epochs_run=2)]}
    reruns = [_rerun("stopped", None, None, status="failed"),
              _rerun("full", 0.79, 0.79)]
    assert choose_configs(cands, reruns)[("breastmnist", "mlp")]["tag"] == "full"
    # every candidate stopped and without re-runs: the stopped scores still decide
    only_stopped = {("breastmnist", "mlp"): [_trial("s1", 0.70, 0.70, epochs_run=2),
                                             _trial("s2", 0.90, 0.90, epochs_run=3)]}
    assert choose_configs(only_stopped, [])[("breastmnist", "mlp")]["tag"] == "s2"


def test_score_is_the_mean_of_val_auc_and_val_acc():
    assert score(0.9, 0.6) == pytest.approx(0.75)
    assert selection.VAL_KEYS == ("val_auc", "val_acc")  # no test key in the rule's inputs


# --- the blend's starting member ---------------------------------------------------------------

def test_the_blends_best_single_member_is_by_the_validation_score_not_auc_or_test():
    """Member `a` ranks perfectly (val AUC 1.0) but calls every image positive (ACC 0.5): score
    0.75. Member `b`: AUC 0.889, ACC 0.833, score 0.861. By AUC alone `a`; by the rule `b`,
    in either member order (no first-member bias)."""
    from bench import ensemble

    y = np.array([[0], [0], [0], [1], [1], [1]])

    def two(p: list[float]) -> np.ndarray:
        p1 = np.asarray(p)
        return np.stack([1 - p1, p1], axis=1)

    a, b = two([0.6, 0.6, 0.6, 0.9, 0.9, 0.9]), two([0.1, 0.2, 0.45, 0.4, 0.8, 0.9])
    assert list(ensemble.best_single([a, b], y, "binary-class")) == [0.0, 1.0]
    assert list(ensemble.best_single([b, a], y, "binary-class")) == [1.0, 0.0]


# --- training: which epoch's weights are kept --------------------------------------------------

def test_kept_epoch_is_the_first_best_val_auc_not_acc_or_the_last(monkeypatch):
    """Scripted validation numbers per epoch: AUC [0.70, 0.90, 0.85, 0.90], ACC [0.95, 0.60,
    0.99, 0.70]. Rule: best val AUC, the earlier epoch on a tie -> 2. Best ACC or best mean
    -> 3; the later tie or the last epoch -> 4."""
    from bench import train
    from bench.data import dataset_info, from_arrays, synthetic_arrays

    script = iter([(0.70, 0.95), (0.90, 0.60), (0.85, 0.99), (0.90, 0.70)])

    def scripted(labels, scores, task):
        auc, acc = next(script, (0.5, 0.5))  # after the epochs: the kept model's val and test
        return {"auc": auc, "acc": acc}

    monkeypatch.setattr(train, "evaluate", scripted)
    data = from_arrays(dataset_info("breastmnist"), 28,
                       synthetic_arrays("breastmnist", n=(16, 8, 8)))
    r = train.fit({"model": "mlp", "hidden": 8, "epochs": 4, "batch_size": 8, "device": "cpu",
                   "scheduler": "constant"}, data)
    assert [h["val_auc"] for h in r.history] == [0.70, 0.90, 0.85, 0.90]
    assert r.best_epoch == 2


# --- which seed the report's per-dataset figures show ------------------------------------------

def test_the_seed_shown_and_served_is_chosen_on_val_auc():
    """Seed 2 has the best val AUC; seed 1 the best val ACC and seed 3 the best test AUC."""
    from bench.picked import representative_seed

    seeds = pd.DataFrame({"seed": [1, 2, 3], "val_auc": [0.80, 0.90, 0.85],
                          "val_acc": [0.95, 0.70, 0.80], "test_auc": [0.70, 0.60, 0.99]})
    assert representative_seed(seeds)["seed"] == 2
    assert representative_seed(seeds.iloc[::-1])["seed"] == 2


# --- which entry the report's per-dataset section shows ----------------------------------------

def _entry(run: str, dataset: str, family: str, val: float, test: float, picked=None,
           n_seeds: int = 3) -> dict:
    return {"run": run, "dataset": dataset, "family": family, "size": 28, "kind": "single",
            "n_seeds": n_seeds, "val_score": val, "val_auc_mean": val, "test_acc_mean": test,
            "test_auc_mean": test, "picked": picked}


def test_the_reports_entry_per_dataset_is_chosen_on_validation_per_dataset():
    """breastmnist: run r1 marked `a` (val 0.80), run r2 marked `c` (val 0.85); the best test
    number is `a`'s, the best unmarked validation `b`'s (0.90, not picked by its run). Rule:
    the best-validated pick, `c`. retinamnist comes from an older run with no marker at all:
    its best-validated entry `e` (a rule that drops unmarked datasets once any marker exists
    shows nothing for it; one by test shows `d`). An entry without seeds never qualifies."""
    from bench.report import picked_entries

    board = pd.DataFrame([
        _entry("r1", "breastmnist", "a", 0.80, 0.99, picked=True),
        _entry("r1", "breastmnist", "b", 0.90, 0.70, picked=False),
        _entry("r2", "breastmnist", "c", 0.85, 0.60, picked=True),
        _entry("old", "retinamnist", "d", 0.60, 0.90),
        _entry("old", "retinamnist", "e", 0.70, 0.50),
        _entry("old", "retinamnist", "f", 0.95, 0.95, n_seeds=0),
    ])
    for rows in (board, board.iloc[::-1]):  # row order does not matter
        got = picked_entries(rows)
        assert dict(zip(got["dataset"], got["family"], strict=True)) == {
            "breastmnist": "c", "retinamnist": "e"}


# --- the cost plot's Pareto front --------------------------------------------------------------

def test_pareto_front_from_unsorted_costs(monkeypatch, tmp_path: Path):
    """Board rows in no cost order. Sorted by cost: 50 (0.60), 100 (0.70), 200 (0.65, beaten by
    the cheaper 100), 300 (0.80), 400 (0.78, beaten) -> front 50, 100, 300. Walking the rows in
    their board order would start from 300 and keep it alone."""
    import matplotlib.pyplot as plt

    from bench import figures

    kept: dict = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: kept.setdefault("fig", fig) and path)
    cost = [300.0, 100.0, 200.0, 400.0, 50.0]
    acc = [0.80, 0.70, 0.65, 0.78, 0.60]
    board = pd.DataFrame({"run": "r", "dataset": "breastmnist",
                          "family": ["a", "b", "c", "d", "e"], "size": 28, "kind": "single",
                          "n_seeds": 3, "device_s": cost, "test_acc_mean": acc,
                          "acc_lo": [a - 0.02 for a in acc], "acc_hi": [a + 0.02 for a in acc],
                          "picked": [False, True, False, False, False]})
    try:
        assert figures.fig_cost(board, tmp_path / "cost.png") is not None
        ax = kept["fig"].axes[0]
        (front,) = [ln for ln in ax.get_lines() if ln.get_label() == "Pareto front"]
        assert list(front.get_xdata()) == [50.0, 100.0, 300.0]
        assert list(front.get_ydata()) == [0.60, 0.70, 0.80]
    finally:
        plt.close("all")


# --- budget: what the rest of a dataset's budget buys ------------------------------------------

def _timed(tid: str, ran: int, device_s: float, family: str = "mlp") -> dict:
    return {**_trial(tid, 0.8, 0.8, epochs_run=ran), "family": family, "device_s": device_s}


def test_full_run_cost_is_the_median_per_epoch_over_unsorted_trials_stopped_ones_included():
    """Per-epoch costs in trial order: 10 (100 s / 10), 20 (a trial ASHA stopped after 2
    epochs, 40 s), 5 (50 s / 10), 30 (300 s / 10). Upper median 20 -> a 10-epoch re-run costs
    200 s. The middle of the unsorted list (5) gives 50, the mean 162.5, dropping the stopped
    trial 100, the median cost per trial (not per epoch run) 100."""
    trials = [_timed("t1", 10, 100.0), _timed("t2", 2, 40.0), _timed("t3", 10, 50.0),
              _timed("t4", 10, 300.0), {**_timed("t5", 10, 1.0), "status": "failed"}]
    costs = full_run_costs(trials, "breastmnist",
                           Fidelity(trial_images=1, final_factor=2, max_epochs=15))
    assert costs["mlp"]["rerun_s"] == pytest.approx(200.0)
    assert costs["mlp"]["final_s"] == pytest.approx(300.0)  # 10 epochs x 2, capped at 15


def test_budget_pays_final_seeds_first_then_the_selection_with_more_seeds_on_ties():
    costs = {"mlp": {"rerun_s": 100.0, "final_s": 150.0}}
    # 1150 s: 5 final seeds (750), then 4 re-runs fit: 2 candidates x 2 seeds, not 4 x 1
    plan = plan_rest(1150.0, costs, top_k=4, seeds=2, final_seeds=5)
    assert (plan["top_k"], plan["seeds"], plan["final_seeds"]) == (2, 2, 5)
    # 700 s: final seeds first (4 of 5 fit), nothing left for a selection of 2+ candidates;
    # a selection-first rule would have kept re-runs and cut final seeds further
    plan = plan_rest(700.0, costs, top_k=4, seeds=2, final_seeds=5)
    assert (plan["top_k"], plan["seeds"], plan["final_seeds"]) == (0, 0, 4)
    # never fewer than one final seed, even when it does not fit
    assert plan_rest(10.0, costs, top_k=3, seeds=2, final_seeds=5)["final_seeds"] == 1


"""The cross-family blend (bench.ensemble): weights fitted on validation, kept only when the
cross-fitted blend beats the cross-fitted best member, test data never read for a choice, and
its leaderboard row re-scored by medmnist's own Evaluator functions."""

from __future__ import annotations

import json
from pathlib import Path

import medmnist
import numpy as np
import pandas as pd
import pytest
from medmnist.evaluator import getACC, getAUC

from bench import ensemble
from bench.leaderboard import build_leaderboard, entry_scores, entry_weights, load_seeds

BINARY = "binary-class"


def _probs(y: np.ndarray, signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Binary probabilities: logit = signal * (+1 for class 1, -1 for class 0) + noise."""
    p1 = 1 / (1 + np.exp(-(rng.normal(0, 1, len(y)) + signal * (2 * y[:, 0] - 1))))
    return np.stack([1 - p1, p1], axis=1)


def _complementary(n: int = 400, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Two members, each informative on its own half of the images only: their average is
    clearly better than either (the case a blend exists for)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 1))
    half = np.arange(n) < n // 2
    a = _probs(y, np.where(half, 3.0, 0.0), rng)
    b = _probs(y, np.where(half, 0.0, 3.0), rng)
    return y, [a, b]


def _dominated(n: int = 400, seed: int = 1) -> tuple[np.ndarray, list[np.ndarray]]:
    """A strong member and one that is pure noise: no weight on the noise pays."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 1))
    return y, [_probs(y, np.full(n, 2.5), rng), _probs(y, np.zeros(n), rng)]


def _members(y: np.ndarray, val: list[np.ndarray], test: list[np.ndarray] | None = None,
             test_labels: np.ndarray | None = None) -> dict[str, dict[str, np.ndarray]]:
    test = test if test is not None else val
    test_labels = test_labels if test_labels is not None else y
    return {f"fam{i}": {"val_scores": v, "test_scores": t, "val_labels": y,
                        "test_labels": test_labels}
            for i, (v, t) in enumerate(zip(val, test, strict=True))}


def test_greedy_weights_mix_complementary_members_and_beat_both():
    y, val = _complementary()
    w = ensemble.greedy_weights(val, y, BINARY)
    assert w.sum() == pytest.approx(1.0)
    assert np.all(w > 0.2), w  # both members carry weight
    mixed = ensemble.val_score(y, np.tensordot(w, np.stack(val), axes=1), BINARY)
    assert mixed > max(ensemble.val_score(y, v, BINARY) for v in val)


def test_greedy_weights_keep_only_the_strong_member_over_noise():
    y, val = _dominated()
    w = ensemble.greedy_weights(val, y, BINARY)
    assert w.tolist() == [1.0, 0.0]


def test_best_single_is_the_validation_best_member():
    y, val = _dominated()
    assert ensemble.best_single(val[::-1], y, BINARY).tolist() == [0.0, 1.0]


def test_blend_kept_when_it_beats_one_member_out_of_fold():
    y, val = _complementary()
    b = ensemble.blend(_members(y, val), BINARY)
    assert b is not None
    assert b["cv_blend"] > b["cv_single"]
    assert set(b["weights"]) == {"fam0", "fam1"}
    assert sum(b["weights"].values()) == pytest.approx(1.0)
    assert list(b["weights"].values()) == sorted(b["weights"].values(), reverse=True)
    w = np.array([b["weights"]["fam0"], b["weights"]["fam1"]])
    np.testing.assert_allclose(b["test_scores"], np.tensordot(w, np.stack(val), axes=1))


def test_no_blend_from_one_member_or_when_one_member_dominates():
    y, val = _complementary()
    assert ensemble.blend(_members(y, val[:1]), BINARY) is None
    y, val = _dominated()
    assert ensemble.blend(_members(y, val), BINARY) is None


def test_blend_rejected_when_in_sample_weights_do_not_carry_over(monkeypatch):
    """Weights that help on all of validation but not out of fold give no entry: with the
    cross-fitted blend scored no better than the cross-fitted single member, blend is None."""
    y, val = _complementary()
    monkeypatch.setattr(ensemble, "cross_fitted_score",
                        lambda scores, y, task, fit, folds=5: 0.9)
    assert ensemble.blend(_members(y, val), BINARY) is None


def test_blend_choice_never_reads_test_data():
    """Shuffled test labels and random test scores change no weight and no decision."""
    y, val = _complementary()
    rng = np.random.default_rng(5)
    garbage = [rng.dirichlet([1, 1], size=len(y)) for _ in val]
    first = ensemble.blend(_members(y, val), BINARY)
    second = ensemble.blend(_members(y, val, garbage, rng.permutation(y)), BINARY)
    assert first is not None and second is not None
    assert first["weights"] == second["weights"]
    assert (first["cv_blend"], first["cv_single"]) == (second["cv_blend"], second["cv_single"])


def test_cross_fitting_fits_and_scores_on_disjoint_parts_covering_validation():
    y, val = _complementary(n=100)
    seen: list[int] = []

    def fit(scores, y_fit, task):
        seen.append(len(y_fit))
        return np.array([0.5, 0.5])

    score = ensemble.cross_fitted_score(val, y, BINARY, fit, folds=5)
    assert seen == [80] * 5  # each fit sees the other four fifths only
    assert score == pytest.approx(ensemble.val_score(y, (val[0] + val[1]) / 2, BINARY))


def test_cross_fitting_refuses_a_split_too_small_for_its_folds():
    y = np.array([[0], [1], [1], [1]])  # one image of class 0: no two stratified folds
    s = np.full((4, 2), 0.5)
    assert ensemble.cross_fitted_score([s, s], y, BINARY, ensemble.best_single) is None


def _run_with_families(root: Path, flag: str, families: dict[str, list[np.ndarray]],
                       y_val: np.ndarray, y_test: np.ndarray,
                       test: dict[str, list[np.ndarray]]) -> Path:
    """A run directory written by hand: per family one seed per score array; final.parquet's
    numbers are medmnist's getAUC/getACC of those scores."""
    from bench.results import FINAL_COLUMNS, write_table

    task, run, rows = medmnist.INFO[flag]["task"], Path(root) / "run", []
    for family, runs in families.items():
        for k, (sv, st) in enumerate(zip(runs, test[family], strict=True)):
            rel = f"final/{flag}/{family}/seed{k}"
            (run / rel).mkdir(parents=True)
            np.savez(run / rel / "scores.npz", val_labels=y_val, val_scores=sv,
                     test_labels=y_test, test_scores=st)
            rows.append({"dataset": flag, "family": family, "seed": k, "size": 28,
                         "val_auc": float(getAUC(y_val, sv, task)),
                         "val_acc": float(getACC(y_val, sv, task)),
                         "test_auc": float(getAUC(y_test, st, task)),
                         "test_acc": float(getACC(y_test, st, task)),
                         "run_dir": rel, "status": "ok", "wall_s": 2.0, "device_s": 2.0})
    write_table(run / "final.parquet", rows, FINAL_COLUMNS)
    return run


def test_blend_row_on_the_board_is_rescored_by_medmnist_and_picked(tmp_path):
    """Two families each right on half of the images (two seeds each): the board gains a blend
    row whose numbers are medmnist's own metrics of the weighted family ensembles, whose cost
    is the members' sum, and which validation picks."""
    flag, task = "breastmnist", BINARY
    y, _ = _complementary(n=200, seed=3)
    rng = np.random.default_rng(9)
    half = np.arange(len(y)) < len(y) // 2
    fams = {"cnn": [_probs(y, np.where(half, 3.0, 0.0), rng) for _ in range(2)],
            "mlp": [_probs(y, np.where(half, 0.0, 3.0), rng) for _ in range(2)]}
    y_test, _ = _complementary(n=160, seed=4)
    half_t = np.arange(len(y_test)) < len(y_test) // 2
    test = {"cnn": [_probs(y_test, np.where(half_t, 3.0, 0.0), rng) for _ in range(2)],
            "mlp": [_probs(y_test, np.where(half_t, 0.0, 3.0), rng) for _ in range(2)]}
    run = _run_with_families(tmp_path, flag, fams, y, y_test, test)
    board = build_leaderboard(run, n_boot=200)
    blends = board[board["weights"].notna()]
    assert len(blends) == 1
    row = blends.iloc[0]
    weights = json.loads(row["weights"])
    assert set(weights) == {"cnn", "mlp"} and row["kind"] == "ensemble"
    assert row["family"].endswith(" ens") and " + " in row["family"]
    assert row["n_seeds"] == 4 and row["device_s"] == pytest.approx(8.0)
    want = sum(w * np.mean(test[f], axis=0) for f, w in weights.items())
    assert row["test_acc_mean"] == pytest.approx(float(getACC(y_test, want, task)))
    assert row["test_auc_mean"] == pytest.approx(float(getAUC(y_test, want, task)))
    assert row["acc_lo"] <= row["test_acc_mean"] <= row["acc_hi"]
    assert bool(row["picked"])
    assert entry_weights(row) == weights
    again = entry_scores(load_seeds(run), row)
    np.testing.assert_allclose(again["test_scores"], want)
    singles = board[board["weights"].isna()]
    assert not singles["picked"].any()
    # the web predictor serves the picked blend itself by default (tests/test_picked_model.py)
    from bench.webapp import predictable_entries

    names, default = predictable_entries(board, row["run"], flag)
    assert names[default] == row["family"]
    assert entry_weights(singles[singles["kind"] == "ensemble"].iloc[0]) in ({"cnn": 1.0},
                                                                             {"mlp": 1.0})


def test_no_blend_row_when_one_family_dominates(tmp_path):
    flag = "breastmnist"
    y, _ = _dominated(n=200, seed=6)
    rng = np.random.default_rng(2)
    fams = {"cnn": [_probs(y, np.full(len(y), 2.5), rng) for _ in range(2)],
            "mlp": [_probs(y, np.zeros(len(y)), rng) for _ in range(2)]}
    run = _run_with_families(tmp_path, flag, fams, y, y, fams)
    board = build_leaderboard(run, n_boot=100)
    assert board["weights"].isna().all()
    picked = board[board["picked"]]
    assert list(picked["family"]) == ["cnn ×2 ens"]
    assert isinstance(board, pd.DataFrame)

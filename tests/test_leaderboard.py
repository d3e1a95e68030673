"""Tests for bench.leaderboard and bench.baselines: verdict rule, numbers recomputed from the
scores, CI, published comparison, merging runs, summary counts, formats, errors, and agreement
with medmnist's own Evaluator on the prediction CSVs."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
from pathlib import Path

import medmnist
import numpy as np
import pandas as pd
import pytest
from fake_run import STRENGTHS, make_run, write_label_npz

from bench import metrics
from bench.baselines import load_published
from bench.errors import UserError
from bench.leaderboard import (
    BOARD_COLUMNS,
    build_leaderboard,
    comparable_baselines,
    format_board,
    load_seeds,
    summarize,
    verdict,
)

N_BOOT = 500  # the vectorised bootstrap makes a realistic count cheap


@pytest.fixture(scope="module")
def run_a(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), "run-a")


@pytest.fixture(scope="module")
def board(run_a) -> pd.DataFrame:
    return build_leaderboard(run_a, n_boot=N_BOOT)


@pytest.mark.parametrize(("lo", "hi", "pub", "want"), [
    (0.90, 0.95, 0.85, "above"),         # CI clearly above
    (0.80, 0.90, 0.85, "within noise"),  # overlapping
    (0.70, 0.80, 0.85, "below"),         # CI clearly below
    (0.85, 0.95, 0.85, "within noise"),  # lower bound equals the published value
    (0.75, 0.85, 0.85, "within noise"),  # upper bound equals the published value
    (0.80, 0.90, float("nan"), "n/a"),   # no published number
    (float("nan"), float("nan"), 0.85, "n/a"),  # no CI
])
def test_verdict(lo, hi, pub, want):
    assert verdict(lo, hi, pub) == want


def test_published_table_is_complete():
    pub = load_published()
    assert set(medmnist.INFO) <= set(pub["flag"])
    assert pub[["auc", "acc"]].apply(lambda c: c.between(0, 1)).all().all()
    r18 = pub[(pub["flag"] == "breastmnist") & (pub["method"] == "ResNet-18 (28)")]
    assert (r18["auc"].item(), r18["acc"].item()) == (0.901, 0.863)


def test_published_table_missing_flag_is_an_error(tmp_path, monkeypatch):
    import bench.baselines as bl

    src = Path(bl.__file__).with_name("medmnist_v2.csv")
    pd.read_csv(src).query("flag != 'retinamnist'").to_csv(tmp_path / bl._FILE, index=False)
    monkeypatch.setattr(bl.resources, "files", lambda _name: tmp_path)
    with pytest.raises(ValueError, match="retinamnist"):
        bl.load_published()


def test_board_numbers_equal_metrics_from_scores(run_a, board):
    assert list(board.columns) == BOARD_COLUMNS
    assert len(board) == 8 and (board["kind"] == "ensemble").sum() == 4  # one per family
    board = board[board["kind"] == "single"]
    seeds = load_seeds(run_a)
    for r in board.itertuples():
        ok = seeds[(seeds["dataset"] == r.dataset) & (seeds["family"] == r.family)
                   & (seeds["status"] == "ok")]
        vals = []
        for rel in ok["run_dir"]:
            with np.load(run_a / rel / "scores.npz") as z:
                vals.append(metrics.evaluate(z["test_labels"], z["test_scores"], r.task))
        assert r.n_seeds == 3
        for m in ("acc", "auc"):
            v = np.array([x[m] for x in vals])
            assert getattr(r, f"test_{m}_mean") == pytest.approx(v.mean(), abs=1e-12)
            assert getattr(r, f"test_{m}_std") == pytest.approx(v.std(ddof=1), abs=1e-12)
    failed = board.set_index(["dataset", "family"])["n_failed"]
    assert failed[("retinamnist", "mlp")] == 1 and failed.sum() == 1


def test_ci_contains_the_mean_and_families_are_ordered(board):
    for m in ("acc", "auc"):
        assert (board[f"{m}_lo"] <= board[f"test_{m}_mean"]).all()
        assert (board[f"test_{m}_mean"] <= board[f"{m}_hi"]).all()
    by = board.set_index(["dataset", "family"])
    for flag in ("breastmnist", "retinamnist"):  # strength 3.0 vs 1.2 must show
        assert by.loc[(flag, "cnn"), "test_auc_mean"] > by.loc[(flag, "mlp"), "test_auc_mean"]


def test_published_comparison_and_cost(board):
    pub = load_published()
    for r in board[board["kind"] == "single"].itertuples():
        p = pub[pub["flag"] == r.dataset]
        assert r.ref_method == "ResNet-18 (28)" and r.baseline_note == ""
        for m in ("acc", "auc"):
            ref = p.loc[p["method"] == "ResNet-18 (28)", m].item()
            assert getattr(r, f"ref_{m}") == ref
            assert getattr(r, f"best_{m}") == p[m].max()
            mean, lo, hi = (getattr(r, f"test_{m}_mean"), getattr(r, f"{m}_lo"),
                            getattr(r, f"{m}_hi"))
            assert getattr(r, f"delta_{m}_vs_resnet18") == pytest.approx(mean - ref)
            assert getattr(r, f"verdict_{m}_vs_resnet18") == verdict(lo, hi, ref)
            assert getattr(r, f"verdict_{m}_vs_best") == verdict(lo, hi, p[m].max())
        s = STRENGTHS[r.family]
        failed_cost = 4.0 if (r.dataset, r.family) == ("retinamnist", "mlp") else 0.0
        assert r.trials == 4
        assert r.device_s == pytest.approx(4 * 6.0 * s + 3 * 10.0 * s + failed_cost)
        assert r.run_wall_s == 321.0
    # the strong fake model beats ResNet-18 (28) on both datasets, with the CI to show it
    assert set(board.loc[board["family"] == "cnn", "verdict_auc_vs_resnet18"]) == {"above"}


def test_comparable_baselines_by_size_and_dim():
    pub = load_published()
    rows, ref, note = comparable_baselines(pub, "breastmnist", 28)
    assert ref == "ResNet-18 (28)" and len(rows) == 7 and note == ""
    rows, ref, note = comparable_baselines(pub, "breastmnist", 64)
    assert ref == "ResNet-18 (224)" and set(rows["method"]) == {"ResNet-18 (224)",
                                                                "ResNet-50 (224)"}
    assert "64 px" in note
    rows, ref, note = comparable_baselines(pub, "organmnist3d", 28)
    assert ref == "ResNet-18+3D" and len(rows) == 8 and "3D" in note


def test_merging_two_runs(run_a, board, tmp_path):
    run_b = make_run(tmp_path, "run-b", strengths={"cnn": 2.0}, seed=5,
                     datasets=("breastmnist",), size=64)
    merged = build_leaderboard([run_a, run_b], n_boot=N_BOOT)
    assert len(merged) == 10 and set(merged["run"]) == {"run-a", "run-b"}  # 5 + 5 ensembles
    b = merged[merged["run"] == "run-b"].iloc[0]
    assert (b["dataset"], b["family"], b["size"]) == ("breastmnist", "cnn", 64)
    assert b["ref_method"] == "ResNet-18 (224)" and "compare with the '(224)'" in b["baseline_note"]
    assert b["best_auc_method"].endswith("(224)")
    # run-a's rows are unchanged by the merge
    a = merged[merged["run"] == "run-a"].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, board)
    md = format_board(merged, "md")
    assert "| run |" in md and "Note: ours are 64 px images" in md


def test_same_named_runs_stay_distinct(tmp_path):
    """Two runs/<same name> from different places, and a copy rebuilds the same board."""
    one = make_run(tmp_path / "here", "run-x", strengths={"cnn": 2.0}, datasets=("breastmnist",))
    two = tmp_path / "there" / "run-x"
    shutil.copytree(one, two)
    merged = build_leaderboard([one, two], n_boot=N_BOOT)
    assert set(merged["run"]) == {str(one), str(two)}
    cols = [c for c in BOARD_COLUMNS if c != "run"]
    pd.testing.assert_frame_equal(merged[merged["run"] == str(one)][cols].reset_index(drop=True),
                                  merged[merged["run"] == str(two)][cols].reset_index(drop=True))


def test_missing_scores_gives_no_verdict(tmp_path):
    run = make_run(tmp_path, "run-c", strengths={"cnn": 2.0}, datasets=("breastmnist",))
    (run / "final/breastmnist/cnn/seed1/scores.npz").unlink()
    with pytest.warns(UserWarning, match="scores.npz missing"):
        b = build_leaderboard(run, n_boot=5)
    r = b.iloc[0]
    assert math.isnan(r["acc_lo"]) and r["verdict_acc_vs_resnet18"] == "n/a"
    assert r["n_seeds"] == 3 and not math.isnan(r["test_acc_mean"])


def test_family_with_only_failed_seeds_keeps_a_row(tmp_path):
    from bench.results import FINAL_COLUMNS, read_table, write_table

    run = make_run(tmp_path, "run-d", strengths={"cnn": 2.0, "mlp": 1.0},
                   datasets=("breastmnist",))
    final = read_table(run / "final.parquet")
    final.loc[final["family"] == "mlp", "status"] = "failed"
    write_table(run / "final.parquet", final.to_dict("records"), FINAL_COLUMNS)
    b = build_leaderboard(run, n_boot=N_BOOT).set_index("family")
    assert (b.loc["mlp", "n_seeds"], b.loc["mlp", "n_failed"]) == (0, 3)
    assert math.isnan(b.loc["mlp", "test_auc_mean"])
    assert b.loc["mlp", "verdict_auc_vs_best"] == "n/a" and b.loc["cnn", "n_seeds"] == 3
    assert "0 (+3 failed)" in format_board(b.reset_index(), "md")
    s = summarize(b.reset_index())
    assert (s.loc[s["family"] == "mlp", "auc_wins"] == 0).all()


def test_summarize_counts(board):
    s = summarize(board)
    assert set(s["family"]) == {"cnn", "mlp"}
    ranks = s.groupby("family")["mean_rank_auc"].first()
    assert ranks["cnn"] == 1.0 and ranks["mlp"] == 2.0
    assert (s["n_datasets"] == 2).all() and (s["n_compared"] == 2).all()
    for m in ("acc", "auc"):
        total = s[f"{m}_wins"] + s[f"{m}_ties"] + s[f"{m}_losses"]
        assert (total == s["n_compared"]).all()
    pub = load_published()
    for r in s.itertuples():  # recount by hand against each published method
        rows = board[board["family"] == r.family]
        got = [verdict(x.auc_lo, x.auc_hi, pub.loc[(pub["flag"] == x.dataset)
                                                   & (pub["method"] == r.method), "auc"].item())
               for x in rows.itertuples()]
        assert (r.auc_wins, r.auc_ties, r.auc_losses) == (
            got.count("above"), got.count("within noise"), got.count("below"))


def test_formats_parse(board):
    md = format_board(board, "md")
    assert "### breastmnist (binary-class)" in md and "### retinamnist" in md
    assert re.search(r"\d\.\d{3} ± \d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", md)
    assert "3 (+1 failed)" in md
    table = [ln for ln in md.splitlines() if ln.startswith("| cnn")]
    assert len(table) == 2 and all(ln.count("|") == 12 for ln in table)
    csv = pd.read_csv(io.StringIO(format_board(board, "csv")))
    assert list(csv.columns) == BOARD_COLUMNS and len(csv) == len(board)
    assert np.allclose(csv["test_auc_mean"], board["test_auc_mean"])
    records = json.loads(format_board(board, "json"))
    assert len(records) == len(board) and records[0]["dataset"] == "breastmnist"
    with pytest.raises(UserError, match="md, csv, json"):
        format_board(board, "xlsx")


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserError, match=r"not a run directory.*medbench run") as e:
        build_leaderboard(tmp_path)
    assert str(tmp_path) in str(e.value)
    with pytest.raises(UserError):
        build_leaderboard([])


def test_prediction_csvs_rescored_by_medmnist_evaluator(run_a, board, tmp_path):
    """The CSVs we write, re-scored by medmnist's own Evaluator, give our per-seed numbers."""
    seeds = load_seeds(run_a)
    per_seed: dict[tuple, list] = {}
    for flag in ("breastmnist", "retinamnist"):
        write_label_npz(tmp_path, flag)
        evaluator = medmnist.Evaluator(flag, "test", root=str(tmp_path))
        for r in seeds[(seeds["dataset"] == flag) & (seeds["status"] == "ok")].itertuples():
            (csv,) = (run_a / r.run_dir).glob(f"{flag}_test_*@seed{r.seed}.csv")
            y = pd.read_csv(csv, index_col=0, header=None).sort_index().to_numpy()
            auc, acc = evaluator.evaluate(y)
            assert (auc, acc) == (r.test_auc, r.test_acc)
            assert csv.name.startswith(f"{flag}_test_[AUC]{auc:.3f}_[ACC]{acc:.3f}")
            per_seed.setdefault((flag, r.family), []).append((acc, auc))
    for r in board[board["kind"] == "single"].itertuples():
        acc, auc = np.mean(per_seed[(r.dataset, r.family)], axis=0)
        assert r.test_acc_mean == pytest.approx(acc, abs=1e-12)
        assert r.test_auc_mean == pytest.approx(auc, abs=1e-12)


def test_ensemble_rows_rescored_by_medmnist_evaluator(run_a, board, tmp_path):
    """A `×N ens` entry = its seeds' test CSVs averaged, scored by medmnist's own Evaluator;
    its cost is its members' cost; its CI is over test images, and it holds the mean."""
    seeds = load_seeds(run_a)
    ens = board[board["kind"] == "ensemble"]
    assert len(ens) == 4
    for r in ens.itertuples():
        family = r.family.split(" ×")[0]
        ok = seeds[(seeds["dataset"] == r.dataset) & (seeds["family"] == family)
                   & (seeds["status"] == "ok")]
        assert r.family == f"{family} ×{len(ok)} ens" and r.n_seeds == len(ok)
        write_label_npz(tmp_path, r.dataset)
        evaluator = medmnist.Evaluator(r.dataset, "test", root=str(tmp_path))
        probs = [pd.read_csv(next((run_a / d).glob(f"{r.dataset}_test_*.csv")), index_col=0,
                             header=None).sort_index().to_numpy() for d in ok["run_dir"]]
        auc, acc = evaluator.evaluate(np.mean(probs, axis=0))
        assert r.test_auc_mean == pytest.approx(auc, abs=1e-9)
        assert r.test_acc_mean == pytest.approx(acc, abs=1e-9)
        assert r.acc_lo <= r.test_acc_mean <= r.acc_hi and r.auc_lo <= r.test_auc_mean <= r.auc_hi
        single = board[(board["dataset"] == r.dataset) & (board["family"] == family)].iloc[0]
        assert r.device_s == single["device_s"]


def test_one_picked_entry_per_dataset_chosen_on_validation(board):
    """`picked` marks exactly one entry per dataset: the best validation score, whatever
    the test numbers say."""
    for _, g in board.groupby("dataset"):
        assert g["picked"].sum() == 1
        assert g.loc[g["picked"], "val_score"].item() == g["val_score"].max()
    shuffled = board.assign(test_acc_mean=board["test_acc_mean"].sample(frac=1, random_state=0)
                            .to_numpy(), test_auc_mean=1 - board["test_auc_mean"])
    from bench.leaderboard import mark_picked

    assert (mark_picked(shuffled)["picked"] == board["picked"]).all()

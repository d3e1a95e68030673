"""Tests for bench.leaderboard and bench.baselines: verdict rule, numbers recomputed from the
scores, CI, published comparison, merging runs, summary counts, formats, errors, and agreement
with medmnist's own Evaluator on the prediction CSVs."""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import warnings
from pathlib import Path

import medmnist
import numpy as np
import pandas as pd
import pytest
from fake_run import STRENGTHS, labels, make_run, write_label_npz

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
    seed_ens = (board["kind"] == "ensemble") & board["weights"].isna()
    assert seed_ens.sum() == 4  # one per family
    assert len(board) == 8 + board["weights"].notna().sum()  # + a blend where one is kept
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


def _every_seed_ci(run: Path, seeds: pd.DataFrame, flag: str, family: str, task: str) -> dict:
    """The bootstrap CI over *every* ok seed's scores.npz, read here from disk (not the board's
    own lo/hi), with the board's n_boot and seed."""
    ok = seeds[(seeds["dataset"] == flag) & (seeds["family"] == family) & (seeds["status"] == "ok")]
    loaded = [np.load(run / rel / "scores.npz") for rel in ok["run_dir"]]
    assert len(loaded) == 3
    return metrics.bootstrap_ci(loaded[0]["test_labels"], [z["test_scores"] for z in loaded],
                                task, n_boot=N_BOOT)


def test_published_comparison_and_cost(run_a, board):
    pub = load_published()
    seeds = load_seeds(run_a)
    for r in board[board["kind"] == "single"].itertuples():
        p = pub[pub["flag"] == r.dataset]
        assert r.ref_method == "ResNet-18 (28)" and r.baseline_note == ""
        ci = _every_seed_ci(run_a, seeds, r.dataset, r.family, r.task)
        for m in ("acc", "auc"):
            ref = p.loc[p["method"] == "ResNet-18 (28)", m].item()
            assert getattr(r, f"ref_{m}") == ref
            assert getattr(r, f"best_{m}") == p[m].max()
            mean, lo, hi = (getattr(r, f"test_{m}_mean"), getattr(r, f"{m}_lo"),
                            getattr(r, f"{m}_hi"))
            assert getattr(r, f"delta_{m}_vs_resnet18") == pytest.approx(mean - ref)
            assert (lo, hi) == ci[m]  # the CI of every seed, not of some of them
            for which, pub_value in (("resnet18", ref), ("best", p[m].max())):
                want = ("above" if ci[m][0] > pub_value else
                        "below" if ci[m][1] < pub_value else "within noise")
                assert getattr(r, f"verdict_{m}_vs_{which}") == want
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
    # run-b: one family and its seed ensemble beside run-a's rows
    assert len(merged) == len(board) + 2 and set(merged["run"]) == {"run-a", "run-b"}
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
    table = [ln for ln in md.splitlines() if ln.startswith("| cnn |")]
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
    ens = board[(board["kind"] == "ensemble") & board["weights"].isna()]  # blends: test_ensemble
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
    """`picked` marks exactly one entry per dataset: the best validation score among the
    pickable entries, whatever the test numbers say."""
    from bench.leaderboard import pickable

    eligible = pickable(board)
    assert not eligible[board["kind"] == "single"].any()  # every family here has its ensemble
    for _, g in board[eligible].groupby("dataset"):
        assert g["picked"].sum() == 1
        assert g.loc[g["picked"], "val_score"].item() == g["val_score"].max()
    shuffled = board.assign(test_acc_mean=board["test_acc_mean"].sample(frac=1, random_state=0)
                            .to_numpy(), test_auc_mean=1 - board["test_auc_mean"])
    from bench.leaderboard import mark_picked

    assert (mark_picked(shuffled)["picked"] == board["picked"]).all()


# --- the CI and the verdict end to end, on runs whose CI is known --------------------------------

def _constructed_run(root: Path, name: str, flag: str, y: np.ndarray,
                     families: dict[str, list[np.ndarray]]) -> Path:
    """A run directory written by hand: per family one seed per score array (val = test, for
    brevity); final.parquet's numbers are medmnist's own getAUC/getACC of those scores."""
    from medmnist.evaluator import getACC, getAUC

    from bench.results import FINAL_COLUMNS, write_table

    task, run, rows = medmnist.INFO[flag]["task"], Path(root) / name, []
    for family, runs in families.items():
        for k, s in enumerate(runs):
            rel = f"final/{flag}/{family}/seed{k}"
            (run / rel).mkdir(parents=True)
            np.savez(run / rel / "scores.npz", val_labels=y, val_scores=s, test_labels=y,
                     test_scores=s)
            auc, acc = float(getAUC(y, s, task)), float(getACC(y, s, task))
            rows.append({"dataset": flag, "family": family, "seed": k, "size": 28,
                         "val_auc": auc, "val_acc": acc, "test_auc": auc, "test_acc": acc,
                         "run_dir": rel, "status": "ok", "wall_s": 1.0, "device_s": 1.0})
    write_table(run / "final.parquet", rows, FINAL_COLUMNS)
    return run


def _binary_seeds(n: int = 120, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels and three seeds that disagree a lot (signal 2.5, 1.0, 0.3), scores on a coarse
    grid so ties occur."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 1))
    runs = []
    for signal in (2.5, 1.0, 0.3):
        p1 = np.round(1 / (1 + np.exp(-(rng.normal(0, 1, n) + signal * (2 * y[:, 0] - 1)))), 2)
        runs.append(np.stack([1 - p1, p1], axis=1))
    return y, runs


def test_verdicts_of_perfect_and_inverted_models(tmp_path):
    """CI known without computing: a model right on every image has ACC = AUC = 1 in every
    replicate (above every published number), an inverted one 0 (below every one)."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (156, 1))
    perfect = [np.stack([1 - p, p], axis=1) for p in
               (np.where(y[:, 0] == 1, rng.uniform(0.6, 1, 156), rng.uniform(0, 0.4, 156))
                for _ in range(3))]
    inverted = [1 - s for s in perfect]
    run = _constructed_run(tmp_path, "known", "breastmnist", y,
                           {"perfect": perfect, "inverted": inverted})
    b = build_leaderboard(run, n_boot=200).set_index("family")
    for m in ("acc", "auc"):
        assert (b.loc["perfect", f"{m}_lo"], b.loc["perfect", f"{m}_hi"]) == (1.0, 1.0)
        assert (b.loc["inverted", f"{m}_lo"], b.loc["inverted", f"{m}_hi"]) == (0.0, 0.0)
        for which in ("resnet18", "best"):
            assert b.loc["perfect", f"verdict_{m}_vs_{which}"] == "above"
            assert b.loc["inverted", f"verdict_{m}_vs_{which}"] == "below"
    s = summarize(b.reset_index())
    s = s.set_index(["family", "method"])
    assert (s.loc["perfect", "auc_wins"] == 1).all()
    assert (s.loc["inverted", "acc_losses"] == 1).all()


def test_board_ci_is_the_reference_bootstrap_over_every_seed_and_verdicts_follow(
        tmp_path, monkeypatch):
    """The board's CI equals the slow reference bootstrap over all three seeds (not the first
    seed's), and with published numbers placed just outside and inside that known CI the
    verdicts and the summary counts come out as the rule says."""
    from reference_stats import reference_bootstrap

    y, runs = _binary_seeds()
    n_boot = 150
    want = reference_bootstrap(y, runs, "binary-class", n_boot)
    first_only = reference_bootstrap(y, runs[:1], "binary-class", n_boot)
    assert first_only["auc"][0] > want["auc"][0] + 0.02  # the seeds really disagree
    lo, hi = {m: want[m][0] for m in ("acc", "auc")}, {m: want[m][1] for m in ("acc", "auc")}
    table = pd.DataFrame([
        {"dataset": "BreastMNIST", "flag": "breastmnist", "method": "ResNet-18 (28)",
         "auc": hi["auc"] + 0.01, "acc": hi["acc"] + 0.01},                    # below
        {"dataset": "BreastMNIST", "flag": "breastmnist", "method": "Lower",
         "auc": lo["auc"] - 0.01, "acc": lo["acc"] - 0.01},                    # above
        {"dataset": "BreastMNIST", "flag": "breastmnist", "method": "Inside",
         "auc": (lo["auc"] + hi["auc"]) / 2, "acc": (lo["acc"] + hi["acc"]) / 2},  # within
    ])
    monkeypatch.setattr("bench.leaderboard.load_published", lambda: table)
    run = _constructed_run(tmp_path, "ref", "breastmnist", y, {"cnn": runs})
    board = build_leaderboard(run, n_boot=n_boot)
    r = board[board["kind"] == "single"].iloc[0]
    for m in ("acc", "auc"):
        assert (r[f"{m}_lo"], r[f"{m}_hi"]) == pytest.approx(want[m], abs=1e-12)
        assert r[f"verdict_{m}_vs_resnet18"] == "below"
        assert r[f"verdict_{m}_vs_best"] == "below"  # best published = the ResNet-18 row
        assert r[f"best_{m}_method"] == "ResNet-18 (28)"
    s = summarize(board).set_index("method")
    for m in ("acc", "auc"):
        assert s.loc["ResNet-18 (28)", [f"{m}_wins", f"{m}_ties", f"{m}_losses"]].tolist() == \
            [0, 0, 1]
        assert s.loc["Lower", [f"{m}_wins", f"{m}_ties", f"{m}_losses"]].tolist() == [1, 0, 0]
        assert s.loc["Inside", [f"{m}_wins", f"{m}_ties", f"{m}_losses"]].tolist() == [0, 1, 0]


def test_scores_that_disagree_with_the_table_are_flagged(tmp_path):
    from bench.results import FINAL_COLUMNS, read_table, write_table

    y, runs = _binary_seeds(seed=2)
    run = _constructed_run(tmp_path, "edited", "breastmnist", y, {"cnn": runs})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        build_leaderboard(run, n_boot=20)
    assert not [w for w in seen if "differ" in str(w.message)]  # consistent as written
    final = read_table(run / "final.parquet")
    final.loc[1, "test_auc"] += 0.01  # the table says one thing, the scores another
    write_table(run / "final.parquet", final.to_dict("records"), FINAL_COLUMNS)
    with pytest.warns(UserWarning, match=r"seed1: final.parquet test metrics differ"):
        build_leaderboard(run, n_boot=20)


def test_seeds_scored_on_different_test_labels_are_an_error(tmp_path):
    y, runs = _binary_seeds(seed=3)
    run = _constructed_run(tmp_path, "mixed", "breastmnist", y, {"cnn": runs})
    rel = run / "final/breastmnist/cnn/seed2/scores.npz"
    with np.load(rel) as z:
        arrays = dict(z)
    arrays["test_labels"] = arrays["test_labels"][::-1].copy()
    np.savez(rel, **arrays)
    with pytest.raises(UserError, match="different test labels"):
        build_leaderboard(run, n_boot=20)


def test_a_one_seed_entry_gets_the_reference_ci_no_std_and_no_ensemble(tmp_path):
    """`medbench train --seeds 7` makes a one-seed final table: its board row still has the
    bootstrap CI over test images (the reference bootstrap of that one seed), no std, and no
    `×1 ens` entry (an ensemble of one seed is the seed itself)."""
    from reference_stats import reference_bootstrap

    y, runs = _binary_seeds()
    n_boot = 150
    want = reference_bootstrap(y, runs[:1], "binary-class", n_boot)
    run = _constructed_run(tmp_path, "one", "breastmnist", y, {"cnn": runs[:1]})
    board = build_leaderboard(run, n_boot=n_boot)
    assert list(board["kind"]) == ["single"]
    assert list(board["picked"]) == [True]  # no ensemble to stand in for it
    r = board.iloc[0]
    assert r["n_seeds"] == 1 and math.isnan(r["test_acc_std"])
    for m in ("acc", "auc"):
        assert (r[f"{m}_lo"], r[f"{m}_hi"]) == pytest.approx(want[m], abs=1e-12)
        assert r[f"{m}_lo"] <= r[f"test_{m}_mean"] <= r[f"{m}_hi"]


def test_a_one_seed_entry_without_scores_warns_by_name_and_has_no_ci(tmp_path):
    """A one-seed entry whose scores.npz is gone: one warning naming dataset/family (read from
    that only seed), NaN CI, verdicts n/a; the mean from final.parquet stays."""
    y, runs = _binary_seeds(seed=4)
    run = _constructed_run(tmp_path, "lost", "breastmnist", y, {"cnn": runs[:1]})
    (run / "final/breastmnist/cnn/seed0/scores.npz").unlink()
    with pytest.warns(UserWarning, match=r"missing for some seeds of breastmnist/cnn: no CI"):
        board = build_leaderboard(run, n_boot=20)
    r = board.iloc[0]
    assert r["n_seeds"] == 1 and not math.isnan(r["test_auc_mean"])
    for m in ("acc", "auc"):
        assert math.isnan(r[f"{m}_lo"]) and math.isnan(r[f"{m}_hi"])
        assert r[f"verdict_{m}_vs_resnet18"] == r[f"verdict_{m}_vs_best"] == "n/a"


def test_an_edited_test_acc_alone_is_flagged(tmp_path):
    """The consistency guard compares ACC too, not only AUC."""
    from bench.results import FINAL_COLUMNS, read_table, write_table

    y, runs = _binary_seeds(seed=5)
    run = _constructed_run(tmp_path, "acc-edited", "breastmnist", y, {"cnn": runs})
    final = read_table(run / "final.parquet")
    final.loc[2, "test_acc"] -= 0.01
    write_table(run / "final.parquet", final.to_dict("records"), FINAL_COLUMNS)
    with pytest.warns(UserWarning, match=r"seed2: final.parquet test metrics differ"):
        build_leaderboard(run, n_boot=20)


def test_a_consistent_multi_label_run_is_rescored_with_its_own_task(tmp_path):
    """A multi-label run (ChestMNIST's task) is re-scored by the consistency guard with the
    multi-label rules (per-label threshold, mean per-label AUC), so numbers written by medmnist's
    own getAUC/getACC raise no 'differ' warning, and the CI is the reference bootstrap's."""
    from reference_stats import reference_bootstrap

    rng = np.random.default_rng(6)
    task = medmnist.INFO["chestmnist"]["task"]
    y = (rng.random((90, 14)) < 0.3).astype(int)
    runs = [1 / (1 + np.exp(-(rng.normal(0, 1, (90, 14)) + (1.5 + k) * (2 * y - 1))))
            for k in range(2)]
    run = _constructed_run(tmp_path, "chest", "chestmnist", y, {"cnn": runs})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        board = build_leaderboard(run, n_boot=30)
    assert not [w for w in seen if "differ" in str(w.message)]
    r = board[board["kind"] == "single"].iloc[0]
    want = reference_bootstrap(y, runs, task, 30)
    for m in ("acc", "auc"):
        assert (r[f"{m}_lo"], r[f"{m}_hi"]) == pytest.approx(want[m], abs=1e-12)


def test_a_run_on_files_that_are_not_the_release_is_held_against_no_published_number(
        run_a, board, tmp_path):
    """meta.json `official_data` False (synthetic, re-split or edited files): no reference,
    no verdict, no wins/losses and no published columns; an official run beside it keeps its
    comparison, and a run from before the field is treated as official (as it was shown)."""
    run_b = make_run(tmp_path, "run-b", seed=5, datasets=("breastmnist",))
    meta = json.loads((run_b / "meta.json").read_text())
    (run_b / "meta.json").write_text(json.dumps({**meta,
                                                 "official_data": {"breastmnist": False}}))
    alone = build_leaderboard(run_b, n_boot=100)
    assert not alone["official_data"].any()
    assert (alone["ref_method"] == "").all() and alone["best_auc_method"].isna().all()
    for col in [c for c in BOARD_COLUMNS if c.startswith("verdict_")]:
        assert (alone[col] == "n/a").all(), col
    assert summarize(alone).empty
    md = format_board(alone, "md")
    assert "best published" not in md and "ResNet" not in md
    assert "Note: not the official MedMNIST file" in md
    assert board["official_data"].all()  # no field in run-a's meta.json
    merged = build_leaderboard([run_a, run_b], n_boot=100)
    a = merged[(merged["run"] == "run-a") & (merged["dataset"] == "breastmnist")]
    assert (a["ref_method"] == "ResNet-18 (28)").all() and a["ref_acc"].notna().all()
    assert set(summarize(merged)["n_compared"]) == {2}  # run-a's two datasets, not run-b's


# --- the test-time flip entry --------------------------------------------------------------------

def _flip_run(root: Path, name: str, val_flip_helps: bool, test_shift: float = 0.0) -> Path:
    """Three seeds on BreastMNIST-shaped labels whose mirrored-image scores are a stronger
    signal than the plain ones on validation (or a weaker one), and on test always stronger,
    shifted by `test_shift`; final.parquet holds medmnist's own metrics of the plain scores."""
    from medmnist.evaluator import getACC, getAUC

    from bench.results import FINAL_COLUMNS, write_table

    rng = np.random.default_rng(3)
    y_val, y_test = labels("breastmnist", "val"), labels("breastmnist", "test")

    def probs(y: np.ndarray, signal: float, shift: float = 0.0) -> np.ndarray:
        p1 = 1 / (1 + np.exp(-(rng.normal(0, 1, len(y)) + signal * (2 * y[:, 0] - 1) + shift)))
        return np.stack([1 - p1, p1], axis=1)

    run, rows = Path(root) / name, []
    for k in range(3):
        rel = f"final/breastmnist/cnn_small/seed{k}"
        (run / rel).mkdir(parents=True)
        s = {"val_scores": probs(y_val, 0.6), "test_scores": probs(y_test, 0.6),
             "val_scores_hflip": probs(y_val, 2.0 if val_flip_helps else 0.0),
             "test_scores_hflip": probs(y_test, 2.0, test_shift)}
        np.savez(run / rel / "scores.npz", val_labels=y_val, test_labels=y_test, **s)
        m = {f"{sp}_{name}": float(f(y, s[f"{sp}_scores"], "binary-class"))
             for sp, y in (("val", y_val), ("test", y_test))
             for name, f in (("auc", getAUC), ("acc", getACC))}
        rows.append({"dataset": "breastmnist", "family": "cnn_small", "seed": k, "size": 28,
                     **m, "run_dir": rel, "status": "ok", "wall_s": 1.0, "device_s": 2.0})
    write_table(run / "final.parquet", rows, FINAL_COLUMNS)
    return run


def test_a_flip_entry_appears_only_when_validation_says_it_helps(tmp_path):
    """`cnn_small ×3 ens +hflip` averages each seed's plain and mirrored probabilities; its
    test numbers re-score exactly with medmnist's Evaluator, its cost is its members', the
    report's entry_scores rebuild the same probabilities, and validation picks it here. When
    the mirrored scores are worse on validation there is no such entry, whatever test says."""
    from bench.leaderboard import entry_scores

    run = _flip_run(tmp_path, "helps", val_flip_helps=True)
    board = build_leaderboard(run, n_boot=200)
    flip = board[board["family"] == "cnn_small ×3 ens +hflip"]
    assert len(flip) == 1
    r = flip.iloc[0]
    assert r["tta"] == "hflip" and r["kind"] == "ensemble" and r["n_seeds"] == 3
    assert bool(r["picked"])  # the best validation score of the dataset's entries
    loaded = [np.load(run / d / "scores.npz") for d in load_seeds(run)["run_dir"]]
    test = np.mean([(s["test_scores"] + s["test_scores_hflip"]) / 2 for s in loaded], axis=0)
    write_label_npz(tmp_path, "breastmnist")
    auc, acc = medmnist.Evaluator("breastmnist", "test", root=str(tmp_path)).evaluate(test)
    assert (r["test_auc_mean"], r["test_acc_mean"]) == pytest.approx((auc, acc), abs=1e-9)
    single = board[board["family"] == "cnn_small"].iloc[0]
    assert r["device_s"] == single["device_s"] == 6.0
    rebuilt = entry_scores(load_seeds(run), r)
    np.testing.assert_allclose(rebuilt["test_scores"], test)
    plain = board[board["family"] == "cnn_small ×3 ens"].iloc[0]
    assert r["val_score"] > plain["val_score"]
    assert "+hflip" in format_board(board)

    for shift in (0.0, 3.0):  # test scores (labels and all) never decide
        worse = build_leaderboard(_flip_run(tmp_path, f"worse{shift}", val_flip_helps=False,
                                            test_shift=shift), n_boot=50)
        assert not worse["family"].str.contains("hflip").any()
        assert set(worse["tta"].dropna()) <= {""}


def test_a_flip_gain_within_validation_noise_is_no_entry(tmp_path):
    """Mirrored scores that fix one wrong validation image raise the ensemble's validation
    score, but by less than the paired bootstrap can tell from zero: no `+hflip` entry."""
    from bench.leaderboard import ensemble_scores, flip_helps

    run = _flip_run(tmp_path, "tiny", val_flip_helps=True)
    y = labels("breastmnist", "val")[:, 0]
    seeds = load_seeds(run)
    p1 = ensemble_scores(seeds)["val_scores"][:, 1]
    wrong = np.flatnonzero((p1 > 0.5) != (y == 1))
    fixed = wrong[np.argmin(np.abs(p1[wrong] - 0.5))]  # the ensemble's closest miss
    for rel in seeds["run_dir"]:
        with np.load(run / rel / "scores.npz") as z:
            s = {n: z[n] for n in z.files}
        mirrored = s["val_scores"].copy()
        mirrored[fixed] = np.eye(2)[y[fixed]]  # the mirror gets that one image right
        np.savez(run / rel / "scores.npz", **{**s, "val_scores_hflip": mirrored})
    plain, flipped = ensemble_scores(seeds), ensemble_scores(seeds, tta="hflip")
    from bench.ensemble import val_score

    assert val_score(y[:, None], flipped["val_scores"], "binary-class") > \
        val_score(y[:, None], plain["val_scores"], "binary-class")
    assert not flip_helps(flipped, plain, "binary-class")
    assert not build_leaderboard(run, n_boot=50)["family"].str.contains("hflip").any()


def test_a_family_competes_for_the_pick_as_its_seed_ensemble(tmp_path):
    """A single-model row whose seeds also form a `×N ens` entry is never picked, even with
    the higher validation score: the ensemble stands in for it; it stays on the board."""
    from bench.leaderboard import mark_picked

    y, runs = _binary_seeds()
    board = build_leaderboard(_constructed_run(tmp_path, "r", "breastmnist", y,
                                               {"cnn": runs, "mlp": runs[1:]}), n_boot=50)
    single = board["family"] == "cnn"
    boosted = mark_picked(board.assign(val_score=board["val_score"].where(~single, 2.0)))
    assert not boosted.loc[single, "picked"].any() and boosted["picked"].sum() == 1
    assert set(board["family"]) >= {"cnn", "cnn ×3 ens", "mlp", "mlp ×2 ens"}


def test_pick_rule_study_counts_test_only_on_non_official_runs(tmp_path):
    """scripts/pick_rule_study.py: validation pairs from every run, test pairs only from runs
    whose meta.json says the files are not the release."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "pick_rule_study", Path(__file__).resolve().parent.parent / "scripts"
        / "pick_rule_study.py")
    study = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(study)  # type: ignore[union-attr]
    y, runs = _binary_seeds()
    official = _constructed_run(tmp_path, "official", "breastmnist", y, {"cnn": runs})
    other = _constructed_run(tmp_path, "other", "breastmnist", y, {"cnn": runs, "mlp": runs[:2]})
    (other / "meta.json").write_text(json.dumps({"official_data": {"breastmnist": False}}))
    d = study.pairs([official, other])
    assert sorted(d["family"]) == ["cnn", "cnn", "mlp"]
    assert d["official_data"].tolist().count(False) == 2
    nonoff = d[~d["official_data"]]
    acc = study.ahead(nonoff, "test_acc_ens", "test_acc_single")
    assert acc["n"] == 2 and acc["ensemble_ahead"] + acc["ensemble_behind"] + acc["tied"] == 2
    assert study.ahead(d, "val_ens", "val_single")["n"] == 3

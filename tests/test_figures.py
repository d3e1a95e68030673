"""Tests for bench.figures and the report's figure call sites: each figure is drawn from a small
constructed board, and the numbers it plots are the ones it claims to (the forest plot's
differences are ours minus published, the cost axis counts the selection re-runs, the seed strips'
axis spans at least MIN_SPAN and holds the published line); critical-difference and importance
plots are left out below their thresholds, with a sentence in their place, and drawn above."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_run import make_run

from bench import figures
from bench import report as rpt
from bench.baselines import load_published
from bench.leaderboard import build_leaderboard, comparable_baselines, load_seeds
from bench.results import SELECTION_COLUMNS, TRIAL_COLUMNS, write_table


@pytest.fixture
def drawn(monkeypatch) -> dict:
    """Keep the figure instead of saving it: `drawn["fig"]` after a fig_* call."""
    import matplotlib.pyplot as plt

    kept: dict = {}

    def keep(fig, path):
        kept["fig"] = fig
        fig.canvas.draw()
        return path

    monkeypatch.setattr(figures, "_save", keep)
    yield kept
    plt.close("all")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), "run-a")


@pytest.fixture(scope="module")
def board(run) -> pd.DataFrame:
    return build_leaderboard([run], n_boot=50)


def _png(path: Path | None) -> None:
    assert path is not None and path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- axis rule -----------------------------------------------------------------------------------

def test_metric_limits_span_at_least_the_minimum_and_hold_the_reference():
    lo, hi = figures.metric_limits([0.850, 0.860, 0.855])  # a 0.01 spread
    assert hi - lo >= figures.MIN_SPAN
    assert lo < 0.850 and hi > 0.860
    lo, hi = figures.metric_limits([0.97, 0.99, 1.0])  # near the top: moved inside [0, 1]
    assert hi - lo >= figures.MIN_SPAN and hi <= 1.0 + 0.03 * (hi - lo) + 1e-12
    assert lo >= 0.8 - 0.01
    lo, hi = figures.metric_limits([0.2, 0.9, float("nan"), None])  # wide already: as is (+pad)
    assert lo == pytest.approx(0.2 - 0.021) and hi == pytest.approx(0.9 + 0.021)
    assert figures.metric_limits([]) == (0.0, 1.0)


# --- forest plot ---------------------------------------------------------------------------------

def test_forest_rows_are_ours_minus_published_with_our_ci_shifted():
    entry = pd.Series({"test_acc_mean": 0.80, "acc_lo": 0.75, "acc_hi": 0.85,
                       "test_auc_mean": 0.90, "auc_lo": 0.88, "auc_hi": 0.93})
    published = pd.DataFrame({"method": ["A", "B"], "acc": [0.70, 0.82], "auc": [0.95, 0.89]})
    rows = figures.forest_rows(entry, published).set_index(["method", "metric"])
    a = rows.loc[("A", "acc")]
    # ours minus published (published minus ours would flip every sign and verdict)
    assert (a["diff"], a["lo"], a["hi"]) == pytest.approx((0.10, 0.05, 0.15))
    assert a["verdict"] == "above"
    b = rows.loc[("A", "auc")]
    assert (b["diff"], b["lo"], b["hi"]) == pytest.approx((-0.05, -0.07, -0.02))
    assert b["verdict"] == "below"
    assert rows.loc[("B", "acc"), "verdict"] == "within noise"  # [-0.07, 0.03] holds zero
    assert rows.loc[("B", "auc"), "diff"] == pytest.approx(0.01)


def test_forest_plot_draws_the_boards_differences_and_marks_the_reference(board, drawn,
                                                                          tmp_path):
    entry = rpt.picked_entries(board).iloc[0]
    cand, ref, _ = comparable_baselines(load_published(), entry["dataset"], 28)
    assert figures.fig_forest(entry, cand, ref, "t", tmp_path / "f.png") is not None
    fig = drawn["fig"]
    for ax, m in zip(fig.axes[:2], figures.METRICS, strict=True):
        ticks = {t.get_text(): t for t in fig.axes[0].get_yticklabels()}
        assert set(ticks) == set(cand["method"]) and ticks[ref].get_fontweight() == "bold"
        points = np.vstack([c.get_offsets() for c in ax.collections
                            if c.get_offsets().size and c.get_offsets().shape[1] == 2
                            and type(c).__name__ == "PathCollection"])
        x_by_y = {round(float(y)): float(x) for x, y in points}
        ys = {t.get_text(): round(t.get_position()[1]) for t in fig.axes[0].get_yticklabels()}
        for p in cand.itertuples():
            assert x_by_y[ys[p.method]] == pytest.approx(entry[f"test_{m}_mean"] - getattr(p, m))
        lo, hi = ax.get_xlim()
        assert lo < 0 < hi and -lo == pytest.approx(hi) and hi >= figures.MIN_SPAN / 2


def test_forest_plot_is_written_and_omitted_without_published_numbers(board, tmp_path):
    entry = rpt.picked_entries(board).iloc[0]
    cand, ref, _ = comparable_baselines(load_published(), entry["dataset"], 28)
    _png(figures.fig_forest(entry, cand, ref, "t", tmp_path / "forest.png"))
    none, _, _ = comparable_baselines(load_published(), entry["dataset"], 28, False)
    assert figures.fig_forest(entry, none, "", "t", tmp_path / "no.png") is None


def test_dataset_section_links_the_forest_plot_or_says_why_not(board, run, tmp_path):
    seeds = load_seeds([run])
    entry = rpt.picked_entries(board).iloc[0]
    md = "\n".join(rpt._published_figures_md(board, seeds, entry, tmp_path, "figs"))
    assert f"![{entry['dataset']} forest plot](figs/{entry['dataset']}_forest.png)" in md
    _png(tmp_path / f"{entry['dataset']}_forest.png")
    other = board.assign(official_data=False)
    md = "\n".join(rpt._published_figures_md(other, seeds, other.loc[entry.name], tmp_path,
                                             "figs"))
    assert "forest.png" not in md and "_No forest plot for" in md


# --- seed strips ---------------------------------------------------------------------------------

def _strip(values: list[float], ref: float, kind: str = "single") -> dict:
    v = np.asarray(values)
    return {"name": "cnn", "kind": kind, "picked": True, "n_seeds": len(v),
            "seeds_acc": v, "seeds_auc": v,
            "test_acc_mean": v.mean(), "acc_lo": v.min(), "acc_hi": v.max(),
            "test_auc_mean": v.mean(), "auc_lo": v.min(), "auc_hi": v.max(),
            "ref_method": "ResNet-18 (28)", "ref_acc": ref, "ref_auc": ref,
            "best_acc_method": "ResNet-18 (28)", "best_acc": ref,
            "best_auc_method": "ResNet-18 (28)", "best_auc": ref}


def test_seed_strip_axis_spans_the_minimum_and_holds_the_reference(drawn, tmp_path):
    close = pd.DataFrame([_strip([0.851, 0.856, 0.860], 0.863)])  # a 0.01 gap
    figures.fig_seed_strips(close, "breastmnist", tmp_path / "s.png")
    for ax in drawn["fig"].axes[:2]:
        lo, hi = ax.get_ylim()
        assert hi - lo >= figures.MIN_SPAN and lo < 0.851 and hi > 0.863
        dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections
                               if type(c).__name__ == "PathCollection"])
        np.testing.assert_allclose(np.sort(dots), [0.851, 0.856, 0.860])  # every seed a dot
        assert any("CI" in t.get_text() for t in ax.get_legend().get_texts())
    assert "picked" in drawn["fig"].axes[0].get_xticklabels()[0].get_text()
    far = pd.DataFrame([_strip([0.851, 0.856, 0.860], 0.5)])  # the reference far below
    figures.fig_seed_strips(far, "breastmnist", tmp_path / "s.png")
    lo, hi = drawn["fig"].axes[0].get_ylim()
    assert lo < 0.5 < 0.86 < hi


def test_seed_strips_from_the_board_show_every_seed_and_each_ci(board, run, tmp_path):
    seeds = load_seeds([run])
    entries = rpt.strip_entries(board, seeds, "retinamnist")
    assert set(entries["kind"]) <= set(figures.TRAINED_KINDS)
    single = entries[entries["kind"] == "single"].set_index("family")
    ok = seeds[(seeds["dataset"] == "retinamnist") & (seeds["status"] == "ok")]
    for fam in ("cnn", "mlp"):
        np.testing.assert_allclose(np.sort(single.loc[fam, "seeds_acc"]),
                                   np.sort(ok[ok["family"] == fam]["test_acc"].astype(float)))
    assert all(len(v) == 0 for v in entries.loc[entries["kind"] == "ensemble", "seeds_acc"])
    _png(figures.fig_seed_strips(entries, "retinamnist", tmp_path / "seeds.png"))
    md = "\n".join(rpt._published_figures_md(board, seeds, entries.iloc[0], tmp_path, "f"))
    assert f"at least {figures.MIN_SPAN:g}" in md  # the caption states the axis rule


# --- cost ----------------------------------------------------------------------------------------

def _with_selection(run: Path, tmp_path: Path) -> Path:
    """A copy of the fake run with selection re-runs: cnn 2 x 50 s (one failed), mlp 1 x 7 s."""
    import shutil

    out = tmp_path / run.name
    shutil.copytree(run, out)
    rows = [{"dataset": "breastmnist", "family": "cnn", "candidate": "cnn_00000", "seed": 1,
             "device_s": 50.0, "status": "ok"},
            {"dataset": "breastmnist", "family": "cnn", "candidate": "cnn_00001", "seed": 1,
             "device_s": 50.0, "status": "failed"},
            {"dataset": "breastmnist", "family": "mlp", "candidate": "mlp_00000", "seed": 1,
             "device_s": 7.0, "status": "ok"}]
    write_table(out / "selection.parquet", rows, SELECTION_COLUMNS)
    return out


def test_cost_counts_selection_reruns_and_marks_the_pick(board, run, drawn, tmp_path):
    sel = rpt.load_selection([_with_selection(run, tmp_path)])
    cost = rpt.entry_costs(board, sel)
    extra = {"cnn": 100.0, "mlp": 7.0}
    for i, r in board.iterrows():
        fams = rpt.entry_weights(r)
        want = r["device_s"] + (sum(extra.get(f, 0.0) for f in fams)
                                if r["dataset"] == "breastmnist" else 0.0)
        assert cost[i] == pytest.approx(want), r["family"]
    assert figures.fig_cost(board, tmp_path / "cost.png", cost) is not None
    fig = drawn["fig"]
    ax = next(a for a in fig.axes if a.get_title() == "breastmnist")
    xs = sorted(float(c.lines[0].get_xdata()[0]) for c in ax.containers)
    shown = figures.cost_entries(board[board["dataset"] == "breastmnist"])
    assert xs == pytest.approx(sorted(cost[shown.index]))
    assert "selection re-runs" in ax.get_xlabel()
    pick = board[(board["dataset"] == "breastmnist") & board["picked"]].index[0]
    stars = [c for c in ax.collections if "picked" in str(c.get_label())]
    assert len(stars) == 1
    np.testing.assert_allclose(stars[0].get_offsets()[0],
                               [cost[pick], board.loc[pick, "test_acc_mean"]])
    lo, hi = ax.get_ylim()
    assert hi - lo >= figures.MIN_SPAN


def test_cost_section_without_selection_rows_is_the_boards_cost(board, tmp_path):
    assert rpt.load_selection([tmp_path]).empty
    pd.testing.assert_series_equal(rpt.entry_costs(board, None), board["device_s"].astype(float),
                                   check_names=False)
    text = "\n".join(rpt._cost_md(board, tmp_path, "figs", None))
    assert "![accuracy vs cost](figs/cost.png)" in text and "star: the picked entry" in text
    _png(tmp_path / "cost.png")


# --- critical difference: 5 datasets up ----------------------------------------------------------

FIVE = ("breastmnist", "pneumoniamnist", "retinamnist", "bloodmnist", "dermamnist")


def _board_over(flags: tuple[str, ...]) -> pd.DataFrame:
    """Two families on each dataset, numbers near the published ones (no file behind them)."""
    rows = []
    for i, flag in enumerate(flags):
        for fam, d in (("cnn", 0.02), ("mlp", -0.03 - 0.01 * i)):
            acc, auc = 0.8 + d, 0.9 + d
            rows.append({"run": "r", "dataset": flag, "family": fam, "size": 28,
                         "kind": "single", "n_seeds": 3, "official_data": True,
                         "test_acc_mean": acc, "acc_lo": acc - 0.03, "acc_hi": acc + 0.03,
                         "test_auc_mean": auc, "auc_lo": auc - 0.03, "auc_hi": auc + 0.03})
    return pd.DataFrame(rows)


def test_critical_difference_only_from_five_datasets(tmp_path):
    few = "\n".join(rpt._across_md(_board_over(FIVE[:4]), tmp_path, "figs"))
    assert "critical_difference.png" not in few
    assert not (tmp_path / "critical_difference.png").exists()
    assert f"_No critical-difference diagram: 4 datasets, and it is drawn from " \
           f"{figures.MIN_CD_DATASETS} up" in few
    assert "| cnn |" in few and "Friedman p" not in few  # ranks described, not tested
    five = "\n".join(rpt._across_md(_board_over(FIVE), tmp_path, "figs"))
    assert "![critical difference](figs/critical_difference.png)" in five
    assert "Friedman p" in five and "No critical-difference diagram" not in five
    _png(tmp_path / "critical_difference.png")


# --- hyperparameter importance: 20 trials up -----------------------------------------------------

def _study(name: str, n: int, seed: int):
    """An in-memory study of n finished trials whose value depends on lr only."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution

    rng = np.random.default_rng(seed)
    dists = {"lr": FloatDistribution(1e-4, 1e-1, log=True), "width": IntDistribution(8, 64)}
    study = optuna.create_study(direction="maximize", study_name=name)
    for _ in range(n):
        lr, width = 10 ** rng.uniform(-4, -1), int(rng.integers(8, 65))
        v = 0.9 - 0.1 * abs(np.log10(lr) + 2.5) + rng.normal(0, 0.002)
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "width": width}, distributions=dists, value=v,
            intermediate_values={0: v - 0.05, 1: v}))
    return study


def test_importance_only_from_twenty_trials(tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    n_many = figures.MIN_IMPORTANCE_TRIALS
    studies = {"r": {"breastmnist__cnn": _study("breastmnist__cnn", n_many, 0),
                     "breastmnist__mlp": _study("breastmnist__mlp", n_many - 1, 1)}}
    trials = pd.DataFrame(columns=[*TRIAL_COLUMNS, "run"])
    md = "\n".join(rpt._search_md({}, trials, "breastmnist", studies, tmp_path, "figs"))
    assert "![breastmnist hyperparameter importance](figs/breastmnist_importance.png)" in md
    assert (f"_No hyperparameter-importance plot for mlp ({n_many - 1} trials): it is drawn "
            f"from {n_many} trials up") in md
    assert "cnn (" not in md.split("_No hyperparameter-importance plot")[1].split("\n")[0]
    assert "breastmnist_parallel.png" in md  # the trials themselves are always shown
    _png(tmp_path / "breastmnist_importance.png")
    few = {"r": {"breastmnist__mlp": studies["r"]["breastmnist__mlp"]}}
    out = tmp_path / "few"
    out.mkdir()
    md = "\n".join(rpt._search_md({}, trials, "breastmnist", few, out, "figs"))
    assert "importance.png" not in md and not (out / "breastmnist_importance.png").exists()
    assert "_No hyperparameter-importance plot for mlp" in md
    _png(out / "breastmnist_parallel.png")
    panels = [("cnn", {}, "n")]
    assert figures.fig_importance(panels, "breastmnist", out / "x.png") is None

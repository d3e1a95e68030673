"""Tests for bench.report: the markdown and every figure are written, non-empty, linked, and
nothing half-written is left behind; the numbers behind the new figures (ECE, ROC points,
critical-difference ranks, finish order) are checked against hand-computed values and
scikit-learn/scipy; every table `medbench leaderboard --format md` prints is valid markdown."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_run import labels, make_run, noisy_scores
from typer.testing import CliRunner

from bench import figures, metrics
from bench import report as rpt
from bench.cli import app
from bench.data import dataset_info
from bench.errors import UserError
from bench.leaderboard import build_leaderboard
from bench.report import write_report

# no importance plot (3 trials per family) and no critical-difference diagram (2 datasets):
# bench.figures draws those only from MIN_IMPORTANCE_TRIALS trials / MIN_CD_DATASETS datasets up
PER_DATASET = ("vs_published", "forest", "seeds", "roc_pr", "calibration", "confusion",
               "misclassified", "learning_curves", "parallel")


def _data_matching_fake_labels(folder: Path) -> Path:
    """MedMNIST-layout files whose labels are the fake run's, so the report finds 'the' test
    images the fake scores belong to."""
    for flag in ("breastmnist", "retinamnist"):
        info = dataset_info(flag)
        rng = np.random.default_rng(0)
        arrays = {}
        for split in ("train", "val", "test"):
            y = labels(flag, split).astype(np.uint8)
            arrays[f"{split}_labels"] = y
            arrays[f"{split}_images"] = rng.integers(0, 256, (len(y), *info.sample_shape(28)),
                                                     dtype=np.uint8)
        np.savez(folder / f"{flag}.npz", **arrays)
    return folder


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    run_a = make_run(root, "run-a")
    run_b = make_run(root, "run-b", strengths={"cnn": 2.0, "vgg": 0.8}, seed=1,
                     datasets=("breastmnist",))
    data = _data_matching_fake_labels(tmp_path_factory.mktemp("data"))
    with pytest.warns(UserWarning, match="search space of 'cnn' not loadable"):
        return write_report([run_a, run_b], root / "reports" / "demo.md", n_boot=200,
                            data_dir=data)


def test_report_writes_markdown_and_figures(report):
    md = report.read_text()
    figs = report.parent / "demo_figures"
    pngs = sorted(p.name for p in figs.iterdir())
    assert pngs == sorted([
        "cost.png", "trials_progress.png",
        *(f"{f}_{kind}.png" for f in ("breastmnist", "retinamnist") for kind in PER_DATASET)])
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(Path(x).name for x in linked) == pngs  # every PNG linked, once
    for rel in linked:
        png = report.parent / rel
        assert png.is_file() and png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_contents_and_order(report):
    md = report.read_text()
    for text in ("## Runs", "medbench run --name run-a", "spec.yaml", "## Leaderboard",
                 "### breastmnist (binary-class)", "## Across datasets", "| run-b |",
                 "Picked entry:", "| 0 | malignant |", "doi:10.1038/s41597-022-01721-8",
                 "ECE", "No critical-difference diagram: 2 datasets", "†",
                 "No hyperparameter-importance plot for run-a: cnn (3 trials)", "studies.db",
                 "| val true | val predicted |"):
        assert text in md, text
    heads = [f"\n{h}\n" for h in ("## Results", "## Leaderboard", "## Across datasets",
                                    "## breastmnist", "## Search", "## Runs")]
    assert [md.index(h) for h in heads] == sorted(md.index(h) for h in heads)  # results first
    assert not list(report.parent.rglob(".*"))  # no temp files left
    _assert_tables_valid(md)


def test_report_rejects_a_non_run_directory(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        write_report([tmp_path], tmp_path / "r.md")
    assert not (tmp_path / "r.md").exists()


def test_missing_data_skips_the_image_figure_with_a_reason(tmp_path):
    images, why = rpt._test_images("breastmnist", 28, labels("breastmnist", "test"), tmp_path)
    assert images is None and "not found" in why
    other = _data_matching_fake_labels(tmp_path)
    images, why = rpt._test_images("breastmnist", 28, labels("breastmnist", "val"), other)
    assert images is None and "differ" in why


# --- the numbers behind the figures ------------------------------------------------------------

def test_ece_against_a_hand_computed_case():
    conf = np.array([0.95, 0.95, 0.65, 0.65])
    correct = np.array([1, 0, 1, 1])
    # bin [0.9, 1]: accuracy 0.5, confidence 0.95, half the images -> 0.5 * 0.45
    # bin [0.6, 0.7]: accuracy 1.0, confidence 0.65, half the images -> 0.5 * 0.35
    ece, bins = rpt.expected_calibration_error(correct, conf)
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    assert bins["count"].tolist() == [2, 2]
    assert bins["accuracy"].tolist() == [1.0, 0.5]
    assert rpt.expected_calibration_error(np.array([1, 1, 0, 0]),
                                          np.array([1.0, 1.0, 0.0, 0.0]))[0] == 0.0


def test_ece_bins_are_scikit_learns():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(3)
    conf = rng.uniform(0.3, 1.0, 500)
    correct = (rng.uniform(size=500) < conf ** 2).astype(int)
    ece, bins = rpt.expected_calibration_error(correct, conf)
    acc, mean_conf = calibration_curve(correct, conf, n_bins=rpt.N_BINS)
    np.testing.assert_allclose(bins["accuracy"], acc)
    np.testing.assert_allclose(bins["confidence"], mean_conf)
    assert bins["count"].sum() == 500
    assert ece == pytest.approx(np.sum(bins["count"] / 500 * np.abs(acc - mean_conf)))


def test_top_label_confidence_follows_the_official_decision_rule():
    y = np.array([[1], [0], [1]])
    s = np.array([[0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])
    conf, correct = rpt.confidence_and_correct(y, s, metrics.BINARY)
    np.testing.assert_allclose(conf, [0.8, 0.6, 0.7])
    assert correct.tolist() == [1, 1, 0]
    assert correct.mean() == pytest.approx(metrics.acc_score(y, s, metrics.BINARY))


@pytest.mark.parametrize("flag", ["breastmnist", "retinamnist"])
def test_roc_points_equal_scikit_learns_and_average_to_the_official_auc(flag):
    from sklearn.metrics import precision_recall_curve, roc_curve

    task = dataset_info(flag).task
    y = labels(flag, "test")
    k = dataset_info(flag).n_classes
    s = noisy_scores(y, k, 1.0, np.random.default_rng(0))
    curves = rpt.roc_pr_curves(y, s, task)
    classes = [1] if task == metrics.BINARY else list(range(k))
    assert [c["class"] for c in curves] == classes  # binary: the positive class's column only
    for c in curves:
        fpr, tpr, _ = roc_curve(y.reshape(-1) == c["class"], s[:, c["class"]])
        np.testing.assert_array_equal(c["fpr"], fpr)
        np.testing.assert_array_equal(c["tpr"], tpr)
        prec, rec, _ = precision_recall_curve(y.reshape(-1) == c["class"], s[:, c["class"]])
        np.testing.assert_array_equal(c["precision"], prec)
        np.testing.assert_array_equal(c["recall"], rec)
    official = metrics.auc_score(y, s, task)
    assert np.mean([c["auc"] for c in curves]) == pytest.approx(official, abs=1e-12)


def test_critical_difference_ranks_on_a_constructed_table():
    from scipy.stats import friedmanchisquare

    table = pd.DataFrame({"A": [0.9, 0.8, 0.7], "B": [0.8, 0.8, 0.9], "C": [0.7, 0.6, 0.8]},
                         index=["d1", "d2", "d3"])
    # d1: A 1, B 2, C 3; d2: A and B tie (1.5 each), C 3; d3: B 1, C 2, A 3
    ranks = rpt.mean_ranks(table)
    assert list(ranks.index) == ["B", "A", "C"]
    np.testing.assert_allclose(ranks.to_numpy(), [4.5 / 3, 5.5 / 3, 8 / 3])
    res = rpt.friedman_nemenyi(table)
    assert res["friedman_p"] == pytest.approx(friedmanchisquare(*table.T.to_numpy()).pvalue)
    # Demsar (2006), Table 5a: q_0.05 = 2.343 for k = 3
    assert res["cd"] == pytest.approx(2.343 * np.sqrt(3 * 4 / (6 * 3)), abs=2e-3)
    assert figures._cliques(ranks, res["cd"]) == [(ranks["B"], ranks["C"])]  # none separable
    assert figures._cliques(ranks, 0.5) == [(ranks["B"], ranks["A"])]


def test_cd_table_keeps_competitors_present_on_every_dataset(tmp_path):
    board = build_leaderboard([make_run(tmp_path, "run-a")], n_boot=50)
    table = rpt.cd_table(board, "auc")
    assert set(table.index) == {"breastmnist", "retinamnist"}
    assert not table.isna().any().any()
    assert "ResNet-18 (28) †" in table.columns and "cnn" in table.columns
    assert table.loc["breastmnist", "ResNet-18 (28) †"] == pytest.approx(0.901)


def test_search_history_in_finish_order_not_row_order():
    trials = pd.DataFrame({"best_val_auc": [0.9, 0.5, 0.7, None],
                           "finished_at": [30.0, 10.0, 20.0, 25.0]})
    # finish order: 0.5, 0.7, (failed), 0.9 -- row order would claim 0.9 from the first trial
    np.testing.assert_allclose(figures.best_so_far(trials), [0.5, 0.7, 0.7, 0.9])
    old = trials.drop(columns="finished_at")  # a run made before finish times were recorded
    np.testing.assert_allclose(figures.best_so_far(old), [0.9, 0.9, 0.9, 0.9])


def test_cost_figure_one_entry_gives_a_sentence_not_a_dot(tmp_path):
    board = build_leaderboard([make_run(tmp_path, "run-a", strengths={"cnn": 3.0})], n_boot=50)
    board = board[board["family"] == "cnn"]
    assert figures.fig_cost(board, tmp_path / "cost.png") is None
    text = "\n".join(rpt._cost_md(board, tmp_path, "figs"))
    assert "One entry only" in text and "cost.png" not in text


def test_cost_log_axis_labels_do_not_overlap(tmp_path, monkeypatch):
    board = build_leaderboard([make_run(tmp_path, "run-a")], n_boot=50)
    board = board[board["dataset"] == "retinamnist"].copy()
    board["device_s"] = np.geomspace(140, 2600, len(board))  # ~1.3 decades, as RetinaMNIST
    kept = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: kept.setdefault("fig", fig) and path)
    figures.fig_cost(board, tmp_path / "cost.png")
    fig = kept["fig"]
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    boxes = [t.get_window_extent() for t in ax.get_xticklabels(which="both")
             if t.get_visible() and t.get_text() and
             ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
    assert 2 <= len(boxes) <= 7
    boxes.sort(key=lambda b: b.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False))  # no overlap


# --- markdown validity ----------------------------------------------------------------------------

def _tables(text: str) -> list[list[str]]:
    blocks, cur = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            blocks.append(cur)
            cur = []
    return blocks + ([cur] if cur else [])


def _cells(line: str) -> int:
    assert line.startswith("|") and line.rstrip().endswith("|"), line
    return len(re.split(r"(?<!\\)\|", line.strip())[1:-1])


def _assert_tables_valid(text: str) -> int:
    tables = _tables(text)
    for t in tables:
        assert len(t) >= 2, t
        assert re.fullmatch(r"\|(\s*:?-{3,}:?\s*\|)+", t[1].strip()), t[1]
        widths = {_cells(line) for line in t}
        assert len(widths) == 1, (widths, t[0])
    return len(tables)


def test_leaderboard_md_prints_only_valid_markdown_tables(tmp_path):
    run = make_run(tmp_path, "run-a")
    result = CliRunner().invoke(app, ["leaderboard", str(run), "--format", "md",
                                      "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    out = result.output
    across = out[out.index("## Across datasets"):]
    assert _assert_tables_valid(across) == 1  # the summary is a markdown table, not pandas text
    assert "auc_wins" not in out  # no raw DataFrame column names
    assert _assert_tables_valid(out) == 3  # two datasets + the summary
    # no line outside a table looks like pandas' fixed-width text
    assert not [ln for ln in out.splitlines() if re.match(r"^\s*\w+\s{2,}\w+\s{2,}", ln)]


def test_report_defaults_to_the_run_directory(tmp_path):
    run = make_run(tmp_path, "run-a", strengths={"cnn": 3.0}, datasets=("breastmnist",))
    result = CliRunner().invoke(app, ["report", str(run), "--n-boot", "50"])
    assert result.exit_code == 0, result.output
    assert (run / "report.md").is_file() and (run / "studies.db").is_file()


def _mix_scores(test_pred_pos: float) -> dict[str, np.ndarray]:
    """Binary scores: validation 100 images (75 positive), each predicted right; test 100
    images (60 positive) of which `test_pred_pos` are called positive (negatives first)."""
    def split(n_pos: int, n: int, called_pos: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.r_[np.zeros(n - n_pos), np.ones(n_pos)].astype(int)[:, None]
        p1 = np.r_[np.zeros(n - called_pos), np.ones(called_pos)] * 0.8 + 0.1
        return y, np.c_[1 - p1, p1]
    vy, vs = split(75, 100, 75)
    ty, ts = split(60, 100, int(test_pred_pos))
    return {"val_labels": vy, "val_scores": vs, "test_labels": ty, "test_scores": ts}


def test_class_mix_names_a_test_split_shift_and_only_then():
    names = ["normal", "pneumonia"]
    mix = rpt.class_mix(_mix_scores(75), metrics.BINARY, names)
    test = mix[mix["split"] == "test"].set_index("class")
    assert test.loc[1, "predicted_share"] == 0.75 and test.loc[1, "true_share"] == 0.60
    assert test.loc[0, "acc"] == pytest.approx(0.85)  # 15 negatives called positive
    md = "\n".join(rpt._class_mix_md(mix))
    assert "ACC 1.000 on validation, 0.850 on test" in md
    assert "0.150 on test (class 0, normal: predicted 0.250, true 0.400), 0.000 on validation" \
        in md
    assert "no choice made on validation can see" in md
    _assert_tables_valid(md)
    calm = "\n".join(rpt._class_mix_md(rpt.class_mix(_mix_scores(62), metrics.BINARY, names)))
    assert "0.020 on test" in calm and "can see" not in calm
    multi = rpt.class_mix(_mix_scores(75) | {"test_scores": np.c_[np.full(100, 0.9),
                                                                  np.full(100, 0.1)]},
                          metrics.BINARY, names)
    assert multi[multi["split"] == "test"].set_index("class").loc[0, "predicted_share"] == 1.0


def test_picked_entry_is_set_against_every_published_method_and_only_on_official_files():
    """One line per comparable published method (all seven 28 px rows of BreastMNIST), each
    difference with our CI shifted by it; only the declared reference is named as such and no
    line carries a verdict (they are exploratory); non-official files get no such table."""
    from bench.headline import exploratory_md

    row = {"dataset": "breastmnist", "family": "cnn_small ×3 ens", "size": 28, "trials": 18,
           "device_s": 607.0, "run_wall_s": 1452.0, "official_data": True, "picked": True,
           "test_acc_mean": 0.897, "acc_lo": 0.846, "acc_hi": 0.942,
           "test_auc_mean": 0.914, "auc_lo": 0.848, "auc_hi": 0.964}
    lines = exploratory_md(pd.DataFrame([row]))
    table = [ln for ln in lines if ln.startswith("| ") and "published method" not in ln]
    assert len(table) == 7
    assert ("| auto-sklearn | 0.803 | 0.836 | +0.094 [+0.043, +0.139] | "
            "+0.078 [+0.012, +0.128] |") in table
    assert any(ln.startswith("| ResNet-18 (28) (declared reference) |") for ln in table)
    assert not any("above" in ln or "below" in ln for ln in table)
    assert exploratory_md(pd.DataFrame([{**row, "official_data": False}])) == []

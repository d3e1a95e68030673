"""What the report must give a reader to trust it (issue: numbers a reader can trust).

On the fake run of tests/fake_run.py (its scores are made from the labels, so every number is
known): the majority-class row predicts the *training* majority (a test-majority rule gives
another answer here), the prior-shift row is never picked, the exported per-image
probabilities re-score to the board's numbers with medmnist's own Evaluator, only the declared
reference gets a verdict, and the report states how to reproduce it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import medmnist
import numpy as np
import pandas as pd
import pytest
from fake_run import labels, make_run

from bench import metrics
from bench.leaderboard import build_leaderboard, entry_probabilities, load_seeds

FLAG = "breastmnist"


def _data(folder: Path, train_majority: int, flag: str = FLAG) -> Path:
    """`<flag>.npz` labels: the real split sizes, val/test labels as the fake run's, train
    labels 90% `train_majority`, the rest the next class."""
    folder.mkdir(parents=True, exist_ok=True)
    n_train = medmnist.INFO[flag]["n_samples"]["train"]
    k = len(medmnist.INFO[flag]["label"])
    train = np.full((n_train, 1), train_majority)
    train[: n_train // 10] = (train_majority + 1) % k
    np.savez(folder / f"{flag}.npz", train_labels=train, val_labels=labels(flag, "val"),
             test_labels=labels(flag, "test"))
    return folder


@pytest.fixture
def run_and_data(tmp_path):
    run = make_run(tmp_path, "run-a", datasets=(FLAG,))
    test = labels(FLAG, "test").reshape(-1)
    minority = int(np.bincount(test, minlength=2).argmin())  # the test split's rarer class
    return run, _data(tmp_path / "data", train_majority=minority), minority


def test_majority_row_predicts_the_training_majority(tmp_path):
    flag = "retinamnist"  # 5 classes: the fake test labels are far from uniform
    run = make_run(tmp_path, "run-r", datasets=(flag,))
    test = labels(flag, "test").reshape(-1)
    shares = np.bincount(test, minlength=5) / len(test)
    rarest = int(shares.argmin())
    board = build_leaderboard(run, n_boot=50, data_dir=_data(tmp_path / "d", rarest, flag))
    maj = board[board["kind"] == "baseline"]
    assert len(maj) == 1 and not maj["picked"].any()
    # the train majority is the test split's rarest class: the row scores that class's share,
    # not the test majority's (a rule that looked at test labels would score higher)
    assert maj["test_acc_mean"].iloc[0] == pytest.approx(shares[rarest])
    assert maj["test_acc_mean"].iloc[0] < shares.max()
    assert maj["test_auc_mean"].iloc[0] == pytest.approx(0.5)


def test_prior_shift_row_is_transductive_and_never_picked(run_and_data):
    run, data, _ = run_and_data
    board = build_leaderboard(run, n_boot=50, data_dir=data)
    pick = board[board["picked"]]
    shifted = board[board["kind"] == "prior-shift"]
    assert len(pick) == 1 and len(shifted) == 1 and not shifted["picked"].any()
    assert shifted["family"].iloc[0].startswith(pick["family"].iloc[0])
    prior = json.loads(shifted["test_prior"].iloc[0])
    assert sum(prior) == pytest.approx(1, abs=1e-3)
    from bench.leaderboard import summarize

    assert set(summarize(board)["family"]) == {"cnn", "mlp"}  # context rows are not ranked
    # without the data file (no training labels) neither context row is made
    bare = build_leaderboard(run, n_boot=50, data_dir=data.parent / "nowhere")
    assert not bare["kind"].isin(["baseline", "prior-shift"]).any()


def test_every_row_has_the_clinical_columns_of_its_task(run_and_data):
    run, data, _ = run_and_data
    board = build_leaderboard(run, n_boot=50, data_dir=data)
    pick = board[board["picked"]].iloc[0]
    sc = entry_probabilities(load_seeds(run), pick)
    y = sc["test_labels"].reshape(-1)
    pred = metrics.predicted_labels(sc["test_scores"], metrics.BINARY)
    assert pick["sensitivity"] == pytest.approx(np.mean(pred[y == 1] == 1))
    assert pick["specificity"] == pytest.approx(np.mean(pred[y == 0] == 0))
    assert pick["bal_acc"] == pytest.approx((pick["sensitivity"] + pick["specificity"]) / 2)
    assert board["thr_acc"].notna().any()


def test_report_states_how_to_reproduce_and_judges_only_the_reference(run_and_data):
    from bench.report import write_report

    run, data, _ = run_and_data
    meta = json.loads((run / "meta.json").read_text())
    meta.update({"deterministic": True, "data_files": {FLAG: {"file": f"{FLAG}.npz",
                                                              "md5": "abc123"}},
                 "versions": {"torch": "9.9"}, "seeds": {"search": 0, "selection": [1, 2],
                                                         "final": [10000, 10001, 10002]},
                 "official_data": {FLAG: True}})
    (run / "meta.json").write_text(json.dumps(meta))
    out = write_report(run, run.parent / "rep" / "report.md", n_boot=50, data_dir=data,
                       report_command="medbench report runs/run-a")
    md = out.read_text()
    for needed in ("## Reproduce", "medbench run --name run-a", "commit `deadbeef`",
                   "md5 `abc123`", "torch 9.9", "final 10000-10002", "deterministic",
                   "medbench report runs/run-a", "## How the numbers are computed",
                   "## Rules set while official test scores were in view",
                   "majority class (train)", "balanced ACC", "sensitivity / specificity",
                   "Verdict against the declared reference, ResNet-18 (28)"):
        assert needed in md, needed
    # a deterministic rerun repeats on the same kind of hardware only (an Intel and an AMD
    # CPU gave other last digits, reports/README.md): the report must not promise more
    assert "on the same kind of CPU" in md and "on any machine" not in md
    exploratory = md[md.index("(exploratory)"):md.index("## Rules set")]
    assert "**above**" not in exploratory and "**below**" not in exploratory
    assert "(declared reference)" in exploratory
    # every exported probability file re-scores to its name with medmnist's own Evaluator
    preds = sorted((out.parent / "report_predictions").glob("*.csv"))
    assert len(preds) >= 8  # 2 families x 3 seeds, 2 ensembles, majority, prior shift
    for path in preds:
        auc, acc = map(float, re.search(r"\[AUC\]([\d.]+)_\[ACC\]([\d.]+)@", path.name).groups())
        scores = pd.read_csv(path, header=None, index_col=0).to_numpy()
        ev = medmnist.Evaluator(FLAG, "test", size=28, root=str(data))
        got = ev.evaluate(scores)
        assert (round(got[0], 3), round(got[1], 3)) == (auc, acc), path.name


def test_prior_shift_em_recovers_a_shifted_prior_from_unlabelled_images():
    """A calibrated model (exact posteriors of two Gaussians under the training prior 0.26)
    meets a test set whose prior is 0.375 (PneumoniaMNIST's official test split has this
    kind of shift): EM recovers the test prior from the probabilities alone and the adjusted
    decisions are more accurate; with no shift it stays where it was."""
    from bench.clinical import prior_shift_em

    rng = np.random.default_rng(0)

    def sample(n: int, prior1: float) -> tuple[np.ndarray, np.ndarray]:
        y = (rng.random(n) < prior1).astype(int)
        x = rng.normal(loc=np.where(y == 1, 1.0, -1.0), scale=1.2)
        like1, like0 = np.exp(-(x - 1) ** 2 / 2.88), np.exp(-(x + 1) ** 2 / 2.88)
        p1 = 0.26 * like1 / (0.26 * like1 + 0.74 * like0)  # posterior under the train prior
        return y, np.c_[1 - p1, p1]

    y, s = sample(20_000, 0.375)
    adjusted, prior, _ = prior_shift_em(s, np.array([0.74, 0.26]))
    assert prior[1] == pytest.approx(0.375, abs=0.02)
    assert np.mean((adjusted[:, 1] > 0.5) == y) > np.mean((s[:, 1] > 0.5) == y)
    y0, s0 = sample(20_000, 0.26)
    _, prior0, _ = prior_shift_em(s0, np.array([0.74, 0.26]))
    assert prior0[1] == pytest.approx(0.26, abs=0.02)


def test_a_majority_row_at_or_above_the_published_acc_is_said_and_only_then():
    """VesselMNIST3D: always saying 'no aneurysm' scores 0.887, above the published
    ResNet-18+3D ACC of 0.877; the results section must say that ACC alone says little."""
    from bench.headline import _majority_lines

    ref = pd.DataFrame([{"method": "ResNet-18+3D", "acc": 0.877, "auc": 0.874}])
    board = pd.DataFrame([{"kind": "baseline", "test_acc_mean": 0.887}])
    assert "ACC says little on its own" in " ".join(_majority_lines(board, ref))
    assert _majority_lines(board.assign(test_acc_mean=0.768), ref) == []


def test_recorded_commands_lose_the_recording_machines_absolute_paths(tmp_path, monkeypatch):
    """A committed report names paths relative to where it was built, never /home/... of the
    machine that ran it; other tokens (and relative paths) stay as recorded."""
    from bench.provenance import portable_command

    base = tmp_path / "repo"
    cmd = (f"medbench train --seeds 1,2 --data-dir {tmp_path}/shared/medmnist "
           f"--out={tmp_path}/ref/breast --name x runs/y")
    assert portable_command(cmd, base) == ("medbench train --seeds 1,2 --data-dir "
                                           "../shared/medmnist --out=../ref/breast --name x runs/y")
    assert portable_command("medbench run --spec 'a b", base) == "medbench run --spec 'a b"
    from bench.report import _runs_md

    run = tmp_path / "run"
    run.mkdir()
    (run / "meta.json").write_text(json.dumps({"command": cmd}))
    base.mkdir()
    monkeypatch.chdir(base)  # the report is built from the checkout
    text = "\n".join(_runs_md([run]))
    assert str(tmp_path) not in text.split("### ", 1)[1].split("\n", 1)[1]

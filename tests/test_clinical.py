"""bench.clinical: clinical metrics under the official decision rule, the validation-fitted
threshold, the training-majority baseline (checked on the real files) and Saerens' prior-shift
EM."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from medmnist.evaluator import getACC
from sklearn.metrics import cohen_kappa_score

from bench.clinical import (
    acc_at_threshold,
    clinical_metrics,
    fit_threshold,
    majority_scores,
    prior_shift_em,
)
from bench.metrics import evaluate

BIN, MC, ORD, ML = "binary-class", "multi-class", "ordinal-regression", \
    "multi-label, binary-class"


# --- clinical_metrics ----------------------------------------------------------------------------

def test_binary_sensitivity_specificity_use_the_strict_official_rule() -> None:
    y = np.array([[1], [1], [1], [1], [0], [0], [0]])
    p1 = np.array([0.9, 0.8, 0.5, 0.2, 0.1, 0.6, 0.3])  # 0.5 is *not* positive (strict >)
    c = clinical_metrics(y, np.stack([1 - p1, p1], axis=1), BIN)
    assert c["sensitivity"] == pytest.approx(2 / 4)  # a `>=` rule would give 3/4
    assert c["specificity"] == pytest.approx(2 / 3)
    assert c["balanced_accuracy"] == pytest.approx((2 / 4 + 2 / 3) / 2)
    assert c["per_class_recall"] == pytest.approx([2 / 3, 2 / 4])
    assert c["never_predicted"] == [] and "qwk" not in c
    # the three binary score layouts agree
    assert clinical_metrics(y, p1, BIN) == c == clinical_metrics(y, p1[:, None], BIN)


def test_imbalanced_binary_balanced_accuracy_exposes_a_constant_model() -> None:
    y = np.array([[0]] * 9 + [[1]])
    c = clinical_metrics(y, np.zeros(10), BIN)  # always "healthy": ACC 0.9
    assert evaluate(y, np.zeros(10), BIN)["acc"] == pytest.approx(0.9)
    assert c["balanced_accuracy"] == pytest.approx(0.5)
    assert c["sensitivity"] == 0.0 and c["never_predicted"] == [1]


def test_multiclass_recall_never_predicted_and_a_class_without_test_images() -> None:
    y = np.array([[0], [0], [1], [1], [1], [3]])  # class 2 has no test image
    pred = np.array([0, 1, 1, 1, 0, 0])
    c = clinical_metrics(y, np.eye(4)[pred], MC)
    r = c["per_class_recall"]
    assert r[0] == pytest.approx(0.5) and r[1] == pytest.approx(2 / 3) and r[3] == 0.0
    assert np.isnan(r[2])  # undefined, not 0: it would drag the balanced accuracy down
    assert c["balanced_accuracy"] == pytest.approx(np.mean([0.5, 2 / 3, 0.0]))
    assert c["never_predicted"] == [2, 3]
    assert "qwk" not in c and "sensitivity" not in c


def test_qwk_for_ordinal_only_and_it_charges_far_misses_more() -> None:
    y = np.array([[0], [1], [2], [3], [4]] * 4)
    near = y[:, 0] + np.tile([1, 0, 0, 0, 0], 4)  # grade 0 called 1
    far = np.where(near != y[:, 0], 4, near)  # the same images missed, but called 4
    assert (near == y[:, 0]).mean() == (far == y[:, 0]).mean()  # same ACC
    q_near = clinical_metrics(y, np.eye(5)[near], ORD)["qwk"]
    q_far = clinical_metrics(y, np.eye(5)[far], ORD)["qwk"]
    assert q_near == pytest.approx(cohen_kappa_score(y[:, 0], near, weights="quadratic"))
    assert q_near > q_far
    assert "qwk" not in clinical_metrics(y, np.eye(5)[near], MC)


def test_multilabel_averages_per_label_sensitivity_and_specificity() -> None:
    y = np.array([[1, 0, 0], [1, 0, 1], [0, 0, 1], [0, 0, 0]])  # label 1: no positive
    s = np.array([[0.9, 0.1, 0.2], [0.4, 0.2, 0.7], [0.6, 0.3, 0.8], [0.2, 0.1, 0.1]])
    c = clinical_metrics(y, s, ML)
    sens = [0.5, np.nan, 1.0]
    spec = [0.5, 1.0, 1.0]
    assert c["per_class_recall"] == pytest.approx(sens, nan_ok=True)
    assert c["per_class_specificity"] == pytest.approx(spec)
    assert c["sensitivity"] == pytest.approx(0.75)  # the label without positives is skipped
    assert c["specificity"] == pytest.approx(2.5 / 3)
    # label 1 has one class in test: its balanced accuracy is that class's recall (sklearn)
    assert c["balanced_accuracy"] == pytest.approx(np.mean([0.5, 1.0, 1.0]))
    assert c["never_predicted"] == [1]


# --- fit_threshold -------------------------------------------------------------------------------

def test_threshold_is_fitted_on_validation_only() -> None:
    """Validation is best at a low threshold, test at a high one: the function returns the
    validation choice, and the test ACC at it is not the test-optimal ACC."""
    assert list(inspect.signature(fit_threshold).parameters) == ["val_y", "val_score", "task"]
    val_y = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    val_p = np.array([0.95, 0.35, 0.30, 0.20, 0.10, 0.05, 0.80, 0.60])
    test_y = np.array([1, 1, 0, 0, 0, 0, 1, 0])
    test_p = np.array([0.9, 0.85, 0.7, 0.65, 0.3, 0.1, 0.95, 0.25])
    t = fit_threshold(val_y, val_p, BIN)
    assert t == pytest.approx(0.25)  # between 0.20 and 0.30: validation ACC 7/8
    assert acc_at_threshold(val_y, val_p, BIN, t) == pytest.approx(7 / 8)
    assert acc_at_threshold(val_y, val_p, BIN, 0.5) == pytest.approx(5 / 8)
    test_best = fit_threshold(test_y, test_p, BIN)  # what peeking at test would choose
    assert test_best == pytest.approx(0.775)
    assert acc_at_threshold(test_y, test_p, BIN, t) == pytest.approx(5 / 8)
    assert acc_at_threshold(test_y, test_p, BIN, test_best) == pytest.approx(1.0)


def test_threshold_ties_go_to_half_and_the_rule_is_strict() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.9])  # every t in [0.2, 0.7) is perfect
    assert fit_threshold(y, p, BIN) == 0.5
    # a positive exactly at 0.5 is missed by the strict rule, so the fit moves below it
    y2, p2 = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.5, 0.9])
    assert fit_threshold(y2, p2, BIN) == pytest.approx(0.35)
    # two equally good intervals either side of 0.5 (which is worse): the nearer one wins
    y3, p3 = np.array([0, 1, 0, 1]), np.array([0.10, 0.30, 0.55, 0.70])
    assert acc_at_threshold(y3, p3, BIN, 0.5) == 0.5
    assert fit_threshold(y3, p3, BIN) == pytest.approx(0.625)  # 3/4, as is 0.2 (further)
    assert fit_threshold(y, np.stack([1 - p, p], axis=1), BIN) == 0.5  # two-column layout


def test_threshold_only_for_binary_and_acc_at_threshold_is_medmnists() -> None:
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 3, (30, 1)), rng.dirichlet(np.ones(3), 30)
    assert fit_threshold(y, s, MC) is None and fit_threshold(y, s, ORD) is None
    with pytest.raises(ValueError, match="binary"):
        acc_at_threshold(y, s, MC, 0.3)
    yb, pb = rng.integers(0, 2, (50, 1)), rng.random(50)
    for t in (0.2, 0.5, 0.77):
        assert acc_at_threshold(yb, pb, BIN, t) == getACC(yb, pb, BIN, t)
    assert acc_at_threshold(yb, pb, BIN, 0.5) == evaluate(yb, pb, BIN)["acc"]


# --- majority_scores -----------------------------------------------------------------------------

def test_majority_comes_from_train_not_test() -> None:
    train = np.array([[1]] * 7 + [[0]] * 3)
    test = np.array([[0]] * 6 + [[1]] * 4)  # the test majority is class 0
    s = majority_scores(train, len(test), BIN, 2)
    assert s.shape == (10, 2) and np.all(s == [0.0, 1.0])
    m = evaluate(test, s, BIN)
    assert m["acc"] == pytest.approx(0.4) and m["auc"] == 0.5  # not 0.6: train's class 1
    mc = majority_scores(np.array([[2], [2], [0], [1], [2]]), 4, MC, 4)
    assert np.all(mc == [0, 0, 1, 0])
    ml = majority_scores(np.array([[1, 0, 1], [1, 0, 0], [1, 1, 0]]), 2, ML, 3)
    assert np.all(ml == [[1, 0, 0], [1, 0, 0]])
    with pytest.raises(ValueError):
        majority_scores(np.array([[0], [5]]), 3, MC, 4)


# (flag, task, published fact from ../shared/anchors/medmnist_datasets.csv)
MAJORITY_FACTS = [("breastmnist", BIN, 0.731), ("pneumoniamnist", BIN, 0.625),
                  ("vesselmnist3d", BIN, 0.887), ("adrenalmnist3d", BIN, 0.768)]


@pytest.mark.parametrize(("flag", "task", "acc"), MAJORITY_FACTS)
def test_majority_class_acc_on_the_real_files(real_data_dir: Path, flag: str, task: str,
                                              acc: float) -> None:
    path = real_data_dir / f"{flag}.npz"
    if not path.is_file():
        pytest.skip(f"{path} not available")
    with np.load(path) as z:
        train, test = z["train_labels"], z["test_labels"]
    s = majority_scores(train, len(test), task, 2)
    m = evaluate(test, s, task)
    assert round(m["acc"], 3) == acc
    assert m["auc"] == 0.5


# --- prior_shift_em ------------------------------------------------------------------------------

def _calibrated(prior_train: float, prior_test: float, n: int, seed: int):
    """A model that is exactly calibrated for `prior_train` (class-conditional N(+-1, 1),
    posterior by Bayes with the training prior), scored on test images whose class-1 share is
    `prior_test`."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prior_test).astype(int)
    x = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    odds = prior_train / (1 - prior_train) * np.exp(2 * x)  # likelihood ratio e^{2x}
    p1 = odds / (1 + odds)
    return y[:, None], np.stack([1 - p1, p1], axis=1)


def test_em_recovers_a_shifted_prior_and_raises_acc() -> None:
    y, s = _calibrated(0.26, 0.375, n=4000, seed=0)
    adjusted, prior, iters = prior_shift_em(s, [0.74, 0.26])
    assert prior[1] == pytest.approx(0.375, abs=0.025)
    assert 1 < iters < 1000
    # the plain mean of the posteriors is pulled toward the training prior; EM is not
    naive = s[:, 1].mean()
    assert abs(prior[1] - 0.375) < abs(naive - 0.375)
    assert evaluate(y, adjusted, BIN)["acc"] > evaluate(y, s, BIN)["acc"]
    np.testing.assert_allclose(adjusted.sum(axis=1), 1.0)


def test_em_without_shift_stays_near_the_identity() -> None:
    y, s = _calibrated(0.26, 0.26, n=4000, seed=1)
    adjusted, prior, _ = prior_shift_em(s, [0.74, 0.26])
    assert prior[1] == pytest.approx(0.26, abs=0.02)
    assert np.max(np.abs(adjusted - s)) < 0.05
    # scores whose mean *is* the training prior are a fixed point: returned unchanged at once
    rng = np.random.default_rng(2)
    s3 = rng.dirichlet(np.ones(3), 200)
    adj3, prior3, iters3 = prior_shift_em(s3, s3.mean(axis=0))
    np.testing.assert_allclose(adj3, s3, atol=1e-12)
    np.testing.assert_allclose(prior3, s3.mean(axis=0))
    assert iters3 == 1


def test_em_rejects_multilabel_and_bad_inputs() -> None:
    sig = np.array([[0.9, 0.8], [0.1, 0.7]])  # sigmoids: rows do not sum to 1
    with pytest.raises(ValueError, match="sum to 1"):
        prior_shift_em(sig, [0.5, 0.5])
    ok = np.array([[0.4, 0.6], [0.7, 0.3]])
    with pytest.raises(ValueError, match="single-label"):
        prior_shift_em(ok, [0.5, 0.5], task=ML)
    with pytest.raises(ValueError, match="positive"):
        prior_shift_em(ok, [1.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        prior_shift_em(ok[:, 1], [0.5, 0.5])

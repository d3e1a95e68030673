"""What one model's per-image scores say, beyond its ACC and AUC: per-class ROC and
precision-recall curves, calibration (ECE), each class's share of the labels and of the
predictions on validation and test, and the most confidently wrong test images.

Why apart from bench.report: these are statistics, computed from scores.npz arrays and checked
against scikit-learn by the tests; the report only decides which model to show and writes them
up, and bench.figures only draws them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench import metrics

N_BINS = 10  # calibration bins (the usual 10 equal-width bins of Guo et al. 2017)
N_WRONG = 4  # misclassified test images shown per true class


def class_scores(y: np.ndarray, s: np.ndarray, task: str) -> list[tuple[int, np.ndarray,
                                                                        np.ndarray]]:
    """(class, is-that-class, score) per class, the way the official AUC averages them:
    binary uses the positive class's score only, multi-class/ordinal one-vs-rest per class,
    multi-label one per label."""
    y, s = np.asarray(y), np.asarray(s)
    if task == metrics.MULTI_LABEL:
        return [(j, (y[:, j] == 1).astype(int), s[:, j]) for j in range(y.shape[1])]
    y1 = y.reshape(-1)
    if task == metrics.BINARY:
        return [(1, (y1 == 1).astype(int), s[:, -1] if s.ndim == 2 else s)]
    return [(c, (y1 == c).astype(int), s[:, c]) for c in range(s.shape[1])]


def roc_pr_curves(y: np.ndarray, s: np.ndarray, task: str) -> list[dict]:
    """Per class: scikit-learn's ROC and precision-recall points, ROC AUC and average
    precision. The mean of the per-class AUCs is the official MedMNIST AUC."""
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    out = []
    for c, pos, score in class_scores(y, s, task):
        if pos.min() == pos.max():  # one class only in this split: no curve is defined
            continue
        fpr, tpr, _ = roc_curve(pos, score)
        prec, rec, _ = precision_recall_curve(pos, score)
        out.append({"class": c, "fpr": fpr, "tpr": tpr, "precision": prec, "recall": rec,
                    "auc": float(roc_auc_score(pos, score)),
                    "ap": float(average_precision_score(pos, score)), "prevalence": pos.mean()})
    return out


def confidence_and_correct(y: np.ndarray, s: np.ndarray, task: str) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """Single-label tasks: the top-label confidence and whether that label is right (decision
    rule as the official ACC). Multi-label: every label's probability and its truth."""
    y, s = np.asarray(y), np.asarray(s)
    if task == metrics.MULTI_LABEL:
        return s.ravel().astype(float), y.ravel().astype(int)
    pred = metrics.predicted_labels(s, task)
    if task == metrics.BINARY:
        p1 = s[:, -1] if s.ndim == 2 else s
        conf = np.maximum(p1, 1 - p1)
    else:
        conf = s.max(axis=1)
    return conf.astype(float), (pred.reshape(-1) == y.reshape(-1)).astype(int)


def expected_calibration_error(correct: np.ndarray, confidence: np.ndarray,
                               n_bins: int = N_BINS) -> tuple[float, pd.DataFrame]:
    """ECE = sum over bins of (bin share) x |accuracy - mean confidence|, with scikit-learn's
    `calibration_curve` bins (equal width) for the per-bin values; returns the ECE and the
    non-empty bins (count, accuracy, confidence)."""
    from sklearn.calibration import calibration_curve

    correct, confidence = np.asarray(correct), np.asarray(confidence, float)
    acc, conf = calibration_curve(correct, confidence, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], confidence), minlength=n_bins)
    counts = counts[counts > 0]  # the same bins calibration_curve returns, in order
    ece = float(np.sum(counts / counts.sum() * np.abs(acc - conf)))
    return ece, pd.DataFrame({"count": counts, "accuracy": acc, "confidence": conf})


def class_mix(scores: dict[str, np.ndarray], task: str, names: list[str]) -> pd.DataFrame:
    """Per class, its share of the labels and of the predictions on validation and on test.

    Why: when test ACC falls well below validation ACC, this says whether the model's decisions
    moved (predicted shares that follow validation's class mix but not test's) or the test split
    itself differs from validation (its class mix or how its images look): a split shift that
    nothing chosen on validation can see. Read-only: it explains a number and chooses nothing.
    """
    rows = []
    for split in ("val", "test"):
        y = np.asarray(scores[f"{split}_labels"]).reshape(-1)
        pred = metrics.predicted_labels(scores[f"{split}_scores"], task)
        for c, name in enumerate(names):
            rows.append({"split": split, "class": c, "name": name,
                         "true_share": float(np.mean(y == c)),
                         "predicted_share": float(np.mean(pred == c)),
                         "acc": float(np.mean(pred == y))})
    return pd.DataFrame(rows)


def most_confident_errors(y: np.ndarray, s: np.ndarray, task: str,
                          k: int = N_WRONG) -> dict[int, list[int]]:
    """Per true class, the indices of up to k misclassified test images, most confidently wrong
    first (single-label tasks)."""
    y1 = np.asarray(y).reshape(-1)
    pred = metrics.predicted_labels(s, task).reshape(-1)
    conf, _ = confidence_and_correct(y, s, task)
    out = {}
    for c in np.unique(y1):
        wrong = np.flatnonzero((y1 == c) & (pred != c))
        out[int(c)] = list(wrong[np.argsort(-conf[wrong], kind="stable")][:k])
    return out

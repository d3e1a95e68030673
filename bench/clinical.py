"""Clinical metrics, the majority-class baseline, a validation-fitted threshold, and a
label-shift correction: what a reader needs beside the official ACC and AUC.

ACC at 0.5 and AUC hide what a clinician asks first: how many of the sick are found
(sensitivity), how many of the healthy are cleared (specificity), whether a class is never
predicted at all, and how far an ordinal grading is off (quadratic-weighted kappa). Hard
predictions follow the official rule (`bench.metrics.predicted_labels`).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, recall_score

from bench.metrics import BINARY, MULTI_LABEL, predicted_labels

ORDINAL = "ordinal-regression"


def _n_classes(y_score: np.ndarray, task: str) -> int:
    return 2 if task == BINARY else int(np.asarray(y_score).shape[-1])


def clinical_metrics(y_true: np.ndarray, y_score: np.ndarray, task: str) -> dict:
    """balanced_accuracy, per_class_recall, never_predicted (classes no test image is given);
    binary: sensitivity (recall of class 1) and specificity (recall of class 0); ordinal: qwk.
    Multi-label: per-label sensitivity, specificity and balanced accuracy, averaged."""
    pred = predicted_labels(y_score, task)
    y = np.asarray(y_true)
    if task == MULTI_LABEL:
        sens = [recall_score(y[:, j], pred[:, j], pos_label=1, zero_division=0)
                for j in range(y.shape[1])]
        spec = [recall_score(y[:, j], pred[:, j], pos_label=0, zero_division=0)
                for j in range(y.shape[1])]
        return {"balanced_accuracy": float(np.mean([(a + b) / 2 for a, b in zip(sens, spec,
                                                                              strict=True)])),
                "sensitivity": float(np.mean(sens)), "specificity": float(np.mean(spec)),
                "per_class_recall": [float(x) for x in sens], "never_predicted": []}
    y = y.reshape(-1).astype(int)
    pred = np.asarray(pred).reshape(-1).astype(int)
    k = _n_classes(y_score, task)
    recalls = recall_score(y, pred, labels=list(range(k)), average=None, zero_division=0)
    out: dict = {"balanced_accuracy": float(balanced_accuracy_score(y, pred)),
                 "per_class_recall": [float(r) for r in recalls],
                 "never_predicted": [c for c in range(k) if not np.any(pred == c)]}
    if task == BINARY:
        out["sensitivity"], out["specificity"] = float(recalls[1]), float(recalls[0])
    if task == ORDINAL:
        out["qwk"] = float(cohen_kappa_score(y, pred, weights="quadratic",
                                             labels=list(range(k))))
    return out


def _positive(score: np.ndarray) -> np.ndarray:
    s = np.asarray(score, dtype=float)
    return s[:, -1] if s.ndim == 2 else s.reshape(-1)


def acc_at_threshold(y_true: np.ndarray, y_score: np.ndarray, task: str, t: float) -> float:
    """Binary ACC with class 1 called when its probability is strictly above `t`."""
    if task != BINARY:
        raise ValueError("a decision threshold applies to binary tasks only")
    return float(np.mean((_positive(y_score) > t) == (np.asarray(y_true).reshape(-1) == 1)))


def fit_threshold(val_y: np.ndarray, val_score: np.ndarray, task: str) -> float | None:
    """The class-1 probability threshold with the best *validation* ACC (strict `>`, as the
    evaluator), ties broken toward 0.5; None for a task that is not binary. Candidates are the
    midpoints between sorted distinct validation scores (and 0.5 itself)."""
    if task != BINARY:
        return None
    p = np.unique(_positive(val_score))
    cands = np.unique(np.r_[0.5, (p[1:] + p[:-1]) / 2, p[0] - 1e-9, p[-1]])
    accs = np.array([acc_at_threshold(val_y, val_score, task, t) for t in cands])
    best = np.flatnonzero(np.isclose(accs, accs.max()))
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


def majority_scores(train_labels: np.ndarray, n: int, task: str, n_classes: int) -> np.ndarray:
    """`n` rows of constant probabilities that predict the *training* split's majority class
    (per label for multi-label), scored like any model (its AUC is 0.5 by construction)."""
    y = np.asarray(train_labels)
    if task == MULTI_LABEL:
        row = (y.mean(axis=0) > 0.5).astype(float)
        return np.tile(row, (n, 1))
    major = int(np.bincount(y.reshape(-1).astype(int), minlength=n_classes).argmax())
    return np.tile(np.eye(n_classes)[major], (n, 1))


def prior_shift_em(scores: np.ndarray, train_prior: np.ndarray, max_iter: int = 1000,
                   tol: float = 1e-8) -> tuple[np.ndarray, np.ndarray, int]:
    """Saerens, Latinne & Decaestecker (2002): re-estimate the class prior of unlabelled test
    images by EM and re-weight the posteriors to it. Returns (adjusted probabilities, the
    estimated prior, iterations). Single-label probabilities (N, K) only; assumes the model's
    probabilities are calibrated for the training prior `train_prior`."""
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError("prior_shift_em needs (N, K) class probabilities of a single-label task")
    p0 = np.clip(np.asarray(train_prior, dtype=float), 1e-12, None)
    p0 = p0 / p0.sum()
    prior = p0.copy()
    adjusted = s
    for i in range(1, max_iter + 1):
        w = s * (prior / p0)
        adjusted = w / w.sum(axis=1, keepdims=True)
        new = adjusted.mean(axis=0)
        if np.max(np.abs(new - prior)) < tol:
            return adjusted, new, i
        prior = new
    return adjusted, prior, max_iter

"""Clinical metrics, the majority-class baseline, a validation-fitted threshold, and a
label-shift correction: what a reader needs beside the official ACC and AUC.

ACC at 0.5 and AUC hide what a clinician asks first: how many of the sick are found
(sensitivity), how many of the healthy are cleared (specificity), whether a class is never
predicted at all, and how far an ordinal grading is off (quadratic-weighted kappa). Hard
predictions follow the official rule (`bench.metrics.predicted_labels`: strict `> 0.5` on the
class-1 probability for binary and per label for multi-label, argmax otherwise), so these
numbers describe the same decisions as the official ACC. Pure numpy/sklearn: nothing here
knows about runs or files.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, recall_score

from bench.metrics import BINARY, MULTI_LABEL, acc_score, predicted_labels

ORDINAL = "ordinal-regression"


def _as_rows(y_score: np.ndarray, task: str) -> np.ndarray:
    """Scores as (N, K) rows; a binary score given as one column or a vector is the class-1
    probability (the layout `predicted_labels` reads with `[:, -1]`)."""
    s = np.asarray(y_score, dtype=float)
    if task == BINARY and s.ndim == 1:
        return s.reshape(-1, 1)
    return s


def _recall(y: np.ndarray, pred: np.ndarray, labels: list[int]) -> np.ndarray:
    """Recall of each of `labels`; NaN for a label with no true sample (undefined, not 0)."""
    return recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)


def _balanced(y: np.ndarray, pred: np.ndarray) -> float:
    """sklearn's balanced accuracy: mean recall over the classes present in `y` (a predicted
    class absent from `y` makes sklearn warn; it is ignored, as the definition says)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, pred))


def clinical_metrics(y_true: np.ndarray, y_score: np.ndarray, task: str) -> dict:
    """Clinical view of one set of test probabilities.

    Every task: `balanced_accuracy`, `per_class_recall` (list, NaN for a class with no test
    image), `never_predicted` (class indices no test image is assigned; for multi-label, labels
    never predicted positive). Binary: `sensitivity` (recall of class 1) and `specificity`
    (recall of class 0). Ordinal regression (RetinaMNIST): `qwk`, Cohen's kappa with quadratic
    weights, which charges a grade-0-as-4 error more than a grade-0-as-1 one. Multi-label:
    `sensitivity` / `specificity` are the per-label ones averaged, `balanced_accuracy` the
    per-label balanced accuracies averaged, `per_class_recall` the per-label sensitivities and
    `per_class_specificity` the per-label specificities.
    """
    s = _as_rows(y_score, task)
    pred = predicted_labels(s, task)
    y = np.asarray(y_true)
    if task == MULTI_LABEL:
        y = y.reshape(len(y), -1).astype(int)
        sens = [float(_recall(y[:, j], pred[:, j], [1])[0]) for j in range(y.shape[1])]
        spec = [float(_recall(y[:, j], pred[:, j], [0])[0]) for j in range(y.shape[1])]
        bal = [_balanced(y[:, j], pred[:, j]) for j in range(y.shape[1])]
        return {"balanced_accuracy": float(np.nanmean(bal)),
                "sensitivity": float(np.nanmean(sens)), "specificity": float(np.nanmean(spec)),
                "per_class_recall": sens, "per_class_specificity": spec,
                "never_predicted": [j for j in range(y.shape[1]) if not pred[:, j].any()]}
    y = y.reshape(-1).astype(int)
    pred = np.asarray(pred).reshape(-1).astype(int)
    k = 2 if task == BINARY else s.shape[1]
    recalls = _recall(y, pred, list(range(k)))
    out: dict = {"balanced_accuracy": _balanced(y, pred),
                 "per_class_recall": [float(r) for r in recalls],
                 "never_predicted": [c for c in range(k) if not np.any(pred == c)]}
    if task == BINARY:
        out["sensitivity"], out["specificity"] = float(recalls[1]), float(recalls[0])
    if task == ORDINAL:
        out["qwk"] = float(cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(k))))
    return out


def acc_at_threshold(y_true: np.ndarray, y_score: np.ndarray, task: str, t: float) -> float:
    """ACC with a positive called when its probability is strictly above `t` (binary: the
    class-1 probability; multi-label: every label), by medmnist's own `getACC`, so `t = 0.5`
    is the official ACC."""
    if task not in (BINARY, MULTI_LABEL):
        raise ValueError(f"a decision threshold applies to binary and multi-label tasks, "
                         f"not {task!r}")
    return acc_score(y_true, y_score, task, threshold=t)


def fit_threshold(val_y: np.ndarray, val_score: np.ndarray, task: str) -> float | None:
    """The threshold on the class-1 probability with the best *validation* ACC (a positive is
    `> t`, as the evaluator), or None for a task that is not binary.

    Why validation only: a threshold tuned on the test split would report a test ACC that no
    deployed model gets. This function is given no test data; the caller scores the returned
    threshold on test with `acc_at_threshold`.

    Candidates: 0.5 and the midpoints between consecutive distinct validation scores (with 0
    and 1 added, so "all positive" and "all negative" are candidates too); each stands for the
    interval of thresholds that make the same validation decisions. Among the candidates with
    the most correct validation images, the one closest to 0.5 wins (the lower on a tie): 0.5
    itself whenever it is optimal, so the fitted rule departs from the official one only when
    validation says it should. Counting is vectorised (sorted scores + searchsorted): O(n log n).
    """
    if task != BINARY:
        return None
    p = _as_rows(val_score, task)[:, -1]
    y1 = np.asarray(val_y).reshape(-1) == 1
    if len(p) != len(y1) or len(p) == 0:
        raise ValueError(f"{len(p)} validation scores for {len(y1)} labels")
    edges = np.unique(np.r_[0.0, p, 1.0])
    cands = np.unique(np.r_[0.5, (edges[1:] + edges[:-1]) / 2])
    pos, neg = np.sort(p[y1]), np.sort(p[~y1])
    correct = (len(pos) - np.searchsorted(pos, cands, side="right")) \
        + np.searchsorted(neg, cands, side="right")  # positives above t + negatives at or below
    best = np.flatnonzero(correct == correct.max())
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


def majority_scores(train_labels: np.ndarray, n: int, task: str, n_classes: int) -> np.ndarray:
    """`n` rows of constant probabilities that predict the *training* split's majority class,
    so a board can score "always say the common class" with the same evaluator as any model.

    Binary, multi-class, ordinal: the one-hot row of the most frequent training class (the
    lower class on a tie), shape (n, n_classes). Multi-label: each label's majority value (1
    only when more than half the training images carry it), shape (n, n_classes). Constant
    scores rank no image above another, so the AUC is 0.5 by construction. The majority is
    taken on train, never test: a test-majority rule would read the test labels.
    """
    y = np.asarray(train_labels)
    if len(y) == 0:
        raise ValueError("majority_scores needs training labels")
    if task == MULTI_LABEL:
        y = y.reshape(len(y), -1)
        if y.shape[1] != n_classes:
            raise ValueError(f"{y.shape[1]} training labels per image, expected {n_classes}")
        return np.tile((y.mean(axis=0) > 0.5).astype(float), (n, 1))
    y = y.reshape(-1).astype(int)
    if y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"training labels outside 0..{n_classes - 1}")
    major = int(np.bincount(y, minlength=n_classes).argmax())
    return np.tile(np.eye(n_classes)[major], (n, 1))


def prior_shift_em(scores: np.ndarray, train_prior: np.ndarray, max_iter: int = 1000,
                   tol: float = 1e-8, task: str | None = None
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """Saerens, Latinne & Decaestecker (2002), "Adjusting the outputs of a classifier to new a
    priori probabilities": EM that estimates the class prior of unlabelled test images and
    re-weights the posteriors to it.

    Why: a model calibrated on a training prior over-calls the training-common class when the
    test split's class mix differs (PneumoniaMNIST: 74% pneumonia in train, 62.5% in test).
    E-step: p'(c|x) proportional to p(c|x) * prior(c) / train_prior(c); M-step: prior(c) = mean
    of p'(c|x) over the test images; repeat until the prior moves less than `tol` (max norm).
    It reads the test images' probabilities but never their labels (transductive).

    `scores`: (N, K) single-label class probabilities whose rows sum to 1, assumed calibrated
    for `train_prior` (K positive shares; normalised here). Multi-label probabilities have no
    single class prior: `task` "multi-label, binary-class", or rows that do not sum to 1,
    raise ValueError. Returns (adjusted probabilities, estimated test prior, iterations run).
    """
    if task == MULTI_LABEL:
        raise ValueError("prior_shift_em applies to single-label tasks; multi-label labels "
                         "have no single class prior")
    s = np.asarray(scores, dtype=float)
    if s.ndim != 2 or s.shape[1] < 2:
        raise ValueError(f"prior_shift_em needs (N, K >= 2) class probabilities, got shape "
                         f"{s.shape}")
    if np.any(s < 0) or not np.allclose(s.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("prior_shift_em needs probability rows that sum to 1 (softmax of a "
                         "single-label task), not logits or multi-label sigmoids")
    p0 = np.asarray(train_prior, dtype=float).reshape(-1)
    if p0.shape != (s.shape[1],) or np.any(p0 <= 0):
        raise ValueError(f"train_prior must hold {s.shape[1]} positive class shares, got {p0}")
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

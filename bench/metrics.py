"""The official MedMNIST metrics (medmnist's own `evaluator.getAUC/getACC`), plus the
per-class report, confusion matrix and bootstrap confidence intervals the leaderboard needs.

Scores are probabilities (softmax for single-label tasks, sigmoid for multi-label), one row per
sample in the split's order. Labels are the raw MedMNIST label array (N, 1) or (N, L).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix as _sk_confusion
from sklearn.metrics import precision_recall_fscore_support

# medmnist INFO["task"] values with their own metric rules (bench.data uses these names too)
MULTI_LABEL = "multi-label, binary-class"
BINARY = "binary-class"


def _prepare(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(y_true).squeeze(), np.asarray(y_score).squeeze()


def auc_score(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    """Official AUC, by medmnist's own `getAUC`: class-1 score for binary, mean one-vs-rest for
    multi-class/ordinal, mean per-label AUC for multi-label."""
    from medmnist.evaluator import getAUC  # imported here: medmnist loads torch (seconds)

    return float(getAUC(*_prepare(y_true, y_score), task))


def acc_score(y_true: np.ndarray, y_score: np.ndarray, task: str, threshold: float = 0.5) -> float:
    """Official ACC, by medmnist's own `getACC`: strict `> threshold` on probabilities for
    binary and multi-label, else argmax."""
    from medmnist.evaluator import getACC

    return float(getACC(*_prepare(y_true, y_score), task, threshold))


def evaluate(y_true: np.ndarray, y_score: np.ndarray, task: str) -> dict[str, float]:
    return {"auc": auc_score(y_true, y_score, task), "acc": acc_score(y_true, y_score, task)}


def predicted_labels(y_score: np.ndarray, task: str) -> np.ndarray:
    """Hard predictions with the same decision rule as `acc_score`."""
    y_score = np.asarray(y_score)
    if task == MULTI_LABEL:
        return (y_score > 0.5).astype(int)
    if task == BINARY and y_score.ndim == 2:
        return (y_score[:, -1] > 0.5).astype(int)
    return np.argmax(y_score, axis=-1)


def class_report(y_true: np.ndarray, y_score: np.ndarray, task: str,
                 labels: dict[str, str] | None = None) -> list[dict]:
    """Per-class (per-label for multi-label) precision, recall, F1 and support."""
    pred = predicted_labels(y_score, task)
    y = np.asarray(y_true)
    if task == MULTI_LABEL:
        p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
        n = y.shape[1]
    else:
        n = y_score.shape[1] if np.ndim(y_score) == 2 and task != BINARY else 2
        if task == BINARY:
            n = 2
        p, r, f, s = precision_recall_fscore_support(y.reshape(-1), pred, labels=list(range(n)),
                                                     average=None, zero_division=0)
    names = labels or {}
    return [{"class": i, "name": names.get(str(i), str(i)), "precision": float(p[i]),
             "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])} for i in range(n)]


def confusion(y_true: np.ndarray, y_score: np.ndarray, task: str, n_classes: int) -> np.ndarray:
    """Confusion matrix (rows true, columns predicted). Multi-label: (L, 2, 2), one per label."""
    pred = predicted_labels(y_score, task)
    if task == MULTI_LABEL:
        y = np.asarray(y_true)
        return np.stack([_sk_confusion(y[:, i], pred[:, i], labels=[0, 1])
                         for i in range(y.shape[1])])
    return _sk_confusion(np.asarray(y_true).reshape(-1), pred, labels=list(range(n_classes)))


def _count_auc(counts: np.ndarray, pos: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney U, a tie counting one half, as average ranks do) of every bootstrap
    replicate, each given as how often it holds every test image (rows of `counts`); NaN where a
    replicate holds one class only. The scores are sorted once and the counts summed per group
    of tied scores, so a replicate costs O(n) instead of a sort of its own: on 20k+ test images
    a per-replicate rank made the board take minutes."""
    order = np.argsort(score, kind="stable")
    ranked = score[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])  # tie groups
    c = counts[:, order].astype(float)
    is_pos = np.asarray(pos, dtype=bool)[order]
    n_pos_g = np.add.reduceat(c * is_pos, starts, axis=1)
    n_neg_g = np.add.reduceat(c * ~is_pos, starts, axis=1)
    below = np.cumsum(n_neg_g, axis=1) - n_neg_g  # negatives strictly below each group
    u = (n_pos_g * (below + 0.5 * n_neg_g)).sum(axis=1)
    n_pos, n_neg = n_pos_g.sum(axis=1), n_neg_g.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _replicate_metrics(y: np.ndarray, s: np.ndarray, counts: np.ndarray, task: str):
    """Official ACC and AUC of every bootstrap replicate (rows of `counts`: how often each test
    image is in it) in one pass."""
    y, s = _prepare(y, s)
    n = counts.sum(axis=1).astype(float)
    if task == MULTI_LABEL:
        accs = [counts @ (y[:, j] == (s[:, j] > 0.5)) / n for j in range(y.shape[1])]
        aucs = [_count_auc(counts, y[:, j] == 1, s[:, j]) for j in range(y.shape[1])]
        return np.mean(accs, axis=0), np.mean(aucs, axis=0)
    if task == BINARY:
        s1 = s[:, -1] if s.ndim == 2 else s
        return counts @ (y == (s1 > 0.5)) / n, _count_auc(counts, y == 1, s1)
    acc = counts @ (y == np.argmax(s, axis=-1)) / n
    auc = np.mean([_count_auc(counts, y == c, s[:, c]) for c in range(s.shape[1])], axis=0)
    return acc, auc


def _replicate_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`n_boot` bootstrap resamples of `n` images, each as how often it draws every image
    (rows), the form `_replicate_metrics` scores in one pass."""
    idx = rng.integers(0, n, (n_boot, n))
    return np.bincount((np.arange(n_boot)[:, None] * n + idx).ravel(),
                       minlength=n_boot * n).reshape(n_boot, n)


def bootstrap_ci(y_true: np.ndarray, scores: list[np.ndarray] | np.ndarray, task: str,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, tuple]:
    """Percentile bootstrap CI of the seed-mean ACC and AUC.

    `scores` is one score array per seed (or a single array). Each replicate resamples the test
    images *and* the seeds with replacement, so the interval covers both the finite test set and
    run-to-run variation -- the two reasons a single number can mislead. Replicates whose
    resample lacks a class (no AUC defined) are dropped.
    """
    runs = [np.asarray(s) for s in (scores if isinstance(scores, list) else [scores])]
    y = np.asarray(y_true)
    rng = np.random.default_rng(seed)
    counts = _replicate_counts(y.shape[0], n_boot, rng)
    picks = rng.integers(0, len(runs), (n_boot, len(runs)))
    per_run = [_replicate_metrics(y, r, counts, task) for r in runs]  # each: (acc[B], auc[B])
    rows = np.arange(n_boot)[:, None]
    acc = np.stack([a for a, _ in per_run], axis=1)[rows, picks].mean(axis=1)
    auc = np.stack([u for _, u in per_run], axis=1)[rows, picks].mean(axis=1)
    keep = ~np.isnan(auc)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return {k: (float(np.percentile(v[keep], lo)), float(np.percentile(v[keep], hi)))
            for k, v in (("acc", acc), ("auc", auc))}


def paired_difference_ci(y_true: np.ndarray, a: np.ndarray, b: np.ndarray, task: str,
                         n_boot: int = 1000, level: float = 0.95,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of score(a) - score(b), score = (AUC + ACC) / 2 (the selection
    score), both scored on the same resampled images in each replicate (paired). Used to keep
    a variant only when the split supports it: on 78 validation images one image moves ACC by
    1.3 points. Replicates lacking a class (no AUC) are dropped."""
    y = np.asarray(y_true)
    counts = _replicate_counts(y.shape[0], n_boot, np.random.default_rng(seed))
    (acc_a, auc_a), (acc_b, auc_b) = (_replicate_metrics(y, np.asarray(s), counts, task)
                                      for s in (a, b))
    diff = ((auc_a + acc_a) - (auc_b + acc_b)) / 2
    diff = diff[~np.isnan(diff)]
    return (float(np.percentile(diff, (1 - level) / 2 * 100)),
            float(np.percentile(diff, (1 + level) / 2 * 100)))

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
    replicate holds one class only. The negatives are sorted once and their counts cumulated
    per replicate; each positive then reads how many negatives lie below it and tie with it at
    its `searchsorted` position, so a replicate costs O(n) instead of a sort of its own: on 20k+
    test images a per-replicate rank made the board take minutes. All sums stay integers."""
    pos = np.asarray(pos, dtype=bool)
    neg_idx, pos_idx = np.flatnonzero(~pos), np.flatnonzero(pos)
    neg_order = neg_idx[np.argsort(score[neg_idx])]  # order within ties is irrelevant
    neg_sorted = score[neg_order]
    lo = np.searchsorted(neg_sorted, score[pos_idx], side="left")
    hi = np.searchsorted(neg_sorted, score[pos_idx], side="right")
    cum = np.zeros((counts.shape[0], len(neg_idx) + 1), dtype=np.int64)
    np.cumsum(counts[:, neg_order], axis=1, out=cum[:, 1:])
    c_pos = counts[:, pos_idx]
    # negatives below + half the tied ones = (cum[lo] + cum[hi]) / 2
    u2 = (c_pos * (cum[:, lo] + cum[:, hi])).sum(axis=1)
    n_pos, n_neg = c_pos.sum(axis=1), cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u2 / (2.0 * n_pos * n_neg), np.nan)


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


def ensemble_bootstrap_ci(y_true: np.ndarray,
                          members: list[tuple[float, list[np.ndarray]]], task: str,
                          n_boot: int = 1000, level: float = 0.95,
                          seed: int = 0) -> dict[str, tuple[float, float] | float | int]:
    """Percentile bootstrap CI of the official ACC and AUC of an *ensemble's* probabilities,
    covering both the finite test set and which seeds happened to be trained.

    `members` is a list of `(weight, [seed_scores, ...])`: a seed ensemble is one member of
    weight 1; a blend is one member per family, each with its own seeds (weights are divided by
    their sum). Each replicate resamples the test images with replacement and, independently
    for every member, that member's seeds with replacement (as many as it has), averages the
    drawn seeds' probabilities (a seed drawn twice counts twice), mixes the members by weight,
    and scores the mix with the official rule. Why: bootstrapping the test images of the
    averaged probabilities alone treats the seeds as fixed, so an ensemble whose seeds disagree
    gets the same interval as one whose seeds agree; resampling the seeds puts that run-to-run
    variation back in. With identical seeds every draw averages to the same array and the
    interval equals `bootstrap_ci` of that array (same `seed`: the images are drawn first).

    Fast: a member with S seeds has only C(2S-1, S) distinct seed multisets (10 for 3 seeds,
    126 for 5), so each distinct drawn combination is averaged once and all the replicates that
    drew it are scored together by the per-image counts trick (`_replicate_metrics`).
    Replicates whose resample lacks a class (no AUC) are dropped from both metrics.

    Returns `{"acc": (lo, hi), "auc": (lo, hi), "acc_std", "auc_std", "acc_bias", "auc_bias",
    "n_kept"}`: `*_std` is the kept replicates' std (a bootstrap standard error of the ensemble
    score); `*_bias` is their mean minus the score of all seeds averaged. A seed resample N of
    N holds about 0.63 N distinct seeds, so where averaging seeds helps, replicates score a
    little below the full ensemble and the bias is negative: the interval is the plain
    percentile one, not shifted, and the bias says how far it leans.
    """
    if not members:
        raise ValueError("ensemble_bootstrap_ci needs at least one member")
    weights = np.array([float(w) for w, _ in members])
    runs = [[np.asarray(s, dtype=float) for s in seeds] for _, seeds in members]
    if any(len(r) == 0 for r in runs):
        raise ValueError("every ensemble member needs at least one seed's scores")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"member weights must be non-negative with a positive sum: {weights}")
    shape = runs[0][0].shape
    if any(s.shape != shape for r in runs for s in r):
        raise ValueError("every seed's scores must have the same shape")
    y = np.asarray(y_true)
    if shape[0] != y.shape[0]:
        raise ValueError(f"{shape[0]} score rows for {y.shape[0]} labels")
    weights = weights / weights.sum()
    rng = np.random.default_rng(seed)
    counts = _replicate_counts(y.shape[0], n_boot, rng)
    # each member's seeds resampled N of N, as how often each seed is drawn: replicates that
    # drew the same seeds in another order share a row (the multiset fixes the average)
    draws = [_replicate_counts(len(r), n_boot, rng) for r in runs]
    combos, which = np.unique(np.hstack(draws), axis=0, return_inverse=True)
    which = which.reshape(-1)
    stacked = [np.stack(r) for r in runs]
    edges = np.cumsum([0] + [len(r) for r in runs])
    acc, auc = np.empty(n_boot), np.empty(n_boot)
    for i, combo in enumerate(combos):
        mix = sum(w * np.tensordot(combo[a:b] / (b - a), s, axes=1)
                  for w, s, a, b in zip(weights, stacked, edges[:-1], edges[1:], strict=True))
        rows = np.flatnonzero(which == i)
        acc[rows], auc[rows] = _replicate_metrics(y, mix, counts[rows], task)
    full = sum(w * s.mean(axis=0) for w, s in zip(weights, stacked, strict=True))
    point = _replicate_metrics(y, full, np.ones((1, y.shape[0]), dtype=np.int64), task)
    keep = ~np.isnan(auc)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out: dict[str, tuple[float, float] | float | int] = {}
    for k, v, p in (("acc", acc[keep], point[0][0]), ("auc", auc[keep], point[1][0])):
        out[k] = (float(np.percentile(v, lo)), float(np.percentile(v, hi)))
        out[f"{k}_std"] = float(np.std(v, ddof=1)) if v.size > 1 else float("nan")
        out[f"{k}_bias"] = float(v.mean() - p) if v.size else float("nan")
    out["n_kept"] = int(keep.sum())
    return out


def detectable_difference(n_test: int, acc: float, level: float = 0.95) -> float:
    """Half-width of the normal-approximation (Wald) CI of an accuracy `acc` measured on
    `n_test` images: z * sqrt(acc (1 - acc) / n_test), about 0.056 at ACC 0.85 on 156 images.
    Why: a difference to another number smaller than this cannot be told from the test set's
    own sampling noise, so a report can say so instead of ranking within noise. NaN `acc`
    (a missing cell) gives NaN."""
    from scipy.stats import norm

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_test < 1:
        raise ValueError(f"n_test must be a positive number of images, got {n_test}")
    if np.isnan(acc):
        return float("nan")
    if not 0 <= acc <= 1:
        raise ValueError(f"acc must be in [0, 1], got {acc}")
    return float(norm.ppf(0.5 + level / 2) * np.sqrt(acc * (1 - acc) / n_test))

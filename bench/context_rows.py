"""Board rows that are never picked but that a reader needs beside the pick to judge it.

- **majority class**: always predict the training split's most common class. On imbalanced
  sets (VesselMNIST3D, AdrenalMNIST3D) this alone scores a higher ACC than some published
  methods, so an ACC without it misleads. Its AUC is 0.5 by construction.
- **prior shift**: the picked entry's test probabilities re-weighted to the class prior that EM
  estimates from the unlabelled test images (Saerens, Latinne & Decaestecker 2002). It is
  transductive (it looks at the test images, never their labels) and so never picked; it tells
  a user who deploys at another prevalence what to expect, and shows how much of a gap between
  validation and test is the test split's class mix.

Both need the training labels, read from the data file (`--data-dir`); without it the rows are
left out and the report says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bench import clinical, metrics
from bench.data import npz_path

MAJORITY = "majority class (train)"
PRIOR_SHIFT = "+prior shift (EM, transductive)"


def train_labels(flag: str, size: int, data_dir: str | Path | None,
                 test_labels: np.ndarray) -> np.ndarray | None:
    """The data file's training labels, or None when the file is absent or is not the one the
    run was scored on (its test labels differ)."""
    path = npz_path(flag, size, data_dir)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if not np.array_equal(np.asarray(z["test_labels"]).reshape(test_labels.shape),
                                  test_labels):
                return None
            return np.asarray(z["train_labels"])
    except (OSError, ValueError, KeyError):
        return None


def n_classes(task: str, scores: np.ndarray) -> int:
    return 2 if task == metrics.BINARY else int(np.asarray(scores).shape[-1])


def majority(train: np.ndarray, test_labels: np.ndarray, task: str, k: int) -> np.ndarray:
    """Constant probabilities predicting the training majority (per label for multi-label)."""
    return clinical.majority_scores(train, len(test_labels), task, k)


def prior_shift(train: np.ndarray, test_scores: np.ndarray, task: str,
                k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The test probabilities adjusted to the EM-estimated test prior, and that prior; None for
    multi-label tasks (no single class prior) and when a class has no training image."""
    if task == metrics.MULTI_LABEL:
        return None
    counts = np.bincount(np.asarray(train).reshape(-1).astype(int), minlength=k)
    if np.any(counts == 0):  # a class the model never saw has no prior to re-weight
        return None
    prior = counts / counts.sum()
    s = np.asarray(test_scores, dtype=float)
    if s.ndim == 1 or s.shape[-1] == 1:  # a binary score column: both classes' probabilities
        p1 = s.reshape(-1)
        s = np.stack([1 - p1, p1], axis=1)
    adjusted, estimated, _ = clinical.prior_shift_em(s, prior)
    return adjusted, np.asarray(estimated)


def clinical_columns(score_sets: list[dict[str, np.ndarray]], task: str) -> dict[str, float]:
    """Balanced accuracy, sensitivity, specificity (binary), quadratic-weighted kappa (ordinal),
    the lowest per-class recall, the classes never predicted on test, and the ACC at a
    threshold fitted on validation (binary): means over `score_sets` (a row's seeds, or the one
    probability array of an ensemble)."""
    keys = ("bal_acc", "sensitivity", "specificity", "qwk", "min_recall", "thr_acc", "threshold")
    out: dict[str, float | str] = {k: math.nan for k in keys}
    out["never_predicted"] = ""
    if not score_sets:
        return out
    per: dict[str, list[float]] = {k: [] for k in keys}
    never: set[int] = set()
    for s in score_sets:
        c = clinical.clinical_metrics(s["test_labels"], s["test_scores"], task)
        per["bal_acc"].append(c["balanced_accuracy"])
        per["sensitivity"].append(c.get("sensitivity", math.nan))
        per["specificity"].append(c.get("specificity", math.nan))
        per["qwk"].append(c.get("qwk", math.nan))
        recalls = c.get("per_class_recall") or []
        finite = [r for r in recalls if not math.isnan(r)]  # NaN: no test image of a class
        per["min_recall"].append(float(min(finite)) if finite else math.nan)
        never |= set(c.get("never_predicted") or [])
        t = clinical.fit_threshold(s["val_labels"], s["val_scores"], task) \
            if "val_scores" in s else None
        per["threshold"].append(math.nan if t is None else float(t))
        per["thr_acc"].append(math.nan if t is None else clinical.acc_at_threshold(
            s["test_labels"], s["test_scores"], task, t))
    for k, v in per.items():
        vals = [x for x in v if not (x is None or math.isnan(x))]
        out[k] = float(np.mean(vals)) if vals else math.nan
    out["never_predicted"] = ",".join(str(i) for i in sorted(never))
    return out

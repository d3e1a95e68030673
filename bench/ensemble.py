"""Blending the families' seed ensembles with weights chosen on validation, kept only when a
cross-fitted check on validation says the weights carry over.

Why a blend: AutoML systems (auto-sklearn, AutoGluon) end their search with greedy ensemble
selection (Caruana et al., 2004) over the models they trained, because families make different
mistakes and a weighted average of their probabilities is often better than the best one alone.
The final phase already trains every family on fresh seeds and keeps their probabilities, so a
blend costs no training.

Why cross-fitted: the weights are fitted on the validation split, so the blend's in-sample
validation score is never below its best member's; on 78 validation images (BreastMNIST) a blend
would always win by flipping an image or two. The rule: split validation into folds, fit the
weights on all folds but one and score the held-out fold, and compare that out-of-fold score with
the same procedure restricted to one member (the member best on the fitting folds). The blend is
an entry only when its out-of-fold score is strictly higher. Test labels are never read here:
the caller passes test scores through untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold

from bench import metrics, selection

STEPS = 10  # greedy additions with replacement: weights in tenths
FOLDS = 5

Weights = np.ndarray
Fitter = Callable[[list[np.ndarray], np.ndarray, str], Weights]


def val_score(y: np.ndarray, s: np.ndarray, task: str) -> float:
    """The run's selection score (bench.selection.score) of one set of probabilities."""
    m = metrics.evaluate(y, s, task)
    return selection.score(m["auc"], m["acc"])


def _mix(scores: list[np.ndarray], w: Weights) -> np.ndarray:
    return np.tensordot(np.asarray(w, dtype=float), np.stack(scores), axes=1)


def best_single(scores: list[np.ndarray], y: np.ndarray, task: str) -> Weights:
    """All weight on the member with the best validation score (first one on ties)."""
    w = np.zeros(len(scores))
    w[int(np.argmax([val_score(y, s, task) for s in scores]))] = 1.0
    return w


def greedy_weights(scores: list[np.ndarray], y: np.ndarray, task: str,
                   steps: int = STEPS) -> Weights:
    """Caruana's forward selection with replacement: start from the best member, then add the
    member that raises the validation score of the running average most; stop at `steps`
    additions or when no addition raises it strictly. Weights are the counts over their sum."""
    counts = best_single(scores, y, task)
    current = val_score(y, _mix(scores, counts), task)
    for n in range(1, steps):
        trials = [val_score(y, (_mix(scores, counts) * n + s) / (n + 1), task) for s in scores]
        j = int(np.argmax(trials))
        if trials[j] <= current:
            break
        counts[j] += 1
        current = trials[j]
    return counts / counts.sum()


def _folds(y: np.ndarray, task: str, folds: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Stratified folds for single-label tasks (every class in every fitting part), plain folds
    for multi-label; None when the split is too small to cross-fit."""
    y = np.asarray(y)
    if task == metrics.MULTI_LABEL:
        if len(y) < 2 * folds:
            return None
        return list(KFold(folds, shuffle=True, random_state=0).split(y))
    classes = y.reshape(len(y), -1)[:, 0]
    smallest = np.bincount(classes.astype(int)).min(initial=len(y)) if len(y) else 0
    k = min(folds, int(smallest))
    if k < 2:
        return None
    return list(StratifiedKFold(k, shuffle=True, random_state=0).split(classes, classes))


def cross_fitted_score(scores: list[np.ndarray], y: np.ndarray, task: str, fit: Fitter,
                       folds: int = FOLDS) -> float | None:
    """The validation score of out-of-fold predictions: each fold's probabilities are mixed
    with weights `fit` found on the other folds. None when the folds cannot be built or scored
    (a class missing from a fitting part leaves its AUC undefined)."""
    splits = _folds(y, task, folds)
    if splits is None:
        return None
    y = np.asarray(y)
    oof = np.zeros_like(np.asarray(scores[0], dtype=float))
    try:
        for fit_idx, held_idx in splits:
            w = fit([s[fit_idx] for s in scores], y[fit_idx], task)
            oof[held_idx] = _mix([s[held_idx] for s in scores], w)
        return val_score(y, oof, task)
    except ValueError:
        return None


def blend(members: dict[str, dict[str, np.ndarray]], task: str) -> dict | None:
    """A weighted blend of `members` (name -> val_scores, test_scores, val_labels, test_labels),
    or None when fewer than two members, when the weights fitted on all of validation keep one
    member only, or when the cross-fitted blend does not beat the cross-fitted best member.

    Returns the weights (name -> weight, members with weight 0 left out, largest first), the
    blend's val and test probabilities and labels, and both out-of-fold scores."""
    if len(members) < 2:
        return None
    names = list(members)
    y = members[names[0]]["val_labels"]
    val = [np.asarray(members[n]["val_scores"], dtype=float) for n in names]
    w = greedy_weights(val, y, task)
    if np.count_nonzero(w) < 2:
        return None
    cv_blend = cross_fitted_score(val, y, task, greedy_weights)
    cv_single = cross_fitted_score(val, y, task, best_single)
    if cv_blend is None or cv_single is None or cv_blend <= cv_single:
        return None
    test = [np.asarray(members[n]["test_scores"], dtype=float) for n in names]
    order = np.argsort(-w, kind="stable")
    return {"weights": {names[i]: float(w[i]) for i in order if w[i] > 0},
            "val_scores": _mix(val, w), "test_scores": _mix(test, w),
            "val_labels": y, "test_labels": members[names[0]]["test_labels"],
            "cv_blend": cv_blend, "cv_single": cv_single}

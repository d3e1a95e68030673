"""Slow, obvious reference implementations the fast code is checked against.

Nothing here imports bench: a bug in bench.metrics cannot hide by being shared with its check.
"""

from __future__ import annotations

import warnings

import numpy as np
from medmnist.evaluator import getACC, getAUC


def reference_bootstrap(y: np.ndarray, runs: list[np.ndarray], task: str, n_boot: int,
                        percentiles: tuple[float, float] = (2.5, 97.5),
                        seed: int = 0) -> dict[str, tuple | int]:
    """The percentile bootstrap written out one replicate at a time: resample the test images
    and the seeds with replacement (drawn as `bench.metrics.bootstrap_ci` documents: images
    first, then seeds, from one `default_rng(seed)`), score every picked seed on the resampled
    images with medmnist's own getAUC/getACC (sklearn's roc_auc_score: average ranks for ties),
    average over the picked seeds, drop replicates that lack a class, and take the given
    percentiles (2.5 and 97.5: a 95% interval)."""
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), (n_boot, len(y)))
    picks = rng.integers(0, len(runs), (n_boot, len(runs)))
    accs, aucs = [], []
    for b in range(n_boot):
        yb = y[idx[b]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn: "only one class present"
            try:
                auc = [getAUC(yb, runs[k][idx[b]], task) for k in picks[b]]
            except ValueError:
                continue
        if np.isnan(auc).any():
            continue
        aucs.append(sum(auc) / len(auc))
        acc = [getACC(yb, runs[k][idx[b]], task) for k in picks[b]]
        accs.append(sum(acc) / len(acc))
    return {"acc": tuple(float(x) for x in np.percentile(accs, percentiles)),
            "auc": tuple(float(x) for x in np.percentile(aucs, percentiles)),
            "kept": len(aucs)}

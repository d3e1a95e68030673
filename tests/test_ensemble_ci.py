"""bench.metrics.ensemble_bootstrap_ci: the CI of an ensemble's score that resamples the test
images *and* each member's seeds, checked against a slow one-replicate-at-a-time reference, and
bench.metrics.detectable_difference."""

from __future__ import annotations

import warnings
from math import comb

import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC

from bench import metrics
from bench.metrics import bootstrap_ci, detectable_difference, ensemble_bootstrap_ci

MULTI = "multi-label, binary-class"


def reference_ensemble_ci(y: np.ndarray, members: list[tuple[float, list[np.ndarray]]],
                          task: str, n_boot: int, level: float = 0.95, seed: int = 0) -> dict:
    """The documented procedure written out one replicate at a time, with medmnist's own
    getAUC/getACC and nothing from bench: draw the images (n of n), then every member's seeds
    (S of S) from one `default_rng(seed)`, average the drawn seeds, mix the members by their
    normalised weights, score, drop replicates without an AUC, take percentiles."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), (n_boot, len(y)))
    picks = [rng.integers(0, len(seeds), (n_boot, len(seeds))) for _, seeds in members]
    total = sum(w for w, _ in members)
    accs, aucs = [], []
    for b in range(n_boot):
        mix = sum(w / total * np.mean([seeds[j] for j in p[b]], axis=0)
                  for (w, seeds), p in zip(members, picks, strict=True))
        yb, sb = y[idx[b]], mix[idx[b]]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn: "only one class present"
            try:
                auc = getAUC(yb.squeeze(), sb.squeeze(), task)
            except ValueError:
                continue
        if np.isnan(auc):
            continue
        aucs.append(auc)
        accs.append(getACC(yb.squeeze(), sb.squeeze(), task))
    q = ((1 - level) / 2 * 100, (1 + level) / 2 * 100)
    return {"acc": tuple(np.percentile(accs, q)), "auc": tuple(np.percentile(aucs, q)),
            "n_kept": len(aucs)}


def _dyadic_seeds(task: str, n: int, k: int, n_seeds: int, seed: int):
    """Labels and `n_seeds` disagreeing score arrays on a grid of sixteenths: with 2 or 4 seeds
    and weights in quarters every average is exact in floating point, so the reference's
    plain mean and the fast path's weighted sum tie (and cross 0.5) identically."""
    rng = np.random.default_rng(seed)
    if task == MULTI:
        y = (rng.random((n, k)) < 0.4).astype(int)
        sig = [y * 0.3 + rng.random((n, k)) * 0.7 for _ in range(n_seeds)]
    else:
        y = rng.integers(0, k, (n, 1))
        sig = [np.eye(k)[y[:, 0]] * 0.3 + rng.random((n, k)) * 0.7 for _ in range(n_seeds)]
    return y, [np.round(s * 16) / 16 for s in sig]


@pytest.mark.parametrize(("task", "k"), [("binary-class", 2), ("multi-class", 4),
                                         ("ordinal-regression", 5), (MULTI, 3)])
def test_equals_slow_reference_for_a_seed_ensemble(task: str, k: int) -> None:
    y, seeds = _dyadic_seeds(task, n=50, k=k, n_seeds=4, seed=1)
    got = ensemble_bootstrap_ci(y, [(1.0, seeds)], task, n_boot=60, seed=3)
    want = reference_ensemble_ci(y, [(1.0, seeds)], task, n_boot=60, seed=3)
    assert got["n_kept"] == want["n_kept"]
    for m in ("acc", "auc"):
        assert got[m] == pytest.approx(want[m], abs=1e-12), m


def test_equals_slow_reference_for_a_blend_with_its_own_seeds_per_family() -> None:
    """A blend: two families, one with 4 seeds and one with 2, weights 3:1 (normalised)."""
    y, a = _dyadic_seeds("multi-class", n=60, k=3, n_seeds=4, seed=2)
    _, b = _dyadic_seeds("multi-class", n=60, k=3, n_seeds=2, seed=7)
    members = [(3.0, a), (1.0, b)]
    got = ensemble_bootstrap_ci(y, members, "multi-class", n_boot=60, level=0.9, seed=5)
    want = reference_ensemble_ci(y, members, "multi-class", n_boot=60, level=0.9, seed=5)
    for m in ("acc", "auc"):
        assert got[m] == pytest.approx(want[m], abs=1e-12), m
    # the weights are normalised: 0.75/0.25 is the same blend
    again = ensemble_bootstrap_ci(y, [(0.75, a), (0.25, b)], "multi-class", n_boot=60,
                                  level=0.9, seed=5)
    assert again["acc"] == got["acc"] and again["auc"] == got["auc"]


def _binary(n: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 1)) < 0.4).astype(int)
    z = 1.2 * (2 * y[:, 0] - 1) + rng.normal(0, noise, n)
    return y, 1 / (1 + np.exp(-z))


def test_identical_seeds_give_the_image_only_interval() -> None:
    """Identical seeds average to the same array in every replicate, so the interval is the
    image bootstrap of that array (the images are drawn first from the same generator)."""
    y, s = _binary(300, 0, 1.0)
    got = ensemble_bootstrap_ci(y, [(1.0, [s, s.copy(), s.copy()])], "binary-class",
                                n_boot=400, seed=9)
    plain = bootstrap_ci(y, [s], "binary-class", n_boot=400, seed=9)
    for m in ("acc", "auc"):
        assert got[m] == pytest.approx(plain[m], abs=1e-9), m
        assert got[f"{m}_bias"] == pytest.approx(0.0, abs=0.01)
    # one member with one seed is exactly the old image bootstrap
    one = ensemble_bootstrap_ci(y, [(1.0, [s])], "binary-class", n_boot=400, seed=9)
    assert (one["acc"], one["auc"]) == (plain["acc"], plain["auc"])


def test_disagreeing_seeds_widen_the_interval_beyond_the_image_bootstrap() -> None:
    """The old ensemble row bootstrapped the averaged probabilities over images only, so seeds
    that disagree gave no wider an interval; resampling the seeds must widen it."""
    rng = np.random.default_rng(4)
    y, base = _binary(400, 1, 0.5)
    logit = np.log(base / (1 - base))
    seeds = [1 / (1 + np.exp(-(logit + rng.normal(0, 2.5, len(y))))) for _ in range(3)]
    mean = np.mean(seeds, axis=0)
    new = ensemble_bootstrap_ci(y, [(1.0, seeds)], "binary-class", n_boot=500, seed=0)
    old = bootstrap_ci(y, [mean], "binary-class", n_boot=500, seed=0)
    for m in ("acc", "auc"):
        assert new[m][1] - new[m][0] > 1.3 * (old[m][1] - old[m][0]), (m, new[m], old[m])
        assert new[f"{m}_std"] > 0
    # resampled seed sets hold fewer distinct seeds: they score below the full ensemble
    assert new["auc_bias"] < 0


def test_each_distinct_seed_multiset_is_scored_once(monkeypatch) -> None:
    """The fast path: 3 seeds have C(5, 3) = 10 multisets, so 500 replicates need at most 10
    scoring passes (plus one for the full ensemble), not 500."""
    calls = []
    real = metrics._replicate_metrics

    def counting(y, s, counts, task):
        calls.append(counts.shape[0])
        return real(y, s, counts, task)

    monkeypatch.setattr(metrics, "_replicate_metrics", counting)
    y, s = _binary(120, 2, 1.0)
    seeds = [s, np.roll(s, 1), np.roll(s, 2)]
    ensemble_bootstrap_ci(y, [(1.0, seeds)], "binary-class", n_boot=500)
    assert len(calls) <= comb(5, 3) + 1
    assert sum(calls) == 500 + 1


def test_rejects_malformed_members() -> None:
    y, s = _binary(20, 0, 1.0)
    for members, match in [([], "at least one member"), ([(1.0, [])], "at least one seed"),
                           ([(-1.0, [s])], "non-negative"), ([(0.0, [s])], "positive sum"),
                           ([(1.0, [s, s[:10]])], "same shape"),
                           ([(1.0, [s[:10]])], "10 score rows for 20 labels")]:
        with pytest.raises(ValueError, match=match):
            ensemble_bootstrap_ci(y, members, "binary-class", n_boot=10)


def test_detectable_difference() -> None:
    # the worked example: +-0.056 at ACC 0.85 on BreastMNIST's 156 test images
    assert detectable_difference(156, 0.85) == pytest.approx(0.0560, abs=5e-4)
    assert detectable_difference(624, 0.85) < detectable_difference(156, 0.85)
    assert detectable_difference(156, 0.85, level=0.99) > detectable_difference(156, 0.85)
    assert np.isnan(detectable_difference(156, float("nan")))
    for args in ((0, 0.8), (100, 1.2), (100, 0.8, 1.0)):
        with pytest.raises(ValueError):
            detectable_difference(*args)

"""bench.metrics: the official numbers (== medmnist's getAUC/getACC, to the last digit), the
per-class report, the confusion matrix and the bootstrap CI."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from medmnist.evaluator import getACC, getAUC
from medmnist.info import INFO
from reference_stats import reference_bootstrap
from sklearn.metrics import roc_auc_score

from bench.data import MedData, Split, dataset_info, from_arrays, load_dataset, synthetic_arrays
from bench.metrics import (
    acc_score,
    auc_score,
    bootstrap_ci,
    class_report,
    confusion,
    evaluate,
    predicted_labels,
)

REAL = ("breastmnist", "pneumoniamnist", "retinamnist")
# synthetic stand-ins cover every task: binary, ordinal (5 classes), multi-label (14), multi-class
SYNTH = ("breastmnist", "retinamnist", "chestmnist", "organamnist")
MULTI = "multi-label, binary-class"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def synth() -> dict[str, MedData]:
    """Synthetic arrays in each subset's exact layout: no file, no real data needed."""
    return {flag: from_arrays(dataset_info(flag), 28, synthetic_arrays(flag, n=(96, 64, 80)))
            for flag in SYNTH}


@pytest.fixture(scope="module")
def real(real_data_dir: Path) -> dict[str, MedData]:
    """The real (md5-checked) subsets; the tests that use this fixture say so in their name
    (`..._real_data`) and are the only ones skipped without the files."""
    return {flag: load_dataset(flag, data_dir=real_data_dir) for flag in REAL
            if (real_data_dir / f"{flag}.npz").is_file()}


def _data(datasets: dict[str, MedData], flag: str) -> MedData:
    if flag not in datasets:
        pytest.skip(f"{flag}.npz not available")
    return datasets[flag]


def _random_scores(y: np.ndarray, task: str, k: int, rng: np.random.Generator) -> np.ndarray:
    """Probabilities as a model would give them: sigmoid per label, softmax per row."""
    z = rng.normal(0, 2, (len(y), k))
    # a little signal, so AUCs are not all ~0.5, plus ties from rounding
    if task == MULTI:
        z += 1.5 * y
        return np.round(1 / (1 + np.exp(-z)), 3)
    z[np.arange(len(y)), y[:, 0].astype(int)] += 1.0
    return _softmax(z)


def _assert_official(y: np.ndarray, s: np.ndarray, task: str) -> None:
    ours = evaluate(y, s, task)
    assert ours["auc"] == getAUC(y, s, task)
    assert ours["acc"] == getACC(y, s, task)
    assert isinstance(ours["auc"], float) and isinstance(ours["acc"], float)


def _check_random_scores(data: MedData, flag: str, split: str) -> None:
    y, task = data.splits[split].raw_labels, data.info.task
    rng = np.random.default_rng(zlib.crc32(f"{flag}/{split}".encode()))
    for _ in range(4):
        _assert_official(y, _random_scores(y, task, data.info.n_classes, rng), task)


@pytest.mark.parametrize("flag", SYNTH)
@pytest.mark.parametrize("split", ["val", "test"])
def test_equals_official_on_random_scores(synth, flag: str, split: str) -> None:
    _check_random_scores(synth[flag], flag, split)


@pytest.mark.parametrize("flag", REAL)
@pytest.mark.parametrize("split", ["val", "test"])
def test_equals_official_on_random_scores_real_data(real, flag: str, split: str) -> None:
    _check_random_scores(_data(real, flag), flag, split)


def _check_binary_layouts(y: np.ndarray, task: str) -> None:
    """Binary scores as softmax rows (N, 2), a single column (N, 1) or a vector (N,)."""
    rng = np.random.default_rng(0)
    two = _random_scores(y, task, 2, rng)
    for s in (two, two[:, 1:], two[:, 1]):
        _assert_official(y, s, task)
        assert evaluate(y, s, task) == evaluate(y, two, task)
    # the official threshold is a strict > 0.5 on the class-1 probability
    half = np.full((len(y), 2), 0.5)
    assert acc_score(y, half, task) == getACC(y, half, task) == float(np.mean(y == 0))
    assert auc_score(y, half, task) == 0.5


def test_binary_score_layouts(synth) -> None:
    data = synth["breastmnist"]
    _check_binary_layouts(data.splits["test"].raw_labels, data.info.task)


@pytest.mark.parametrize("flag", ["breastmnist", "pneumoniamnist"])
def test_binary_score_layouts_real_data(real, flag: str) -> None:
    data = _data(real, flag)
    _check_binary_layouts(data.splits["test"].raw_labels, data.info.task)


def test_logits_are_not_probabilities() -> None:
    """The documented pitfall: thresholding logits gives another ACC (AUC is rank-only)."""
    y = np.array([[0], [0], [1], [1]])
    p = np.array([[0.7, 0.3], [0.6, 0.4], [0.45, 0.55], [0.2, 0.8]])
    logits = np.log(p)  # all negative: '> 0.5' never fires
    assert acc_score(y, p, "binary-class") == 1.0
    assert acc_score(y, logits, "binary-class") == 0.5
    assert auc_score(y, p, "binary-class") == auc_score(y, logits, "binary-class") == 1.0


def _trained_scores(data: MedData) -> dict[str, np.ndarray]:
    """val/test scores of an MLP trained briefly on (at most 256 images of) the train set."""
    from bench.train import fit

    tr = data.splits["train"]
    small = MedData(data.info, data.size, {
        "train": Split(tr.images[:256], tr.labels[:256], tr.raw_labels[:256]),
        "val": data.splits["val"], "test": data.splits["test"]})
    r = fit({"model": "mlp", "hidden": 128, "epochs": 2, "batch_size": 64, "device": "cpu",
             "scheduler": "constant"}, small)
    return {"val": r.val_scores, "test": r.test_scores}


def _check_trained_scores(data: MedData) -> None:
    task, scores = data.info.task, _trained_scores(data)
    for split in ("val", "test"):
        s, y = scores[split], data.splits[split].raw_labels
        assert s.shape == (len(y), data.info.n_classes)
        if task == MULTI:
            assert ((s > 0) & (s < 1)).all()
        else:
            np.testing.assert_allclose(s.sum(axis=1), 1.0, atol=1e-5)
        _assert_official(y, s, task)
        # float32 scores (what a GPU gives) too
        _assert_official(y, s.astype(np.float32), task)


@pytest.mark.parametrize("flag", SYNTH)
def test_equals_official_on_trained_model_scores(synth, flag: str) -> None:
    _check_trained_scores(synth[flag])


@pytest.mark.parametrize("flag", REAL)
def test_equals_official_on_trained_model_scores_real_data(real, flag: str) -> None:
    _check_trained_scores(_data(real, flag))


def _check_class_report_and_confusion(data: MedData, flag: str) -> None:
    info = data.info
    y, task = data.splits["test"].raw_labels, info.task
    s = _random_scores(y, task, info.n_classes, np.random.default_rng(1))
    rep = class_report(y, s, task, info.labels)
    cm = confusion(y, s, task, info.n_classes)
    assert [r["class"] for r in rep] == list(range(info.n_classes))
    assert [r["name"] for r in rep] == [INFO[flag]["label"][str(i)] for i in range(info.n_classes)]
    for r in rep:
        assert all(0.0 <= r[k] <= 1.0 for k in ("precision", "recall", "f1"))
    pred = predicted_labels(s, task)
    if task == MULTI:
        assert cm.shape == (14, 2, 2)
        assert (cm.sum(axis=(1, 2)) == len(y)).all()
        assert [r["support"] for r in rep] == y.sum(axis=0).tolist()
        assert (cm[:, 1, 1] == ((pred == 1) & (y == 1)).sum(axis=0)).all()
        per_label_acc = (cm[:, 0, 0] + cm[:, 1, 1]) / len(y)
        assert np.isclose(per_label_acc.mean(), getACC(y, s, task))
    else:
        k = info.n_classes
        assert cm.shape == (k, k)
        assert cm.sum() == len(y)
        counts = np.bincount(y[:, 0], minlength=k)
        assert (cm.sum(axis=1) == counts).all()
        assert sum(r["support"] for r in rep) == len(y)
        assert [r["support"] for r in rep] == counts.tolist()
        assert np.trace(cm) / len(y) == pytest.approx(getACC(y, s, task), abs=1e-12)
        for i, r in enumerate(rep):
            if counts[i]:
                assert r["recall"] == pytest.approx(cm[i, i] / counts[i])
            if cm[:, i].sum():
                assert r["precision"] == pytest.approx(cm[i, i] / cm[:, i].sum())


@pytest.mark.parametrize("flag", SYNTH)
def test_class_report_and_confusion(synth, flag: str) -> None:
    _check_class_report_and_confusion(synth[flag], flag)


@pytest.mark.parametrize("flag", REAL)
def test_class_report_and_confusion_real_data(real, flag: str) -> None:
    _check_class_report_and_confusion(_data(real, flag), flag)


def test_class_report_without_names() -> None:
    y = np.array([[0], [1], [2], [2]])
    s = np.eye(3)[[0, 1, 2, 1]]
    rep = class_report(y, s, "multi-class")
    assert [r["name"] for r in rep] == ["0", "1", "2"]
    assert [r["support"] for r in rep] == [1, 1, 2]
    assert rep[2]["recall"] == 0.5 and rep[1]["precision"] == 0.5


# --- bootstrap CI ------------------------------------------------------------------------------

def _binary_problem(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, (n, 1))
    p1 = 1 / (1 + np.exp(-(rng.normal(0, 1.5, n) + 1.6 * (y[:, 0] * 2 - 1))))
    return y, np.stack([1 - p1, p1], axis=1)


def _check_brackets_point_estimate(data: MedData) -> None:
    y, task = data.splits["test"].raw_labels, data.info.task
    rng = np.random.default_rng(2)
    seeds = [_random_scores(y, task, data.info.n_classes, rng) for _ in range(3)]
    ci = bootstrap_ci(y, seeds, task, n_boot=200, seed=0)
    point = {k: float(np.mean([evaluate(y, s, task)[k] for s in seeds])) for k in ("acc", "auc")}
    for k in ("acc", "auc"):
        lo, hi = ci[k]
        assert 0.0 <= lo <= point[k] <= hi <= 1.0, (k, ci[k], point[k])
        assert hi > lo


@pytest.mark.parametrize("flag", SYNTH)
def test_bootstrap_brackets_point_estimate(synth, flag: str) -> None:
    _check_brackets_point_estimate(synth[flag])


@pytest.mark.parametrize("flag", REAL)
def test_bootstrap_brackets_point_estimate_real_data(real, flag: str) -> None:
    _check_brackets_point_estimate(_data(real, flag))


def test_bootstrap_narrower_with_more_samples() -> None:
    small = bootstrap_ci(*_binary_problem(100), "binary-class", n_boot=300)
    large = bootstrap_ci(*_binary_problem(2000), "binary-class", n_boot=300)
    for k in ("acc", "auc"):
        assert large[k][1] - large[k][0] < 0.6 * (small[k][1] - small[k][0]), k


def test_bootstrap_deterministic_for_a_seed() -> None:
    y, s = _binary_problem(200)
    runs = [s, np.roll(s, 1, axis=0)]
    a = bootstrap_ci(y, runs, "binary-class", n_boot=200, seed=7)
    assert a == bootstrap_ci(y, runs, "binary-class", n_boot=200, seed=7)
    assert a != bootstrap_ci(y, runs, "binary-class", n_boot=200, seed=8)
    # a single array is one run
    assert bootstrap_ci(y, s, "binary-class", n_boot=100) == \
        bootstrap_ci(y, [s], "binary-class", n_boot=100)


def test_bootstrap_wider_with_seed_spread() -> None:
    """Resampling seeds too: runs that disagree widen the interval."""
    y, s = _binary_problem(300)
    _, other = _binary_problem(300, seed=5)  # unrelated scores: near-chance run
    one = bootstrap_ci(y, [s, s], "binary-class", n_boot=300)
    mixed = bootstrap_ci(y, [s, other], "binary-class", n_boot=300)
    assert mixed["auc"][1] - mixed["auc"][0] > one["auc"][1] - one["auc"][0]


# --- bootstrap CI against a slow, obvious reference ----------------------------------------------

def _tied_runs(task: str, n: int, n_runs: int, k: int, seed: int = 3):
    """Labels and `n_runs` *different* score arrays rounded to one decimal, so most scores are
    tied with others (as a saturated or coarsely calibrated model gives)."""
    rng = np.random.default_rng(seed)
    if task == MULTI:
        y = (rng.random((n, k)) < 0.4).astype(int)
        runs = [np.round(1 / (1 + np.exp(-(rng.normal(0, 1.5, (n, k)) + (r + 1) * 0.6 * y))), 1)
                for r in range(n_runs)]
    else:
        y = rng.integers(0, k, (n, 1))
        runs = [np.round(_softmax(rng.normal(0, 1.5, (n, k)) + (r + 1) * 0.6 * np.eye(k)[y[:, 0]]),
                         1) for r in range(n_runs)]
    return y, runs


def _assert_ci_equal(got: dict, want: dict) -> None:
    for m in ("acc", "auc"):
        assert got[m] == pytest.approx(want[m], abs=1e-12), (m, got[m], want[m])


@pytest.mark.parametrize(("task", "k"), [("binary-class", 2), ("ordinal-regression", 5),
                                         ("multi-class", 4), (MULTI, 4)])
def test_bootstrap_equals_slow_reference_with_ties_and_seeds(task: str, k: int) -> None:
    """Default level: the CI is the 2.5th and 97.5th percentile (95%, not 90%) of replicates
    that resample images *and* seeds, with tied scores ranked as sklearn ranks them."""
    y, runs = _tied_runs(task, n=60, n_runs=3, k=k)
    ties = len(np.unique(runs[0])) / runs[0].size
    assert ties < 0.2  # the case is really about ties
    got = bootstrap_ci(y, runs, task, n_boot=80, seed=11)
    _assert_ci_equal(got, reference_bootstrap(y, runs, task, 80, (2.5, 97.5), seed=11))


def test_bootstrap_tied_auc_uses_average_ranks() -> None:
    """One replicate that is the identity resample: the vectorised rank AUC of heavily tied
    scores equals sklearn's (average ranks), not an ordinal tie-break."""
    from bench.metrics import _count_auc

    y, (s,) = _tied_runs("binary-class", n=200, n_runs=1, k=2)
    want = roc_auc_score(y[:, 0], s[:, 1])
    got = _count_auc(np.ones((1, len(y)), dtype=int), y[:, 0] == 1, s[:, 1])
    assert got[0] == pytest.approx(want, abs=1e-12)
    # and an ordinal tie-break really gives another number on these scores
    order = np.argsort(s[:, 1], kind="stable")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    pos = y[:, 0] == 1
    ordinal = (ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum())
    assert abs(ordinal - want) > 1e-3


def test_count_auc_equals_sklearn_with_the_counts_as_sample_weights() -> None:
    """A bootstrap replicate is the test set with each image counted as often as it was drawn:
    the counted AUC equals sklearn's roc_auc_score with those counts as sample weights, tied
    scores included, and a replicate without positives is NaN."""
    from bench.metrics import _count_auc

    rng = np.random.default_rng(12)
    y = rng.random(50) < 0.4
    score = np.round(rng.random(50), 1)  # many ties
    counts = rng.multinomial(50, np.full(50, 1 / 50), size=5)
    counts[4] = np.where(y, 0, counts[4])  # no positive drawn
    got = _count_auc(counts, y, score)
    for r in range(4):
        assert got[r] == pytest.approx(roc_auc_score(y, score, sample_weight=counts[r]),
                                       abs=1e-12), r
    assert np.isnan(got[4])


@pytest.mark.parametrize(("level", "percentiles"), [(0.95, (2.5, 97.5)), (0.8, (10.0, 90.0))])
def test_bootstrap_level_sets_the_percentiles(level: float, percentiles: tuple) -> None:
    y, runs = _tied_runs("binary-class", n=80, n_runs=2, k=2, seed=5)
    got = bootstrap_ci(y, runs, "binary-class", n_boot=150, level=level, seed=2)
    _assert_ci_equal(got, reference_bootstrap(y, runs, "binary-class", 150, percentiles, seed=2))
    # the default is the 95% interval
    if level == 0.95:
        assert bootstrap_ci(y, runs, "binary-class", n_boot=150, seed=2) == got


def test_bootstrap_resamples_seeds() -> None:
    """Runs that disagree: the CI must differ from both the first run's and the pooled-without-
    seed-resampling one, and equal the reference that resamples seeds."""
    y, runs = _tied_runs("binary-class", n=60, n_runs=3, k=2, seed=8)
    runs = [runs[0], np.round(runs[1] ** 3, 1), 1 - runs[2]]  # very different seeds
    got = bootstrap_ci(y, runs, "binary-class", n_boot=150, seed=4)
    _assert_ci_equal(got, reference_bootstrap(y, runs, "binary-class", 150, (2.5, 97.5), 4))
    first = bootstrap_ci(y, runs[:1], "binary-class", n_boot=150, seed=4)
    assert got["auc"] != first["auc"]


def test_bootstrap_drops_replicates_without_a_class() -> None:
    """2 positives in 40: some resamples have none (no AUC); those replicates are dropped from
    both metrics, exactly as the reference drops them."""
    rng = np.random.default_rng(0)
    y = np.zeros((40, 1), dtype=int)
    y[[3, 17]] = 1
    runs = [np.round(rng.random((40, 2)), 1) for _ in range(2)]
    want = reference_bootstrap(y, runs, "binary-class", 200, (2.5, 97.5), seed=1)
    assert 0 < want["kept"] < 200
    _assert_ci_equal(bootstrap_ci(y, runs, "binary-class", n_boot=200, seed=1), want)


def test_count_auc_edge_replicates_equal_sklearn_and_one_class_ones_are_nan_silently() -> None:
    """The replicates a bootstrap of an imbalanced test set draws: a single positive, a single
    negative (the rest of the draws tied or not), against sklearn's roc_auc_score with the
    counts as sample weights; replicates of one class only are NaN, silently (a 1000-replicate
    CI must not print 0/0 warnings)."""
    import warnings

    from bench.metrics import _count_auc

    rng = np.random.default_rng(4)
    pos = np.r_[np.ones(5, dtype=bool), np.zeros(7, dtype=bool)]
    score = np.round(rng.random(12), 1)
    counts = np.zeros((5, 12), dtype=int)
    counts[0, [2]] = 1                     # one positive drawn once
    counts[0, 5:] = rng.integers(1, 3, 7)
    counts[1, :5] = rng.integers(1, 3, 5)  # one negative image
    counts[1, [8]] = 1
    counts[2] = rng.integers(0, 3, 12)
    counts[2, [0, 6]] = 1                  # both classes, ties in the scores
    counts[3, :5] = 2                      # no negative
    counts[4, 5:] = 2                      # no positive
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = _count_auc(counts, pos, score)
    for r in range(3):
        assert got[r] == pytest.approx(roc_auc_score(pos, score, sample_weight=counts[r]),
                                       abs=1e-12), r
    assert np.isnan(got[3]) and np.isnan(got[4])


def test_bootstrap_of_one_column_binary_scores_equals_the_two_column_layout() -> None:
    """Binary scores given as the class-1 probability alone (N,) give the same CI as the
    (N, 2) softmax layout, which equals the slow reference."""
    y, runs = _tied_runs("binary-class", n=60, n_runs=2, k=2)
    want = reference_bootstrap(y, runs, "binary-class", 60, (2.5, 97.5), seed=5)
    _assert_ci_equal(bootstrap_ci(y, runs, "binary-class", n_boot=60, seed=5), want)
    _assert_ci_equal(bootstrap_ci(y, [s[:, 1] for s in runs], "binary-class", n_boot=60,
                                  seed=5), want)


def test_acc_threshold_is_passed_to_medmnist() -> None:
    """`acc_score(..., threshold=t)` is medmnist's getACC at t, not at its default 0.5."""
    y, s = _binary_problem(200, seed=9)
    for t in (0.3, 0.7):
        want = getACC(y.squeeze(), s, "binary-class", t)
        assert acc_score(y, s, "binary-class", threshold=t) == want
    assert acc_score(y, s, "binary-class", threshold=0.3) != acc_score(y, s, "binary-class")


def test_paired_difference_ci_is_zero_for_the_same_scores_and_signed_for_better_ones():
    """The paired bootstrap of score(a) - score(b): exactly 0 for a == b; above 0 for a
    clearly better a, below 0 with the roles swapped."""
    from bench.metrics import paired_difference_ci

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (300, 1))
    good = np.clip(0.5 + 0.4 * (2 * y[:, 0] - 1) + rng.normal(0, 0.2, 300), 0, 1)
    weak = np.clip(0.5 + 0.05 * (2 * y[:, 0] - 1) + rng.normal(0, 0.2, 300), 0, 1)
    as_probs = lambda p: np.stack([1 - p, p], axis=1)  # noqa: E731
    assert paired_difference_ci(y, as_probs(weak), as_probs(weak), "binary-class",
                                n_boot=200) == (0.0, 0.0)
    lo, hi = paired_difference_ci(y, as_probs(good), as_probs(weak), "binary-class", n_boot=200)
    assert 0 < lo < hi
    lo2, hi2 = paired_difference_ci(y, as_probs(weak), as_probs(good), "binary-class",
                                    n_boot=200)
    assert hi2 < 0 and (lo2, hi2) == pytest.approx((-hi, -lo))

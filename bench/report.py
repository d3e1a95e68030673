"""Markdown report + PNG figures from one or more run directories.

Everything is rebuilt from the files on disk (like the leaderboard) and written atomically, so a
crashed or concurrent report never leaves a half-written file. Figures go to
`<out stem>_figures/` beside the markdown and are linked relatively, so the folder can be moved.

Order, as a paper reads: results first (headline, leaderboard, across datasets with a
critical-difference diagram), then per dataset the figures behind the numbers (seed spread,
ROC/PR, calibration, confusion, misclassified images) of the *picked* entry -- the one with the
best mean validation AUC, never chosen on test -- then how the search went, then the run
metadata. Nothing is retrained: scores come from each final seed's scores.npz, the search from
trials.parquet and the persisted Optuna studies (bench.studies).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are made on clusters and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from bench import metrics  # noqa: E402
from bench.baselines import load_published  # noqa: E402
from bench.errors import UserError  # noqa: E402
from bench.leaderboard import (  # noqa: E402
    RunDirs,
    as_paths,
    build_leaderboard,
    comparable_baselines,
    entry_scores,
    entry_tta,
    entry_weights,
    format_best_trials,
    format_board,
    format_summary,
    is_search_only,
    load_scores,
    load_seeds,
    load_trials,
    official_row,
    read_meta,
    run_labels,
    summarize,
    verdict,
)
from bench.results import atomic_write, write_text  # noqa: E402
from bench.studies import (  # noqa: E402
    STUDIES_FILE,
    build_studies,
    equal_budget_study,
    finish_order,
    has_finish_times,
    load_studies,
    max_epochs_of,
    numeric_axis,
    param_importances,
    trial_budget,
)

N_BINS = 10  # calibration bins (the usual 10 equal-width bins of Guo et al. 2017)
N_WRONG = 4  # misclassified test images shown per true class


def _save(fig: plt.Figure, path: Path) -> Path:
    """savefig atomically (temp file beside it, then rename)."""
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110,
                                                        bbox_inches="tight"))
    finally:
        plt.close(fig)


def _grid(n: int, w: float = 4.6, h: float = 3.4, cols: int = 3) -> tuple[plt.Figure,
                                                                          list[plt.Axes]]:
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False,
                             layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _label(r: pd.Series, board: pd.DataFrame) -> str:
    """Entry name: family, plus size/run only when the board needs them to tell rows apart."""
    s = r["family"] + (f" {r['size']}px" if board["size"].nunique() > 1 else "")
    return f"{r['run']}: {s}" if board["run"].nunique() > 1 else s


def _class_names(flag: str) -> list[str]:
    import medmnist

    labels = medmnist.INFO[flag]["label"]
    return [labels[str(i)] for i in range(len(labels))]


def _short(name: str, i: int, n: int = 14) -> str:
    return name if name == str(i) else f"{i}: {name[:n]}"


# --- which entry and which model the per-dataset figures show ----------------------------------

def _val(board: pd.DataFrame) -> pd.Series:
    """The validation number entries are chosen by: the board's `val_score` when it has one,
    else the mean validation AUC."""
    if "val_score" in board and board["val_score"].notna().any():
        return pd.to_numeric(board["val_score"], errors="coerce")
    return pd.to_numeric(board["val_auc_mean"], errors="coerce")


def picked_entries(board: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, the entry a researcher would publish: the leaderboard's `picked` marker
    (bench.selection's rule, validation only) when it has one, else the entry with the best
    validation number; with several runs, the best-validated of their picks. Only entries with
    successful seeds qualify; test numbers never choose."""
    ok = board[board["n_seeds"] > 0].assign(_v=_val(board))
    if ok.empty:
        return ok
    if "picked" in ok and ok["picked"].fillna(False).astype(bool).any():
        ok = ok[ok["picked"].fillna(False).astype(bool)]
    ok = ok.dropna(subset=["_v"])
    idx = ok.groupby("dataset")["_v"].idxmax()
    return ok.loc[idx].drop(columns="_v").sort_values("dataset")


def is_ensemble(entry: pd.Series) -> bool:
    return str(entry.get("kind", "single")) == "ensemble"


def base_family(entry: pd.Series) -> str:
    """The trained family behind an entry (`cnn_small ×3 ens` -> `cnn_small`); a blend of
    several families keeps its own name (it is no one family's ensemble)."""
    families = list(entry_weights(entry))
    return families[0] if len(families) == 1 else str(entry["family"])


def entry_seeds(seeds: pd.DataFrame, entry: pd.Series) -> pd.DataFrame:
    """The successful final seeds behind one leaderboard entry (an ensemble's members)."""
    m = ((seeds["run"] == entry["run"]) & (seeds["dataset"] == entry["dataset"])
         & seeds["family"].isin(list(entry_weights(entry)))
         & (seeds["size"] == int(entry["size"])) & (seeds["status"] == "ok"))
    return seeds[m]


def representative_seed(seeds: pd.DataFrame) -> pd.Series | None:
    """The entry's seed with the best validation AUC: one real model, picked on validation."""
    if seeds.empty:
        return None
    return seeds.loc[pd.to_numeric(seeds["val_auc"]).idxmax()]


# --- scores -> curves and calibration ----------------------------------------------------------

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


# --- critical difference ------------------------------------------------------------------------

def cd_table(board: pd.DataFrame, metric: str = "auc") -> pd.DataFrame:
    """Datasets x competitors (test `metric`): our entries present on every dataset (seed
    means) and every published method that has a number for every dataset of the run."""
    b = board[board["n_seeds"] > 0]
    if b.empty:
        return pd.DataFrame()
    ours = b.assign(entry=[_label(r, board) for _, r in b.iterrows()]).pivot_table(
        index="dataset", columns="entry", values=f"test_{metric}_mean", aggfunc="first")
    pub = load_published()
    rows = []
    for flag, g in b.groupby("dataset"):
        cand, _, _ = comparable_baselines(pub, flag, int(g["size"].min()),
                                          all(official_row(r) for r in g.itertuples()))
        rows += [{"dataset": flag, "method": m, "v": v}
                 for m, v in zip(cand["method"], cand[metric], strict=True)]
    published = (pd.DataFrame(rows).pivot_table(index="dataset", columns="method", values="v",
                                                aggfunc="first")
                 if rows else pd.DataFrame(index=ours.index))
    table = pd.concat([ours, published.add_suffix(" †")], axis=1)
    return table.dropna(axis=1, how="any")


def mean_ranks(table: pd.DataFrame) -> pd.Series:
    """Rank competitors within each dataset (1 = best, ties share the average rank), then
    average over datasets; best first."""
    from scipy.stats import rankdata

    ranks = np.vstack([rankdata(-row.to_numpy(float)) for _, row in table.iterrows()])
    return pd.Series(ranks.mean(axis=0), index=table.columns).sort_values(kind="stable")


def friedman_nemenyi(table: pd.DataFrame, alpha: float = 0.05) -> dict:
    """Friedman test over the datasets x competitors table, and the Nemenyi critical difference
    (Demsar 2006): two mean ranks further apart than `cd` differ at level alpha."""
    from scipy.stats import friedmanchisquare, studentized_range

    n, k = table.shape
    p = float("nan")
    if k >= 3 and n >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(friedmanchisquare(*[table[c].to_numpy(float) for c in table]).pvalue)
    q = studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2) if k >= 2 else float("nan")
    cd = float(q * math.sqrt(k * (k + 1) / (6.0 * n))) if n else float("nan")
    return {"n_datasets": n, "k": k, "friedman_p": p, "cd": cd, "alpha": alpha,
            "ranks": mean_ranks(table)}


def _cliques(ranks: pd.Series, cd: float) -> list[tuple[float, float]]:
    """Maximal runs of competitors whose mean ranks lie within cd of each other."""
    r = ranks.to_numpy()
    spans = []
    for i in range(len(r)):
        j = max(k for k in range(i, len(r)) if r[k] - r[i] < cd)
        if j > i and not any(a <= i and j <= b for a, b in spans):
            spans.append((i, j))
    return [(r[a], r[b]) for a, b in spans]


def fig_critical_difference(results: dict[str, dict], path: Path) -> Path:
    """Demsar's diagram per metric: mean rank axis (1 = best on the left), each competitor a
    tick, thick bars join those the Nemenyi test cannot tell apart."""
    fig, axes = plt.subplots(len(results), 1, figsize=(11, 1.9 + 0.42 * max(
        len(r["ranks"]) for r in results.values()) * len(results) / 1.2), layout="constrained",
        squeeze=False)
    for ax, (metric, res) in zip(axes[:, 0], results.items(), strict=True):
        ranks, k, cd = res["ranks"], res["k"], res["cd"]
        ax.set_xlim(1 - 3.2, k + 3.2)  # room for the names beyond both ends of the axis
        n = len(ranks)
        half = math.ceil(n / 2)
        ax.set_ylim(-(half + 1.2), 1.4)
        ax.hlines(0, 1, k, color="k", lw=1)
        for t in range(1, k + 1):
            ax.vlines(t, 0, 0.12, color="k", lw=1)
            ax.text(t, 0.22, str(t), ha="center", va="bottom", fontsize=8)
        for i, (name, r) in enumerate(ranks.items()):
            left = i < half
            y = -(i + 0.6) if left else -(n - i - 1 + 0.6)
            x_end = 1 - 0.1 if left else k + 0.1
            ax.plot([r, r, x_end], [0, y, y], color="C0" if "†" not in name else "0.45",
                    lw=0.9)
            ax.text(x_end - 0.05 if left else x_end + 0.05, y,
                    f"{name} ({r:.2f})" if left else f"({r:.2f}) {name}",
                    ha="right" if left else "left", va="center", fontsize=8,
                    color="C0" if "†" not in name else "0.3")
        for j, (a, b) in enumerate(_cliques(ranks, cd)):
            ax.hlines(-0.25 - 0.18 * j, a - 0.03, b + 0.03, color="C3", lw=3)
        if np.isfinite(cd) and cd < k:
            ax.hlines(1.0, 1, 1 + cd, color="k", lw=1.5)
            ax.text(1 + cd / 2, 1.1, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
        ax.axis("off")
        p = res["friedman_p"]
        ax.set_title(f"test {metric.upper()}: mean rank over {res['n_datasets']} datasets "
                     f"(Friedman p = {p:.3g}; Nemenyi α = {res['alpha']})"
                     if np.isfinite(p) else f"test {metric.upper()}: mean rank over "
                     f"{res['n_datasets']} datasets", fontsize=9)
    return _save(fig, path)


def _across_md(board: pd.DataFrame, figs: Path, rel: str) -> list[str]:
    if any(official_row(r) for r in board.itertuples()):
        out = ["## Across datasets", "", *format_summary(summarize(board)).splitlines(), ""]
    else:
        out = ["## Across datasets", "", "_No wins/ties/losses against the published methods: "
               "the run's files are not the official MedMNIST release._", ""]
    results = {}
    for m in ("auc", "acc"):
        table = cd_table(board, m)
        if table.shape[0] >= 2 and table.shape[1] >= 2:
            results[m] = friedman_nemenyi(table)
    if not results:
        return [*out, "_A critical-difference diagram needs at least two datasets and two "
                      "competitors with numbers on all of them._", ""]
    png = fig_critical_difference(results, figs / "critical_difference.png")
    res = results.get("auc") or next(iter(results.values()))
    out += ["Critical difference: competitors ranked within each dataset (1 = best), mean rank "
            "over datasets; our entries beside every published method (†) that reports all "
            "datasets of this run. Bars join competitors the Nemenyi test cannot separate at "
            f"α = {res['alpha']}.", "", f"![critical difference]({rel}/{png.name})", "",
            "| competitor | " + " | ".join(f"mean rank ({m.upper()})" for m in results) + " |",
            "|---|" + "---|" * len(results)]
    names = list(res["ranks"].index)
    for name in names:
        out.append(f"| {name} | " + " | ".join(f"{r['ranks'].get(name, float('nan')):.2f}"
                                               for r in results.values()) + " |")
    out += ["", "; ".join(f"{m.upper()}: Friedman p = {r['friedman_p']:.3g}, CD = {r['cd']:.2f}"
                          f" over {r['n_datasets']} datasets" for m, r in results.items())
            + (". With this few datasets no difference of mean ranks can reach significance."
               if res["cd"] >= res["k"] - 1 else "."), ""]
    return out


# --- per-dataset figures -------------------------------------------------------------------------

def fig_vs_published(board: pd.DataFrame, flag: str, path: Path) -> Path:
    """Ours (mean, 95% CI bars) next to every comparable published method, per metric."""
    rows = board[board["dataset"] == flag]
    pub = load_published()
    official = all(official_row(r) for r in rows.itertuples())
    cands = [comparable_baselines(pub, flag, s, official) for s in sorted(rows["size"].unique())]
    cand = pd.concat([c for c, _, _ in cands]).drop_duplicates("method")
    ref = cands[0][1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for ax, m in zip(axes, ("acc", "auc"), strict=True):
        ours = [_label(r, board) for _, r in rows.iterrows()]
        mean = rows[f"test_{m}_mean"].to_numpy(float)
        err = np.vstack([mean - rows[f"{m}_lo"], rows[f"{m}_hi"] - mean]).astype(float)
        err = np.clip(np.nan_to_num(err), 0, None)  # no CI: no bar
        ax.errorbar(range(len(ours)), mean, yerr=err, fmt="o", color="C0", capsize=4,
                    label="ours (mean, 95% CI)")
        xs = range(len(ours), len(ours) + len(cand))
        ax.scatter(xs, cand[m], marker="D", color="0.45", label="published")
        ax.axvline(len(ours) - 0.5, color="0.7", lw=0.8, ls=":")
        ref_val = cand.loc[cand["method"] == ref, m]
        if len(ref_val):
            ax.axhline(float(ref_val.iloc[0]), ls="--", color="C3", lw=1, label=ref)
        ax.set_xticks(range(len(ours) + len(cand)), ours + list(cand["method"]), rotation=35,
                      ha="right")
        ax.set_ylabel(f"test {m.upper()}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"{flag}: ours vs published MedMNIST v2" if official else
                 f"{flag}: not the official files, so no published numbers beside ours")
    return _save(fig, path)


def fig_seed_strips(board: pd.DataFrame, seeds: pd.DataFrame, flag: str,
                    path: Path) -> Path | None:
    """Every final seed as a dot beside the published reference and best values: the spread
    that 'mean ± std' summarises, and whether single seeds cross the published line."""
    here = board[(board["dataset"] == flag) & (board["n_seeds"] > 0)]
    rows = here[[not is_ensemble(r) for _, r in here.iterrows()]]
    ens = {(r["run"], base_family(r)): r for _, r in here.iterrows() if is_ensemble(r)}
    if rows.empty:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 2.2 + 1.3 * len(rows)) * 2, 3.8),
                             layout="constrained")
    rng = np.random.default_rng(0)
    for ax, m in zip(axes, ("acc", "auc"), strict=True):
        names = []
        for x, (_, r) in enumerate(rows.iterrows()):
            vals = pd.to_numeric(entry_seeds(seeds, r)[f"test_{m}"]).to_numpy(float)
            ax.scatter(x + rng.uniform(-0.12, 0.12, len(vals)), vals, s=22, color="C0",
                       alpha=0.8, zorder=3, label="one seed" if x == 0 else None)
            ax.hlines(r[f"test_{m}_mean"], x - 0.28, x + 0.28, color="C0", lw=2,
                      label="seed mean" if x == 0 else None)
            e = ens.get((r["run"], r["family"]))
            if e is not None:
                ax.scatter([x + 0.34], [e[f"test_{m}_mean"]], marker="*", s=90, color="C1",
                           zorder=4, label="seed ensemble" if x == 0 else None)
            names.append(f"{_label(r, board)}\n({len(vals)} seeds)")
        r0 = rows.iloc[0]
        if pd.notna(r0[f"ref_{m}"]):
            ax.axhline(r0[f"ref_{m}"], ls="--", color="C3", lw=1,
                       label=f"{r0['ref_method']} {r0[f'ref_{m}']:.3f}")
        if pd.notna(r0[f"best_{m}"]) and r0[f"best_{m}_method"] != r0["ref_method"]:
            ax.axhline(r0[f"best_{m}"], ls=":", color="0.3", lw=1.2,
                       label=f"best published: {r0[f'best_{m}_method']} {r0[f'best_{m}']:.3f}")
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylabel(f"test {m.upper()}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"{flag}: every final seed vs the published numbers")
    return _save(fig, path)


def fig_roc_pr(curves: list[dict], names: list[str], title: str, path: Path) -> Path:
    """ROC and precision-recall per class (one-vs-rest), scikit-learn's points."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    for i, c in enumerate(curves):
        name = _short(names[c["class"]], c["class"]) if c["class"] < len(names) else c["class"]
        a.plot(c["fpr"], c["tpr"], color=f"C{i % 10}", lw=1.4,
               label=f"{name} (AUC {c['auc']:.3f})")
        b.step(c["recall"], c["precision"], where="post", color=f"C{i % 10}", lw=1.4,
               label=f"{name} (AP {c['ap']:.3f})")
        b.axhline(c["prevalence"], color=f"C{i % 10}", lw=0.7, ls=":")
    a.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
    a.set(xlabel="false positive rate", ylabel="true positive rate",
          title=f"ROC (mean of per-class AUC {np.mean([c['auc'] for c in curves]):.3f})")
    b.set(xlabel="recall", ylabel="precision", ylim=(0, 1.02),
          title="precision-recall (dotted: class prevalence = chance)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is a else "lower left")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def fig_calibration(bins: pd.DataFrame, ece: float, multi_label: bool, title: str,
                    path: Path) -> Path:
    """Reliability diagram (accuracy vs confidence per bin) with the ECE, and how many test
    images fall in each bin (an empty-looking bin is a bin with few images)."""
    fig, (a, b) = plt.subplots(2, 1, figsize=(5.2, 5.6), height_ratios=(3, 1), sharex=True,
                               layout="constrained")
    a.plot([0, 1], [0, 1], color="0.6", ls="--", lw=0.8, label="perfectly calibrated")
    a.plot(bins["confidence"], bins["accuracy"], marker="o", color="C0",
           label=f"ours (ECE {ece:.3f})")
    a.vlines(bins["confidence"], bins["confidence"], bins["accuracy"], color="C3", lw=1,
             alpha=0.7, label="gap")
    what = "label probability" if multi_label else "top-label confidence"
    a.set(ylabel="fraction positive" if multi_label else "accuracy", xlim=(0, 1), ylim=(0, 1.02),
          title=title)
    a.grid(alpha=0.3)
    a.legend(fontsize=8, loc="upper left")
    b.bar(bins["confidence"], bins["count"], width=1 / N_BINS * 0.8, color="0.55")
    b.set(xlabel=what, ylabel="images")
    b.grid(alpha=0.3)
    return _save(fig, path)


def fig_confusion(cm: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    """Counts annotated; colour is the row-normalised rate so small classes stay visible."""
    rate = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(names)
    fig, ax = plt.subplots(figsize=(1.6 + 0.75 * max(n, 4), 1.0 + 0.7 * max(n, 4)),
                           layout="constrained")
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=9,
                    color="white" if rate[i, j] > 0.6 else "black")
    short = [_short(s, i) for i, s in enumerate(names)]
    ax.set_xticks(range(n), short, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n), short, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="row rate (recall)")
    return _save(fig, path)


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


def _class_mix_md(mix: pd.DataFrame) -> list[str]:
    """The class-mix table and one sentence on where the predictions drift."""
    wide = mix.pivot(index=["class", "name"], columns="split",
                     values=["true_share", "predicted_share"])
    out = ["Validation vs test: each class's share of the labels and of the predictions.", "",
           "| class | name | val true | val predicted | test true | test predicted |",
           "|---|---|---|---|---|---|"]
    for (c, name), r in wide.iterrows():
        out.append(f"| {c} | {name} | {r[('true_share', 'val')]:.3f} | "
                   f"{r[('predicted_share', 'val')]:.3f} | {r[('true_share', 'test')]:.3f} | "
                   f"{r[('predicted_share', 'test')]:.3f} |")
    drift = (mix["predicted_share"] - mix["true_share"]).abs()
    worst = {split: mix.loc[drift[mix["split"] == split].idxmax()] for split in ("val", "test")}
    acc = mix.groupby("split")["acc"].first()
    t = worst["test"]
    gap_test = abs(t["predicted_share"] - t["true_share"])
    gap_val = abs(worst["val"]["predicted_share"] - worst["val"]["true_share"])
    line = (f"ACC {acc['val']:.3f} on validation, {acc['test']:.3f} on test. Largest gap between "
            f"a class's predicted and true share: {gap_test:.3f} on test (class {t['class']}, "
            f"{t['name']}: predicted {t['predicted_share']:.3f}, true {t['true_share']:.3f}), "
            f"{gap_val:.3f} on validation.")
    if gap_test > max(0.05, 3 * gap_val):
        line += (" The predictions follow validation's class mix but not test's: the test split "
                 "differs from validation (its class mix or its images), a shift that no choice "
                 "made on validation can see.")
    return [*out, "", line, ""]


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


def _as_picture(img: np.ndarray) -> np.ndarray:
    """A 2D picture of one sample: grey or RGB as stored; a 3D volume's middle slice."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] not in (1, 3):  # (D, H, W) volume
        return img[img.shape[0] // 2]
    return img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img


def fig_misclassified(images: np.ndarray, y: np.ndarray, s: np.ndarray, task: str,
                      names: list[str], title: str, path: Path) -> Path:
    """A row per true class: its most confidently misclassified test images, captioned with the
    predicted class and its probability."""
    picks = most_confident_errors(y, s, task)
    pred = metrics.predicted_labels(s, task).reshape(-1)
    conf, _ = confidence_and_correct(y, s, task)
    classes = sorted(picks)
    fig, axes = plt.subplots(len(classes), N_WRONG, figsize=(1.7 * N_WRONG + 1.6,
                                                             1.75 * len(classes)),
                             squeeze=False, layout="constrained")
    for row, c in zip(axes, classes, strict=True):
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if j < len(picks[c]):
                i = picks[c][j]
                pic = _as_picture(images[i])
                ax.imshow(pic, cmap="gray" if pic.ndim == 2 else None, vmin=0, vmax=255)
                ax.set_title(f"→ {_short(names[pred[i]], int(pred[i]), 10)}\np={conf[i]:.2f}",
                             fontsize=7)
            elif j == 0:
                ax.text(0.5, 0.5, "no errors", ha="center", va="center", fontsize=8)
        row[0].set_ylabel(_short(names[c], c, 12), fontsize=8)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _data_dir(paths: list[Path], data_dir: str | Path | None) -> str | Path | None:
    """--data-dir, else the one the run recorded (meta.json `data_dir`, when present), else
    bench.data's default ($MEDMNIST_DATA, ~/.medmnist)."""
    if data_dir is not None:
        return data_dir
    for p in paths:
        recorded = read_meta(p).get("data_dir")
        if recorded:
            return recorded if Path(recorded).is_absolute() else p / recorded
    return None


def _test_images(flag: str, size: int, labels: np.ndarray,
                 data_dir: str | Path | None) -> tuple[np.ndarray | None, str]:
    """The test images the scores belong to, or None and why not (no file, other labels)."""
    from bench.data import load_arrays

    try:
        arrays = load_arrays(flag, size, data_dir, verify_md5=False, allow_download=False)
    except UserError as e:
        return None, f"data file not found ({e})"
    if arrays["test_labels"].reshape(-1).tolist() != np.asarray(labels).reshape(-1).tolist():
        return None, "the data file's test labels differ from the ones the model was scored on"
    return arrays["test_images"], ""


def _dataset_md(board: pd.DataFrame, seeds: pd.DataFrame, entry: pd.Series, figs: Path,
                rel: str, data_dir: str | Path | None) -> list[str]:
    """Seed spread, ROC/PR, calibration, confusion, per-class table and misclassified images
    of one dataset's picked entry."""
    import medmnist

    flag = entry["dataset"]
    info = medmnist.INFO[flag]
    task, names = info["task"], _class_names(flag)
    out: list[str] = []
    png = fig_vs_published(board, flag, figs / f"{flag}_vs_published.png")
    out += [f"![{flag} vs published]({rel}/{png.name})", ""]
    strips = fig_seed_strips(board, seeds, flag, figs / f"{flag}_seeds.png")
    if strips:
        out += [f"![{flag} seeds]({rel}/{strips.name})", ""]
    mine = entry_seeds(seeds, entry)
    best = representative_seed(mine)
    entry_name = _label(entry, board)
    head = (f"**Picked entry: {entry_name}** (chosen on validation only; val AUC "
            f"{entry['val_auc_mean']:.3f}). ")
    if best is None:
        return [*out, head, ""]
    if is_ensemble(entry):
        sc, size = entry_scores(mine, entry), int(entry["size"])
        how = ("averaged" if len(entry_weights(entry)) == 1
               else "averaged per family, families mixed by validation-fitted weights")
        if entry_tta(entry):
            how += ", each over the image and its left-right mirror"
        who = f"{entry_name} ({len(mine)} seeds' probabilities {how})"
        out += [head + "The figures below show that ensemble: test ACC "
                f"{entry['test_acc_mean']:.3f}, AUC {entry['test_auc_mean']:.3f}.", ""]
    else:
        sc, size = load_scores(best["root"], best["run_dir"]), int(best["size"])
        who = f"{entry_name} seed {best['seed']}"
        out += [head + f"The figures below show its seed with the best validation AUC: seed "
                f"{best['seed']}, test ACC {best['test_acc']:.3f}, AUC {best['test_auc']:.3f}.",
                ""]
    if sc is None:
        return [*out, "_No scores.npz for this entry: no curves or confusion matrix._", ""]
    y, s = sc["test_labels"], sc["test_scores"]
    curves = roc_pr_curves(y, s, task)
    if curves:
        png = fig_roc_pr(curves, names, f"{flag} test set, {who}", figs / f"{flag}_roc_pr.png")
        out += [f"![{flag} ROC and PR]({rel}/{png.name})", ""]
    conf, correct = confidence_and_correct(y, s, task)
    ece, bins = expected_calibration_error(correct, conf)
    png = fig_calibration(bins, ece, task == metrics.MULTI_LABEL, f"{flag}: {who}",
                          figs / f"{flag}_calibration.png")
    eces = []
    for _, r in mine.iterrows():
        other = load_scores(r["root"], r["run_dir"])
        if other is not None:
            c2, k2 = confidence_and_correct(other["test_labels"], other["test_scores"], task)
            eces.append(expected_calibration_error(k2, c2)[0])
    spread = (f" Single seeds of this family: ECE {np.mean(eces):.3f} ± "
              f"{np.std(eces, ddof=1):.3f} over {len(eces)}." if len(eces) > 1 else "")
    out += [f"![{flag} calibration]({rel}/{png.name})", "",
            f"Calibration ({N_BINS} equal-width bins): ECE {ece:.3f} for {who}.{spread}", ""]
    if task != metrics.MULTI_LABEL:
        cm = metrics.confusion(y, s, task, len(names))
        png = fig_confusion(cm, names, f"{flag} test set\n{who}", figs / f"{flag}_confusion.png")
        out += [f"![{flag} confusion matrix]({rel}/{png.name})", ""]
    out += ["| class | name | precision | recall | F1 | support |", "|---|---|---|---|---|---|"]
    out += [f"| {c['class']} | {c['name']} | {c['precision']:.3f} | {c['recall']:.3f} | "
            f"{c['f1']:.3f} | {c['support']} |"
            for c in metrics.class_report(y, s, task, info["label"])]
    out.append("")
    if task != metrics.MULTI_LABEL:
        out += _class_mix_md(class_mix(sc, task, names))
    if task != metrics.MULTI_LABEL:
        images, why = _test_images(flag, size, y, data_dir)
        if images is None:
            out += [f"_Misclassified images skipped: {why}. Pass `--data-dir` to "
                    "`medbench report`._", ""]
        else:
            png = fig_misclassified(images, y, s, task, names,
                                    f"{flag}: most confident test errors per true class, {who}",
                                    figs / f"{flag}_misclassified.png")
            out += [f"![{flag} misclassified]({rel}/{png.name})", ""]
    return out


# --- the search ----------------------------------------------------------------------------------

def _values(cell) -> list[dict]:
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    return json.loads(cell) if isinstance(cell, str) else list(cell)


def best_so_far(trials: pd.DataFrame) -> np.ndarray:
    """Best validation AUC after each finished trial, in finish order (failed trials keep the
    previous best)."""
    vals = pd.to_numeric(finish_order(trials)["best_val_auc"], errors="coerce")
    return vals.cummax().ffill().to_numpy(float)


def fig_trials_progress(trials: pd.DataFrame, path: Path) -> Path | None:
    """Best val AUC so far vs trials finished, in the order they finished, per family; each
    trial's own best val AUC as a faint dot."""
    if trials.empty:
        return None
    flags = sorted(trials["dataset"].unique())
    fig, axes = _grid(len(flags))
    order = "finish order" if has_finish_times(trials) else "row order (no finish times)"
    for ax, flag in zip(axes, flags, strict=True):
        for i, ((run, family), g) in enumerate(trials[trials["dataset"] == flag].groupby(
                ["run", "family"])):
            best = best_so_far(g)
            x = np.arange(1, len(best) + 1)
            name = family if trials["run"].nunique() == 1 else f"{run}: {family}"
            ax.step(x, best, where="post", color=f"C{i % 10}", label=name)
            own = pd.to_numeric(finish_order(g)["best_val_auc"], errors="coerce")
            ax.scatter(x, own, s=10, color=f"C{i % 10}", alpha=0.35)
        ax.set(title=flag, xlabel=f"trials finished ({order})", ylabel="best val AUC so far")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    return _save(fig, path)


def fig_learning_curves(trials: pd.DataFrame, flag: str, path: Path,
                        run_dirs: dict[str, Path] | None = None) -> Path | None:
    """Val AUC per epoch of every search trial, one panel per family: the ones ASHA stopped end
    early (grey, ×), full-budget ones in colour, the best trial bold."""
    t = trials[(trials["dataset"] == flag) & (trials["status"] == "ok")]
    if t.empty:
        return None
    groups = list(t.groupby(["run", "family"], sort=True))
    fig, axes = _grid(len(groups), w=4.4, h=3.2)
    for ax, ((run, family), g) in zip(axes, groups, strict=True):
        root = (run_dirs or {}).get(run)
        default = max_epochs_of(root, family, g) if root else int(g["epochs_run"].max())
        best_id = g.loc[pd.to_numeric(g["best_val_auc"]).idxmax(), "trial_id"]
        n_stopped = 0
        for r in g.itertuples():
            hist = pd.DataFrame(_values(r.history))
            if not {"epoch", "val_auc"} <= set(hist.columns):
                continue
            stopped = int(r.epochs_run or 0) < trial_budget(r.config, default)
            n_stopped += stopped
            if r.trial_id == best_id:
                ax.plot(hist["epoch"], hist["val_auc"], color="k", lw=2.2, zorder=4,
                        label=f"best trial ({r.best_val_auc:.3f})")
            elif stopped:
                ax.plot(hist["epoch"], hist["val_auc"], color="0.6", lw=0.9, alpha=0.8)
                ax.plot(hist["epoch"].iloc[-1], hist["val_auc"].iloc[-1], "x", color="0.4",
                        ms=5)
            else:
                ax.plot(hist["epoch"], hist["val_auc"], color="C0", lw=1.1, alpha=0.8)
        ax.plot([], [], color="C0", label=f"full budget ({len(g) - n_stopped})")
        ax.plot([], [], color="0.6", marker="x", label=f"stopped early ({n_stopped})")
        name = family if trials["run"].nunique() == 1 else f"{run}: {family}"
        ax.set(xlabel="epoch", ylabel="val AUC", title=f"{flag} / {name}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")  # "best" searches every line: slow
    return _save(fig, path)


def fig_importance(panels: list[tuple[str, dict[str, float], str]], flag: str,
                   path: Path) -> Path | None:
    """fANOVA importance of each searched hyperparameter, one panel per family."""
    if not any(imp for _, imp, _ in panels):
        return None
    fig, axes = _grid(len(panels), w=4.8, h=3.6)
    for ax, (name, imp, note) in zip(axes, panels, strict=True):
        if not imp:
            ax.text(0.5, 0.5, note or "too few trials", ha="center", va="center", fontsize=8,
                    wrap=True)
            ax.set_axis_off()
            ax.set_title(name, fontsize=9)
            continue
        items = sorted(imp.items(), key=lambda kv: kv[1])[-10:]
        ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
        ax.set(xlabel="importance (fANOVA, sums to 1)", xlim=(0, 1))
        ax.set_title(f"{name}\n{note}", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"{flag}: which hyperparameters mattered", fontsize=10)
    return _save(fig, path)


def fig_parallel(panels: list[tuple[str, object, list[str]]], flag: str,
                 path: Path) -> Path | None:
    """Parallel coordinates of each family's trials (most important parameters, then the
    value), coloured by val AUC at the equal budget."""
    panels = [p for p in panels if p[1] is not None and p[2]]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.3 * len(panels)), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("viridis")
    for ax, (name, study, params) in zip(axes[:, 0], panels, strict=True):
        trials = study.get_trials(deepcopy=False)
        vals = np.array([t.value for t in trials], float)
        lo, hi = np.nanmin(vals), np.nanmax(vals)
        axes_map = [(p, *numeric_axis(trials[0].distributions[p])) for p in params]
        x = np.arange(len(params) + 1)
        for t, v in sorted(zip(trials, vals, strict=True), key=lambda tv: tv[1]):
            ys = [f(t.params[p]) if p in t.params else np.nan for p, f, _ in axes_map]
            ys.append((v - lo) / ((hi - lo) or 1.0))
            color = cmap((v - lo) / ((hi - lo) or 1.0))
            ax.plot(x, ys, color=color, lw=1.2, alpha=0.85)
        for i, (_name, _, ticks) in enumerate(axes_map):
            ax.axvline(i, color="0.5", lw=0.8)
            for pos, text in ticks:
                ax.text(i + 0.03, pos, text, fontsize=6.5, va="center", color="0.25")
        ax.axvline(len(params), color="0.5", lw=0.8)
        ax.text(len(params) + 0.03, 0, f"{lo:.3f}", fontsize=6.5, va="center")
        ax.text(len(params) + 0.03, 1, f"{hi:.3f}", fontsize=6.5, va="center")
        ax.set_xticks(x, [*params, "val AUC"], rotation=20, ha="right", fontsize=8)
        ax.set_yticks([])
        ax.set_xlim(-0.2, len(params) + 0.5)
        ax.set_title(name, fontsize=9)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
    fig.suptitle(f"{flag}: hyperparameters of every trial (colour: val AUC)", fontsize=10)
    return _save(fig, path)


def _search_md(labels: dict[str, Path], trials: pd.DataFrame, flag: str,
               studies: dict[str, dict], figs: Path, rel: str) -> list[str]:
    out = [f"### {flag}", ""]
    curves = fig_learning_curves(trials, flag, figs / f"{flag}_learning_curves.png", labels)
    if curves:
        out += [f"![{flag} learning curves]({rel}/{curves.name})", ""]
    imp_panels, par_panels, notes = [], [], []
    for run, by_name in studies.items():
        for name, study in sorted(by_name.items()):
            d, _, family = name.partition("__")
            if d != flag:
                continue
            label = family if len(studies) == 1 else f"{run}: {family}"
            eq = equal_budget_study(study)
            if eq is None:
                imp_panels.append((label, {}, "fewer than 2 finished trials"))
                continue
            copy, rung = eq
            try:
                imp, why = param_importances(copy), "too few trials or nothing varied"
            except (ValueError, RuntimeError) as e:  # fANOVA on degenerate data
                imp, why = {}, f"importance not computable ({e})"
            n = len(copy.trials)
            note = f"{n} trials, best val AUC by epoch {rung} (all reached it)"
            imp_panels.append((label, imp, note if imp else why))
            params = [k for k, _ in sorted(imp.items(), key=lambda kv: -kv[1])][:8]
            par_panels.append((label, copy, params))
            notes.append(f"{label}: {n} trials compared at epoch {rung}")
    png = fig_importance(imp_panels, flag, figs / f"{flag}_importance.png")
    if png:
        out += [f"![{flag} hyperparameter importance]({rel}/{png.name})", ""]
    png = fig_parallel(par_panels, flag, figs / f"{flag}_parallel.png")
    if png:
        out += [f"![{flag} parallel coordinates]({rel}/{png.name})", ""]
    if notes:
        out += ["Importance (Optuna's fANOVA evaluator) and parallel coordinates compare every "
                "finished trial at the epoch all of them reached (ASHA's first rung; the full "
                "budget without ASHA), so stopped trials count at the budget they got: "
                + "; ".join(notes) + ". With a handful of trials per family these importances "
                "are rough.", ""]
    return out


def _seconds(x: float, _pos=None) -> str:
    """Compact seconds for log-axis ticks: 300, 1k, 20k."""
    if x >= 1000:
        return f"{x / 1000:g}k"
    return f"{x:g}"


def fig_cost(board: pd.DataFrame, path: Path) -> Path | None:
    """Test ACC vs device-seconds (search + final) per dataset, with the Pareto front. Datasets
    with a single entry have no trade-off to show and are left out (the caller says so)."""
    flags = [f for f, g in board.groupby("dataset") if g["test_acc_mean"].notna().sum() > 1]
    if not flags:
        return None
    labels = sorted({_label(r, board) for _, r in board.iterrows()})
    color = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}  # same entry, same colour
    fig, axes = _grid(len(flags))
    for ax, flag in zip(axes, flags, strict=True):
        b = board[board["dataset"] == flag].sort_values(["device_s", "test_acc_mean"],
                                                         ascending=[True, False])
        for _, r in b.iterrows():
            lo, hi = r["acc_lo"], r["acc_hi"]
            yerr = None if pd.isna(lo) else np.clip([[r["test_acc_mean"] - lo],
                                                     [hi - r["test_acc_mean"]]], 0, None)
            ax.errorbar(r["device_s"], r["test_acc_mean"], yerr=yerr, fmt="o", capsize=3,
                        color=color[_label(r, board)], label=_label(r, board))
        # on the front: no entry at most as costly is at least as accurate
        v = b.dropna(subset=["test_acc_mean"])
        front = v[v["test_acc_mean"] > v["test_acc_mean"].cummax().shift(fill_value=-1.0)]
        ax.step(front["device_s"], front["test_acc_mean"], where="post", color="0.3", lw=1,
                ls="--", marker="o", mfc="none", ms=12, label="Pareto front")
        if b["device_s"].max() > 10 * max(b["device_s"].min(), 1e-9):
            ax.set_xscale("log")
            # labels only at 1-2-5 steps, at most ~5: the default also labels minor ticks
            # when the axis spans about a decade, and they overlap
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=6))
            ax.xaxis.set_major_formatter(FuncFormatter(_seconds))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.xaxis.set_major_formatter(FuncFormatter(_seconds))
        ax.set(title=flag, xlabel="device-seconds (search + final)", ylabel="test ACC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    return _save(fig, path)


def _cost_md(board: pd.DataFrame, figs: Path, rel: str) -> list[str]:
    out = ["### Cost", ""]
    png = fig_cost(board, figs / "cost.png")
    if png:
        out += [f"![accuracy vs cost]({rel}/{png.name})", ""]
    single = [(f, g.iloc[0]) for f, g in board.groupby("dataset")
              if g["test_acc_mean"].notna().sum() <= 1 and len(g)]
    if single:
        out += ["One entry only (no cost trade-off to plot): " + "; ".join(
            f"{f}: {_label(r, board)}, {r['device_s']:.0f} device-s for test ACC "
            f"{r['test_acc_mean']:.3f}" for f, r in single) + ".", ""]
    return out


# --- text sections -------------------------------------------------------------------------------

def _verdicts(r: pd.Series, which: str) -> str:
    cells = []
    for m in ("acc", "auc"):
        v = r[f"verdict_{m}_vs_{which}"]
        val = r[f"ref_{m}"] if which == "resnet18" else r[f"best_{m}"]
        if pd.isna(val):
            cells.append(f"{m.upper()} -")
            continue
        v = f"**{v}**" if v in ("above", "below") else v
        # the best published ACC and AUC can come from different methods: name each one
        who = f" ({r[f'best_{m}_method']} {val:.3f})" if which == "best" else ""
        cells.append(f"{m.upper()}{who} {r[f'delta_{m}_vs_{which}']:+.3f} {v}")
    return " · ".join(cells)


def _headline_md(board: pd.DataFrame, picked: pd.DataFrame) -> list[str]:
    """One row per dataset: the picked entry and what it says against the published numbers."""
    if picked.empty:
        return ["_No successful final runs: nothing to report._", ""]
    out = ["Per dataset, the entry the run picks by **validation** score ((AUC + ACC) / 2 of "
           "an ensemble's averaged probabilities, or over a lone model's seeds; a family's "
           "seeds compete as their ensemble; test never chooses), "
           "its test numbers over fresh seeds (mean ± std [95% bootstrap CI]), and the verdict "
           "against the published ResNet-18 reference and the best published method "
           "(difference, then **above**/**below** only when the CI excludes it).", "",
           "| dataset | picked entry | seeds | test ACC | test AUC | vs reference | "
           "vs best published |", "|---|---|---|---|---|---|---|"]
    for _, r in picked.iterrows():
        cells = []
        for m in ("acc", "auc"):
            mean, std, lo, hi = (r[f"test_{m}_mean"], r[f"test_{m}_std"], r[f"{m}_lo"],
                                 r[f"{m}_hi"])
            c = f"{mean:.3f}" + ("" if pd.isna(std) else f" ± {std:.3f}")
            cells.append(c if pd.isna(lo) else f"{c} [{lo:.3f}, {hi:.3f}]")
        versus = ([f"{r['ref_method']}: {_verdicts(r, 'resnet18')}", _verdicts(r, "best")]
                  if official_row(r) else ["not the official files: none", "-"])
        out.append(f"| {r['dataset']} | {_label(r, board)} (val {r['val_score']:.3f}) | "
                   f"{r['n_seeds']} | {cells[0]} | {cells[1]} | {versus[0]} | {versus[1]} |")
    return [*out, ""]


def _versus_published_md(picked: pd.DataFrame) -> list[str]:
    """Per dataset on the official files: the picked entry's cost and its test numbers against
    every published method of a comparable size, each difference with the CI rule's verdict
    (the headline names only the reference and the best)."""
    published, out = load_published(), []
    for _, r in picked.iterrows():
        cand, _, _ = comparable_baselines(published, r["dataset"], int(r["size"]),
                                          official_row(r))
        if cand.empty:
            continue
        wall = r.get("run_wall_s")
        out += [f"**{r['dataset']}**: {r['family']}; {int(r['trials'])} search trials, "
                f"{r['device_s']:.0f} device-s" + ("" if pd.isna(wall) else
                                                   f"; the whole run {wall / 60:.1f} min wall"),
                "", "| published method | ACC | AUC | ACC: ours − published | "
                "AUC: ours − published |", "|---|---|---|---|---|"]
        for _, p in cand.iterrows():
            cells = []
            for m in ("acc", "auc"):
                v = verdict(r[f"{m}_lo"], r[f"{m}_hi"], float(p[m]))
                v = f"**{v}**" if v in ("above", "below") else v
                cells.append(f"{r[f'test_{m}_mean'] - float(p[m]):+.3f} {v}")
            out.append(f"| {p['method']} | {float(p['acc']):.3f} | {float(p['auc']):.3f} | "
                       f"{cells[0]} | {cells[1]} |")
        out.append("")
    if not out:
        return []
    return ["### The picked entry against every published method", "",
            "Ours minus the published mean; **above**/**below** only when our 95% CI excludes "
            "the published number.", "", *out]


def _runs_md(paths: list[Path]) -> list[str]:
    out = ["## Runs", ""]
    for p in paths:
        meta = read_meta(p)
        out += [f"### {p}", ""]
        for k, v in meta.items():  # nested values (hardware, cluster) as compact JSON
            text = json.dumps(v, default=str) if isinstance(v, dict | list) else str(v)
            out.append(f"- {k}: `{text[:300]}`")
        if (p / STUDIES_FILE).is_file():
            out.append(f"- search studies: `{p / STUDIES_FILE}` (one Optuna study per "
                       "dataset/family: `optuna-dashboard sqlite:///" f"{p / STUDIES_FILE}`)")
        if (p / "spec.yaml").is_file():
            out += ["", "<details><summary>spec.yaml</summary>", "", "```yaml",
                    (p / "spec.yaml").read_text().rstrip(), "```", "", "</details>"]
        out.append("")
    return out


def _studies(paths: list[Path], labels: list[str]) -> dict[str, dict]:
    """(Re)build each run's studies.db from its trials.parquet and load it: run label -> name ->
    study. A run without search trials has none."""
    out: dict[str, dict] = {}
    for p, label in zip(paths, labels, strict=True):
        db = build_studies(p)
        if db is not None:
            out[label] = load_studies(db)
    return out


def _audit_md(seeds: pd.DataFrame, figs: Path, rel: str,
              data_dir: str | Path | None) -> list[str]:
    """The data-audit section (bench.audit): duplicate counts and example pairs side by side."""
    from bench.audit import report_lines

    runs = sorted({(str(r.root), str(r.dataset), int(r.size)) for r in seeds.itertuples()})
    return report_lines(runs, figs, rel, data_dir)


def _search_section(paths: list[Path], trials: pd.DataFrame, by_label: dict[str, Path],
                    figs: Path, rel: str) -> list[str]:
    """The search part of a report: best-so-far, and per dataset its learning curves,
    hyperparameter importance and parallel coordinates."""
    md = ["## Search", ""]
    progress = fig_trials_progress(trials, figs / "trials_progress.png")
    if progress:
        md += ["Best validation AUC so far as trials finished (dots: each trial's own best).",
               "", f"![best val AUC vs trials]({rel}/{progress.name})", ""]
    studies = _studies(paths, list(by_label)) if not trials.empty else {}
    for flag in sorted(trials["dataset"].unique()) if not trials.empty else []:
        md += _search_md(by_label, trials, flag, studies, figs, rel)
    return md


def write_search_report(paths: list[Path], out_md: Path) -> Path:
    """The report of `medbench search` directories (no final phase): their best trials and the
    search figures. No leaderboard, test metrics or verdicts: there are no fresh-seed runs, and
    the search scored on validation only."""
    trials = load_trials(paths)
    figs = out_md.parent / f"{out_md.stem}_figures"
    figs.mkdir(parents=True, exist_ok=True)
    md = ["# MedMNIST-Bench report (search only)", "", format_best_trials(paths, fmt="md"), "",
          *_search_section(paths, trials, dict(zip(run_labels(paths), paths, strict=True)),
                           figs, figs.name),
          *_runs_md(paths)]
    return write_text(out_md, "\n".join(md).rstrip() + "\n")


def write_report(run_dirs: RunDirs, out_md: Path, n_boot: int = 1000,
                 data_dir: str | Path | None = None, board: pd.DataFrame | None = None) -> Path:
    """Write the markdown report and its figures; returns the markdown path. Also (re)writes
    each run's studies.db. `data_dir` locates the test images for the misclassified figure;
    `board`: the runs' leaderboard when the caller already built it (its bootstrap is the
    expensive part). Search-only directories get a search report (`write_search_report`)."""
    paths, out_md = as_paths(run_dirs), Path(out_md)
    if paths and board is None and all(is_search_only(p) for p in paths):
        return write_search_report(paths, out_md)
    board = build_leaderboard(paths, n_boot=n_boot) if board is None else board
    seeds, trials = load_seeds(paths), load_trials(paths)
    by_label = dict(zip(run_labels(paths), paths, strict=True))  # the leaderboard's labels
    figs = out_md.parent / f"{out_md.stem}_figures"
    figs.mkdir(parents=True, exist_ok=True)
    rel = figs.name
    picked = picked_entries(board)
    data_dir = _data_dir(paths, data_dir)
    md = ["# MedMNIST-Bench report", "",
          "Published numbers: MedMNIST v2 (Yang et al., Scientific Data 10:41, 2023, "
          "doi:10.1038/s41597-022-01721-8).", "",
          "## Results", "", *_headline_md(board, picked), *_versus_published_md(picked),
          "## Leaderboard", "", format_board(board, "md"), *_across_md(board, figs, rel)]
    for _, entry in picked.iterrows():
        md += [f"## {entry['dataset']}", "",
               *_dataset_md(board, seeds, entry, figs, rel, data_dir)]
    md += _search_section(paths, trials, by_label, figs, rel)
    if not board.empty:
        md += _cost_md(board, figs, rel)
    md += _audit_md(seeds, figs, rel, data_dir)
    md += _runs_md(paths)
    return write_text(out_md, "\n".join(md).rstrip() + "\n")

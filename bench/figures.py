"""The report's figures: PNGs drawn from plain data (board rows, arrays, DataFrames).

bench.report decides what to show and computes the numbers; this module only draws. Every
`fig_*` takes its data and a path, writes one PNG atomically and returns the path, or None when
there is nothing to draw (the report then says why in a sentence instead of a blank image).

Rules that keep a figure from saying more than its numbers:
- a metric axis spans at least MIN_SPAN of the metric and includes the published reference
  (`metric_limits`), so a 0.01 gap does not fill the panel and look like a landslide;
- differences from published methods are drawn with our 95% CI and a line at zero
  (`fig_forest`), so "above" is visible only where the interval clears zero;
- no critical-difference diagram over fewer than MIN_CD_DATASETS datasets and no
  hyperparameter-importance plot from fewer than MIN_IMPORTANCE_TRIALS trials: below those,
  ranks and fANOVA importances are mostly noise (bench.report writes the reason in the figure's
  place).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are made on clusters and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

from bench.baselines import load_published  # noqa: E402
from bench.leaderboard import comparable_baselines, official_row, verdict  # noqa: E402
from bench.results import atomic_write  # noqa: E402
from bench.studies import (  # noqa: E402
    finish_order,
    has_finish_times,
    max_epochs_of,
    numeric_axis,
    trial_budget,
)

METRICS = ("acc", "auc")
MIN_SPAN = 0.2  # a metric axis spans at least this much (ACC/AUC units)
MIN_CD_DATASETS = 5  # critical-difference diagrams from this many datasets up
MIN_IMPORTANCE_TRIALS = 20  # hyperparameter importance from this many trials up
TRAINED_KINDS = ("single", "ensemble", "reference")  # board entries with a training cost
VERDICT_COLOURS = {"above": "C2", "below": "C3", "within noise": "0.3", "n/a": "0.6"}


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


def entry_label(r: pd.Series, board: pd.DataFrame) -> str:
    """Entry name: family, plus size/run only when the board needs them to tell rows apart."""
    s = r["family"] + (f" {r['size']}px" if board["size"].nunique() > 1 else "")
    return f"{r['run']}: {s}" if board["run"].nunique() > 1 else s


def _short(name: str, i: int, n: int = 14) -> str:
    return name if name == str(i) else f"{i}: {name[:n]}"


def _picked(r: pd.Series) -> bool:
    v = r.get("picked", False)
    return bool(v) if pd.notna(v) else False


def metric_limits(values: Iterable[float], min_span: float = MIN_SPAN,
                  bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float]:
    """Axis limits for a metric in [0, 1] that cover every value and span at least `min_span`.

    Why: autoscaling stretches whatever is plotted to fill the panel, so a 0.01 gap between
    two entries (or between us and the published line) looks as large as a 0.2 one. Pass the
    reference lines among `values` so they are always on the axis. The range is centred on the
    values, moved inside `bounds` when it would cross them, then padded by 3%."""
    v = np.asarray([float(x) for x in values if x is not None and pd.notna(x)], float)
    if not v.size:
        return bounds
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < min_span:
        mid = (lo + hi) / 2
        lo, hi = mid - min_span / 2, mid + min_span / 2
        if lo < bounds[0]:
            lo, hi = bounds[0], hi + bounds[0] - lo
        if hi > bounds[1]:
            lo, hi = lo - (hi - bounds[1]), bounds[1]
    pad = 0.03 * (hi - lo)
    return lo - pad, hi + pad


def _ci_err(mean: Iterable[float], lo: Iterable[float], hi: Iterable[float]) -> np.ndarray:
    """errorbar's (2, n) distances from the mean; a missing CI draws no bar."""
    mean, lo, hi = (np.asarray(list(x), float) for x in (mean, lo, hi))
    return np.clip(np.nan_to_num(np.vstack([mean - lo, hi - mean])), 0, None)


# --- across datasets -----------------------------------------------------------------------------

def _cliques(ranks: pd.Series, cd: float) -> list[tuple[float, float]]:
    """Maximal runs of competitors whose mean ranks lie within cd of each other."""
    r = ranks.to_numpy()
    spans = []
    for i in range(len(r)):
        j = max(k for k in range(i, len(r)) if r[k] - r[i] < cd)
        if j > i and not any(a <= i and j <= b for a, b in spans):
            spans.append((i, j))
    return [(r[a], r[b]) for a, b in spans]


def fig_critical_difference(results: dict[str, dict], path: Path) -> Path | None:
    """Demsar's diagram per metric: mean rank axis (1 = best on the left), each competitor a
    tick, thick bars join those the Nemenyi test cannot tell apart. None below
    MIN_CD_DATASETS datasets: there the critical difference spans most of the rank range and
    the diagram would separate next to nothing (the caller says so)."""
    results = {m: r for m, r in results.items() if r["n_datasets"] >= MIN_CD_DATASETS}
    if not results:
        return None
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


# --- per dataset: ours against the published numbers --------------------------------------------

def fig_vs_published(board: pd.DataFrame, flag: str, path: Path) -> Path:
    """Ours (mean, 95% CI bars) next to every comparable published method, per metric; the
    metric axis follows `metric_limits`."""
    rows = board[board["dataset"] == flag]
    pub = load_published()
    official = all(official_row(r) for r in rows.itertuples())
    cands = [comparable_baselines(pub, flag, s, official) for s in sorted(rows["size"].unique())]
    cand = pd.concat([c for c, _, _ in cands]).drop_duplicates("method")
    ref = cands[0][1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for ax, m in zip(axes, METRICS, strict=True):
        ours = [entry_label(r, board) for _, r in rows.iterrows()]
        mean = rows[f"test_{m}_mean"].to_numpy(float)
        ax.errorbar(range(len(ours)), mean, yerr=_ci_err(mean, rows[f"{m}_lo"], rows[f"{m}_hi"]),
                    fmt="o", color="C0", capsize=4, label="ours (mean, 95% CI)")
        xs = range(len(ours), len(ours) + len(cand))
        ax.scatter(xs, cand[m], marker="D", color="0.45", label="published")
        ax.axvline(len(ours) - 0.5, color="0.7", lw=0.8, ls=":")
        ref_val = cand.loc[cand["method"] == ref, m]
        if len(ref_val):
            ax.axhline(float(ref_val.iloc[0]), ls="--", color="C3", lw=1, label=ref)
        ax.set_xticks(range(len(ours) + len(cand)), ours + list(cand["method"]), rotation=35,
                      ha="right")
        ax.set_ylim(*metric_limits([*mean, *rows[f"{m}_lo"], *rows[f"{m}_hi"], *cand[m]]))
        ax.set_ylabel(f"test {m.upper()}")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"{flag}: ours vs published MedMNIST v2" if official else
                 f"{flag}: not the official files, so no published numbers beside ours")
    return _save(fig, path)


def forest_rows(entry: pd.Series, published: pd.DataFrame) -> pd.DataFrame:
    """Per published method and metric: ours minus published (`diff`, from our test mean) and
    our 95% CI shifted by the published value (`lo`, `hi` = CI bound minus published: the
    published number is a fixed point, only ours was resampled), with the CI rule's verdict
    (bench.leaderboard.verdict). Rows in `published`'s order."""
    rows = []
    for p in published.itertuples():
        for m in METRICS:
            pub, lo, hi = float(getattr(p, m)), entry[f"{m}_lo"], entry[f"{m}_hi"]
            rows.append({"method": p.method, "metric": m, "published": pub,
                         "diff": float(entry[f"test_{m}_mean"]) - pub,
                         "lo": float(lo) - pub, "hi": float(hi) - pub,
                         "verdict": verdict(lo, hi, pub)})
    return pd.DataFrame(rows, columns=["method", "metric", "published", "diff", "lo", "hi",
                                       "verdict"])


def fig_forest(entry: pd.Series, published: pd.DataFrame, ref: str, title: str,
               path: Path) -> Path | None:
    """Forest plot of one entry against every published method (`published`: rows with
    method/acc/auc): per metric, ours minus published as a point with our 95% CI shifted by
    the published value, a line at zero, methods on the y axis, the declared reference `ref`
    shaded. Colour is the verdict: only a bar clear of zero is above/below. The x axis is
    symmetric about zero and spans at least ±MIN_SPAN/2. None without published rows."""
    rows = forest_rows(entry, published)
    if rows.empty:
        return None
    methods = list(dict.fromkeys(rows["method"]))
    ys = {m: len(methods) - 1 - i for i, m in enumerate(methods)}  # first method on top
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.5 + 0.4 * len(methods)), sharey=True,
                             layout="constrained")
    for ax, m in zip(axes, METRICS, strict=True):
        r = rows[rows["metric"] == m]
        y = r["method"].map(ys).to_numpy(float)
        if ref in ys:
            ax.axhspan(ys[ref] - 0.42, ys[ref] + 0.42, color="C1", alpha=0.18, lw=0,
                       label=f"reference: {ref}")
        ax.axvline(0, color="k", lw=1)
        ax.errorbar(r["diff"], y, xerr=_ci_err(r["diff"], r["lo"], r["hi"]), fmt="none",
                    ecolor="0.45", capsize=3, lw=1.2)
        for v, g in r.groupby("verdict", sort=False):
            ax.scatter(g["diff"], g["method"].map(ys), color=VERDICT_COLOURS.get(v, "0.5"),
                       zorder=3, s=28, label=str(v))
        span = np.abs(r[["diff", "lo", "hi"]].to_numpy(float))
        half = max(MIN_SPAN / 2, float(np.nanmax(span)) if np.isfinite(span).any() else 0.0)
        ax.set_xlim(-1.08 * half, 1.08 * half)
        ax.set(xlabel=f"test {m.upper()}: ours − published (our 95% CI)")
        ax.grid(axis="x", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_yticks([ys[m] for m in methods], methods, fontsize=8)
    for t in axes[0].get_yticklabels():
        if t.get_text() == ref:
            t.set_fontweight("bold")
    axes[0].set_ylim(-0.6, len(methods) - 0.4)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def fig_seed_strips(entries: pd.DataFrame, flag: str, path: Path,
                    min_span: float = MIN_SPAN) -> Path | None:
    """Per entry (a column of `entries`), its final seeds' test numbers as dots and its mean
    with the 95% bootstrap CI as a bar (a seed ensemble: its averaged probabilities' number, a
    star, and its CI), beside the published reference (dashed) and best (dotted) values.

    `entries` holds board rows of one dataset plus `name` and `seeds_acc`/`seeds_auc` (the seed
    values, empty for an ensemble). The metric axis follows `metric_limits`: at least
    `min_span` wide and always including the published lines, so a gap of 0.01 looks like
    0.01. None when no entry has a number."""
    if entries.empty or entries[[f"test_{m}_mean" for m in METRICS]].isna().all().all():
        return None
    fig, axes = plt.subplots(1, 2, figsize=(max(5.5, 1.8 + 1.25 * len(entries)) * 2, 4.2),
                             layout="constrained")
    rng = np.random.default_rng(0)
    r0 = entries.iloc[0]
    for ax, m in zip(axes, METRICS, strict=True):
        shown: list[float] = []
        seen: set[str] = set()

        def once(label: str, seen: set[str] = seen) -> str | None:
            if label in seen:
                return None
            seen.add(label)
            return label

        for x, (_, r) in enumerate(entries.iterrows()):
            vals = np.asarray(r[f"seeds_{m}"], float)
            if vals.size:
                ax.scatter(x - 0.1 + rng.uniform(-0.08, 0.08, vals.size), vals, s=20,
                           color="C0", alpha=0.75, zorder=3, label=once("one seed"))
            ens = r["kind"] == "ensemble"
            mean, lo, hi = r[f"test_{m}_mean"], r[f"{m}_lo"], r[f"{m}_hi"]
            label = "ensemble (mean of its seeds' probabilities), 95% CI" if ens else \
                "seed mean, 95% CI"
            ax.errorbar([x + 0.15], [mean], yerr=_ci_err([mean], [lo], [hi]),
                        fmt="*" if ens else "D", ms=11 if ens else 6, capsize=4,
                        color="C1" if ens else "C0", mec="k" if ens else None, zorder=4,
                        label=once(label))
            shown += [*vals, mean, lo, hi]
        if pd.notna(r0.get(f"ref_{m}")):
            ax.axhline(r0[f"ref_{m}"], ls="--", color="C3", lw=1,
                       label=f"{r0['ref_method']} {r0[f'ref_{m}']:.3f}")
            shown.append(r0[f"ref_{m}"])
        if pd.notna(r0.get(f"best_{m}")) and r0[f"best_{m}_method"] != r0.get("ref_method"):
            ax.axhline(r0[f"best_{m}"], ls=":", color="0.3", lw=1.2,
                       label=f"best published: {r0[f'best_{m}_method']} {r0[f'best_{m}']:.3f}")
            shown.append(r0[f"best_{m}"])
        names = [(f"{r['name']}\n({len(r[f'seeds_{m}'])} seeds)" if len(r[f"seeds_{m}"])
                  else f"{r['name']}\n({int(r['n_seeds'])}-seed ensemble)")
                 + ("\npicked" if _picked(r) else "") for _, r in entries.iterrows()]
        ax.set_xticks(range(len(names)), names, fontsize=7.5)
        for t, (_, r) in zip(ax.get_xticklabels(), entries.iterrows(), strict=True):
            if _picked(r):
                t.set_fontweight("bold")
        ax.set_xlim(-0.6, len(names) - 0.4)
        ax.set_ylim(*metric_limits(shown, min_span))
        ax.set_ylabel(f"test {m.upper()}")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    fig.suptitle(f"{flag}: every final seed and each entry's 95% CI vs the published numbers "
                 f"(axis spans at least {min_span:g})", fontsize=10)
    return _save(fig, path)


# --- per dataset: the picked entry's scores ------------------------------------------------------

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
                    path: Path, n_bins: int = 10) -> Path:
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
    b.bar(bins["confidence"], bins["count"], width=1 / n_bins * 0.8, color="0.55")
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


def _as_picture(img: np.ndarray) -> np.ndarray:
    """A 2D picture of one sample: grey or RGB as stored; a 3D volume's middle slice."""
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] not in (1, 3):  # (D, H, W) volume
        return img[img.shape[0] // 2]
    return img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img


def fig_misclassified(images: np.ndarray, picks: dict[int, list[int]], pred: np.ndarray,
                      conf: np.ndarray, names: list[str], title: str, path: Path) -> Path:
    """A row per true class: the test images in `picks` (true class -> image indices, most
    confidently wrong first), captioned with the predicted class `pred` and its probability
    `conf`."""
    classes = sorted(picks)
    cols = max([len(v) for v in picks.values()] + [1])
    fig, axes = plt.subplots(len(classes), cols, figsize=(1.7 * cols + 1.6,
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


# --- the search ----------------------------------------------------------------------------------

def _values(cell) -> list[dict]:
    """A JSON list cell of a trials table (history) as a list."""
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
    early (grey, ×), full-budget ones in colour, the best trial bold. `run_dirs` (run label ->
    directory) gives each family's full budget (its search space); else the most any of its
    trials ran."""
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
    """fANOVA importance of each searched hyperparameter, one panel per family (label,
    importances, note). The caller keeps only families with at least MIN_IMPORTANCE_TRIALS
    trials; None when no panel has importances."""
    panels = [p for p in panels if p[1]]
    if not panels:
        return None
    fig, axes = _grid(len(panels), w=4.8, h=3.6)
    for ax, (name, imp, note) in zip(axes, panels, strict=True):
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
    """Parallel coordinates of each family's trials (the given parameters, then the value),
    coloured by val AUC at the equal budget."""
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


# --- cost ----------------------------------------------------------------------------------------

def _seconds(x: float, _pos=None) -> str:
    """Compact seconds for log-axis ticks: 300, 1k, 20k."""
    if x >= 1000:
        return f"{x / 1000:g}k"
    return f"{x:g}"


def cost_entries(board: pd.DataFrame) -> pd.DataFrame:
    """The entries a cost plot shows: the trained ones (single models, ensembles, the pipeline
    reference); context rows (majority class, prior shift) cost no training of their own."""
    return board[board["kind"].isin(TRAINED_KINDS)] if "kind" in board else board


def fig_cost(board: pd.DataFrame, path: Path, cost: pd.Series | None = None) -> Path | None:
    """Test ACC vs device-seconds per dataset, with the Pareto front and the picked entry
    ringed. `cost`: each board row's device-seconds (index as `board`), by default its
    `device_s` (search + final seeds); bench.report adds the selection re-runs. The majority
    class, when on the board, is a dotted line: the accuracy that costs nothing. Datasets with
    a single trained entry have no trade-off to show and are left out (the caller says so);
    None when none is left."""
    board = board.assign(_cost=pd.to_numeric(board["device_s"] if cost is None else cost,
                                             errors="coerce"))
    shown = cost_entries(board)
    flags = [f for f, g in shown.groupby("dataset") if g["test_acc_mean"].notna().sum() > 1]
    if not flags:
        return None
    labels = sorted({entry_label(r, board) for _, r in shown.iterrows()})
    color = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}  # same entry, same colour
    fig, axes = _grid(len(flags))
    for ax, flag in zip(axes, flags, strict=True):
        b = shown[shown["dataset"] == flag].sort_values(["_cost", "test_acc_mean"],
                                                        ascending=[True, False])
        for _, r in b.iterrows():
            ax.errorbar(r["_cost"], r["test_acc_mean"],
                        yerr=_ci_err([r["test_acc_mean"]], [r["acc_lo"]], [r["acc_hi"]]),
                        fmt="o", capsize=3, color=color[entry_label(r, board)],
                        label=entry_label(r, board))
        # on the front: no entry at most as costly is at least as accurate
        v = b.dropna(subset=["test_acc_mean"])
        front = v[v["test_acc_mean"] > v["test_acc_mean"].cummax().shift(fill_value=-1.0)]
        ax.step(front["_cost"], front["test_acc_mean"], where="post", color="0.3", lw=1,
                ls="--", marker="o", mfc="none", ms=12, label="Pareto front")
        picked = b[[_picked(r) for _, r in b.iterrows()]]
        if len(picked):
            ax.scatter(picked["_cost"], picked["test_acc_mean"], marker="*", s=320,
                       facecolor="none", edgecolor="k", lw=1.2, zorder=5,
                       label="picked (on validation)")
        ys = [*b["test_acc_mean"], *b["acc_lo"], *b["acc_hi"]]
        if "kind" in board:
            for _, r in board[(board["dataset"] == flag) & (board["kind"] == "baseline")
                              ].iterrows():
                ax.axhline(r["test_acc_mean"], ls=":", color="0.4", lw=1,
                           label=f"{r['family']} {r['test_acc_mean']:.3f} (no training)")
                ys.append(r["test_acc_mean"])
        ax.set_ylim(*metric_limits(ys))
        if b["_cost"].max() > 10 * max(b["_cost"].min(), 1e-9):
            ax.set_xscale("log")
            # labels only at 1-2-5 steps, at most ~5: the default also labels minor ticks
            # when the axis spans about a decade, and they overlap
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0), numticks=6))
            ax.xaxis.set_major_formatter(FuncFormatter(_seconds))
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.xaxis.set_major_formatter(FuncFormatter(_seconds))
        ax.set(title=flag, xlabel="device-seconds (search + selection re-runs + final seeds)"
               if cost is not None else "device-seconds (search + final seeds)",
               ylabel="test ACC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    return _save(fig, path)

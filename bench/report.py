"""Markdown report + PNG figures from one or more run directories.

Everything is rebuilt from the files on disk (like the leaderboard) and written atomically, so a
crashed or concurrent report never leaves a half-written file. Figures go to
`<out stem>_figures/` beside the markdown and are linked relatively, so the folder can be moved.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are made on clusters and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from bench import metrics  # noqa: E402
from bench.baselines import load_published  # noqa: E402
from bench.leaderboard import (  # noqa: E402
    RunDirs,
    as_paths,
    build_leaderboard,
    comparable_baselines,
    format_board,
    load_scores,
    load_seeds,
    load_trials,
    read_meta,
    summarize,
)
from bench.results import atomic_write, write_text  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    """savefig atomically (temp file beside it, then rename)."""
    try:
        return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110,
                                                        bbox_inches="tight"))
    finally:
        plt.close(fig)


def _grid(n: int, w: float = 4.6, h: float = 3.4) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(3, n)
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


def fig_vs_published(board: pd.DataFrame, flag: str, path: Path) -> Path:
    """Ours (mean, 95% CI bars) next to every comparable published method, per metric."""
    rows = board[board["dataset"] == flag]
    pub = load_published()
    cands = [comparable_baselines(pub, flag, s) for s in sorted(rows["size"].unique())]
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
    fig.suptitle(f"{flag}: ours vs published MedMNIST v2")
    return _save(fig, path)


def fig_learning_curves(trials: pd.DataFrame, flag: str, path: Path) -> Path | None:
    """Val AUC per epoch of the best search trial (by best val AUC) of each family."""
    t = trials[(trials["dataset"] == flag) & (trials["status"] == "ok")].dropna(
        subset=["best_val_auc"])
    if t.empty:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8), layout="constrained")
    for family, g in t.groupby("family", sort=True):
        best = g.loc[pd.to_numeric(g["best_val_auc"]).idxmax()]
        hist = pd.DataFrame(json.loads(best["history"]) if best["history"] else [])
        if {"epoch", "val_auc"} <= set(hist.columns):
            ax.plot(hist["epoch"], hist["val_auc"], marker=".", label=f"{family} ({best['run']} "
                    f"trial {best['trial_id']})")
    ax.set(xlabel="epoch", ylabel="val AUC", title=f"{flag}: best search trial per family")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
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
    short = [s if s == str(i) else f"{i}: {s[:14]}" for i, s in enumerate(names)]
    ax.set_xticks(range(n), short, rotation=35, ha="right", fontsize=8)
    ax.set_yticks(range(n), short, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="row rate (recall)")
    return _save(fig, path)


def fig_cost(board: pd.DataFrame, path: Path) -> Path:
    """Test ACC vs device-seconds (search + final) per dataset, with the Pareto front."""
    flags = sorted(board["dataset"].unique())
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
        ax.set(title=flag, xlabel="device-seconds (search + final)", ylabel="test ACC")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    return _save(fig, path)


def fig_trials_progress(trials: pd.DataFrame, path: Path) -> Path | None:
    """Best val AUC so far vs number of trials (trials.parquet row order), per family."""
    if trials.empty:
        return None
    flags = sorted(trials["dataset"].unique())
    fig, axes = _grid(len(flags))
    for ax, flag in zip(axes, flags, strict=True):
        for (run, family), g in trials[trials["dataset"] == flag].groupby(["run", "family"]):
            best = pd.to_numeric(g["best_val_auc"]).cummax().ffill().to_numpy()
            name = family if trials["run"].nunique() == 1 else f"{run}: {family}"
            ax.step(np.arange(1, len(best) + 1), best, where="post", marker=".", label=name)
        ax.set(title=flag, xlabel="trials finished", ylabel="best val AUC so far")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3)
    return _save(fig, path)


def _runs_md(paths: list[Path]) -> list[str]:
    out = ["## Runs", ""]
    for p in paths:
        meta = read_meta(p)
        out += [f"### {p}", ""]
        for k, v in meta.items():  # nested values (hardware, cluster) as compact JSON
            text = json.dumps(v, default=str) if isinstance(v, dict | list) else str(v)
            out.append(f"- {k}: `{text[:300]}`")
        if (p / "spec.yaml").is_file():
            out += ["", "<details><summary>spec.yaml</summary>", "", "```yaml",
                    (p / "spec.yaml").read_text().rstrip(), "```", "", "</details>"]
        out.append("")
    return out


def _summary_md(board: pd.DataFrame) -> list[str]:
    s = summarize(board)
    if s.empty:
        return []
    methods = list(dict.fromkeys(s["method"]))
    out = ["## Across datasets", "",
           "Mean rank by test AUC within each dataset (1 = best); then wins/ties/losses "
           "(W/T/L) against each published method by the CI rule, as `AUC · ACC`.", "",
           "| family | size | mean rank | datasets | " + " | ".join(methods) + " |",
           "|" + "---|" * (4 + len(methods))]
    for (fam, size), g in s.groupby(["family", "size"], sort=False):
        by = g.set_index("method")
        cells = [f"{by.loc[m, 'auc_wins']}/{by.loc[m, 'auc_ties']}/{by.loc[m, 'auc_losses']} · "
                 f"{by.loc[m, 'acc_wins']}/{by.loc[m, 'acc_ties']}/{by.loc[m, 'acc_losses']}"
                 if m in by.index else "-" for m in methods]
        out.append(f"| {fam} | {size} | {g['mean_rank_auc'].iloc[0]:.2f} | "
                   f"{g['n_datasets'].iloc[0]} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _best_model_md(seeds: pd.DataFrame, flag: str, figs: Path, rel: str) -> list[str]:
    """Confusion matrix + per-class table of the final model with the best *validation* AUC."""
    import medmnist

    ok = seeds[(seeds["dataset"] == flag) & (seeds["status"] == "ok")]
    if ok.empty:
        return []
    best = ok.loc[pd.to_numeric(ok["val_auc"]).idxmax()]
    sc = load_scores(best["root"], best["run_dir"])
    if sc is None:
        return [f"_No scores.npz for {best['run_dir']}: no confusion matrix._", ""]
    info = medmnist.INFO[flag]
    task, names = info["task"], [info["label"][str(i)] for i in range(len(info["label"]))]
    who = f"{best['family']} seed {best['seed']} ({best['run']})"
    out = [f"Best final model (chosen by val AUC {best['val_auc']:.3f}): {who}, "
           f"test ACC {best['test_acc']:.3f}, AUC {best['test_auc']:.3f}.", ""]
    y, s = sc["test_labels"], sc["test_scores"]
    if task != metrics.MULTI_LABEL:
        cm = metrics.confusion(y, s, task, len(names))
        png = fig_confusion(cm, names, f"{flag} test set\n{who}", figs / f"{flag}_confusion.png")
        out += [f"![{flag} confusion matrix]({rel}/{png.name})", ""]
    out += ["| class | name | precision | recall | F1 | support |", "|---|---|---|---|---|---|"]
    out += [f"| {c['class']} | {c['name']} | {c['precision']:.3f} | {c['recall']:.3f} | "
            f"{c['f1']:.3f} | {c['support']} |"
            for c in metrics.class_report(y, s, task, info["label"])]
    return [*out, ""]


def write_report(run_dirs: RunDirs, out_md: Path, n_boot: int = 1000) -> Path:
    """Write the markdown report and its figures; returns the markdown path."""
    paths, out_md = as_paths(run_dirs), Path(out_md)
    board = build_leaderboard(paths, n_boot=n_boot)
    seeds, trials = load_seeds(paths), load_trials(paths)
    figs = out_md.parent / f"{out_md.stem}_figures"
    figs.mkdir(parents=True, exist_ok=True)
    rel = figs.name
    md = ["# MedMNIST-Bench report", "",
          "Published numbers: MedMNIST v2 (Yang et al., Scientific Data 10:41, 2023, "
          "doi:10.1038/s41597-022-01721-8).", "", *_runs_md(paths),
          "## Leaderboard", "", format_board(board, "md"), *_summary_md(board)]
    if not board.empty:
        cost = fig_cost(board, figs / "cost.png")
        md += ["## Cost", "", f"![accuracy vs cost]({rel}/{cost.name})", ""]
    progress = fig_trials_progress(trials, figs / "trials_progress.png")
    if progress:
        md += [f"![best val AUC vs trials]({rel}/{progress.name})", ""]
    for flag in sorted(seeds["dataset"].unique()):
        md += [f"## {flag}", ""]
        if flag in set(board["dataset"][board["n_seeds"] > 0]):
            png = fig_vs_published(board, flag, figs / f"{flag}_vs_published.png")
            md += [f"![{flag} vs published]({rel}/{png.name})", ""]
        curves = fig_learning_curves(trials, flag, figs / f"{flag}_learning_curves.png")
        if curves:
            md += [f"![{flag} learning curves]({rel}/{curves.name})", ""]
        md += _best_model_md(seeds, flag, figs, rel)
    return write_text(out_md, "\n".join(md).rstrip() + "\n")

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

This module chooses what to show and writes the markdown; the numbers come from
bench.score_stats (curves, calibration, class mix), bench.ranks (critical difference) and
bench.headline / bench.provenance (the results and rules text), the pictures from bench.figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench import metrics
from bench.baselines import load_published
from bench.errors import UserError
from bench.export import write_entry_predictions
from bench.figures import (
    METRICS,
    MIN_CD_DATASETS,
    MIN_IMPORTANCE_TRIALS,
    MIN_SPAN,
    cost_entries,
    fig_calibration,
    fig_confusion,
    fig_cost,
    fig_critical_difference,
    fig_forest,
    fig_importance,
    fig_learning_curves,
    fig_misclassified,
    fig_parallel,
    fig_roc_pr,
    fig_seed_strips,
    fig_trials_progress,
    fig_vs_published,
)
from bench.figures import entry_label as _label
from bench.headline import exploratory_md, results_md
from bench.leaderboard import (
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
)
from bench.picked import representative_seed  # the seed predict serves, too
from bench.provenance import portable_command, reproduce_md, rules_md, statistics_md
from bench.ranks import cd_table, friedman_nemenyi
from bench.ranks import mean_ranks as mean_ranks  # re-exported: tests and callers read it here
from bench.results import SELECTION_COLUMNS, write_text
from bench.run_spaces import SPACES_FILE
from bench.rundir import SPEC, RunDir
from bench.score_stats import (
    N_BINS,
    class_mix,
    confidence_and_correct,
    expected_calibration_error,
    most_confident_errors,
    roc_pr_curves,
)
from bench.studies import (
    STUDIES_FILE,
    build_studies,
    equal_budget_study,
    load_studies,
    param_importances,
)


def _class_names(flag: str) -> list[str]:
    import medmnist

    labels = medmnist.INFO[flag]["label"]
    return [labels[str(i)] for i in range(len(labels))]


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
    successful seeds qualify; test numbers never choose. The marker counts per dataset: a
    dataset without one (a run from before the marker, beside a newer run) still gets its
    best-validated entry rather than none."""
    ok = board[board["n_seeds"] > 0].assign(_v=_val(board))
    if ok.empty:
        return ok
    if "picked" in ok:
        marked = ok["picked"].fillna(False).astype(bool)
        has_pick = marked.groupby(ok["dataset"]).transform("any")
        ok = ok[marked | ~has_pick]
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


def _across_md(board: pd.DataFrame, figs: Path, rel: str) -> list[str]:
    """Wins/ties/losses against the published methods, mean ranks, and the critical-difference
    diagram from MIN_CD_DATASETS datasets up (below, one sentence says why there is none)."""
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
        return [*out, "_Mean ranks need at least two datasets and two competitors with numbers "
                      "on all of them._", ""]
    png = fig_critical_difference(results, figs / "critical_difference.png")
    res = results.get("auc") or next(iter(results.values()))
    if png is None:
        out += [f"_No critical-difference diagram: {res['n_datasets']} datasets, and it is drawn "
                f"from {MIN_CD_DATASETS} up; here the Nemenyi critical difference would be "
                f"{res['cd']:.2f} ranks on a scale of 1 to {res['k']}, so it could separate next "
                "to nothing._", "",
                "Mean rank within each dataset (1 = best), our entries beside every published "
                "method (†) that reports all datasets of this run; a description, not a test.", ""]
    else:
        out += ["Critical difference: competitors ranked within each dataset (1 = best), mean "
                "rank over datasets; our entries beside every published method (†) that reports "
                "all datasets of this run. Bars join competitors the Nemenyi test cannot separate "
                f"at α = {res['alpha']}.", "", f"![critical difference]({rel}/{png.name})", ""]
    out += ["| competitor | " + " | ".join(f"mean rank ({m.upper()})" for m in results) + " |",
            "|---|" + "---|" * len(results)]
    for name in res["ranks"].index:
        out.append(f"| {name} | " + " | ".join(f"{r['ranks'].get(name, float('nan')):.2f}"
                                               for r in results.values()) + " |")
    out.append("")
    if png is not None:
        out += ["; ".join(f"{m.upper()}: Friedman p = {r['friedman_p']:.3g}, CD = {r['cd']:.2f}"
                          f" over {r['n_datasets']} datasets" for m, r in results.items())
                + (". With this few datasets no difference of mean ranks can reach significance."
                   if res["cd"] >= res["k"] - 1 else "."), ""]
    return out


# --- per-dataset figures -------------------------------------------------------------------------

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


def strip_entries(board: pd.DataFrame, seeds: pd.DataFrame, flag: str) -> pd.DataFrame:
    """The seed-strip figure's data for one dataset: its trained entries with seeds (context
    rows left out), each with its display `name` and its seeds' test values (`seeds_acc`,
    `seeds_auc`; a seed ensemble has none of its own, its members are the family's seeds)."""
    here = cost_entries(board[(board["dataset"] == flag) & (board["n_seeds"] > 0)])
    rows = []
    for _, r in here.iterrows():
        own = seeds.iloc[0:0] if is_ensemble(r) else entry_seeds(seeds, r)
        rows.append({**r.to_dict(), "name": _label(r, board),
                     **{f"seeds_{m}": pd.to_numeric(own[f"test_{m}"]).to_numpy(float)
                        for m in METRICS}})
    return pd.DataFrame(rows)


def _published_figures_md(board: pd.DataFrame, seeds: pd.DataFrame, entry: pd.Series,
                          figs: Path, rel: str) -> list[str]:
    """A dataset's entries beside the published numbers, the picked entry's forest plot against
    every published method, and the seed strips, each with the rule its axis follows."""
    flag = entry["dataset"]
    png = fig_vs_published(board, flag, figs / f"{flag}_vs_published.png")
    out = [f"![{flag} vs published]({rel}/{png.name})", ""]
    cand, ref, _ = comparable_baselines(load_published(), flag, int(entry["size"]),
                                        official_row(entry))
    name = _label(entry, board)
    forest = fig_forest(entry, cand, ref, f"{flag}: {name} (picked) minus each published method",
                        figs / f"{flag}_forest.png")
    if forest is None:
        out += [f"_No forest plot for {flag}: the run's files are not the official MedMNIST "
                "release, so there are no published numbers to set ours against._", ""]
    else:
        out += [f"![{flag} forest plot]({rel}/{forest.name})", "",
                f"Forest plot: the picked entry ({name}) minus each published method, the point "
                "from our test mean, the bar our 95% CI shifted by the published value; only a "
                f"bar clear of zero is above/below (colour). Shaded: the reference, {ref}.", ""]
    strips = fig_seed_strips(strip_entries(board, seeds, flag), flag,
                             figs / f"{flag}_seeds.png")
    if strips:
        out += [f"![{flag} seeds]({rel}/{strips.name})", "",
                "Seed strips: each dot one final seed's test number, each bar an entry's 95% "
                "bootstrap CI (star: a seed ensemble's averaged probabilities). The y axis spans "
                f"at least {MIN_SPAN:g} and always includes the published lines, so a small gap "
                "looks small.", ""]
    return out


def _dataset_md(board: pd.DataFrame, seeds: pd.DataFrame, entry: pd.Series, figs: Path,
                rel: str, data_dir: str | Path | None) -> list[str]:
    """Seed spread, ROC/PR, calibration, confusion, per-class table and misclassified images
    of one dataset's picked entry."""
    import medmnist

    flag = entry["dataset"]
    info = medmnist.INFO[flag]
    task, names = info["task"], _class_names(flag)
    out: list[str] = []
    out += _published_figures_md(board, seeds, entry, figs, rel)
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
                          figs / f"{flag}_calibration.png", n_bins=N_BINS)
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
            png = fig_misclassified(images, most_confident_errors(y, s, task),
                                    metrics.predicted_labels(s, task).reshape(-1), conf, names,
                                    f"{flag}: most confident test errors per true class, {who}",
                                    figs / f"{flag}_misclassified.png")
            out += [f"![{flag} misclassified]({rel}/{png.name})", ""]
    return out


# --- the search ----------------------------------------------------------------------------------

def _search_md(labels: dict[str, Path], trials: pd.DataFrame, flag: str,
               studies: dict[str, dict], figs: Path, rel: str) -> list[str]:
    """One dataset's search: learning curves, hyperparameter importance (only for families with
    at least MIN_IMPORTANCE_TRIALS trials; one sentence names the others) and parallel
    coordinates (every family: they show the trials, they estimate nothing)."""
    out = [f"### {flag}", ""]
    curves = fig_learning_curves(trials, flag, figs / f"{flag}_learning_curves.png", labels)
    if curves:
        out += [f"![{flag} learning curves]({rel}/{curves.name})", ""]
    imp_panels, par_panels, notes, few, none = [], [], [], [], []
    for run, by_name in studies.items():
        for name, study in sorted(by_name.items()):
            d, _, family = name.partition("__")
            if d != flag:
                continue
            label = family if len(studies) == 1 else f"{run}: {family}"
            eq = equal_budget_study(study)
            if eq is None:
                few.append(f"{label} (fewer than 2 finished trials)")
                continue
            copy, rung = eq
            n = len(copy.trials)
            imp: dict[str, float] = {}
            if n < MIN_IMPORTANCE_TRIALS:
                few.append(f"{label} ({n} trials)")
            else:
                try:
                    imp = param_importances(copy)
                except (ValueError, RuntimeError) as e:  # fANOVA on degenerate data
                    none.append(f"{label} (not computable: {e})")
                else:
                    if not imp:
                        none.append(f"{label} (no hyperparameter varied)")
            if imp:
                imp_panels.append((label, imp, f"{n} trials, best val AUC by epoch {rung} "
                                                  "(all reached it)"))
            params = ([k for k, _ in sorted(imp.items(), key=lambda kv: -kv[1])] if imp
                      else sorted(copy.trials[0].distributions))[:8]
            par_panels.append((label, copy, params))
            notes.append(f"{label}: {n} trials compared at epoch {rung}")
    png = fig_importance(imp_panels, flag, figs / f"{flag}_importance.png")
    if png:
        out += [f"![{flag} hyperparameter importance]({rel}/{png.name})", ""]
    if few:
        out += [f"_No hyperparameter-importance plot for {', '.join(few)}: it is drawn from "
                f"{MIN_IMPORTANCE_TRIALS} trials up, and fANOVA importances from fewer are "
                "mostly noise._", ""]
    if none:
        out += [f"_No hyperparameter importance for {', '.join(none)}._", ""]
    png = fig_parallel(par_panels, flag, figs / f"{flag}_parallel.png")
    if png:
        out += [f"![{flag} parallel coordinates]({rel}/{png.name})", ""]
    if notes:
        out += ["Importance (Optuna's fANOVA evaluator) and parallel coordinates compare every "
                "finished trial at the epoch all of them reached (ASHA's first rung; the full "
                "budget without ASHA), so stopped trials count at the budget they got: "
                + "; ".join(notes) + ".", ""]
    return out


def load_selection(paths: list[Path]) -> pd.DataFrame:
    """All selection.parquet rows of the runs (the re-runs of the top search trials on more
    seeds), with `run` (label); empty when no run had a selection phase."""
    tables = [(RunDir(p).selection(), label) for p, label in zip(paths, run_labels(paths),
                                                                    strict=True)]
    frames = [t.assign(run=label) for t, label in tables if t is not None]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=[*SELECTION_COLUMNS, "run"])


def entry_costs(board: pd.DataFrame, selection: pd.DataFrame | None) -> pd.Series:
    """Device-seconds of each board entry with the selection re-runs of its families added
    (the board's `device_s` counts search trials and final seeds only), failed re-runs too:
    what it cost to arrive at the entry. Index as `board`."""
    cost = pd.to_numeric(board["device_s"], errors="coerce").astype(float)
    if selection is None or selection.empty:
        return cost
    spent = (selection.assign(device_s=pd.to_numeric(selection["device_s"], errors="coerce")
                              .fillna(0.0))
             .groupby(["run", "dataset", "family"])["device_s"].sum())
    extra = [sum(float(spent.get((r["run"], r["dataset"], fam), 0.0))
                 for fam in entry_weights(r)) for _, r in board.iterrows()]
    return cost + np.asarray(extra, float)


def _cost_md(board: pd.DataFrame, figs: Path, rel: str,
             selection: pd.DataFrame | None = None) -> list[str]:
    """Accuracy against what each entry cost, selection re-runs included, the pick marked."""
    cost = entry_costs(board, selection)
    out = ["### Cost", ""]
    png = fig_cost(board, figs / "cost.png", cost)
    if png:
        out += [f"![accuracy vs cost]({rel}/{png.name})", "",
                "Device-seconds of each entry: its families' search trials, selection re-runs "
                "and final seeds (an ensemble costs its members'). Bars: 95% CI of test ACC; "
                "star: the picked entry (chosen on validation); dashed: the Pareto front; the "
                "ACC axis spans at least 0.2.", ""]
    trained = cost_entries(board)
    single = [(f, g.index[0]) for f, g in trained.groupby("dataset")
              if g["test_acc_mean"].notna().sum() <= 1 and len(g)]
    if single:
        out += ["One entry only (no cost trade-off to plot): " + "; ".join(
            f"{f}: {_label(board.loc[i], board)}, {cost.loc[i]:.0f} device-s for test ACC "
            f"{board.loc[i, 'test_acc_mean']:.3f}" for f, i in single) + ".", ""]
    return out


# --- text sections -------------------------------------------------------------------------------

def test_sizes(seeds: pd.DataFrame) -> dict[str, int]:
    """Test images per dataset, from any seed's scores.npz."""
    out: dict[str, int] = {}
    for r in seeds[seeds["status"] == "ok"].itertuples():
        if r.dataset not in out and (s := load_scores(r.root, r.run_dir)) is not None:
            out[str(r.dataset)] = len(s["test_labels"])
    return out


def context_probabilities(board: pd.DataFrame, seeds: pd.DataFrame,
                          data_dir: str | Path | None) -> dict[tuple[str, str], np.ndarray]:
    """The test probabilities of the board's context rows (majority class, prior shift),
    recomputed (cheap) for the predictions export: (dataset, entry) -> array."""
    from bench.leaderboard import context_entries

    if board.empty or "kind" not in board or not board["kind"].isin(
            ["baseline", "prior-shift"]).any():
        return {}
    core = board[board["kind"].isin(["single", "ensemble", "reference"])]
    return {(str(r["dataset"]), str(r["family"])): probs
            for r, probs in context_entries(core, seeds, data_dir, n_boot=10)}


def _runs_md(paths: list[Path]) -> list[str]:
    out = ["## Runs", ""]
    for p in paths:
        meta = read_meta(p)
        out += [f"### {p}", ""]
        for k, v in meta.items():  # nested values (hardware, cluster) as compact JSON
            text = json.dumps(v, default=str) if isinstance(v, dict | list) else str(v)
            if k == "command" and v:
                text = portable_command(str(v))
            out.append(f"- {k}: `{text[:300]}`")
        if (p / STUDIES_FILE).is_file():
            out.append(f"- search studies: `{p / STUDIES_FILE}` (one Optuna study per "
                       "dataset/family: `optuna-dashboard sqlite:///" f"{p / STUDIES_FILE}`)")
        for name, what in ((SPEC, SPEC),
                           (SPACES_FILE, f"{SPACES_FILE} (the search spaces as searched)")):
            if (text := RunDir(p).text(name)) is not None:
                out += ["", f"<details><summary>{what}</summary>", "", "```yaml",
                        text.rstrip(), "```", "", "</details>"]
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
                 data_dir: str | Path | None = None, board: pd.DataFrame | None = None,
                 report_command: str | None = None) -> Path:
    """Write the markdown report and its figures; returns the markdown path. Also (re)writes
    each run's studies.db. `data_dir` locates the test images for the misclassified figure;
    `board`: the runs' leaderboard when the caller already built it (its bootstrap is the
    expensive part). Search-only directories get a search report (`write_search_report`)."""
    paths, out_md = as_paths(run_dirs), Path(out_md)
    if paths and board is None and all(is_search_only(p) for p in paths):
        return write_search_report(paths, out_md)
    data_dir = _data_dir(paths, data_dir)
    board = build_leaderboard(paths, n_boot=n_boot, data_dir=data_dir) if board is None \
        else board
    seeds, trials = load_seeds(paths), load_trials(paths)
    by_label = dict(zip(run_labels(paths), paths, strict=True))  # the leaderboard's labels
    figs = out_md.parent / f"{out_md.stem}_figures"
    figs.mkdir(parents=True, exist_ok=True)
    rel = figs.name
    picked = picked_entries(board)
    n_test = test_sizes(seeds)
    preds = out_md.parent / f"{out_md.stem}_predictions"
    written = write_entry_predictions(board, seeds, preds, context_probabilities(board, seeds,
                                                                                 data_dir))
    md = ["# MedMNIST-Bench report", "",
          "Published numbers: MedMNIST v2 (Yang et al., Scientific Data 10:41, 2023, "
          "doi:10.1038/s41597-022-01721-8, Tables 3-4).", "",
          "## Results", "", *results_md(board, n_test), *exploratory_md(board),
          *(["Per-image test probabilities of every entry, in MedMNIST's evaluator format "
             f"(re-score them with `medmnist.Evaluator`): `{preds.name}/` ({len(written)} "
             "files).", ""] if written else []),
          *rules_md(board), *statistics_md(board, n_test, n_boot),
          "## Leaderboard", "", format_board(board, "md"), *_across_md(board, figs, rel)]
    for _, entry in picked.iterrows():
        md += [f"## {entry['dataset']}", "",
               *_dataset_md(board, seeds, entry, figs, rel, data_dir)]
    md += _search_section(paths, trials, by_label, figs, rel)
    if not board.empty:
        md += _cost_md(board, figs, rel, load_selection(paths))
    md += _audit_md(seeds, figs, rel, data_dir)
    md += reproduce_md(paths, report_command)
    md += _runs_md(paths)
    return write_text(out_md, "\n".join(md).rstrip() + "\n")

"""Run directories + the published MedMNIST v2 table -> leaderboard (mean, std, CI, delta, verdict).

A pure function of the files on disk, so the board can be rebuilt at any time. A verdict says
'above' or 'below' a published number only when the bootstrap CI (test images *and* seeds
resampled) excludes it; anything else is 'within noise' -- one lucky seed is not a result.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import ensemble, metrics, selection
from bench.baselines import load_published
from bench.context_rows import clinical_columns
from bench.errors import UserError
from bench.results import REFERENCE_ENTRY
from bench.rundir import RunDir

RunDirs = Path | str | Iterable[Path | str]
METRICS = ("acc", "auc")
REF_28 = "ResNet-18 (28)"
REF_224 = "ResNet-18 (224)"
REF_3D = "ResNet-18+3D"

# Cost: `trials` search trials of this (dataset, family); `device_s`/`wall_s` summed over those
# trials and all final seeds (failed included: they cost too) -- a sum, not elapsed time, since
# trials run in parallel; `run_wall_s` is the whole run's elapsed time from meta.json.
# `family` names the entry: a family's seeds as single models, or `<family> ×N ens` for their
# averaged probabilities (kind "ensemble"), or a blend of several families' seed ensembles,
# `<family> ×N (w) + ... ens` with `weights` (JSON family -> weight; bench.ensemble: fitted and
# cross-checked on validation only, and present only when it beats one family out of fold).
# `<family> ×N ens +hflip` (`tta` "hflip"): the seed ensemble with each seed's probabilities
# averaged over the image and its left-right mirror (test-time flip), present only when that
# raises the ensemble's validation score beyond noise (`flip_helps`; test never decides it).
# `picked`: the entry the run's rule chooses per dataset, by validation score only
# (bench.selection.pick_entries), among the pickable entries (`pickable`).
BOARD_COLUMNS = [
    "run", "dataset", "family", "kind", "picked", "val_score", "size", "task", "n_seeds",
    "n_failed",
    "test_acc_mean", "test_acc_std", "acc_lo", "acc_hi",
    "test_auc_mean", "test_auc_std", "auc_lo", "auc_hi", "val_auc_mean",
    "leakfree_acc_mean", "leakfree_auc_mean", "leakfree_n_test", "leakfree_n_removed",
    "ref_method", "ref_acc", "ref_auc",
    "best_acc_method", "best_acc", "best_auc_method", "best_auc",
    "delta_acc_vs_resnet18", "delta_auc_vs_resnet18", "delta_acc_vs_best", "delta_auc_vs_best",
    "verdict_acc_vs_resnet18", "verdict_auc_vs_resnet18",
    "verdict_acc_vs_best", "verdict_auc_vs_best",
    "trials", "device_s", "wall_s", "run_wall_s", "baseline_note", "weights", "official_data",
    "tta",
    # clinical columns (bench.context_rows.clinical_columns): seed means for a single-model
    # row, the averaged probabilities' for an ensemble; `thr_acc` at a validation-fitted
    # threshold (binary), `test_prior` the EM-estimated test class prior (prior-shift row)
    "bal_acc", "sensitivity", "specificity", "qwk", "min_recall", "never_predicted",
    "thr_acc", "threshold", "test_prior",
]
HFLIP = "hflip"  # the one test-time transform: bench.train.Runner.scores(hflip=True)


def official_row(row: Any) -> bool:
    """A board row's (Series or itertuples row) `official_data`: whether its files were the
    MedMNIST release; True when the value is missing (a board from before the column)."""
    value = getattr(row, "official_data", None)
    return True if value is None or pd.isna(value) else bool(value)


def verdict(lo: float, hi: float, published: float) -> str:
    """'above' only if the whole CI is above the published value, 'below' only if the whole CI
    is below; touching or overlapping is 'within noise'. Missing numbers give 'n/a'."""
    if any(pd.isna(x) for x in (lo, hi, published)):
        return "n/a"
    if lo > published:
        return "above"
    if hi < published:
        return "below"
    return "within noise"


def as_paths(run_dirs: RunDirs) -> list[Path]:
    """One path or many -> a list (the CLI passes one or more run directories)."""
    if isinstance(run_dirs, str | Path):
        return [Path(run_dirs)]
    return [Path(p) for p in run_dirs]


def run_labels(paths: list[Path]) -> list[str]:
    """Directory names, or full paths when two runs share a name (runs must stay distinct)."""
    names = [p.resolve().name for p in paths]
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def read_meta(run_dir: Path) -> dict:
    """meta.json of a run (empty dict if absent: it is informative, not required)."""
    return RunDir(run_dir).meta()


def load_seeds(run_dirs: RunDirs) -> pd.DataFrame:
    """All final.parquet rows of the runs, with `run` (label) and `root` (run directory) added."""
    paths = as_paths(run_dirs)
    if not paths:
        raise UserError("No run directory given: pass one or more runs/<name> directories.")
    frames = []
    for path, label in zip(paths, run_labels(paths), strict=True):
        frames.append(RunDir(path).final().assign(run=label, root=str(path)))
    seeds = pd.concat(frames, ignore_index=True)
    seeds["size"] = seeds["size"].astype(int)
    return seeds


def load_trials(run_dirs: RunDirs) -> pd.DataFrame:
    """All trials.parquet rows of the runs (runs without a search contribute nothing)."""
    paths = as_paths(run_dirs)
    tables = [(RunDir(p).trials(), label) for p, label in zip(paths, run_labels(paths),
                                                                 strict=True)]
    frames = [t.assign(run=label) for t, label in tables if t is not None]
    if not frames:
        from bench.results import TRIAL_COLUMNS
        return pd.DataFrame(columns=[*TRIAL_COLUMNS, "run"])
    return pd.concat(frames, ignore_index=True)


def load_scores(root: Path | str, run_dir: str) -> dict[str, np.ndarray] | None:
    """scores.npz of one seed's training-run directory (relative to the run root), or None."""
    return RunDir(root).scores(run_dir)


def task_of(flag: str) -> str:
    import medmnist

    if flag not in medmnist.INFO:
        raise UserError(f"Unknown dataset {flag!r} in the run; known: {', '.join(medmnist.INFO)}")
    return medmnist.INFO[flag]["task"]


NOT_OFFICIAL = ("not the official MedMNIST file (md5 differs: synthetic, re-split or edited "
                "data): the published numbers do not apply")


def comparable_baselines(published: pd.DataFrame, flag: str, size: int,
                         official: bool = True) -> tuple[pd.DataFrame, str, str]:
    """The published rows we compare a (dataset, size) with, the reference method, and a note.

    Published 2D numbers are all for the 28 px images ('(224)' = those upsampled). For our larger
    images only the '(224)' rows are the nearer comparison, and the note says it is not like for
    like. 3D has no ResNet-18 (28) row: its reference is ResNet-18+3D. A run on files that are
    not the official release (`official` False) is compared with nothing.
    """
    if not official:
        return published.iloc[0:0].reset_index(drop=True), "", NOT_OFFICIAL
    rows = published[published["flag"] == flag]
    notes = []
    if flag.endswith("3d"):
        ref = REF_3D
        notes.append(f"3D: reference is {REF_3D}")
        if size != 28:
            notes.append(f"published 3D numbers are for 28^3 volumes, ours are {size}^3")
    elif size == 28:
        ref = REF_28
    else:
        ref = REF_224
        rows = rows[rows["method"].str.endswith("(224)")]
        notes.append(f"ours are {size} px images; published numbers are for 28 px images, so we "
                     "compare with the '(224)' methods (28 px upsampled) only")
    return rows.reset_index(drop=True), ref, "; ".join(notes)


def _ci(group: pd.DataFrame, task: str, n_boot: int) -> dict[str, float]:
    """Bootstrap CI of the seed-mean from the seeds' scores.npz; NaN if any file is missing."""
    out = {f"{m}_{b}": float("nan") for m in METRICS for b in ("lo", "hi")}
    loaded = [load_scores(r.root, r.run_dir) for r in group.itertuples()]
    if not loaded or any(s is None for s in loaded):
        if loaded:
            warnings.warn(f"scores.npz missing for some seeds of {group['dataset'].iloc[0]}/"
                          f"{group['family'].iloc[0]}: no CI, verdict n/a", stacklevel=3)
        return out
    labels = loaded[0]["test_labels"]
    if any(not np.array_equal(s["test_labels"], labels) for s in loaded):
        raise UserError(f"Seeds of {group['dataset'].iloc[0]}/{group['family'].iloc[0]} were "
                        "scored on different test labels; the run directory is inconsistent.")
    for s, rec in zip(loaded, group.itertuples(), strict=True):
        again = metrics.evaluate(s["test_labels"], s["test_scores"], task)
        if abs(again["acc"] - rec.test_acc) > 1e-6 or abs(again["auc"] - rec.test_auc) > 1e-6:
            warnings.warn(f"{rec.run_dir}: final.parquet test metrics differ from scores.npz "
                          f"({rec.test_acc:.4f}/{rec.test_auc:.4f} vs "
                          f"{again['acc']:.4f}/{again['auc']:.4f})", stacklevel=3)
    ci = metrics.bootstrap_ci(labels, [s["test_scores"] for s in loaded], task, n_boot=n_boot)
    for m in METRICS:
        out[f"{m}_lo"], out[f"{m}_hi"] = ci[m]
    return out


def _compare(row: dict, cand: pd.DataFrame, ref: str) -> dict:
    """Reference and best-published values, deltas and verdicts for both metrics."""
    out: dict = {"ref_method": ref}
    ref_rows = cand[cand["method"] == ref]
    for m in METRICS:
        mean, lo, hi = row[f"test_{m}_mean"], row[f"{m}_lo"], row[f"{m}_hi"]
        ref_val = float(ref_rows[m].iloc[0]) if len(ref_rows) else float("nan")
        if len(cand):
            best = cand.loc[cand[m].idxmax()]
            best_method, best_val = str(best["method"]), float(best[m])
        else:
            best_method, best_val = None, float("nan")
        out.update({
            f"ref_{m}": ref_val, f"best_{m}_method": best_method, f"best_{m}": best_val,
            f"delta_{m}_vs_resnet18": mean - ref_val, f"delta_{m}_vs_best": mean - best_val,
            f"verdict_{m}_vs_resnet18": verdict(lo, hi, ref_val),
            f"verdict_{m}_vs_best": verdict(lo, hi, best_val),
        })
    return out


def build_leaderboard(run_dirs: RunDirs, n_boot: int = 1000,
                      data_dir: str | Path | None = None,
                      datasets: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per (run, dataset, family, size): ok-seed mean/std/CI, published comparison, cost.

    Families whose seeds all failed keep a row (n_seeds 0, verdict n/a) so a failure is visible.
    `data_dir` (default: the data root) holds the data files: the audit behind the leakage-free
    columns, and the training labels behind the majority-class and prior-shift rows.
    `datasets`: only these datasets' rows (default all). Every row, and the pick, depends on its
    own dataset's seeds only, so a filtered board holds the same rows as the full one; `predict`
    uses it to score one dataset without bootstrapping every other.
    """
    paths = as_paths(run_dirs)
    seeds = load_seeds(paths)
    if datasets is not None:
        seeds = seeds[seeds["dataset"].isin(set(datasets))]
    trials = load_trials(paths)
    metas = {lab: read_meta(p) for p, lab in zip(paths, run_labels(paths), strict=True)}
    run_wall = {lab: m.get("wall_s") for lab, m in metas.items()}
    published = load_published()
    audits: dict = {}  # (root, flag, size) -> data audit or None, looked up once
    rows = []
    pools: dict[tuple, list[tuple[dict, pd.DataFrame, dict]]] = {}  # blend candidates
    for (run, flag, family, size), g in seeds.groupby(["run", "dataset", "family", "size"],
                                                      sort=True):
        task = task_of(flag)
        ok = g[g["status"] == "ok"]
        row: dict = {"run": run, "dataset": flag, "family": family, "size": int(size),
                     "task": task, "n_seeds": len(ok), "n_failed": len(g) - len(ok)}
        for m in METRICS:
            vals = ok[f"test_{m}"].astype(float)
            row[f"test_{m}_mean"] = float(vals.mean()) if len(vals) else float("nan")
            row[f"test_{m}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        row["val_auc_mean"] = float(ok["val_auc"].astype(float).mean()) if len(ok) else math.nan
        row.update(_ci(ok, task, n_boot))
        row.update(_leakfree(ok, task, audits, data_dir=data_dir))
        loaded = [load_scores(r.root, r.run_dir) for r in ok.itertuples()]
        row.update(clinical_columns([x for x in loaded if x is not None], task))
        # runs from before meta.json recorded it count as official, as they were shown then
        row["official_data"] = bool(metas[run].get("official_data", {}).get(flag, True))
        cand, ref, note = comparable_baselines(published, flag, int(size), row["official_data"])
        row.update(_compare(row, cand, ref))
        t = trials[(trials["run"] == run) & (trials["dataset"] == flag)
                   & (trials["family"] == family)]
        row["trials"] = len(t)
        row["device_s"] = float(pd.to_numeric(t["device_s"]).sum()
                                + pd.to_numeric(g["device_s"]).sum())
        row["wall_s"] = float(pd.to_numeric(t["wall_s"]).sum() + pd.to_numeric(g["wall_s"]).sum())
        row["run_wall_s"] = run_wall.get(run)
        row["baseline_note"] = note
        # the pipeline reference stands as its seeds' mean, as the paper's rows do
        row["kind"] = "reference" if family == REFERENCE_ENTRY else "single"
        row["val_score"] = (float(selection.score(ok["val_auc"].astype(float).mean(),
                                                  ok["val_acc"].astype(float).mean()))
                            if len(ok) else math.nan)
        rows.append(row)
        if row["kind"] == "reference":
            continue
        scores = ensemble_scores(ok)  # loaded once: the seed ensemble, its leak-free numbers
        ens = _ensemble_row(row, scores, len(ok), task, n_boot)  # the blend uses it too
        if ens is not None:
            ens.update(_compare(ens, cand, ref))
            ens.update(_leakfree(ok, task, audits, scores=scores, data_dir=data_dir))
            rows.append(ens)
            pools.setdefault((run, flag, int(size)), []).append((row, ok, scores))
            flipped = ensemble_scores(ok, tta=HFLIP)
            tta = _ensemble_row(row, flipped, len(ok), task, n_boot, tta=HFLIP)
            if tta is not None and flip_helps(flipped, scores, task):
                tta.update(_compare(tta, cand, ref))
                tta.update(_leakfree(ok, task, audits, scores=flipped, data_dir=data_dir))
                rows.append(tta)
    for pool in pools.values():
        blended = _blend_row(pool, n_boot, audits, data_dir)
        if blended is not None:
            cand, ref, _ = comparable_baselines(published, blended["dataset"], blended["size"],
                                                blended["official_data"])
            blended.update(_compare(blended, cand, ref))
            rows.append(blended)
    board = mark_picked(pd.DataFrame.from_records(rows, columns=BOARD_COLUMNS))
    context = context_entries(board, seeds, data_dir, n_boot, audits)
    if not context:
        return board
    extra = pd.DataFrame.from_records([r for r, _ in context], columns=BOARD_COLUMNS)
    # object columns first: concatenating all-NaN columns is dtype-ambiguous in pandas
    both = pd.concat([board.astype(object), extra.astype(object)], ignore_index=True)
    both = both.infer_objects()
    both["picked"] = both["picked"].fillna(False).astype(bool)
    return both


def context_entries(board: pd.DataFrame, seeds: pd.DataFrame, data_dir: str | Path | None,
                    n_boot: int, audits: dict | None = None
                    ) -> list[tuple[dict, np.ndarray]]:
    """Per (run, dataset, size) with a picked entry: the majority-class row and the picked
    entry adjusted to the test prior (bench.context_rows), each with its test probabilities.
    Never pickable; left out where the data file (training labels) is not at hand."""
    from bench import context_rows

    audits = {} if audits is None else audits
    published = load_published()
    out: list[tuple[dict, np.ndarray]] = []
    for _, pick in board[board["picked"].fillna(False).astype(bool)].iterrows():
        flag, size, task = str(pick["dataset"]), int(pick["size"]), str(pick["task"])
        mine = seeds[(seeds["run"] == pick["run"]) & (seeds["dataset"] == flag)
                     & (seeds["size"] == size) & (seeds["status"] == "ok")]
        sc = entry_probabilities(mine, pick)
        if sc is None:
            continue
        train = context_rows.train_labels(flag, size, data_dir, sc["test_labels"])
        if train is None:
            continue
        k = context_rows.n_classes(task, sc["test_scores"])
        cand, ref, _ = comparable_baselines(published, flag, size, official_row(pick))
        base = {c: pick[c] for c in ("run", "dataset", "size", "task", "run_wall_s",
                                     "baseline_note", "official_data")}
        made = [(context_rows.MAJORITY, context_rows.majority(train, sc["test_labels"], task, k),
                 "baseline", None)]
        shifted = context_rows.prior_shift(train, sc["test_scores"], task, k)
        if shifted is not None:
            made.append((f"{pick['family']} {context_rows.PRIOR_SHIFT}", shifted[0],
                         "prior-shift", shifted[1]))
        for name, probs, kind, prior in made:
            test = metrics.evaluate(sc["test_labels"], probs, task)
            ci = metrics.bootstrap_ci(sc["test_labels"], [probs], task, n_boot=n_boot)
            row = {**base, "family": name, "kind": kind, "picked": False,
                   "n_seeds": pick["n_seeds"] if kind == "prior-shift" else 0, "n_failed": 0,
                   "test_acc_mean": test["acc"], "test_auc_mean": test["auc"],
                   "test_acc_std": math.nan, "test_auc_std": math.nan,
                   "val_score": math.nan, "val_auc_mean": math.nan, "trials": 0,
                   "device_s": pick["device_s"] if kind == "prior-shift" else 0.0,
                   "wall_s": math.nan, "weights": pick["weights"], "tta": pick["tta"],
                   "test_prior": None if prior is None else json.dumps(
                       [round(float(p), 4) for p in prior])}
            for m in METRICS:
                row[f"{m}_lo"], row[f"{m}_hi"] = ci[m]
            row.update(_compare(row, cand, ref))
            scored = {"test_labels": sc["test_labels"], "test_scores": probs}
            row.update(clinical_columns([scored], task))
            row.update(_leakfree(mine, task, audits, scores=scored, data_dir=data_dir))
            out.append((row, probs))
    return out


def entry_probabilities(seeds: pd.DataFrame, entry: pd.Series | dict) -> dict | None:
    """Val/test probabilities of a board entry: an ensemble's mix (`entry_scores`), else its
    seeds' probabilities averaged (one seed: that seed's)."""
    if entry["kind"] == "ensemble":
        return entry_scores(seeds, entry)
    own = seeds[(seeds["family"] == entry["family"]) & (seeds["status"] == "ok")]
    if len(own) > 1:
        return ensemble_scores(own)
    return None if own.empty else load_scores(own.iloc[0]["root"], own.iloc[0]["run_dir"])


def _leakfree(ok: pd.DataFrame, task: str, audits: dict,
              scores: dict[str, np.ndarray] | None = None,
              data_dir: str | Path | None = None) -> dict:
    """Test ACC/AUC without the test images that have a copy in train/val (bench.audit); the
    official numbers stay the headline and the verdicts use them. NaN without an audit.
    `scores`: an ensemble entry's own probabilities instead of those of `ok`'s seeds."""
    from bench.audit import audit_for_run, leakage_free

    if ok.empty:
        return leakage_free([], None, task)
    r = ok.iloc[0]
    key = (str(r["root"]), str(r["dataset"]), int(r["size"]))
    if key not in audits:
        audits[key] = audit_for_run(*key, data_dir=data_dir)
    if scores is not None:
        loaded = [scores]
    else:
        loaded = [load_scores(x.root, x.run_dir) for x in ok.itertuples()]
    if any(s is None for s in loaded):
        return leakage_free([], None, task)
    return leakage_free(loaded, audits[key], task)


def ensemble_scores(group: pd.DataFrame, tta: str = "") -> dict[str, np.ndarray] | None:
    """The seeds' probabilities averaged (val and test), or None when fewer than two seeds
    have scores on disk. Averaging probabilities is what `predict` would do with the members.
    `tta` ("hflip"): each seed's probabilities first averaged with those of the mirrored
    images; None when a seed's scores.npz lacks them (runs from before they were written)."""
    loaded = [load_scores(r.root, r.run_dir) for r in group.itertuples()]
    if len(loaded) < 2 or any(s is None for s in loaded):
        return None
    if tta and any(f"val_scores_{tta}" not in s for s in loaded):
        return None

    def seed_scores(s: dict[str, np.ndarray], split: str) -> np.ndarray:
        key = f"{split}_scores"
        return (s[key] + s[f"{key}_{tta}"]) / 2 if tta else s[key]

    members = [seed_scores(s, "test") for s in loaded]
    return {"val_scores": np.mean([seed_scores(s, "val") for s in loaded], axis=0),
            "test_scores": np.mean(members, axis=0), "test_members": members,
            "val_labels": loaded[0]["val_labels"], "test_labels": loaded[0]["test_labels"]}


def flip_helps(flipped: dict[str, np.ndarray], plain: dict[str, np.ndarray], task: str) -> bool:
    """Whether averaging in the mirrored images measurably helps: the paired bootstrap 95% CI
    of the validation-score gain (flipped minus plain ensemble, same images resampled) lies
    above zero. Its point estimate alone is not enough: on a small validation split a gain of
    one image made a flip entry the pick on a re-split BreastMNIST (reports/archive/NOTES.md), which
    is the winner's curse the seed averaging is there to avoid."""
    lo, _ = metrics.paired_difference_ci(plain["val_labels"], flipped["val_scores"],
                                         plain["val_scores"], task)
    return lo > 0


def _ensemble_row(single: dict, s: dict[str, np.ndarray] | None, n_members: int, task: str,
                  n_boot: int, tta: str = "") -> dict | None:
    """The seed ensemble of one family as an entry of its own: official metrics of the averaged
    probabilities, a bootstrap CI over the test images and the seeds that form the ensemble
    (`metrics.ensemble_bootstrap_ci`: seed-to-seed variation stays in the interval), and the
    members' summed cost; `tta` names the test-time transform averaged into `s`, if any (it
    labels the entry)."""
    if s is None:
        return None
    test = metrics.evaluate(s["test_labels"], s["test_scores"], task)
    val = metrics.evaluate(s["val_labels"], s["val_scores"], task)
    ci = metrics.ensemble_bootstrap_ci(s["test_labels"], [(1.0, s["test_members"])], task,
                                       n_boot=n_boot)
    row = {k: single[k] for k in ("run", "dataset", "size", "task", "n_failed", "trials",
                                  "device_s", "wall_s", "run_wall_s", "baseline_note",
                                  "official_data")}
    row.update(family=f"{single['family']} ×{n_members} ens" + (f" +{tta}" if tta else ""),
               kind="ensemble", n_seeds=n_members, tta=tta,
               test_acc_mean=test["acc"], test_auc_mean=test["auc"], test_acc_std=math.nan,
               test_auc_std=math.nan, val_auc_mean=val["auc"],
               val_score=selection.score(val["auc"], val["acc"]))
    for m in METRICS:
        row[f"{m}_lo"], row[f"{m}_hi"] = ci[m]
    row.update(clinical_columns([s], task))
    return row


def _blend_row(pool: list[tuple[dict, pd.DataFrame, dict[str, np.ndarray]]], n_boot: int,
               audits: dict, data_dir: str | Path | None = None) -> dict | None:
    """The families' seed ensembles of one (run, dataset, size) blended with weights fitted on
    validation (bench.ensemble), as an entry of its own; None when the blend is not kept. Its
    cost is the sum of its members' (their searches and seeds)."""
    if len(pool) < 2:
        return None
    task = pool[0][0]["task"]
    members = {single["family"]: scores for single, _, scores in pool}
    b = ensemble.blend(members, task)
    if b is None:
        return None
    used = [(single, ok) for single, ok, _ in pool if single["family"] in b["weights"]]
    used.sort(key=lambda u: -b["weights"][u[0]["family"]])
    test = metrics.evaluate(b["test_labels"], b["test_scores"], task)
    val = metrics.evaluate(b["val_labels"], b["val_scores"], task)
    ci = metrics.ensemble_bootstrap_ci(
        b["test_labels"], [(w, members[f]["test_members"]) for f, w in b["weights"].items()],
        task, n_boot=n_boot)
    first = used[0][0]
    row = {k: first[k] for k in ("run", "dataset", "size", "task", "run_wall_s",
                                 "baseline_note", "official_data")}
    name = " + ".join(f"{s['family']} ×{len(ok)} ({b['weights'][s['family']]:.1f})"
                      for s, ok in used)
    row.update(family=f"{name} ens", kind="ensemble",
               weights=json.dumps(b["weights"]),
               n_seeds=sum(len(ok) for _, ok in used),
               n_failed=sum(int(s["n_failed"]) for s, _ in used),
               trials=sum(int(s["trials"]) for s, _ in used),
               device_s=sum(float(s["device_s"]) for s, _ in used),
               wall_s=sum(float(s["wall_s"]) for s, _ in used),
               test_acc_mean=test["acc"], test_auc_mean=test["auc"], test_acc_std=math.nan,
               test_auc_std=math.nan, val_auc_mean=val["auc"],
               val_score=selection.score(val["auc"], val["acc"]))
    for m in METRICS:
        row[f"{m}_lo"], row[f"{m}_hi"] = ci[m]
    row.update(_leakfree(used[0][1], task, audits, scores=b, data_dir=data_dir))
    row.update(clinical_columns([b], task))
    return row


def entry_weights(entry: pd.Series | dict) -> dict[str, float]:
    """The trained families behind a board entry and their weights: one family with weight 1
    for a single model or a seed ensemble (`cnn_small ×3 ens` -> cnn_small), the blend's
    weights for a blend."""
    raw = entry.get("weights")
    if isinstance(raw, str) and raw:
        return {str(k): float(v) for k, v in json.loads(raw).items()}
    fam = str(entry["family"])
    return {fam.rsplit(" ×", 1)[0] if entry.get("kind") == "ensemble" else fam: 1.0}


def entry_tta(entry: pd.Series | dict) -> str:
    """The test-time transform an entry averages in ("hflip"), or "" (boards from before the
    column, read back from disk, hold NaN there)."""
    tta = entry.get("tta")
    return tta if isinstance(tta, str) else ""


def entry_scores(seeds: pd.DataFrame, entry: pd.Series | dict) -> dict[str, np.ndarray] | None:
    """Val/test probabilities of an ensemble entry from its members' seeds (`seeds`: the final
    rows of its run and dataset): each family's seeds averaged (with the entry's test-time
    transform, if any), then the families mixed by the entry's weights. None when a member
    family has fewer than two seeds with scores on disk."""
    parts = []
    for fam, w in entry_weights(entry).items():
        s = ensemble_scores(seeds[(seeds["family"] == fam) & (seeds["status"] == "ok")],
                            tta=entry_tta(entry))
        if s is None:
            return None
        parts.append((w, s))
    mixed = {k: sum(w * s[k] for w, s in parts) for k in ("val_scores", "test_scores")}
    return {**mixed, "val_labels": parts[0][1]["val_labels"],
            "test_labels": parts[0][1]["test_labels"]}


def pickable(board: pd.DataFrame) -> pd.Series:
    """The entries the pick may choose: all but a family's single-model row where the same
    seeds also form its seed ensemble. The two are the same trained models, one averaged; the
    average is the better one in expectation, and on a validation split of 78 images which of
    the two scores higher is mostly noise (reports/archive/NOTES.md: the ensemble's validation score
    is the higher in most runs, and on re-split data its test score too). The pipeline
    reference (kind "reference") is never pickable: it is the paper's recipe, not a choice;
    nor are the context rows (majority class, prior shift: bench.context_rows)."""
    plain = board[(board["kind"] == "ensemble") & board["weights"].isna()
                  & ~board.apply(entry_tta, axis=1).astype(bool)]
    averaged = {(r["run"], r["dataset"], int(r["size"]), next(iter(entry_weights(r))))
                for _, r in plain.iterrows()}
    return pd.Series([r["kind"] in ("single", "ensemble")
                      and not (r["kind"] == "single" and (r["run"], r["dataset"],
                                                          int(r["size"]), r["family"]) in averaged)
                      for _, r in board.iterrows()], index=board.index, dtype=bool)


def mark_picked(board: pd.DataFrame) -> pd.DataFrame:
    """`picked` = True on the pickable entry with the best validation score per (run,
    dataset)."""
    board = board.copy()
    board["picked"] = False
    eligible = board[pickable(board)] if not board.empty else board
    for run, g in eligible.dropna(subset=["val_score"]).groupby("run", sort=False):
        chosen = selection.pick_entries(
            [{"dataset": r.dataset, "entry": r.family, "val_score": r.val_score}
             for r in g.itertuples()])
        for flag, entry in chosen.items():
            board.loc[(board.run == run) & (board.dataset == flag) & (board.family == entry),
                      "picked"] = True
    return board


def summarize(board: pd.DataFrame) -> pd.DataFrame:
    """Per (family, size), seed ensembles and context rows left out: mean rank by test AUC
    within each dataset (1 = best), and wins/ties/losses against every published method by
    the CI rule of `verdict`.

    Long format, one row per (family, size, method), so it stays flat for csv/json.
    """
    cols = ["family", "size", "mean_rank_auc", "n_datasets", "method", "n_compared",
            "auc_wins", "auc_ties", "auc_losses", "acc_wins", "acc_ties", "acc_losses"]
    if board.empty:
        return pd.DataFrame(columns=cols)
    published = load_published()
    order = {m: i for i, m in enumerate(dict.fromkeys(published["method"]))}
    if "kind" in board:  # trained families only: no ensembles, no context rows
        board = board[board["kind"].isin(["single", "reference"])]
    b = board.assign(rank=board.groupby("dataset")["test_auc_mean"].rank(ascending=False,
                                                                          method="average"))
    rows = []
    for (family, size), g in b.groupby(["family", "size"], sort=True):
        counts: dict[str, dict[str, int]] = {}
        for r in g.itertuples():
            cand, _, _ = comparable_baselines(published, r.dataset, int(size),
                                              official_row(r))
            for p in cand.itertuples():
                c = counts.setdefault(p.method, {k: 0 for k in cols[5:]})
                c["n_compared"] += 1
                for m in METRICS:
                    v = verdict(getattr(r, f"{m}_lo"), getattr(r, f"{m}_hi"), getattr(p, m))
                    key = {"above": "wins", "below": "losses", "within noise": "ties"}.get(v)
                    if key:
                        c[f"{m}_{key}"] += 1
        for method in sorted(counts, key=lambda k: order.get(k, len(order))):
            rows.append({"family": family, "size": int(size), "mean_rank_auc": g["rank"].mean(),
                         "n_datasets": g["dataset"].nunique(), "method": method,
                         **counts[method]})
    return (pd.DataFrame.from_records(rows, columns=cols)
            .sort_values(["mean_rank_auc", "family", "size"], kind="stable")
            .reset_index(drop=True))


def _fmt(x: float, spec: str = ".3f") -> str:
    return "-" if x is None or pd.isna(x) else format(x, spec)


def _cell(r: pd.Series, m: str) -> str:
    """`0.871 ± 0.012 [0.841, 0.902]`: mean ± std over seeds [95% bootstrap CI]."""
    mean, std = r[f"test_{m}_mean"], r[f"test_{m}_std"]
    if pd.isna(mean):
        return "-"
    s = _fmt(mean) + ("" if pd.isna(std) else f" ± {std:.3f}")
    lo, hi = r[f"{m}_lo"], r[f"{m}_hi"]
    return s if pd.isna(lo) else f"{s} [{lo:.3f}, {hi:.3f}]"


def _vs(r: pd.Series, m: str, which: str) -> str:
    """Published value beside ours: `0.863 (+0.008, within noise)`, verdicts in bold."""
    if which == "best":
        val, method = r[f"best_{m}"], r[f"best_{m}_method"]
        head = f"{_fmt(val)} {method}" if method else "-"
    else:
        val = r[f"ref_{m}"]
        head = _fmt(val)
    if pd.isna(val):
        return head
    delta = _fmt(r[f"delta_{m}_vs_{which}"], "+.3f")
    if which == "best" and r.get("best_" + m + "_method") != r.get("ref_method"):
        return f"{head} ({delta}, exploratory)"  # one verdict per dataset: the reference's
    v = r[f"verdict_{m}_vs_{which}"]
    v = f"**{v}**" if v in ("above", "below") else v
    return f"{head} ({delta}, {v})"


def _md(board: pd.DataFrame) -> str:
    if board.empty:
        return "_No final runs to show._\n"
    out = ["Cells: mean ± std over seeds [95% bootstrap CI over test images and seeds]. "
           "Published values beside ours with (ours − published, verdict); only the declared "
           "reference gets a verdict, **above**/**below** when our CI excludes the published "
           "number; other differences are exploratory. "
           "`×N ens`: the N seeds' probabilities averaged (CI over test images and over which "
           "seeds form the ensemble); "
           "`a ×N (w) + b ×M (v) ens`: the families' seed ensembles blended with weights "
           "fitted on validation, kept only when that beats one family out of fold. "
           "`×N ens +hflip`: the seed ensemble with each image also scored mirrored left-right "
           "(test-time flip), shown only when the paired bootstrap CI of its validation gain "
           "lies above zero. "
           "**picked**: the entry the run chooses per dataset, by validation score only "
           "(a family's seeds compete as their ensemble, not as single models)."
           + (f" `{REFERENCE_ENTRY}`: the paper's recipe trained by this pipeline."
              if (board["kind"] == "reference").any() else "")
           + (" `majority class (train)` and `+prior shift` rows are context, never picked."
              if board["kind"].isin(["baseline", "prior-shift"]).any() else ""), ""]
    multi_run = board["run"].nunique() > 1
    for flag, g in board.groupby("dataset", sort=True):
        refs = g.loc[g["ref_method"] != "", "ref_method"].unique()
        ref = refs[0] if len(refs) == 1 else "reference"
        out += [f"### {flag} ({g['task'].iloc[0]})", ""]
        leak = bool(g["leakfree_acc_mean"].notna().any())
        # columns of published numbers only where some run used the official files
        pub = any(official_row(r) for r in g.itertuples())
        head = (["run"] if multi_run else []) + [
            "family", "size", "seeds", "ACC", "AUC",
            *(["leakage-free ACC / AUC"] if leak else []),
            *([f"ACC: {ref}", f"AUC: {ref}", "ACC: best published", "AUC: best published"]
              if pub else []), "trials", "device-s"]
        out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for _, r in g.iterrows():
            seeds = f"{r['n_seeds']}" + (f" (+{r['n_failed']} failed)" if r["n_failed"] else "")
            entry = f"**{r['family']}** (picked)" if r.get("picked") is True else r["family"]
            cells = ([r["run"]] if multi_run else []) + [
                entry, str(r["size"]), seeds, _cell(r, "acc"), _cell(r, "auc"),
                *([_leak_cell(r)] if leak else []),
                *([_vs(r, "acc", "resnet18"), _vs(r, "auc", "resnet18"),
                   _vs(r, "acc", "best"), _vs(r, "auc", "best")] if pub else []),
                str(r["trials"]), _fmt(r["device_s"], ".0f")]
            out.append("| " + " | ".join(cells) + " |")
        notes = [n for n in g["baseline_note"].unique() if n]
        if len(refs) > 1:
            by_size = dict(zip(g["size"], g["ref_method"], strict=True))
            notes.append("reference by size: " + ", ".join(f"{s} px: {m}"
                                                           for s, m in sorted(by_size.items())))
        if leak:
            notes.append("leakage-free: test metrics (seed mean) without the test images that "
                         "have an exact or near copy in train/val (`medbench audit`); verdicts "
                         "stay on the official split")
        out += [""] + [f"Note: {n}." for n in notes] + ([""] if notes else [])
    return "\n".join(out).rstrip() + "\n"


def _leak_cell(r: pd.Series) -> str:
    """`0.861 / 0.902 (52 of 156 removed)`."""
    if pd.isna(r["leakfree_acc_mean"]):
        return "-"
    return (f"{_fmt(r['leakfree_acc_mean'])} / {_fmt(r['leakfree_auc_mean'])} "
            f"({int(r['leakfree_n_removed'])} of "
            f"{int(r['leakfree_n_removed'] + r['leakfree_n_test'])} removed)")


def format_summary(summary: pd.DataFrame) -> str:
    """`summarize` as one markdown table: a row per (family, size), a column per published
    method holding `W/T/L` by the CI rule as `AUC · ACC`."""
    if summary.empty:
        return "_No final runs to summarise._\n"
    methods = list(dict.fromkeys(summary["method"]))
    out = ["Mean rank by test AUC within each dataset (1 = best); then wins/ties/losses "
           "(W/T/L) against each published method by the CI rule, as `AUC · ACC`.", "",
           "| family | size | mean rank | datasets | " + " | ".join(methods) + " |",
           "|" + "---|" * (4 + len(methods))]
    for (fam, size), g in summary.groupby(["family", "size"], sort=False):
        by = g.set_index("method")
        cells = [f"{by.loc[m, 'auc_wins']}/{by.loc[m, 'auc_ties']}/{by.loc[m, 'auc_losses']} · "
                 f"{by.loc[m, 'acc_wins']}/{by.loc[m, 'acc_ties']}/{by.loc[m, 'acc_losses']}"
                 if m in by.index else "-" for m in methods]
        out.append(f"| {fam} | {size} | {g['mean_rank_auc'].iloc[0]:.2f} | "
                   f"{g['n_datasets'].iloc[0]} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def format_board(board: pd.DataFrame, fmt: str = "md") -> str:
    """The board as markdown (one table per dataset), CSV, or JSON records."""
    if fmt == "md":
        return _md(board)
    if fmt == "csv":
        return board.to_csv(index=False)
    if fmt == "json":
        return board.to_json(orient="records", indent=2) + "\n"
    raise UserError(f"Unknown leaderboard format {fmt!r}: use one of md, csv, json.")


def is_search_only(run_dir: Path) -> bool:
    """A `medbench search` directory: trials, but no final seeded runs."""
    return RunDir(run_dir).is_search_only()


def format_best_trials(run_dirs: RunDirs, top: int = 3, fmt: str = "md") -> str:
    """For search-only runs: each (dataset, family)'s best `top` trials by validation AUC.

    Clearly labelled, because these are single search trials on seed 0, scored on validation
    only: no fresh seeds, no test metrics, nothing to hold against the published numbers.
    """
    trials = load_trials(run_dirs)
    if trials.empty:
        raise UserError("no search trials in the given run directories; pass a directory made "
                        "by `medbench search` or `medbench run`")
    ok = trials[trials["status"] == "ok"].copy()
    ok["best_val_auc"] = pd.to_numeric(ok["best_val_auc"], errors="coerce")
    cols = ["run", "dataset", "family", "trial_id", "best_val_auc", "best_val_acc",
            "best_epoch", "epochs_run"]
    best = (ok.sort_values("best_val_auc", ascending=False)
            .groupby(["run", "dataset", "family"], sort=True).head(top)
            .sort_values(["run", "dataset", "family", "best_val_auc"],
                         ascending=[True, True, True, False])[cols])
    counts = trials.groupby(["dataset", "family"])["status"].value_counts().unstack(fill_value=0)
    if fmt == "json":
        return best.to_json(orient="records", indent=2)
    if fmt == "csv":
        return best.to_csv(index=False)
    note = (f"**Search only (no final phase): the best {top} search trials per dataset and "
            "family by validation AUC.** Single trials on the search seed, validation scores "
            "only; not a leaderboard (run `medbench run` for fresh seeds, test metrics and "
            "verdicts).")
    lines = [note, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in best.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v)
                                       for v in r) + " |")
    lines += ["", "Trials per experiment: " + "; ".join(
        f"{d}/{f}: " + ", ".join(f"{n} {s}" for s, n in row.items() if n)
        for (d, f), row in counts.iterrows())]
    return "\n".join(lines)

"""The report's results section: per dataset, the pick beside what a reader judges it by.

Each dataset gets one table: the picked entry (chosen on validation only), the same entry
adjusted to the test split's class prior (transductive, never picked), the pipeline reference
(the paper's ResNet-18 recipe trained here, when the run has one), the majority-class row and
the published reference number. Columns: official ACC and AUC with 95% CIs, balanced accuracy,
sensitivity and specificity (binary) or quadratic-weighted kappa (ordinal) or the lowest class
recall, the ACC at a validation-fitted threshold, and the leakage-free ACC / AUC. Under it, the
one verdict against the declared reference, and a sentence on leakage. Differences to every
other published method follow as an exploratory table, without verdicts.
"""

from __future__ import annotations

import json

import pandas as pd

from bench import metrics
from bench.baselines import load_published
from bench.leaderboard import comparable_baselines, official_row, verdict
from bench.results import REFERENCE_ENTRY


def _f(x: object, spec: str = ".3f") -> str:
    return "-" if x is None or pd.isna(x) else format(x, spec)


def _with_ci(r: pd.Series, m: str) -> str:
    mean, std, lo, hi = (r[f"test_{m}_mean"], r.get(f"test_{m}_std"), r[f"{m}_lo"],
                         r[f"{m}_hi"])
    if pd.isna(mean):
        return "-"
    s = _f(mean) + ("" if std is None or pd.isna(std) else f" ± {std:.3f}")
    return s if pd.isna(lo) else f"{s} [{lo:.3f}, {hi:.3f}]"


def _task_column(task: str, flag: str) -> str:
    """Binary: recall of class 1 / class 0, named, since 'sensitivity' is the recall of class 1
    whichever class is the disease (BreastMNIST's class 1 is normal/benign, its class 0
    malignant)."""
    if task == metrics.BINARY:
        import medmnist

        names = medmnist.INFO[flag]["label"]
        return (f"sensitivity / specificity (recall of {names['1']} / of {names['0']})")
    if task == "ordinal-regression":
        return "QWK"
    return "lowest class recall"


def _task_cell(r: pd.Series, task: str) -> str:
    if task == metrics.BINARY:
        return f"{_f(r.get('sensitivity'))} / {_f(r.get('specificity'))}"
    if task == "ordinal-regression":
        return _f(r.get("qwk"))
    return _f(r.get("min_recall"))


def _leak_cell(r: pd.Series) -> str:
    if pd.isna(r.get("leakfree_acc_mean")):
        return "-"
    return f"{_f(r['leakfree_acc_mean'])} / {_f(r['leakfree_auc_mean'])}"


def _role(r: pd.Series) -> str:
    kind, name = str(r["kind"]), str(r["family"])
    if r.get("picked") is True:
        return f"**{name}** (picked on validation)"
    if kind == "prior-shift":
        prior = r.get("test_prior")
        est = ""
        if isinstance(prior, str) and prior:
            est = "; estimated test prior " + ", ".join(f"{p:.2f}" for p in json.loads(prior))
        return f"{name} (never picked{est})"
    if kind == "reference":
        return (f"{REFERENCE_ENTRY}: the paper's ResNet-18 recipe trained by this pipeline, "
                f"{int(r['n_seeds'])} seeds")
    return name


def _rows_of(g: pd.DataFrame) -> list[pd.Series]:
    """The picked entry, its prior-shift twin, the pipeline reference, the majority row."""
    order = [g[g["picked"].fillna(False).astype(bool)], g[g["kind"] == "prior-shift"],
             g[g["kind"] == "reference"], g[g["kind"] == "baseline"]]
    return [r for part in order for _, r in part.iterrows()]


def results_md(board: pd.DataFrame, n_test: dict[str, int]) -> list[str]:
    """One table per dataset (see the module docstring), for the picked entries of `board`."""
    if board.empty or not board["picked"].fillna(False).astype(bool).any():
        return ["_No successful final runs: nothing to report._", ""]
    published = load_published()
    out: list[str] = []
    for flag, g in board.groupby("dataset", sort=True):
        pick_rows = g[g["picked"].fillna(False).astype(bool)]
        if pick_rows.empty:
            continue
        pick = pick_rows.iloc[0]
        task, size = str(pick["task"]), int(pick["size"])
        cand, ref, _ = comparable_baselines(published, flag, size, official_row(pick))
        n = n_test.get(flag)
        head = f"### {flag} ({task}" + (f", {n} test images" if n else "") + ")"
        cols = ["entry", "test ACC [95% CI]", "test AUC [95% CI]", "balanced ACC",
                _task_column(task, str(flag)), "ACC, val-tuned threshold", "leakage-free ACC / AUC"]
        out += [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in _rows_of(g):
            out.append("| " + " | ".join([
                _role(r), _with_ci(r, "acc"), _with_ci(r, "auc"), _f(r.get("bal_acc")),
                _task_cell(r, task), _f(r.get("thr_acc")), _leak_cell(r)]) + " |")
        ref_rows = cand[cand["method"] == ref] if ref else cand.iloc[0:0]
        for _, p in ref_rows.iterrows():
            out.append(f"| {p['method']}, published (mean of ≥3 runs, no spread given) | "
                       f"{float(p['acc']):.3f} | {float(p['auc']):.3f} | - | - | - | - |")
        out += ["", *_verdict_lines(pick, ref_rows, ref), *_majority_lines(g, ref_rows),
                *_leak_lines(pick), *_never_predicted(pick), ""]
    return out


def _verdict_lines(pick: pd.Series, ref_rows: pd.DataFrame, ref: str) -> list[str]:
    if ref_rows.empty:
        return ["No published number applies (the files are not the MedMNIST release, or "
                "no published row is for this size): no verdict."]
    p = ref_rows.iloc[0]
    cells = []
    for m in ("acc", "auc"):
        v = verdict(pick[f"{m}_lo"], pick[f"{m}_hi"], float(p[m]))
        v = f"**{v}**" if v in ("above", "below") else v
        cells.append(f"{m.upper()} {pick[f'test_{m}_mean'] - float(p[m]):+.3f} ({v})")
    return [f"Verdict against the declared reference, {ref}: " + "; ".join(cells) + "."]


def _majority_lines(g: pd.DataFrame, ref_rows: pd.DataFrame) -> list[str]:
    """Say so when always predicting the training majority already matches a published ACC."""
    maj = g[g["kind"] == "baseline"]
    if maj.empty or ref_rows.empty:
        return []
    acc, pub = float(maj["test_acc_mean"].iloc[0]), float(ref_rows.iloc[0]["acc"])
    if acc < pub:
        return []
    return [f"Always predicting the training majority scores ACC {acc:.3f}, at or above the "
            f"published {ref_rows.iloc[0]['method']} ({pub:.3f}): on this test set ACC says "
            "little on its own; read AUC, balanced ACC and sensitivity."]


def _leak_lines(pick: pd.Series) -> list[str]:
    removed = pick.get("leakfree_n_removed")
    if removed is None or pd.isna(removed):
        return ["No data audit for this file: leakage-free numbers are not available "
                "(`medbench audit` needs the data file; pass `--data-dir`)."]
    total = int(removed + pick["leakfree_n_test"])
    if int(removed) == 0:
        return ["The data audit finds no test image with an exact or near copy in train/val."]
    return [f"Leakage: {int(removed)} of {total} test images have an exact or near copy in "
            f"train/val (`medbench audit`). Without them the pick scores ACC "
            f"{_f(pick['leakfree_acc_mean'])} / AUC {_f(pick['leakfree_auc_mean'])} (with them "
            f"{_f(pick['test_acc_mean'])} / {_f(pick['test_auc_mean'])}). The published "
            "numbers were computed on the same split, copies included."]


def _never_predicted(pick: pd.Series) -> list[str]:
    never = pick.get("never_predicted")
    if isinstance(never, str) and never:
        return [f"The pick never predicts class(es) {never} on the test set."]
    return []


def exploratory_md(board: pd.DataFrame) -> list[str]:
    """Per dataset on the official files: the pick minus every published method of a
    comparable size, our CI shifted by the published number; exploratory (no verdicts, no
    multiplicity correction) except the declared reference's, which the results table gives."""
    published = load_published()
    out: list[str] = []
    for _, r in board[board["picked"].fillna(False).astype(bool)].iterrows():
        cand, ref, _ = comparable_baselines(published, r["dataset"], int(r["size"]),
                                            official_row(r))
        if cand.empty:
            continue
        out += [f"**{r['dataset']}**: {r['family']}", "",
                "| published method | ACC | AUC | ACC: ours − published [CI] | "
                "AUC: ours − published [CI] |", "|---|---|---|---|---|"]
        for _, p in cand.iterrows():
            cells = []
            for m in ("acc", "auc"):
                pub = float(p[m])
                cells.append(f"{r[f'test_{m}_mean'] - pub:+.3f} "
                             f"[{r[f'{m}_lo'] - pub:+.3f}, {r[f'{m}_hi'] - pub:+.3f}]")
            name = f"{p['method']} (declared reference)" if p["method"] == ref else p["method"]
            out.append(f"| {name} | {float(p['acc']):.3f} | {float(p['auc']):.3f} | "
                       f"{cells[0]} | {cells[1]} |")
        out.append("")
    if not out:
        return []
    return ["### The pick against every published method (exploratory)", "",
            "Ours minus the published mean, with our 95% CI shifted by it. Only the declared "
            "reference gets a verdict (above); these comparisons are many and uncorrected, so "
            "an interval clear of zero here is a lead, not a result.", "", *out]

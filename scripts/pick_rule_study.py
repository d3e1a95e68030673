"""Should a family's single-model row compete for the pick, or only its seed ensemble?

The two rows hold the same trained seeds; the ensemble averages their probabilities. Comparing
them on a validation split of 78 images lets noise choose. This script reads finished runs
(nothing is trained) and writes, per (run, dataset, family), the validation score and test
ACC/AUC of the single-model row (seed mean) and of its `×N ens` row, plus a summary:

- on validation, over every run given: how often the ensemble scores higher;
- on test, over the runs on files that are *not* the official release (re-splits,
  `scripts/resplit.py`): how often the ensemble is ahead. Official test splits are left out of
  the summary on purpose: a default is never chosen on them.

    python scripts/pick_rule_study.py RUN_DIR [RUN_DIR ...] --out reports/pick-rule-study.json
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import pandas as pd

from bench.leaderboard import build_leaderboard


def pairs(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per family that has both a single-model row and a plain seed-ensemble row."""
    rows = []
    for run in run_dirs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            board = build_leaderboard(run, n_boot=20)  # CIs are not used here
        for _, single in board[board["kind"] == "single"].iterrows():
            ens = board[(board["dataset"] == single["dataset"])
                        & (board["family"] == f"{single['family']} ×{single['n_seeds']} ens")]
            if len(ens) != 1:
                continue
            e = ens.iloc[0]
            rows.append({"run": Path(run).name, "dataset": single["dataset"],
                         "family": single["family"], "official_data": bool(single["official_data"]),
                         "val_single": single["val_score"], "val_ens": e["val_score"],
                         **{f"test_{m}_{k}": r[f"test_{m}_mean"] for m in ("acc", "auc")
                            for k, r in (("single", single), ("ens", e))}})
    return pd.DataFrame(rows)


def ahead(d: pd.DataFrame, a: str, b: str) -> dict:
    diff = d[a] - d[b]
    return {"n": len(d), "mean_difference": round(float(diff.mean()), 4),
            "ensemble_ahead": int((diff > 0).sum()), "ensemble_behind": int((diff < 0).sum()),
            "tied": int((diff == 0).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    d = pairs(args.runs)
    other = d[~d["official_data"]]
    summary = {"validation_all_runs": ahead(d, "val_ens", "val_single"),
               "test_acc_not_official": ahead(other, "test_acc_ens", "test_acc_single"),
               "test_auc_not_official": ahead(other, "test_auc_ens", "test_auc_single")}
    args.out.write_text(json.dumps({"summary": summary, "pairs": d.round(4).to_dict("records")},
                                   indent=1) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()

"""Ranking our entries and the published methods across datasets: the datasets x competitors
table of test numbers, mean ranks, the Friedman test and the Nemenyi critical difference
(Demsar 2006).

Why apart from bench.report: the statistics behind the critical-difference diagram are tested
on their own (ties, few datasets); the report only writes them up and bench.figures draws them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from bench.baselines import load_published
from bench.figures import entry_label as _label
from bench.leaderboard import comparable_baselines, official_row


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

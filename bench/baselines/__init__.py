"""The published MedMNIST v2 table (Yang et al., Scientific Data 10:41, 2023) as data.

Kept as a CSV shipped inside the package so the leaderboard is a pure function of a run directory
and this file; see README.md here for the citation and how to read the numbers.
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

COLUMNS = ["dataset", "flag", "method", "auc", "acc"]
_FILE = "medmnist_v2.csv"


def load_published() -> pd.DataFrame:
    """The published table, checked: every `medmnist.INFO` flag present, values in [0, 1].

    A silently missing or garbled row would turn into a missing baseline or a false verdict, so
    this fails loudly instead.
    """
    import medmnist

    with resources.files(__name__).joinpath(_FILE).open("r") as fh:
        df = pd.read_csv(fh)
    if list(df.columns) != COLUMNS:
        raise ValueError(f"{_FILE}: expected columns {COLUMNS}, found {list(df.columns)}")
    missing = sorted(set(medmnist.INFO) - set(df["flag"]))
    if missing:
        raise ValueError(f"{_FILE} has no published numbers for {missing}; "
                         "add their rows from the MedMNIST v2 paper")
    values = df[["auc", "acc"]]
    bad = df[values.isna().any(axis=1) | ~values.apply(lambda c: c.between(0, 1)).all(axis=1)]
    if len(bad):
        raise ValueError(f"{_FILE}: AUC/ACC outside [0, 1] or missing in rows:\n{bad}")
    if df.duplicated(["flag", "method"]).any():
        raise ValueError(f"{_FILE}: duplicate (flag, method) rows")
    return df

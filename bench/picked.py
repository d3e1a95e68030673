"""The entry a run deploys, and what it is made of: one answer to "which model?" for every
consumer (`medbench predict`, the web page, the report, W&B's leaderboard table).

Why this module: "best" used to be decided in several places by different rules; the board
reported a seed ensemble while `predict` served one seed of it, chosen by mean validation AUC.
Here nothing is re-derived: the choice is the board's `picked` marker
(`bench.leaderboard.mark_picked`: `bench.selection.pick_entries` over the pickable entries'
validation score), and an entry's members and weights are the board's own
(`entry_weights`, `entry_tta`), so what is served is what the board scored:

* a seed ensemble (`cnn_small ×5 ens`): every seed, each weighted 1/N (the board averages the
  seeds' probabilities, `ensemble_scores`);
* a blend (`a ×N (w) + b ×M (v) ens`): each family's seeds weighted w/N, v/M (`entry_scores`);
* `... ens +hflip`: the same members, each scored on the image and its mirror (`tta`);
* a single-model entry (its seeds as single models, reported as their mean): the seed with the
  best validation AUC, as the report's representative seed -- one model has to answer. With
  one seed (the usual case where a single entry is the pick) that is simply the model.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import UserError

SERVABLE_KINDS = ("single", "ensemble", "reference")  # context rows are not models
# CIs never choose (the pick reads `val_score` only), so a board built to find the pick needs
# only a token bootstrap; see `run_board`.
PICK_N_BOOT = 20


@dataclass(frozen=True)
class Member:
    """One trained model of an entry and the share of the entry's probabilities it carries."""

    run_dir: Path  # the seed's training-run directory (holds model.pt)
    family: str
    seed: int | None
    weight: float

    def as_dict(self) -> dict[str, Any]:
        return {"model": str(self.run_dir), "family": self.family, "seed": self.seed,
                "weight": round(self.weight, 6)}


@dataclass(frozen=True)
class Entry:
    """A board entry as something to serve: its name, whether the run picked it, its members."""

    run_dir: Path  # the run directory (root)
    dataset: str
    size: int
    name: str  # the board's `family` column
    kind: str  # single, ensemble or reference (bench.leaderboard BOARD_COLUMNS)
    tta: str  # "hflip" when each member also scores the mirrored input, else ""
    picked: bool
    val_score: float
    members: tuple[Member, ...]

    def as_dict(self) -> dict[str, Any]:
        """What `medbench predict --format json` prints about the model it used."""
        return {"entry": self.name, "kind": self.kind, "picked": self.picked,
                "tta": self.tta or None, "members": [m.as_dict() for m in self.members]}


def canonical_name(name: str) -> str:
    """`cnn_small x5 ens` -> `cnn_small ×5 ens`: the board writes `×`, which few keyboards
    have; an `x` before a seed count is read as it."""
    return re.sub(r"(?<= )x(?=\d)", "×", name.strip())


def run_board(run_dir: Path | str, dataset: str | None = None) -> pd.DataFrame:
    """The run's leaderboard as far as choosing needs it: `build_leaderboard` itself (so the
    same rows, validation scores and `picked` marker), with a token bootstrap and no data
    files, and only `dataset`'s rows when one is given. None of these can change the pick:
    `val_score`, the blend and the flip decision are computed without `n_boot`, the rows that
    need the data files (leak-free columns, majority-class and prior-shift rows) are never
    pickable, and the pick is per dataset (`mark_picked`). Without them building a board takes
    seconds, never an audit or a bootstrap of a dataset nobody asked about."""
    from bench.leaderboard import build_leaderboard

    with tempfile.TemporaryDirectory(prefix="medbench-pick-") as empty:
        return build_leaderboard(Path(run_dir), n_boot=PICK_N_BOOT, data_dir=empty,
                                 datasets=None if dataset is None else [dataset])


def _seeds(run_dir: Path) -> pd.DataFrame:
    from bench.leaderboard import load_seeds

    return load_seeds(run_dir)


def representative_seed(seeds: pd.DataFrame) -> pd.Series | None:
    """A single-model entry's seed that answers for it: the one with the best validation AUC
    (one real model, chosen on validation). The report shows this seed's figures, so the
    page and `predict` serve the same one."""
    if seeds.empty:
        return None
    return seeds.loc[pd.to_numeric(seeds["val_auc"]).idxmax()]


def entry_from_row(row: pd.Series, seeds: pd.DataFrame) -> Entry:
    """A board row and its run's final rows (`load_seeds`) -> the entry with its members."""
    from bench.leaderboard import entry_tta, entry_weights

    mine = seeds[(seeds["run"] == row["run"]) & (seeds["dataset"] == row["dataset"])
                 & (seeds["size"].astype(int) == int(row["size"])) & (seeds["status"] == "ok")]
    if mine.empty:
        raise UserError(f"{row['family']} ({row['dataset']}): no finished seed to serve")
    root = Path(str(mine.iloc[0]["root"]))
    members: list[Member] = []
    for family, weight in entry_weights(row).items():
        own = mine[mine["family"] == family].sort_values("seed", kind="stable")
        if row["kind"] != "ensemble" and len(own):  # one model answers for a single entry
            own = own.loc[[representative_seed(own).name]]
        if own.empty:
            raise UserError(f"{row['family']} ({row['dataset']}): its member family {family} "
                            "has no finished seed in final.parquet")
        members += [Member(root / str(r.run_dir), str(family),
                           None if pd.isna(r.seed) else int(r.seed), float(weight) / len(own))
                    for r in own.itertuples()]
    return Entry(root, str(row["dataset"]), int(row["size"]), str(row["family"]),
                 str(row["kind"]), entry_tta(row), bool(row.get("picked", False)),
                 float(row["val_score"]) if pd.notna(row.get("val_score")) else float("nan"),
                 tuple(members))


def servable_rows(board: pd.DataFrame, run: str, dataset: str) -> pd.DataFrame:
    """The board rows of one (run, dataset) that can be served, the picked one first, then by
    validation score; context rows (majority class, prior shift) are not models."""
    rows = board[(board["run"] == run) & (board["dataset"] == dataset)
                 & board["kind"].isin(SERVABLE_KINDS) & (board["n_seeds"] > 0)]
    rows = rows.assign(_p=rows["picked"].fillna(False).astype(bool),
                       _v=pd.to_numeric(rows["val_score"], errors="coerce"))
    rows = rows.sort_values(["_p", "_v"], ascending=False, na_position="last", kind="stable")
    return rows.drop(columns=["_p", "_v"])


def board_entries(board: pd.DataFrame, seeds: pd.DataFrame, run: str,
                  dataset: str) -> list[Entry]:
    """`servable_rows` as entries with their members."""
    return [entry_from_row(r, seeds) for _, r in servable_rows(board, run, dataset).iterrows()]


def _dataset(seeds: pd.DataFrame, run_dir: Path, dataset: str | None) -> str:
    """The dataset asked for, or the run's only one (else a user error naming the choices)."""
    ok = seeds[seeds["status"] == "ok"]
    if dataset is None:
        flags = sorted(ok["dataset"].unique())
        if len(flags) != 1:
            raise UserError(f"{run_dir} has models for {', '.join(flags) or 'no dataset'}; "
                            "choose one with --dataset")
        return str(flags[0])
    if dataset not in set(ok["dataset"]):
        raise UserError(f"{run_dir} has no finished final model for {dataset}; check "
                        "`medbench leaderboard`")
    return dataset


def run_entries(run_dir: Path | str, dataset: str | None = None) -> list[Entry]:
    """The servable entries of a run directory's dataset (`board_entries`), picked first."""
    run_dir = Path(run_dir)
    seeds = _seeds(run_dir)
    flag = _dataset(seeds, run_dir, dataset)
    board = run_board(run_dir, flag)
    entries = board_entries(board, seeds, str(seeds["run"].iloc[0]), flag)
    if not entries:
        raise UserError(f"{run_dir} has no finished final model for {flag}; check "
                        "`medbench leaderboard`")
    return entries


def picked_entry(run_dir: Path | str, dataset: str | None = None) -> Entry:
    """The entry the run picked for `dataset` (default: the run's only dataset)."""
    return choose(run_entries(run_dir, dataset))


def entry_by_name(run_dir: Path | str, dataset: str | None, name: str) -> Entry:
    """The run's entry called `name` (the board's name; `x5` may stand for `×5`)."""
    return choose(run_entries(run_dir, dataset), name=name)


def choose(entries: list[Entry], name: str | None = None,
           family: str | None = None) -> Entry:
    """From `entries` (picked first): the one named `name`, else `family`'s (the entry the
    run's own rule picks among that family's pickable entries, usually its seed ensemble),
    else the picked one. An unknown name is one error naming the choices."""
    if name is not None and family is not None:
        raise UserError("give --entry or --family, not both")
    if name is not None:
        wanted = canonical_name(name)
        for e in entries:
            if e.name == wanted:
                return e
        raise UserError(f"no entry {name!r} for {entries[0].dataset} in {entries[0].run_dir}; "
                        "choose one of: " + ", ".join(repr(e.name) for e in entries))
    if family is not None:
        return _family_entry(entries, family)
    if not entries[0].picked:
        raise UserError(f"{entries[0].run_dir}: the board picked no entry for "
                        f"{entries[0].dataset}; choose one with --entry: "
                        + ", ".join(repr(e.name) for e in entries))
    return entries[0]


def _family_entry(entries: list[Entry], family: str) -> Entry:
    """`--family F`: among F's own entries (its single model, seed ensemble, flip ensemble),
    the one `mark_picked` picks when only they compete."""
    from bench.leaderboard import mark_picked

    own = [e for e in entries if {m.family for m in e.members} == {family}]
    if not own:
        families = sorted({m.family for e in entries for m in e.members})
        raise UserError(f"no {family} model for {entries[0].dataset} in {entries[0].run_dir}; "
                        "its families: " + ", ".join(families))
    board = pd.DataFrame([{"run": "r", "dataset": e.dataset, "size": e.size, "family": e.name,
                           "kind": e.kind, "val_score": e.val_score,
                           "weights": None, "tta": e.tta or None} for e in own])
    chosen = board[mark_picked(board)["picked"]]
    return own[int(chosen.index[0])] if len(chosen) else own[0]

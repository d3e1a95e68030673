"""Choosing configurations on validation data that is small and noisy.

BreastMNIST's validation split has 78 images and RetinaMNIST's 120: the single best search
trial is mostly the luckiest seed. The rule here: take the `top_k` trials of each
(dataset, family) by their validation score, re-train each on `seeds` more seeds at full
fidelity, and keep the configuration with the best mean over all its runs. The final phase then
picks, per dataset, the entry (family, or its seed ensemble) with the best mean validation score
over its fresh seeds.

Nothing here reads a test metric: every function takes validation columns only, and the tests
check that changing test numbers never changes a choice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from bench.budget import in_range
from bench.errors import UserError

VAL_KEYS = ("val_auc", "val_acc")


@dataclass(frozen=True)
class Selection:
    """A spec's `selection:` mapping, typed: the `top_k` best search trials per (dataset,
    family) re-run on `seeds` more seeds before the final phase (`choose_configs`). Its
    defaults are declared here and nowhere else."""

    top_k: int = 3
    seeds: int = 2

    @classmethod
    def check(cls, raw: dict[str, Any], where: str) -> None:
        if not raw:
            return
        if set(raw) - set(cls.__dataclass_fields__):
            raise UserError(f"{where}: selection takes top_k and seeds (got {sorted(raw)})")
        for key, value in raw.items():
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{where}: selection.{key} must be an integer, got {value!r}")
        s = cls(**raw)
        in_range(s.top_k, "selection.top_k", 1, 50, where)
        in_range(s.seeds, "selection.seeds", 0, 20, where)


def score(val_auc: float, val_acc: float) -> float:
    """One validation number for choosing: both official metrics count, AUC is the smoother
    (ACC at a 0.5 threshold on 78 images moves in steps of 1.3 points)."""
    return (float(val_auc) + float(val_acc)) / 2


def _trial_score(t: dict[str, Any]) -> float:
    return score(t["best_val_auc"], t["best_val_acc"])


def top_candidates(trials: list[dict[str, Any]], top_k: int) -> dict[tuple[str, str], list[dict]]:
    """Per (dataset, family): up to `top_k` successful trials, those that trained to full
    fidelity first (an ASHA-stopped trial's score is from a shorter schedule), then by score,
    then by trial id. The last key makes ties independent of the order the rows come in: a
    resumed run restores its trials in another order, and a tie broken by order would choose
    another config there, so a finished job would train again under a new name."""
    by_pair: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for t in trials:
        if t.get("status") == "ok" and t.get("best_val_auc") is not None \
                and t.get("best_val_acc") is not None:
            by_pair[(t["dataset"], t["family"])].append(t)
    out = {}
    for key, rows in by_pair.items():
        rows.sort(key=lambda t: (not _full(t), -_trial_score(t), str(t.get("trial_id", ""))))
        out[key] = rows[:max(1, top_k)]
    return out


def _full(t: dict[str, Any]) -> bool:
    epochs = (t.get("config") or {}).get("epochs")
    return epochs is not None and int(t.get("epochs_run") or 0) >= int(epochs)


def choose_configs(candidates: dict[tuple[str, str], list[dict]],
                   reruns: list[dict[str, Any]]) -> dict[tuple[str, str], dict]:
    """The config per (dataset, family) with the best mean validation score over the search
    trial (when it trained to full fidelity) and its successful re-runs (`candidate` = the
    trial id). An ASHA-stopped trial's own score is from a shorter schedule, so it is never
    averaged in; a candidate with no full-length result at all (stopped, every re-run failed)
    ranks below every candidate that has one, whatever its stopped score. Ties: the first
    candidate (top_candidates' order)."""
    runs: dict[str, list[float]] = defaultdict(list)
    for r in reruns:
        if r.get("status", "ok") == "ok" and r.get("val_auc") is not None \
                and r.get("val_acc") is not None:
            runs[r["candidate"]].append(score(r["val_auc"], r["val_acc"]))
    chosen = {}
    for key, cands in candidates.items():
        def rank(t: dict) -> tuple[bool, float]:
            values = runs[t["trial_id"]] + ([_trial_score(t)] if _full(t) else [])
            return (True, sum(values) / len(values)) if values else (False, _trial_score(t))
        chosen[key] = dict(max(cands, key=rank)["config"])
    return chosen


def pick_entries(entries: list[dict[str, Any]]) -> dict[str, str]:
    """Per dataset, the entry name with the best validation score. `entries` rows hold
    dataset, entry and val_score (a seed mean, or an ensemble's own score)."""
    best: dict[str, tuple[float, str]] = {}
    for e in entries:
        s = float(e["val_score"])
        if e["dataset"] not in best or s > best[e["dataset"]][0]:
            best[e["dataset"]] = (s, e["entry"])
    return {d: name for d, (_, name) in best.items()}

"""The search's start portfolio: configurations that worked on *other* MedMNIST subsets.

A Tuner first evaluates these (Tune's `points_to_evaluate`; Optuna enqueues them), then searches.
Honesty rule (leave-one-dataset-out): every entry of bench/search_spaces/portfolio.yaml records
`found_on`, the datasets whose data chose it, and a search of dataset D never starts from an
entry whose `found_on` names D. scripts/build_portfolio.py writes the file and says how.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench.errors import UserError

if TYPE_CHECKING:
    from bench.spaces import Param


def portfolio_file() -> Path:
    from bench.spaces import spaces_dir

    return spaces_dir() / "portfolio.yaml"


def load_entries(path: Path | None = None) -> list[dict[str, Any]]:
    """All entries, checked for shape; a missing file is an empty portfolio."""
    path = path or portfolio_file()
    if not path.is_file():
        return []
    raw = yaml.safe_load(path.read_text()) or {}
    entries = raw.get("entries") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        raise UserError(f"{path}: expected a mapping with a list `entries`")
    for i, e in enumerate(entries):
        if not (isinstance(e, dict) and isinstance(e.get("family"), str)
                and isinstance(e.get("config"), dict) and isinstance(e.get("found_on"), list)):
            raise UserError(f"{path}: entry {i} needs `family`, `config` (mapping) and "
                            "`found_on` (list of datasets)")
    return entries


def start_points(dataset: str, family: str, space: dict[str, Param], k: int,
                 entries: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Up to `k` start configurations for searching `family` on `dataset`.

    Only entries of this family, never found on `dataset`, whose every value lies inside
    `space` (the run's own space may be narrower than the one the portfolio was built on).
    Entries found on more datasets come first (more evidence). Each point holds every
    searched parameter (Tune requires it): what the entry leaves out takes the trainer's or the
    family's default, and an entry whose value or default lies outside the space is skipped."""
    if k <= 0:
        return []
    entries = load_entries() if entries is None else entries
    searched = {name: p for name, p in space.items() if p.searched}
    defaults = _defaults(family)
    usable = []
    for e in entries:
        if e["family"] != family or dataset in e["found_on"]:
            continue
        config = {**defaults, **e["config"]}
        if any(name not in config for name in searched):
            continue
        point = {name: config[name] for name in searched}
        if all(searched[n].contains(v) for n, v in point.items()):
            usable.append((len(e["found_on"]), point))
    usable.sort(key=lambda t: -t[0])  # stable: file order among equals
    out: list[dict[str, Any]] = []
    for _, point in usable:
        if point not in out:
            out.append(point)
    return out[:k]


def _defaults(family: str) -> dict[str, Any]:
    """What a run uses for an option nobody set: the trainer's defaults, then the family's."""
    from dataclasses import fields

    from bench.models import get_entry
    from bench.train import TrainConfig

    train = {f.name: f.default for f in fields(TrainConfig) if f.name != "model_hp"}
    return {**train, **get_entry(family).hparams()}

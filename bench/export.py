"""Per-image test probabilities of every board entry, in MedMNIST's evaluator CSV format.

Why: a reader who doubts a number can re-score it with `medmnist.Evaluator` (or any tool) from
the published probabilities alone, without re-training anything. Each file is what
`medmnist.Evaluator.save` writes: an index column and one column per class, no header, named
`<flag>_test_[AUC]<auc>_[ACC]<acc>@<entry>.csv`. A single-model row is a mean over seeds, so it
gets one file per seed; an ensemble, a blend, the prior-shift entry and the majority-class row
get the one probability array they are scored on.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bench import metrics
from bench.leaderboard import entry_scores, load_scores
from bench.results import write_predictions


def entry_slug(name: str) -> str:
    """A board entry's name as a file-name part: `cnn_small ×5 ens` -> `cnn_small-x5-ens`."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name.replace("×", "x").replace("+", "plus-"))
    return slug.strip("-") or "entry"


def write_entry_predictions(board: pd.DataFrame, seeds: pd.DataFrame, folder: Path,
                            extra: dict[tuple[str, str], np.ndarray] | None = None,
                            ) -> list[Path]:
    """Write the test probabilities of every entry of `board` into `folder`; `extra` holds the
    arrays of entries that are not made of final seeds (majority class, prior shift), keyed by
    (dataset, entry name). Returns the files written."""
    extra = extra or {}
    written: list[Path] = []
    for _, r in board.iterrows():
        flag, size, name = str(r["dataset"]), int(r["size"]), str(r["family"])
        mine = seeds[(seeds["run"] == r["run"]) & (seeds["dataset"] == flag)
                     & (seeds["size"] == size)]
        arrays: list[tuple[str, np.ndarray, np.ndarray]] = []  # (label, labels, scores)
        if (flag, name) in extra:
            labels = _test_labels(mine)
            if labels is not None:
                arrays.append((name, labels, extra[(flag, name)]))
        elif r["kind"] == "ensemble":
            s = entry_scores(mine, r)
            if s is not None:
                arrays.append((name, s["test_labels"], s["test_scores"]))
        else:
            for x in mine[(mine["family"] == name) & (mine["status"] == "ok")].itertuples():
                s = load_scores(x.root, x.run_dir)
                if s is not None:
                    arrays.append((f"{name}-seed{x.seed}", s["test_labels"], s["test_scores"]))
        for label, y, s in arrays:
            m = metrics.evaluate(y, s, str(r["task"]))
            written.append(write_predictions(folder, flag, size, "test", s, m["auc"], m["acc"],
                                             entry_slug(label)))
    return written


def _test_labels(seeds: pd.DataFrame) -> np.ndarray | None:
    for x in seeds[seeds["status"] == "ok"].itertuples():
        s = load_scores(x.root, x.run_dir)
        if s is not None:
            return s["test_labels"]
    return None

"""RunDir: the one reader of a run directory's files (issue 26, item 3).

Why: a run directory is written in one place (bench.experiment, bench.results, bench.trial,
bench.search, bench.train_seeds) but used to be read in many (leaderboard, studies, predict,
serve, the web page, the report), each with its own file name, its own "is this a run?" test and
its own error message. Here each file is read in one method, with one message, so a change of
layout or of a message happens once. tests/test_rundir.py scans bench/ to keep it that way.

Layout (bench.results documents the writer's side):

    final.parquet      the final seeded runs (absent: a search-only or unfinished run)
    trials.parquet     the search trials (absent: no search phase)
    selection.parquet  the re-runs of the top search trials on more seeds (optional)
    meta.json          informative: command, commit, hardware, wall time (optional)
    spec.yaml          the resolved experiment spec (optional for readers)
    spaces.yaml        the search spaces as searched (bench.run_spaces; optional)
    <run_dir>/scores.npz  per final seed, relative to the run root (final.parquet `run_dir`)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import UserError

FINAL = "final.parquet"
TRIALS = "trials.parquet"
SELECTION = "selection.parquet"
META = "meta.json"
SPEC = "spec.yaml"
SPACES_FILE = "spaces.yaml"  # written by bench.run_spaces
SCORES = "scores.npz"


class RunDir:
    """A run directory as its readers see it: each accessor reads one file, on each call (a run
    being resumed changes under its readers, so nothing is cached here)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # --- what the directory is ------------------------------------------------------------------

    def has_final(self) -> bool:
        return (self.path / FINAL).is_file()

    def has_trials(self) -> bool:
        return (self.path / TRIALS).is_file()

    def is_search_only(self) -> bool:
        """A `medbench search` directory: trials, but no final seeded runs."""
        return self.has_trials() and not self.has_final()

    def check(self) -> None:
        """UserError unless the directory holds final.parquet: what the leaderboard and report
        need before they read anything."""
        if not self.has_final():
            raise UserError(f"{self.path} is not a run directory (no final.parquet). Run "
                            "`medbench run` first, or pass a run directory such as runs/<name>.")

    def problem(self) -> str | None:
        """Why the directory cannot be served (missing, empty or unfinished, nothing finished),
        or None. `medbench serve` refuses such a directory before starting; the page shows the
        same message if the directory changes while it is served."""
        if not self.path.is_dir():
            return f"{self.path}: no such directory; pass a run directory such as runs/<name>"
        if not self.has_final():
            empty = not any(self.path.iterdir())
            return (f"{self.path} is {'empty' if empty else 'not a finished run'} (no "
                    "final.parquet); serve a directory made by `medbench run` or `medbench train "
                    "--seeds`, or wait for its run to finish")
        status = self.final(columns=["status"])["status"]
        if not (status == "ok").any():
            return (f"{self.path} has no finished final model ({len(status)} final runs, none "
                    f"ok); see `medbench leaderboard {self.path}` for the errors")
        return None

    def final_mtime(self) -> float:
        """final.parquet's modification time: the cache key that notices a finished (or
        resumed) run."""
        return (self.path / FINAL).stat().st_mtime

    # --- the tables -----------------------------------------------------------------------------

    def final(self, columns: list[str] | None = None) -> pd.DataFrame:
        """final.parquet (all columns, or `columns`); UserError when the directory has none."""
        self.check()
        return pd.read_parquet(self.path / FINAL, columns=columns)

    def trials(self) -> pd.DataFrame | None:
        """trials.parquet, or None when the run had no search phase."""
        return pd.read_parquet(self.path / TRIALS) if self.has_trials() else None

    def selection(self) -> pd.DataFrame | None:
        """selection.parquet, or None when the run had no selection phase."""
        path = self.path / SELECTION
        return pd.read_parquet(path) if path.is_file() else None

    # --- the small files ------------------------------------------------------------------------

    def meta(self) -> dict[str, Any]:
        """meta.json (empty dict if absent: it is informative, not required)."""
        path = self.path / META
        return json.loads(path.read_text()) if path.is_file() else {}

    def spec(self) -> dict[str, Any]:
        """spec.yaml as a dict (empty if absent or empty)."""
        import yaml

        text = self.text(SPEC)
        return (yaml.safe_load(text) or {}) if text is not None else {}

    def spaces(self) -> dict[str, dict[str, dict]] | None:
        """spaces.yaml (family -> parameter -> definition), or None when the run has no readable
        one (made before it was written); bench.run_spaces.family_space falls back then."""
        import yaml

        try:
            saved = yaml.safe_load((self.path / SPACES_FILE).read_text())
        except (OSError, yaml.YAMLError):
            return None
        return saved if isinstance(saved, dict) else None

    def text(self, name: str) -> str | None:
        """A small file's raw text (the report embeds spec.yaml and spaces.yaml as written), or
        None when absent."""
        path = self.path / name
        return path.read_text() if path.is_file() else None

    # --- per final seed -------------------------------------------------------------------------

    def scores(self, run_dir: str | Path) -> dict[str, np.ndarray] | None:
        """scores.npz of one final seed (`run_dir` relative to this run, as final.parquet
        records it), or None when the seed left none (failed, or from before they were saved)."""
        path = self.path / str(run_dir) / SCORES
        if not path.is_file():
            return None
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}

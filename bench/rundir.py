"""RunDir: the one reader and writer of a run directory's top-level files.

Why: a run directory used to be written from several modules (bench.experiment,
bench.train_seeds, bench.run_spaces) and read in many (leaderboard, studies, predict, serve,
the web page, the report), each with its own file name, its own "is this a run?" test and its
own error message. Here each file is read in one method and written in one, atomically, with
one message, so a change of layout or of a message happens once. tests/test_rundir.py scans
bench/ to keep it that way. Per-seed folders (model.pt, scores.npz, completion records) are
written by the trial that trains them (bench.trial, bench.search); their paths stay relative
to the run (final.parquet `run_dir`).

Layout:

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

    def previous_meta(self) -> dict[str, Any]:
        """meta.json of an earlier finished attempt, or {} when absent or unreadable (a resume
        keeps its first wall time; a damaged file must not block the resume)."""
        try:
            return self.meta()
        except (OSError, ValueError):
            return {}

    def text(self, name: str) -> str | None:
        """A small file's raw text (the report embeds spec.yaml and spaces.yaml as written), or
        None when absent."""
        path = self.path / name
        return path.read_text() if path.is_file() else None

    # --- the writer's side: each file atomically (bench.results), a full disk naming the file

    def _write(self, name: str, write: Any) -> Path:
        from bench.results import naming

        path = self.path / name
        with naming(path):
            write(path)
        return path

    def write_trials(self, rows: list[dict[str, Any]]) -> Path:
        from bench.results import TRIAL_COLUMNS, write_table

        return self._write(TRIALS, lambda p: write_table(p, rows, TRIAL_COLUMNS))

    def write_selection(self, rows: list[dict[str, Any]]) -> Path:
        from bench.results import SELECTION_COLUMNS, write_table

        return self._write(SELECTION, lambda p: write_table(p, rows, SELECTION_COLUMNS))

    def write_final(self, rows: list[dict[str, Any]]) -> Path:
        from bench.results import FINAL_COLUMNS, write_table

        return self._write(FINAL, lambda p: write_table(p, rows, FINAL_COLUMNS))

    def write_meta(self, meta: dict[str, Any]) -> Path:
        from bench.results import write_json

        return self._write(META, lambda p: write_json(p, meta))

    def write_spec(self, spec: dict[str, Any]) -> Path:
        """spec.yaml: the resolved spec as `Spec.to_dict` gives it (a resume compares it)."""
        from bench.results import write_yaml

        return self._write(SPEC, lambda p: write_yaml(p, spec))

    def write_spaces(self, spaces: dict[str, dict[str, dict]]) -> Path:
        """spaces.yaml: family -> parameter -> its YAML form (bench.run_spaces)."""
        from bench.results import write_yaml

        return self._write(SPACES_FILE, lambda p: write_yaml(p, spaces))

    # --- per final seed -------------------------------------------------------------------------

    def scores(self, run_dir: str | Path) -> dict[str, np.ndarray] | None:
        """scores.npz of one final seed (`run_dir` relative to this run, as final.parquet
        records it), or None when the seed left none (failed, or from before they were saved)."""
        path = self.path / str(run_dir) / SCORES
        if not path.is_file():
            return None
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}

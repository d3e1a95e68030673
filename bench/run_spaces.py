"""The search spaces a run searched, saved beside its spec: `spaces.yaml`, per family the
parameters after the spec's overrides (common.yaml + <family>.yaml + overrides, validated).

Why: spec.yaml names the families and overrides, not the spaces themselves, which live in
search_spaces/*.yaml and change with the code. A report or study rebuilt months later from
spec.yaml alone would describe today's ranges, not the ones the trials were drawn from. Runs
made before this file existed have none; readers then fall back to today's YAML (and
bench.studies widens it to the values the trials took).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.rundir import SPACES_FILE, RunDir
from bench.spaces import Param, load_family_space


def write_spaces(run_dir: Path, spec: Any) -> Path:
    """Write `spec`'s resolved per-family spaces (`Spec.spaces()`) to run_dir/spaces.yaml,
    atomically; returns the path."""
    return RunDir(run_dir).write_spaces({family: {name: p.as_dict() for name, p in space.items()}
                                         for family, space in spec.spaces().items()})


def read_spaces(run_dir: Path) -> dict[str, dict[str, dict]] | None:
    """The run's saved spaces (family -> parameter -> definition), or None when the run has
    no readable spaces.yaml (made before it was written)."""
    return RunDir(run_dir).spaces()


def family_space(run_dir: Path, family: str,
                 overrides: dict[str, Any] | None = None) -> dict[str, Param]:
    """One family's space as the run searched it: its saved copy when spaces.yaml holds the
    family, else today's (`load_family_space` with the spec's `overrides`), which raises
    UserError when the family can no longer be loaded."""
    saved = (read_spaces(run_dir) or {}).get(family)
    if isinstance(saved, dict):
        where = f"{Path(run_dir) / SPACES_FILE}, family {family}"
        return {name: Param.parse(name, p, where) for name, p in saved.items()}

    return load_family_space(family, overrides)

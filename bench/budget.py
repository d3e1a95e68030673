"""Compute budgets: how long one trial trains, and how a dataset's budget is split.

Why images seen, not epochs: ten epochs of BreastMNIST (546 images) are ~50 optimiser steps,
while ten epochs of PneumoniaMNIST are ~9x more. A trial's fidelity is the number of training
images it sees (`trial_images`), turned into whole epochs per dataset, clamped so a tiny set is
not trained for hundreds of epochs and a large one still gets a few. ASHA's rungs are counted
in the same unit (`images_seen`), so its grace period means the same amount of learning on
every dataset.

The dataset budget (`budget_s`) is wall-clock seconds on the resources the run was given: it is
split into the search (its Tuners, one per family, run side by side for SEARCH_FRACTION of it
on all trial slots), the selection re-runs and the final seeds; the planned and spent numbers
are written to meta.json and printed.
"""

from __future__ import annotations

import math
from typing import Any

# Fraction of a dataset's budget that the search phase may spend; the rest pays for the
# selection re-runs and the final seeds, whose cost is known once the search has timed a trial.
SEARCH_FRACTION = 0.5


def epochs_for(trial_images: int, n_train: int, min_epochs: int = 1,
               max_epochs: int = 1000) -> int:
    """Whole epochs that show a trial about `trial_images` training images."""
    if n_train <= 0:
        raise ValueError("a training split needs at least one image")
    return int(min(max_epochs, max(min_epochs, math.ceil(trial_images / n_train))))


def final_epochs(trial_epochs: int, fidelity: dict[str, Any]) -> int:
    """Epochs of a final seed: `fidelity.final_factor` times a full-fidelity trial's, capped by
    `fidelity.max_epochs`. A search trial is kept short so that many configurations fit the
    budget; the chosen configuration is trained `final_seeds` times only, so a longer schedule
    costs little there (the best-validation epoch is still the one kept and scored)."""
    factor = float(fidelity.get("final_factor", 1)) if fidelity else 1.0
    cap = int(fidelity.get("max_epochs", 1000)) if fidelity else trial_epochs
    return max(trial_epochs, min(cap, math.ceil(trial_epochs * factor)))


def search_wall_s(budget_s: float) -> float:
    """Wall seconds of a dataset's search phase (0: no limit). All Tuners of the dataset run
    side by side for that long and share every trial slot, so the search spends
    `budget_s * SEARCH_FRACTION * slots` device-seconds, whichever family's trials fill them."""
    return budget_s * SEARCH_FRACTION if budget_s > 0 else 0.0


def accounting(spec: Any, tables: dict[str, list[dict]], slots: int,
               run_wall_s: float) -> dict[str, Any]:
    """Planned vs spent per dataset, in device-seconds (trial wall x devices held; trials run
    side by side, so these add up to more than the run's wall time). Planned is `budget_s`
    times the parallel trial slots the budget was split over."""
    out: dict[str, Any] = {"budget_s_per_dataset": spec.budget_s, "slots": slots,
                           "run_wall_s": run_wall_s, "datasets": {}}
    for flag in spec.datasets:
        spent = {phase: sum(float(r.get("device_s") or 0) for r in rows
                            if r.get("dataset") == flag)
                 for phase, rows in tables.items()}
        out["datasets"][flag] = {
            "planned_device_s": spec.budget_s * slots if spec.budget_s else None,
            "search_device_s": spent.get("trials", 0.0),
            "selection_device_s": spent.get("selection", 0.0),
            "final_device_s": spent.get("final", 0.0),
            "spent_device_s": sum(spent.values())}
    return out

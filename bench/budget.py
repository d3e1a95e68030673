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
from dataclasses import dataclass
from typing import Any

from bench.errors import UserError

# Fraction of a dataset's budget that the search phase may spend; the rest pays for the
# selection re-runs and the final seeds, whose cost is known once the search has timed a trial.
SEARCH_FRACTION = 0.5


@dataclass(frozen=True)
class Fidelity:
    """How long a trial trains, in one form for every spec. A spec's `fidelity:` mapping
    (typed here, its defaults declared here and nowhere else): trials train for a number of
    images seen (`trial_images`), whole epochs within [min_epochs, max_epochs] per dataset;
    ASHA's first rung is `grace_fraction` of a trial; a final seed trains `final_factor` times
    a trial's epochs (`final_epochs`). A spec without one trains for its `max_epochs` with
    ASHA's first rung at `grace_period` epochs: `Fidelity.in_epochs`, the same object with
    the epochs fixed, so the search, the plan and the final phase read one form (ASHA counts
    images seen either way: a trial's epoch is its training split, so the rungs fall on the
    same epochs). Spec.fidelity keeps the mapping as written (spec.yaml compares it on
    resume); Spec.fidelity_config and Spec.fidelity_of read it."""

    trial_images: float | None = None  # None: `in_epochs`, max_epochs whatever the dataset
    min_epochs: int = 1
    max_epochs: int = 1000
    grace_fraction: float = 1 / 3
    final_factor: float = 1.0
    grace_period: int | None = None  # `in_epochs`: ASHA's first rung in epochs

    # what a spec's `fidelity:` mapping may set (grace_period is the spec's own key)
    KEYS = ("trial_images", "min_epochs", "max_epochs", "grace_fraction", "final_factor")

    @classmethod
    def in_epochs(cls, epochs: int, grace_period: int) -> Fidelity:
        """A spec without `fidelity:`: every trial trains `epochs` epochs on any dataset."""
        return cls(None, int(epochs), int(epochs), grace_period=int(grace_period))

    @classmethod
    def check(cls, raw: dict[str, Any], where: str) -> None:
        """The mapping's keys and ranges, each with its fix (build_spec, once)."""
        if not raw:
            return
        if set(raw) - set(cls.KEYS) or "trial_images" not in raw:
            raise UserError(f"{where}: fidelity takes trial_images (required), min_epochs, "
                            f"max_epochs, grace_fraction, final_factor (got {sorted(raw)})")
        f = cls(**raw)
        in_range(f.final_factor, "fidelity.final_factor", 1, 20, where)
        in_range(f.trial_images, "fidelity.trial_images", 1, 1e10, where)
        in_range(f.min_epochs, "fidelity.min_epochs", 1, 10_000, where)
        in_range(f.max_epochs, "fidelity.max_epochs", float(f.min_epochs), 10_000, where)
        in_range(f.grace_fraction, "fidelity.grace_fraction", 0.01, 1, where)

    def epochs(self, n_train: int) -> int:
        """Epochs of a full trial on a training split of `n_train` images."""
        if self.trial_images is None:
            return int(self.max_epochs)
        return epochs_for(int(self.trial_images), n_train, int(self.min_epochs),
                          int(self.max_epochs))

    def grace_epochs(self, trial_epochs: int) -> int:
        """ASHA's grace period in epochs for a trial of `trial_epochs`."""
        if self.grace_period is not None:
            return int(self.grace_period)
        return max(1, round(float(self.grace_fraction) * trial_epochs))


def in_range(value: Any, what: str, lo: float, hi: float, where: str) -> float:
    """`value` as a float when it is a number in [lo, hi], else one UserError naming `what`."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise UserError(f"{where}: {what} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def epochs_for(trial_images: int, n_train: int, min_epochs: int = 1,
               max_epochs: int = 1000) -> int:
    """Whole epochs that show a trial about `trial_images` training images."""
    if n_train <= 0:
        raise ValueError("a training split needs at least one image")
    return int(min(max_epochs, max(min_epochs, math.ceil(trial_images / n_train))))


def final_epochs(trial_epochs: int, fidelity: Fidelity) -> int:
    """Epochs of a final seed: `fidelity.final_factor` times a full-fidelity trial's, capped by
    `fidelity.max_epochs`, never fewer than the trial's. A search trial is kept short so that
    many configurations fit the budget; the chosen configuration is trained `final_seeds`
    times only, so a longer schedule costs little there (the best-validation epoch is still
    the one kept and scored)."""
    factor, cap = float(fidelity.final_factor), int(fidelity.max_epochs)
    return max(trial_epochs, min(cap, math.ceil(trial_epochs * factor)))


def search_wall_s(budget_s: float) -> float:
    """Wall seconds of a dataset's search phase (0: no limit). All Tuners of the dataset run
    side by side for that long and share every trial slot, so the search spends
    `budget_s * SEARCH_FRACTION * slots` device-seconds, whichever family's trials fill them."""
    return budget_s * SEARCH_FRACTION if budget_s > 0 else 0.0


def devices_held(res: dict[str, float], workers: int = 0) -> float:
    """Devices one trial holds while it runs: its GPUs where it has any (a fraction counts as
    that fraction), else its CPUs. A `distributed` trial's Ray Train workers hold one GPU each
    (else max(1, cpu) CPUs each), as `bench.trial.fit_distributed` asks for them."""
    from bench.resources import Resources

    r = Resources.of(res)
    cpu, gpu = float(r.cpu), r.gpu
    if workers > 1:
        return workers * (1.0 if gpu > 0 else max(1.0, float(int(cpu))))
    return gpu if gpu > 0 else cpu


def device_seconds(wall_s: float, res: dict[str, float], workers: int = 0) -> float:
    """What a trial costs the budget: its wall seconds x the devices it held (a 4-CPU trial
    of 10 s costs 40 device-seconds, a 2-GPU one 20), so trials of different sizes add up in
    one unit."""
    return float(wall_s) * devices_held(res, workers)


def planned_device_s(budget_s: float, slots: int, res: dict[str, float]) -> float:
    """A dataset's budget in device-seconds: `budget_s` wall seconds on every trial slot, each
    slot holding one trial's devices (the same unit `device_seconds` charges)."""
    return float(budget_s) * slots * devices_held(res)


def accounting(spec: Any, tables: dict[str, list[dict]], slots: int,
               run_wall_s: float) -> dict[str, Any]:
    """Planned vs spent per dataset, in device-seconds (trial wall x devices held; trials run
    side by side, so these add up to more than the run's wall time). Planned is `budget_s`
    times the parallel trial slots the budget was split over, times a trial's devices
    (`planned_device_s`)."""
    out: dict[str, Any] = {"budget_s_per_dataset": spec.budget_s, "slots": slots,
                           "run_wall_s": run_wall_s, "datasets": {}}
    for flag in spec.datasets:
        # the pipeline reference (bench.search.reference_jobs) is extra to the budget: apart
        spent = {phase: sum(float(r.get("device_s") or 0) for r in rows
                            if r.get("dataset") == flag and not _is_reference(r))
                 for phase, rows in tables.items()}
        spent["reference"] = sum(float(r.get("device_s") or 0) for r in tables.get("final", [])
                                 if r.get("dataset") == flag and _is_reference(r))
        out["datasets"][flag] = {
            "planned_device_s": (planned_device_s(spec.budget_s, slots, _held_by(spec, tables))
                                 if spec.budget_s else None),
            "search_device_s": spent.get("trials", 0.0),
            "selection_device_s": spent.get("selection", 0.0),
            "final_device_s": spent.get("final", 0.0),
            "reference_device_s": spent["reference"],
            "spent_device_s": sum(v for k, v in spent.items() if k != "reference")}
    return out


def _held_by(spec: Any, tables: dict[str, list[dict]]) -> dict[str, float]:
    """The per-trial resources the run's rows were charged for: a resolved spec's own, else
    (`resources: auto`, resolved on the driver only) the devices its trials held, read off
    their rows (device_s / wall_s)."""
    from bench.resources import Resources

    asked = Resources.of(spec.resources)
    if asked.plain:
        return asked.as_plain()
    held = [float(r["device_s"]) / float(r["wall_s"]) for r in tables.get("trials", [])
            if r.get("device_s") and r.get("wall_s")]
    return {"cpu": sorted(held)[len(held) // 2] if held else 1.0, "gpu": 0.0}


def _is_reference(row: dict) -> bool:
    """A final row of the pipeline reference (its config names an `entry`)."""
    return bool((row.get("config") or {}).get("entry"))


def full_run_costs(trials: list[dict], dataset: str, fidelity: Fidelity
                   ) -> dict[str, dict[str, float]]:
    """Per family of `dataset`: the device-seconds of one selection re-run (a trial's full
    epochs) and of one final seed (`final_epochs` of them), from the search's own trials: the
    median device-seconds per epoch run, times the epochs. Families without a timed trial are
    left out (they have nothing to re-run)."""
    per_epoch: dict[str, list[float]] = {}
    epochs: dict[str, int] = {}
    for t in trials:
        if t.get("dataset") != dataset or t.get("status") != "ok":
            continue
        ran, cost = int(t.get("epochs_run") or 0), float(t.get("device_s") or 0)
        full = int((t.get("config") or {}).get("epochs") or 0)
        if ran > 0 and cost > 0 and full > 0:
            per_epoch.setdefault(t["family"], []).append(cost / ran)
            epochs[t["family"]] = full
    out = {}
    for family, costs in per_epoch.items():
        median = sorted(costs)[len(costs) // 2]
        out[family] = {"rerun_s": median * epochs[family],
                       "final_s": median * final_epochs(epochs[family], fidelity)}
    return out


def plan_rest(remaining_s: float, costs: dict[str, dict[str, float]], top_k: int,
              seeds: int, final_seeds: int) -> dict[str, Any]:
    """What the rest of a dataset's budget pays for after its search: final seeds first (the
    board needs them), then the selection with the most re-runs (`top_k` candidates x `seeds`
    at most, at least two candidates) that still fits. A large subset whose full-fidelity run
    is costly gets fewer final seeds (never fewer than one) and no selection; its validation
    split is large, so the single best trial is then a sound choice. Returns the counts and the
    estimated device-seconds."""
    rerun = sum(c["rerun_s"] for c in costs.values())
    final = sum(c["final_s"] for c in costs.values())
    n_final = max(1, int(final_seeds))
    while n_final > 1 and n_final * final > remaining_s:
        n_final -= 1
    # the most re-runs that fit (more seeds first on ties); one candidate is no choice at all
    options = sorted(((k, s) for k in range(int(top_k), 1, -1) for s in range(int(seeds), 0, -1)),
                     key=lambda ks: (-ks[0] * ks[1], -ks[1]))
    chosen = next(((k, s) for k, s in options if k * s * rerun + n_final * final <= remaining_s),
                  (0, 0))
    return {"top_k": chosen[0], "seeds": chosen[1], "final_seeds": n_final,
            "estimated_device_s": chosen[0] * chosen[1] * rerun + n_final * final}

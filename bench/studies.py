"""A run's search as persisted Optuna studies: `<run>/studies.db`, one study per (dataset, family).

Why: the searcher's own study (inside Ray Tune's `OptunaSearch`) lives in memory and dies with the
driver, and a random search never had one. Rebuilding the studies from trials.parquet gives every
run -- random or Optuna-searched -- the same afterlife: `optuna-dashboard sqlite:///<run>/studies.db`
opens it, `optuna.load_study` reloads it, and the report takes hyperparameter importance and
parallel coordinates from it.

Each Tune trial becomes one Optuna trial, added in the order the trials finished: its sampled
hyperparameters (with the distributions of the run's search space), its best validation AUC as
the value, and its per-epoch validation AUC as intermediate values. A trial that stopped before
the family's max_epochs (ASHA) is PRUNED, a failed one FAIL, the rest COMPLETE -- the states an
Optuna pruner would have given them.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import UserError
from bench.results import atomic_write

STUDIES_FILE = "studies.db"


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna logs a line per study created; a report creates dozens."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def study_name(dataset: str, family: str) -> str:
    return f"{dataset}__{family}"


def storage_url(path: Path | str) -> str:
    return f"sqlite:///{Path(path).resolve()}"


def _read_spec(run_dir: Path) -> dict[str, Any]:
    from bench.rundir import RunDir

    return RunDir(run_dir).spec()


def _observed_distributions(configs: list[dict]) -> dict[str, Any]:
    """Fallback when the family's search space cannot be loaded (a family since removed or
    renamed): a float/int range over the values seen, or the set of values seen."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    seen: dict[str, list] = {}
    for cfg in configs:
        for k, v in cfg.items():
            seen.setdefault(k, []).append(v)
    out = {}
    for k, vals in seen.items():
        uniq = list(dict.fromkeys(json.dumps(v) for v in vals))
        if len(uniq) < 2:
            continue  # a constant in every trial: not a searched parameter
        if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            out[k] = IntDistribution(min(vals), max(vals))
        elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
            out[k] = FloatDistribution(float(min(vals)), float(max(vals)))
        else:
            out[k] = CategoricalDistribution([json.loads(u) for u in uniq])
    return out


def _widen(dist, values: list):
    """A distribution that also holds every observed value: the family YAML is read from the
    current code, which may have narrowed the space since the run."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, CategoricalDistribution):
        extra = [v for v in values if v not in dist.choices]
        return CategoricalDistribution([*dist.choices, *dict.fromkeys(extra)]) if extra else dist
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not nums or (min(nums) >= dist.low and max(nums) <= dist.high):
        return dist
    kind = IntDistribution if isinstance(dist, IntDistribution) else FloatDistribution
    return kind(type(dist.low)(min(dist.low, *nums)), type(dist.high)(max(dist.high, *nums)),
                log=dist.log)


def search_distributions(run_dir: Path, family: str, configs: list[dict]) -> dict[str, Any]:
    """The searched parameters of one family as Optuna distributions: the space the run saved
    (spaces.yaml, bench.run_spaces), else the run's spec overrides over today's family space
    (older runs), widened to the observed values."""
    from bench.run_spaces import family_space

    spec = _read_spec(run_dir)
    try:
        space = family_space(run_dir, family, (spec.get("overrides") or {}).get(family))
    except UserError as e:
        warnings.warn(f"{run_dir}: search space of {family!r} not loadable ({e}); using the "
                      "ranges of the values its trials took", stacklevel=2)
        return _observed_distributions(configs)
    out = {}
    for name, p in space.items():
        dist = p.to_optuna()
        if dist is not None:
            out[name] = _widen(dist, [c[name] for c in configs if name in c])
    return out


def max_epochs_of(run_dir: Path, family: str, trials: pd.DataFrame) -> int:
    """The family's full budget in epochs: the spec's (per-family budget first), else the
    longest trial."""
    spec = _read_spec(run_dir)
    budget = (spec.get("budgets") or {}).get(family) or {}
    value = budget.get("max_epochs", spec.get("max_epochs"))
    if value is None:
        value = pd.to_numeric(trials["epochs_run"]).max()
    return int(value) if value is not None and not pd.isna(value) else 0


def trial_budget(config: Any, default: int) -> int:
    """A trial's full budget in epochs: its own config's `epochs` (what the search gave it),
    else `default` (the spec's)."""
    epochs = _config(config).get("epochs")
    return int(epochs) if epochs is not None else int(default)


def finish_order(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials sorted by when they finished (`finished_at`), ties and runs made before that column
    existed keeping their row order. trials.parquet's row order is Tune's result-grid order,
    which follows trial creation, not completion."""
    if trials.empty or "finished_at" not in trials or trials["finished_at"].isna().all():
        return trials
    key = pd.to_numeric(trials["finished_at"], errors="coerce")
    return trials.assign(_f=key).sort_values("_f", kind="stable", na_position="last").drop(
        columns="_f")


def has_finish_times(trials: pd.DataFrame) -> bool:
    return "finished_at" in trials and trials["finished_at"].notna().any()


def _history(cell: Any) -> list[dict]:
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    return json.loads(cell) if isinstance(cell, str) else list(cell)


def _config(cell: Any) -> dict:
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return {}
    return json.loads(cell) if isinstance(cell, str) else dict(cell)


def frozen_trials(run_dir: Path, family: str, trials: pd.DataFrame) -> list:
    """One pair's trials.parquet rows -> Optuna FrozenTrials, in finish order."""
    import optuna
    from optuna.trial import TrialState

    trials = finish_order(trials)
    configs = [_config(c) for c in trials["config"]]
    dists = search_distributions(Path(run_dir), family, configs)
    full = max_epochs_of(Path(run_dir), family, trials)
    out = []
    for row, cfg in zip(trials.itertuples(), configs, strict=True):
        hist = _history(row.history)
        steps = {int(h["epoch"]): float(h["val_auc"]) for h in hist
                 if h.get("val_auc") is not None and not math.isnan(float(h["val_auc"]))}
        value = None if pd.isna(row.best_val_auc) else float(row.best_val_auc)
        if row.status != "ok" or value is None:
            state, value = TrialState.FAIL, None
        elif int(row.epochs_run or 0) < int(cfg.get("epochs") or full):
            state = TrialState.PRUNED
        else:
            state = TrialState.COMPLETE
        params = {k: cfg[k] for k in dists if k in cfg}
        attrs = {"trial_id": str(row.trial_id), "epochs_run": int(row.epochs_run or 0),
                 "wall_s": float(row.wall_s or 0.0), "device_s": float(row.device_s or 0.0)}
        if getattr(row, "finished_at", None) is not None and not pd.isna(row.finished_at):
            attrs["finished_at"] = float(row.finished_at)
        if row.error:
            attrs["error"] = str(row.error)
        out.append(optuna.trial.create_trial(
            state=state, value=value, params=params,
            distributions={k: dists[k] for k in params}, user_attrs=attrs,
            intermediate_values=steps))
    return out


def _no_sync(dbapi_connection, _record) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA synchronous=OFF")
    cur.execute("PRAGMA journal_mode=MEMORY")
    cur.close()


def build_studies(run_dir: Path | str, out: Path | str | None = None) -> Path | None:
    """Write `<run>/studies.db` (or `out`) from trials.parquet, atomically; None when the run
    has no search trials. Rebuilt whole each time, so it always matches trials.parquet."""
    import optuna
    import sqlalchemy

    from bench.rundir import RunDir

    run_dir = Path(run_dir)
    trials = RunDir(run_dir).trials()
    if trials is None or trials.empty:
        return None
    out = Path(out) if out else run_dir / STUDIES_FILE

    def write(tmp: Path) -> None:
        tmp.unlink()  # SQLite creates its own file
        storage = optuna.storages.RDBStorage(storage_url(tmp))
        # The file is private until the rename, so SQLite need not fsync every trial's commit
        # (that made each add_trial cost ~0.2 s).
        storage.engine.dispose()
        sqlalchemy.event.listen(storage.engine, "connect", _no_sync)
        try:
            for (flag, family), g in trials.groupby(["dataset", "family"], sort=True):
                study = optuna.create_study(storage=storage, study_name=study_name(flag, family),
                                            direction="maximize")
                study.set_user_attr("metric", "best validation AUC (official MedMNIST AUC)")
                study.set_user_attr("source", "rebuilt from trials.parquet by bench.studies")
                study.add_trials(frozen_trials(run_dir, str(family), g))
        finally:
            storage.engine.dispose()

    with quiet_optuna():
        return atomic_write(out, write)


def load_studies(path: Path | str) -> dict[str, Any]:
    """Every study in a studies.db, by name."""
    import optuna

    url = storage_url(path)
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=url)
            for s in optuna.get_all_study_summaries(storage=url)}


def equal_budget_study(study, target_name: str = "val AUC") -> tuple[Any, int] | None:
    """An in-memory copy of `study` in which every finished trial (complete or pruned) is
    COMPLETE with its best val AUC up to the epoch all of them reached, and that epoch.

    Why: importance computed on COMPLETE trials only would, after ASHA, rest on the one or two
    trials that ran the full budget; comparing all trials at the budget they all got (ASHA's
    first rung) is the fair question. Without ASHA that budget is the full one.
    """
    import optuna
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                  TrialState.PRUNED))
            if t.intermediate_values]
    if len(done) < 2:
        return None
    steps = [sorted(t.intermediate_values) for t in done]
    rung = min(len(s) for s in steps)
    with quiet_optuna():
        copy = optuna.create_study(direction="maximize",
                                   study_name=f"{study.study_name} equal budget ({target_name})")
    for t, s in zip(done, steps, strict=True):
        copy.add_trial(optuna.trial.create_trial(
            value=max(t.intermediate_values[k] for k in s[:rung]), params=t.params,
            distributions=t.distributions, user_attrs=t.user_attrs))
    return copy, rung


def param_importances(study, seed: int = 0) -> dict[str, float]:
    """Optuna's default evaluator (fANOVA) over the parameters that actually varied; empty when
    fewer than two trials or nothing varied."""
    import optuna

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(trials) < 2:
        return {}
    common = set.intersection(*(set(t.params) for t in trials))
    varied = [p for p in sorted(common)
              if len({json.dumps(t.params[p], default=str) for t in trials}) > 1]
    if not varied:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # experimental-feature warnings
        return optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed),
            params=varied)


def numeric_axis(dist) -> tuple[Callable[[Any], float], list[tuple[float, str]]]:
    """Map a parameter's values onto [0, 1] for a parallel-coordinates axis (log scale for log
    distributions, evenly spaced choices for categorical), with a few tick labels."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        n = max(len(dist.choices) - 1, 1)
        pos = {json.dumps(c, default=str): i / n for i, c in enumerate(dist.choices)}
        ticks = [(i / n, str(c)) for i, c in enumerate(dist.choices)]
        return (lambda v: pos[json.dumps(v, default=str)]), ticks
    lo, hi = float(dist.low), float(dist.high)
    if dist.log:
        a, b = math.log10(lo), math.log10(hi)

        def f(v: Any) -> float:
            return (math.log10(float(v)) - a) / ((b - a) or 1.0)
    else:
        def f(v: Any) -> float:
            return (float(v) - lo) / ((hi - lo) or 1.0)
    return f, [(0.0, f"{lo:.3g}"), (1.0, f"{hi:.3g}")]

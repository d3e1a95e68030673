"""The Ray Tune layer, driver side: one Tuner per (dataset, family), run concurrently; then the
final phase.

Where each part runs: `search`, `init_ray`, `_wait_all` on the driver; `run_experiment` and
`run_final` as zero-CPU Ray tasks, each holding one Tuner; the trials themselves in
`bench.trial`; the progress board in `bench.progress`.

Why one Tuner per pair: ASHA brackets must never compare trials of different datasets or
families. The Tuners run as zero-CPU Ray tasks so several keep the workers busy at once. Each
dataset is loaded and checked once on the driver and put in the object store once; trials get
a reference and cache the tensors per worker process (`reuse_actors`).

Resume: every Tuner lives at <storage>/<run name>/<dataset>__<family>; re-running the same
command restores it (`Tuner.can_restore`/`Tuner.restore`), so finished trials are neither lost
nor repeated. Failing trials are retried `max_failures` times, then recorded as failed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import progress
from bench.budget import device_seconds, planned_device_s
from bench.errors import RunFailure, UserError
from bench.progress import ProgressCallback, format_progress
from bench.resources import on_this_node
from bench.results import REFERENCE_ENTRY, final_row
from bench.spaces import Spec
from bench.tracking import trial_runs_callback
from bench.trial import DRIVER_RESOURCES, faults_from_env, trial_fn

METRIC = "val_auc"


# --- one experiment -----------------------------------------------------------------------------

def _resources(spec: Spec) -> dict[str, float]:
    """Per-trial resources of a spec `resolve_resources` has made plain (cpu and gpu numbers;
    gpu 0 where the cluster has no GPU); one still `auto` reads as a machine without GPUs."""
    from bench.resources import Resources, resolve

    asked = Resources.of(spec.resources)
    return asked.as_plain() if asked.plain else resolve(spec.resources, [])


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def resolve_resources(spec: Spec, nodes: list[dict[str, float]] | None = None) -> Spec:
    """Decide per-trial resources on the driver from the whole cluster's nodes (not from the
    node a task happens to run on), once, so every trial of the run asks for the same thing:
    `resources: auto` becomes a GPU (and its share of the node's CPUs) per trial where GPUs
    exist, one CPU where none do; a spec asking for GPUs runs CPU-only where none exist
    (unless `require_gpu`). See bench/resources.py."""
    from bench.resources import resolve

    res = resolve(spec.resources, _alive_nodes() if nodes is None else nodes)
    return Spec(**{**spec.to_dict(), "resources": res})


def _unreadable_state(full: Path) -> str | None:
    """The first of Tune's state files in `full` that a disk-full or a kill left unreadable
    (empty, truncated pickle, broken JSON), as `<file>: <why>`, or None."""
    found = unreadable_file(full)
    return None if found is None else f"{found[0].name}{found[1]}"


def unreadable_file(full: Path) -> tuple[Path, str] | None:
    """(file, why) for `_unreadable_state`. Pickles are checked by walking their opcodes
    (`pickletools`), which runs nothing. A file is a pickle by its first byte (the protocol
    opcode), not its name: the random searcher's `basic-variant-state-*.json` is one."""
    import json
    import pickletools

    for f in sorted(full.glob("*.pkl")) + sorted(full.glob("*.json")):
        try:
            data = f.read_bytes()
            if not data:
                return f, " is empty"
            if f.suffix == ".pkl" or data[:1] == b"\x80":
                for _ in pickletools.genops(data):
                    pass
            else:
                json.loads(data)
        except (ValueError, OSError) as e:  # truncated pickle / broken JSON / unreadable
            return f, f": {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    return None


def restored_jobs(full: Path) -> list[dict] | None:
    """The jobs (`config["job"]`) of the trials in a Tuner's latest local experiment state, or
    None where there is none to read. A grid Tuner restored by Tune keeps the grid it was made
    with, whatever param_space the restore is given."""
    import json

    states = sorted(full.glob("experiment_state-*.json"))
    try:
        trials = json.loads(states[-1].read_text())["trial_data"] if states else None
        return None if trials is None else [json.loads(t[0])["config"]["job"] for t in trials]
    except (ValueError, KeyError, IndexError, TypeError, OSError):
        return None


def _tuner(path: Path, name: str, trainable, param_space: dict, tune_config,
           run_config_kw: dict, jobs: list[dict] | None = None):
    """The pair's Tuner: restored when its state is there (errored trials run again: a resume
    after fixing the cause, e.g. a full disk, retries them), else new. State that a full disk
    left truncated never blocks a resume: the folder is moved aside (`<name>.unreadable-<time>`)
    and a new Tuner starts; the completion records (bench.trial) make every trial that had
    finished replay its results instead of training again. A grid of `jobs` (selection, final)
    whose state holds other jobs (a resume that adds reference seeds) is set aside the same way
    (`<name>.superseded-<time>`): restoring it would run the old grid only."""
    import pickle
    import sys

    from ray import tune

    from bench.trial import job_label

    full = path / name
    if tune.Tuner.can_restore(str(full)):
        local = full.is_dir()  # remote storage: Tune's own errors stand
        problem = _unreadable_state(full) if local else None
        before = restored_jobs(full) if local and jobs is not None and problem is None else None
        if before is not None and sorted(map(job_label, before)) != sorted(map(job_label, jobs)):
            why, kind = (f"{name} now runs {len(jobs)} jobs where its Tune state holds "
                         f"{len(before)}", "superseded")
        elif problem is None:
            try:
                return tune.Tuner.restore(str(full), trainable=trainable,
                                          resume_unfinished=True, resume_errored=True,
                                          param_space=param_space)
            except (pickle.UnpicklingError, EOFError, ValueError, KeyError) as e:
                if not local:
                    raise
                problem = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        if problem is not None:
            why, kind = f"Tune state of {name} unreadable ({problem})", "unreadable"
        aside = full.with_name(f"{name}.{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
        os.replace(full, aside)
        print(f"medbench: {why}; moved to {aside.name}, starting a new Tuner "
              "(finished trials replay from their completion records)", file=sys.stderr,
              flush=True)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=tune.RunConfig(name=name, storage_path=str(path),
                                                **run_config_kw))


def _history(result) -> list[dict]:
    df = result.metrics_dataframe
    if df is None or df.empty or "epoch" not in df:
        return []
    cols = [c for c in ("epoch", "images_seen", "train_loss", "val_auc", "val_acc", "lr", "epoch_s")
            if c in df]
    records = df[cols].dropna(subset=["epoch"]).to_dict("records")
    # A trial retried after a failure (its node lost mid-trial) trains again from epoch 1 and
    # Tune keeps the lost attempt's reports before the new ones: the history is the last
    # attempt's, from the last report whose epoch did not follow its predecessor's.
    restarts = [i for i in range(1, len(records))
                if records[i]["epoch"] <= records[i - 1]["epoch"]]
    return records[restarts[-1]:] if restarts else records


def run_experiment(spec_dict: dict, dataset: str, family: str, storage: str, data_ref: dict,
                   tracker, board, faults: dict | None, plan: dict) -> list[dict]:
    """Search one (dataset, family) pair with its own Tuner; returns trials.parquet rows.
    `plan` (from `plan_pairs`): the pair's full-fidelity epochs, images per epoch, wall
    limit and start points."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    progress.attach(board)
    spec = Spec(**spec_dict)
    res = _resources(spec)
    validated = spec.spaces()[family]
    space = {k: v.to_tune() for k, v in validated.items()}
    budget = spec.budget(family)
    epochs = int(plan["epochs"])
    space.update(dataset=dataset, model=family, size=spec.size, epochs=epochs, seed=0,
                 phase="search", threads=max(1, int(res["cpu"])))
    points = plan.get("start_points") or None
    # completion records (see trial_fn); only where trials can write to the storage path
    done_dir = None if "://" in storage else str(Path(storage) / "completed" /
                                                  f"{dataset}__{family}")
    searcher = None
    if spec.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=0, points_to_evaluate=points)
    else:  # random search, seeded so the same spec gives the same trials
        from ray.tune.search import BasicVariantGenerator

        searcher = BasicVariantGenerator(points_to_evaluate=points, random_state=0)
    # rungs counted in training images seen (an epoch is the training split): the same
    # amount of learning on every dataset, whichever form the spec's budget takes
    per_epoch = int(plan["images_per_epoch"])
    grace = spec.fidelity_of(family).grace_epochs(epochs)
    scheduler = (ASHAScheduler(reduction_factor=spec.reduction_factor, time_attr="images_seen",
                               max_t=epochs * per_epoch, grace_period=grace * per_epoch)
                 if spec.scheduler == "asha" else FIFOScheduler())
    # deterministic mode: a fixed trial count and one trial at a time (see Spec.deterministic)
    limits = [] if spec.deterministic else [
        t for t in (spec.time_budget_s, plan.get("search_s", 0)) if t]
    concurrent = 1 if spec.deterministic else spec.max_concurrent_trials
    workers = int(spec.distributed.get(family, 0))
    if workers > 1:  # the trial only drives a TorchTrainer; its workers hold the resources
        res_trial, done_dir = DRIVER_RESOURCES, None
    else:
        res_trial = res
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, data_ref=data_ref, tracker=tracker,
                             faults=faults or {}, done_dir=done_dir, workers=workers,
                             use_gpu=res["gpu"] > 0, storage=storage),
        res_trial)
    tuner = _tuner(
        Path(storage), f"{dataset}__{family}", trainable, space,
        tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                        num_samples=budget["num_samples"], reuse_actors=True,
                        max_concurrent_trials=concurrent or None,
                        time_budget_s=min(limits) if limits else None),
        {"failure_config": tune.FailureConfig(max_failures=spec.max_failures),
         "callbacks": [ProgressCallback(f"{dataset}/{family}", METRIC),
                       # each trial's W&B run, kept here: ASHA kills trial workers mid-write
                       trial_runs_callback(tracker, f"{dataset}/{family}",
                                           [dataset, family, "search"], METRIC)],
         "verbose": 0})
    grid = tuner.fit()
    rows = []
    # Tune's Trial objects, in the grid's order: only they know how often a trial was retried
    tune_trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    for i, r in enumerate(grid):
        failures = int(getattr(tune_trials[i], "num_failures", 0)) if i < len(tune_trials) else 0
        hist = _history(r)
        best = max(hist, key=lambda h: h.get("val_auc", -1)) if hist else {}
        wall = float((r.metrics or {}).get("time_total_s", 0.0))
        cfg = {k: v for k, v in (r.config or {}).items() if k not in ("phase", "threads")}
        rows.append({"dataset": dataset, "family": family,
                     "trial_id": (r.metrics or {}).get("trial_id", Path(r.path).name),
                     "status": "failed" if r.error else "ok",
                     "error": str(r.error).strip().splitlines()[-1][:500] if r.error else None,
                     "config": cfg, "history": hist,
                     "best_val_auc": best.get("val_auc"), "best_val_acc": best.get("val_acc"),
                     "best_epoch": best.get("epoch"), "epochs_run": len(hist),
                     "wall_s": wall,
                     "device_s": device_seconds(wall, res, workers),
                     # where it ran: Ray node and the GPU ids Ray gave it (bench.trial.placement)
                     "node": (r.metrics or {}).get("node_id") or None,
                     "gpu_ids": (r.metrics or {}).get("gpu_ids") or None,
                     "finished_at": (r.metrics or {}).get("timestamp"),  # finish order
                     # attempts that failed and were retried (a failed trial's last one is not)
                     "retries": max(0, failures - (1 if r.error else 0))})
    return rows


# --- the final phase ----------------------------------------------------------------------------

def plan_pairs(spec: Spec, n_train: dict[str, int]) -> dict[tuple[str, str], dict]:
    """Per (dataset, family): full-fidelity epochs, images per epoch, the Tuner's wall limit
    (the dataset's search phase) and the portfolio start points."""
    from bench.budget import search_wall_s
    from bench.portfolio import start_points

    spaces = spec.spaces()
    return {(d, f): {"epochs": spec.trial_epochs(f, n_train[d]), "images_per_epoch": n_train[d],
                     "search_s": search_wall_s(spec.budget_s),
                     "start_points": start_points(d, f, spaces[f], spec.portfolio)}
            for d, f in spec.pairs()}


def best_configs(trials: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (dataset, family): the config of the trial bench.selection ranks first (one that
    trained its full epochs before any ASHA-stopped one, then the validation score of both
    metrics). The selection phase starts from the same ranking, so a spec with and one without
    re-runs choose by one rule, and a trial stopped on a short schedule never wins on it."""
    from bench.selection import top_candidates

    return {k: dict(c[0]["config"]) for k, c in top_candidates(trials, 1).items()}


def selection_jobs(spec: Spec, candidates: dict[tuple[str, str], list[dict]],
                   seeds_by_dataset: dict[str, int] | None = None) -> list[dict]:
    """Re-runs of each candidate config on seeds 1..S (search trials used seed 0); S per
    dataset when its budget plan says so (bench.budget.plan_rest)."""
    seeds = spec.selection_config.seeds if spec.selection_config else 0
    by = seeds_by_dataset or {}
    return [{**t["config"], "seed": 1 + k, "phase": "select", "candidate": t["trial_id"]}
            for (d, _), cands in candidates.items() for t in cands
            for k in range(by.get(d, seeds))]


def final_jobs(spec: Spec, configs: dict[tuple[str, str], dict],
               seeds_by_dataset: dict[str, int] | None = None) -> list[dict]:
    """Each chosen config on `final_seeds` fresh seeds (never a seed the search used; fewer
    where the dataset's budget plan says so), trained `fidelity.final_factor` times a search
    trial's epochs (bench.budget.final_epochs)."""
    from bench.budget import final_epochs

    by = seeds_by_dataset or {}
    jobs = []
    for (d, _), cfg in configs.items():
        epochs = final_epochs(int(cfg["epochs"]), spec.fidelity_config)
        jobs += [{**cfg, "seed": spec.final_seed_base + k, "phase": "final", "epochs": epochs}
                 for k in range(by.get(d, spec.final_seeds))]
    return jobs


def reference_jobs(spec: Spec, n_train: dict[str, int]) -> list[dict]:
    """The pipeline reference (`Spec.reference_seeds`): the MedMNIST v2 recipe on the first
    final seeds of every 2D dataset at 28 px (the size the published ResNet-18 (28) row is
    for), trained as long as a full-fidelity ResNet-18 trial of the run (`Spec.trial_epochs`:
    as many images, or the spec's epochs), its learning-rate steps at 50% and 75% of those
    epochs as in the paper's 100."""
    from bench.data import dataset_info
    from bench.train import TRAIN_PRESETS

    if not spec.reference_seeds or spec.size != 28:
        return []
    recipe = TRAIN_PRESETS["official"]
    jobs = []
    for flag in spec.datasets:
        if dataset_info(flag).dims != 2:
            continue
        epochs = spec.trial_epochs(recipe["model"], n_train[flag])
        jobs += [{**recipe, "dataset": flag, "size": spec.size, "epochs": epochs,
                  "seed": spec.final_seed_base + k, "phase": "final", "entry": REFERENCE_ENTRY}
                 for k in range(int(spec.reference_seeds))]
    return jobs


def rest_plans(spec: Spec, slots: int, trials: list[dict],
               spent_before: list[dict] | None = None) -> dict[str, dict]:
    """Per dataset, what its budget has left for the selection re-runs and the final seeds
    (bench.budget.plan_rest), costed from its own runs: the search trials, or once the
    selection ran, its re-runs (`spent_before`: full-fidelity runs, timed like a final seed).
    Empty without a budget: every phase then runs as the spec says."""
    from bench.budget import full_run_costs, plan_rest

    if not spec.budget_s or spec.deterministic:  # deterministic: counts never follow the clock
        return {}
    sel = spec.selection_config
    plans = {}
    for flag in spec.datasets:
        spent = sum(float(r.get("device_s") or 0) for r in [*trials, *(spent_before or [])]
                    if r.get("dataset") == flag)
        timed = [r for r in (spent_before or []) if r.get("dataset") == flag
                 and r.get("status", "ok") == "ok"] or trials
        costs = full_run_costs(timed, flag, spec.fidelity_config)
        plans[flag] = plan_rest(planned_device_s(spec.budget_s, slots, _resources(spec)) - spent,
                                costs, sel.top_k if sel else 0, sel.seeds if sel else 0,
                                spec.final_seeds)
    return plans


def run_final(spec: Spec, storage: str, data_ref: dict, tracker, board,
              jobs: list[dict], name: str = "final") -> list[dict]:
    """Train each job (a selection re-run or a final seed) as a trial of one Tuner `name`.
    A final row carries its Tune checkpoint (the seed's training-run directory) for the
    driver to fetch; a selection row carries its candidate's trial id."""
    from ray import tune

    if not jobs:
        return []
    progress.attach(board)
    res = _resources(spec)
    # completion records per job (bench.trial.job_label): a finished seed is never retrained
    done_dir = None if "://" in storage else str(Path(storage) / "completed" / name)
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, data_ref=data_ref, tracker=tracker, faults={},
                             done_dir=done_dir), res)
    tuner = _tuner(Path(storage), name, trainable, {"job": tune.grid_search(jobs)},
                   tune.TuneConfig(reuse_actors=True),
                   {"failure_config": tune.FailureConfig(max_failures=spec.max_failures),
                    "callbacks": [ProgressCallback(name, METRIC)], "verbose": 0}, jobs=jobs)
    rows = []
    for r in tuner.fit():
        job = dict(r.config["job"])
        candidate = job.pop("candidate", None)
        finished = bool(not r.error and r.metrics
                        and (candidate is not None or r.checkpoint is not None))
        result = None
        if finished:
            m = r.metrics
            result = {**m, "history": _history(r), "wall_s": m.get("time_total_s"),
                      "device_s": device_seconds(float(m.get("time_total_s", 0)), res)}
        row = final_row({k: v for k, v in job.items() if k != "phase"}, result,
                        str(r.error).strip().splitlines()[-1][:500] if r.error else None)
        if candidate is not None:  # a selection re-run: its candidate, no run directory
            row["candidate"] = candidate
            del row["run_dir"]
        elif finished:
            row["checkpoint"] = r.checkpoint
        rows.append(row)
    return rows


# --- the driver ---------------------------------------------------------------------------------

def _probe(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a `host:port` nobody listens on: ray.init would retry for minutes."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # `auto` and other forms: left to ray.init
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise UserError(f"cannot reach a Ray cluster at {address!r} ({e}); start one "
                        "(`ray start --head`) or drop --address for a local run") from None


BIND_ENV = "MEDBENCH_RAY_BIND"  # loopback (default) | node: where a local run's Ray listens


def bind_local_ray(mode: str | None = None) -> bool:
    """Make the embedded Ray node listen on 127.0.0.1 only (GCS, raylet and object manager,
    workers, dashboard and runtime-env agents): a laptop run has no reason to be reachable
    from the network. Returns True when loopback was set.

    Ray 2.60 rewrites `_node_ip_address="127.0.0.1"` to the routable IP
    (`services.resolve_ip_for_localhost`) unless its macOS/Windows switch is off
    (`ray_constants.ENABLE_RAY_CLUSTER`, env RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0); then the
    node IP is 127.0.0.1 and every Ray server binds it. The constant is read when Ray is
    imported, so it is set both here (this process) and in the environment (Ray's child
    processes). `MEDBENCH_RAY_BIND=node` keeps Ray's default (the routable IP)."""
    from ray._private import ray_constants

    mode = mode or os.environ.get(BIND_ENV) or "loopback"
    if mode not in ("loopback", "node"):
        raise UserError(f"${BIND_ENV}={mode!r}: use 'loopback' (the default: a local run "
                        "listens on 127.0.0.1 only) or 'node' (Ray's routable node IP)")
    loopback = mode == "loopback"
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0" if loopback else "1"
    ray_constants.ENABLE_RAY_CLUSTER = not loopback
    return loopback


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Embedded local Ray by default, bound to loopback (`bind_local_ray`); `auto` or an
    address joins a cluster, and so does a job started by `ray job submit` (which sets
    RAY_ADDRESS)."""
    import ray

    if ray.is_initialized():
        return
    with _keep_sigterm_handler():
        _init_ray(address, num_cpus)


@contextlib.contextmanager
def _keep_sigterm_handler():
    """ray.init replaces the driver's SIGTERM handler (with `sys.exit`, and its C++ core
    worker with a stack-dumping handler that ends in SIGABRT): a `kill` of a real run then
    aborted (exit 134) instead of stopping in order (bench.cli: exit 143). Put back the
    handler the process had, when it had one of its own."""
    import signal
    import threading

    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and callable(before):
            signal.signal(signal.SIGTERM, before)


def _init_ray(address: str | None, num_cpus: int | None) -> None:
    import ray

    kw: dict[str, Any] = {"log_to_driver": False, "configure_logging": True,
                          "logging_level": "ERROR"}
    if address or os.environ.get("RAY_ADDRESS"):  # this node must be reachable by the cluster
        bind_local_ray("node")
    if address:
        _probe(address)
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot reach a Ray cluster at {address!r} ({e}); start one "
                            "(`ray start --head`) or drop --address for a local run") from None
    elif os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`: join that cluster
        ray.init(**kw)
    else:  # "local": never join a cluster some earlier `ray start` left running
        bind_local_ray()
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     dashboard_host="127.0.0.1",
                     object_store_memory=1 << 30, **kw)
        except Exception as e:  # noqa: BLE001 - Ray 2.60 raises a bare Exception when its
            # raylet does not register within a fixed 30 s (ray/_private/node.py): busy box
            raise RunFailure(f"the local Ray node did not start ({str(e).splitlines()[0]}); "
                             "an overloaded machine or a full /tmp are the usual causes: retry "
                             "when it is freer, or see /tmp/ray/session_latest/logs") from None


def _wait_all(starters: list[Callable[[], Any]], board, echo: Callable[[str], None], t0: float,
              every: float = 10.0, cap: int = 0) -> list:
    """Start each task (`starters` return Ray futures), at most `cap` in flight (0: all at
    once), print the progress board when it changes, and return the results in order."""
    import ray

    cap = cap or len(starters)
    futures = [start() for start in starters[:cap]]
    pending, queued, last = list(futures), list(starters[cap:]), ""
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=every)
        while queued and len(pending) < cap:  # a slot freed up: start the next one
            fut = queued.pop(0)()
            futures.append(fut)
            pending.append(fut)
        try:
            snapshot = ray.get(board.snapshot.remote(), timeout=every)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            continue  # the board is cosmetic: a node lost with it skips a line, not the run
        text = format_progress(snapshot, time.time() - t0)
        body = text.partition("\n")[2]  # the rows; the header holds the ever-changing time
        if body and body != last:
            echo(text)
            last = body
    return ray.get(futures)


def trial_slots(spec: Spec, cluster: dict[str, float]) -> int:
    """How many trials the cluster (its summed resources) runs side by side with the spec's
    per-trial resources: the fewest any asked-for kind allows (a {cpu: 4, gpu: 0.25} trial on
    16 CPUs and 4 GPUs: 4, not 16). A spec still `auto` is resolved against the cluster."""
    from bench.resources import Resources, resolve

    asked = Resources.of(spec.resources)
    res = asked.as_plain() if asked.plain else resolve(spec.resources, [cluster])
    need = {"CPU": res["cpu"], "GPU": res["gpu"]}
    fits = [int(cluster.get(kind, 0) / n + 1e-9) for kind, n in need.items() if n > 0]
    return max(1, min(fits)) if fits else 1


def concurrent_experiments(spec: Spec, cluster: dict[str, float]) -> int:
    """How many Tuners to run at once: the spec's `max_concurrent_experiments`, else as many
    as the cluster can run trials side by side (more would only queue trials and hold memory),
    never more than there are experiments."""
    n_pairs = len(spec.pairs())
    if spec.max_concurrent_experiments:
        return min(int(spec.max_concurrent_experiments), n_pairs)
    return max(1, min(trial_slots(spec, cluster), n_pairs))


def _echo_cut(echo: Callable[[str], None], flag: str, plan: dict, spec: Spec,
              phase: str) -> None:
    """Say when a dataset's budget plan runs fewer re-runs or final seeds than the spec."""
    sel = spec.selection_config
    if phase == "selection" and sel and (plan["top_k"], plan["seeds"]) != (sel.top_k, sel.seeds):
        what = (f"top {plan['top_k']} x {plan['seeds']} seed(s)" if plan["top_k"]
                else "none: the best validation trial is kept")
        echo(f"budget {flag}: selection re-runs cut to {what} (a full-fidelity run costs more "
             "than the budget has left)")
    if phase == "final" and plan["final_seeds"] < spec.final_seeds:
        echo(f"budget {flag}: {plan['final_seeds']} final seed(s) instead of "
             f"{spec.final_seeds} (what the budget has left)")


def search(spec: Spec, run_dir: Path, storage: str, arrays: dict[str, dict], tracker,
           echo: Callable[[str], None], final: bool = True) -> dict[str, list[dict]]:
    """Search every (dataset, family) pair concurrently, re-run the best trials (selection),
    then (optionally) the final phase. `arrays`: each dataset's checked arrays (loaded once by
    the caller); they go to the object store once. Returns the rows of `trials`, `selection`
    and `final`; the caller writes them."""
    import ray

    from bench.selection import choose_configs, top_candidates

    t0 = time.time()
    n_train = {flag: len(a["train_labels"]) for flag, a in arrays.items()}
    data_ref = {flag: ray.put(a) for flag, a in arrays.items()}
    spec = resolve_resources(spec)
    board = progress.start_board()
    faults = faults_from_env()  # tests only; read here, where the test process set it
    # Tuners run beside the driver (bench.resources.on_this_node): a lost worker node never
    # takes a Tuner with it, only its trials, which Tune retries elsewhere
    remote = ray.remote(num_cpus=0)(run_experiment).options(**on_this_node())
    cluster = ray.cluster_resources()
    cap = concurrent_experiments(spec, cluster)
    by_dataset = bool(spec.budget_s and not spec.max_concurrent_experiments)
    if cap < len(spec.pairs()) and not by_dataset:
        echo(f"{len(spec.pairs())} experiments, {cap} at a time (max_concurrent_experiments)")
    plans = plan_pairs(spec, n_train)
    if spec.deterministic:
        counts = ", ".join(f"{f} {spec.budget(f)['num_samples']}" for f in spec.families)
        echo(f"deterministic: a fixed number of search trials per dataset ({counts}), one at "
             "a time per family; no wall-time limit, selection and final seeds as the spec says")
    elif spec.budget_s:
        slots = trial_slots(spec, cluster)
        echo(f"budget: {spec.budget_s:.0f} s wall per dataset on {slots} trial slots "
             f"({planned_device_s(spec.budget_s, slots, _resources(spec)):.0f} device-s); "
             "search phase "
             f"{plans[spec.pairs()[0]]['search_s']:.0f} s, then selection and final seeds")
    for (d, f), p in plans.items():
        if p["start_points"]:
            echo(f"{d}/{f}: starts from {len(p['start_points'])} portfolio configuration(s) "
                 "found on other datasets")

    def starter(d: str, f: str) -> Callable[[], Any]:
        return lambda: remote.remote(spec.to_dict(), d, f, storage, data_ref, tracker, board,
                                     faults, plans[(d, f)])

    if by_dataset:
        # one dataset at a time: its Tuners share every slot for its whole search phase, and
        # a family that ends early (mlp) leaves its slots to that dataset's other families
        # rather than to the next dataset's Tuners, so each dataset gets the budget it planned
        results = [rows for flag in spec.datasets for rows in _wait_all(
            [starter(d, f) for d, f in spec.pairs() if d == flag], board, echo, t0)]
    else:
        results = _wait_all([starter(d, f) for d, f in spec.pairs()], board, echo, t0,
                            cap=cap)
    out: dict[str, list[dict]] = {"trials": [row for rows in results for row in rows],
                                  "selection": [], "final": []}
    if not final or not spec.final_seeds:
        return out
    configs = best_configs(out["trials"])
    slots = trial_slots(spec, ray.cluster_resources())
    plans_left = rest_plans(spec, slots, out["trials"])
    sel = spec.selection_config
    if sel:
        candidates = top_candidates(out["trials"], sel.top_k)
        for flag, p in plans_left.items():  # a dataset whose budget cannot pay re-runs
            for key in [k for k in candidates if k[0] == flag]:
                candidates[key] = candidates[key][:p["top_k"]]
            _echo_cut(echo, flag, p, spec, "selection")
        candidates = {k: c for k, c in candidates.items() if c}
        jobs = selection_jobs(spec, candidates, {d: p["seeds"] for d, p in plans_left.items()})
        if jobs:
            echo(f"selection: top {sel.top_k} configs per experiment re-run on {sel.seeds} "
                 f"more seeds ({len(jobs)} runs)")
            out["selection"] = _wait_all([lambda: ray.remote(num_cpus=0)(run_final).options(
                **on_this_node()).remote(
                spec, storage, data_ref, tracker, board, jobs, "select")], board, echo, t0)[0]
            configs.update(choose_configs(candidates, out["selection"]))
        plans_left = rest_plans(spec, slots, out["trials"], out["selection"])
    seeds_by = {d: p["final_seeds"] for d, p in plans_left.items()}
    for flag, p in plans_left.items():
        _echo_cut(echo, flag, p, spec, "final")
    echo(f"final phase: chosen config per experiment x {spec.final_seeds} fresh seeds")
    jobs = final_jobs(spec, configs, seeds_by) + reference_jobs(spec, n_train)
    out["final"] = _wait_all([lambda: ray.remote(num_cpus=0)(run_final).options(
        **on_this_node()).remote(
        spec, storage, data_ref, tracker, board, jobs)], board, echo, t0)[0]
    for row in out["final"]:  # fetch each seed's run directory from storage, on the driver
        ckpt = row.pop("checkpoint", None)
        if ckpt is not None:
            dest = run_dir / row["run_dir"]
            if dest.exists():
                shutil.rmtree(dest)
            ckpt.to_directory(str(dest))
    return out

"""The Ray Tune layer: one Tuner per (dataset, family), run concurrently; then the final phase.

Why one Tuner per pair: ASHA brackets must never compare trials of different datasets or
families. The Tuners run as zero-CPU Ray tasks so several keep the workers busy at once. Each
dataset is loaded and checked once on the driver and put in the object store once; trials get
a reference and cache the tensors per worker process (`reuse_actors`).

Resume: every Tuner lives at <storage>/<run name>/<dataset>__<family>; re-running the same
command restores it (`Tuner.can_restore`/`Tuner.restore`), so finished trials are neither lost
nor repeated. Failing trials are retried `max_failures` times, then recorded as failed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import UserError
from bench.spaces import Spec, to_tune

METRIC = "val_auc"
_DATA_CACHE: dict[tuple[str, int], Any] = {}


# --- inside a trial -----------------------------------------------------------------------------

def _trial_data(flag: str, size: int, data_ref: dict):
    """Tensors for this worker process, built once from the object-store arrays."""
    import ray

    from bench.data import dataset_info, from_arrays
    from bench.train import resolve_device

    key = (flag, size)
    if key not in _DATA_CACHE:
        arrays = ray.get(data_ref[flag])
        _DATA_CACHE.clear()  # one dataset per process at a time keeps memory flat
        data = from_arrays(dataset_info(flag), size, {k: np.array(v) for k, v in arrays.items()})
        _DATA_CACHE[key] = data.to(resolve_device("auto"))
    return _DATA_CACHE[key]


def _maybe_fail(faults: dict, trial_id: str) -> None:
    """Test-only fault injection: trials whose index is in faults['trials'] raise on their
    first faults['times'] attempts (counted in files, so retries see earlier attempts).
    The index is the numeric suffix of Tune's trial id (`<experiment>_00003`), which only the
    random searcher gives; ids of other searchers (Optuna: plain hex) are never faulted."""
    prefix, _, index = trial_id.rpartition("_")
    if not faults or not prefix or not index.isdigit() or \
            int(index) not in faults.get("trials", []):
        return
    marker = Path(faults["dir"]) / trial_id
    marker.parent.mkdir(parents=True, exist_ok=True)
    attempts = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(attempts + 1))
    if attempts < int(faults.get("times", 1)):
        raise RuntimeError(f"injected fault in {trial_id} (attempt {attempts + 1})")


def _trace(event: str, trial_id: str) -> None:
    """Append `event trial_id` to $MEDBENCH_TRACE (tests count starts and finishes)."""
    path = os.environ.get("MEDBENCH_TRACE")
    if path:
        with open(path, "a") as f:
            f.write(f"{event} {trial_id}\n")


def _replay(record: Path | None, job: dict) -> bool:
    """Re-report a finished search trial's epochs from its completion record (see trial_fn).
    False when there is none, or it belongs to another config (a reused trial id)."""
    from ray import tune

    if record is None or not record.exists():
        return False
    done = json.loads(record.read_text())
    if done.get("config") != json.loads(json.dumps(job, default=str)):
        return False
    for rec, iter_s in done["reports"]:
        tune.report({**rec, "time_this_iter_s": iter_s})  # keeps the trial's wall time
    return True


def trial_fn(config: dict, data_ref: dict, tracker, faults: dict,
             done_dir: str | None = None, workers: int = 0, use_gpu: bool = False,
             storage: str | None = None) -> None:
    """One Tune trial: a search trial reports every epoch; a final trial also writes its
    training-run directory and hands it to Tune as a checkpoint (so it reaches any storage).

    A finished search trial writes a completion record to done_dir before it returns. Tune
    saves its experiment state only every ~10 s, so after a killed driver it may restart a
    trial that had finished; with a record, the trial replays its reports instead of training
    again."""
    from ray import tune

    from bench.results import write_json, write_training_run
    from bench.train import TrainConfig, fit

    job = dict(config.get("job", config))
    phase = job.pop("phase", "search")
    trial_id = tune.get_context().get_trial_id()
    record = Path(done_dir) / f"{trial_id}.json" if done_dir and phase == "search" else None
    if _replay(record, job):
        _trace("replay", trial_id)
        return
    t_last = time.perf_counter()
    reports: list = []
    _trace("start", trial_id)
    _maybe_fail(faults, trial_id)
    if workers > 1 and phase == "search":  # a Ray Train DDP job inside this Tune trial
        from bench.distributed import fit_distributed

        fit_distributed(job, data_ref, workers, use_gpu, f"{storage}/train", trial_id)
        _trace("finish", trial_id)
        return
    conf = TrainConfig.from_dict(job)
    data = _trial_data(conf.dataset, conf.size, data_ref)
    # `with`: when ASHA stops a trial, Tune raises SystemExit inside tune.report; the context
    # manager still finishes the W&B run (exit code 0 for that case).
    with tracker.start(name=f"{conf.dataset}-{conf.model}-{trial_id}",
                       group=f"{conf.dataset}/{conf.model}", job_type=phase,
                       config=conf.to_dict()) as run:

        def on_epoch(rec: dict) -> None:
            nonlocal t_last
            run.log(rec, step=int(rec["epoch"]))
            if phase == "search":
                now = time.perf_counter()
                plain = {k: v.item() if hasattr(v, "item") else v for k, v in rec.items()}
                reports.append((plain, now - t_last))  # numpy scalars -> JSON numbers
                t_last = now
                tune.report(rec)

        result = fit(conf, data, on_epoch=on_epoch)
        run.finish(result.summary())
    if record is not None:
        write_json(record, {"config": job, "reports": reports})
    if phase == "final":
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            write_training_run(out, conf.to_dict(), data.info, conf.size, result,
                               run=f"{conf.model}-seed{conf.seed}")
            tune.report({**result.summary(), "epoch": len(result.history)},
                        checkpoint=tune.Checkpoint.from_directory(str(out)))
    _trace("finish", trial_id)


# --- one experiment -----------------------------------------------------------------------------

def _resources(spec: Spec) -> dict[str, float]:
    """Per-trial resources; `gpu` was already set to 0 by `resolve_resources` where the
    cluster has no GPU."""
    return {"cpu": float(spec.resources.get("cpu", 1)), "gpu": float(spec.resources.get("gpu", 0))}


def resolve_resources(spec: Spec) -> Spec:
    """Decide GPU use on the driver from the whole cluster's resources (not from the node a
    task happens to run on): a spec asking for GPUs runs CPU-only where none exist."""
    import ray

    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    res = dict(spec.resources)
    if not has_gpu and not res.get("require_gpu"):
        res["gpu"] = 0
    res.pop("require_gpu", None)
    return Spec(**{**spec.to_dict(), "resources": res})


def _device_count(res: dict[str, float]) -> float:
    return res["gpu"] if res["gpu"] > 0 else res["cpu"]


_BOARD = None  # this process's progress board (set by run_experiment / run_final)


def _board_update(key: str, event: str, value: float | None = None) -> None:
    if _BOARD is not None:
        _BOARD.update.remote(key, event, value)


class _ProgressCallback:
    """Tune callback -> the driver's progress board (a tiny actor). It reaches the board
    through a module global, not a captured handle: Tune pickles callbacks into tuner.pkl, and
    a handle from a killed driver's Ray session cannot be unpickled when the search resumes."""

    def __new__(cls, key: str):
        from ray import tune

        class CB(tune.Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                _board_update(key, "start")

            def on_trial_result(self, iteration, trials, trial, result, **info):
                _board_update(key, "result", result.get(METRIC))

            def on_trial_complete(self, iteration, trials, trial, **info):
                _board_update(key, "done")

            def on_trial_error(self, iteration, trials, trial, **info):
                _board_update(key, "failed")

        return CB()


def _tuner(path: Path, name: str, trainable, param_space: dict, tune_config,
           run_config_kw: dict):
    from ray import tune

    full = path / name
    if tune.Tuner.can_restore(str(full)):
        return tune.Tuner.restore(str(full), trainable=trainable, resume_unfinished=True,
                                  resume_errored=False, param_space=param_space)
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=tune.RunConfig(name=name, storage_path=str(path),
                                                **run_config_kw))


def _history(result) -> list[dict]:
    df = result.metrics_dataframe
    if df is None or df.empty or "epoch" not in df:
        return []
    cols = [c for c in ("epoch", "train_loss", "val_auc", "val_acc", "lr", "epoch_s") if c in df]
    return df[cols].dropna(subset=["epoch"]).to_dict("records")


def run_experiment(spec_dict: dict, dataset: str, family: str, storage: str, data_ref: dict,
                   tracker, board) -> list[dict]:
    """Search one (dataset, family) pair with its own Tuner; returns trials.parquet rows."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    global _BOARD
    _BOARD = board
    spec = Spec(**spec_dict)
    res = _resources(spec)
    space = {k: to_tune(v) for k, v in spec.spaces()[family].items()}
    budget = spec.budget(family)
    space.update(dataset=dataset, model=family, size=spec.size, epochs=budget["max_epochs"], seed=0,
                 phase="search", threads=max(1, int(res["cpu"])))
    # completion records (see trial_fn); only where trials can write to the storage path
    done_dir = None if "://" in storage else str(Path(storage) / "completed" /
                                                  f"{dataset}__{family}")
    searcher = None
    if spec.searcher == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(seed=0)
    scheduler = (ASHAScheduler(max_t=budget["max_epochs"], grace_period=budget["grace_period"],
                               reduction_factor=spec.reduction_factor)
                 if spec.scheduler == "asha" else FIFOScheduler())
    workers = int(spec.distributed.get(family, 0))
    if workers > 1:  # the trial only drives a TorchTrainer; its workers hold the resources
        from bench.distributed import DRIVER_RESOURCES

        res_trial, done_dir = DRIVER_RESOURCES, None
    else:
        res_trial = res
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, data_ref=data_ref, tracker=tracker, faults=spec.faults,
                             done_dir=done_dir, workers=workers, use_gpu=res["gpu"] > 0,
                             storage=storage),
        res_trial)
    tuner = _tuner(
        Path(storage), f"{dataset}__{family}", trainable, space,
        tune.TuneConfig(metric=METRIC, mode="max", search_alg=searcher, scheduler=scheduler,
                        num_samples=budget["num_samples"], reuse_actors=True,
                        max_concurrent_trials=spec.max_concurrent_trials or None,
                        time_budget_s=spec.time_budget_s or None),
        {"failure_config": tune.FailureConfig(max_failures=spec.max_failures),
         "callbacks": [_ProgressCallback(f"{dataset}/{family}")], "verbose": 0})
    grid = tuner.fit()
    rows = []
    for r in grid:
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
                     "device_s": wall * _device_count(res) * max(1, workers),
                     "finished_at": (r.metrics or {}).get("timestamp")})  # finish order
    return rows


# --- the final phase ----------------------------------------------------------------------------

def best_configs(trials: list[dict]) -> dict[tuple[str, str], dict]:
    """Per (dataset, family): the config of the trial with the best validation AUC."""
    best: dict[tuple[str, str], dict] = {}
    for t in trials:
        if t["status"] != "ok" or t["best_val_auc"] is None:
            continue
        key = (t["dataset"], t["family"])
        if key not in best or t["best_val_auc"] > best[key]["best_val_auc"]:
            best[key] = t
    return {k: dict(v["config"]) for k, v in best.items()}


def run_final(spec: Spec, storage: str, data_ref: dict, tracker, board,
              configs: dict[tuple[str, str], dict]) -> list[dict]:
    """Retrain each chosen config on fresh seeds, as Tune trials. Each row carries its Tune
    checkpoint (the seed's training-run directory) for the driver to fetch."""
    from ray import tune

    jobs = [{**cfg, "seed": spec.final_seed_base + k, "phase": "final",
             "epochs": spec.budget(cfg["model"])["max_epochs"]}
            for cfg in configs.values() for k in range(spec.final_seeds)]
    if not jobs:
        return []
    global _BOARD
    _BOARD = board
    res = _resources(spec)
    trainable = tune.with_resources(
        tune.with_parameters(trial_fn, data_ref=data_ref, tracker=tracker, faults={}), res)
    tuner = _tuner(Path(storage), "final", trainable, {"job": tune.grid_search(jobs)},
                   tune.TuneConfig(reuse_actors=True),
                   {"failure_config": tune.FailureConfig(max_failures=spec.max_failures),
                    "callbacks": [_ProgressCallback("final")], "verbose": 0})
    rows = []
    for r in tuner.fit():
        job = dict(r.config["job"])
        rel = Path("final") / job["dataset"] / job["model"] / f"seed{job['seed']}"
        row = {"dataset": job["dataset"], "family": job["model"], "seed": job["seed"],
               "size": job["size"], "config": {k: v for k, v in job.items() if k != "phase"},
               "run_dir": str(rel), "status": "failed" if r.error else "ok",
               "error": str(r.error).strip().splitlines()[-1][:500] if r.error else None}
        if not r.error and r.checkpoint is not None:
            m = r.metrics
            row.update({k: m.get(k) for k in ("val_auc", "val_acc", "test_auc", "test_acc",
                                              "best_epoch", "epochs_run", "train_images_per_s")})
            row.update(history=_history(r), wall_s=m.get("time_total_s"),
                       device_s=float(m.get("time_total_s", 0)) * _device_count(res),
                       checkpoint=r.checkpoint)
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


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """Embedded local Ray by default; `auto` or an address joins a cluster, and so does a job
    started by `ray job submit` (which sets RAY_ADDRESS)."""
    import ray

    if ray.is_initialized():
        return
    kw: dict[str, Any] = {"log_to_driver": False, "configure_logging": True,
                          "logging_level": "ERROR"}
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
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 object_store_memory=1 << 30, **kw)


def _progress_board():
    import ray

    @ray.remote(num_cpus=0)
    class Board:
        def __init__(self) -> None:
            self.state: dict[str, dict] = {}

        def update(self, key: str, event: str, value: float | None = None) -> None:
            s = self.state.setdefault(key, {"running": 0, "done": 0, "failed": 0, "best": None,
                                            "t0": time.time()})
            if event == "start":
                s["running"] += 1
            elif event in ("done", "failed"):
                s["running"] = max(0, s["running"] - 1)
                s[event] += 1
            elif value is not None and (s["best"] is None or value > s["best"]):
                s["best"] = value

        def snapshot(self) -> dict[str, dict]:
            return self.state

    return Board.remote()


def format_progress(state: dict[str, dict], elapsed: float) -> str:
    lines = [f"[{elapsed:6.0f}s] {'experiment':<28}{'run':>4}{'done':>5}{'fail':>5}"
             f"{'best val AUC':>14}"]
    for key in sorted(state):
        s = state[key]
        best = f"{s['best']:.4f}" if s["best"] is not None else "-"
        lines.append(f"{'':9}{key:<28}{s['running']:>4}{s['done']:>5}{s['failed']:>5}{best:>14}")
    return "\n".join(lines)


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
        text = format_progress(ray.get(board.snapshot.remote()), time.time() - t0)
        body = text.partition("\n")[2]  # the rows; the header holds the ever-changing time
        if body and body != last:
            echo(text)
            last = body
    return ray.get(futures)


def concurrent_experiments(spec: Spec, cluster: dict[str, float]) -> int:
    """How many Tuners to run at once: the spec's `max_concurrent_experiments`, else as many
    as the cluster can run trials side by side (more would only queue trials and hold memory),
    never more than there are experiments."""
    n_pairs = len(spec.pairs())
    if spec.max_concurrent_experiments:
        return min(int(spec.max_concurrent_experiments), n_pairs)
    res = spec.resources
    kind, need = ("GPU", res["gpu"]) if res.get("gpu", 0) > 0 else ("CPU", res.get("cpu", 1))
    slots = int(cluster.get(kind, 0) // need) if need > 0 else n_pairs
    return max(1, min(slots, n_pairs))


def search(spec: Spec, run_dir: Path, storage: str, data_dir: str | Path | None, tracker,
           echo: Callable[[str], None], final: bool = True) -> tuple[list[dict], list[dict]]:
    """Search every (dataset, family) pair concurrently, then (optionally) the final phase.
    Returns (trial rows, final rows); the caller writes them."""
    import ray

    from bench.data import load_arrays

    t0 = time.time()
    data_ref = {}
    for flag in spec.datasets:  # checked once here; a bad file stops before any trial starts
        arrays = load_arrays(flag, spec.size, data_dir, verify_md5=spec.verify_md5)
        data_ref[flag] = ray.put(arrays)
    spec = resolve_resources(spec)
    board = _progress_board()
    remote = ray.remote(num_cpus=0)(run_experiment)
    cap = concurrent_experiments(spec, ray.cluster_resources())
    if cap < len(spec.pairs()):
        echo(f"{len(spec.pairs())} experiments, {cap} at a time (max_concurrent_experiments)")

    def starter(d: str, f: str) -> Callable[[], Any]:
        return lambda: remote.remote(spec.to_dict(), d, f, storage, data_ref, tracker, board)

    results = _wait_all([starter(d, f) for d, f in spec.pairs()], board, echo, t0, cap=cap)
    trials = [row for rows in results for row in rows]
    finals: list[dict] = []
    if final and spec.final_seeds:
        echo(f"final phase: best config per experiment x {spec.final_seeds} fresh seeds")
        best = best_configs(trials)
        finals = _wait_all([lambda: ray.remote(num_cpus=0)(run_final).remote(
            spec, storage, data_ref, tracker, board, best)], board, echo, t0)[0]
        for row in finals:  # fetch each seed's run directory from storage, on the driver
            ckpt = row.pop("checkpoint", None)
            if ckpt is not None:
                dest = run_dir / row["run_dir"]
                if dest.exists():
                    shutil.rmtree(dest)
                ckpt.to_directory(str(dest))
    return trials, finals

"""What runs inside a Ray trial worker: the Tune trial function, this process's data cache, the
replay of finished trials, and the Ray Train (DDP) worker loop of a `distributed` family.

The driver (`bench.search`) never calls these directly; Tune runs `trial_fn` in a worker
process, many times over when it reuses the worker (`reuse_actors`), which is why the data
cache lives here, per process.

Test hooks reach trials from the environment, never from the user's spec:
MEDBENCH_FAULTS (JSON, read on the driver by `faults_from_env` and handed to the trials) makes
chosen trials fail; MEDBENCH_TRACE (a file path, read in the worker) records every start,
finish and replay so tests can count trainings; MEDBENCH_PLACEMENT (a file path) records each
trial's start and end with its Ray node and GPU ids (the simulated-cluster test).

Ray Train inside Tune (Ray 2.60, Train V2): a TorchTrainer cannot be passed to a Tuner, so the
Tune function trial calls `TorchTrainer(...).fit()` itself and forwards each worker report to
Tune through `TuneReportCallback`. That trial holds (almost) no resources; its workers do.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import UserError

FAULTS_ENV = "MEDBENCH_FAULTS"
TRACE_ENV = "MEDBENCH_TRACE"
PLACEMENT_ENV = "MEDBENCH_PLACEMENT"

# What the Tune trial that only drives a TorchTrainer asks for (Ray refuses plain {"cpu": 0}).
DRIVER_RESOURCES = {"cpu": 0, "memory": 64 * 1024 * 1024}

_DATA_CACHE: dict[tuple[str, int], Any] = {}


def placement() -> dict[str, str]:
    """Where this trial runs: its Ray node id and the GPU ids Ray gave it ("" for none), as
    CUDA_VISIBLE_DEVICES names them. Recorded in every search report (the trial row's `node`
    and `gpu_ids`): concurrent GPU trials on one node must hold different devices."""
    import ray

    if not ray.is_initialized():
        return {"node_id": "", "gpu_ids": ""}
    return {"node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids())}


def trial_device(gpu_ids: str | None = None):
    """The device of this trial: CPU when Ray gave it no GPU, without a single CUDA call (with
    Ray 2.60 a 0-GPU worker still sees every GPU in CUDA_VISIBLE_DEVICES, and
    `resolve_device("auto")` would put all such trials on cuda:0); else its first assigned
    GPU. Ray sets CUDA_VISIBLE_DEVICES to the assigned ids, so that GPU is cuda:0 inside this
    process (cuda:<id> where Ray was told not to set it). A GPU id without a usable CUDA (a
    simulated cluster's logical GPUs) falls back to CPU. Outside Ray: `resolve_device`."""
    import torch

    from bench.train import resolve_device

    if gpu_ids is None:
        import ray

        if not ray.is_initialized():
            return resolve_device("auto")
        gpu_ids = placement()["gpu_ids"]
    if not gpu_ids:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        return torch.device("cpu")
    first = gpu_ids.split(",")[0]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    index = 0 if visible.split(",")[:1] == [first] else int(first)
    return torch.device("cuda", index)


def _trial_data(flag: str, size: int, data_ref: dict):
    """Tensors for this worker process, built once from the object-store arrays, on this
    trial's device (`trial_device`)."""
    import ray

    from bench.data import dataset_info, from_arrays

    device = trial_device()
    key = (flag, size, str(device))
    if key not in _DATA_CACHE:
        arrays = ray.get(data_ref[flag])
        _DATA_CACHE.clear()  # one dataset per process at a time keeps memory flat
        data = from_arrays(dataset_info(flag), size, {k: np.array(v) for k, v in arrays.items()})
        _DATA_CACHE[key] = data.to(device)
    return _DATA_CACHE[key]


def faults_from_env() -> dict[str, Any]:
    """The fault-injection plan in $MEDBENCH_FAULTS (tests only): {"trials": [indices],
    "times": n, "dir": marker folder}; {} when unset."""
    text = os.environ.get(FAULTS_ENV)
    if not text:
        return {}
    try:
        faults = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"${FAULTS_ENV} is not valid JSON ({e}); unset it") from None
    if not isinstance(faults, dict) or "dir" not in faults:
        raise UserError(f"${FAULTS_ENV} must be a JSON object with a 'dir'; unset it")
    return faults


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


def _trace(event: str, trial_id: str, where: dict[str, str] | None = None) -> None:
    """Append `event trial_id` to $MEDBENCH_TRACE (tests count starts and finishes). Selection
    and final trials are named by their job (`job_label`), which a restart never changes.
    With `where` (a search trial's `placement`), also `event trial_id node gpu_ids` to
    $MEDBENCH_PLACEMENT, so a test can tell which trials ran side by side on which device."""
    path = os.environ.get(TRACE_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{event} {trial_id}\n")
    path = os.environ.get(PLACEMENT_ENV)
    if path and where is not None:
        with open(path, "a") as f:
            f.write(f"{event} {trial_id} {where['node_id'] or '-'} {where['gpu_ids'] or '-'}\n")


def job_label(job: dict) -> str:
    """A selection or final trial's name that survives any restart (Tune's trial ids do not
    when its Tuner is created anew): phase, dataset, model, seed, and for a selection re-run
    its candidate, plus a digest of the whole job (a resumed run with another chosen config
    must not match)."""
    import hashlib

    digest = hashlib.sha256(json.dumps(job, sort_keys=True, default=str).encode()).hexdigest()
    parts = [job.get("phase", "search"), job.get("dataset"), job.get("model"),
             f"seed{job.get('seed')}", job.get("candidate"), digest[:12]]
    return ":".join(str(p) for p in parts if p is not None)


def _replay(record: Path | None, job: dict) -> bool:
    """Re-report a finished trial's reports from its completion record (see trial_fn); a final
    trial's last report carries its training-run directory, kept beside the record, as the
    checkpoint again. False when there is none, or it belongs to another config (a reused
    trial id)."""
    from ray import tune

    if record is None or not record.exists():
        return False
    done = json.loads(record.read_text())
    if done.get("config") != json.loads(json.dumps(job, default=str)):
        return False
    saved = record.with_suffix("") if done.get("checkpoint") else None
    if saved is not None and not saved.is_dir():
        return False
    for i, (rec, iter_s) in enumerate(done["reports"]):
        last = i == len(done["reports"]) - 1
        tune.report({**rec, "time_this_iter_s": iter_s},  # keeps the trial's wall time
                    checkpoint=tune.Checkpoint.from_directory(str(saved))
                    if last and saved is not None else None)
    return True


def _same_config_record(done_dir: Path, job: dict, trial_id: str | None = None) -> Path | None:
    """The completion record of this very config (seed included) written under another name,
    or None. Tune names trials anew when a Tuner is re-created (its state was lost to a full
    disk: bench.search._tuner); the seeded searcher proposes the same configs again, in the
    same order, and each finds the record of the trial that already trained it.

    Search trials (`trial_id` given): records of the trial's own Tuner (the same id prefix)
    never count, so a config the searcher proposes twice in one Tuner trains twice, as it did
    before; among the other Tuners' records the one with the same index (`_00003`) wins, so
    two equal configs of the old Tuner map to the two of the new one. Selection jobs (no
    `trial_id`): their label names the candidate's trial id, which a re-created search Tuner
    changed, so any record of the same config and seed is the same training."""
    if not done_dir.is_dir():
        return None
    want = json.loads(json.dumps(job, default=str))
    prefix, _, index = (trial_id or "").rpartition("_")
    if not index.isdigit():  # ids without a counter (Optuna's): no Tuner to tell apart
        prefix, index = "", ""
    matches = []
    for path in sorted(done_dir.glob("*.json")):
        other_prefix, _, other_index = path.stem.rpartition("_")
        if trial_id is not None and (path.stem == trial_id or (prefix and other_prefix == prefix)):
            continue
        try:
            if json.loads(path.read_text()).get("config") == want:
                matches.append((other_index != index or not index, path))
        except (OSError, ValueError):  # a record a full disk cut short: not a record
            continue
    return min(matches)[1] if matches else None


def _record_final(record: Path, job: dict, report: dict, run_dir: Path | None,
                  wall_s: float) -> None:
    """A selection or final trial's completion record, written before its one report: the
    report, and (final) its training-run directory moved beside the record (`<record>/`)."""
    from bench.results import write_json

    if run_dir is not None:
        import shutil

        dest = record.with_suffix("")
        tmp = dest.with_name(dest.name + ".tmp")
        for old in (dest, tmp):  # left by an attempt that died before its record
            if old.exists():
                shutil.rmtree(old)
        shutil.copytree(run_dir, tmp)
        os.replace(tmp, dest)
    plain = {k: v.item() if hasattr(v, "item") else v for k, v in report.items()}
    write_json(record, {"config": job, "reports": [(plain, wall_s)],
                        "checkpoint": run_dir is not None})


def trial_fn(config: dict, data_ref: dict, tracker, faults: dict,
             done_dir: str | None = None, workers: int = 0, use_gpu: bool = False,
             storage: str | None = None) -> None:
    """One Tune trial: a search trial reports every epoch; a final trial also writes its
    training-run directory and hands it to Tune as a checkpoint (so it reaches any storage).

    A search trial writes its completion record to done_dir when it reports its last epoch,
    just before that report: ASHA stops every trial at `max_t` inside that `tune.report`, so
    trial_fn never returns for it, and Tune saves its own experiment state only every ~10 s.
    After any stop (SIGKILL, SIGTERM, a lost node) Tune may start such a trial again; with a
    record it replays its reports instead of training again (exactly once). Selection and
    final trials do the same with one record per job (`job_label`: their Tuner may be made
    anew, with new trial ids), a final one keeping its training-run directory beside it."""
    from ray import tune

    from bench.results import write_json, write_training_run
    from bench.train import TrainConfig, fit

    job = dict(config.get("job", config))
    label = job_label(job)
    phase = job.pop("phase", "search")
    job.pop("candidate", None)  # a selection re-run's bookkeeping, not a training option
    job.pop("entry", None)  # the board name of a pipeline-reference seed (bench.search)
    trial_id = tune.get_context().get_trial_id()
    record = None
    if done_dir:
        record = Path(done_dir) / f"{trial_id if phase == 'search' else label}.json"
        if phase in ("search", "select") and not record.exists():  # a Tuner made anew
            record = _same_config_record(Path(done_dir), job,
                                         trial_id if phase == "search" else None) or record
    if phase != "search":
        trial_id = label  # the trace names the job, which a restart keeps
    if _replay(record, job):
        _trace("replay", trial_id)
        return
    t_start = t_last = time.perf_counter()
    reports: list = []
    where = placement()
    _trace("start", trial_id, where)
    _maybe_fail(faults, trial_id)
    if workers > 1 and phase == "search":  # a Ray Train DDP job inside this Tune trial
        fit_distributed(job, data_ref, workers, use_gpu, f"{storage}/train", trial_id)
        _trace("finish", trial_id)
        return
    conf = TrainConfig.from_dict(job)
    data = _trial_data(conf.dataset, conf.size, data_ref)
    # A search trial's W&B run is kept by its Tuner (bench.tracking.trial_runs_callback): ASHA
    # ends this worker without waiting for it, which lost runs logged here. Selection and final
    # runs are never stopped early and finish their run before their last report. key: the W&B
    # run id comes from the trial id, so a restarted trial continues its run.
    from bench.tracking import TrackedRun

    with (TrackedRun() if phase == "search" else
          tracker.start(name=f"{conf.dataset}-{conf.model}-{trial_id}",
                        group=f"{conf.dataset}/{conf.model}", job_type=phase,
                        config=conf.to_dict(), tags=[conf.dataset, conf.model, phase],
                        key=trial_id)) as run:

        def on_epoch(rec: dict) -> None:
            nonlocal t_last
            run.log(rec, step=int(rec["epoch"]))
            if phase == "search":
                now = time.perf_counter()
                plain = {k: v.item() if hasattr(v, "item") else v for k, v in rec.items()}
                plain.update(where)  # the trial row's node and GPU ids (bench.search)
                rec = {**rec, **where}
                reports.append((plain, now - t_last))  # numpy scalars -> JSON numbers
                t_last = now
                if record is not None and int(rec["epoch"]) == conf.epochs:
                    write_json(record, {"config": job, "reports": reports})  # durable first
                    _trace("record", trial_id, where)
                tune.report(rec)

        result = fit(conf, data, on_epoch=on_epoch, hflip_scores=phase == "final")
        run.finish(result.summary())
    if phase == "search" and record is not None and not record.exists():  # ended early
        write_json(record, {"config": job, "reports": reports})
    summary = {**result.summary(), "epoch": len(result.history)}
    if phase == "select":  # a selection re-run: only its summary is needed
        if record is not None:
            _record_final(record, job, summary, None, time.perf_counter() - t_start)
            _trace("record", trial_id)
        tune.report(summary)
    if phase == "final":
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "run"
            write_training_run(out, conf.to_dict(), data.info, conf.size, result,
                               run=f"{conf.model}-seed{conf.seed}")
            if record is not None:
                _record_final(record, job, summary, out, time.perf_counter() - t_start)
                _trace("record", trial_id)
            tune.report(summary, checkpoint=tune.Checkpoint.from_directory(str(out)))
    _trace("finish", trial_id, where)


# --- a Ray Train (DDP) trial ---------------------------------------------------------------------

def _worker_loop(cfg: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: the ordinary trainer on this worker's shard."""
    import ray.train
    import ray.train.torch

    from bench.train import TrainConfig, fit

    ctx = ray.train.get_context()
    conf = TrainConfig.from_dict(cfg["job"])
    data = _trial_data(conf.dataset, conf.size, cfg["data_ref"])
    data = data.to(ray.train.torch.get_device())

    def report(record: dict) -> None:
        ray.train.report(dict(record))  # every worker reports; Tune sees rank 0's metrics

    fit(conf, data, on_epoch=report, rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(), wrap_model=ray.train.torch.prepare_model)


def fit_distributed(job: dict[str, Any], data_ref: dict, workers: int, use_gpu: bool,
                    storage: str, name: str) -> None:
    """One search trial as a DDP job of `workers` processes, reporting per epoch to Tune."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cpu_per_worker = max(1.0, float(job.get("threads") or 1))
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"job": job, "data_ref": data_ref},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cpu_per_worker}),
        run_config=RunConfig(name=name, storage_path=storage,
                             callbacks=[TuneReportCallback()]),
    )
    trainer.fit()

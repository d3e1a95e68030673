"""A run's life around its trials (issue 27, item 6): the run lock is held until the leaderboard
and report are written, a finished run re-run keeps its meta.json wall time, the driver's Ray
processes end with a SIGKILLed driver, and exactly once holds where Tune's trial ids change (a
Tuner made anew) and where a restarted trial's W&B history is replayed.

The unit tests need no Ray; the in-process runs share one local Ray session (module fixture,
like tests/test_search.py) and count trainings from $MEDBENCH_TRACE (bench.trial._trace)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench import tracking, trial
from bench.errors import UserError
from bench.experiment import keep_wall_time
from bench.runlock import RunLock
from bench.spaces import build_spec

REPO = Path(__file__).resolve().parent.parent


# --- meta.json keeps the wall time of the attempt that did the work ---------------------------

def _meta(wall: float, at: str, trials: int = 4, finals: int = 2, failed: int = 0) -> dict:
    return {"wall_s": wall, "finished_at": at, "n_trials": trials, "n_final_runs": finals,
            "n_failed_trials": failed}


def test_a_rerun_that_only_replayed_keeps_the_first_wall_time() -> None:
    meta = _meta(3.0, "2026-12-06T03:00:00")
    keep_wall_time(meta, _meta(600.0, "2026-12-06T02:00:00"))
    assert meta["wall_s"] == 600.0 and meta["finished_at"] == "2026-12-06T02:00:00"
    assert meta["reopened"] == [{"at": "2026-12-06T03:00:00", "wall_s": 3.0}]
    again = _meta(2.0, "2026-12-06T04:00:00")
    keep_wall_time(again, meta)  # a third run lists both re-runs
    assert again["wall_s"] == 600.0 and len(again["reopened"]) == 2


def test_a_rerun_that_trained_more_adds_its_wall_time() -> None:
    meta = _meta(100.0, "2026-12-06T03:00:00", failed=0)
    keep_wall_time(meta, _meta(600.0, "2026-12-06T02:00:00", failed=2))  # retried 2 trials
    assert meta["wall_s"] == 700.0 and meta["finished_at"] == "2026-12-06T03:00:00"
    assert "reopened" not in meta
    first = _meta(5.0, "2026-12-06T03:00:00")
    keep_wall_time(first, {})  # no earlier meta.json: the first finish
    assert first["wall_s"] == 5.0 and "reopened" not in first


# --- a trial under a new Tune trial id finds its record -----------------------------------------

def _record(folder: Path, name: str, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"config": config, "reports": [[{"epoch": 1}, 0.1]]}))
    return path


def test_a_search_trial_under_a_new_tuner_finds_its_configs_record(tmp_path: Path) -> None:
    a, b = {"model": "mlp", "lr": 0.1, "seed": 0}, {"model": "mlp", "lr": 0.2, "seed": 0}
    done = tmp_path / "completed"
    _record(done, "aaaaa_00000", a)
    _record(done, "aaaaa_00001", b)
    dup = _record(done, "aaaaa_00002", a)  # the old Tuner proposed `a` twice
    (done / "aaaaa_00003.json").write_text('{"config": {"mod')  # cut short by a full disk
    find = trial._same_config_record
    assert find(done, a, "bbbbb_00002") == dup  # the same index wins among equal configs
    assert find(done, a, "bbbbb_00000") == done / "aaaaa_00000.json"
    assert find(done, b, "bbbbb_00007") == done / "aaaaa_00001.json"
    assert find(done, {**a, "seed": 1}, "bbbbb_00000") is None  # another seed: trains
    # in its own Tuner a config proposed twice trains twice, as before
    assert find(done, a, "aaaaa_00005") is None
    assert find(done, b, "0123abcd") == done / "aaaaa_00001.json"  # Optuna's ids
    assert find(tmp_path / "nothing", a, "bbbbb_00000") is None
    # a selection job (no trial id): its label named the old candidate id; any record of the
    # same config and seed is that training
    assert find(done, b, None) == done / "aaaaa_00001.json"


# --- W&B: a restarted trial's replay logs no epoch twice ----------------------------------------

def _result(epoch: int, auc: float) -> dict:
    return {"epoch": epoch, "val_auc": auc, "train_loss": 1.0 / epoch, "training_iteration": epoch,
            "time_this_iter_s": 0.5, "trial_id": "x", "done": False}


def test_a_replay_in_a_new_process_logs_no_epoch_twice(tmp_path: Path) -> None:
    """The first driver logged epochs 1-3 of a trial (its record was written) and died before
    Tune saved the trial as finished; the resumed Tuner (a new process: no open runs in
    memory) restarts it and it replays epochs 1-3 from its record. Its run gets nothing twice,
    and its summary still counts the earlier epochs."""
    from wandb_reader import offline_runs, read_offline_run

    t = tracking.Tracker.from_env(True, "medbench-test", tmp_path, experiment="wb")
    args = (t, "breastmnist/mlp", ["search"], "val_auc", "t_00000", {"lr": 0.1})
    for epoch, auc in ((1, 0.6), (2, 0.8), (3, 0.7)):
        tracking.log_trial_result(*args, _result(epoch, auc))
    for entry in tracking._TRIAL_RUNS.values():  # the driver died: its wandb service wrote
        entry.run.finish(exit_code=1)  # what it had, and the open runs went with it
    tracking._TRIAL_RUNS.clear()
    for epoch, auc in ((1, 0.6), (2, 0.8), (3, 0.7)):  # the replay
        tracking.log_trial_result(*args, _result(epoch, auc))
    tracking.end_trial_run(t, "val_auc", "t_00000")
    runs = sorted(map(read_offline_run, offline_runs(tmp_path)),
                  key=lambda r: len(r.history), reverse=True)
    assert [len(r.history) for r in runs] == [3, 0], [r.history for r in runs]
    assert {r.run_id for r in runs} == {"wb-t_00000"}
    summary = runs[1].summary
    assert (summary["epochs_run"], summary["best_epoch"]) == (3, 2)
    assert summary["best_val_auc"] == pytest.approx(0.8)


# --- the driver's Ray processes end with it -----------------------------------------------------

DRIVER = ("import sys, time\nfrom bench.search import init_ray\ninit_ray(None, 1)\n"
          "import ray\nfrom ray._private import ray_constants\n"
          "node = ray._private.worker._global_node\n"
          "raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid\n"
          "if sys.argv[1] == 'reap':\n    from bench.runlock import reap_with_driver\n"
          "    reap_with_driver()\n"
          "@ray.remote(num_cpus=1)\ndef f():\n    return 1\nray.get(f.remote())\n"
          "print(raylet, flush=True)\ntime.sleep(600)\n")


def ray_node_processes(raylet: int) -> list[str]:
    """Live processes carrying RAY_RAYLET_PID=<raylet> (workers, agents), and the raylet."""
    mark = f"RAY_RAYLET_PID={raylet}".encode()
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            env = (d / "environ").read_bytes().split(b"\0")
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if state != "Z" and (mark in env or int(d.name) == raylet):
            out.append(f"{d.name} {cmd[:100]}")
    return out


def kill_driver_and_wait(mode: str, wait_s: float) -> tuple[float, list[str]]:
    """Start a driver whose Ray node runs a worker, SIGKILL the driver alone, and return how
    long its node's processes took to go (or wait_s) and what was left."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, mode], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        raylet = int(proc.stdout.readline())
        assert ray_node_processes(raylet), "no Ray process found to watch"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        t0 = time.time()
        while (left := ray_node_processes(raylet)) and time.time() - t0 < wait_s:
            time.sleep(0.2)
        return time.time() - t0, left
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_killed_drivers_ray_processes_end_within_seconds() -> None:
    took, left = kill_driver_and_wait("reap", wait_s=15)
    assert not left, f"{took:.0f} s after the driver's SIGKILL these still run: {left}"


# --- in-process runs: the lock through publishing, wall time, new Tuners replay -----------------

N = (64, 32, 32)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from bench.data import write_synthetic

    root = tmp_path_factory.mktemp("lifecycle-data")
    write_synthetic("breastmnist", root, n=N, seed=0)
    return root


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    """$MEDBENCH_TRACE for this module's Ray session (its workers read it at start-up)."""
    import ray

    from bench.search import init_ray

    path = tmp_path_factory.mktemp("lifecycle-trace") / "trace.txt"
    old = os.environ.get(trial.TRACE_ENV)
    os.environ[trial.TRACE_ENV] = str(path)
    init_ray(None, num_cpus=2)
    yield path
    ray.shutdown()
    if old is None:
        os.environ.pop(trial.TRACE_ENV, None)
    else:
        os.environ[trial.TRACE_ENV] = old


def events(path: Path, since: int = 0) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [tuple(line.split()[:2]) for line in lines[since:] if line.strip()]


def spec_of(name: str, **kw):
    raw = {"name": name, "datasets": ["breastmnist"], "families": ["mlp"], "num_samples": 3,
           "max_epochs": 1, "grace_period": 1, "scheduler": "fifo", "searcher": "random",
           "final_seeds": 1, "verify_md5": False, "resources": {"cpu": 1, "gpu": 0},
           "max_failures": 0, **kw}
    return build_spec(raw)


def execute(spec, run_dir: Path, data_dir: Path, then=None) -> dict:
    from bench.experiment import execute as run

    return run(spec, run_dir, data_dir=data_dir, wandb=False, final=True, num_cpus=2,
               echo=lambda line: None, then=then)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_lock_through_publishing_then_new_tuners_replay_every_trial_once(
        trace, data_dir, tmp_path) -> None:
    """A run whose `then` (the leaderboard and report) finds the run still locked. Then every
    Tuner's state truncated, as a full disk left it: the search, selection and final Tuners
    are made anew, with new trial ids, and every trial replays its completion record (search:
    same config, selection: same config and seed, final: its job label); the re-run, which
    trained nothing, leaves meta.json's wall time as the first run's."""
    spec = spec_of("anew", num_samples=2, selection={"top_k": 2, "seeds": 1})
    run_dir = tmp_path / "run"
    seen = {}

    def then(meta: dict) -> None:  # publishing: a second driver must still be refused
        with pytest.raises(UserError, match="is in use"):
            RunLock(run_dir).acquire()
        seen["meta"] = json.loads((run_dir / "meta.json").read_text())  # written before

    since = len(events(trace))
    meta = execute(spec, run_dir, data_dir, then)
    assert seen["meta"]["wall_s"] == pytest.approx(meta["wall_s"])
    RunLock(run_dir).acquire().release()  # free once execute returned
    first = events(trace, since)
    trials = pd.read_parquet(run_dir / "trials.parquet")
    finals = pd.read_parquet(run_dir / "final.parquet")
    assert len([u for e, u in first if e == "record"]) == 2 + 2 + 1, first
    from bench.search import _unreadable_state

    for pkl in (run_dir / "tune").glob("*/tuner.pkl"):
        assert _unreadable_state(pkl.parent) is None  # whole state: a resume restores it
        pkl.write_bytes(pkl.read_bytes()[:40])
    tuners = sorted(p.parent.name for p in (run_dir / "tune").glob("*/tuner.pkl"))
    assert tuners == ["breastmnist__mlp", "final", "select"]

    again = execute(spec, run_dir, data_dir)
    after = events(trace, since + len(first))
    assert not [u for e, u in after if e == "start"], after  # nothing trained again
    assert len([u for e, u in after if e == "replay"]) == 2 + 2 + 1, after
    aside = sorted(p.name.split(".")[0] for p in (run_dir / "tune").glob("*.unreadable-*"))
    assert aside == tuners
    replayed = pd.read_parquet(run_dir / "trials.parquet")
    assert len(replayed) == 2 and (replayed.status == "ok").all()
    assert set(replayed.trial_id).isdisjoint(trials.trial_id)  # new Tune trial ids
    assert sorted(replayed.config) == sorted(trials.config)  # every config once, as before
    assert sorted(replayed.best_val_auc) == sorted(trials.best_val_auc)
    replayed_f = pd.read_parquet(run_dir / "final.parquet")
    assert len(replayed_f) == 1 and replayed_f.test_auc.tolist() == finals.test_auc.tolist()
    assert (run_dir / replayed_f.run_dir[0] / "metrics.json").exists()
    kept = json.loads((run_dir / "meta.json").read_text())
    assert kept["wall_s"] == meta["wall_s"] == again["wall_s"]
    assert kept["finished_at"] == meta["finished_at"]
    assert len(kept["reopened"]) == 1 and kept["resumed"] is True

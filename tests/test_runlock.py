"""One driver per run directory: a second `medbench run` on a run in use refuses and names the
holder; a lock left by a killed process is taken over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.errors import UserError
from bench.runlock import LOCK_NAME, RunLock, lock_run

REPO = Path(__file__).resolve().parent.parent
HOLD = ("import sys, time\nfrom bench.runlock import lock_run\n"
        "locks = lock_run(sys.argv[1])\nprint('held', flush=True)\ntime.sleep(600)\n")


def hold_in_subprocess(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    first = RunLock(tmp_path / "run").acquire()
    with pytest.raises(UserError) as e:
        RunLock(tmp_path / "run").acquire()
    text = str(e.value)
    assert f"PID {os.getpid()} on {socket.gethostname()}, started " in text
    assert "is in use" in text
    first.release()
    again = RunLock(tmp_path / "run").acquire()  # released: free again
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    again.release()


def test_a_killed_holders_lock_is_taken_over(tmp_path: Path) -> None:
    proc = hold_in_subprocess(tmp_path / "run")
    try:
        with pytest.raises(UserError, match=f"PID {proc.pid} "):
            RunLock(tmp_path / "run").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == proc.pid  # stale
    lock = RunLock(tmp_path / "run").acquire()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_storage_outside_the_run_is_locked_too(tmp_path: Path) -> None:
    locks = lock_run(tmp_path / "run", str(tmp_path / "storage" / "name"))
    with pytest.raises(UserError, match="storage/name is in use"):
        RunLock(tmp_path / "storage" / "name").acquire()
    # a refused second lock_run leaves nothing held behind
    with pytest.raises(UserError, match="Tune storage .*storage/name is in use"):
        lock_run(tmp_path / "other", str(tmp_path / "storage" / "name"))
    RunLock(tmp_path / "other").acquire().release()
    locks.release()
    inside = lock_run(tmp_path / "run", str(tmp_path / "run" / "tune"))
    assert len(inside.locks) == 1  # the run's own lock covers its tune/ folder
    inside.release()


def test_medbench_run_on_a_run_in_use_refuses(tmp_path: Path) -> None:
    from bench.data import write_synthetic
    from bench.experiment import prepare_run_dir
    from bench.spaces import build_spec

    raw = {"name": "locked", "datasets": ["breastmnist"], "families": ["mlp"], "num_samples": 1,
           "max_epochs": 1, "grace_period": 1, "final_seeds": 0, "verify_md5": False,
           "resources": {"cpu": 1, "gpu": 0}}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(raw))
    write_synthetic("breastmnist", tmp_path / "data", n=(16, 8, 8))
    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, build_spec(dict(raw)))
    holder = hold_in_subprocess(run_dir)
    try:
        t0 = time.time()
        out = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--spec", str(spec_file),
                              "--out", str(run_dir), "--data-dir", str(tmp_path / "data"),
                              "--no-wandb"], cwd=REPO, capture_output=True, text=True,
                             timeout=300, env={**os.environ, "WANDB_MODE": "disabled"})
    finally:
        holder.kill()
        holder.wait()
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert f"is in use by PID {holder.pid} on {socket.gethostname()}" in text
    assert "Traceback" not in text
    assert not (run_dir / "tune").exists() and not (run_dir / "trials.parquet").exists()
    assert time.time() - t0 < 120  # refused before any Ray work

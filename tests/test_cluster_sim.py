"""A simulated GPU cluster on this machine: a real `medbench run` spread over two worker nodes
with logical GPUs, one of them removed mid-search.

`ray.cluster_utils.Cluster` starts a head (0 CPUs: the driver and its Tuner tasks only) and
two worker nodes of 2 CPUs and 4 logical GPUs each. The run asks 2 GPUs per trial
(`--gpus-per-trial 2`, `resources: auto`): `cpu: auto` gives each trial 1 CPU (2 CPUs x 2 / 4
GPUs), so each node runs two trials side by side, on GPUs "0,1" and "2,3". There is no real
GPU, so every trial trains on the CPU (bench.trial.trial_device) but records the GPU ids Ray
gave it. Once a node has finished a search trial and starts another, it is removed (its
raylet and workers killed): the trial it was running must be rescheduled on the other node
(Tune's max_failures), the trials it finished kept as they were (not trained again), every
trial must be in trials.parquet exactly once, and the final phase must finish. Trial starts
and ends, with node and GPU ids, come from $MEDBENCH_PLACEMENT.

The driver is a subprocess (`python -m bench.cli run --address ...`), so this pytest process
never joins a Ray session. Prints nodes, trials per node and the removal (pytest -s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 8
FINAL_SEEDS = 2


def _events(path: Path) -> list[tuple[str, str, str, str]]:
    """(event, trial, node, gpu ids) per line of the placement log."""
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines()  # type: ignore[misc]
            if len(line.split()) == 4]


@pytest.fixture
def cluster(monkeypatch, tmp_path):
    from ray.cluster_utils import Cluster

    # a private cluster: no token auth (nothing of it listens beyond this test), no stats
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # trial workers inherit their node's environment (the raylet's, started from here), not
    # the driver's: the placement log and one torch thread per trial are set here
    monkeypatch.setenv("MEDBENCH_PLACEMENT", str(tmp_path / "placement.txt"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    for attempt in (1, 2, 3):  # Ray gives a raylet 30 s to start: a busy machine may miss it
        c = Cluster(shutdown_at_exit=True)
        try:
            # the head; its GCS declares a killed node dead after 3 failed health checks 1 s
            # apart (Ray's default, 5 checks 3 s apart, let a short final phase finish while
            # the removed node's GPUs were still counted in meta.json's cluster resources)
            c.add_node(num_cpus=0, include_dashboard=False, _system_config={
                "health_check_period_ms": 1000, "health_check_failure_threshold": 3})
            nodes = [c.add_node(num_cpus=2, num_gpus=4) for _ in range(2)]
            c.wait_for_nodes()
            break
        except Exception:  # noqa: BLE001 - Ray raises a bare Exception on that timeout
            c.shutdown()
            if attempt == 3:
                raise
    yield c, nodes
    c.shutdown()


@pytest.mark.timeout(900)
def test_a_run_survives_losing_a_gpu_node_mid_search(cluster, tmp_path) -> None:
    from bench.data import write_synthetic

    c, workers = cluster
    data = tmp_path / "data"
    # enough training images that a trial runs for seconds: it is still running when its
    # node goes
    write_synthetic("breastmnist", data, n=(1024, 64, 64), seed=0)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "simcluster", "datasets": ["breastmnist"], "families": ["cnn_small"],
        "searcher": "random", "num_samples": NUM_SAMPLES, "scheduler": "fifo",
        "max_epochs": 3, "final_seeds": FINAL_SEEDS, "max_failures": 3,
        "resources": "auto",
        # one trial's cost fixed (only lr and weight decay sampled): comparable trial times
        "overrides": {"cnn_small": {"width": 1.0, "depth": 2, "batch_size": 128,
                                    "ema": 0.0, "batch_norm": True}}}))
    out, placement = tmp_path / "run", tmp_path / "placement.txt"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("RAY_") and k not in ("MEDBENCH_TRACE", "MEDBENCH_FAULTS")}
    env.update(MEDBENCH_PLACEMENT=str(placement), WANDB_MODE="disabled", OMP_NUM_THREADS="1",
               RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "bench.cli", "run", "--spec", str(spec), "--address",
           c.address, "--out", str(out), "--no-wandb", "--no-verify", "--data-dir", str(data),
           "--gpus-per-trial", "2"]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    removed: dict[str, object] = {}

    def remove_a_busy_node() -> None:
        """Remove a node once it has finished a search trial and started another: its finished
        trials must be kept as they are, the running one rescheduled."""
        by_id = {n.node_id: n for n in workers}
        while proc.poll() is None:
            finished: dict[str, list[str]] = {}
            for event, trial, node, _ in _events(placement):
                if ":" in trial or node not in by_id:  # selection/final jobs: not searched
                    continue
                if event == "finish":
                    finished.setdefault(node, []).append(trial)
                elif event == "start" and finished.get(node) and trial not in finished[node]:
                    c.remove_node(by_id[node], allow_graceful=False)
                    removed.update(node=node, trial=trial, at_s=time.time() - t0,
                                   finished_there=finished[node],
                                   finished_in_all=sum(map(len, finished.values())))
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=remove_a_busy_node, daemon=True)
    killer.start()
    try:
        stdout, _ = proc.communicate(timeout=800)
    finally:
        if proc.poll() is None:
            proc.kill()
    killer.join(timeout=5)
    assert proc.returncode == 0, stdout[-6000:]
    assert removed, "no node finished a search trial and started another"
    gone = str(removed["node"])
    survivor = next(n.node_id for n in workers if n.node_id != gone)

    # the plan's one line came before the run started
    assert stdout.lstrip().startswith("plan: ~"), stdout[:500]

    trials = pd.read_parquet(out / "trials.parquet")
    final = pd.read_parquet(out / "final.parquet")
    events = _events(placement)
    starts = Counter(node for e, t, node, _ in events if e == "start" and ":" not in t)
    print(f"\nnodes: head (0 CPU) + 2 workers (2 CPU, 4 logical GPU each): "
          f"{[n.node_id[:8] for n in workers]}"
          f"\nsearch trial starts per node (retries included): "
          f"{ {k[:8]: v for k, v in starts.items()} }"
          f"\nremoved {gone[:8]} at {removed['at_s']:.1f} s after the driver started, when "
          f"trial {removed['trial']} had just started there (it had finished "
          f"{len(removed['finished_there'])}, {removed['finished_in_all']} in all)"
          f"\ntrials per node in trials.parquet: {trials.node.str[:8].value_counts().to_dict()}"
          f"\nretries: {trials.retries.sum()}; run wall {time.time() - t0:.0f} s")

    # every trial exactly once, all finished, the killed ones finished elsewhere
    assert len(trials) == NUM_SAMPLES and trials.trial_id.is_unique
    assert (trials.status == "ok").all(), trials[["trial_id", "status", "error"]]
    hit = trials[trials.trial_id == removed["trial"]].iloc[0]
    assert hit.node == survivor and hit.retries >= 1  # rescheduled, not lost
    # what the removed node had finished is kept as it was, never trained again
    kept = trials[trials.trial_id.isin(removed["finished_there"])]
    assert len(kept) == len(removed["finished_there"]) >= 1 and (kept.node == gone).all()
    started = Counter(t for e, t, *_ in events if e == "start")
    assert all(started[t] == 1 for t in removed["finished_there"])
    assert set(trials.node) == {gone, survivor}  # spread over both nodes
    for h in trials.history:
        assert [r["epoch"] for r in json.loads(h)] == [1, 2, 3]
    # the final phase finished (on the node left)
    assert len(final) == FINAL_SEEDS and (final.status == "ok").all()

    # 2 logical GPUs per trial: device ids recorded, device-seconds = 2 x wall
    assert set(trials.gpu_ids) <= {"0,1", "2,3"}
    assert (trials.device_s - 2 * trials.wall_s).abs().max() < 1e-6
    # no two trials running side by side on one node ever held the same GPU (a trial runs from
    # its start to its finish; those on the removed node never finish, and nothing starts
    # there after it is gone)
    running: dict[tuple[str, str], str] = {}  # (node, trial) -> its GPU ids
    clashes, overlaps = [], 0
    for event, trial, node, gpus in events:
        if event == "start":
            beside = [g for (n, t), g in running.items() if n == node and t != trial]
            overlaps += bool(beside)
            if gpus in beside:
                clashes.append((trial, node[:8], gpus))
            running[(node, trial)] = gpus
        elif event == "finish":
            running.pop((node, trial), None)
    assert not clashes, clashes
    assert overlaps >= 1, "no two trials ever ran side by side on a node"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["cluster"]["GPU"] == 4.0, meta["cluster"]  # the node left

"""W&B cost per trial: start a run, log N epochs, finish.

    python scripts/wandb_overhead.py [--runs 10] [--epochs 10]

Prints seconds per run for: offline; online with an unreachable server found by the driver's
probe (`Tracker.from_env`, WANDB_BASE_URL=http://127.0.0.1:9: connection refused), and online
forced past the probe (what a worker pays when the server fails after the probe: one
`init_timeout` per process, then offline). The first run of a process also starts wandb's
service; it is reported separately. Each case runs in a fresh interpreter.

The last case is the path search trials take (`bench.tracking.log_trial_result` /
`end_trial_run`, what the Tune callback calls in the Tuner's process): 4 trials' runs open at
once, their epochs interleaved; its "later runs" figure is the wall time of all runs divided by
their number (the Tuner's loop pays it; the trials themselves pay nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap

CASE = textwrap.dedent("""
    import json, statistics, sys, time, warnings
    from bench.tracking import Tracker
    warnings.simplefilter("ignore")
    runs, epochs, root = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    force_online = sys.argv[4] == "1"
    t0 = time.perf_counter()
    t = Tracker.from_env(True, "overhead", root)
    if force_online:
        t = Tracker(project="overhead", root=root, mode="online", experiment="x",
                    requested="online")
    setup = time.perf_counter() - t0
    times = []
    if sys.argv[5] == "1":  # the Tune callback's path: 4 trials open at once
        from bench.tracking import end_trial_run, log_trial_result
        s = time.perf_counter()
        log_trial_result(t, "g", [], "val_auc", "first", {"lr": 0.1}, {"epoch": 0})
        end_trial_run(t, "val_auc", "first")
        times.append(time.perf_counter() - s)
        s = time.perf_counter()
        for start in range(0, runs, 4):
            ids = [f"t{i}" for i in range(start, min(runs, start + 4))]
            for e in range(1, epochs + 1):
                for trial in ids:
                    log_trial_result(t, "g", [], "val_auc", trial, {"lr": 0.1},
                                     {"epoch": e, "val_auc": 0.5, "train_loss": 1.0})
            for trial in ids:
                end_trial_run(t, "val_auc", trial)
        times.append((time.perf_counter() - s) / runs)  # mean per run, all 4 at a time
        runs = 0
    for i in range(runs):
        s = time.perf_counter()
        r = t.start(name=f"r{i}", group="g", job_type="search", config={"lr": 0.1, "i": i},
                    key=f"t{i}")
        for e in range(epochs):
            r.log({"epoch": e, "val_auc": 0.5, "train_loss": 1.0}, step=e)
        r.finish({"best": 0.5})
        times.append(time.perf_counter() - s)
    print(json.dumps({"mode": t.mode, "used": t.used_mode(), "from_env_s": setup,
                      "first_run_s": times[0], "median_later_run_s": statistics.median(times[1:]),
                      "total_s": time.perf_counter() - t0}))
""")


def run_case(env_extra: dict[str, str], runs: int, epochs: int, force_online: bool,
             callback: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
        env.update(WANDB_CONFIG_DIR=f"{tmp}/cfg", WANDB_CACHE_DIR=f"{tmp}/cache",
                   WANDB_DATA_DIR=f"{tmp}/data", **env_extra)
        out = subprocess.run([sys.executable, "-c", CASE, str(runs), str(epochs), f"{tmp}/run",
                              "1" if force_online else "0", "1" if callback else "0"],
                             env=env, capture_output=True,
                             text=True, check=True, timeout=600)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10)
    a = ap.parse_args()
    unreachable = {"WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    cases = {
        "offline": ({"WANDB_MODE": "offline"}, False),
        "online, server unreachable (driver probe)": (unreachable, False),
        "online, server unreachable (past the probe)": (unreachable, True),
        "offline, search trials via the Tune callback": ({"WANDB_MODE": "offline"}, False),
    }
    for name, (env, force) in cases.items():
        r = run_case(env, a.runs, a.epochs, force, callback="callback" in name)
        print(f"{name:<46} from_env {r['from_env_s']:6.2f} s | first run {r['first_run_s']:6.2f} s"
              f" | later runs (median) {r['median_later_run_s']:6.3f} s | mode {r['mode']}, "
              f"used {r['used']}")


if __name__ == "__main__":
    main()

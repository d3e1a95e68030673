"""Soak test: kill a real `medbench run` N times (SIGKILL and SIGTERM, during the search and the
selection/final phases), resume it each time, then check from the trial trace that every trial
and every final seed finished training exactly once, and that the tables are complete with no
duplicates.

    python scripts/soak.py --kills 6 --seed 0 [--work DIR] [--json report.json]

Tiny synthetic data (bench.data.write_synthetic), one family, ASHA with its only rung at
max_epochs (every search trial is stopped by ASHA at max_t, the case completion records exist
for), a selection phase and final seeds. The trial workers append `event id` lines to
$MEDBENCH_TRACE (bench.trial): `start` (training began), `record` (its completion record was
written, just before its last report), `replay` (a restarted trial re-reported its record
instead of training), `finish`. Search trials are named by Tune's trial id, selection and final
trials by their job (bench.trial.job_label), which survive restarts.

What "exactly once" means here: a training that finished (`record`) is never started again; a
training a kill interrupted before it finished starts over (it has nothing to keep), so a unit
may show more than one `start` but exactly one `record`, and no `start` after its `record`.
Exit 0 when every check passes, 1 otherwise; the report (stdout, --json) lists the kill points
and trainings per unit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STARTUP_FAILED = ("the local Ray node did not start", "timed out during startup")


def read_trace(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split(maxsplit=1)) for line in path.read_text().splitlines()
            if len(line.split(maxsplit=1)) == 2]


def phase_of(unit: str) -> str:
    return unit.split(":", 1)[0] if ":" in unit else "search"


def session_alive(sid: int) -> list[int]:
    """Live (non-zombie) processes of a session: the killed driver's Ray processes."""
    alive = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(d.name))
    return alive


def write_inputs(work: Path, num_samples: int, epochs: int, final_seeds: int) -> Path:
    import yaml

    sys.path.insert(0, str(REPO))
    from bench.data import write_synthetic

    write_synthetic("breastmnist", work / "data", n=(96, 32, 32), seed=0)
    spec = work / "soak.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "soak", "datasets": ["breastmnist"], "families": ["mlp"],
        "num_samples": num_samples, "max_epochs": epochs, "grace_period": epochs,
        "scheduler": "asha", "searcher": "random", "final_seeds": final_seeds,
        "selection": {"top_k": 2, "seeds": 1}, "resources": {"cpu": 1, "gpu": 0},
        "max_failures": 0,
        "overrides": {"mlp": {"hidden": {"values": [32, 64]}, "layers": 1,
                              "batch_size": {"values": [32, 64]}}}}))
    return spec


def run_once(cmd: list[str], env: dict, log: Path, trace: Path, kill: dict | None,
             rng: random.Random, limit_s: float, leftover_wait_s: float = 20) -> dict:
    """One launch; with `kill` ({"phase": search|final, "signal": KILL|TERM}) the driver is
    signalled once its trace shows that phase running, after a random short delay."""
    start_events = len(read_trace(trace))
    t0 = time.time()
    with log.open("a") as out:
        out.write(f"\n=== launch {time.strftime('%H:%M:%S')} kill={kill}\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    info: dict = {"kill": kill, "signalled": False}
    log_start = log.stat().st_size
    try:
        while proc.poll() is None and time.time() - t0 < limit_s:
            with log.open() as f:  # Ray's node missed its start-up wait: this launch is void
                f.seek(log_start)
                if any(m in f.read() for m in STARTUP_FAILED):
                    info["startup_failed"] = True
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            if kill and not info["signalled"]:
                new = read_trace(trace)[start_events:]
                # a trial starting or replaying its record in the wanted phase; a search-phase
                # kill whose search is already over lands in the next phase instead
                begun = [u for e, u in new if e in ("start", "replay")]
                want = [u for u in begun if kill["phase"] == "search"
                        or phase_of(u) != "search"]
                if want:
                    time.sleep(kill["delay_s"])
                    if proc.poll() is not None:
                        break
                    events = read_trace(trace)
                    last = [u for e, u in events[start_events:]
                            if e in ("start", "record", "replay")]
                    info.update(signalled=True, at_s=round(time.time() - t0, 1),
                                events_before=len(events),
                                last_unit=last[-1] if last else None,
                                phase_at_kill=phase_of(last[-1]) if last else None)
                    proc.send_signal(signal.SIGKILL if kill["signal"] == "KILL"
                                     else signal.SIGTERM)
            time.sleep(0.1)
        if proc.poll() is None:
            info["timed_out"] = True
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # a SIGKILLed driver's Ray processes exit on their own (counted if they have not after
    # leftover_wait_s, then killed), so no old worker still writes when the next launch starts
    deadline = time.time() + leftover_wait_s
    while session_alive(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    if left := session_alive(proc.pid):
        info["leftover_processes"] = len(left)
        os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(2)
    info.update(rc=proc.returncode, wall_s=round(time.time() - t0, 1))
    return info


def launch(cmd: list[str], env: dict, log: Path, trace: Path, kill: dict | None,
           rng: random.Random, limit_s: float, leftover_wait_s: float = 20,
           tries: int = 4) -> dict:
    """run_once, again when the Ray node itself failed to start (an overloaded machine: Ray
    2.60 waits a fixed 30 s for its raylet); such launches are counted, not treated as kills."""
    failed = 0
    while True:
        info = run_once(cmd, env, log, trace, kill, rng, limit_s, leftover_wait_s)
        if info.get("startup_failed") and failed + 1 < tries:
            failed += 1
            continue
        info["startup_failures"] = failed
        return info


def check(work: Path, trace: Path, num_samples: int, final_seeds: int) -> dict:
    import pandas as pd

    events = read_trace(trace)
    units = sorted({u for _, u in events})
    per_unit = {}
    problems = []
    for u in units:
        mine = [e for e, x in events if x == u]
        c = Counter(mine)
        after_record = mine[mine.index("record") + 1:] if "record" in mine else []
        per_unit[u] = {"starts": c["start"], "records": c["record"], "replays": c["replay"],
                       "trained_to_the_end": c["record"]}
        if c["record"] != 1:
            problems.append(f"{u}: {c['record']} completed trainings (want exactly 1)")
        if "start" in after_record:
            problems.append(f"{u}: trained again after it had finished")
    run = work / "run"
    tables = {}
    for name in ("trials", "selection", "final"):
        path = run / f"{name}.parquet"
        tables[name] = pd.read_parquet(path) if path.exists() else None
    t, s, f = tables["trials"], tables["selection"], tables["final"]
    if t is None or len(t) != num_samples or not t.trial_id.is_unique \
            or not (t.status == "ok").all():
        problems.append(f"trials.parquet: {None if t is None else len(t)} rows, want "
                        f"{num_samples} unique ok")
    elif set(t.trial_id) != {u for u in units if phase_of(u) == "search"}:
        problems.append("trials.parquet and the trace name different search trials")
    if s is None or len(s) != 2 or s[["candidate", "seed"]].duplicated().any():
        problems.append("selection.parquet: want 2 rows, no duplicate (candidate, seed)")
    if f is None or len(f) != final_seeds or not f.seed.is_unique \
            or not (f.status == "ok").all():
        problems.append(f"final.parquet: want {final_seeds} ok rows with distinct seeds")
    elif not all((run / d / "metrics.json").exists() for d in f.run_dir):
        problems.append("final.parquet: a seed's run directory is missing")
    want_units = num_samples + 2 + final_seeds
    if len(units) != want_units:
        problems.append(f"the trace names {len(units)} trainings, want {want_units}")
    return {"units": per_unit, "problems": problems,
            "rows": {k: None if v is None else len(v) for k, v in tables.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=6, help="how many times to kill the driver")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill schedule")
    ap.add_argument("--num-samples", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--final-seeds", type=int, default=2)
    ap.add_argument("--work", type=Path, help="folder for data, run and trace (default: temp)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    ap.add_argument("--launch-limit-s", type=float, default=600)
    ap.add_argument("--leftover-wait-s", type=float, default=20,
                    help="how long a SIGKILLed driver's Ray processes may take to exit")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="medbench-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    spec = write_inputs(work, args.num_samples, args.epochs, args.final_seeds)
    trace, log = work / "trace.txt", work / "driver.log"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(MEDBENCH_TRACE=str(trace), WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bench.cli", "run", "--spec", str(spec), "--out",
           str(work / "run"), "--data-dir", str(work / "data"), "--no-wandb", "--no-verify"]
    # alternate phases and signals so both meet both phases; the delay is random
    plan = [{"phase": ("search", "final")[i % 2],
             "signal": ("KILL", "TERM", "TERM", "KILL")[i % 4],
             "delay_s": round(rng.uniform(0.0, 2.5), 2)} for i in range(args.kills)]
    launches = []
    t0 = time.time()
    for kill in plan:
        info = launch(cmd, env, log, trace, kill, rng, args.launch_limit_s,
                      args.leftover_wait_s)
        launches.append(info)
        print(json.dumps(info), flush=True)
        if info["rc"] == 0:  # it finished before the kill point: nothing left to kill
            break
    final = launch(cmd, env, log, trace, None, rng, args.launch_limit_s, args.leftover_wait_s)
    launches.append(final)
    print(json.dumps(final), flush=True)
    report = {"kills": sum(bool(x.get("signalled")) for x in launches), "planned": args.kills,
              "seed": args.seed, "work": str(work), "wall_s": round(time.time() - t0, 1),
              "launches": launches, **check(work, trace, args.num_samples, args.final_seeds)}
    if final["rc"] != 0:
        report["problems"].append(f"the last (unkilled) run exited {final['rc']}; see {log}")
    for info in launches[:-1]:
        if info.get("signalled") and info["kill"]["signal"] == "TERM" and info["rc"] != 143:
            report["problems"].append(f"SIGTERM gave exit {info['rc']}, want 143")
    print(json.dumps({k: v for k, v in report.items() if k != "launches"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if not report["problems"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Disk full mid-run, then resume: a real `medbench run` whose run directory lives on a small
tmpfs that a filler file fills once the first search trial has finished (after a random short
delay); the run must fail with one error line naming that file system; the filler is removed
and the same command re-run must complete with every trial trained to the end exactly once.

    sudo python scripts/disk_full.py --tries 6 --seed 0 [--work DIR] [--json report.json]

Needs root (it mounts the tmpfs; exit 77 when it cannot). Per try it reports the first run's
exit code and error line, which of Tune's state files the full disk left unreadable
(`bench.search._unreadable_state`: the "truncations"), the resume's exit code, and from the
trial trace ($MEDBENCH_TRACE, see scripts/soak.py) how many trainings finished per unit:
search trials are counted per config (a Tuner made anew gives them new trial ids), selection
and final trials per job label. Exit 0 when every try passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SPEC = {"name": "diskfull", "datasets": ["breastmnist"], "families": ["mlp"], "num_samples": 4,
        "max_epochs": 2, "grace_period": 2, "scheduler": "fifo", "searcher": "random",
        "final_seeds": 1, "selection": {"top_k": 2, "seeds": 1},
        "resources": {"cpu": 1, "gpu": 0}, "max_failures": 0}
# --quick (the test): `medbench search`, one Tuner per launch, one trial at a time, each trial
# long enough (40 epochs, about a second) that the disk fills while trials are still left to
# run. With 2 epochs a trial trained in 0.05 s: all three wrote their completion records within
# 0.1 s of each other and the run ended before the filler started (CI saw first_rc 0).
QUICK = {**SPEC, "num_samples": 3, "max_epochs": 40, "grace_period": 40, "final_seeds": 0,
         "selection": {}, "max_concurrent_trials": 1}


def mount_tmpfs(folder: Path, mib: int) -> str | None:
    """Mount a `mib` MiB tmpfs on folder; the reason when that is not possible."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "not root"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    return done.stderr.strip() or "mount failed" if done.returncode else None


def fill(folder: Path, mode: str = "wb") -> int:
    """Write (mode "ab": append to) a filler file until the file system is full; returns the
    bytes written."""
    written = 0
    with open(folder / "filler", mode, buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            block = b"\0" * chunk
            try:
                while True:
                    written += f.write(block)
            except OSError:
                continue
    return written


def keep_full(folder: Path, proc: subprocess.Popen) -> threading.Thread:
    """Top the filler up every 20 ms while `proc` runs. Without it a full disk did not stay
    full: a file the run replaces (Tune rewrites its state files, a table is written beside
    and renamed over its old copy) frees pages, and the run's last small writes then found
    room; CI saw the first run finish with exit 0 after the disk had been filled."""
    def top_up() -> None:
        while proc.poll() is None:
            fill(folder, "ab")
            time.sleep(0.02)

    thread = threading.Thread(target=top_up, daemon=True)
    thread.start()
    return thread


def read_trace(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()[:2]) for line in path.read_text().splitlines()
            if len(line.split()) >= 2]


def unreadable(tune_dir: Path) -> dict[str, str]:
    from bench.search import _unreadable_state

    out = {}
    for d in sorted(tune_dir.iterdir()) if tune_dir.is_dir() else []:
        if d.is_dir() and d.name != "completed" and ".unreadable-" not in d.name:
            problem = _unreadable_state(d)
            if problem:
                out[d.name] = problem
    return out


def one_try(work: Path, data: Path, spec_file: Path, delay_s: float, fs_mib: int,
            limit_s: float, spec: dict, command: str) -> dict:
    fs = work / "fs"
    why = mount_tmpfs(fs, fs_mib)
    if why:
        return {"skipped": why}
    trace = work / "trace.txt"
    run_dir = fs / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MEDBENCH_TRACE=str(trace), WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bench.cli", command, "--spec", str(spec_file), "--out",
           str(run_dir), "--data-dir", str(data), "--no-wandb", "--no-verify"]
    info: dict = {"delay_s": delay_s}
    try:
        t0 = time.time()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        done_dir = run_dir / "tune" / "completed"
        while proc.poll() is None and not list(done_dir.glob("*/*.json")):
            if time.time() - t0 > limit_s:
                break
            time.sleep(0.05)
        time.sleep(delay_s)
        info["filled_at_s"] = round(time.time() - t0, 1)
        info["filler_mib"] = round(fill(fs) / 2**20, 1)
        topping = keep_full(fs, proc)
        try:
            out, err = proc.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            out, err = proc.communicate()
        topping.join()
        errors = [ln for ln in (out + err).splitlines() if ln.startswith("error:")]
        info.update(first_rc=proc.returncode, first_s=round(time.time() - t0, 1),
                    error_lines=errors, names_fs=bool(errors) and str(fs) in errors[-1],
                    truncated=unreadable(run_dir / "tune"),
                    records_before=sum(e == "record" for e, _ in read_trace(trace)))
        if proc.returncode == 0:
            info["note"] = "finished before the disk was full"
            info["first_tail"] = (out + err)[-1500:]
        (fs / "filler").unlink()
        t1 = time.time()
        second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                timeout=limit_s)
        info.update(resume_rc=second.returncode, resume_s=round(time.time() - t1, 1),
                    set_aside=sorted(p.name for p in (run_dir / "tune").glob("*.unreadable-*")))
        if second.returncode != 0:
            info["resume_tail"] = (second.stdout + second.stderr)[-1500:]
        info.update(check(run_dir, trace, spec))
    finally:
        subprocess.run(["umount", "-l", str(fs)], check=False)
    return info


def check(run_dir: Path, trace: Path, spec: dict) -> dict:
    """Trainings per unit from the trace, and the tables."""
    import pandas as pd

    events = read_trace(trace)
    by_id = Counter(u for e, u in events if e == "record")
    problems = []
    tables = {n: pd.read_parquet(run_dir / f"{n}.parquet")
              if (run_dir / f"{n}.parquet").exists() else None
              for n in ("trials", "selection", "final")}
    t = tables["trials"]
    if t is None or len(t) != spec["num_samples"] or not (t.status == "ok").all():
        problems.append(f"trials.parquet: {None if t is None else len(t)} rows, want "
                        f"{spec['num_samples']} ok")
    else:
        if t.config.duplicated().any():
            problems.append("trials.parquet: a config twice")
    # search records are named by Tune's trial id, which a new Tuner changes: count per config
    search_records = {u: n for u, n in by_id.items() if ":" not in u}
    per_config: Counter = Counter()
    for u, n in search_records.items():
        rec = next((run_dir / "tune" / "completed").glob(f"*/{u}.json"), None)
        cfg = json.loads(rec.read_text())["config"] if rec else {"unknown": u}
        per_config[json.dumps(cfg, sort_keys=True)] += n
    other = {u: n for u, n in by_id.items() if ":" in u}
    if sorted(per_config.values()) != [1] * spec["num_samples"]:
        problems.append(f"search trainings per config: {sorted(per_config.values())}")
    if any(n != 1 for n in other.values()):
        problems.append(f"selection/final trainings: {other}")
    sel = spec["selection"] or {}
    want_other = sel.get("top_k", 0) * sel.get("seeds", 0) + spec["final_seeds"]
    if len(other) != want_other:
        problems.append(f"{len(other)} selection/final trainings, want {want_other}")
    return {"search_trainings_per_config": sorted(per_config.values()),
            "other_trainings": sorted(other.values()), "problems": problems,
            "rows": {k: None if v is None else len(v) for k, v in tables.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="seed of the fill delays")
    ap.add_argument("--max-delay-s", type=float, default=3.0)
    ap.add_argument("--fs-mib", type=int, default=64)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--limit-s", type=float, default=300)
    ap.add_argument("--quick", action="store_true",
                    help="`medbench search` of 3 trials (no selection or final phase)")
    args = ap.parse_args()
    spec, command = (QUICK, "search") if args.quick else (SPEC, "run")

    import yaml

    from bench.data import write_synthetic

    rng = random.Random(args.seed)
    root = args.work or Path(tempfile.mkdtemp(prefix="medbench-diskfull-"))
    root.mkdir(parents=True, exist_ok=True)
    write_synthetic("breastmnist", root / "data", n=(96, 32, 32), seed=0)
    spec_file = root / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    tries = []
    for i in range(args.tries):
        work = root / f"try{i}"
        work.mkdir()
        info = one_try(work, root / "data", spec_file, round(rng.uniform(0, args.max_delay_s), 2),
                       args.fs_mib, args.limit_s, spec, command)
        print(json.dumps(info), flush=True)
        tries.append(info)
        if "skipped" in info:
            print(f"skipped: cannot mount a tmpfs ({info['skipped']})", file=sys.stderr)
            return 77
    report = {"tries": len(tries),
              "full_mid_run": sum(t.get("first_rc") not in (0, None) for t in tries),
              "named_the_fs": sum(bool(t.get("names_fs")) for t in tries),
              "with_truncations": sum(bool(t.get("truncated")) for t in tries),
              "truncated_files": sum(len(t.get("truncated", {})) for t in tries),
              "resumed_ok": sum(t.get("resume_rc") == 0 for t in tries),
              "every_trial_once": sum(not t.get("problems") for t in tries),
              "tries_detail": tries}
    problems = [f"try {i}: {p}" for i, t in enumerate(tries) for p in t.get("problems", [])]
    problems += [f"try {i}: the full disk's error named no file system: {t['error_lines']}"
                 for i, t in enumerate(tries) if t.get("first_rc") and not t.get("names_fs")]
    problems += [f"try {i}: resume exited {t.get('resume_rc')}" for i, t in enumerate(tries)
                 if t.get("resume_rc") != 0]
    problems += [f"try {i}: set aside {t.get('set_aside')}, unreadable {sorted(t['truncated'])}"
                 for i, t in enumerate(tries) if "truncated" in t and sorted(
                     n.split(".unreadable-")[0] for n in t.get("set_aside", [])) != sorted(
                     t["truncated"])]
    report["problems"] = problems
    print(json.dumps({k: v for k, v in report.items() if k != "tries_detail"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())

"""A whole experiment's run directory: create or resume it, run the search (and final phase),
write the tables and meta.json. `medbench search` and `medbench run` both go through `execute`.

Re-running the same command with the same --name resumes: the run directory's spec.yaml must
equal the new spec (else a clear error and nothing is touched), and each Tuner is restored.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench
from bench.budget import accounting
from bench.errors import UserError
from bench.run_spaces import write_spaces
from bench.rundir import SPEC, RunDir
from bench.runlock import lock_run
from bench.spaces import Spec


def hardware() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "gpu_count": len(gpus),
            "gpu_models": sorted(set(gpus)), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__}


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour decides the numbers (a report states them)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("medmnist-bench", "torch", "numpy", "ray", "optuna", "scikit-learn", "scipy",
                 "pandas", "medmnist", "wandb"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def provenance(datasets: list[str], size: int, data_dir: str | Path | None) -> dict[str, Any]:
    """What every run directory records about how it was made, `medbench run` and `medbench
    train --seeds` alike: the command line (when run as `medbench`), the commit and a hash of
    the code, the package versions, the hardware, and each data file with its md5."""
    import shlex
    import sys

    from bench.data import file_md5, npz_path

    files = {}
    for flag in datasets:
        path = npz_path(flag, size, data_dir)
        files[flag] = {"file": path.name, "md5": file_md5(path) if path.is_file() else None}
    by_cli = bool(sys.argv) and Path(sys.argv[0]).name == "medbench"
    return {"command": shlex.join(["medbench", *sys.argv[1:]]) if by_cli else None,
            "version": bench.__version__, "git_commit": git_commit(),
            "code_sha256": code_sha256(), "hardware": hardware(), "data_files": files,
            "versions": package_versions()}


def reproduction(spec: Spec, data_dir: str | Path | None) -> dict[str, Any]:
    """What a reader needs to re-run this run exactly: the command line, the data files with
    their md5, the package versions, the seeds, and whether the run was deterministic (a fixed
    trial count; otherwise the wall-time budget makes trial counts follow machine load)."""
    return {**provenance(spec.datasets, spec.size, data_dir),
            "deterministic": bool(spec.deterministic),
            "seeds": {"search": 0, "selection": list(range(
                1, 1 + (spec.selection_config.seeds if spec.selection_config else 0))),
                      "final": [spec.final_seed_base + k for k in range(spec.final_seeds)],
                      "reference": [spec.final_seed_base + k
                                    for k in range(spec.reference_seeds)]}}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def code_sha256(repo: Path | None = None) -> str:
    """sha256 over the `bench` package's Python files and its YAML (search spaces; path and
    content, sorted): it names the code that ran even where there is no git checkout, as in a
    `ray job submit` upload, which leaves .git behind."""
    import hashlib

    repo = repo or Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for root, pattern in ((repo / "bench", "*.py"), (repo / "bench", "*.yaml")):
        for f in sorted(root.rglob(pattern)) if root.is_dir() else []:
            h.update(f.relative_to(repo).as_posix().encode() + b"\0")
            h.update(f.read_bytes() + b"\0")
    return h.hexdigest()


def cluster_resources() -> dict[str, float]:
    import ray

    return {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}


def _relative_to(path: str, root: Path) -> str:
    """A path inside the run directory is recorded relative to it (the directory can move)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return path


# Spec fields a resume may change: they add runs beside the finished ones and alter none of
# them (the pipeline reference is extra final-phase seeds, never picked), so `--reference` can
# be added to a finished run without repeating its search. They may grow, never shrink.
ADDABLE = {"reference_seeds": None}


def prepare_run_dir(run_dir: Path, spec: Spec) -> bool:
    """Create a fresh run directory, or accept an existing one of the same spec (resume), or
    of the same spec but for the fields in ADDABLE (spec.yaml then takes the new values).
    Returns True when resuming. Never modifies a directory that holds something else."""
    rd = RunDir(run_dir)
    if run_dir.exists() and any(run_dir.iterdir()):
        if rd.text(SPEC) is None:
            raise UserError(f"{run_dir} exists and is not a medbench run directory; choose "
                            "another --name/--out")
        old = rd.spec()
        if not old.get("faults"):  # a test hook older spec.yaml files carried, always empty
            old.pop("faults", None)
        with contextlib.suppress(TypeError):  # fields added to Spec since take their defaults
            old = Spec(**old).to_dict()
        new = spec.to_dict()
        if {**old, **ADDABLE} != {**new, **ADDABLE} \
                or any(new[k] < old.get(k, 0) for k in ADDABLE):
            raise UserError(f"{run_dir} holds a run of a different spec; resume it with the "
                            "same options, or choose another --name")
        if old != new:  # only more reference seeds: the run takes them on, nothing else changes
            rd.write_spec(new)
        return True
    rd.write_spec(spec.to_dict())
    write_spaces(run_dir, spec)  # the spaces searched, as they were (bench.run_spaces)
    return False


def execute(spec: Spec, run_dir: Path, *, storage: str | None = None, address: str | None = None,
            data_dir: str | Path | None = None, wandb: bool = True, final: bool = True,
            num_cpus: int | None = None, echo: Callable[[str], None] = print,
            then: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Search (+ final phase) into run_dir; returns meta. Bad input fails before Ray starts.
    The run directory stays locked until `then(meta)` (the leaderboard and report of
    `medbench run`) has returned too, so a second driver never sees a half-published run."""
    from bench.data import file_status, load_arrays
    from bench.preflight import check_local_capacity, check_splits, is_local, wait_for_capacity
    from bench.search import init_ray, search
    from bench.tracking import Tracker

    run_dir = Path(run_dir).resolve()
    if storage and "://" not in storage:
        storage = str(Path(storage).resolve() / spec.name)
    elif storage:
        storage = storage.rstrip("/") + "/" + spec.name
    else:
        storage = str(run_dir / "tune")
    # loaded and checked once per run: a missing/corrupt file fails before anything is created
    arrays = {flag: load_arrays(flag, spec.size, data_dir, verify_md5=spec.verify_md5)
              for flag in spec.datasets}
    check_splits(arrays)  # an empty split: one line now, not every trial failing later
    if is_local(address):  # trials this machine can never fit: refused before Ray starts
        check_local_capacity(spec, num_cpus)
    if address:
        init_ray(address)  # an unreachable cluster is reported before the run dir is made
    resumed = prepare_run_dir(run_dir, spec)
    locks = lock_run(run_dir, storage)  # a second driver on this run refuses (bench/runlock.py)
    try:
        echo(f"{'resuming' if resumed else 'starting'} {spec.name}: {len(spec.pairs())} "
             f"experiments ({', '.join(spec.datasets)} x {', '.join(spec.families)}), "
             f"{spec.num_samples} trials each -> {run_dir}")
        init_ray(address, num_cpus)
        if is_local(address):  # its agents would outlive a SIGKILLed driver by a minute
            from bench.runlock import reap_with_driver

            reap_with_driver()
        # a cluster may lack a node big enough for a trial until an autoscaler adds one
        wait_for_capacity(spec, echo, timeout_s=0 if is_local(address) else None)
        tracker = Tracker.from_env(wandb, spec.project, run_dir, experiment=spec.name)
        t0 = time.time()
        try:
            tables = search(spec, run_dir, storage, arrays, tracker, echo, final=final)
        except (KeyboardInterrupt, UserError):
            raise
        except Exception as e:  # a full disk surfaces as Tune failing to read what it wrote
            problem = disk_full_problem(e, [run_dir, storage])
            if problem is None:
                raise
            from bench.errors import RunFailure

            raise RunFailure(problem) from e
        trials, finals = tables["trials"], tables["final"]
        rd = RunDir(run_dir)
        rd.write_trials(trials)
        if tables["selection"]:
            rd.write_selection(tables["selection"])
        if final:
            rd.write_final(finals)
        from bench.search import resolve_resources, trial_slots

        slots = trial_slots(resolve_resources(spec), cluster_resources())
        spent = accounting(spec, tables, slots, time.time() - t0)
        for flag, b in spent["datasets"].items():
            planned = (f" of {b['planned_device_s']:.0f} planned" if b["planned_device_s"]
                       else " (no budget set)")
            echo(f"budget {flag}: {b['spent_device_s']:.0f}{planned} device-s "
                 f"(search {b['search_device_s']:.0f}, selection "
                 f"{b['selection_device_s']:.0f}, final {b['final_device_s']:.0f})")
        meta = {"name": spec.name, "cluster": cluster_resources(),
                "storage": _relative_to(storage, run_dir),
                "resumed": resumed, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "wall_s": time.time() - t0, "n_trials": len(trials),
                "n_failed_trials": sum(t["status"] == "failed" for t in trials),
                "n_retries": sum(int(t.get("retries") or 0) for t in trials),
                "n_final_runs": len(finals), "wandb_mode": tracker.used_mode(), "budget": spent,
                "official_data": {flag: file_status(flag, spec.size, data_dir) == "md5 ok"
                                  for flag in spec.datasets},
                **reproduction(spec, data_dir)}
        meta["failures"] = first_errors(trials, finals)
        for where, text in meta["failures"].items():
            echo(f"FAILED {where}: {text}")
        meta["problems"] = outcome_problems(spec, trials, finals, final)
        keep_wall_time(meta, rd.previous_meta() if resumed else {})
        rd.write_meta(meta)
        if then is not None:  # publishing (leaderboard, report) while the run is still locked
            then(meta)
        return meta
    finally:
        locks.release()


FULL_BELOW_BYTES = 8 << 20  # a file system with less free than this counts as full


def mount_point(path: str | Path) -> Path:
    """The mount point of the file system holding `path` (its nearest existing folder)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def space_text(path: str | Path) -> str:
    """`file system /mnt/x: 0 MiB free of 64 MiB` for the file system holding `path`."""
    import shutil

    where = mount_point(path)
    usage = shutil.disk_usage(where)
    return (f"file system {where}: {usage.free / 2**20:.0f} MiB free of "
            f"{usage.total / 2**20:.0f} MiB")


def disk_full_problem(exc: BaseException, folders: list[str | Path]) -> str | None:
    """One line for a failure a full disk caused, or None: the file named by an ENOSPC error in
    the exception's chain (or, when Tune only failed to read a file it had cut short, the first
    Tune state file the full disk left unreadable, else the run's folder), the file system
    that is full, and what to do. Re-running resumes: Tune state left truncated is set aside
    and finished trials replay (bench.search._tuner)."""
    import errno
    import shutil

    named = None
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            named = e.filename or named
        e = e.__cause__ or e.__context__
    full = []
    for folder in folders:
        if "://" in str(folder):
            continue
        try:
            if shutil.disk_usage(mount_point(folder)).free < FULL_BELOW_BYTES:
                full.append(folder)
        except OSError:
            continue
    if not full:
        return None
    what = f"could not write {named}" if named else None
    if what is None:
        from bench.search import unreadable_file

        for folder in full:
            subdirs = Path(folder).iterdir() if Path(folder).is_dir() else []
            for tuner in sorted(p for p in subdirs if p.is_dir()):
                if found := unreadable_file(tuner):
                    what = f"it left {found[0]} unreadable ({found[1].lstrip(': ')})"
                    break
            if what:
                break
    what = what or f"while writing the run at {full[0]}"
    return (f"disk full: {type(exc).__name__}, {what} ({space_text(named or full[0])}); free "
            "some space there and re-run the same command to resume (finished trials are kept)")


def keep_wall_time(meta: dict[str, Any], previous: dict[str, Any]) -> None:
    """A finished run re-run with the same command replays every trial in seconds: its
    meta.json keeps the wall time and finish time of the attempt that did the work, and lists
    the re-run under `reopened`. A re-run that added runs (e.g. `run` after `search` of the
    same spec) adds its wall time to the earlier one."""
    if previous.get("wall_s") is None:
        return
    this = {"at": meta["finished_at"], "wall_s": meta["wall_s"]}
    counts = ("n_trials", "n_final_runs", "n_failed_trials")
    if all(previous.get(k) == meta[k] for k in counts):  # nothing new ran: only replays
        meta.update(wall_s=previous["wall_s"],
                    finished_at=previous.get("finished_at", meta["finished_at"]))
        meta["reopened"] = [*previous.get("reopened", []), this]
    else:
        meta["wall_s"] = float(previous["wall_s"]) + float(meta["wall_s"])


def first_errors(trials: list[dict], finals: list[dict]) -> dict[str, str]:
    """Per failing experiment (`dataset/family`, or `final dataset/family`): how many of its
    runs failed and the first one's error, so a failure is visible without opening tables."""
    out: dict[str, str] = {}
    for label, rows in (("", trials), ("final ", finals)):
        groups: dict[str, list[dict]] = {}
        for r in rows:
            groups.setdefault(f"{label}{r['dataset']}/{r['family']}", []).append(r)
        for key, group in groups.items():
            failed = [r for r in group if r.get("status") == "failed"]
            if failed:
                out[key] = (f"{len(failed)} of {len(group)} "
                            f"{'runs' if label else 'trials'} failed; first error: "
                            f"{failed[0].get('error') or 'unknown'}")
    return out


def outcome_problems(spec: Spec, trials: list[dict], finals: list[dict],
                     final: bool) -> list[str]:
    """Why this run must exit non-zero (empty: success): every trial failed, or a requested
    (dataset, family) has no successful final run."""
    problems = []
    if trials and all(t.get("status") == "failed" for t in trials):
        problems.append(f"all {len(trials)} search trials failed")
    if final and spec.final_seeds:
        done = {(r["dataset"], r["family"]) for r in finals if r.get("status") == "ok"}
        missing = [f"{d}/{f}" for d, f in spec.pairs() if (d, f) not in done]
        if missing:
            problems.append(f"no final result for {', '.join(missing)}")
    return problems


def final_table(run_dir: Path) -> str:
    """The plain per-(dataset, family) final results: mean +- std over seeds."""
    df = RunDir(run_dir).final()
    ok = df[df.status == "ok"]
    if ok.empty:
        return "no successful final runs"
    g = ok.groupby(["dataset", "family"]).agg(
        seeds=("seed", "count"), test_acc=("test_acc", "mean"), acc_std=("test_acc", "std"),
        test_auc=("test_auc", "mean"), auc_std=("test_auc", "std"), val_auc=("val_auc", "mean"))
    lines = [f"{'dataset':<16}{'family':<13}{'seeds':>6}{'test ACC':>18}{'test AUC':>18}"]
    for (d, f), r in g.iterrows():
        lines.append(f"{d:<16}{f:<13}{int(r.seeds):>6}{r.test_acc:>10.4f} ± {r.acc_std:.4f}"
                     f"{r.test_auc:>10.4f} ± {r.auc_std:.4f}")
    return "\n".join(lines)


def publish(run_dir: Path, report: Path | None = None, wandb: bool = True,
            project: str = "medmnist-bench", n_boot: int = 1000,
            data_dir: str | Path | None = None) -> tuple[str, Path]:
    """The end of `medbench run`: leaderboard.md in the run dir, the report with figures, and
    the leaderboard as a W&B run. The board is built once (its bootstrap is the costly part)
    and handed to the report; `data_dir` lets the report show misclassified test images.
    Returns (board markdown, report path)."""
    from bench.leaderboard import build_leaderboard, format_board, read_meta
    from bench.report import write_report
    from bench.results import write_text
    from bench.tracking import Tracker, log_leaderboard

    run_dir = Path(run_dir)
    board = build_leaderboard(run_dir, n_boot=n_boot, data_dir=data_dir)
    text = format_board(board, "md")
    write_text(run_dir / "leaderboard.md", text + "\n")
    report = write_report(run_dir, report or run_dir / "report.md", n_boot=n_boot, board=board,
                          data_dir=data_dir)
    figures = {p.stem: p for p in sorted(report.parent.glob(f"{report.stem}_figures/*.png"))}
    # named after the experiment (the spec's name, as its trials' runs are), not the directory
    experiment = read_meta(run_dir).get("name")
    log_leaderboard(Tracker.from_env(wandb, project, run_dir, experiment=experiment), board,
                    figures)
    return text, report

"""The Ray Tune search layer end to end, on tiny synthetic data.

In-process runs (`bench.experiment.execute`) share one Ray session (module fixture); the
resume and bad-input tests run `python -m bench.cli` in subprocesses, which start their own.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bench.results import FINAL_COLUMNS, TRIAL_COLUMNS
from bench.spaces import build_spec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
N = (64, 32, 32)  # train, val, test images per synthetic subset


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Small synthetic breastmnist (binary) and chestmnist (multi-label, 14 labels)."""
    from bench.data import write_synthetic

    root = tmp_path_factory.mktemp("search-data")
    for flag in ("breastmnist", "chestmnist"):
        write_synthetic(flag, root, n=N, seed=0)
    return root


@pytest.fixture(scope="module")
def ray_session():
    import ray

    from bench.search import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def spec_of(**kw):
    raw = {"name": "t", "datasets": ["breastmnist"], "families": ["mlp"], "num_samples": 2,
           "max_epochs": 1, "grace_period": 1, "scheduler": "fifo", "final_seeds": 0,
           "verify_md5": False, "resources": {"cpu": 1, "gpu": 0}, **kw}
    return build_spec(raw)


def execute(spec, run_dir: Path, data_dir: Path, final: bool = True):
    from bench.experiment import execute as run

    lines: list[str] = []
    meta = run(spec, run_dir, data_dir=data_dir, wandb=False, final=final,
               num_cpus=2, echo=lines.append)
    return meta, lines


def tables(run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    trials = pd.read_parquet(run_dir / "trials.parquet")
    final = run_dir / "final.parquet"
    return trials, (pd.read_parquet(final) if final.exists() else None)


# --- 1. a whole tiny experiment in-process -------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_run(ray_session, data_dir, tmp_path_factory):
    spec = spec_of(name="tiny", datasets=["breastmnist", "chestmnist"],
                   families=["cnn_small", "mlp"], num_samples=2, max_epochs=2,
                   scheduler="asha", final_seeds=2, searcher="random")
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    t0 = time.time()
    meta, lines = execute(spec, run_dir, data_dir)
    return spec, run_dir, meta, lines, time.time() - t0


def test_run_directory_spec_and_meta(tiny_run):
    spec, run_dir, meta, lines, wall = tiny_run
    assert lines[0].startswith("starting tiny: 4 experiments")
    # 2 CPUs, 1 per trial: two Tuners at a time, the other two start as slots free up
    assert "4 experiments, 2 at a time (max_concurrent_experiments)" in lines
    assert yaml.safe_load((run_dir / "spec.yaml").read_text()) == spec.to_dict()
    on_disk = json.loads((run_dir / "meta.json").read_text())
    assert on_disk["name"] == "tiny" and on_disk["resumed"] is False
    assert on_disk["official_data"] == {"breastmnist": False, "chestmnist": False}  # synthetic
    assert re.fullmatch(r"[0-9a-f]{40}", on_disk["git_commit"])
    from bench.experiment import code_sha256

    assert on_disk["code_sha256"] == code_sha256() and len(on_disk["code_sha256"]) == 64
    hw = on_disk["hardware"]
    assert hw["cpu_count"] >= 1 and hw["torch"] and "gpu_count" in hw
    assert 0 < on_disk["wall_s"] <= wall
    assert (on_disk["n_trials"], on_disk["n_failed_trials"], on_disk["n_final_runs"]) == (8, 0, 8)
    assert on_disk["wandb_mode"] == "disabled"
    assert on_disk["cluster"]["CPU"] == 2


def test_trials_table(tiny_run):
    spec, run_dir, *_ = tiny_run
    trials, _ = tables(run_dir)
    assert list(trials.columns) == TRIAL_COLUMNS
    assert trials.groupby(["dataset", "family"]).size().to_dict() == {
        (d, f): 2 for d in spec.datasets for f in spec.families}
    assert (trials.status == "ok").all() and trials.error.isna().all()
    assert trials.trial_id.is_unique
    for _, t in trials.iterrows():
        hist = json.loads(t.history)
        assert 1 <= len(hist) == t.epochs_run <= spec.max_epochs
        assert [h["epoch"] for h in hist] == list(range(1, len(hist) + 1))
        assert all(0 <= h["val_auc"] <= 1 for h in hist)
        assert t.best_val_auc == max(h["val_auc"] for h in hist)
        assert hist[t.best_epoch - 1]["val_auc"] == t.best_val_auc
        assert not any(k.startswith("test") for h in hist for k in h)  # no test peeking
        cfg = json.loads(t.config)
        assert (cfg["dataset"], cfg["model"], cfg["seed"]) == (t.dataset, t.family, 0)
        assert cfg["epochs"] == spec.max_epochs and "phase" not in cfg
        assert t.wall_s > 0 and t.device_s == pytest.approx(t.wall_s)
    assert not any(c.startswith("test") for c in trials.columns)


def test_final_table_and_seed_directories(tiny_run):
    spec, run_dir, *_ = tiny_run
    _, final = tables(run_dir)
    assert list(final.columns) == FINAL_COLUMNS
    assert (final.status == "ok").all()
    base = spec.final_seed_base
    for (d, f), g in final.groupby(["dataset", "family"]):
        assert sorted(g.seed) == [base, base + 1], (d, f)
    assert (final.seed >= base).all() and (final.seed != 0).all()
    for col in ("test_auc", "test_acc", "val_auc", "val_acc"):
        assert final[col].notna().all() and final[col].between(0, 1).all(), col
    for _, r in final.iterrows():
        folder = run_dir / r.run_dir
        assert folder == run_dir / "final" / r.dataset / r.family / f"seed{r.seed}"
        for name in ("scores.npz", "metrics.json", "model.pt", "config.yaml", "history.csv"):
            assert (folder / name).is_file(), folder / name
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["test_auc"] == pytest.approx(r.test_auc)
        assert metrics["dataset"] == r.dataset
        for split in ("val", "test"):
            csvs = list(folder.glob(f"{r.dataset}_{split}_*@{r.family}-seed{r.seed}.csv"))
            assert len(csvs) == 1, (folder, split)
            rows = pd.read_csv(csvs[0], header=None)
            assert len(rows) == N[1 if split == "val" else 2]
        assert json.loads(r.config)["seed"] == r.seed


def test_final_config_is_the_top_search_trial_by_selections_rule(tiny_run):
    """Without a selection phase the final config is still chosen by bench.selection's rule:
    a trial that ran its full epochs before an ASHA-stopped one, then (val AUC + val ACC) / 2
    (tests/test_decision_rules.py pins the rule on cases where other rules disagree)."""
    _, run_dir, *_ = tiny_run
    trials, final = tables(run_dir)
    ok = trials[trials.status == "ok"]
    for (d, f), g in ok.groupby(["dataset", "family"]):
        full = g.epochs_run >= [json.loads(c)["epochs"] for c in g.config]
        key = pd.DataFrame({"stopped": ~full, "neg": -(g.best_val_auc + g.best_val_acc) / 2})
        first = key.sort_values(["stopped", "neg"]).iloc[0]
        top = g[(key.stopped == first.stopped) & (key.neg == first.neg)]
        best_configs = [json.loads(c) for c in top.config]
        for cfg in final[(final.dataset == d) & (final.family == f)].config:
            chosen = {k: v for k, v in json.loads(cfg).items() if k != "seed"}
            assert any(chosen == {k: v for k, v in b.items() if k != "seed"}
                       for b in best_configs), (d, f)


# --- 2. retries and failed trials ----------------------------------------------------------------

def test_wait_all_keeps_at_most_cap_tasks_in_flight(ray_session):
    import ray

    from bench.progress import start_board
    from bench.search import _wait_all

    @ray.remote(num_cpus=0)
    def span(i: int) -> tuple[int, float, float]:
        t0 = time.time()
        time.sleep(0.4)
        return i, t0, time.time()

    starters = [lambda i=i: span.remote(i) for i in range(5)]
    out = _wait_all(starters, start_board(), lambda _: None, time.time(), every=0.05, cap=2)
    assert [i for i, _, _ in out] == list(range(5))  # results in the order given
    in_flight = [sum(a <= t < b for _, a, b in out) for _, t, _ in out]
    assert max(in_flight) <= 2, out
    assert out[2][1] >= min(out[0][2], out[1][2])  # the third started only once a slot freed


def inject_faults(monkeypatch, **plan) -> None:
    """Fault injection reaches trials through $MEDBENCH_FAULTS, never through the spec."""
    monkeypatch.setenv("MEDBENCH_FAULTS", json.dumps(plan))


def test_a_failing_trial_is_retried_and_ends_ok(ray_session, data_dir, tmp_path, monkeypatch):
    faults = tmp_path / "faults"
    inject_faults(monkeypatch, trials=[0], times=1, dir=str(faults))
    spec = spec_of(name="retry", max_failures=2)
    assert "faults" not in spec.to_dict()  # test hooks stay out of the user's spec.yaml
    meta, _ = execute(spec, tmp_path / "run", data_dir, final=False)
    trials, final = tables(tmp_path / "run")
    assert final is None  # search only
    assert len(trials) == 2 and (trials.status == "ok").all()
    assert meta["n_failed_trials"] == 0
    attempts = {p.name.rsplit("_", 1)[-1]: int(p.read_text()) for p in faults.iterdir()}
    assert attempts == {"00000": 2}  # failed once, retried once, then ok
    assert [len(json.loads(h)) for h in trials.history] == [1, 1]


def test_optuna_searcher(ray_session, data_dir, tmp_path, monkeypatch):
    # Optuna's trial ids carry no index, so the fault hook must leave them alone
    faults = tmp_path / "faults"
    inject_faults(monkeypatch, trials=[0, 1], times=5, dir=str(faults))
    spec = spec_of(name="optuna", searcher="optuna")
    execute(spec, tmp_path / "run", data_dir, final=False)
    trials, _ = tables(tmp_path / "run")
    assert len(trials) == 2 and (trials.status == "ok").all()
    assert not faults.exists()
    assert trials.config.nunique() == 2  # two different proposals
    assert not trials.trial_id.str.contains("_").any()  # Optuna's ids, not the random ones
    assert list((tmp_path / "run" / "tune" / "breastmnist__mlp").glob("searcher-state*"))


def test_a_trial_that_keeps_failing_is_recorded_and_the_run_completes(ray_session, data_dir,
                                                                      tmp_path, monkeypatch):
    faults = tmp_path / "faults"
    inject_faults(monkeypatch, trials=[1], times=5, dir=str(faults))
    spec = spec_of(name="failing", max_failures=1, final_seeds=1)
    meta, _ = execute(spec, tmp_path / "run", data_dir)
    trials, final = tables(tmp_path / "run")
    by_index = {t.trial_id.rsplit("_", 1)[-1]: t for _, t in trials.iterrows()}
    assert set(by_index) == {"00000", "00001"}
    bad, good = by_index["00001"], by_index["00000"]
    assert bad.status == "failed" and "injected fault" in bad.error
    assert bad.best_val_auc is None or pd.isna(bad.best_val_auc)
    assert good.status == "ok" and pd.isna(good.error)
    assert int((faults / bad.trial_id).read_text()) == spec.max_failures + 1
    assert meta["n_failed_trials"] == 1
    assert len(final) == 1 and final.status.iloc[0] == "ok"
    chosen = {k: v for k, v in json.loads(final.config.iloc[0]).items() if k != "seed"}
    assert chosen == {k: v for k, v in json.loads(good.config).items() if k != "seed"}


# --- 3. resume after a killed driver -------------------------------------------------------------

def _procs() -> dict[int, dict]:
    """Live processes from /proc: pid -> state, ppid, session id, command line."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(d.name)] = {"state": fields[0], "ppid": int(fields[1]), "sid": int(fields[3]),
                            "cmd": cmd.strip()}
    return out


def _session_processes(sid: int) -> dict[int, str]:
    """Processes left from the session a killed driver led (zombies do not count)."""
    return {pid: p["cmd"] for pid, p in _procs().items()
            if p["sid"] == sid and p["state"] != "Z"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench.cli", *args]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MEDBENCH_TRACE", "RAY_ADDRESS")}
    return {**env, "WANDB_MODE": "disabled", **extra}


def _trace(path: Path) -> list[tuple[str, str]]:
    if not path.exists():
        return []
    return [tuple(line.split()) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.timeout(600)
def test_resume_after_the_driver_is_killed(data_dir, tmp_path):
    num_samples = 6
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "resume", "datasets": ["breastmnist"], "families": ["mlp"],
        "num_samples": num_samples, "max_epochs": 2, "scheduler": "fifo", "final_seeds": 0,
        "resources": {"cpu": 1, "gpu": 0}}))
    out, trace = tmp_path / "run", tmp_path / "trace.txt"
    cmd = _cli("search", "--spec", str(spec_file), "--out", str(out), "--no-wandb",
               "--no-verify", "--data-dir", str(data_dir))
    env = _env(MEDBENCH_TRACE=str(trace))

    log1 = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log1, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while sum(e == "finish" for e, _ in _trace(trace)) < 2:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.time() < deadline, "no two trials finished in 300 s"
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log1.close()
    # nothing of the killed driver's Ray session survives it (raylet, GCS, workers)
    deadline = time.time() + 30
    while (left := _session_processes(proc.pid)) and time.time() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of the killed driver's session still run: {left}"
    before = _trace(trace)  # read once no trial of the first run can still write to it
    finished = {t for e, t in before if e == "finish"}
    assert 2 <= len(finished) < num_samples

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=400)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming resume" in second.stdout

    after = _trace(trace)[len(before):]
    restarted = {t for e, t in after if e == "start"}
    assert not finished & restarted, f"finished trials trained again: {finished & restarted}"
    trials = pd.read_parquet(out / "trials.parquet")
    assert len(trials) == num_samples and trials.trial_id.is_unique
    assert (trials.status == "ok").all(), trials[["trial_id", "status", "error"]]
    assert set(trials.trial_id) == finished | restarted | {t for e, t in after if e == "replay"}
    for h in trials.history:
        assert [r["epoch"] for r in json.loads(h)] == [1, 2]
    assert json.loads((out / "meta.json").read_text())["resumed"] is True


# --- 4. bad input through the CLI ----------------------------------------------------------------

GOOD = {"name": "bad-input", "datasets": ["breastmnist"], "families": ["mlp"], "num_samples": 1,
        "max_epochs": 1, "grace_period": 1, "final_seeds": 0, "verify_md5": False,
        "resources": {"cpu": 1, "gpu": 0}}

# name -> (spec changes or a raw YAML text, extra CLI args, text the error must contain)
BAD = {
    "unknown family": ({}, ["--families", "mlp,nosuchnet"], "unknown model 'nosuchnet'"),
    "unknown dataset": ({}, ["--datasets", "nosuchmnist"], "unknown dataset 'nosuchmnist'"),
    "malformed yaml": ("name: x\ndatasets: [breastmnist\nfamilies: {mlp", [], "not valid YAML"),
    "grace above max epochs": ({"grace_period": 3, "max_epochs": 2}, [],
                               "grace_period 3 is above max_epochs 2"),
    "num_samples 0": ({}, ["--num-samples", "0"], "num_samples must be at least 1"),
    "unreachable address": ({}, ["--address", "127.0.0.1:1"], "'127.0.0.1:1'"),
    "different spec in run dir": ({"num_samples": 2}, [], "holds a run of a different spec"),
    "missing spec file": (None, [], "not found"),
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def bad_runs(data_dir, tmp_path_factory):
    """Every bad invocation at once (they are independent), each pointed at the same existing
    run directory; returns name -> (completed process, seconds, snapshot before, after)."""
    from bench.experiment import prepare_run_dir

    root = tmp_path_factory.mktemp("bad-input")
    run_dir = root / "existing"
    prepare_run_dir(run_dir, build_spec(dict(GOOD)))
    (run_dir / "trials.parquet").write_bytes(b"not really parquet, must stay as it is")
    before = _snapshot(run_dir)
    procs = {}
    for name, (change, args, _) in BAD.items():
        spec_file = root / f"{name.replace(' ', '_')}.yaml"
        if isinstance(change, str):
            spec_file.write_text(change)
        elif change is not None:
            spec_file.write_text(yaml.safe_dump({**GOOD, **change}))
        cmd = _cli("run", "--spec", str(spec_file), "--out", str(run_dir), "--no-wandb",
                   "--data-dir", str(data_dir), *args)
        procs[name] = (subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True), time.time())
    results = {}
    for name, (p, t0) in procs.items():
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
        results[name] = (p.returncode, out, err, time.time() - t0)
    return results, before, _snapshot(run_dir)


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_exits_2_with_one_error_line(bad_runs, name):
    results, before, after = bad_runs
    rc, out, err, seconds = results[name]
    text = out + err
    assert rc == 2, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    assert BAD[name][2] in errors[0], errors[0]
    assert after == before  # the existing run directory is untouched, byte for byte
    if name == "unreachable address":
        # Python + torch imports take most of it on a loaded 2-core box; a hang was minutes
        assert seconds < 90, f"an unreachable --address took {seconds:.0f} s to fail"

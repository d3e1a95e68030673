"""bench.tracking: W&B is optional telemetry that never blocks, fails or leaks a benchmark run.

All tests run W&B offline (no network here); together they take a few seconds.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from wandb_reader import offline_runs, read_offline_run

from bench import tracking
from bench.tracking import TrackedRun, Tracker, TrackingWarning, log_leaderboard

REPO = Path(__file__).resolve().parents[1]
# WANDB_SERVICE: wandb puts its service address in os.environ, so a child process would reuse
# this process's wandb-core (started with a different environment) instead of its own.
WANDB_ENV = (
    "WANDB_MODE",
    "WANDB_API_KEY",
    "WANDB_DIR",
    "WANDB_SILENT",
    "WANDB_BASE_URL",
    "WANDB_SERVICE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No WANDB_* leaks in from the developer's shell; W&B caches go to the test's tmp dir."""
    for name in WANDB_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    tracking._reset_process_state()
    yield
    tracking._reset_process_state()


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a snippet in a fresh interpreter (fresh sys.modules, fresh wandb service env)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- mode resolution -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("enabled", "env", "mode"),
    [
        (False, {"WANDB_API_KEY": "k" * 40}, "disabled"),
        (True, {}, "offline"),
        (True, {"WANDB_API_KEY": "k" * 40}, "online"),
        (True, {"WANDB_MODE": "online"}, "online"),
        (True, {"WANDB_MODE": "offline", "WANDB_API_KEY": "k" * 40}, "offline"),
        (True, {"WANDB_MODE": "disabled", "WANDB_API_KEY": "k" * 40}, "disabled"),
        (True, {"WANDB_MODE": "dryrun"}, "offline"),
    ],
)
def test_from_env_resolves_mode(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, enabled: bool, env: dict[str, str], mode: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(tracking, "_server_reachable", lambda timeout: (True, ""))
    t = Tracker.from_env(enabled, "proj", tmp_path)
    assert t.mode == mode
    assert t.used_mode() == mode


def test_unreachable_server_goes_offline_on_the_driver(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """One TCP connect on the driver, not a wandb.init timeout in every worker; recorded."""
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    with pytest.warns(TrackingWarning, match="unreachable.*127.0.0.1:9"):
        t = Tracker.from_env(True, "proj", tmp_path)
    assert (t.requested, t.mode, t.used_mode()) == ("online", "offline", "fallback")
    run = t.start(name="a", group="g", job_type="search", config={"x": 1})
    run.log({"y": 1}, step=0)
    run.finish()
    (run_dir,) = offline_runs(tmp_path)
    assert read_offline_run(run_dir).history[0]["y"] == 1


def test_used_mode_reports_runs_that_fell_back(tmp_path: Path) -> None:
    t = Tracker(project="p", root=str(tmp_path), mode="online", requested="online")
    assert t.used_mode() == "online"
    t._record_mode("online")
    assert t.used_mode() == "online"
    t._record_mode("offline")  # a worker whose online init failed
    assert t.used_mode() == "fallback"


def test_empty_wandb_mode_from_ray_runtime_env_is_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Ray turns `WANDB_MODE: ${WANDB_MODE}` into "" where unset; wandb.init rejects ""."""
    monkeypatch.setenv("WANDB_MODE", "")
    monkeypatch.setenv("WANDB_API_KEY", "")
    t = Tracker.from_env(True, "proj", tmp_path)
    assert t.mode == "offline"
    run = t.start(name="a", group="g", job_type="trial", config={})
    assert run.live
    run.finish()
    assert "WANDB_MODE" not in os.environ


def test_run_id_is_deterministic_valid_and_unique() -> None:
    assert tracking.run_id("quick", "ab12c_00003") == "quick-ab12c_00003"
    long = tracking.run_id("x" * 80, "ab12c_00003")
    assert len(long) <= 64 and long == tracking.run_id("x" * 80, "ab12c_00003")
    assert long != tracking.run_id("x" * 79 + "y", "ab12c_00003")
    odd = tracking.run_id("my run/2", "t1")
    assert set(odd) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
    assert odd != tracking.run_id("my run-2", "t1")


def test_tracker_is_picklable_and_root_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    t = Tracker.from_env(True, "proj", "runs/x")
    assert Path(t.root).is_absolute()
    assert t.root == str(tmp_path / "runs" / "x")
    assert pickle.loads(pickle.dumps(t)) == t
    with pytest.raises(ValueError, match="mode"):
        Tracker(project="p", root=str(tmp_path), mode="sometimes")


# --- disabled ----------------------------------------------------------------------------------


def test_disabled_is_noop_without_importing_wandb(tmp_path: Path) -> None:
    root = tmp_path / "run"
    code = f"""
        import sys
        from pathlib import Path
        import pandas as pd
        from bench.tracking import Tracker, TrackedRun, log_leaderboard
        assert "wandb" not in sys.modules, "import bench.tracking must not import wandb"
        t = Tracker.from_env(False, "proj", {str(root)!r})
        run = t.start(name="a", group="g", job_type="trial", config={{"lr": 0.1}})
        assert type(run) is TrackedRun and not run.live
        run.log({{"loss": 1.0}}, step=0)
        run.finish({{"best": 1.0}})
        log_leaderboard(t, pd.DataFrame({{"acc": [0.5]}}), {{}})
        assert "wandb" not in sys.modules, "a disabled tracker must not import wandb"
        assert not Path({str(root)!r}).exists(), "a disabled tracker must not create dirs"
        print("OK")
    """
    env = {k: v for k, v in os.environ.items() if k not in WANDB_ENV}
    res = run_python(code, env)
    assert res.returncode == 0, res.stderr
    assert "OK" in res.stdout


# --- offline -----------------------------------------------------------------------------------


def test_offline_run_records_config_history_summary(tmp_path: Path) -> None:
    t = Tracker.from_env(True, "medbench-test", tmp_path / "run", experiment="quick")
    assert t.mode == "offline"
    run = t.start(
        name="trial-1",
        group="breastmnist/cnn",
        job_type="trial",
        config={"lr": 0.01, "model": {"width": 32}, "data": tmp_path / "d", "shape": (28, 28)},
        tags=["smoke"],
        key="ab12c_00003",
    )
    assert run.live
    for epoch in range(3):
        run.log({"val/auc": 0.5 + 0.1 * epoch, "train/loss": 1.0 / (epoch + 1)}, step=epoch)
    run.finish({"best/val_auc": 0.7})
    run.finish()  # idempotent
    run.log({"late": 1})  # after finish: ignored, no error

    (run_dir,) = offline_runs(tmp_path / "run")
    assert list(run_dir.glob("run-*.wandb"))
    rec = read_offline_run(run_dir)
    assert rec.complete
    assert (rec.name, rec.group, rec.job_type, rec.tags) == (
        "trial-1",
        "quick/breastmnist/cnn",  # the experiment keeps smoke/quick/full runs apart
        "trial",
        ["quick", "smoke"],
    )
    assert rec.run_id == "quick-ab12c_00003"  # from the trial id: a restart resumes it
    assert rec.config == {
        "lr": 0.01,
        "model": {"width": 32},
        "data": str(tmp_path / "d"),
        "shape": [28, 28],
    }
    assert [h["_step"] for h in rec.history] == [0, 1, 2]
    assert [h["val/auc"] for h in rec.history] == pytest.approx([0.5, 0.6, 0.7])
    assert rec.summary["best/val_auc"] == pytest.approx(0.7)


def test_sequential_runs_in_one_process_stay_separate(tmp_path: Path) -> None:
    """Ray reuses a worker process for trial after trial; runs must never be merged."""
    t = Tracker.from_env(True, "medbench-test", tmp_path)
    first = t.start(name="a", group="g", job_type="trial", config={"i": 0})
    first.log({"x": 0})
    first.finish()
    # A trial that never reached finish (crashed, or stopped by Tune) must neither capture the
    # next trial's data (wandb's default reinit would hand the next init this run) nor lose its
    # own (wandb-core writes an offline run's records only when it is finished).
    stale = t.start(name="b", group="g", job_type="trial", config={"i": 1})
    stale.log({"x": 1})
    third = t.start(name="c", group="g", job_type="trial", config={"i": 2})
    assert not stale.live  # finished by the next start
    third.log({"x": 2})
    third.finish()
    stale.finish(exit_code=1)  # too late: a no-op

    recs = {r.name: r for r in map(read_offline_run, offline_runs(tmp_path))}
    assert set(recs) == {"a", "b", "c"}
    assert len({r.run_id for r in recs.values()}) == 3
    for i, name in enumerate("abc"):
        assert recs[name].complete
        assert recs[name].config == {"i": i}
        assert [h["x"] for h in recs[name].history] == [i]


def test_tune_stop_inside_with_block_is_a_clean_finish(tmp_path: Path) -> None:
    """tune.report raises SystemExit(0) in a trial Tune stops (ASHA, max epochs)."""
    t = Tracker.from_env(True, "medbench-test", tmp_path)
    with pytest.raises(SystemExit), t.start(name="a", group="g", job_type="trial", config={}) as r:
        r.log({"x": 1})
        raise SystemExit(0)
    (run_dir,) = offline_runs(tmp_path)
    rec = read_offline_run(run_dir)
    assert rec.complete and rec.exit_code == 0
    assert rec.history[0]["x"] == 1


def test_context_manager_finishes_and_marks_failure(tmp_path: Path) -> None:
    t = Tracker.from_env(True, "medbench-test", tmp_path)
    run = t.start(name="a", group="g", job_type="trial", config={})
    with pytest.raises(RuntimeError), run as r:
        r.log({"x": 1})
        raise RuntimeError("trial crashed")
    assert not r.live
    (run_dir,) = offline_runs(tmp_path)
    rec = read_offline_run(run_dir)
    assert rec.history[0]["x"] == 1
    assert rec.exit_code == 1


def test_log_leaderboard_writes_table_and_figures(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    from PIL import Image

    fig = tmp_path / "bars.png"
    Image.new("RGB", (32, 16), (200, 30, 30)).save(fig)
    board = pd.DataFrame(
        {
            "dataset": ["breastmnist", "pathmnist"],
            "family": ["cnn", "resnet"],
            "acc_mean": [0.86, float("nan")],
            "n_seeds": pd.array([3, None], dtype="Int64"),
            "beats_published": [True, False],
        }
    )
    t = Tracker.from_env(True, "medbench-test", tmp_path / "run")
    with pytest.warns(TrackingWarning, match="not found"):
        log_leaderboard(t, board, {"bars": fig, "missing": tmp_path / "nope.png"})

    (run_dir,) = offline_runs(tmp_path / "run")
    rec = read_offline_run(run_dir)
    assert rec.job_type == "leaderboard" and rec.name == "run-leaderboard"
    (table,) = (run_dir / "files" / "media" / "table").glob("leaderboard_*.table.json")
    import json

    data = json.loads(table.read_text())
    assert data["columns"] == list(board.columns)
    assert data["data"][0] == ["breastmnist", "cnn", 0.86, 3, True]
    assert data["data"][1][2:4] == [None, None]
    assert list((run_dir / "files" / "media" / "images" / "figures").glob("bars_*.png"))


# --- secrets -----------------------------------------------------------------------------------

SECRET = "some-fake-secret-value"


def test_api_key_is_never_written(tmp_path: Path) -> None:
    """With a key in the environment (offline mode), no file anywhere W&B writes contains it."""
    root = tmp_path / "run"
    code = f"""
        import pandas as pd
        from bench.tracking import Tracker, log_leaderboard
        t = Tracker.from_env(True, "medbench-test", {str(root)!r})
        assert t.mode == "offline", t.mode
        run = t.start(name="a", group="g", job_type="trial", config={{"lr": 0.1}})
        for s in range(3):
            run.log({{"loss": 1.0 / (s + 1)}}, step=s)
        run.finish({{"best": 0.5}})
        log_leaderboard(t, pd.DataFrame({{"acc": [0.5]}}), {{}})
        print("OK")
    """
    env = {k: v for k, v in os.environ.items() if k not in WANDB_ENV}
    env.update(WANDB_API_KEY=SECRET, WANDB_MODE="offline")
    res = run_python(code, env)
    assert res.returncode == 0, res.stderr
    assert SECRET not in res.stdout + res.stderr
    assert offline_runs(root)
    written = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()]
    assert len(written) >= 3
    leaks = [p for p in written if SECRET.encode() in p.read_bytes()]
    assert leaks == []


# --- failure modes -----------------------------------------------------------------------------


def test_failing_init_degrades_to_noop_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import wandb

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", boom)
    t = Tracker.from_env(True, "medbench-test", tmp_path)
    with pytest.warns(TrackingWarning, match="W&B is down"):
        run = t.start(name="a", group="g", job_type="trial", config={})
    assert type(run) is TrackedRun and not run.live
    run.log({"x": 1})
    run.finish({"y": 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second failure in the same process does not warn again
        again = t.start(name="b", group="g", job_type="trial", config={})
        log_leaderboard(t, pytest.importorskip("pandas").DataFrame({"a": [1]}), {})
    assert not again.live


def test_online_failure_falls_back_to_offline_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import wandb

    real_init = wandb.init
    modes: list[str] = []

    def flaky(*args: object, mode: str, **kwargs: object) -> object:
        modes.append(mode)
        if mode == "online":
            raise TimeoutError("no route to api.wandb.ai")
        return real_init(*args, mode=mode, **kwargs)

    monkeypatch.setattr(wandb, "init", flaky)
    t = Tracker(project="medbench-test", root=str(tmp_path), mode="online")
    with pytest.warns(TrackingWarning, match="offline"):
        run = t.start(name="a", group="g", job_type="trial", config={})
    assert run.live
    run.log({"x": 1})
    run.finish()
    t.start(name="b", group="g", job_type="trial", config={}).finish()
    assert modes == ["online", "offline", "offline"]  # no second online attempt / timeout
    assert len(offline_runs(tmp_path)) == 2


def test_failing_log_degrades_to_noop(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    t = Tracker.from_env(True, "medbench-test", tmp_path)
    run = t.start(name="a", group="g", job_type="trial", config={})
    assert run.live

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(run._run, "log", boom)  # type: ignore[attr-defined]
    with pytest.warns(TrackingWarning, match="disk full"):
        run.log({"x": 1})
    assert not run.live
    run.log({"x": 2})
    run.finish()


def test_unwritable_root_degrades_to_noop(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    t = Tracker.from_env(True, "medbench-test", blocker / "run")
    with pytest.warns(TrackingWarning, match="cannot create"):
        run = t.start(name="a", group="g", job_type="trial", config={})
    assert not run.live


# --- search trials, logged from Tune's events (the Tuner's process) ----------------------------


def tune_result(epoch: int, auc: float) -> dict[str, object]:
    """What a Tune callback receives for one reported epoch: ours plus Tune's own keys."""
    return {"epoch": epoch, "val_auc": auc, "train_loss": 1.0 / epoch, "images_seen": 64 * epoch,
            "training_iteration": epoch, "time_total_s": 0.5 * epoch, "time_this_iter_s": 0.5,
            "trial_id": "x", "hostname": "h", "pid": 1, "done": False, "date": "2026-12-01",
            "config": {"lr": 0.1}}


def test_trial_runs_from_tune_events_are_complete_concurrent_and_resumable(
    tmp_path: Path,
) -> None:
    """Runs of a Tuner's trials are open side by side; each holds its config (no phase), one
    row per new epoch (Tune's keys left out, a retried attempt's repeats skipped), a summary,
    and ends with the trial: stopped (exit 0), failed (exit 1) or cut by the Tuner's end, also
    one cut before its first epoch."""
    t = Tracker.from_env(True, "medbench-test", tmp_path, experiment="wb")
    log = tracking.log_trial_result
    tags = ["breastmnist", "mlp", "search"]
    cfg = {"dataset": "breastmnist", "model": "mlp", "lr": 0.1, "phase": "search"}
    for epoch, (a, b, c) in enumerate([(0.6, 0.5, 0.4), (0.7, 0.8, 0.45)], start=1):
        for trial, auc in (("t_00000", a), ("t_00001", b), ("t_00002", c)):
            log(t, "breastmnist/mlp", tags, "val_auc", trial, cfg, tune_result(epoch, auc))
    tracking.start_trial_run(t, "breastmnist/mlp", tags, "t_00003", cfg)  # started last
    tracking.end_trial_run(t, "val_auc", "t_00000", 0)  # ASHA stopped it at a rung
    tracking.end_trial_run(t, "val_auc", "t_00002", 1)  # failed for good
    log(t, "breastmnist/mlp", tags, "val_auc", "t_00001", cfg, tune_result(1, 0.1))  # a retry
    log(t, "breastmnist/mlp", tags, "val_auc", "t_00001", cfg, tune_result(3, 0.75))
    tracking.end_trial_runs(t, "other/group", "val_auc")  # another Tuner's end: not ours
    assert set(tracking._TRIAL_RUNS) == {"wb-t_00001", "wb-t_00003"}
    tracking.end_trial_runs(t, "breastmnist/mlp", "val_auc")  # the Tuner ended (time budget)
    assert not tracking._TRIAL_RUNS

    recs = {r.run_id: r for r in map(read_offline_run, offline_runs(tmp_path))}
    assert set(recs) == {"wb-t_00000", "wb-t_00001", "wb-t_00002", "wb-t_00003"}
    assert [recs[f"wb-t_0000{i}"].exit_code for i in range(4)] == [0, 0, 1, 0]
    assert all(r.complete for r in recs.values())
    unreported = recs["wb-t_00003"]  # the time budget ended it before its first epoch
    assert unreported.config["lr"] == 0.1 and unreported.history == []
    assert unreported.summary["epochs_run"] == 0
    stopped, full = recs["wb-t_00000"], recs["wb-t_00001"]
    assert stopped.complete and stopped.job_type == "search"
    assert (stopped.group, stopped.tags) == ("wb/breastmnist/mlp", ["wb", *tags])
    assert stopped.name == "breastmnist-mlp-t_00000"
    assert stopped.config == {"dataset": "breastmnist", "model": "mlp", "lr": 0.1}
    assert [h["_step"] for h in stopped.history] == [1, 2]
    assert {k for k in stopped.history[0] if not k.startswith("_")} == {
        "epoch", "val_auc", "train_loss", "images_seen", "time_total_s"}
    assert [h["val_auc"] for h in full.history] == pytest.approx([0.5, 0.8, 0.75])
    assert full.summary["best_val_auc"] == pytest.approx(0.8)
    assert (full.summary["best_epoch"], full.summary["epochs_run"]) == (2, 3)


def test_trial_runs_callback_pickles_without_open_runs(tmp_path: Path) -> None:
    """Tune pickles callbacks into tuner.pkl: an open run must never go with it, and the copy a
    resumed Tuner unpickles still reaches the runs through the module."""
    cloudpickle = pytest.importorskip("ray.cloudpickle")
    from types import SimpleNamespace

    t = Tracker.from_env(True, "medbench-test", tmp_path, experiment="wb")
    cb = tracking.trial_runs_callback(t, "breastmnist/mlp", ["search"], "val_auc")
    trial = SimpleNamespace(trial_id="t_00000", config={"dataset": "breastmnist", "lr": 0.1})
    cb.on_trial_start(iteration=0, trials=[trial], trial=trial)
    cb.on_trial_result(iteration=1, trials=[trial], trial=trial, result=tune_result(1, 0.6))
    assert tracking._TRIAL_RUNS["wb-t_00000"].run.live
    payload = cloudpickle.dumps(cb)
    assert b"_TrialRun" not in payload and b"wandb" not in payload
    copy = cloudpickle.loads(payload)
    copy.on_trial_result(iteration=2, trials=[trial], trial=trial, result=tune_result(2, 0.7))
    copy.on_trial_error(iteration=2, trials=[trial], trial=trial)
    (rec,) = map(read_offline_run, offline_runs(tmp_path))
    assert rec.complete and [h["epoch"] for h in rec.history] == [1, 2]
    assert rec.exit_code == 1 and rec.config == {"dataset": "breastmnist", "lr": 0.1}

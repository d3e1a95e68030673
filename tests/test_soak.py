"""Exactly-once trials across driver kills: the completion records of selection and final
trials (unit level), and a short run of scripts/soak.py (a real `medbench run` killed with
SIGKILL and SIGTERM in the search and final phases, then resumed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import default_sigint

REPO = Path(__file__).resolve().parent.parent


def test_job_label_names_the_job_and_survives_a_restart() -> None:
    from bench.trial import job_label

    job = {"dataset": "breastmnist", "model": "mlp", "seed": 10_000, "phase": "final",
           "lr": 1e-3}
    label = job_label(job)
    assert label.startswith("final:breastmnist:mlp:seed10000:") and " " not in label
    assert job_label(dict(reversed(list(job.items())))) == label  # key order does not matter
    assert job_label({**job, "lr": 2e-3}) != label  # another config: another record
    sel = job_label({**job, "phase": "select", "seed": 1, "candidate": "abc_00002"})
    assert sel.startswith("select:breastmnist:mlp:seed1:abc_00002:")


def test_a_final_record_is_replayed_with_its_run_directory(tmp_path, monkeypatch) -> None:
    """A final trial that finished keeps its record and training-run directory; a restart of
    it reports the same summary with that directory as its checkpoint, and trains nothing."""
    from ray import tune

    from bench import trial

    run = tmp_path / "tmp-run"
    run.mkdir()
    (run / "metrics.json").write_text('{"test_auc": 0.9}')
    job = {"dataset": "breastmnist", "model": "mlp", "seed": 10_000, "lr": 0.001}
    record = tmp_path / "completed" / "final" / f"{trial.job_label(job)}.json"
    summary = {"val_auc": 0.8, "test_auc": 0.9, "epoch": 3}
    trial._record_final(record, job, summary, run, wall_s=12.5)
    run.joinpath("metrics.json").unlink()  # the temp dir goes; the kept copy stays
    kept = record.with_suffix("")
    assert json.loads((kept / "metrics.json").read_text()) == {"test_auc": 0.9}

    reported = []
    monkeypatch.setattr(tune, "report",
                        lambda metrics, checkpoint=None: reported.append((metrics, checkpoint)))
    assert trial._replay(record, job) is True
    ((metrics, checkpoint),) = reported
    assert metrics == {**summary, "time_this_iter_s": 12.5}
    assert Path(checkpoint.path) == kept
    assert trial._replay(record, {**job, "lr": 0.002}) is False  # another config: train
    # a record whose directory was lost is not trusted: the seed trains again
    import shutil

    shutil.rmtree(kept)
    reported.clear()
    assert trial._replay(record, job) is False and not reported
    # a selection record has no directory
    sel = tmp_path / "completed" / "select" / "s.json"
    trial._record_final(sel, job, summary, None, wall_s=1.0)
    assert trial._replay(sel, job) is True and reported[-1][1] is None


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_soak_short(tmp_path) -> None:
    """Two kills (SIGKILL in the search, SIGTERM in the selection/final phase), one resume
    each, then every training finished exactly once and the tables are complete."""
    out = subprocess.run([sys.executable, "scripts/soak.py", "--kills", "2", "--seed", "1",
                          "--num-samples", "4", "--epochs", "2", "--leftover-wait-s", "5",
                          "--work", str(tmp_path),
                          "--json", str(tmp_path / "report.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=880)
    report = json.loads((tmp_path / "report.json").read_text())
    assert out.returncode == 0, (report["problems"], out.stdout[-3000:], out.stderr[-3000:])
    assert report["problems"] == []
    assert report["kills"] >= 1
    assert all(u["records"] == 1 for u in report["units"].values()), report["units"]
    assert len(report["units"]) == 4 + 2 + 2


# A real Typer command (Typer itself turns a KeyboardInterrupt into a silent exit 130, so a
# stand-in for `cli.app` would not show it), optionally after the Ray node started.
NAP = ("import sys, time\nfrom bench import cli\nfrom bench.search import init_ray\n"
       "def snooze():\n    time.sleep(300)\n"
       "@cli.app.command('nap')\ndef nap(ray: bool = False) -> None:\n"
       "    if not ray:\n        print('ready', flush=True)\n        time.sleep(300)\n"
       "    import ray as r\n    init_ray(None, 1)\n    task = r.remote(num_cpus=0)(snooze)\n"
       "    print('ready', flush=True)\n    r.get(task.remote())  # the driver waits in Ray\n"
       "sys.argv = ['medbench', 'nap', *sys.argv[1:]]\ncli.main()\n")


def _stop(sig, *args: str) -> tuple[int, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, "-c", NAP, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    return proc.returncode, err


@pytest.mark.parametrize(("sig", "code", "what"), [("SIGTERM", 143, "SIGTERM"),
                                                   ("SIGINT", 130, "Ctrl-C (SIGINT)")])
def test_a_real_command_stops_with_the_resume_hint(sig, code, what) -> None:
    import signal

    rc, err = _stop(getattr(signal, sig))
    assert rc == code, err[-3000:]
    assert f"stopped by {what}" in err and "Resume with the same command" in err, err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_after_ray_started_stops_in_order() -> None:
    """ray.init installs its own SIGTERM handlers (Python's sys.exit and a C++ stack dump that
    ends in SIGABRT); init_ray puts the CLI's back, so a `kill` of a real run exits 143 with
    the resume hint instead of aborting (exit 134). The driver waits inside ray.get, which
    re-raises the handler's exception as a plain KeyboardInterrupt (still SIGTERM: 143)."""
    import signal

    rc, err = _stop(signal.SIGTERM, "--ray")
    assert rc == 143, err[-3000:]
    assert "stopped by SIGTERM" in err and "SIGTERM received" not in err, err[-3000:]

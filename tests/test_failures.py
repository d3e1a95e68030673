"""Failures are visible: the first error of each failing experiment on the console, exit 1 when
every trial failed or a requested (dataset, family) has no final result, retries counted in
trials.parquet, meta.json and the report, a failed download exits 1 (not 2); and the progress
board counts a retried trial once and prints plain lines off a terminal.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from cli_helpers import run_main

from bench.errors import RunFailure, UserError
from bench.experiment import first_errors, outcome_problems
from bench.progress import format_progress, tuner_counts
from bench.spaces import build_spec

# --- fast: the rules -----------------------------------------------------------------------------

def row(d, f, status, error=None, **kw):
    return {"dataset": d, "family": f, "status": status, "error": error, **kw}


def test_first_error_per_failing_experiment():
    trials = [row("breastmnist", "mlp", "failed", "ValueError: boom"),
              row("breastmnist", "mlp", "failed", "ValueError: later"),
              row("breastmnist", "mlp", "ok"), row("breastmnist", "cnn_small", "ok")]
    finals = [row("breastmnist", "mlp", "failed", "RuntimeError: oom")]
    assert first_errors(trials, finals) == {
        "breastmnist/mlp": "2 of 3 trials failed; first error: ValueError: boom",
        "final breastmnist/mlp": "1 of 1 runs failed; first error: RuntimeError: oom"}


def test_outcome_problems():
    spec = build_spec({"name": "t", "datasets": ["breastmnist"], "families": ["mlp", "cnn_small"],
                       "num_samples": 2, "max_epochs": 1, "grace_period": 1, "final_seeds": 1})
    ok = [row("breastmnist", "mlp", "ok"), row("breastmnist", "cnn_small", "ok")]
    assert outcome_problems(spec, ok, ok, final=True) == []
    assert outcome_problems(spec, ok, [], final=False) == []  # search only: no finals wanted
    assert outcome_problems(spec, ok, ok[:1], final=True) == [
        "no final result for breastmnist/cnn_small"]
    failed = [row("breastmnist", "mlp", "failed", "x")] * 2
    assert outcome_problems(spec, failed, [], final=False) == ["all 2 search trials failed"]


def test_failed_download_exits_1_missing_file_offline_exits_2(tmp_path, monkeypatch, capsys):
    import bench.data

    def unreachable(*a, **k):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(bench.data, "download", unreachable)
    monkeypatch.delenv("MEDBENCH_OFFLINE", raising=False)
    with pytest.raises(RunFailure, match="download failed"):
        bench.data.ensure_file("breastmnist", 28, tmp_path)
    code, _, err = run_main(monkeypatch, capsys, "train", "--dataset", "breastmnist",
                            "--data-dir", tmp_path, "--out", tmp_path / "r")
    assert code == 1 and "download failed" in err and "Traceback" not in err
    monkeypatch.setenv("MEDBENCH_OFFLINE", "1")
    with pytest.raises(UserError) as e:
        bench.data.ensure_file("breastmnist", 28, tmp_path)
    assert e.value.exit_code == 2


# --- the progress board --------------------------------------------------------------------------

def trial(status, failures=0, auc=None, t=0.0):
    return SimpleNamespace(status=status, num_failures=failures,
                           last_result={"val_auc": auc, "time_total_s": t} if auc else {},
                           metric_analysis={"val_auc": {"max": auc}} if auc else {})


def test_a_retried_trial_counts_once_with_its_retries():
    trials = [trial("RUNNING", failures=2), trial("TERMINATED", 1, 0.8, 10.0),
              trial("ERROR", 3), trial("PENDING")]
    c = tuner_counts(trials, planned=6, metric="val_auc")
    assert {k: c[k] for k in ("planned", "done", "running", "pending", "failed", "retries")} == {
        "planned": 6, "done": 1, "running": 1, "pending": 3, "failed": 1, "retries": 2 + 1 + 2}
    assert c["best"] == 0.8 and c["trial_s"] == 10.0


def test_progress_off_a_terminal_is_plain_and_one_line_per_dataset():
    counts = {"planned": 4, "done": 2, "running": 1, "pending": 1, "failed": 0, "retries": 1,
              "best": 0.9, "trial_s": 30.0}
    state = {f"{d}/{f}": dict(counts) for d in ("breastmnist", "retinamnist")
             for f in ("mlp", "cnn_small", "resnet18")}
    state["final"] = {**counts, "done": 0, "pending": 3, "best": None}
    text = format_progress(state, 125.0, terminal=False)
    lines = text.splitlines()
    assert "\x1b[" not in text  # no colour codes in CI logs
    assert lines[0].startswith("[2:05 elapsed] 12/28 trials done, 7 running, 9 pending, "
                               "0 failed, 7 retries | ETA")
    assert len(lines) == 2 + 3  # header, column names, one line per dataset and the final phase
    assert re.search(r"^breastmnist\s+6/12\s+3\s+3\s+0\s+3\s+0\.9000$", lines[2])
    assert lines[4].startswith("final")
    # trial-seconds (which grow every epoch) stay out of the rows: they change only with counts
    more = {k: {**v, "trial_s": v["trial_s"] + 50} for k, v in state.items()}
    assert format_progress(more, 130.0, terminal=False).splitlines()[1:] == lines[1:]


# --- slow: real Ray runs -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_session():
    import ray

    from bench.search import init_ray

    init_ray(None, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from bench.data import write_synthetic

    root = tmp_path_factory.mktemp("fail-data")
    write_synthetic("breastmnist", root, n=(64, 32, 32), seed=0)
    return root


def write_spec(path, **kw):
    raw = {"name": "f", "datasets": ["breastmnist"], "families": ["mlp"], "num_samples": 2,
           "max_epochs": 1, "grace_period": 1, "scheduler": "fifo", "final_seeds": 1,
           "resources": {"cpu": 1, "gpu": 0}, **kw}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
def test_all_trials_failing_exits_1_with_the_first_error(ray_session, data_dir, tmp_path,
                                                         monkeypatch, capsys):
    monkeypatch.setenv("MEDBENCH_FAULTS", json.dumps(
        {"trials": [0, 1], "times": 99, "dir": str(tmp_path / "faults")}))
    spec = write_spec(tmp_path / "spec.yaml", max_failures=0)
    code, out, err = run_main(monkeypatch, capsys, "run", "--spec", spec, "--data-dir", data_dir,
                              "--no-verify", "--no-wandb", "--out", tmp_path / "run")
    assert code == 1, out + err
    assert re.search(r"FAILED breastmnist/mlp: 2 of 2 trials failed; first error: .*injected "
                     r"fault", out), out
    (line,) = err.strip().splitlines()
    assert line.startswith("error: all 2 search trials failed; no final result for "
                           "breastmnist/mlp"), line
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["n_failed_trials"] == 2 and "breastmnist/mlp" in meta["failures"]


@pytest.mark.slow
def test_retries_are_counted_in_tables_meta_and_report(ray_session, data_dir, tmp_path,
                                                        monkeypatch, capsys):
    monkeypatch.setenv("MEDBENCH_FAULTS", json.dumps(
        {"trials": [0], "times": 1, "dir": str(tmp_path / "faults")}))
    spec = write_spec(tmp_path / "spec.yaml", max_failures=2)
    run = tmp_path / "run"
    code, out, err = run_main(monkeypatch, capsys, "run", "--spec", spec, "--data-dir",
                              data_dir, "--no-verify", "--no-wandb", "--out", run)
    assert code == 0, out + err
    trials = pd.read_parquet(run / "trials.parquet")
    assert (trials.status == "ok").all()
    assert sorted(trials.retries) == [0, 1]
    meta = json.loads((run / "meta.json").read_text())
    assert meta["n_retries"] == 1 and meta["n_failed_trials"] == 0 and meta["problems"] == []
    code, _, err = run_main(monkeypatch, capsys, "report", run, "--n-boot", 50)
    assert code == 0, err
    assert "- n_retries: `1`" in (run / "report.md").read_text()

"""CLI conventions: --version, -h, exit codes in --help, train --list-options, choices checked,
and `leaderboard` on a search-only run directory (its best trials, labelled as such)."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_main

from bench.results import TRIAL_COLUMNS, write_table


def test_version_and_short_help(monkeypatch, capsys):
    import bench

    code, out, _ = run_main(monkeypatch, capsys, "--version")
    assert code == 0 and out.strip() == f"medbench {bench.__version__}"
    code, out, _ = run_main(monkeypatch, capsys, "-h")
    assert code == 0 and "Exit codes: 0 success; 1 runtime failure" in " ".join(out.split())
    assert "2 usage error" in " ".join(out.split())
    code, out, _ = run_main(monkeypatch, capsys, "train", "-h")
    assert code == 0 and "--list-options" in out


def test_train_list_options_shows_defaults_and_model_hyperparameters(monkeypatch, capsys):
    from bench.models import list_models
    from bench.train import TrainConfig

    code, out, _ = run_main(monkeypatch, capsys, "train", "--list-options")
    assert code == 0
    for name in ("ema", "aug_hflip", "label_smoothing", "class_weighting", "epochs"):
        default = getattr(TrainConfig(), name)
        assert any(line.split()[:2] == [name, repr(default)] for line in out.splitlines()), name
    for family in list_models():
        assert f"  {family} " in out
    assert "hidden=512" in out  # mlp's own hyperparameter and its default


@pytest.mark.parametrize("argv", [["leaderboard", "--format", "xml", "."],
                                  ["predict", "--run", ".", "--format", "yaml", "x.png"]])
def test_choices_are_checked_as_usage_errors(monkeypatch, capsys, argv):
    code, _, err = run_main(monkeypatch, capsys, *argv)
    assert code == 2 and "is not one of" in err


def test_leaderboard_on_a_search_only_directory(tmp_path, monkeypatch, capsys):
    rows = [{"dataset": "breastmnist", "family": "mlp", "trial_id": f"a_0000{i}", "status": s,
             "best_val_auc": auc, "best_val_acc": 0.7, "best_epoch": 2, "epochs_run": 3,
             "error": "boom" if s == "failed" else None, "retries": 0}
            for i, (s, auc) in enumerate([("ok", 0.81), ("ok", 0.93), ("failed", None),
                                          ("ok", 0.88), ("ok", 0.52)])]
    run = tmp_path / "search-run"
    write_table(run / "trials.parquet", rows, TRIAL_COLUMNS)
    code, out, err = run_main(monkeypatch, capsys, "leaderboard", run)
    assert code == 0, err
    assert "Search only (no final phase)" in out and "not a leaderboard" in out
    table = [line for line in out.splitlines() if line.startswith("| ") and "breastmnist" in line]
    assert [line.split(" | ")[3] for line in table] == ["a_00001", "a_00003", "a_00000"]  # top 3
    assert "breastmnist/mlp: 1 failed, 4 ok" in out
    code, out, _ = run_main(monkeypatch, capsys, "leaderboard", run, "--format", "json")
    assert code == 0 and [r["trial_id"] for r in json.loads(out)][0] == "a_00001"


def test_search_and_run_share_one_options_object(monkeypatch, capsys, tmp_path):
    """`search` and `run` take the same ExperimentOptions (declared once); `run` adds its own
    options; every shared field is an option of both commands."""
    from dataclasses import fields

    from bench import cli

    calls = []
    monkeypatch.setattr(cli, "_experiment", lambda opts, **kw: calls.append((opts, kw)))
    shared = ["--preset", "smoke", "--datasets", "breastmnist", "--no-wandb", "--no-verify",
              "--num-samples", 3, "--out", tmp_path / "r", "--data-dir", tmp_path]
    assert run_main(monkeypatch, capsys, "search", *shared)[0] == 0
    assert run_main(monkeypatch, capsys, "run", *shared, "--final-seeds", 4,
                    "--report", tmp_path / "rep.md")[0] == 0
    (s_opts, s_kw), (r_opts, r_kw) = calls
    assert s_opts == r_opts == cli.ExperimentOptions(
        preset="smoke", datasets="breastmnist", wandb=False, no_verify=True, num_samples=3,
        out=tmp_path / "r", data_dir=tmp_path)
    assert s_kw == {"final": False}
    assert r_kw == {"final_seeds": 4, "final": True, "report": tmp_path / "rep.md"}
    for command in ("search", "run"):
        _, out, _ = run_main(monkeypatch, capsys, command, "--help")
        for f in fields(cli.ExperimentOptions):
            option = {"spec_file": "--spec", "wandb": "--no-wandb"}.get(
                f.name, "--" + f.name.replace("_", "-"))
            assert option in out, (command, option)
    assert "--final-seeds" not in run_main(monkeypatch, capsys, "search", "--help")[1]

"""Tests for bench.rundir: each accessor on a small fake run, the messages for a missing, empty,
unfinished or foreign directory, the board's `datasets` filter that `predict` builds on, and a
source scan that keeps RunDir the only reader of a run directory's files."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fake_run import DATASETS, SEEDS, STRENGTHS, make_run

from bench.errors import UserError
from bench.results import write_table, write_yaml
from bench.run_spaces import SPACES_FILE
from bench.rundir import FINAL, META, SCORES, SELECTION, SPEC, TRIALS, RunDir

BENCH = Path(__file__).resolve().parents[1] / "bench"

# The modules that may touch run files directly: rundir.py (the reader and writer of the
# top-level files), results.py (the atomic write helpers and the table layout), and trial.py /
# search.py, which write each seed's own folder (scores.npz, completion records) from inside
# the trial that trains it. Adding a module here needs a reason.
ALLOWED = {"rundir.py", "results.py", "trial.py", "search.py"}
RUN_FILES = {FINAL, TRIALS, SELECTION, META, SPEC, SPACES_FILE, SCORES}
READ_CALLS = {"read_parquet", "read_table"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs"), "run-a")


def test_tables(run):
    rd = RunDir(run)
    final = rd.final()
    assert set(final["dataset"]) == set(DATASETS)
    assert len(final) == len(DATASETS) * len(STRENGTHS) * len(SEEDS) + 1  # + the failed seed
    assert list(rd.final(columns=["status"]).columns) == ["status"]
    trials = rd.trials()
    assert trials is not None and len(trials) == len(DATASETS) * len(STRENGTHS) * 4
    assert rd.selection() is None  # the fake run had no selection phase
    assert rd.has_final() and rd.has_trials() and not rd.is_search_only()


def test_small_files(run):
    rd = RunDir(run)
    assert rd.meta()["git_commit"] == "deadbeef"
    assert rd.spec()["datasets"] == list(DATASETS)
    assert rd.text(SPEC).startswith("name: run-a")
    assert rd.spaces() is None and rd.text(SPACES_FILE) is None  # not written by the fake
    assert rd.final_mtime() == (run / FINAL).stat().st_mtime
    assert os.fspath(rd) == str(run) and "run-a" in repr(rd)


def test_spaces_saved_and_unreadable(tmp_path):
    rd = RunDir(tmp_path)
    write_yaml(tmp_path / SPACES_FILE, {"cnn": {"lr": {"value": 0.1}}})
    assert rd.spaces() == {"cnn": {"lr": {"value": 0.1}}}
    (tmp_path / SPACES_FILE).write_text("a: [unclosed")
    assert rd.spaces() is None
    (tmp_path / SPACES_FILE).write_text("- a list, not a mapping\n")
    assert rd.spaces() is None


def test_scores(run):
    rd = RunDir(run)
    ok = rd.final()
    ok = ok[ok["status"] == "ok"].iloc[0]
    s = rd.scores(ok["run_dir"])
    assert s is not None and set(s) == {"val_labels", "val_scores", "test_labels", "test_scores"}
    assert isinstance(s["test_scores"], np.ndarray) and s["test_scores"].shape[0] == len(
        s["test_labels"])
    assert rd.scores("final/retinamnist/mlp/seed3") is None  # the failed seed saved none


def test_missing_files_read_as_absent(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.meta() == {} and rd.spec() == {} and rd.trials() is None
    assert rd.selection() is None and rd.text(SPEC) is None and rd.scores("x") is None
    (tmp_path / SPEC).write_text("")
    assert rd.spec() == {}


def test_not_a_run_directory(tmp_path):
    rd = RunDir(tmp_path)
    with pytest.raises(UserError, match=r"not a run directory \(no final.parquet\).*medbench "
                                        r"run") as e:
        rd.final()
    assert str(tmp_path) in str(e.value)
    with pytest.raises(UserError, match="not a run directory"):
        rd.check()


def test_problem_messages(tmp_path, run):
    assert RunDir(run).problem() is None
    missing = tmp_path / "nope"
    assert "no such directory" in RunDir(missing).problem()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty} is empty (no final.parquet)" in RunDir(empty).problem()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a run")
    assert "is not a finished run (no final.parquet)" in RunDir(foreign).problem()
    failed = tmp_path / "failed"
    failed.mkdir()
    write_table(failed / FINAL, [{"dataset": "breastmnist", "status": "failed"}],
                ["dataset", "status"])
    assert "no finished final model (1 final runs, none ok)" in RunDir(failed).problem()


def test_search_only(tmp_path, run):
    search = tmp_path / "search"
    search.mkdir()
    (search / TRIALS).write_bytes((run / TRIALS).read_bytes())
    assert RunDir(search).is_search_only() and not RunDir(tmp_path).is_search_only()


def test_readers_agree_with_rundir(run):
    """The old entry points now read through RunDir and give what it gives."""
    from bench import leaderboard, serve, studies

    assert leaderboard.read_meta(run) == RunDir(run).meta()
    seeds = leaderboard.load_seeds(run)
    pd.testing.assert_frame_equal(seeds.drop(columns=["run", "root"]), RunDir(run).final(),
                                  check_dtype=False)
    assert len(leaderboard.load_trials(run)) == len(RunDir(run).trials())
    assert serve.run_dir_problem(run) is None
    assert studies._read_spec(run) == RunDir(run).spec()


def test_board_datasets_filter(run):
    """`datasets` keeps only those rows, and they equal the full board's (same pick)."""
    from bench.leaderboard import build_leaderboard

    full = build_leaderboard(run, n_boot=20)
    one = build_leaderboard(run, n_boot=20, datasets=["breastmnist"])
    assert set(one["dataset"]) == {"breastmnist"}
    want = full[full["dataset"] == "breastmnist"].reset_index(drop=True)
    # dtypes may differ: a column all-missing for this dataset (blend weights) is typed by
    # what the other datasets hold
    pd.testing.assert_frame_equal(one.reset_index(drop=True), want, check_dtype=False)
    assert build_leaderboard(run, n_boot=20, datasets=[]).empty


def test_predict_builds_only_its_dataset(run, monkeypatch):
    """`predict`'s choosing board (bench.picked.run_entries) is built for the one dataset asked
    for, not every dataset of the run, and still marks the full board's pick."""
    from bench import leaderboard, picked

    asked = []
    real = leaderboard.build_leaderboard

    def spy(*args, **kw):
        asked.append(kw.get("datasets"))
        return real(*args, **kw)

    monkeypatch.setattr(leaderboard, "build_leaderboard", spy)
    entries = picked.run_entries(run, "retinamnist")
    assert asked == [["retinamnist"]]
    full = real(run, n_boot=20)
    want = full[(full["dataset"] == "retinamnist") & full["picked"]]["family"].tolist()
    assert [e.name for e in entries if e.picked] == want


def _direct_reads(path: Path) -> list[str]:
    """`read_parquet`/`read_table` calls and run-file names used as path parts in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in READ_CALLS:
                found.append(f"{path.name}:{node.lineno} {name}()")
        elif isinstance(node, ast.Constant) and node.value in RUN_FILES:
            found.append(f"{path.name}:{node.lineno} {node.value!r}")
    return found


def test_only_rundir_and_writers_read_run_files():
    """A source scan of bench/: outside RunDir and the writers no module reads a parquet table
    or names a run file (messages may mention them; a string that is exactly a file name is a
    path). run_spaces.py names spaces.yaml for its writer and is allowed that constant only."""
    offenders = []
    for path in sorted(BENCH.rglob("*.py")):
        if path.name in ALLOWED:
            continue
        hits = _direct_reads(path)
        if path.name == "run_spaces.py":
            hits = [h for h in hits if not h.endswith(repr(SPACES_FILE))]
        offenders += hits
    assert not offenders, "read run files through bench.rundir.RunDir: " + ", ".join(offenders)


def test_scan_finds_a_direct_read(tmp_path):
    """The scan is not vacuous: it catches the patterns it looks for."""
    src = tmp_path / "m.py"
    src.write_text('import pandas as pd\nx = pd.read_parquet(p / "final.parquet")\n'
                   'y = (p / "meta.json").read_text()\nz = "see final.parquet for errors"\n')
    assert [h.split(" ", 1)[1] for h in _direct_reads(src)] == [
        "read_parquet()", "'final.parquet'", "'meta.json'"]


def test_the_writer_side_round_trips_through_the_reader(tmp_path):
    """RunDir writes each top-level file (atomically) and reads it back as written; a damaged
    meta.json reads as no earlier attempt rather than blocking a resume."""
    rd = RunDir(tmp_path)
    row = {"dataset": "breastmnist", "family": "mlp", "trial_id": "t0", "status": "ok",
           "config": {"lr": 0.1}}
    rd.write_trials([row])
    rd.write_final([{**row, "seed": 10000}])
    rd.write_meta({"wall_s": 12.5})
    rd.write_spec({"name": "x", "datasets": ["breastmnist"]})
    rd.write_spaces({"mlp": {"lr": {"value": 0.1}}})
    assert rd.trials().trial_id.tolist() == ["t0"] and rd.final().seed.tolist() == [10000]
    assert rd.meta() == {"wall_s": 12.5} == rd.previous_meta()
    assert rd.spec()["datasets"] == ["breastmnist"] and rd.spaces() == {
        "mlp": {"lr": {"value": 0.1}}}
    (tmp_path / META).write_text("{not json")
    assert rd.previous_meta() == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [TRIALS, FINAL, META, SPEC, SPACES_FILE])  # no temporary file left behind

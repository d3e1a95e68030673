"""bench.results' atomic writes: a reader never sees half a file (even if the writer is killed),
a failed write leaves nothing behind, files get the user's umask; and the writers built on it."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from bench.results import (
    FINAL_COLUMNS,
    atomic_write,
    final_row,
    read_table,
    write_csv,
    write_json,
    write_table,
    write_text,
)

OLD = "old complete content\n" * 50


def _others(folder: Path, keep: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p != keep)


def test_reader_sees_the_old_file_during_the_write_and_the_new_one_after(tmp_path: Path) -> None:
    target = tmp_path / "table.csv"
    target.write_text(OLD)
    seen = {}

    def write(tmp: Path) -> None:
        assert tmp != target and tmp.parent == target.parent  # beside it: rename is atomic
        with open(tmp, "w") as f:
            f.write("new, half")
            f.flush()
            seen["during"] = target.read_text()  # a reader in the middle of the write
            f.write(" and the rest\n")

    assert atomic_write(target, write) == target
    assert seen["during"] == OLD
    assert target.read_text() == "new, half and the rest\n"
    assert _others(tmp_path, target) == []


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path, error) -> None:
    target = tmp_path / "final.parquet"
    target.write_text(OLD)

    def write(tmp: Path) -> None:
        tmp.write_text("partial")
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, write)
    assert target.read_text() == OLD
    assert _others(tmp_path, target) == []


def test_failed_first_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "meta.json"

    def write(tmp: Path) -> None:
        tmp.write_text('{"half": ')
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        atomic_write(target, write)
    assert list(target.parent.iterdir()) == []  # no target, no temp file


def test_killed_writer_leaves_the_old_file_whole(tmp_path: Path) -> None:
    """A real crash: the writer process is SIGKILLed halfway through. Readers see the old file;
    what is left is a hidden temp file, never a truncated target."""
    target = tmp_path / "trials.parquet"
    target.write_text(OLD)
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from bench.results import atomic_write

        def write(tmp):
            with open(tmp, "w") as f:
                f.write("half of the new")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)

        atomic_write(Path({str(target)!r}), write)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert target.read_text() == OLD
    assert all(name.startswith(".trials.parquet.") for name in _others(tmp_path, target))


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        fresh = write_text(tmp_path / "new.txt", "x")
        replaced = tmp_path / "old.txt"
        replaced.write_text("y")
        os.chmod(replaced, 0o600)
        write_text(replaced, "z")
    finally:
        os.umask(old)
    assert fresh.stat().st_mode & 0o777 == mode
    assert replaced.stat().st_mode & 0o777 == mode


def test_writers_round_trip(tmp_path: Path) -> None:
    cols = ["a", "b", "c"]
    write_table(tmp_path / "t.parquet", [{"a": 1, "b": {"k": [1, 2]}}, {"c": "x"}], cols)
    t = read_table(tmp_path / "t.parquet")
    assert list(t.columns) == cols and len(t) == 2
    assert json.loads(t.loc[0, "b"]) == {"k": [1, 2]} and t.loc[1, "c"] == "x"
    write_csv(tmp_path / "d.csv", pd.DataFrame({"x": [1, 2]}), index=False)
    assert (tmp_path / "d.csv").read_text() == "x\n1\n2\n"
    write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert (tmp_path / "m.json").read_text() == '{\n  "a": 2,\n  "b": 1\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "m.json", "t.parquet"]


# --- final.parquet rows: one builder for `medbench run` and `medbench train --seeds` ----------

SEED_CONFIG = {"dataset": "breastmnist", "model": "cnn_small", "seed": 1001, "size": 28,
               "lr": 0.01, "epochs": 3}


def test_final_row_of_a_finished_seed_names_its_run_directory_and_keeps_its_metrics(
        tmp_path: Path) -> None:
    result = {"val_auc": 0.9, "val_acc": 0.8, "test_auc": 0.85, "test_acc": 0.75,
              "best_epoch": 2, "epochs_run": 3, "train_images_per_s": 1500.0,
              "history": [{"epoch": 1, "val_auc": 0.7}], "wall_s": 12.5, "device_s": 25.0,
              "device": "cpu", "n_params": 1234, "time_total_s": 12.5}  # extra keys dropped
    row = final_row(SEED_CONFIG, result)
    assert set(row) <= set(FINAL_COLUMNS)
    assert (row["dataset"], row["family"], row["seed"], row["size"]) == \
        ("breastmnist", "cnn_small", 1001, 28)
    assert row["run_dir"] == str(Path("final") / "breastmnist" / "cnn_small" / "seed1001")
    assert (row["status"], row["error"], row["config"]) == ("ok", None, SEED_CONFIG)
    assert {k: row[k] for k in ("val_auc", "test_acc", "best_epoch", "wall_s", "device_s")} == \
        {"val_auc": 0.9, "test_acc": 0.75, "best_epoch": 2, "wall_s": 12.5, "device_s": 25.0}
    write_table(tmp_path / "final.parquet", [row], FINAL_COLUMNS)
    back = read_table(tmp_path / "final.parquet").iloc[0]
    assert back["test_auc"] == 0.85 and json.loads(back["history"]) == result["history"]
    assert json.loads(back["config"]) == SEED_CONFIG


def test_final_row_of_a_failed_seed_says_why_and_has_no_metrics() -> None:
    row = final_row(SEED_CONFIG, None, "RuntimeError: out of memory")
    assert (row["status"], row["error"]) == ("failed", "RuntimeError: out of memory")
    assert not {"val_auc", "test_auc", "history", "wall_s"} & set(row)
    assert row["run_dir"].endswith("seed1001")


def test_atomic_write_makes_missing_parents_and_hides_its_temp_file(tmp_path: Path) -> None:
    """The temp file is a dotfile named after its target, with the target's suffix, in the
    target's folder: hidden from `ls` and shell globs (`glob.glob("*.csv")`), a leftover says
    what it was, and a writer that infers the format from the extension sees the right one.
    Missing parent folders (runs/<name>/final/<dataset>/...) are created."""
    target = tmp_path / "new" / "nested" / "table.csv"
    seen = {}

    def write(tmp: Path) -> None:
        seen["tmp"] = tmp
        seen["glob"] = glob.glob(str(target.parent / "*.csv"))
        tmp.write_text("a,b\n")

    atomic_write(target, write)
    assert target.read_text() == "a,b\n"
    assert seen["tmp"].parent == target.parent and seen["tmp"].suffix == ".csv"
    assert seen["tmp"].name.startswith(".table.csv.") and seen["glob"] == []

"""A full disk (issue 27, item 4): Tune state a full disk left truncated never blocks a resume
(it is set aside and a new Tuner replays the finished trials from their completion records),
and the error names the file and the file system that is full, not the current directory's.

The end-to-end case runs scripts/disk_full.py once: a real `medbench run` on a small tmpfs
filled mid-run, then the same command after the space is back (root only: it mounts)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture()
def small_fs(tmp_path: Path):
    """A 2 MiB tmpfs (root only), filled to the last byte by `fill`."""
    folder = tmp_path / "fs"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    sys.path.insert(0, str(REPO / "scripts"))
    from disk_full import fill as fill_it

    fill_it(folder)


# --- which Tune state is unreadable ----------------------------------------------------------

def test_unreadable_state_finds_empty_truncated_and_broken_files(tmp_path: Path) -> None:
    from bench.search import _unreadable_state

    state = tmp_path / "pair"
    state.mkdir()
    (state / "tuner.pkl").write_bytes(pickle.dumps({"a": list(range(100))}))
    (state / "experiment_state-2026.json").write_text('{"trials": []}')
    assert _unreadable_state(state) is None
    good = (state / "tuner.pkl").read_bytes()
    (state / "tuner.pkl").write_bytes(good[: len(good) // 2])
    assert _unreadable_state(state).startswith("tuner.pkl: ")
    (state / "tuner.pkl").write_bytes(good)
    (state / "experiment_state-2026.json").write_text("")
    assert _unreadable_state(state) == "experiment_state-2026.json is empty"
    (state / "experiment_state-2026.json").write_text('{"trials": [')
    assert "experiment_state-2026.json: JSONDecodeError" in _unreadable_state(state)
    (state / "experiment_state-2026.json").write_text('{"trials": []}')
    # the random searcher's state is a pickle in a .json file: whole, it is readable
    searcher = pickle.dumps({"counter": 4, "uuid_prefix": "abcde_"})
    (state / "basic-variant-state-2026.json").write_bytes(searcher)
    assert _unreadable_state(state) is None
    (state / "basic-variant-state-2026.json").write_bytes(searcher[:-5])
    assert _unreadable_state(state).startswith("basic-variant-state-2026.json: ")


def test_a_truncated_tuner_is_set_aside_and_a_new_one_made(tmp_path: Path, capsys) -> None:
    """`UnpicklingError: pickle data was truncated` on the re-run was the reported failure."""
    from ray import tune

    from bench.search import _tuner, _unreadable_state

    def trainable(config):
        return None

    state = tmp_path / "pair"
    state.mkdir()
    data = pickle.dumps({"x": "y" * 1000})
    (state / "tuner.pkl").write_bytes(data[:100])
    with pytest.raises(pickle.UnpicklingError, match="truncated"):
        pickle.loads((state / "tuner.pkl").read_bytes())
    tuner = _tuner(tmp_path, "pair", trainable, {"a": 1}, tune.TuneConfig(num_samples=1), {})
    assert isinstance(tuner, tune.Tuner)
    (aside,) = tmp_path.glob("pair.unreadable-*")
    assert (aside / "tuner.pkl").read_bytes() == data[:100]  # kept for a look, never read
    assert _unreadable_state(state) is None  # the new Tuner's own state, whole
    err = capsys.readouterr().err
    assert "Tune state of pair unreadable (tuner.pkl: " in err and aside.name in err


# --- the message names the file and the full file system ---------------------------------------

def test_the_error_names_the_full_file_system_not_the_current_directory(small_fs: Path,
                                                                        tmp_path: Path,
                                                                        monkeypatch) -> None:
    from bench.cli import os_error_text
    from bench.experiment import disk_full_problem
    from bench.results import TRIAL_COLUMNS, naming, write_json, write_table

    fill(small_fs)
    target = small_fs / "run" / "trials.parquet"
    with pytest.raises(OSError) as e, naming(target):  # pyarrow's error has no errno
        write_table(target, [{"config": {"x": "y" * 9000}}] * 100, TRIAL_COLUMNS)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    with pytest.raises(OSError) as meta, naming(small_fs / "run" / "meta.json"):
        write_json(small_fs / "run" / "meta.json", {"x": "y" * 65536})  # write(): no file name
    assert meta.value.filename == str(small_fs / "run" / "meta.json")
    assert sorted(p.name for p in (small_fs / "run").iterdir()) == []  # no temp file left
    monkeypatch.chdir(tmp_path)  # a roomy current directory must not be the one named
    text = os_error_text(e.value)
    assert text.startswith(f"No space left on device: {small_fs}")
    assert f"file system {small_fs}: 0 MiB free of 2 MiB" in text
    assert "re-run the same command to resume" in text
    # a failure the full disk caused further down (Tune reading a file it cut short)
    try:
        raise RuntimeError("Tuner failed") from pickle.UnpicklingError("pickle data was truncated")
    except RuntimeError as err:
        failure = err
    line = disk_full_problem(failure, [small_fs / "run", "s3://bucket/x"])
    assert line is not None and f"file system {small_fs}: 0 MiB free" in line
    assert "\n" not in line and f"while writing the run at {small_fs}/run " in line
    tuner = small_fs / "run" / "tune" / "breastmnist__mlp"
    tuner.mkdir(parents=True)
    (tuner / "experiment_state-x.json").write_text("")
    line = disk_full_problem(failure, [small_fs / "run", small_fs / "run" / "tune"])
    assert f"it left {tuner}/experiment_state-x.json unreadable (is empty)" in line, line
    assert disk_full_problem(RuntimeError("x"), [tmp_path]) is None  # room there: not this


# --- a real run on a disk that fills mid-run ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_whose_disk_fills_resumes_with_every_trial_once(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    out = subprocess.run([sys.executable, "scripts/disk_full.py", "--tries", "1", "--quick",
                          "--seed", "0", "--max-delay-s", "0.5",
                          "--work", str(tmp_path), "--json", str(tmp_path / "report.json")],
                         cwd=REPO, capture_output=True, text=True, timeout=580)
    if out.returncode == 77:
        pytest.skip(out.stderr.strip())
    report = json.loads((tmp_path / "report.json").read_text())
    (one,) = report["tries_detail"]
    assert out.returncode == 0, (report["problems"], out.stdout[-3000:], out.stderr[-2000:])
    assert one["first_rc"] == 1 and len(one["error_lines"]) == 1, one
    assert one["names_fs"] and one["resume_rc"] == 0
    assert one["search_trainings_per_config"] == [1, 1, 1]

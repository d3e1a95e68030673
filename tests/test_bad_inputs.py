"""Every class of bad input the hardening issue found is one `error:` line and exit 2, with no
traceback and nothing trained: bombs (PNG, .npy, .npz, .nii.gz), non-numeric or empty volumes,
a model.pt of another architecture, string and float labels, an empty train split, and a
read-only `--out` (refused before training). The inputs are built by tests/bad_inputs.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from bad_inputs import CASES, NIFTI_CASES
from cli_helpers import run_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXPECTED = {  # what the line must say (a piece of it)
    "PNG bomb, 400 Mpx": "too large to decode",
    "PNG, 81 Mpx RGBA": "9000x9000 pixels (81 Mpx) is more than this predictor decodes",
    "model.pt of another architecture": "weights do not fit the cnn_small model",
    ".npy header claiming 10^15 voxels": "100000x100000x100000",
    ".npz header claiming 10^11 images": "'train_images' claims shape [100000000000, 28, 28]",
    "empty volume": "the array is empty",
    "string volume": "holds strings",
    "structured-dtype volume": "structured dtype",
    "all-NaN volume": "no finite values",
    "string labels": "train_labels are <U",
    "float labels {0, 0.5}": "train_labels are float32 holding values such as 0.5",
    "empty train split (medbench train)": "the train split is empty",
    ".nii.gz bomb (1 MB -> 640^3)": "640x640x640",
}


def _one_line_exit_2(code: int, out: str, err: str, expected: str) -> None:
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert expected in err, err
    assert "epoch" not in out  # nothing trained


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capsys) -> None:
    argv = CASES[case](tmp_path)
    _one_line_exit_2(*run_main(monkeypatch, capsys, *argv), EXPECTED[case])


@pytest.mark.parametrize("case", list(NIFTI_CASES))
def test_nifti_bomb_is_one_line_and_exit_2(case, tmp_path, monkeypatch, capsys) -> None:
    pytest.importorskip("nibabel", reason="the nifti extra (nibabel) is not installed")
    argv = NIFTI_CASES[case](tmp_path)
    assert (tmp_path / "bomb.nii.gz").stat().st_size < 2 << 20  # a ~1 MB file
    _one_line_exit_2(*run_main(monkeypatch, capsys, *argv), EXPECTED[case])


@pytest.fixture()
def read_only_dir(tmp_path: Path):
    """A folder no one may write to: a read-only tmpfs when this process may mount one (root:
    permission bits do not stop it), else a folder without write permission."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_train_to_a_read_only_out_fails_before_training(read_only_dir, tmp_path, monkeypatch,
                                                         capsys) -> None:
    from bad_inputs import _train, data_file

    argv = _train(data_file(tmp_path / "data"), read_only_dir / "run")
    code, out, err = run_main(monkeypatch, capsys, *argv)
    _one_line_exit_2(code, out, err, f"--out {read_only_dir / 'run'} is not writable")
    assert "breastmnist (" not in out  # refused before the data was even loaded

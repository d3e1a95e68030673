"""The `medbench` CLI: a training run directory that medmnist's own Evaluator re-scores to the
same numbers; bad input -> exit 2, one 'error:' line, no traceback, nothing touched on disk;
`datasets`, `models`, `synth`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import medmnist
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from cli_helpers import invoke, run_main
from medmnist.info import INFO

from bench.data import load_dataset, write_synthetic
from bench.models import create_model, list_models
from bench.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """`--set threads=1` below sets torch's global thread count; put it back afterwards."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# --- medbench train: the run directory ---------------------------------------------------------

def _rescore_prediction_csvs(run_dir: Path, flag: str, data_root: Path, run: str) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("val", "test"):
        pattern = re.compile(rf"^{flag}_{split}_\[AUC\](\d\.\d{{3}})_\[ACC\](\d\.\d{{3}})"
                             rf"@{re.escape(run)}\.csv$")
        matches = [p for p in run_dir.iterdir() if pattern.match(p.name)]
        assert len(matches) == 1, sorted(p.name for p in run_dir.iterdir())
        m = pattern.match(matches[0].name)
        auc, acc = metrics[f"{split}_auc"], metrics[f"{split}_acc"]
        assert m.group(1) == f"{auc:.3f}" and m.group(2) == f"{acc:.3f}"
        # read exactly as medmnist's Evaluator.parse_and_evaluate does, score with its Evaluator
        y_score = pd.read_csv(matches[0], index_col=0, header=None).sort_index().values
        official = medmnist.Evaluator(flag, split, root=str(data_root)).evaluate(y_score)
        assert (auc, acc) == (official.AUC, official.ACC)
        scores = np.load(run_dir / "scores.npz")
        np.testing.assert_array_equal(y_score, scores[f"{split}_scores"])


def test_train_writes_a_rescorable_run_directory(synth_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "runs" / "r1"
    result = invoke("train", "--dataset", "organamnist", "--data-dir", synth_dir, "--no-verify",
                     "--model", "cnn_small", "--epochs", 2, "--batch-size", 32, "--lr", 0.003,
                     "--device", "cpu", "--set", "threads=1", "--out", out)
    assert result.exit_code == 0, result.output + result.stderr
    assert "epoch   2/2" in result.output and "best epoch" in result.output

    names = sorted(p.name for p in out.iterdir())
    predictions = [n for n in names if n.startswith("organamnist_")]
    assert sorted(set(names) - set(predictions)) == \
        ["config.yaml", "history.csv", "metrics.json", "model.pt", "scores.npz"]
    assert len(predictions) == 2
    assert sorted(p.name for p in out.parent.iterdir()) == ["r1"]  # no temp folders left

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["dataset"] == "organamnist" and config["epochs"] == 2
    assert config["lr"] == 0.003 and config["threads"] == 1
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    assert {"train_loss", "val_auc", "val_acc", "lr"} <= set(history.columns)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "organamnist" and metrics["task"] == "multi-class"
    assert metrics["epochs_run"] == 2 and metrics["run"] == "organamnist-cnn_small-s0"
    assert metrics["val_auc"] == history["val_auc"][metrics["best_epoch"] - 1]

    _rescore_prediction_csvs(out, "organamnist", synth_dir, "organamnist-cnn_small-s0")

    saved = torch.load(out / "model.pt", map_location="cpu")
    conf = TrainConfig.from_dict(saved["config"])
    model = create_model(conf.model, 1, 11, 28, **conf.model_hp)
    model.load_state_dict(saved["state_dict"])


def test_train_seeds_writes_a_leaderboard_run(synth_dir: Path, tmp_path: Path) -> None:
    """--seeds: one training-run directory per seed plus final.parquet, which `medbench
    leaderboard` reads like a `medbench run` (mean, std, CI, verdicts)."""
    out = tmp_path / "seeds"
    result = invoke("train", "--dataset", "organamnist", "--data-dir", synth_dir, "--no-verify",
                     "--epochs", 1, "--device", "cpu", "--set", "threads=1", "--seeds", "7,8,9",
                     "--out", out)
    assert result.exit_code == 0, result.output + result.stderr
    final = pd.read_parquet(out / "final.parquet")
    assert final["seed"].tolist() == [7, 8, 9] and (final["status"] == "ok").all()
    for row in final.itertuples():
        run_dir = out / row.run_dir
        assert run_dir == out / "final" / "organamnist" / "cnn_small" / f"seed{row.seed}"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert (metrics["test_acc"], metrics["test_auc"]) == (row.test_acc, row.test_auc)
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == row.seed
        _rescore_prediction_csvs(run_dir, "organamnist", synth_dir,
                                 f"organamnist-cnn_small-s{row.seed}")
    assert final["test_auc"].nunique() > 1  # different seeds, different runs
    mean, std = final["test_acc"].mean(), final["test_acc"].std(ddof=1)
    assert re.search(rf"\| (\*\*cnn_small\*\* \(picked\)|cnn_small) \| 28 \| 3 \| "
                     rf"{mean:.3f} ± {std:.3f} \[", result.output), result.output
    board = invoke("leaderboard", out, "--format", "csv")
    assert board.exit_code == 0, board.output
    row = pd.read_csv(__import__("io").StringIO(board.output)).iloc[0]
    assert row["n_seeds"] == 3 and row["acc_lo"] <= row["test_acc_mean"] <= row["acc_hi"]
    # synthetic files are not the release: recorded, and held against no published number
    meta = json.loads((out / "meta.json").read_text())
    assert meta["official_data"] == {"organamnist": False}
    # what a report's Reproduce section needs, as a `medbench run` records it
    assert meta["mode"] == "train" and meta["seeds"] == {"final": [7, 8, 9]}
    assert meta["data_files"]["organamnist"]["md5"] and meta["versions"]["torch"]
    assert meta["wall_s"] > 0 and meta["hardware"]["cpu_count"] >= 1
    from bench.provenance import reproduce_md

    text = "\n".join(reproduce_md([out]))
    assert "no search" in text and "wall-time budget" not in text and "search trials" not in text
    raw = pd.read_csv(__import__("io").StringIO(board.output), keep_default_na=False).iloc[0]
    assert str(raw["official_data"]) == "False" and raw["verdict_acc_vs_resnet18"] == "n/a"
    assert "not the official MedMNIST file" in result.output and "best published" not in \
        result.output


def test_train_from_config_file_multi_label(synth_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "train.yaml"
    # `lr: 1e-3` is a string to PyYAML; the trainer must still take it as a number
    cfg.write_text("dataset: chestmnist\nmodel: mlp\nhidden: 32\nepochs: 2\nlr: 1e-3\n"
                   "batch_size: 48\nseed: 5\ndevice: cpu\nthreads: 1\n")
    out = tmp_path / "run"
    result = invoke("train", "--config", cfg, "--data-dir", synth_dir, "--no-verify",
                     "--out", out)
    assert result.exit_code == 0, result.output + result.stderr
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["hidden"] == 32 and config["lr"] == 1e-3 and config["seed"] == 5
    _rescore_prediction_csvs(out, "chestmnist", synth_dir, "chestmnist-mlp-s5")


def test_train_binary_at_64_px(tmp_path: Path) -> None:
    """Binary task, size suffix in every file name (`breastmnist_64_test_...`)."""
    data = tmp_path / "data"
    write_synthetic("breastmnist", data, size=64, n=(64, 32, 32))
    out = tmp_path / "run"
    result = invoke("train", "--dataset", "breastmnist", "--size", 64, "--data-dir", data,
                     "--no-verify", "--model", "mlp", "--set", "hidden=32", "--epochs", 2,
                     "--device", "cpu", "--set", "threads=1", "--out", out)
    assert result.exit_code == 0, result.output + result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["size"] == 64 and metrics["task"] == "binary-class"
    for split in ("val", "test"):
        (csv,) = out.glob(f"breastmnist_64_{split}_*.csv")
        y_score = pd.read_csv(csv, index_col=0, header=None).sort_index().values
        assert y_score.shape == (32, 2)
        official = medmnist.Evaluator("breastmnist", split, size=64, root=str(data))
        assert tuple(official.evaluate(y_score)) == (metrics[f"{split}_auc"],
                                                     metrics[f"{split}_acc"])


# --- medbench train: bad input -----------------------------------------------------------------

def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, mtime and bytes."""
    snap = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        snap[str(p.relative_to(root))] = (p.is_dir(), st.st_mtime_ns,
                                          p.read_bytes() if p.is_file() else None)
    return snap


@pytest.fixture
def workspace(tmp_path: Path, synth_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """cwd/ (the default `runs/` would land here), data/ (empty unless a case fills it),
    synth/ (valid synthetic files), existing/ (a finished run), YAML files good and bad."""
    (tmp_path / "cwd").mkdir()
    (tmp_path / "data").mkdir()
    shutil.copytree(synth_dir, tmp_path / "synth")
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "metrics.json").write_text('{"test_auc": 0.9}\n')
    (existing / "config.yaml").write_text("epochs: 100\n")
    (tmp_path / "bad.yaml").write_text("epochs: [1, 2\nlr: 0.1\n")
    (tmp_path / "list.yaml").write_text("- epochs\n- 3\n")
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("MEDBENCH_OFFLINE", "1")
    monkeypatch.delenv("MEDMNIST_DATA", raising=False)
    return tmp_path


def _prepare(ws: Path, case: str) -> None:
    if case == "md5 mismatch":
        write_synthetic("breastmnist", ws / "data", n=(8, 4, 4))
    elif case == "corrupt npz":
        (ws / "data" / "organamnist.npz").write_bytes(b"PK\x03\x04 definitely not a zip")


SYN = ["--data-dir", "{ws}/synth", "--no-verify", "--epochs", "1", "--set", "threads=1"]

# case -> (argv, what the one error line must say)
BAD_TRAIN = {
    "unknown dataset": (["--dataset", "nosuchmnist", *SYN], "unknown dataset 'nosuchmnist'"),
    "unknown model": (["--dataset", "organamnist", "--model", "nosuchnet", *SYN],
                      "unknown model 'nosuchnet'"),
    "unknown optimizer": (["--dataset", "organamnist", "--optimizer", "lion", *SYN],
                          "unknown optimizer 'lion'"),
    "missing file": (["--dataset", "breastmnist", "--data-dir", "{ws}/data"],
                     "breastmnist.npz not found in .* downloads are off.*--data-dir"),
    "md5 mismatch": (["--dataset", "breastmnist", "--data-dir", "{ws}/data"],
                     "md5 .* not the official"),
    "corrupt npz": (["--dataset", "organamnist", "--data-dir", "{ws}/data", "--no-verify"],
                    "not a readable .npz file"),
    "epochs 0": (["--dataset", "organamnist", *SYN, "--epochs", "0"],
                 "epochs must be a positive integer, got 0"),
    "batch size -1": (["--dataset", "organamnist", *SYN, "--batch-size", "-1"],
                      "batch_size must be a positive integer, got -1"),
    "3D size": (["--dataset", "organmnist3d", "--model", "resnet18_3d", "--size", "128", *SYN],
                "organmnist3d has no size 128; available sizes: 28, 64"),
    "2D model on 3D data": (["--dataset", "organmnist3d", "--model", "cnn_small", *SYN],
                            "'cnn_small' is for 2D data but organmnist3d is 3D"),
    "existing run": (["--dataset", "organamnist", *SYN, "--out", "{ws}/existing"],
                     "existing already holds a run"),
    "out is a file": (["--dataset", "organamnist", *SYN, "--out", "{ws}/list.yaml"],
                      "list.yaml already holds a run \\(or is a file\\)"),
    "malformed config": (["--config", "{ws}/bad.yaml", *SYN],
                         r"bad.yaml is not valid YAML \(.*line 2, column 3\)"),
    "config not a mapping": (["--config", "{ws}/list.yaml", *SYN], "must hold a mapping"),
    "config missing": (["--config", "{ws}/nope.yaml", *SYN], "nope.yaml: no such file"),
    "bad --set": (["--dataset", "organamnist", *SYN, "--set", "width"],
                  "--set 'width': expected key=value"),
    "non-numeric --set": (["--dataset", "organamnist", *SYN, "--set", "lr=fast"],
                          "lr must be a number, got 'fast'"),
    "bad --seeds": (["--dataset", "organamnist", *SYN, "--seeds", "1,two"],
                    "--seeds takes comma-separated integers such as 100,101,102, got '1,two'"),
    "repeated --seeds": (["--dataset", "organamnist", *SYN, "--seeds", "3,3"],
                         "--seeds needs distinct non-negative integers"),
    "--seed and --seeds": (["--dataset", "organamnist", *SYN, "--seed", "1", "--seeds", "2,3"],
                           "either --seed \\(one run\\) or --seeds \\(several\\), not both"),
}
if not torch.cuda.is_available():
    BAD_TRAIN["no cuda"] = (["--dataset", "organamnist", *SYN, "--device", "cuda"],
                            "CUDA is not available; use --device cpu")


def _argv(ws: Path, case: str) -> list[str]:
    args = [a.replace("{ws}", str(ws)) for a in BAD_TRAIN[case][0]]
    if "--out" not in args and case != "md5 mismatch":  # that one uses the default runs/...
        args += ["--out", str(ws / "new-run")]
    return ["train", *args]


def _assert_one_error_line(err: str, message: str) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert re.search(message, lines[0]), (message, lines[0])


@pytest.mark.parametrize("case", list(BAD_TRAIN))
def test_bad_input_exit_2_and_nothing_touched(case: str, workspace: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    _prepare(workspace, case)
    before = _snapshot(workspace)
    code, out, err = run_main(monkeypatch, capsys, *_argv(workspace, case))
    assert code == 2, (out, err)
    _assert_one_error_line(err, BAD_TRAIN[case][1])
    assert _snapshot(workspace) == before


SUBPROCESS_CASES = ["unknown dataset", "md5 mismatch", "malformed config"]


def test_bad_input_in_a_real_process(workspace: Path) -> None:
    """The same through `python -m bench.cli`: what a user's shell sees. The processes run
    side by side (each spends most of its time importing torch)."""
    env = {**os.environ, "MEDBENCH_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.pop("MEDMNIST_DATA", None)
    for case in SUBPROCESS_CASES:
        _prepare(workspace, case)
    before = _snapshot(workspace)
    procs = {case: subprocess.Popen([sys.executable, "-m", "bench.cli", *_argv(workspace, case)],
                                    cwd=workspace / "cwd", env=env, text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for case in SUBPROCESS_CASES}
    for case, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, (case, out, err)
        _assert_one_error_line(err, BAD_TRAIN[case][1])
    assert _snapshot(workspace) == before


# --- datasets, models, synth -------------------------------------------------------------------

def _status_lines(output: str) -> dict[str, str]:
    return {line.split()[0]: line for line in output.splitlines() if line.split()
            and line.split()[0] in INFO}


def test_datasets_lists_every_flag_with_status(real_data_dir: Path) -> None:
    result = invoke("datasets", "--data-dir", real_data_dir)
    assert result.exit_code == 0, result.output
    assert f"data root: {real_data_dir}" in result.output
    lines = _status_lines(result.output)
    assert list(lines) == list(INFO)  # all 18, in INFO's order
    assert lines["breastmnist"].endswith("md5 ok")
    assert lines["pathmnist"].endswith("missing")
    n = INFO["breastmnist"]["n_samples"]
    assert lines["breastmnist"].split()[1:] == [
        "2D", "binary-class", "2", "1", str(n["train"]), str(n["val"]), str(n["test"]),
        "md5", "ok"]


def test_datasets_mismatch_and_sizes(synth_dir: Path) -> None:
    lines = _status_lines(invoke("datasets", "--data-dir", synth_dir).output)
    assert lines["organamnist"].endswith("md5 mismatch")
    assert lines["octmnist"].endswith("missing")
    lines = _status_lines(invoke("datasets", "--data-dir", synth_dir, "--size", 128).output)
    assert lines["organmnist3d"].endswith("no such size")
    assert lines["organamnist"].endswith("missing")


def test_models_lists_registered_families() -> None:
    result = invoke("models")
    assert result.exit_code == 0
    listed = [line.split()[0] for line in result.output.splitlines() if line.strip()]
    assert listed == list_models()
    assert re.search(r"^resnet18_3d +3D ", result.output, re.M) and "width=1.0" in result.output


def test_synth_writes_loadable_files(tmp_path: Path) -> None:
    result = invoke("synth", "breastmnist, dermamnist,organmnist3d", "--out", tmp_path,
                     "--n", "6,4,5", "--seed", 2)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["breastmnist.npz", "dermamnist.npz", "organmnist3d.npz"]
    for flag in ("breastmnist", "dermamnist", "organmnist3d"):
        assert str(tmp_path / f"{flag}.npz") in result.output
        data = load_dataset(flag, data_dir=tmp_path, verify_md5=False)
        assert [len(data.splits[s]) for s in ("train", "val", "test")] == [6, 4, 5]
    result = invoke("synth", "all", "--out", tmp_path / "all", "--n", "2,2,2", "--size", 64)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == \
        sorted(f"{flag}_64.npz" for flag in INFO)


@pytest.mark.parametrize(("argv", "message"), [
    (["--n", "1,2"], "--n '1,2': expected three positive counts"),
    (["--n", "4,0,4"], "expected three positive counts"),
    (["--size", "32"], "breastmnist has no size 32"),
])
def test_synth_bad_input(argv: list[str], message: str, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out_dir = tmp_path / "synth-out"
    code, _, err = run_main(monkeypatch, capsys, "synth", "breastmnist", "--out", out_dir,
                           *argv)
    assert code == 2
    _assert_one_error_line(err, message)
    assert not out_dir.exists()

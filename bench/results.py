"""The on-disk result schema, and the only code that writes it (atomically).

A run directory (``runs/<name>/``) is self-describing:

    spec.yaml            the resolved experiment spec
    spaces.yaml          per family, the search space it searched (bench.run_spaces)
    meta.json            package version, git commit, hardware, start/end, wall seconds
    trials.parquet       one row per search trial   (TRIAL_COLUMNS)
    selection.parquet    one row per selection re-run (SELECTION_COLUMNS)
    final.parquet        one row per final seeded run (FINAL_COLUMNS)
    final/<dataset>/<family>/seed<k>/   one training-run directory per final run:
        config.yaml, history.csv, metrics.json, model.pt and the prediction CSVs in MedMNIST's
        naming ``{flag}[_{size}]_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}@{run}.csv``
    wandb/               offline W&B runs (when tracking is on)

Columns hold JSON strings for nested values (config, history) so the tables stay flat for
pandas/parquet. A single `medbench train` writes just the training-run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

TRIAL_COLUMNS = [
    "dataset", "family", "trial_id", "status", "error", "config", "history",
    "best_val_auc", "best_val_acc", "best_epoch", "epochs_run", "wall_s", "device_s",
    "finished_at",  # unix time of the trial's last report: search history in finish order
    "retries",  # failed attempts Tune retried (max_failures) before the trial's final status
    "node", "gpu_ids",  # the Ray node it ran on and the GPU ids Ray gave it ("": none)
]
# Selection re-runs (bench/selection.py): a candidate search trial's config on another seed.
# Test metrics are recorded for later study of the rule, never read by it.
SELECTION_COLUMNS = [
    "dataset", "family", "candidate", "seed", "config", "val_auc", "val_acc", "test_auc",
    "test_acc", "epochs_run", "wall_s", "device_s", "status", "error",
]
FINAL_COLUMNS = [
    "dataset", "family", "seed", "size", "config", "history",
    "val_auc", "val_acc", "test_auc", "test_acc", "best_epoch", "epochs_run",
    "wall_s", "device_s", "train_images_per_s", "run_dir", "status", "error",
]


# The board name of the pipeline reference's seeds (bench.search.reference_jobs): the
# MedMNIST v2 ResNet-18 recipe trained by this pipeline. Never picked (bench.leaderboard).
REFERENCE_ENTRY = "official-resnet18"

# what a finished final run adds to its row (the rest comes from its config)
FINAL_RESULT_KEYS = ("val_auc", "val_acc", "test_auc", "test_acc", "best_epoch", "epochs_run",
                     "train_images_per_s", "history", "wall_s", "device_s")


def final_run_dir(dataset: str, family: str, seed: int) -> Path:
    """Where a final seed's training-run directory lives, relative to the run directory."""
    return Path("final") / dataset / family / f"seed{seed}"


def final_row(config: dict[str, Any], result: dict[str, Any] | None = None,
              error: str | None = None) -> dict[str, Any]:
    """One final.parquet row (FINAL_COLUMNS), the only place such a row is built: for the
    final seeds of `medbench run` (bench.search.run_final) and for `medbench train --seeds`,
    so the leaderboard and the report read both the same way.

    `config` is the seed's training config (it names dataset, model, size and seed);
    `result` the finished run's metrics, history, wall_s and device_s (None when it failed or
    left no checkpoint: the row then says only what was asked and why it failed)."""
    # `entry` names a row that is not a searched family (the pipeline reference)
    dataset, family, seed = config["dataset"], config.get("entry") or config["model"], \
        config["seed"]
    row = {"dataset": dataset, "family": family, "seed": seed, "size": config["size"],
           "config": config, "run_dir": str(final_run_dir(dataset, family, seed)),
           "status": "failed" if error else "ok", "error": error}
    if result is not None:
        row.update({k: result.get(k) for k in FINAL_RESULT_KEYS})
    return row


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write to a temp file beside `path`, then rename: readers never see half a file. The
    file gets the user's usual permissions (mkstemp alone would leave it private, 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextlib.contextmanager
def naming(path: str | Path):
    """An OSError out of writing `path` names it: a write() that hits a full disk raises
    ENOSPC without a file name, and pyarrow's (parquet) without an errno either; the error
    line (bench.cli.os_error_text) then names the file and its file system."""
    import errno

    try:
        yield
    except OSError as e:
        if e.filename and e.errno is not None:
            raise
        code = e.errno
        if code is None and "No space left on device" in str(e):
            code = errno.ENOSPC
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from e


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_yaml(path: Path, obj: Any) -> Path:
    import yaml

    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_csv(path: Path, df: pd.DataFrame, **kw) -> Path:
    return atomic_write(path, lambda p: df.to_csv(p, **kw))


def write_table(path: Path, rows: Iterable[dict], columns: list[str]) -> Path:
    """Rows -> parquet with a fixed column order; dict/list cells become JSON strings."""
    records = []
    for r in rows:
        rec = {c: r.get(c) for c in columns}
        for k, v in rec.items():
            if isinstance(v, dict | list):
                rec[k] = json.dumps(v, default=str)
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=columns)
    return atomic_write(path, lambda p: df.to_parquet(p, index=False))


def read_table(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


def prediction_filename(flag: str, size: int, split: str, auc: float, acc: float, run: str) -> str:
    """MedMNIST's standard evaluation file name, re-scorable by `medmnist.Evaluator`."""
    size_flag = "" if size == 28 else f"_{size}"
    return f"{flag}{size_flag}_{split}_[AUC]{auc:.3f}_[ACC]{acc:.3f}@{run}.csv"


def write_predictions(folder: Path, flag: str, size: int, split: str, scores, auc: float,
                      acc: float, run: str) -> Path:
    """Scores (N, K) as MedMNIST writes them: index column, no header."""
    path = Path(folder) / prediction_filename(flag, size, split, auc, acc, run)
    return write_csv(path, pd.DataFrame(scores), header=False)


def ensure_fresh_dir(path: Path) -> None:
    """Refuse to write over an existing run: a user's results are never overwritten."""
    from bench.errors import UserError

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{path} already holds a run (or is a file); choose another --out, "
                        "or delete it first if you really mean to replace it.")


def write_training_run(out: Path, config: dict, info, size: int, result, run: str) -> Path:
    """One training run's directory, built in a temp folder and renamed into place whole:
    config.yaml, history.csv, metrics.json, scores.npz, model.pt, MedMNIST prediction CSVs."""
    import shutil

    import numpy as np
    import torch

    out = Path(out)
    ensure_fresh_dir(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_yaml(tmp / "config.yaml", config)
        write_csv(tmp / "history.csv", pd.DataFrame(result.history), index=False)
        write_json(tmp / "metrics.json", {**result.summary(), "dataset": info.flag, "size": size,
                                          "task": info.task, "run": run})
        mirrored = {k: getattr(result, k) for k in ("val_scores_hflip", "test_scores_hflip")
                    if getattr(result, k, None) is not None}
        np.savez(tmp / "scores.npz", val_scores=result.val_scores, test_scores=result.test_scores,
                 val_labels=result.val_labels, test_labels=result.test_labels, **mirrored)
        torch.save({"config": config, "state_dict": result.best_state}, tmp / "model.pt")
        for split in ("val", "test"):
            m = getattr(result, split)
            write_predictions(tmp, info.flag, size, split, getattr(result, f"{split}_scores"),
                              m["auc"], m["acc"], run)
        if out.exists():
            out.rmdir()  # empty (ensure_fresh_dir checked)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

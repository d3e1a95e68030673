"""A small fake-but-consistent run directory for leaderboard/report tests.

2 datasets (breastmnist: binary, 156 test images; retinamnist: 5-class ordinal, 400) x 2 families
x 3 seeds. Scores are softmax(strength * one-hot(true label) + noise), so the test metrics are
controlled by `strength` and every number in final.parquet is what `bench.metrics` computes from
scores.npz. One extra retinamnist/mlp seed failed (no scores), as real runs sometimes do.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import medmnist
import numpy as np

from bench import metrics
from bench.results import (
    FINAL_COLUMNS,
    TRIAL_COLUMNS,
    write_json,
    write_predictions,
    write_table,
    write_yaml,
)

DATASETS = ("breastmnist", "retinamnist")
SEEDS = (0, 1, 2)
STRENGTHS = {"cnn": 3.0, "mlp": 1.2}  # cnn clearly better than mlp


def labels(flag: str, split: str) -> np.ndarray:
    """Fixed random labels (N, 1) of the split's real size: the same in every fake run."""
    info = medmnist.INFO[flag]
    rng = np.random.default_rng(zlib.crc32(f"{flag}/{split}".encode()))
    return rng.integers(0, len(info["label"]), size=(info["n_samples"][split], 1))


def write_label_npz(folder: Path, flag: str) -> Path:
    """`<flag>.npz` with the split labels, which is what `medmnist.Evaluator(root=...)` reads."""
    path = Path(folder) / f"{flag}.npz"
    np.savez(path, **{f"{s}_labels": labels(flag, s) for s in ("train", "val", "test")})
    return path


def noisy_scores(y: np.ndarray, n_classes: int, strength: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Probabilities that favour the true class by `strength` (float64, rows sum to 1)."""
    logits = strength * np.eye(n_classes)[y.reshape(-1)] + rng.normal(size=(len(y), n_classes))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _history(rng: np.random.Generator, n: int = 8) -> list[dict]:
    auc = np.clip(0.55 + np.cumsum(rng.uniform(0, 0.06, n)), 0, 0.99)
    return [{"epoch": i, "train_loss": float(1.5 / (i + 1)), "val_auc": float(auc[i]),
             "val_acc": float(auc[i] - 0.1)} for i in range(n)]


def make_run(root: Path, name: str = "run-a", strengths: dict[str, float] | None = None,
             seed: int = 0, datasets: tuple[str, ...] = DATASETS, size: int = 28) -> Path:
    """Write runs/<name>/ with final.parquet, trials.parquet, meta.json, spec.yaml, and per seed
    scores.npz + MedMNIST prediction CSVs. Returns the run directory."""
    strengths = strengths or STRENGTHS
    run = Path(root) / name
    rng = np.random.default_rng(seed)
    finals, trials = [], []
    for flag in datasets:
        task, n_classes = medmnist.INFO[flag]["task"], len(medmnist.INFO[flag]["label"])
        y_val, y_test = labels(flag, "val"), labels(flag, "test")
        for family, strength in strengths.items():
            for t in range(4):
                hist = _history(rng)
                failed = t == 3
                trials.append({
                    "dataset": flag, "family": family, "trial_id": f"{family}_{t:05d}",
                    "status": "failed" if failed else "ok", "error": "boom" if failed else None,
                    "config": {"lr": 10.0 ** -(t + 2)}, "history": [] if failed else hist,
                    "best_val_auc": None if failed else max(h["val_auc"] for h in hist),
                    "best_val_acc": None if failed else max(h["val_acc"] for h in hist),
                    "best_epoch": None if failed else len(hist) - 1, "epochs_run": len(hist),
                    "wall_s": 8.0 * strength, "device_s": 6.0 * strength})
            for k in SEEDS:
                rel = f"final/{flag}/{family}/seed{k}"
                s_val = noisy_scores(y_val, n_classes, strength, rng)
                s_test = noisy_scores(y_test, n_classes, strength, rng)
                (run / rel).mkdir(parents=True)
                np.savez(run / rel / "scores.npz", val_labels=y_val, val_scores=s_val,
                         test_labels=y_test, test_scores=s_test)
                val, test = metrics.evaluate(y_val, s_val, task), metrics.evaluate(
                    y_test, s_test, task)
                for split, s, m in (("val", s_val, val), ("test", s_test, test)):
                    write_predictions(run / rel, flag, size, split, s, m["auc"], m["acc"],
                                      f"seed{k}")
                finals.append({
                    "dataset": flag, "family": family, "seed": k, "size": size,
                    "config": {"lr": 1e-3}, "history": _history(rng),
                    "val_auc": val["auc"], "val_acc": val["acc"], "test_auc": test["auc"],
                    "test_acc": test["acc"], "best_epoch": 7, "epochs_run": 8,
                    "wall_s": 12.0 * strength, "device_s": 10.0 * strength,
                    "train_images_per_s": 5000.0, "run_dir": rel, "status": "ok", "error": None})
    if "retinamnist" in datasets:
        last = list(strengths)[-1]
        finals.append({"dataset": "retinamnist", "family": last, "seed": 3, "size": size,
                       "run_dir": f"final/retinamnist/{last}/seed3", "status": "failed",
                       "error": "out of memory", "wall_s": 5.0, "device_s": 4.0})
    write_table(run / "final.parquet", finals, FINAL_COLUMNS)
    write_table(run / "trials.parquet", trials, TRIAL_COLUMNS)
    write_json(run / "meta.json", {"wall_s": 321.0, "command": f"medbench run --name {name}",
                                   "version": "0.1.0", "git_commit": "deadbeef"})
    write_yaml(run / "spec.yaml", {"name": name, "datasets": list(datasets),
                                   "families": list(strengths), "seeds": list(SEEDS)})
    return run

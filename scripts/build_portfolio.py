"""Build the search's start portfolio (bench/search_spaces/portfolio.yaml), leave-one-dataset-out.

Each candidate configuration (written below without looking at any dataset, except the one
marked with its origin) is trained on the validation protocol of every available dataset with
a few seeds, at the quick preset's trial fidelity. For every dataset D a portfolio entry is
then chosen on the *other* datasets only (mean validation rank), and recorded with `found_on`
= the datasets whose data chose it; the search never starts dataset D from an entry whose
`found_on` contains D. A final group is chosen on all datasets, for subsets not available here.

Test labels are never read: only validation ACC/AUC are kept (the raw table goes to
reports/portfolio-build.json).

    python scripts/build_portfolio.py --data-dir ../shared/medmnist --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
# the genuine subsets available here, by dimension: a 3D family is built on 3D sets only
DATASETS = {2: ["breastmnist", "pneumoniamnist", "retinamnist"],
            3: ["adrenalmnist3d", "vesselmnist3d"]}
# origin: the dataset whose data shaped a candidate (None: written a priori).
CANDIDATES: list[dict] = [
    {"id": "small-ema-adamw", "origin": "breastmnist",  # the hand-found BreastMNIST recipe
     "family": "cnn_small", "config": {"width": 2.0, "depth": 3, "dropout": 0.0,
     "batch_norm": True, "optimizer": "adamw", "lr": 3.0e-3, "weight_decay": 1.0e-4,
     "batch_size": 64, "scheduler": "cosine", "ema": 0.99}},
    {"id": "small-adam-aug", "origin": None, "family": "cnn_small", "config": {
        "width": 1.0, "depth": 3, "dropout": 0.1, "batch_norm": True, "optimizer": "adam",
        "lr": 1.0e-3, "weight_decay": 0.0, "batch_size": 128, "scheduler": "cosine",
        "ema": 0.99, "aug_hflip": 0.5, "aug_rotation": 10.0}},
    {"id": "small-sgd-onecycle", "origin": None, "family": "cnn_small", "config": {
        "width": 2.0, "depth": 2, "dropout": 0.2, "batch_norm": True, "optimizer": "sgd",
        "lr": 3.0e-2, "weight_decay": 1.0e-4, "batch_size": 128, "scheduler": "onecycle",
        "ema": 0.0, "aug_shift": 0.1}},
    {"id": "small-adamw-smooth", "origin": None, "family": "cnn_small", "config": {
        "width": 1.0, "depth": 3, "dropout": 0.3, "batch_norm": True, "optimizer": "adamw",
        "lr": 3.0e-3, "weight_decay": 1.0e-3, "batch_size": 64, "scheduler": "onecycle",
        "label_smoothing": 0.1, "ema": 0.99, "aug_zoom": 0.1}},
    {"id": "small-classweight", "origin": None, "family": "cnn_small", "config": {
        "width": 2.0, "depth": 3, "dropout": 0.2, "batch_norm": True, "optimizer": "adam",
        "lr": 1.0e-3, "weight_decay": 1.0e-5, "batch_size": 64, "scheduler": "cosine",
        "class_weighting": True, "ema": 0.99}},
    {"id": "medium-adam", "origin": None, "family": "cnn_medium", "config": {
        "width": 0.25, "dropout": 0.2, "batch_norm": True, "optimizer": "adam", "lr": 1.0e-3,
        "weight_decay": 0.0, "batch_size": 128, "scheduler": "cosine", "ema": 0.99}},
    {"id": "medium-adamw-aug", "origin": None, "family": "cnn_medium", "config": {
        "width": 0.25, "dropout": 0.3, "batch_norm": True, "optimizer": "adamw", "lr": 3.0e-3,
        "weight_decay": 1.0e-4, "batch_size": 128, "scheduler": "onecycle", "ema": 0.99,
        "aug_hflip": 0.5, "aug_shift": 0.1}},
    {"id": "mlp-adam", "origin": None, "family": "mlp", "config": {
        "hidden": 512, "layers": 2, "dropout": 0.3, "optimizer": "adam", "lr": 1.0e-3,
        "weight_decay": 1.0e-5, "batch_size": 128, "scheduler": "cosine", "ema": 0.99}},
    {"id": "mlp-adamw-wide", "origin": None, "family": "mlp", "config": {
        "hidden": 1024, "layers": 1, "dropout": 0.5, "optimizer": "adamw", "lr": 3.0e-4,
        "weight_decay": 1.0e-3, "batch_size": 64, "scheduler": "cosine", "ema": 0.99,
        "aug_shift": 0.1}},
    # 3D (cnn3d_small), written before any 3D run of this script
    {"id": "3d-adam-plain", "origin": None, "family": "cnn3d_small", "config": {
        "width": 2.0, "depth": 3, "dropout": 0.1, "batch_size": 32, "optimizer": "adam",
        "lr": 1.0e-3, "weight_decay": 0.0, "scheduler": "cosine", "ema": 0.99}},
    {"id": "3d-adamw-aug", "origin": None, "family": "cnn3d_small", "config": {
        "width": 2.0, "depth": 3, "dropout": 0.2, "batch_size": 32, "optimizer": "adamw",
        "lr": 3.0e-3, "weight_decay": 1.0e-4, "scheduler": "cosine", "ema": 0.99,
        "aug_hflip": 0.5, "aug_vflip": 0.5, "aug_rotation": 10.0}},
    {"id": "3d-sgd-onecycle", "origin": None, "family": "cnn3d_small", "config": {
        "width": 1.0, "depth": 2, "dropout": 0.0, "batch_size": 16, "optimizer": "sgd",
        "lr": 1.0e-2, "weight_decay": 1.0e-4, "scheduler": "onecycle", "ema": 0.0}},
    {"id": "3d-classweight", "origin": None, "family": "cnn3d_small", "config": {
        "width": 2.0, "depth": 3, "dropout": 0.2, "batch_size": 32, "optimizer": "adam",
        "lr": 1.0e-3, "weight_decay": 1.0e-5, "scheduler": "cosine", "ema": 0.99,
        "class_weighting": True}},
    {"id": "3d-adamw-smooth", "origin": None, "family": "cnn3d_small", "config": {
        "width": 1.0, "depth": 3, "dropout": 0.3, "batch_size": 64, "optimizer": "adamw",
        "lr": 3.0e-3, "weight_decay": 1.0e-3, "scheduler": "onecycle", "ema": 0.99,
        "label_smoothing": 0.1}},
]


def _train(job: dict) -> dict:
    """One (candidate, dataset, seed) run in a worker process; returns validation only."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from bench.budget import epochs_for
    from bench.data import load_dataset
    from bench.train import fit

    data = load_dataset(job["dataset"], 28, job["data_dir"])
    epochs = epochs_for(job["trial_images"], len(data.splits["train"]), job["min_epochs"],
                        job["max_epochs"])
    cfg = {**job["config"], "dataset": job["dataset"], "model": job["family"], "seed": job["seed"],
           "epochs": epochs, "threads": 1}
    t0 = time.perf_counter()
    r = fit(cfg, data)
    return {"id": job["id"], "dataset": job["dataset"], "seed": job["seed"], "epochs": epochs,
            "val_auc": r.val["auc"], "val_acc": r.val["acc"], "wall_s": time.perf_counter() - t0}


def choose(rows: list[dict], datasets: list[str], family: str, k: int,
           left_out: str | None = None) -> list[str]:
    """Candidate ids of `family`, best mean validation rank over `datasets` first; a candidate
    that came from the left-out dataset is never eligible. The score per (candidate, dataset)
    is the mean over seeds of (val AUC + val ACC) / 2."""
    import pandas as pd

    df = pd.DataFrame(rows)
    fam_ids = [c["id"] for c in CANDIDATES if c["family"] == family
               and (left_out is None or c["origin"] != left_out)]
    df = df[df.id.isin(fam_ids) & df.dataset.isin(datasets)]
    df = df.assign(score=(df.val_auc + df.val_acc) / 2)
    per = df.groupby(["dataset", "id"]).score.mean().unstack("dataset")
    ranks = per.rank(ascending=False).mean(axis=1).sort_values()
    return list(ranks.index[:k])


def _entries(rows: list[dict], group: list[str], left: str | None, family: str, k: int,
             by_id: dict[str, dict], seen: set) -> list[dict]:
    """The top-k candidates of `family` chosen on `group` (never from `left`), each recorded
    with the datasets that chose it; an entry already written for the same datasets is
    skipped."""
    out = []
    for cid in choose(rows, group, family, k, left):
        origin = by_id[cid]["origin"]
        found_on = sorted(set(group) | ({origin} if origin else set()))
        if (cid, tuple(found_on)) in seen:
            continue
        seen.add((cid, tuple(found_on)))
        out.append({"id": cid, "family": family, "found_on": found_on,
                    "config": dict(by_id[cid]["config"])})  # no YAML aliases
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("MEDMNIST_DATA", "../shared/medmnist"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--per-family", type=int, default=2)
    args = ap.parse_args()
    from bench.models import get_entry

    preset = yaml.safe_load((REPO / "bench/search_spaces/experiments/quick.yaml").read_text())
    fid = preset["fidelity"]
    # a family's trial sees the images the quick preset gives it (budgets.<family>)
    per_family = {f: b["trial_images"] for f, b in (preset.get("budgets") or {}).items()
                  if "trial_images" in b}
    dim = {c["family"]: get_entry(c["family"]).dims for c in CANDIDATES}
    jobs = [{"id": c["id"], "family": c["family"], "config": c["config"], "dataset": d,
             "seed": int(s), "data_dir": args.data_dir,
             **fid, "trial_images": per_family.get(c["family"], fid["trial_images"])}
            for c in CANDIDATES for d in DATASETS[dim[c["family"]]]
            for s in args.seeds.split(",")]
    out_raw = REPO / "reports" / "portfolio-build.json"
    rows: list[dict] = json.loads(out_raw.read_text()) if out_raw.exists() else []
    done = {(r["id"], r["dataset"], r["seed"]) for r in rows}
    todo = [j for j in jobs if (j["id"], j["dataset"], j["seed"]) not in done]
    t0 = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        for row in pool.map(_train, todo):
            rows.append(row)
            out_raw.write_text(json.dumps(rows, indent=1))  # resumable
            print(f"[{time.time() - t0:6.0f}s] {row['id']:<20} {row['dataset']:<15} "
                  f"seed {row['seed']} val AUC {row['val_auc']:.3f} ACC {row['val_acc']:.3f} "
                  f"({row['wall_s']:.0f}s)", flush=True)
    by_id = {c["id"]: c for c in CANDIDATES}
    entries, seen = [], set()
    for family in sorted({c["family"] for c in CANDIDATES}):
        sets = DATASETS[dim[family]]
        groups = [([d for d in sets if d != left], left) for left in sets] + [(sets, None)]
        for group, left in groups:
            entries += _entries(rows, group, left, family, args.per_family, by_id, seen)
    header = ("# Start portfolio, written by scripts/build_portfolio.py (see its docstring).\n"
              "# Each entry was chosen on the validation splits of `found_on` only; searching a\n"
              "# dataset never starts from an entry whose found_on names it.\n")
    text = header + yaml.safe_dump({"entries": entries}, sort_keys=False)
    (REPO / "bench/search_spaces/portfolio.yaml").write_text(text)
    print(f"{len(entries)} entries -> bench/search_spaces/portfolio.yaml")


if __name__ == "__main__":
    main()

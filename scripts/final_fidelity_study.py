"""Should the final seeds train longer than a search trial? (issue: the search earns its keep)

A search trial sees `fidelity.trial_images` training images so that many configurations fit the
budget; the final phase trains the one chosen configuration per family on fresh seeds, where a
longer schedule costs only `final_seeds` runs. This study trains the configuration a quick run
chose (its `final.parquet`, chosen on validation) at 1x, 2x and 3x the trial's epochs (capped at
the preset's `fidelity.max_epochs`) on fresh seeds and records **validation** numbers only
(ACC, AUC, log-loss): the default `fidelity.final_factor` is chosen from these, never from test.

    python scripts/final_fidelity_study.py --run runs/quick-3 --data-dir ../shared/medmnist \
        --out reports/final-fidelity-study.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _train(job: dict) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from sklearn.metrics import log_loss

    from bench.data import load_dataset
    from bench.train import fit

    data = load_dataset(job["dataset"], 28, job["data_dir"])
    t0 = time.time()
    r = fit({**job["config"], "seed": job["seed"], "epochs": job["epochs"], "threads": 1}, data)
    labels = r.val_labels.reshape(-1)
    scores = np.clip(r.val_scores, 1e-7, 1 - 1e-7)
    loss = float(log_loss(labels, scores, labels=list(range(scores.shape[1]))))
    return {k: job[k] for k in ("dataset", "family", "factor", "epochs", "seed")} | {
        "val_acc": r.val["acc"], "val_auc": r.val["auc"], "val_logloss": loss,
        "best_epoch": r.best_epoch, "wall_s": time.time() - t0}


def main() -> None:
    import pandas as pd

    from bench.spaces import load_spec

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a finished quick run (its final.parquet)")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--family", default="cnn_small")
    ap.add_argument("--factors", default="1,2,3")
    ap.add_argument("--seeds", default="200,201")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="reports/final-fidelity-study.json")
    args = ap.parse_args()

    max_epochs = load_spec(preset="quick").fidelity_config.max_epochs
    final = pd.read_parquet(Path(args.run) / "final.parquet")
    jobs = []
    for dataset, rows in final[final.family == args.family].groupby("dataset"):
        cfg = json.loads(rows.iloc[0].config) if isinstance(rows.iloc[0].config, str) \
            else dict(rows.iloc[0].config)
        base = int(cfg.pop("epochs"))
        cfg.pop("seed", None)
        for factor in [int(f) for f in args.factors.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                jobs.append({"dataset": dataset, "family": args.family, "config": cfg,
                             "factor": factor, "epochs": min(max_epochs, base * factor),
                             "seed": seed, "data_dir": args.data_dir})
    t0 = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(_train, jobs))
    table = pd.DataFrame(rows)
    summary = (table.groupby(["dataset", "factor", "epochs"])
               [["val_acc", "val_auc", "val_logloss", "wall_s"]].mean().reset_index())
    print(summary.to_string(index=False))
    out = {"command": "python scripts/final_fidelity_study.py " + " ".join(
               f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
           "wall_s": time.time() - t0, "runs": rows,
           "summary": summary.to_dict(orient="records")}
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

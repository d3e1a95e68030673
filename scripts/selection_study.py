"""Which selection rule picks better on small validation sets? (issue: noise-aware selection)

K configurations are drawn from the quick preset's cnn_small space (fixed seed) and trained on
three seeds each, at the quick fidelity, on the real small subsets (BreastMNIST: 78 validation
images, RetinaMNIST: 120). Rules, cross-fitted so that the seed whose *test* score judges a
rule is never one the rule looked at:

- single: the validation score of one seed (what "best search trial" does);
- mean-of-2: the mean validation score of two seeds (the default rule: the search seed plus
  re-runs).

For each held-out seed t and each ordering of the other two, we measure the Spearman rank
correlation between the rule's score and the test score (ACC+AUC)/2 on seed t across the K
configs, and the test score of the config each rule would pick (regret against the best).
Results go to reports/selection-study.json; the table in reports/archive/NOTES.md is pasted from it.

    python scripts/selection_study.py --data-dir ../shared/medmnist --configs 8 --workers 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _train(job: dict) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from bench.data import load_dataset
    from bench.spaces import load_spec
    from bench.train import fit

    spec = load_spec(preset="quick")
    data = load_dataset(job["dataset"], 28, job["data_dir"])
    epochs = spec.trial_epochs("cnn_small", len(data.splits["train"]))
    r = fit({**job["config"], "dataset": job["dataset"], "model": "cnn_small",
             "seed": job["seed"], "epochs": epochs, "threads": 1}, data)
    return {**{k: job[k] for k in ("dataset", "cid", "seed")}, "val_auc": r.val["auc"],
            "val_acc": r.val["acc"], "test_auc": r.test["auc"], "test_acc": r.test["acc"]}


def sample_configs(k: int, seed: int = 0) -> list[dict]:
    """k points of the quick preset's cnn_small space, drawn with optuna's RandomSampler."""
    import optuna

    from bench.spaces import load_spec

    space = load_spec(preset="quick").spaces()["cnn_small"]
    sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(sampler=sampler)
    out = []
    for _ in range(k):
        trial = study.ask({name: p.to_optuna() for name, p in space.items() if p.searched})
        out.append({name: trial.params[name] if p.searched else p.value
                    for name, p in space.items()})
    return out


def analyse(rows: list[dict]) -> dict:
    from scipy.stats import spearmanr

    def s(r: dict, split: str) -> float:
        return (r[f"{split}_auc"] + r[f"{split}_acc"]) / 2

    out = {}
    for flag in sorted({r["dataset"] for r in rows}):
        by = {(r["cid"], r["seed"]): r for r in rows if r["dataset"] == flag}
        cids = sorted({c for c, _ in by})
        seeds = sorted({s_ for _, s_ in by})
        stats: dict[str, list] = {"single_rho": [], "mean2_rho": [], "single_pick": [],
                                  "mean2_pick": [], "oracle": []}
        for t in seeds:
            rest = [x for x in seeds if x != t]
            test = np.array([s(by[(c, t)], "test") for c in cids])
            mean2 = np.array([np.mean([s(by[(c, x)], "val") for x in rest]) for c in cids])
            for one in rest:
                single = np.array([s(by[(c, one)], "val") for c in cids])
                stats["single_rho"].append(spearmanr(single, test).statistic)
                stats["single_pick"].append(test[int(np.argmax(single))])
            stats["mean2_rho"].append(spearmanr(mean2, test).statistic)
            stats["mean2_pick"].append(test[int(np.argmax(mean2))])
            stats["oracle"].append(test.max())
        out[flag] = {k: float(np.nanmean(v)) for k, v in stats.items()} | {"configs": len(cids)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("MEDMNIST_DATA", "../shared/medmnist"))
    ap.add_argument("--datasets", default="breastmnist,retinamnist")
    ap.add_argument("--configs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    configs = sample_configs(args.configs)
    out_path = REPO / "reports" / "selection-study.json"
    done = json.loads(out_path.read_text())["runs"] if out_path.exists() else []
    have = {(r["dataset"], r["cid"], r["seed"]) for r in done}
    jobs = [{"dataset": d, "cid": i, "seed": s, "config": c, "data_dir": args.data_dir}
            for d, (i, c), s in itertools.product(args.datasets.split(","),
                                                   enumerate(configs), (0, 1, 2))
            if (d, i, s) not in have]
    t0 = time.time()
    rows = list(done)
    with ProcessPoolExecutor(args.workers) as pool:
        for row in pool.map(_train, jobs):
            rows.append(row)
            out_path.write_text(json.dumps({"configs": configs, "runs": rows}, indent=1))
            print(f"[{time.time() - t0:5.0f}s] {row['dataset']} config {row['cid']} "
                  f"seed {row['seed']}", flush=True)
    result = analyse(rows)
    out_path.write_text(json.dumps({"configs": configs, "runs": rows, "analysis": result},
                                   indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()

"""Which epoch should a run keep? (issue: the search earns its keep, selection on small splits)

`bench.train.fit` keeps the epoch with the best validation AUC. On small validation splits the
last few epochs differ by less than one image, so that choice is noise, and it leans late: the
most-trained weights win ties they did not earn. This study re-trains the configurations that
finished quick runs chose (their `final.parquet`, chosen on validation) on fresh seeds, keeps
every epoch's validation and test probabilities (`fit(epoch_scores=True)`), and re-chooses the
epoch offline by each rule:

- `best_auc`: the first epoch with the highest validation AUC (what fit does now);
- `significant`: start at epoch 1 and move to a later epoch only when the paired bootstrap 95%
  CI of its validation gain over the kept one, in the selection score (AUC + ACC) / 2, lies
  above zero (`bench.metrics.paired_difference_ci`) -- one kept state, so fit could run it;
- `within_noise`: the first epoch whose paired CI against the best-scoring epoch contains zero
  (the one-standard-error rule in bootstrap form; needs every epoch's weights).

Only validation chooses an epoch. Test numbers are recorded to judge the rules, and the rule is
judged on runs that are not the official splits (`--judge` names them): re-splits of the same
images made by `scripts/resplit.py`, whose test sets are other data.

    python scripts/checkpoint_rule_study.py \
        --run official=runs/quick-3:../shared/medmnist --run s1=RUN:DATA ... \
        --judge s1,s2,s3 --out reports/checkpoint-rule-study.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

RULES = ("best_auc", "significant", "within_noise")


def _train(job: dict) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from bench.data import load_dataset
    from bench.train import fit

    data = load_dataset(job["dataset"], 28, job["data_dir"], verify_md5=job["verify"],
                        allow_download=False)
    t0 = time.time()
    r = fit({**job["config"], "seed": job["seed"], "threads": 1}, data, epoch_scores=True)
    return {**{k: job[k] for k in ("split", "dataset", "family", "seed")},
            "task": data.info.task, "fit_best_epoch": r.best_epoch,
            "val_labels": r.val_labels, "test_labels": r.test_labels,
            "epoch_scores": r.epoch_scores, "wall_s": time.time() - t0}


def choose_epoch(rule: str, y_val: np.ndarray, val_scores: list[np.ndarray], task: str) -> int:
    """The 0-based epoch `rule` keeps, from validation labels and per-epoch val scores only."""
    from bench.metrics import evaluate, paired_difference_ci
    from bench.selection import score as selection_score

    if rule == "best_auc":
        aucs = [evaluate(y_val, s, task)["auc"] for s in val_scores]
        return int(np.argmax(aucs))  # the first of ties, as fit keeps it
    if rule == "significant":
        kept = 0
        for e in range(1, len(val_scores)):
            low, _ = paired_difference_ci(y_val, val_scores[e], val_scores[kept], task)
            if low > 0:
                kept = e
        return kept
    if rule == "within_noise":
        score = [selection_score(**{f"val_{k}": v for k, v in evaluate(y_val, s, task).items()})
                 for s in val_scores]
        best = int(np.argmax(score))
        for e in range(best + 1):
            low, _ = paired_difference_ci(y_val, val_scores[best], val_scores[e], task)
            if low <= 0:
                return e
        return best
    raise ValueError(rule)


def summarise(runs: list[dict]) -> list[dict]:
    """Per (split, dataset, family, rule): mean epoch, mean single-seed val/test metrics and
    the seed ensemble's (probabilities averaged over seeds, each at its own kept epoch)."""
    from bench.metrics import evaluate

    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["split"], r["dataset"], r["family"]), []).append(r)
    rows = []
    for (split, dataset, family), seeds in sorted(groups.items()):
        task = seeds[0]["task"]
        y_val, y_test = seeds[0]["val_labels"], seeds[0]["test_labels"]
        for rule in RULES:
            chosen = [choose_epoch(rule, y_val, [v for v, _ in s["epoch_scores"]], task)
                      for s in seeds]
            val = [s["epoch_scores"][e][0] for s, e in zip(seeds, chosen, strict=True)]
            test = [s["epoch_scores"][e][1] for s, e in zip(seeds, chosen, strict=True)]
            single_val = [evaluate(y_val, v, task) for v in val]
            single_test = [evaluate(y_test, t, task) for t in test]
            ens_val = evaluate(y_val, np.mean(val, axis=0), task)
            ens_test = evaluate(y_test, np.mean(test, axis=0), task)
            rows.append({
                "split": split, "dataset": dataset, "family": family, "rule": rule,
                "epochs": len(seeds[0]["epoch_scores"]), "seeds": len(seeds),
                "kept_epochs": [e + 1 for e in chosen],
                "val_acc": float(np.mean([m["acc"] for m in single_val])),
                "val_auc": float(np.mean([m["auc"] for m in single_val])),
                "test_acc": float(np.mean([m["acc"] for m in single_test])),
                "test_auc": float(np.mean([m["auc"] for m in single_test])),
                "ens_val_acc": ens_val["acc"], "ens_val_auc": ens_val["auc"],
                "ens_test_acc": ens_test["acc"], "ens_test_auc": ens_test["auc"]})
    return rows


def verdict(rows: list[dict], judge: set[str]) -> list[dict]:
    """Each rule against `best_auc` on the judged splits: mean test change of the seed ensemble
    and of single seeds, and wins/ties/losses of the ensemble's test ACC and AUC."""
    base = {(r["split"], r["dataset"], r["family"]): r for r in rows if r["rule"] == "best_auc"}
    out = []
    for rule in RULES[1:]:
        for family in sorted({r["family"] for r in rows}):
            pairs = [(r, base[(r["split"], r["dataset"], r["family"])]) for r in rows
                     if r["rule"] == rule and r["family"] == family and r["split"] in judge]
            if not pairs:
                continue
            entry = {"rule": rule, "family": family, "datasets": len(pairs)}
            for key in ("ens_test_acc", "ens_test_auc", "test_acc", "test_auc",
                        "ens_val_acc", "ens_val_auc"):
                d = np.array([a[key] - b[key] for a, b in pairs])
                entry[f"mean_change_{key}"] = float(d.mean())
                entry[f"wtl_{key}"] = [int((d > 1e-9).sum()), int((abs(d) <= 1e-9).sum()),
                                       int((d < -1e-9).sum())]
            out.append(entry)
    return out


def main() -> None:
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", required=True,
                    help="NAME=RUN_DIR:DATA_DIR, a finished quick run and the files it used")
    ap.add_argument("--judge", required=True, help="comma-separated NAMEs whose test sets judge")
    ap.add_argument("--families", default="cnn_small,mlp")
    ap.add_argument("--seeds", default="300,301,302")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="reports/checkpoint-rule-study.json")
    args = ap.parse_args()

    jobs = []
    for spec in args.run:
        name, paths = spec.split("=", 1)
        run_dir, data_dir = paths.split(":", 1)
        meta = json.loads((Path(run_dir) / "meta.json").read_text())
        final = pd.read_parquet(Path(run_dir) / "final.parquet")
        for (dataset, family), rows in final.groupby(["dataset", "family"]):
            if family not in args.families.split(","):
                continue
            cfg = rows.iloc[0].config
            cfg = json.loads(cfg) if isinstance(cfg, str) else dict(cfg)
            cfg.pop("seed", None)
            for seed in [int(s) for s in args.seeds.split(",")]:
                jobs.append({"split": name, "dataset": dataset, "family": family, "config": cfg,
                             "seed": seed, "data_dir": data_dir,
                             "verify": bool(meta.get("official_data", {}).get(dataset, True))})
    t0 = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(_train, jobs))
    rows = summarise(runs)
    judged = verdict(rows, set(args.judge.split(",")))
    print(pd.DataFrame(rows).drop(columns=["seeds"]).to_string(index=False))
    print(pd.DataFrame(judged).to_string(index=False))
    def shown(spec: str) -> str:  # NAME=RUN:DATA with the run and data folders' names only
        name, paths = spec.split("=", 1)
        return f"{name}={':'.join(Path(p).name for p in paths.split(':', 1))}"

    out = {"command": "python scripts/checkpoint_rule_study.py " + " ".join(
               f"--run {shown(r)}" for r in args.run)
           + f" --judge {args.judge} --families {args.families} --seeds {args.seeds}",
           "wall_s": time.time() - t0, "judged_on": args.judge.split(","),
           "verdict": judged, "summary": rows}
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()

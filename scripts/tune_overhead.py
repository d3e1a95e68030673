"""How much wall time Ray Tune adds around the trials: one `medbench search` (no final phase)
of cnn_small on breastmnist, FIFO, 1 CPU per trial, then

    wall / sum(trial wall_s)                  (1.0 = no overhead if trials ran one at a time)
    wall / (sum(trial wall_s) / concurrency)  (1.0 = no overhead with `concurrency` trials at once)

`concurrency` is the number of CPUs Ray saw (1 CPU per trial). "wall" is given twice: the whole
command (Python + Ray start included) and the search alone (meta.json's wall_s).

    python scripts/tune_overhead.py --data-dir ../shared/medmnist --num-samples 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--data-dir", required=True, help="folder holding breastmnist.npz")
parser.add_argument("--num-samples", type=int, default=16)
parser.add_argument("--max-epochs", type=int, default=3)
parser.add_argument("--out", help="run directory to keep (default: a temporary one)")
args = parser.parse_args()

work = Path(tempfile.mkdtemp(prefix="tune-overhead-"))
run_dir = Path(args.out) if args.out else work / "run"
spec_file = work / "spec.yaml"
spec_file.write_text(yaml.safe_dump({
    "name": "tune-overhead", "datasets": ["breastmnist"], "families": ["cnn_small"],
    "searcher": "random", "scheduler": "fifo", "num_samples": args.num_samples,
    "max_epochs": args.max_epochs, "grace_period": 1, "final_seeds": 0,
    "resources": {"cpu": 1, "gpu": 0},
}))

load_before = os.getloadavg()
t0 = time.perf_counter()
subprocess.run([sys.executable, "-m", "bench.cli", "search", "--spec", str(spec_file),
                "--out", str(run_dir), "--data-dir", args.data_dir, "--no-wandb"],
               check=True, env={**os.environ, "WANDB_MODE": "disabled"})
command_wall = time.perf_counter() - t0
load_after = os.getloadavg()

trials = pd.read_parquet(run_dir / "trials.parquet")
meta = json.loads((run_dir / "meta.json").read_text())
search_wall = meta["wall_s"]
concurrency = int(meta["cluster"]["CPU"])  # 1 CPU per trial
trial_sum = trials.wall_s.sum()
# the training epochs alone, inside those trials (no data loading, model building, evaluation)
epoch_sum = sum(h["epoch_s"] for hist in trials.history for h in json.loads(hist))

print()
print(f"trials: {len(trials)} ({(trials.status == 'ok').sum()} ok), "
      f"{args.max_epochs} epochs each, concurrency {concurrency}")
print(f"sum of trial wall_s: {trial_sum:.1f} s "
      f"(mean {trials.wall_s.mean():.2f} s, min {trials.wall_s.min():.2f}, "
      f"max {trials.wall_s.max():.2f})")
print(f"sum of training epochs inside them: {epoch_sum:.1f} s")
for label, wall in (("whole command", command_wall), ("search only (meta.json)", search_wall)):
    print(f"{label:>24}: wall {wall:6.1f} s   wall/sum {wall / trial_sum:5.2f}   "
          f"wall/(sum/{concurrency}) {wall / (trial_sum / concurrency):5.2f}")
print(f"load average (1/5/15 min) before: {' '.join(f'{x:.2f}' for x in load_before)}, "
      f"after: {' '.join(f'{x:.2f}' for x in load_after)} on {os.cpu_count()} CPUs")
print(f"run directory: {run_dir}")

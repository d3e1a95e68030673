#!/usr/bin/env bash
# GPU readiness check, ready to run the moment a CUDA device is available (under 4 minutes on
# one GPU). On a machine without CUDA it skips with one line and exits 0.
#
#   bash scripts/gpu_check.sh [--data-dir DIR] [--out DIR]
#
# Steps (each bounded by `timeout`; any failure ends the script with exit 1 and the step named):
#   1. CUDA smoke train: `medbench train` of cnn_small on the GPU, with the default bf16
#      autocast + channels-last, and again with both off (the fp32 / NCHW path).
#   2. Throughput vs CPU: training images per second of cnn_small, mlp and resnet18 (28 px)
#      on the GPU (bf16 + channels-last) and on the CPU, measured as `medbench plan` does.
#   3. The quick preset on one dataset with GPU resources (`--gpus-per-trial 0.25`: four
#      trials share the GPU), its wall budget cut to 80 s per dataset so the check fits; every
#      trial row must name a GPU id and every final seed must have trained on cuda.
# Then one summary line; the details stay in --out (default: a new temp folder).
# Data: --data-dir, else $MEDMNIST_DATA, else ../shared/medmnist; synthetic files without them.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DATA_DIR=${MEDMNIST_DATA:-../shared/medmnist}
OUT=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --data-dir) DATA_DIR=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown option $1 (use --data-dir DIR, --out DIR)" >&2; exit 2 ;;
  esac
done

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_check: SKIP: no CUDA device here (torch.cuda.is_available() is False); run it on a GPU machine"
  exit 0
fi

OUT=${OUT:-$(mktemp -d -t gpu-check-XXXXXX)}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
export WANDB_MODE=disabled MEDBENCH_OFFLINE=1 XDG_CACHE_HOME="$OUT/cache"
START=$(date +%s)

fail() { echo "gpu_check: FAIL at $1 (log: $LOG)"; tail -n 20 "$LOG" >&2 || true; exit 1; }

VERIFY=()
if [[ ! -f "$DATA_DIR/breastmnist.npz" ]]; then  # no real files: synthetic ones, same layout
  DATA_DIR="$OUT/data"
  "$PY" -m bench.cli synth breastmnist --out "$DATA_DIR" --n 546,78,156 >>"$LOG" 2>&1 \
    || fail "synthetic data"
  VERIFY=(--no-verify)
fi

# 1. smoke train on the GPU: bf16 + channels-last (defaults), then fp32 + NCHW
timeout 90 "$PY" -m bench.cli train --dataset breastmnist --model cnn_small --epochs 3 \
  --device cuda --data-dir "$DATA_DIR" "${VERIFY[@]}" --out "$OUT/train-bf16" >>"$LOG" 2>&1 \
  || fail "smoke train (bf16, channels-last)"
timeout 90 "$PY" -m bench.cli train --dataset breastmnist --model cnn_small --epochs 3 \
  --device cuda --set amp=false --set channels_last=false --data-dir "$DATA_DIR" \
  "${VERIFY[@]}" --out "$OUT/train-fp32" >>"$LOG" 2>&1 || fail "smoke train (fp32, NCHW)"

# 2. throughput, GPU vs CPU, and the checks of step 1's outputs
timeout 120 "$PY" - "$OUT" >"$OUT/throughput.txt" 2>>"$LOG" <<'EOF' || fail "throughput"
import json
import sys
from pathlib import Path

import torch

from bench.plan import measure
from bench.spaces import build_spec

out = Path(sys.argv[1])
for run in ("train-bf16", "train-fp32"):
    m = json.loads((out / run / "metrics.json").read_text())
    assert m["device"].startswith("cuda"), f"{run} trained on {m['device']}"
spec = build_spec({"name": "gpu-check", "datasets": ["breastmnist"],
                   "families": ["cnn_small", "mlp", "resnet18"]})
cpus = max(1, torch.get_num_threads())
rates = {}
for fam in spec.families:
    gpu = measure(spec, fam, "breastmnist", 1, "cuda")["train_ips"]
    cpu = measure(spec, fam, "breastmnist", cpus, "cpu")["train_ips"]
    rates[fam] = {"gpu_img_s": gpu, "cpu_img_s": cpu, "cpu_threads": cpus}
(out / "throughput.json").write_text(json.dumps(
    {"gpu": torch.cuda.get_device_name(0), "rates": rates}, indent=2))
print(", ".join(f"{f} {r['gpu_img_s']:,.0f} img/s ({r['gpu_img_s'] / r['cpu_img_s']:.1f}x "
                f"{r['cpu_threads']} CPU)" for f, r in rates.items()))
EOF

# 3. the quick preset on one dataset, GPU trials (budget cut to fit the check)
"$PY" - "$OUT/quick-gpu.yaml" <<'EOF' || fail "quick spec"
import sys

import yaml

from bench.spaces import spaces_dir

spec = yaml.safe_load((spaces_dir() / "experiments" / "quick.yaml").read_text())
spec.update(name="gpu-check-quick", datasets=["breastmnist"], budget_s=80)
open(sys.argv[1], "w").write(yaml.safe_dump(spec))
EOF
QUICK_T0=$(date +%s)
timeout 150 "$PY" -m bench.cli run --spec "$OUT/quick-gpu.yaml" --gpus-per-trial 0.25 \
  --data-dir "$DATA_DIR" "${VERIFY[@]}" --no-wandb --out "$OUT/quick" >>"$LOG" 2>&1 \
  || fail "quick preset with GPU resources"
QUICK_S=$(( $(date +%s) - QUICK_T0 ))
QUICK=$("$PY" - "$OUT/quick" <<'EOF'
import json
import sys
from pathlib import Path

import pandas as pd

run = Path(sys.argv[1])
trials = pd.read_parquet(run / "trials.parquet")
assert (trials.status == "ok").all(), "a trial failed"
assert trials.gpu_ids.fillna("").str.len().gt(0).all(), "a trial held no GPU"
devices = {json.loads(p.read_text())["device"] for p in run.glob("final/*/*/*/metrics.json")}
assert devices and all(d.startswith("cuda") for d in devices), f"final seeds on {devices}"
print(f"{len(trials)} trials on GPUs {','.join(sorted(set(trials.gpu_ids)))}")
EOF
) || fail "quick preset outputs"

GPU_NAME=$("$PY" -c "import torch; print(torch.cuda.get_device_name(0))")
echo "gpu_check: PASS on $GPU_NAME in $(( $(date +%s) - START )) s: bf16/channels-last and" \
  "fp32 train; $(cat "$OUT/throughput.txt"); quick preset (80 s budget) $QUICK in" \
  "${QUICK_S} s; details in $OUT"

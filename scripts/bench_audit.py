"""Speed and peak memory of `medbench audit` (a benchmark, not a test).

Audits PneumoniaMNIST (the real file, 5,856 images) and a synthetic set the size of
TissueMNIST (165,466 / 23,640 / 47,280 grey 28x28 images) in fresh subprocesses, so each peak
RSS is that audit's own (Python, torch and the loaded arrays included), with torch limited to
`--threads` (default 2) threads. Nothing is cached; the cache is never touched.

    python scripts/bench_audit.py --data-dir ../shared/medmnist [--threads 2] [--out FILE.json]
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

import numpy as np

TISSUE = (165_466, 23_640, 47_280)

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from bench.audit import audit_file
t0 = time.perf_counter()
a = audit_file(sys.argv[1], 28, sys.argv[2], use_cache=False, allow_download=False,
               write_cache=False)
wall = time.perf_counter() - t0
print(json.dumps({"flag": sys.argv[1], "images": sum(a["n"].values()), "wall_s": round(wall, 1),
                  "audit_s": a["seconds"], "peak_rss_mib": round(
                      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "near_pairs": {k: len(v) for k, v in a["near"]["across"].items()},
                  "exact_across": {k: len(v) for k, v in a["exact"]["across"].items()},
                  "leaky_test": len(a["leaky_test_indices"])}))
"""


def tissue_sized(folder: Path, seed: int = 0, chunk: int = 20_000) -> Path:
    """tissuemnist.npz of TissueMNIST's size: smooth random fields (blurred noise with its own
    brightness and contrast per image), 8 classes, in MedMNIST's layout."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in zip(("train", "val", "test"), TISSUE, strict=True):
        out = np.empty((n, 28, 28), np.uint8)
        for i in range(0, n, chunk):
            m = min(chunk, n - i)
            f = gaussian_filter(rng.normal(size=(m, 28, 28)).astype(np.float32), (0, 2, 2))
            f = (f - f.mean((1, 2), keepdims=True)) / (f.std((1, 2), keepdims=True) + 1e-6)
            img = rng.uniform(80, 170, (m, 1, 1)) + rng.uniform(20, 40, (m, 1, 1)) * f
            out[i:i + m] = np.clip(img, 0, 255).astype(np.uint8)
        arrays[f"{split}_images"] = out
        arrays[f"{split}_labels"] = rng.integers(0, 8, (n, 1)).astype(np.uint8)
    path = folder / "tissuemnist.npz"
    np.savez(path, **arrays)
    return path


def run_child(flag: str, data_dir: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "MEDBENCH_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, flag, str(data_dir), str(threads)],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise SystemExit(f"audit of {flag} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=Path("../shared/medmnist"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    results = {"threads": args.threads, "cpu_count": os.cpu_count(),
               "load_average_before": os.getloadavg()[0], "runs": []}
    results["runs"].append(run_child("pneumoniamnist", args.data_dir, args.threads))
    print(json.dumps(results["runs"][-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tissue_sized(Path(tmp))
        results["tissue_generate_s"] = round(time.perf_counter() - t0, 1)
        results["runs"].append(run_child("tissuemnist", Path(tmp), args.threads))
    print(json.dumps(results["runs"][-1]), flush=True)
    results["load_average_after"] = os.getloadavg()[0]
    if args.out:
        from bench.results import write_json

        write_json(args.out, results)


if __name__ == "__main__":
    main()

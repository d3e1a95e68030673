"""Training throughput of every 3D family on AdrenalMNIST3D, side by side in one run.

    python scripts/bench_3d.py --data-dir ../shared/medmnist --out reports/bench-3d-cpu.json

Each entry runs `bench.train.train_step` -- the step `bench.train.fit` runs (same Runner,
optimiser, schedule, loss, on-device augmentation) -- on index-sliced batches of the on-device
split, time-boxed to `--max-s` seconds after one untimed warm-up step. Repetitions go round
all entries in turn (entry 1, 2, ..., 1, 2, ...) so a
burst of load from other processes hits every family alike; medians are reported, with the load
average before and after (a shared machine makes absolute numbers move, the ratios less so).
`channels_last` entries time the same model in channels-last-3D memory format.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from bench.augment import AugmentConfig
from bench.data import MedData, load_dataset
from bench.models import count_parameters, create_model
from bench.results import write_json
from bench.train import (
    Runner,
    TrainConfig,
    make_loss,
    make_optimizer,
    make_scheduler,
    train_step,
)

FLAG = "adrenalmnist3d"
N_TRAIN = 1188  # AdrenalMNIST3D training volumes: the "epoch" column

# (label, size, model, model hyperparameters, batch size, channels_last)
ENTRIES: list[tuple[str, int, str, dict, int, bool]] = [
    ("cnn3d_small", 28, "cnn3d_small", {}, 32, False),
    ("cnn3d_small CL3D", 28, "cnn3d_small", {}, 32, True),
    ("cnn3d_medium", 28, "cnn3d_medium", {}, 32, False),
    ("cnn3d_medium CL3D", 28, "cnn3d_medium", {}, 32, True),
    ("resnet18_2_5d_light", 28, "resnet18_2_5d_light", {}, 32, False),
    ("resnet18_acs w0.25 stride2", 28, "resnet18_acs", {"width": 0.25, "stem": "stride2"}, 32,
     False),
    ("resnet18_2_5d", 28, "resnet18_2_5d", {}, 16, False),
    ("resnet18_acs", 28, "resnet18_acs", {}, 16, False),
    ("resnet18_3d", 28, "resnet18_3d", {}, 16, False),
    ("cnn3d_small", 64, "cnn3d_small", {}, 16, False),
    ("cnn3d_medium", 64, "cnn3d_medium", {}, 16, False),
    ("resnet18_2_5d_light", 64, "resnet18_2_5d_light", {}, 16, False),
]
QUICK_ENTRIES = {0, 2, 4, 9}  # --quick: the small families only (a smoke test of the script)


def train_rate(cfg: TrainConfig, data: MedData, max_s: float) -> float:
    """Training volumes/s of fit's step for `cfg`: one untimed warm-up step, then steps until
    `max_s` seconds have passed (at least one)."""
    torch.manual_seed(cfg.seed)
    train = data.splits["train"]
    model = create_model(cfg.model, train.images.shape[1], data.info.n_classes, data.size,
                         **cfg.model_hp)
    run = Runner(cfg, data, model)
    opt = make_optimizer(cfg, run.model.parameters())
    sched = make_scheduler(cfg, opt, math.ceil(len(train) / cfg.batch_size) * cfg.epochs)
    loss_fn, aug = make_loss(cfg, data), AugmentConfig.from_config(cfg.to_dict())
    gen = torch.Generator(device=run.device).manual_seed(cfg.seed)
    run.model.train()
    perm = torch.randperm(len(train), device=run.device, generator=gen)
    volumes, pos, t0 = 0, 0, 0.0
    for step in range(10**9):
        if step == 1:
            t0 = time.perf_counter()
        if pos + cfg.batch_size > len(train):
            pos = 0
        idx = perm[pos:pos + cfg.batch_size]
        pos += cfg.batch_size
        float(train_step(run, opt, sched, loss_fn, aug, gen, train.images[idx],
                         train.labels[idx]))  # a host sync: the step has really finished
        if step >= 1:
            volumes += len(idx)
            if time.perf_counter() - t0 >= max_s:
                break
    return volumes / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--max-s", type=float, default=20.0, help="timed seconds per entry and rep")
    ap.add_argument("--aug", action="store_true", help="with flips + 10 degree 3D rotations")
    ap.add_argument("--quick", action="store_true", help="small families only, one short rep")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    entries = [e for i, e in enumerate(ENTRIES) if not args.quick or i in QUICK_ENTRIES]
    reps, max_s = (1, 2.0) if args.quick else (args.reps, args.max_s)
    data = {size: load_dataset(FLAG, size, args.data_dir)
            for size in sorted({e[1] for e in entries})}
    aug = {"aug_hflip": 0.5, "aug_vflip": 0.5, "aug_rotation": 10.0} if args.aug else {}
    load_before = os.getloadavg()
    rates: dict[int, list[float]] = {i: [] for i in range(len(entries))}
    for rep in range(reps):
        for i, (label, size, model, hp, batch, cl) in enumerate(entries):
            cfg = TrainConfig.from_dict({"dataset": FLAG, "size": size, "model": model,
                                         "batch_size": batch, "channels_last": cl,
                                         "device": "cpu", "epochs": 1, **aug, **hp})
            rate = train_rate(cfg, data[size], max_s)
            rates[i].append(rate)
            print(f"rep {rep + 1}/{reps} {label} {size}^3: {rate:.1f} volumes/s", flush=True)
    load_after = os.getloadavg()
    rows = []
    for i, (label, size, model, hp, batch, cl) in enumerate(entries):
        n_params = count_parameters(create_model(model, 1, 2, size, **hp))
        vps = statistics.median(rates[i])
        rows.append({"entry": label, "size": size, "model": model, "hp": hp, "batch": batch,
                     "channels_last_3d": cl, "params": n_params, "volumes_per_s": vps,
                     "epoch_s": N_TRAIN / vps, "samples": rates[i]})
    lines = ["| entry | size | params | batch | train volumes/s | s per AdrenalMNIST3D epoch |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['entry']} | {r['size']}^3 | {r['params'] / 1e6:.2f}M | {r['batch']} | "
              f"{r['volumes_per_s']:.1f} | {r['epoch_s']:.0f} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    print(f"load average before {load_before}, after {load_after}; threads {args.threads}; "
          f"torch {torch.__version__}; {reps} reps x {max_s:.0f} s per entry")
    if args.out:
        result = {"rows": rows, "table": table, "threads": args.threads, "reps": reps,
                  "max_s": max_s, "augmentation": aug, "torch": torch.__version__,
                  "load_before": load_before, "load_after": load_after,
                  "command": " ".join(["python", *sys.argv]),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Write MedMNIST files re-split at random: the same images, new train / val / test splits.

Why: a search that is good only on the official splits (or a default chosen, knowingly or
not, to suit them) is not good. The issue's claims ("the search's pick is within 0.01 ACC of
the hand config", "it beats the published rows") are also judged on splits this project does
not have; re-splitting the genuine files is the closest check that can be run here. Each
output file pools the three official splits and deals them out again with the official split
sizes, stratified by class for single-label tasks (a multi-label task is dealt at random), in
the exact MedMNIST format, so every command reads it with `--no-verify` (its md5 is not the
official one). The published numbers do not apply to a re-split; compare against the hand
config or another run on the same files.

    python scripts/resplit.py --data-dir ../shared/medmnist --out /tmp/resplit --seed 1 \\
        breastmnist pneumoniamnist retinamnist
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

SPLITS = ("train", "val", "test")


def resplit(arrays: dict[str, np.ndarray], seed: int, stratify: bool) -> dict[str, np.ndarray]:
    """The pooled images of `arrays` dealt into splits of the original sizes."""
    images = np.concatenate([arrays[f"{s}_images"] for s in SPLITS])
    labels = np.concatenate([arrays[f"{s}_labels"] for s in SPLITS])
    sizes = {s: len(arrays[f"{s}_labels"]) for s in SPLITS}
    index = np.arange(len(labels))
    by_class = labels[:, 0] if stratify else None
    rest, test = train_test_split(index, test_size=sizes["test"], random_state=seed,
                                  stratify=by_class)
    train, val = train_test_split(rest, test_size=sizes["val"], random_state=seed + 1,
                                  stratify=None if by_class is None else by_class[rest])
    out = {}
    for name, idx in zip(SPLITS, (train, val, test), strict=True):
        idx = np.sort(idx)
        out[f"{name}_images"] = images[idx]
        out[f"{name}_labels"] = labels[idx]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("flags", nargs="+", help="subsets, e.g. breastmnist (file <flag>.npz)")
    p.add_argument("--data-dir", type=Path, required=True, help="folder of the official files")
    p.add_argument("--out", type=Path, required=True, help="folder for the re-split files")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    a = p.parse_args(argv)
    from bench.data import all_flags, dataset_info, npz_path

    unknown = [f for f in a.flags if f not in all_flags()]
    if unknown:
        print(f"error: unknown subset(s) {', '.join(unknown)}; `medbench datasets` lists them",
              file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    for flag in a.flags:
        src = npz_path(flag, a.size, a.data_dir)
        name = src.name
        if not src.is_file():
            print(f"error: {src} not found; point --data-dir at the folder holding it",
                  file=sys.stderr)
            return 2
        if (a.out / name).resolve() == src.resolve():
            print("error: --out must not be the folder of the official files", file=sys.stderr)
            return 2
        with np.load(src) as z:
            arrays = {k: z[k] for k in z.files}
        out = resplit(arrays, a.seed, stratify=not dataset_info(flag).multi_label)
        tmp = a.out / f".{name}.tmp.npz"
        np.savez_compressed(tmp, **out)
        tmp.replace(a.out / name)
        print(a.out / name, {s: len(out[f"{s}_labels"]) for s in SPLITS})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Synthetic files with planted problems for the data audit (tests and scripts/bench_audit.py).

Clean images are smooth random fields (Gaussian-blurred noise with its own brightness and
contrast, little of it clipped), so distinct images really are distinct. Planted copies of
training images go into the test split moved by one pixel (at 28 px; the same fraction at
larger sizes), with pixel noise (std 6 grey levels), with a brightness and contrast change
(x0.9-1.1, +-15 grey levels), or all three at once (noise std 4).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

PERTURBATIONS = ("shift", "noise", "brightness", "combined")


def smooth_fields(rng: np.random.Generator, n: int, shape: tuple[int, ...],
                  channels: int = 1) -> np.ndarray:
    """n uint8 images (or volumes) of blurred noise; sigma, mean and contrast vary per image."""
    out = np.empty((n, *shape, channels) if channels > 1 else (n, *shape), np.uint8)
    for i in range(n):
        raw = rng.normal(size=(*shape, channels) if channels > 1 else shape)
        sigma = rng.uniform(1.5, 3.0) * shape[0] / 28  # the same structure at every size
        f = gaussian_filter(raw, sigma=(sigma,) * len(shape) + ((0,) if channels > 1 else ()))
        f = (f - f.mean()) / (f.std() + 1e-9)
        img = rng.uniform(80, 170) + rng.uniform(20, 40) * f + rng.normal(0, 2, f.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def shift(im: np.ndarray, offsets: tuple[int, ...]) -> np.ndarray:
    """Move the spatial axes by the offsets, repeating edge pixels (a re-cropped copy)."""
    r = max(abs(o) for o in offsets) or 1
    spatial = len(offsets)
    pad = [(r, r)] * spatial + [(0, 0)] * (im.ndim - spatial)
    p = np.pad(im, pad, mode="edge")
    sl = tuple(slice(r - o, r - o + n) for o, n in zip(offsets, im.shape, strict=False))
    return p[sl]


def perturb(im: np.ndarray, kind: str, rng: np.random.Generator, spatial: int) -> np.ndarray:
    x = im.astype(np.float32)
    if kind in ("shift", "combined"):
        step = max(1, round(im.shape[0] / 28))  # 1 px at 28 px, the same fraction at others
        offs = tuple(step * int(v) for v in rng.choice([-1, 0, 1], spatial))
        if not any(offs):
            offs = (step,) + offs[1:]
        x = shift(x, offs)
    if kind in ("noise", "combined"):
        x = x + rng.normal(0, 6 if kind == "noise" else 4, x.shape)
    if kind in ("brightness", "combined"):
        x = x * rng.uniform(0.9, 1.1) + rng.uniform(-15, 15)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def planted_arrays(n: tuple[int, int, int] = (600, 100, 300), size: int = 28, dims: int = 2,
                   channels: int = 1, n_exact: int = 10, n_near: int = 40, n_blank: int = 5,
                   n_within: int = 1, seed: int = 0
                   ) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """MedMNIST-layout arrays (binary labels) with planted problems, and what was planted:
    exact copies train->test and within train, near copies train->test (each perturbation kind
    in turn), blank images in train and test. Returns (arrays, truth)."""
    rng = np.random.default_rng(seed)
    shape = (size,) * dims
    arrays: dict[str, np.ndarray] = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        arrays[f"{split}_images"] = smooth_fields(rng, count, shape, channels)
        arrays[f"{split}_labels"] = rng.integers(0, 2, (count, 1)).astype(np.uint8)
    tr, te = arrays["train_images"], arrays["test_images"]
    slots = rng.permutation(len(te))
    src = rng.permutation(len(tr))
    truth: dict[str, list] = {"exact_train_test": [], "near_train_test": [],
                              "exact_within_train": [], "blank_train": [], "blank_test": []}
    k = 0
    for _ in range(n_exact):
        i, j = int(src[k]), int(slots[k])
        te[j] = tr[i]
        truth["exact_train_test"].append((i, j))
        k += 1
    for m in range(n_near):
        i, j = int(src[k]), int(slots[k])
        kind = PERTURBATIONS[m % len(PERTURBATIONS)]
        te[j] = perturb(tr[i], kind, rng, dims)
        truth["near_train_test"].append((i, j, kind))
        k += 1
    a, b = int(src[k]), int(src[k + 1])
    if n_within:
        tr[b] = tr[a]
        truth["exact_within_train"].append((min(a, b), max(a, b)))
    k += 2
    for split, key in (("train", "blank_train"), ("test", "blank_test")):
        used = {t[0] for t in truth["exact_train_test"] + truth["near_train_test"]} | {a, b}
        if split == "test":
            used = {t[1] for t in truth["exact_train_test"] + truth["near_train_test"]}
        free = [i for i in rng.permutation(len(arrays[f"{split}_images"])) if i not in used]
        for i in free[:n_blank]:
            arrays[f"{split}_images"][i] = rng.integers(0, 256)
            truth[key].append(int(i))
    return arrays, truth

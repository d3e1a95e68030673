"""The data audit's checks of single images and labels: blank images, intensity outliers and
label balance (bench.audit runs them on every split of a file).

Why apart from the duplicate search: these look at one image (or one split's labels) at a
time and need no embedding; their thresholds are the ones the audit's markdown states.

- Blank images: pixel standard deviation below BLANK_STD grey levels.
- Intensity outliers: mean intensity more than OUTLIER_Z robust z-scores (median/MAD) from the
  median over the whole file (every split).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.data import DatasetInfo

BLANK_STD = 2.0  # grey levels (of 255)
OUTLIER_Z = 6.0


def intensity_stats(images: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean and standard deviation of the pixel values (grey levels), chunked."""
    n = len(images)
    mean, std = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for i in range(0, n, chunk):
        x = images[i:i + chunk].reshape(min(chunk, n - i), -1).astype(np.float32)
        mean[i:i + chunk], std[i:i + chunk] = x.mean(1), x.std(1)
    return mean, std


def intensity_checks(images: dict[str, np.ndarray]) -> tuple[dict[str, list[int]],
                                                          dict[str, list[int]],
                                                          dict[str, dict[str, float]]]:
    """Per split (the keys of `images`): the indices of blank images, of intensity outliers
    (robust z over every split's image means together) and the mean, min and max pixel value."""
    blank, outliers, intensity = {}, {}, {}
    means = {s: intensity_stats(im) for s, im in images.items()}
    all_means = np.concatenate([m for m, _ in means.values()])
    med = float(np.median(all_means)) if len(all_means) else 0.0
    mad = float(np.median(np.abs(all_means - med))) * 1.4826 if len(all_means) else 0.0
    for s, (m, sd) in means.items():
        blank[s] = np.flatnonzero(sd < BLANK_STD).tolist()
        z = np.abs(m - med) / max(mad, 1e-6)
        outliers[s] = np.flatnonzero(z > OUTLIER_Z).tolist()
        intensity[s] = {"mean": float(m.mean()) if len(m) else 0.0,
                        "min": int(images[s].min()) if images[s].size else 0,
                        "max": int(images[s].max()) if images[s].size else 0}
    return blank, outliers, intensity


def label_summary(labels: np.ndarray, info: DatasetInfo) -> dict[str, Any]:
    """Counts per class (positives per label for multi-label), imbalance ratio (largest over
    smallest count; inf when a class is absent), values outside the task's range."""
    top = 1 if info.multi_label else info.n_classes - 1
    y = labels.astype(np.int64)
    out_of_range = int(((y < 0) | (y > top)).sum())
    if info.multi_label:
        counts = [int(c) for c in (y == 1).sum(0)]
    else:
        counts = [int((y[:, 0] == c).sum()) for c in range(info.n_classes)]
    lo, hi = min(counts), max(counts)
    out = {"counts": counts, "imbalance_ratio": (hi / lo) if lo else float("inf"),
           "out_of_range": out_of_range}
    if info.multi_label:
        pos = (y == 1).astype(np.int64)
        out["cooccurrence"] = (pos.T @ pos).tolist()
        out["no_label"] = int((pos.sum(1) == 0).sum())
        out["labels_per_image_mean"] = float(pos.sum(1).mean()) if len(pos) else 0.0
    return out

"""Data audit of one MedMNIST file: exact and near duplicates (within and across splits), blank
and out-of-range images, label balance; and test scores without the leaked test images.

Why: a model that memorised a training image scores its copy in the test split again, so a
benchmark number is only as honest as its splits. The audit finds such copies before a number is
reported, and the leaderboard shows each test score again without them ("leakage-free").

Methods (the threshold is justified on planted pairs in reports/audit.md):

- Exact duplicates: blake2b over each image's bytes (whole volume for 3D), grouped by hash.
- Near duplicates across splits (train/val vs test): each image is turned into a grey
  `GRID`^dims low-resolution embedding (area averages), centred and scaled to unit length, so
  brightness and contrast changes and pixel noise barely move it. Small shifts do move it, so
  every test image is also embedded shifted by one step (1 px at 28 px) in each direction, and
  a pair's similarity is the best over those shifts. Nearest neighbours come from matrix
  products in fixed-size chunks, so memory stays flat however large the split.
  distance = 1 - cosine similarity; a pair is near when distance <= NEAR_THRESHOLD.
- Blank images: pixel standard deviation below BLANK_STD grey levels. Intensity outliers:
  mean intensity more than OUTLIER_Z robust z-scores (median/MAD) from the file's median.

Results are cached per file md5 (and AUDIT_VERSION), written atomically into the data root's
`.medbench-audit/` folder, or the user cache when the data root is read-only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.data import (
    SPLITS,
    DatasetInfo,
    _check_arrays,
    check_size,
    data_root,
    dataset_info,
    ensure_file,
    file_md5,
    npz_path,
    read_npz,
)
from bench.errors import UserError

AUDIT_VERSION = 1  # part of the cache key: bump when a method or threshold changes
GRID = 8  # low-resolution embedding side (8x8 in 2D, 8x8x8 in 3D)
NEAR_THRESHOLD = 0.004  # distance (1 - cosine) at or below which a cross-split pair is "near"
BLANK_STD = 2.0  # grey levels (of 255)
OUTLIER_Z = 6.0
QUERY_CHUNK = 256  # test images per matrix product (times the shifted copies)
DB_CHUNK = 8192  # reference images per matrix product
NEAR_PAIRS = (("train", "test"), ("val", "test"))
EXACT_PAIRS = (("train", "test"), ("val", "test"), ("train", "val"))


# --- loading -----------------------------------------------------------------------------------

def load_for_audit(flag: str, size: int = 28, data_dir: str | Path | None = None,
                   allow_download: bool = True) -> tuple[dict[str, np.ndarray], Path]:
    """The file's arrays, checked like `bench.data.load_arrays` (keys, dtypes, shapes) except
    that labels outside the task's range are counted by the audit instead of refused, and the
    md5 need not be the official one (the audit reports whether it is)."""
    info = dataset_info(flag)
    check_size(info, size)
    path = ensure_file(flag, size, data_dir, allow_download)
    arrays = read_npz(path)
    top = 1 if info.multi_label else info.n_classes - 1
    clipped = {k: (np.clip(v, 0, top) if k.endswith("_labels") and v.dtype.kind in "iu"
                   else v) for k, v in arrays.items()}
    _check_arrays(info, size, clipped, path)
    return arrays, path


# --- exact duplicates --------------------------------------------------------------------------

def content_hashes(images: np.ndarray) -> list[bytes]:
    """blake2b (16 bytes) of each image's (or volume's) bytes."""
    return [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest()
            for im in images]


def _groups(hashes: list[bytes]) -> dict[bytes, list[int]]:
    out: dict[bytes, list[int]] = defaultdict(list)
    for i, h in enumerate(hashes):
        out[h].append(i)
    return out


def exact_within(hashes: list[bytes]) -> list[dict[str, int]]:
    """Each later copy paired with the first copy of its group (k copies give k-1 pairs)."""
    pairs = []
    for idx in _groups(hashes).values():
        pairs += [{"index_a": idx[0], "index_b": j, "distance": 0} for j in idx[1:]]
    return sorted(pairs, key=lambda p: (p["index_a"], p["index_b"]))


def exact_across(hashes_a: list[bytes], hashes_b: list[bytes], a: str,
                 b: str) -> list[dict[str, int]]:
    """Every (a, b) index pair with identical content."""
    groups_a = _groups(hashes_a)
    pairs = []
    for j, h in enumerate(hashes_b):
        pairs += [{f"{a}_index": i, f"{b}_index": j, "distance": 0} for i in groups_a.get(h, [])]
    return sorted(pairs, key=lambda p: (p[f"{b}_index"], p[f"{a}_index"]))


# --- near duplicates ---------------------------------------------------------------------------

def _grey(images: np.ndarray, info: DatasetInfo):
    """uint8 file layout -> float32 torch tensor (N, C, *spatial). Colour stays: fundus photos
    of different eyes share one layout and differ mostly in hue."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(images)).float()
    if info.dims == 2 and info.n_channels == 3:
        return t.permute(0, 3, 1, 2)
    return t.unsqueeze(1)


def _pool(t, dims: int, grid: int):
    import torch.nn.functional as F

    pool = F.adaptive_avg_pool3d if dims == 3 else F.adaptive_avg_pool2d
    return pool(t, (grid,) * dims).flatten(1)


def _unit(v):
    """Centre each row and scale it to unit length; constant rows become zero (match nothing)."""
    v = v - v.mean(1, keepdim=True)
    n = v.norm(dim=1, keepdim=True)
    return v / n.clamp_min(1e-6) * (n > 1e-3)


def shift_step(size: int) -> int:
    """One pixel at 28 px, proportionally more at larger sizes."""
    return max(1, round(size / 28))


def embed(images: np.ndarray, info: DatasetInfo, grid: int = GRID,
          chunk: int = 4096) -> Any:
    """(N, grid**dims) float32 unit embeddings, computed in chunks (memory stays flat)."""
    import torch

    out = [_unit(_pool(_grey(images[i:i + chunk], info), info.dims, grid))
           for i in range(0, len(images), chunk)]
    return torch.cat(out) if out else torch.zeros(0, grid ** info.dims)


def embed_shifted(images: np.ndarray, info: DatasetInfo, step: int, grid: int = GRID) -> Any:
    """(S, N, grid**dims): the images moved by -step, 0, +step along every spatial axis (edge
    pixels repeated), so a copy moved by up to `step` pixels still lines up with one of them."""
    import torch
    import torch.nn.functional as F

    t = _grey(images, info)
    dims = info.dims
    padded = F.pad(t, (step,) * (2 * dims), mode="replicate")
    full = t.shape[2:]
    outs = []
    for offs in itertools.product((-step, 0, step), repeat=dims):
        sl = tuple(slice(step + o, step + o + n) for o, n in zip(offs, full, strict=True))
        outs.append(_unit(_pool(padded[(slice(None), slice(None), *sl)], dims, grid)))
    return torch.stack(outs)


def nearest_neighbours(queries: np.ndarray, reference: np.ndarray, info: DatasetInfo,
                       size: int, grid: int = GRID, query_chunk: int = QUERY_CHUNK,
                       db_chunk: int = DB_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """For each query image: the index of its most similar reference image (best over the
    query's shifts) and the distance 1 - cosine. Chunked on both sides: the largest block held
    is (shifts x query_chunk) x db_chunk floats."""
    import torch

    ref = embed(reference, info, grid)
    n = len(queries)
    best = np.full(n, np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    if n == 0 or len(ref) == 0:
        return arg, best
    step = shift_step(size)
    if info.dims == 3:  # 27 shifted volumes per query: keep the chunk small
        query_chunk = max(1, query_chunk // 8)
    with torch.no_grad():
        for q0 in range(0, n, query_chunk):
            q = embed_shifted(queries[q0:q0 + query_chunk], info, step, grid)  # (S, B, d)
            s_count, b, d = q.shape
            flat = q.reshape(s_count * b, d)
            top = torch.full((b,), -2.0)
            top_i = torch.zeros(b, dtype=torch.long)
            for r0 in range(0, len(ref), db_chunk):
                sims = (flat @ ref[r0:r0 + db_chunk].T).view(s_count, b, -1).amax(0)
                v, i = sims.max(1)
                better = v > top
                top = torch.where(better, v, top)
                top_i = torch.where(better, i + r0, top_i)
            best[q0:q0 + b] = (1.0 - top).clamp_min(0).numpy()
            arg[q0:q0 + b] = top_i.numpy()
    return arg, best


# --- intensities and labels --------------------------------------------------------------------

def intensity_stats(images: np.ndarray, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
    """Per-image mean and standard deviation of the pixel values (grey levels), chunked."""
    n = len(images)
    mean, std = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for i in range(0, n, chunk):
        x = images[i:i + chunk].reshape(min(chunk, n - i), -1).astype(np.float32)
        mean[i:i + chunk], std[i:i + chunk] = x.mean(1), x.std(1)
    return mean, std


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


def labels_hash(labels: np.ndarray) -> str:
    """Identifies a test split's labels, so scores are only filtered with their own audit."""
    y = np.ascontiguousarray(np.asarray(labels).astype(np.int64))
    return hashlib.blake2b(y.tobytes() + str(y.shape).encode(), digest_size=16).hexdigest()


# --- the audit ---------------------------------------------------------------------------------

def audit_arrays(info: DatasetInfo, size: int, arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """The whole audit of one file's arrays, as a JSON-ready dict."""
    t0 = time.perf_counter()
    images = {s: arrays[f"{s}_images"] for s in SPLITS}
    labels = {s: arrays[f"{s}_labels"] for s in SPLITS}
    hashes = {s: content_hashes(images[s]) for s in SPLITS}
    exact = {"within": {s: exact_within(hashes[s]) for s in SPLITS},
             "across": {f"{a}-{b}": exact_across(hashes[a], hashes[b], a, b)
                        for a, b in EXACT_PAIRS}}
    near: dict[str, list[dict[str, Any]]] = {}
    nn_quantiles: dict[str, dict[str, float]] = {}
    for a, b in NEAR_PAIRS:
        idx, dist = nearest_neighbours(images[b], images[a], info, size)
        pairs = [{f"{a}_index": int(i), f"{b}_index": int(j), "distance": round(float(d), 5),
                  "labels_agree": bool(np.array_equal(labels[a][i], labels[b][j]))}
                 for j, (i, d) in enumerate(zip(idx, dist, strict=True))
                 if i >= 0 and d <= NEAR_THRESHOLD and hashes[a][i] != hashes[b][j]]
        near[f"{a}-{b}"] = sorted(pairs, key=lambda p: p["distance"])
        finite = dist[np.isfinite(dist)]
        nn_quantiles[f"{a}-{b}"] = ({f"q{q}": round(float(np.quantile(finite, q / 100)), 5)
                                     for q in (0, 1, 5, 50)} if len(finite) else {})
    for key, pairs in exact["across"].items():
        for p in pairs:
            a, b = key.split("-")
            p["labels_agree"] = bool(np.array_equal(labels[a][p[f"{a}_index"]],
                                                    labels[b][p[f"{b}_index"]]))
    leaky = sorted({p["test_index"] for k in ("train-test", "val-test")
                    for p in exact["across"][k] + near[k]})
    blank, outliers, intensity = {}, {}, {}
    means = {s: intensity_stats(images[s]) for s in SPLITS}
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
    return {
        "flag": info.flag, "size": size, "task": info.task, "dims": info.dims,
        "audit_version": AUDIT_VERSION,
        "method": {"exact": "blake2b of the image bytes",
                   "near": f"cosine of centred {GRID}^{info.dims} grey area-average embeddings, "
                           f"best over shifts of +-{shift_step(size)} px",
                   "near_threshold": NEAR_THRESHOLD, "blank_std": BLANK_STD,
                   "outlier_z": OUTLIER_Z},
        "n": {s: len(images[s]) for s in SPLITS},
        "exact": exact, "near": {"across": near}, "nn_distance_quantiles": nn_quantiles,
        "leaky_test_indices": leaky, "test_labels_hash": labels_hash(labels["test"]),
        "blank": blank, "intensity_outliers": outliers, "intensity": intensity,
        "labels": {s: label_summary(labels[s], info) for s in SPLITS},
        "seconds": round(time.perf_counter() - t0, 3),
    }


# --- cache -------------------------------------------------------------------------------------

def _user_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "medbench" / "audit"


def cache_name(flag: str, size: int, md5: str) -> str:
    suffix = "" if size == 28 else f"_{size}"
    return f"{flag}{suffix}-{md5}-v{AUDIT_VERSION}.json"


def _writable(folder: Path) -> bool:
    """A folder we may write into. Its mode bits count even for root (who may write anyway):
    a data root marked read-only for everyone (shared, genuine files) is left alone."""
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def cache_dirs(path: Path) -> list[Path]:
    """Where a file's audit is cached: beside the data, else in the user's cache."""
    beside = path.parent / ".medbench-audit"
    writable = beside.is_dir() and _writable(beside) or _writable(path.parent)
    return [beside, _user_cache()] if writable else [_user_cache()]


def read_cached(path: Path, flag: str, size: int) -> dict[str, Any] | None:
    name = cache_name(flag, size, file_md5(path))
    for folder in (path.parent / ".medbench-audit", _user_cache()):
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
    return None


def write_cached(path: Path, result: dict[str, Any]) -> Path:
    """Atomically into the data root's cache; the user cache when that is read-only."""
    from bench.results import write_json

    name = cache_name(result["flag"], result["size"], result["md5"])
    last: OSError | None = None
    for folder in cache_dirs(path):
        try:
            return write_json(folder / name, result)
        except OSError as e:
            last = e
    raise UserError(f"cannot write the audit cache ({last}); make {_user_cache()} writable")


def run_audit_path(run_dir: Path, flag: str, size: int) -> Path:
    suffix = "" if size == 28 else f"_{size}"
    return Path(run_dir) / "audit" / f"{flag}{suffix}.json"


def audit_file(flag: str, size: int = 28, data_dir: str | Path | None = None,
               use_cache: bool = True, allow_download: bool = True,
               write_cache: bool = True) -> dict[str, Any]:
    """The audit of one file: from the cache when its md5 was audited before, else computed
    (and cached unless write_cache=False, so a caller can hold every write until all passed)."""
    info = dataset_info(flag)
    check_size(info, size)
    path = ensure_file(flag, size, data_dir, allow_download)
    if use_cache and (hit := read_cached(path, flag, size)) is not None:
        return hit
    arrays, path = load_for_audit(flag, size, data_dir, allow_download)
    result = audit_arrays(info, size, arrays)
    md5 = file_md5(path)
    result.update({"file": str(path.resolve()), "md5": md5,
                   "official_md5": md5 == info.md5(size)})
    if write_cache:
        write_cached(path, result)
    return result


def audit_for_run(root: Path | str, flag: str, size: int,
                  data_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The audit the leaderboard uses for a run's (dataset, size): the run directory's own
    (`medbench audit FLAG --run RUN`), else that of the file in `data_dir` (default: the data
    root, $MEDMNIST_DATA or ~/.medmnist), computed and cached if need be (so every report has
    it); None when neither exists."""
    own = run_audit_path(Path(root), flag, size)
    if own.is_file():
        try:
            return json.loads(own.read_text())
        except ValueError as e:
            raise UserError(f"{own} is not valid JSON ({e}); delete it and run "
                            f"`medbench audit {flag} --run {root}` again") from e
    if not npz_path(flag, size, data_root(data_dir)).is_file():
        return None
    try:
        return audit_file(flag, size, data_dir, allow_download=False)
    except UserError:
        return None


# --- leakage-free scores -----------------------------------------------------------------------

def leakage_free(scores: list[dict[str, np.ndarray]], audit: dict[str, Any] | None,
                 task: str) -> dict[str, float]:
    """Mean test ACC/AUC over seeds on the test split without its cross-split duplicates.

    NaN when there is no audit, or when the audit is of another file (its test labels differ
    from the scores'); AUC is NaN when the kept images hold a single class."""
    from bench import metrics

    nan = float("nan")
    out = {"leakfree_acc_mean": nan, "leakfree_auc_mean": nan, "leakfree_n_test": nan,
           "leakfree_n_removed": nan}
    if audit is None or not scores:
        return out
    labels = scores[0]["test_labels"]
    if labels_hash(labels) != audit.get("test_labels_hash"):
        return out
    keep = np.ones(len(labels), dtype=bool)
    keep[np.asarray(audit["leaky_test_indices"], dtype=np.int64)] = False
    accs, aucs = [], []
    for s in scores:
        y, p = s["test_labels"][keep], s["test_scores"][keep]
        accs.append(metrics.acc_score(y, p, task) if len(y) else nan)
        try:
            aucs.append(metrics.auc_score(y, p, task))
        except (ValueError, IndexError):  # one class left: AUC undefined
            aucs.append(nan)
    out.update({"leakfree_acc_mean": float(np.mean(accs)),
                "leakfree_auc_mean": float(np.mean(aucs)),
                "leakfree_n_test": int(keep.sum()), "leakfree_n_removed": int((~keep).sum())})
    return out


# --- figure ------------------------------------------------------------------------------------

def example_pairs(audit: dict[str, Any], n: int = 8) -> list[dict[str, Any]]:
    """Up to n cross-split pairs to look at: half the closest, half the farthest still counted
    (the borderline ones are where a false pair would show)."""
    pairs = []
    for kind in ("exact", "near"):
        for key, items in audit[kind]["across"].items():
            a, b = key.split("-")
            pairs += [{"kind": kind, "a": a, "b": b, "ia": p[f"{a}_index"], "ib": p[f"{b}_index"],
                       "distance": p["distance"], "labels_agree": p.get("labels_agree")}
                      for p in items]
    pairs.sort(key=lambda p: p["distance"])
    if len(pairs) <= n:
        return pairs
    return pairs[:n - n // 2] + pairs[len(pairs) - n // 2:]


def _show(im: np.ndarray, dims: int) -> np.ndarray:
    """A 2D picture of an image: the middle slice of a volume."""
    return im[im.shape[0] // 2] if dims == 3 else im


def fig_pairs(audit: dict[str, Any], arrays: dict[str, np.ndarray], path: Path,
              n: int = 8) -> Path | None:
    """Example duplicate pairs side by side (reference split left, the other right), titled
    with both indices, the kind, the distance and whether the labels agree."""
    pairs = example_pairs(audit, n)
    if not pairs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.results import atomic_write

    per_row = 4
    rows = -(-len(pairs) // per_row)
    fig, axes = plt.subplots(rows, 2 * per_row, figsize=(2 * per_row * 1.25, rows * 1.6 + 0.8),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    dims = audit["dims"]
    for k, p in enumerate(pairs):
        r, c = divmod(k, per_row)
        for j, (split, idx) in enumerate(((p["a"], p["ia"]), (p["b"], p["ib"]))):
            ax = axes[r, 2 * c + j]
            im = _show(arrays[f"{split}_images"][idx], dims)
            ax.imshow(im, cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(f"{split} #{idx}", fontsize=7)
        agree = "" if p["labels_agree"] is None else (" same label" if p["labels_agree"]
                                                      else " LABELS DIFFER")
        axes[r, 2 * c].text(1.05, -0.12, f"{p['kind']} d={p['distance']:.4f}{agree}",
                            transform=axes[r, 2 * c].transAxes, ha="center", va="top",
                            fontsize=6.5)
    fig.suptitle(f"{audit['flag']}: cross-split duplicate pairs (closest and borderline)",
                 fontsize=9)
    height = rows * 1.6 + 0.8
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.4 / height, top=1 - 0.45 / (rows + 0.3),
                        wspace=0.06, hspace=0.45)
    try:
        return atomic_write(Path(path), lambda p: fig.savefig(p, format="png", dpi=110))
    finally:
        plt.close(fig)


# --- output ------------------------------------------------------------------------------------

def summary_row(a: dict[str, Any]) -> dict[str, Any]:
    """The counts of one audit, flat (the report and the markdown table share them)."""
    ex, near, n = a["exact"], a["near"]["across"], a["n"]
    leaky = len(a["leaky_test_indices"])
    return {
        "subset": a["flag"] + ("" if a["size"] == 28 else f"_{a['size']}"),
        "images": "/".join(str(n[s]) for s in SPLITS),
        "exact_within": "/".join(str(len(ex["within"][s])) for s in SPLITS),
        "exact_across": "/".join(str(len(ex["across"][f"{x}-{y}"])) for x, y in EXACT_PAIRS),
        "near_across": "/".join(str(len(near[f"{x}-{y}"])) for x, y in NEAR_PAIRS),
        "leaky_test": f"{leaky} ({100 * leaky / max(n['test'], 1):.1f}%)",
        "blank": "/".join(str(len(a["blank"][s])) for s in SPLITS),
        "outliers": "/".join(str(len(a["intensity_outliers"][s])) for s in SPLITS),
        "imbalance": f"{a['labels']['train']['imbalance_ratio']:.2f}",
        "labels_out_of_range": sum(a["labels"][s]["out_of_range"] for s in SPLITS),
        "official_md5": "yes" if a.get("official_md5") else "no",
    }


SUMMARY_HEAD = ["subset", "images train/val/test", "exact within train/val/test",
                "exact across train-test/val-test/train-val", "near across train-test/val-test",
                "test images with a copy in train/val", "blank train/val/test",
                "intensity outliers train/val/test", "imbalance (train, max/min)",
                "labels out of range", "official md5"]


def summary_table(audits: list[dict[str, Any]]) -> list[str]:
    rows = ["| " + " | ".join(SUMMARY_HEAD) + " |", "|" + "---|" * len(SUMMARY_HEAD)]
    for a in audits:
        rows.append("| " + " | ".join(str(v) for v in summary_row(a).values()) + " |")
    return rows


def _pair_text(p: dict[str, Any], a: str, b: str) -> str:
    dist = "" if p["distance"] == 0 else f" ({p['distance']:.4f})"
    return f"{a} {p[f'{a}_index']} ~ {b} {p[f'{b}_index']}{dist}"


def _pairs_md(a: dict[str, Any], limit: int = 10) -> list[str]:
    out = []
    for kind in ("exact", "near"):
        for key, pairs in a[kind]["across"].items():
            if not pairs:
                continue
            x, y = key.split("-")
            shown = ", ".join(_pair_text(p, x, y) for p in pairs[:limit])
            more = f" and {len(pairs) - limit} more" if len(pairs) > limit else ""
            differ = sum(not p.get("labels_agree", True) for p in pairs)
            out.append(f"- {kind} {key}: {len(pairs)} pairs ({differ} with different labels): "
                       f"{shown}{more}")
    for s in SPLITS:
        if a["exact"]["within"][s]:
            pairs = a["exact"]["within"][s]
            shown = ", ".join(f"{p['index_a']}={p['index_b']}" for p in pairs[:limit])
            more = f" and {len(pairs) - limit} more" if len(pairs) > limit else ""
            out.append(f"- exact within {s}: {len(pairs)} copies: {shown}{more}")
    return out


def _labels_md(a: dict[str, Any]) -> list[str]:
    info = dataset_info(a["flag"])
    names = [info.labels[str(i)] for i in range(info.n_classes)]
    head = "label positives" if info.multi_label else "class counts"
    out = [f"| split | {head} ({', '.join(names)}) | imbalance | out of range |",
           "|---|---|---|---|"]
    for s in SPLITS:
        lab = a["labels"][s]
        out.append(f"| {s} | {' / '.join(map(str, lab['counts']))} | "
                   f"{lab['imbalance_ratio']:.2f} | {lab['out_of_range']} |")
    if info.multi_label:
        co = np.asarray(a["labels"]["train"]["cooccurrence"])
        iu = [(co[i, j], i, j) for i in range(len(co)) for j in range(i + 1, len(co))]
        top = sorted(iu, reverse=True)[:5]
        out += ["", f"Train images without any label: {a['labels']['train']['no_label']}; "
                f"labels per image: {a['labels']['train']['labels_per_image_mean']:.2f}. "
                "Most frequent label pairs: " + ", ".join(f"{names[i]} + {names[j]} ({c})"
                                                          for c, i, j in top if c) + "."]
    return out


def format_md(audits: list[dict[str, Any]], figures: dict[str, Path] | None = None,
              rel: str = "") -> str:
    """The audits as markdown: one summary table, then per subset pairs, labels, figure."""
    figures = figures or {}
    out = ["# Data audit", "",
           f"Exact duplicates: identical bytes. Near duplicates (train/val vs test): distance "
           f"1 - cosine of centred {GRID}x{GRID} (3D: {GRID}^3) area-average embeddings, best "
           f"over one-step shifts, at most {NEAR_THRESHOLD}. Blank: pixel std < {BLANK_STD}. "
           f"Intensity outliers: mean intensity > {OUTLIER_Z} robust z from the file's median.",
           "", *summary_table(audits), ""]
    for a in audits:
        row = summary_row(a)
        out += [f"## {row['subset']}", "", f"File `{Path(a.get('file', '')).name}` md5 "
                f"`{a.get('md5', '?')}`; audit took {a['seconds']:.1f} s.", ""]
        pairs = _pairs_md(a)
        out += (pairs or ["- no duplicates"]) + [""]
        q = a["nn_distance_quantiles"].get("train-test", {})
        if q:
            out += ["Nearest train image of each test image, distance quantiles: "
                    + ", ".join(f"{k} {v:.4f}" for k, v in q.items()) + ".", ""]
        for kind, key in (("blank", "blank"), ("intensity outliers", "intensity_outliers")):
            found = {s: v for s, v in a[key].items() if v}
            if found:
                out.append(f"- {kind}: " + "; ".join(f"{s} {v[:20]}" for s, v in found.items()))
        out += ["", *_labels_md(a), ""]
        if a["flag"] in figures:
            out += [f"![{a['flag']} duplicate pairs]({rel}/{figures[a['flag']].name})", ""]
    return "\n".join(out).rstrip() + "\n"


def run_audit(flags: str, data_dir: str | Path | None = None, size: int = 28,
              fmt: str = "md", out: Path | None = None, run_dir: Path | None = None,
              use_cache: bool = True) -> str:
    """`medbench audit`: validate everything, audit every file, and only then write (cache,
    run directory copy, --out with figures). Returns the text to print."""
    from bench.results import write_json, write_text

    if fmt not in ("md", "json"):
        raise UserError(f"unknown --format {fmt!r}; use md or json")
    names = [f.strip() for f in flags.split(",") if f.strip()]
    if not names:
        raise UserError("no dataset given; name one or more flags, e.g. breastmnist,retinamnist")
    for flag in names:
        check_size(dataset_info(flag), size)
    if run_dir is not None and not Path(run_dir).is_dir():
        raise UserError(f"--run {run_dir}: no such run directory; pass runs/<name>")
    if out is not None and Path(out).is_dir():
        raise UserError(f"--out {out} is a folder; give a file name such as reports/audit.md")
    paths = [ensure_file(flag, size, data_dir) for flag in names]  # all present before any work
    audits = [audit_file(flag, size, data_dir, use_cache=use_cache, write_cache=False)
              for flag in names]
    for path, a in zip(paths, audits, strict=True):
        write_cached(path, a)
        if run_dir is not None:
            write_json(run_audit_path(Path(run_dir), a["flag"], size), a)
    if fmt == "json":
        text = json.dumps(audits, indent=1, default=str) + "\n"
        return str(write_text(Path(out), text)) if out else text
    if out is None:
        return format_md(audits)
    out = Path(out)
    figs = out.parent / f"{out.stem}_figures"
    figures = {}
    for a in audits:
        if example_pairs(a):
            arrays, _ = load_for_audit(a["flag"], size, data_dir)
            png = fig_pairs(a, arrays, figs / f"{a['flag']}_pairs.png")
            if png:
                figures[a["flag"]] = png
    return str(write_text(out, format_md(audits, figures, figs.name)))


def report_lines(runs: list[tuple[Path, str, int]], figs: Path, rel: str,
                 data_dir: str | Path | None = None) -> list[str]:
    """The report's data-audit section for the runs' (root, dataset, size): counts, and a
    figure of example pairs when the data file can be read. Empty when nothing was audited."""
    audits: dict[tuple[str, int], dict[str, Any]] = {}
    for root, flag, size in runs:
        if (flag, size) not in audits and (a := audit_for_run(root, flag, size)) is not None:
            audits[(flag, size)] = a
    if not audits:
        return []
    out = ["## Data audit", "",
           "Duplicates, blank images and label balance of each dataset's file (`medbench "
           "audit`); the leaderboard's leakage-free columns drop the test images counted in "
           f"'test images with a copy in train/val'. Near: distance <= {NEAR_THRESHOLD}.", "",
           *summary_table(list(audits.values())), ""]
    for (flag, size), a in sorted(audits.items()):
        if not example_pairs(a):
            continue
        try:
            arrays, path = load_for_audit(flag, size, data_dir, allow_download=False)
        except UserError:
            continue
        if a.get("md5") and file_md5(path) != a["md5"]:
            continue  # the audit is of another file than the one found here (e.g. synthetic)
        png = fig_pairs(a, arrays, figs / f"{flag}{'' if size == 28 else f'_{size}'}_pairs.png")
        if png:
            out += [f"![{flag} duplicate pairs]({rel}/{png.name})", ""]
    return out

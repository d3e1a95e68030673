"""Data audit of one MedMNIST file: exact and near duplicates (within and across splits), blank
and out-of-range images, label balance; and test scores without the leaked test images.

Why: a model that memorised a training image scores its copy in the test split again, so a
benchmark number is only as honest as its splits. The audit finds such copies before a number is
reported, and the leaderboard shows each test score again without them ("leakage-free").

Methods (the threshold is justified on planted pairs in reports/audit.md):

- Exact and near duplicates: bench.duplicates (identical bytes; a shift-tolerant low-resolution
  embedding within NEAR_THRESHOLD in cosine distance), train/val against test.
- Blank images (pixel std below BLANK_STD), intensity outliers (more than OUTLIER_Z robust
  z-scores from the file's median) and label balance: bench.image_checks.

Results are cached per file md5 (and AUDIT_VERSION), written atomically into the data root's
`.medbench-audit/` folder, or the user cache when the data root is read-only (bench.audit_cache).
The markdown and the example-pairs figure are bench.audit_md's.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.audit_cache import AUDIT_VERSION, read_cached, run_audit_path, write_cached
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
from bench.duplicates import (
    EXACT_PAIRS,
    GRID,
    NEAR_PAIRS,
    NEAR_THRESHOLD,
    content_hashes,
    exact_across,
    exact_within,
    nearest_neighbours,
    shift_step,
)
from bench.errors import UserError
from bench.image_checks import (
    BLANK_STD,
    OUTLIER_Z,
    intensity_checks,
    label_summary,
)

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
    blank, outliers, intensity = intensity_checks(images)
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

def run_audit(flags: str, data_dir: str | Path | None = None, size: int = 28,
              fmt: str = "md", out: Path | None = None, run_dir: Path | None = None,
              use_cache: bool = True) -> str:
    """`medbench audit`: validate everything, audit every file, and only then write (cache,
    run directory copy, --out with figures). Returns the text to print."""
    from bench.audit_md import example_pairs, fig_pairs, format_md
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
    from bench.audit_md import example_pairs, fig_pairs, summary_table

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

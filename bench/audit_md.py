"""The data audit as people read it: the summary table, each subset's duplicate pairs and label
counts in markdown, and a figure of example pairs side by side.

Why apart from bench.audit: it only formats audit dicts (computed or cached there) and draws
them; the same table serves `medbench audit` and the report's data-audit section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.data import SPLITS, dataset_info
from bench.duplicates import EXACT_PAIRS, GRID, NEAR_PAIRS, NEAR_THRESHOLD
from bench.image_checks import BLANK_STD, OUTLIER_Z

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

# --- markdown ----------------------------------------------------------------------------------

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

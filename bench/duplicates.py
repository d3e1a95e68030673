"""Exact and near duplicates between images, the methods of the data audit (bench.audit).

Why a module of its own: these are the audit's two measurements of "the same image" (identical
bytes; a low-resolution embedding close in cosine), the part whose thresholds reports/audit.md
justifies; the audit only runs them over split pairs and records what they find.

- Exact duplicates: blake2b over each image's bytes (whole volume for 3D), grouped by hash.
- Near duplicates across splits (train/val vs test): each image is turned into a grey
  `GRID`^dims low-resolution embedding (area averages), centred and scaled to unit length, so
  brightness and contrast changes and pixel noise barely move it. Small shifts do move it, so
  every test image is also embedded shifted by one step (1 px at 28 px) in each direction, and
  a pair's similarity is the best over those shifts. Nearest neighbours come from matrix
  products in fixed-size chunks, so memory stays flat however large the split.
  distance = 1 - cosine similarity; a pair is near when distance <= NEAR_THRESHOLD.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from typing import Any

import numpy as np

from bench.data import DatasetInfo

GRID = 8  # low-resolution embedding side (8x8 in 2D, 8x8x8 in 3D)
NEAR_THRESHOLD = 0.004  # distance (1 - cosine) at or below which a cross-split pair is "near"
QUERY_CHUNK = 256  # test images per matrix product (times the shifted copies)
DB_CHUNK = 8192  # reference images per matrix product
NEAR_PAIRS = (("train", "test"), ("val", "test"))
EXACT_PAIRS = (("train", "test"), ("val", "test"), ("train", "val"))


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

"""MedMNIST `.npz` files -> uint8 tensors on the device, checked against `medmnist.INFO`.

Why uint8 on the device: a whole small-image split fits in memory many times over, so batches
are index slices of one tensor and normalisation happens on the fly; no DataLoader, no PIL.
The dataset classes of `medmnist` are not used: they assert official split sizes, which
breaks synthetic test files, and need torchvision to download.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bench.errors import RunFailure, UserError
from bench.metrics import MULTI_LABEL  # medmnist INFO["task"] of a multi-label subset

SPLITS = ("train", "val", "test")
SIZES_2D = (28, 64, 128, 224)
SIZES_3D = (28, 64)


def _info() -> dict:
    from medmnist.info import INFO

    return INFO


def all_flags() -> list[str]:
    return list(_info())


@dataclass(frozen=True)
class DatasetInfo:
    """The facts of one subset that the rest of the code needs, read from `medmnist.INFO`."""

    flag: str
    task: str
    n_channels: int
    n_classes: int  # number of labels for multi-label ChestMNIST
    n_samples: dict[str, int]
    labels: dict[str, str]
    dims: int  # 2 or 3

    @property
    def multi_label(self) -> bool:
        return self.task == MULTI_LABEL

    @property
    def sizes(self) -> tuple[int, ...]:
        return SIZES_3D if self.dims == 3 else SIZES_2D

    def url(self, size: int) -> str:
        return _info()[self.flag]["url" if size == 28 else f"url_{size}"]

    def md5(self, size: int) -> str:
        return _info()[self.flag]["MD5" if size == 28 else f"MD5_{size}"]

    def sample_shape(self, size: int) -> tuple[int, ...]:
        """Per-sample image shape as stored in the .npz file."""
        if self.dims == 3:
            return (size, size, size)
        return (size, size) if self.n_channels == 1 else (size, size, self.n_channels)

    def label_width(self) -> int:
        return self.n_classes if self.multi_label else 1


def dataset_info(flag: str) -> DatasetInfo:
    info = _info()
    if flag not in info:
        raise UserError(f"unknown dataset {flag!r}; choose one of: {', '.join(info)} "
                        "(see `medbench datasets`)")
    d = info[flag]
    return DatasetInfo(flag=flag, task=d["task"], n_channels=d["n_channels"],
                       n_classes=len(d["label"]), n_samples=dict(d["n_samples"]),
                       labels=dict(d["label"]), dims=3 if flag.endswith("3d") else 2)


def check_size(info: DatasetInfo, size: int) -> None:
    if size not in info.sizes:
        raise UserError(f"{info.flag} has no size {size}; available sizes: "
                        f"{', '.join(map(str, info.sizes))}")


def data_root(data_dir: str | Path | None = None) -> Path:
    """`--data-dir`, else $MEDMNIST_DATA, else medmnist's own default root (~/.medmnist)."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get("MEDMNIST_DATA"):
        return Path(os.environ["MEDMNIST_DATA"]).expanduser()
    from medmnist.info import DEFAULT_ROOT

    return Path(DEFAULT_ROOT)


def npz_path(flag: str, size: int = 28, data_dir: str | Path | None = None) -> Path:
    suffix = "" if size == 28 else f"_{size}"
    return data_root(data_dir) / f"{flag}{suffix}.npz"


# --- md5, cached -------------------------------------------------------------------------------

def _md5_cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "medbench" / "md5.json"


def file_md5(path: Path) -> str:
    """md5 of a file, cached so large files are hashed once.

    The key is (path, size, mtime_ns, ctime_ns, inode): any rewrite changes one of them, even
    one of the same size that restores the old mtime (`cp -p`, `rsync -t`, `touch -r`): the
    inode changes when a file is replaced, the ctime when it is written in place, and the user
    cannot set either. A stale cached md5 would pass a corrupt file as official."""
    st = path.stat()
    where = f"{path.resolve()}|"
    key = f"{where}{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    cache_file = _md5_cache_file()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key]
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    cache = {k: v for k, v in cache.items() if not k.startswith(where)}  # older versions
    cache[key] = h.hexdigest()
    try:
        from bench.results import write_json

        write_json(cache_file, cache)
    except OSError:
        pass  # a read-only home only costs a re-hash next time
    return cache[key]


def file_status(flag: str, size: int = 28, data_dir: str | Path | None = None) -> str:
    """'missing' | 'md5 ok' | 'md5 mismatch' for `medbench datasets`."""
    path = npz_path(flag, size, data_dir)
    if not path.exists():
        return "missing"
    return "md5 ok" if file_md5(path) == dataset_info(flag).md5(size) else "md5 mismatch"


# --- fetching ----------------------------------------------------------------------------------

def _download_progress():
    """A progress bar (bytes, speed, time left) on stderr when stderr is a terminal, and
    nothing otherwise: the larger files take minutes, but CI logs want no redrawn bars.
    `rich`, as the run's progress board (`bench.progress`) uses."""
    import sys

    from rich import progress as rp
    from rich.console import Console

    return rp.Progress(rp.TextColumn("{task.description}"), rp.BarColumn(), rp.DownloadColumn(),
                       rp.TransferSpeedColumn(), rp.TimeRemainingColumn(),
                       console=Console(stderr=True), disable=not sys.stderr.isatty())


def download(flag: str, size: int, data_dir: str | Path | None = None, timeout: float = 30) -> Path:
    """Fetch the official file from Zenodo (what medmnist's own download does, without
    torchvision), verify its md5, and move it into place only when it is right."""
    info = dataset_info(flag)
    path = npz_path(flag, size, data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    try:
        with urllib.request.urlopen(info.url(size), timeout=timeout) as r, open(tmp, "wb") as f, \
                _download_progress() as bar:
            headers = getattr(r, "headers", None) or {}
            total = int(headers.get("Content-Length") or 0) or None  # None: size unknown
            task = bar.add_task(f"{path.name} from Zenodo", total=total)
            while chunk := r.read(1 << 20):
                f.write(chunk)
                bar.advance(task, len(chunk))
        if file_md5(tmp) != info.md5(size):
            raise OSError("downloaded file has the wrong md5")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def ensure_file(flag: str, size: int = 28, data_dir: str | Path | None = None,
                allow_download: bool = True) -> Path:
    """The file's path, downloading it when missing (unless allow_download=False or the
    environment sets MEDBENCH_OFFLINE=1, e.g. on machines without internet and in tests)."""
    info = dataset_info(flag)
    check_size(info, size)
    path = npz_path(flag, size, data_dir)
    if path.exists():
        return path
    offline = os.environ.get("MEDBENCH_OFFLINE", "").strip().lower() in ("1", "true", "yes")
    if allow_download and not offline:
        try:
            return download(flag, size, data_dir)
        except OSError as e:  # URLError is an OSError; so are timeouts and md5 failures
            reason = f"download failed ({e})"
    else:
        reason = "downloads are off" + (" (MEDBENCH_OFFLINE is set)" if offline else "")
    # a failed download is a runtime failure (exit 1); files simply missing are the user's (2)
    error = RunFailure if reason.startswith("download failed") else UserError
    raise error(
        f"{path.name} not found in {path.parent} and {reason}. Put the official file there "
        f"(md5 {info.md5(size)}, from {info.url(size)}), or point --data-dir / MEDMNIST_DATA "
        "at the folder that holds it."
    )


# --- loading and checking ----------------------------------------------------------------------

def load_arrays(flag: str, size: int = 28, data_dir: str | Path | None = None,
                verify_md5: bool = True, allow_download: bool = True) -> dict[str, np.ndarray]:
    """Load and check one file: md5 (unless verify_md5=False, e.g. synthetic data), keys,
    dtypes, per-sample shapes and label ranges, all against INFO."""
    info = dataset_info(flag)
    path = ensure_file(flag, size, data_dir, allow_download)
    if verify_md5 and file_md5(path) != info.md5(size):
        raise UserError(
            f"{path} has md5 {file_md5(path)}, not the official {info.md5(size)}: the file is "
            "corrupt or not the MedMNIST release. Delete it and re-download, or pass "
            "--no-verify to use it anyway (synthetic test data)."
        )
    arrays = read_npz(path)
    _check_arrays(info, size, arrays, path)
    return arrays


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz file (never unpickling), or one UserError line naming the file.
    The arrays' headers are checked first (`bench.decode.check_npz`): a header claiming more
    than the file can hold is refused before numpy allocates it."""
    from bench.decode import check_npz

    check_npz(path, "delete it and download it again.")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path} is not a readable .npz file ({' '.join(str(e).split())}); "
                        "delete it and download it again.") from e


def _check_arrays(info: DatasetInfo, size: int, arrays: dict[str, np.ndarray], path: Path) -> None:
    fix = "delete it and download it again (or regenerate it with `medbench synth`)"
    for split in SPLITS:
        for kind in ("images", "labels"):
            if f"{split}_{kind}" not in arrays:
                raise UserError(f"{path} lacks the key '{split}_{kind}'; {fix}.")
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.dtype != np.uint8 or x.shape[1:] != info.sample_shape(size):
            raise UserError(f"{path}: {split}_images is {x.dtype}{list(x.shape)}, expected "
                            f"uint8[N, {', '.join(map(str, info.sample_shape(size)))}]; {fix}.")
        if y.ndim != 2 or y.shape != (x.shape[0], info.label_width()):
            raise UserError(f"{path}: {split}_labels has shape {list(y.shape)}, expected "
                            f"[{x.shape[0]}, {info.label_width()}]; {fix}.")
        if y.dtype.kind not in "biu":  # floats would be truncated, strings compared as text
            odd = ""
            if y.dtype.kind == "f":
                bad = y[~np.isfinite(y) | (y != np.round(y))]
                odd = f" holding values such as {bad.flat[0]:g}" if bad.size else ""
            raise UserError(f"{path}: {split}_labels are {y.dtype}{odd}, expected integer "
                            f"class indices (uint8); {fix}.")
        top = 1 if info.multi_label else info.n_classes - 1
        if y.size and (y.min() < 0 or y.max() > top):
            raise UserError(f"{path}: {split}_labels hold values in [{y.min()}, {y.max()}], "
                            f"expected [0, {top}]; {fix}.")


@dataclass
class Split:
    images: torch.Tensor  # uint8, (N, C, H, W) or (N, C, D, H, W)
    labels: torch.Tensor  # long (N,) for single-label tasks, float (N, L) for multi-label
    raw_labels: np.ndarray  # the file's (N, 1) or (N, L) array, for the official metrics

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class MedData:
    info: DatasetInfo
    size: int
    splits: dict[str, Split] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.splits["train"].images.device

    def to(self, device: torch.device | str) -> MedData:
        """Move every split to the device once; training never copies data again."""
        moved = {k: Split(s.images.to(device), s.labels.to(device), s.raw_labels)
                 for k, s in self.splits.items()}
        return MedData(self.info, self.size, moved)


def to_tensor_images(x: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    """File layout -> channels-first uint8 tensor (grayscale gets its channel axis)."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if info.dims == 3 or info.n_channels == 1:
        return t.unsqueeze(1)
    return t.permute(0, 3, 1, 2).contiguous()


def to_tensor_labels(y: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    if info.multi_label:
        return torch.from_numpy(y.astype(np.float32))
    return torch.from_numpy(y[:, 0].astype(np.int64))


def from_arrays(info: DatasetInfo, size: int, arrays: dict[str, np.ndarray]) -> MedData:
    splits = {s: Split(to_tensor_images(arrays[f"{s}_images"], info),
                       to_tensor_labels(arrays[f"{s}_labels"], info),
                       np.asarray(arrays[f"{s}_labels"]))
              for s in SPLITS}
    return MedData(info, size, splits)


def load_dataset(flag: str, size: int = 28, data_dir: str | Path | None = None,
                 verify_md5: bool = True, device: str | torch.device = "cpu",
                 allow_download: bool = True) -> MedData:
    info = dataset_info(flag)
    arrays = load_arrays(flag, size, data_dir, verify_md5, allow_download)
    return from_arrays(info, size, arrays).to(device)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [-1, 1]: the official mean 0.5 / std 0.5 normalisation."""
    return images.float().mul_(2.0 / 255.0).sub_(1.0)


# --- synthetic files ---------------------------------------------------------------------------

def synthetic_arrays(flag: str, size: int = 28, n: tuple[int, int, int] = (96, 32, 48),
                     seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays in the exact MedMNIST layout (keys, uint8, shapes, label layout) with a learnable
    signal: each class (or each present label) brightens its own square of the image."""
    info = dataset_info(flag)
    check_size(info, size)
    rng = np.random.default_rng(seed)
    k = info.n_classes
    grid = int(np.ceil(np.sqrt(k)))
    cell = max(size // grid, 1)
    spatial = (size,) * info.dims
    out: dict[str, np.ndarray] = {}
    for split, count in zip(SPLITS, n, strict=True):
        if info.multi_label:
            labels = (rng.random((count, k)) < 0.3).astype(np.uint8)
        else:
            labels = rng.permutation(np.arange(count) % k).reshape(-1, 1).astype(np.uint8)
        img = rng.normal(90, 25, (count, *spatial))
        for c in range(k):
            on = labels[:, c] == 1 if info.multi_label else labels[:, 0] == c
            r0, c0 = (c // grid) * cell, (c % grid) * cell
            img[on, ..., r0:r0 + cell, c0:c0 + cell] += 110
        if info.dims == 2 and info.n_channels == 3:  # colour: same signal, tinted channels
            img = np.stack([img, img * 0.8, img * 0.6], axis=-1)
        out[f"{split}_images"] = np.clip(img, 0, 255).astype(np.uint8)
        out[f"{split}_labels"] = labels
    return out


def write_synthetic(flag: str, out_dir: str | Path, size: int = 28,
                    n: tuple[int, int, int] = (96, 32, 48), seed: int = 0) -> Path:
    """Write `<flag>[_size].npz` into out_dir (atomically) for tests of unavailable subsets."""
    arrays = synthetic_arrays(flag, size, n, seed)
    path = npz_path(flag, size, out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    return path

"""`medbench perf`: our trainer against an official-style DataLoader loop, side by side.

Same dataset (pneumoniamnist, 28 px), same model, batch size 128 and thread count on both sides:

* official-style: a Dataset whose `__getitem__` is medmnist's (`Image.fromarray`, then the
  official per-sample transform `Compose([ToTensor(), Normalize(mean=[.5], std=[.5])])`; with
  augmentation a PIL horizontal flip and rotation first), the torchvision transforms rewritten
  op for op because torchvision is not installed, a `DataLoader(batch_size=128,
  shuffle=True, num_workers=0)` and a plain eager loop (contiguous model, Adam, cross-entropy, the
  official `loss.item()` per batch);
* ours: the whole split as a uint8 tensor on the device, randperm index slices normalised by
  `Runner.inputs` (channels_last for 2D), `bench.augment.augment_batch`, and `bench.train.fit`
  itself (for resnet18 cut to a few optimizer steps with `fit(..., max_steps=)`).

A tool beside the library, not part of it: nothing in `bench/` imports this module; the CLI's
`medbench perf` does. Measured tables live in reports/ (perf-*.md), not here.

Measured: (a) the data path alone (batches ready for the model), with and without augmentation;
(b) end-to-end training images/s for cnn_small and resnet18; (c) cnn_small's achieved training
GFLOP/s against a measured fp32 matmul roofline. Repetitions alternate official/ours so that a
burst of load from other processes hits both sides; medians are reported.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bench.augment import AugmentConfig, augment_batch
from bench.data import (
    MedData,
    Split,
    dataset_info,
    file_md5,
    from_arrays,
    load_arrays,
    npz_path,
    write_synthetic,
)
from bench.models import create_model
from bench.train import Runner, TrainConfig, fit, resolve_device

FLAG = "pneumoniamnist"
SIZE = 28
BATCH = 128
AUG = AugmentConfig(hflip=0.5, rotation=15.0)  # both sides: p=0.5 flip, uniform +-15 degrees

# name -> (measured value key, threshold, what it means); printed next to the numbers.
TARGETS: dict[str, tuple[str, float, str]] = {
    "data_path": ("data_speedup", 10.0, "data path >= 10x official-style"),
    "data_path_aug": ("data_aug_speedup", 10.0, "augmented data path >= 10x official-style"),
    "cnn_small": ("train_cnn_small_speedup", 1.5, "end-to-end cnn_small >= 1.5x"),
    "resnet18": ("train_resnet18_speedup", 1.0, "end-to-end resnet18 >= 1.0x (not slower)"),
    "roofline": ("cnn_small_roofline_pct", 35.0, "cnn_small >= 35% of matmul roofline"),
}

# Every number `run_perf` measures; all are positive in a successful run (tests check this).
MEASURED_KEYS = (
    "data_official_ips", "data_ours_ips", "data_speedup",
    "data_aug_official_ips", "data_aug_ours_ips", "data_aug_speedup",
    "train_cnn_small_official_ips", "train_cnn_small_ours_ips", "train_cnn_small_speedup",
    "train_resnet18_official_ips", "train_resnet18_ours_ips", "train_resnet18_speedup",
    "cnn_small_flops_per_image", "cnn_small_gflops", "roofline_gflops", "cnn_small_roofline_pct",
)


@dataclass(frozen=True)
class Plan:
    """How much work each measurement does."""

    reps: int  # alternating official/ours repetitions; medians are reported
    data_min_s: float  # data path: repeat whole epochs until this long
    data_max_batches: int  # data path: at most this many batches per epoch (0: all)
    cnn_train_images: int  # cnn_small: images per training epoch (0: the whole split)
    cnn_eval_images: int  # cnn_small: val/test images fit scores (0: the whole split)
    cnn_warmup: int  # official-style cnn_small: untimed batches first
    resnet_reps: int  # resnet18 is slow on a CPU: fewer repetitions ...
    resnet_warmup: int  # ... untimed batches first, each side
    resnet_batches: int  # ... then at most this many timed batches ...
    resnet_max_s: float  # ... or as many as fit in this many seconds (at least one)
    matmul_n: int
    matmul_reps: int


FULL = Plan(reps=3, data_min_s=1.0, data_max_batches=0, cnn_train_images=0, cnn_eval_images=0,
            cnn_warmup=2, resnet_reps=2, resnet_warmup=2, resnet_batches=15, resnet_max_s=60.0,
            matmul_n=2048, matmul_reps=7)
QUICK = Plan(reps=1, data_min_s=0.0, data_max_batches=2, cnn_train_images=2 * BATCH,
             cnn_eval_images=64, cnn_warmup=1, resnet_reps=1, resnet_warmup=0, resnet_batches=1,
             resnet_max_s=0.0, matmul_n=256, matmul_reps=3)


# --- the official-style pipeline ----------------------------------------------------------------

class ToTensor:
    """torchvision's `ToTensor()` on a PIL image, op for op (torchvision itself is not installed:
    it pins a CUDA torch): copy the pixels into a uint8 tensor, view as H x W x C, permute to
    C x H x W, make it contiguous, convert to float and divide by 255. The per-op cost is the
    point: a numpy shortcut here made the "official" side measurably faster than the real
    thing, which flattered neither side honestly."""

    def __call__(self, pic: Image.Image) -> torch.Tensor:
        img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
        img = img.view(pic.size[1], pic.size[0], len(pic.getbands()))
        img = img.permute((2, 0, 1)).contiguous()
        return img.to(dtype=torch.get_default_dtype()).div(255)


class Normalize:
    """torchvision's `Normalize(mean, std)` (not in place) on a float tensor, op for op: clone,
    mean and std as tensors on the image's device, the zero-std check, broadcast views, then
    sub_ and div_."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean, self.std = mean, std

    def __call__(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device)
        if (std == 0).any():
            raise ValueError("std evaluated to zero, leading to division by zero.")
        if mean.ndim == 1:
            mean = mean.view(-1, 1, 1)
        if std.ndim == 1:
            std = std.view(-1, 1, 1)
        return tensor.sub_(mean).div_(std)


class RandomHorizontalFlip:
    """torchvision's `RandomHorizontalFlip(p)` on a PIL image (torch RNG, like torchvision)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if torch.rand(1) < self.p:
            return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


class RandomRotation:
    """torchvision's `RandomRotation(degrees)` on a PIL image: uniform angle, nearest, fill 0."""

    def __init__(self, degrees: float) -> None:
        self.degrees = degrees

    def __call__(self, img: Image.Image) -> Image.Image:
        angle = float(torch.empty(1).uniform_(-self.degrees, self.degrees).item())
        return img.rotate(angle, resample=Image.Resampling.NEAREST, expand=False, fillcolor=0)


class Compose:
    def __init__(self, transforms: list[Callable[[Any], Any]]) -> None:
        self.transforms = transforms

    def __call__(self, x: Any) -> Any:
        for t in self.transforms:
            x = t(x)
        return x


def official_transform(augment: bool) -> Compose:
    aug: list[Callable[[Any], Any]] = []
    if augment:
        aug = [RandomHorizontalFlip(AUG.hflip), RandomRotation(AUG.rotation)]
    return Compose([*aug, ToTensor(), Normalize(mean=[0.5], std=[0.5])])


class OfficialStyleDataset(Dataset):
    """`medmnist.dataset.MedMNIST2D.__getitem__` line for line, over arrays already in memory
    (medmnist's own classes assert the official split sizes and need the file under a root)."""

    def __init__(self, imgs: np.ndarray, labels: np.ndarray,
                 transform: Callable[[Image.Image], Any] | None = None, as_rgb: bool = False):
        self.imgs, self.labels = imgs, labels
        self.transform, self.as_rgb = transform, as_rgb

    def __len__(self) -> int:
        return self.imgs.shape[0]

    def __getitem__(self, index: int):
        img, target = self.imgs[index], self.labels[index].astype(int)
        img = Image.fromarray(img)
        if self.as_rgb:
            img = img.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def official_loader(arrays: dict[str, np.ndarray], augment: bool) -> DataLoader:
    ds = OfficialStyleDataset(arrays["train_images"], arrays["train_labels"],
                              official_transform(augment))
    return DataLoader(ds, batch_size=BATCH, shuffle=True, num_workers=0)


def _forever(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:
        yield from loader


# --- timing helpers -----------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _rate_over_epochs(epoch: Callable[[], int], min_s: float, device: torch.device) -> float:
    """Images/s of `epoch()` (which returns how many images it produced), repeated until at
    least `min_s` seconds have passed (at least once)."""
    _sync(device)
    t0 = time.perf_counter()
    images = 0
    while True:
        images += epoch()
        _sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_s:
            return images / elapsed


# --- (a) the data path alone --------------------------------------------------------------------

def _official_data_epoch(loader: DataLoader, device: torch.device, max_batches: int) -> int:
    images = 0
    for b, (x, y) in enumerate(loader):
        x, y = x.to(device), torch.squeeze(y, 1).long().to(device)
        images += x.shape[0]
        if max_batches and b + 1 >= max_batches:
            break
    return images


def _our_data_epoch(run: Runner, split: Split, augment: bool, gen: torch.Generator,
                    max_batches: int) -> int:
    n = len(split)
    perm = torch.randperm(n, device=run.device, generator=gen)
    aug = AUG if augment else AugmentConfig()
    images = 0
    for b, i in enumerate(range(0, n, BATCH)):
        idx = perm[i:i + BATCH]
        x = augment_batch(run.inputs(split.images[idx]), aug, gen)
        y = split.labels[idx]  # a ready batch has its labels too
        images += min(x.shape[0], y.shape[0])
        if max_batches and b + 1 >= max_batches:
            break
    return images


def measure_data_path(arrays: dict[str, np.ndarray], data: MedData, augment: bool, plan: Plan,
                      device: torch.device) -> tuple[list[float], list[float]]:
    loader = official_loader(arrays, augment)
    cfg = TrainConfig(dataset=FLAG, model="cnn_small", batch_size=BATCH)
    run = Runner(cfg, data, create_model("cnn_small", data.splits["train"].images.shape[1],
                                         data.info.n_classes, data.size))
    gen = torch.Generator(device=device).manual_seed(0)
    train = data.splits["train"]
    official, ours = [], []
    for _ in range(plan.reps):
        official.append(_rate_over_epochs(
            lambda: _official_data_epoch(loader, device, plan.data_max_batches),
            plan.data_min_s, device))
        ours.append(_rate_over_epochs(
            lambda: _our_data_epoch(run, train, augment, gen, plan.data_max_batches),
            plan.data_min_s, device))
    return official, ours


# --- (b) end-to-end training --------------------------------------------------------------------

def official_train_rate(model_name: str, arrays: dict[str, np.ndarray], n_classes: int,
                        warmup: int, batches: int, device: torch.device, seed: int = 0,
                        max_s: float = 0.0) -> float:
    """The official MedMNIST training loop (train_and_eval_pytorch.py) fed by the DataLoader:
    eager, default memory format, fp32, Adam(lr 1e-3), cross-entropy, `loss.item()` per batch.
    Images/s over `batches` steps after `warmup` untimed ones (fewer if `max_s` runs out)."""
    torch.manual_seed(seed)
    in_ch = 1 if arrays["train_images"].ndim == 3 else arrays["train_images"].shape[-1]
    model = create_model(model_name, in_ch, n_classes, SIZE).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    batches_iter = _forever(official_loader(arrays, augment=False))
    model.train()
    images, t0 = 0, 0.0
    for step in range(warmup + batches):
        if step == warmup:
            _sync(device)
            t0 = time.perf_counter()
        inputs, targets = next(batches_iter)
        optimizer.zero_grad()
        outputs = model(inputs.to(device))
        targets = torch.squeeze(targets, 1).long().to(device)
        loss = criterion(outputs, targets)
        loss.item()  # the official loop logs every batch's loss
        loss.backward()
        optimizer.step()
        if step >= warmup:
            images += inputs.shape[0]
            if max_s and time.perf_counter() - t0 >= max_s:
                break
    _sync(device)
    return images / (time.perf_counter() - t0)


def _subset(data: MedData, n_train: int, n_eval: int) -> MedData:
    def cut(s: Split, k: int) -> Split:
        return s if not k else Split(s.images[:k], s.labels[:k], s.raw_labels[:k])

    splits = {name: cut(s, n_train if name == "train" else n_eval)
              for name, s in data.splits.items()}
    return MedData(data.info, data.size, splits)


def measure_cnn_small(arrays: dict[str, np.ndarray], data: MedData, cfg: TrainConfig, plan: Plan,
                      device: torch.device) -> tuple[list[float], list[float]]:
    """Official-style: an epoch's worth of batches after warm-up. Ours: `fit` for one epoch, its
    `train_images_per_s` (first-batch warm-up included, scoring excluded)."""
    sub = _subset(data, plan.cnn_train_images, plan.cnn_eval_images)
    n = len(sub.splits["train"])
    sub_arrays = {**arrays, "train_images": arrays["train_images"][:n],
                  "train_labels": arrays["train_labels"][:n]}
    official, ours = [], []
    for rep in range(plan.reps):
        official.append(official_train_rate("cnn_small", sub_arrays, data.info.n_classes,
                                             plan.cnn_warmup, math.ceil(n / BATCH), device,
                                             seed=rep))
        res = fit(replace(cfg, model="cnn_small", epochs=1, seed=rep), sub)
        ours.append(res.train_images_per_s)
    return official, ours


def measure_resnet18(arrays: dict[str, np.ndarray], data: MedData, cfg: TrainConfig, plan: Plan,
                     device: torch.device) -> tuple[list[float], list[float]]:
    """Official-style: `resnet_batches` timed batches after warm-up (fewer if `resnet_max_s`
    runs out). Ours: `fit` itself, stopped after `resnet_warmup` steps (untimed, warms the
    process) and then run again for `resnet_batches` steps; its `train_images_per_s` counts
    training steps only (scoring is excluded)."""
    official, ours = [], []
    sub = _subset(data, 0, plan.cnn_eval_images)  # scoring is not timed; keep it small
    for rep in range(plan.resnet_reps):
        official.append(official_train_rate("resnet18", arrays, data.info.n_classes,
                                             plan.resnet_warmup, plan.resnet_batches, device,
                                             seed=rep, max_s=plan.resnet_max_s))
        rcfg = replace(cfg, model="resnet18", seed=rep, epochs=1)
        if plan.resnet_warmup:
            fit(rcfg, sub, max_steps=plan.resnet_warmup)
        ours.append(fit(rcfg, sub, max_steps=plan.resnet_batches).train_images_per_s)
    return official, ours


# --- (c) FLOPs and the matmul roofline ----------------------------------------------------------

def training_flops_per_image(cfg: TrainConfig, data: MedData) -> float:
    """FLOPs of one forward + backward of a batch through our Runner, per image, counted by
    `torch.utils.flop_counter.FlopCounterMode` (conv and matmul FLOPs; elementwise ops, BN,
    pooling and the optimizer step are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    train = data.splits["train"]
    model = create_model(cfg.model, train.images.shape[1], data.info.n_classes, data.size)
    run = Runner(cfg, data, model)
    run.model.train()
    k = min(BATCH, len(train))
    x = run.inputs(train.images[:k])
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(run.forward(x), train.labels[:k]).backward()
    return counter.get_total_flops() / k


def matmul_roofline_gflops(device: torch.device, n: int, reps: int,
                           dtype: torch.dtype = torch.float32) -> float:
    """Median GFLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs) on the device."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    torch.mm(a, b)  # warm-up
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / _median(times) / 1e9


# --- data -------------------------------------------------------------------------------------

def load_perf_data(data_dir: str | Path | None) -> tuple[dict[str, np.ndarray], str]:
    """pneumoniamnist from data_dir / $MEDMNIST_DATA; if missing, a synthetic file of the official
    size (written to a temp dir by `write_synthetic`). Returns the arrays and a description."""
    path = npz_path(FLAG, SIZE, data_dir)
    if path.exists():
        arrays = load_arrays(FLAG, SIZE, data_dir, verify_md5=False, allow_download=False)
        md5 = "md5 ok" if file_md5(path) == dataset_info(FLAG).md5(SIZE) else "md5 NOT official"
        return arrays, f"real file {path} ({md5})"
    n = dataset_info(FLAG).n_samples
    with tempfile.TemporaryDirectory(prefix="medbench-perf-") as tmp:
        write_synthetic(FLAG, tmp, SIZE, n=(n["train"], n["val"], n["test"]))
        arrays = load_arrays(FLAG, SIZE, tmp, verify_md5=False, allow_download=False)
    return arrays, (f"SYNTHETIC: {path} not found, so a synthetic file of the same size "
                    "(bench.data.write_synthetic) stands in; the speeds compare, the data is fake")


# --- the report ---------------------------------------------------------------------------------

def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:,.1f}"


_ROWS = (  # label, result-key prefix, target name
    ("data path, no augmentation", "data", "data_path"),
    ("data path, hflip + rotate 15", "data_aug", "data_path_aug"),
    ("train cnn_small, end to end", "train_cnn_small", "cnn_small"),
    ("train resnet18, end to end", "train_resnet18", "resnet18"),
)


def format_table(r: dict[str, Any]) -> str:
    lines = [f"{'images/s (median of n runs)':<30}{'official':>10}{'ours':>12}{'ours/off':>10}"
             f"{'n':>3}   target"]
    for label, key, target in _ROWS:
        t = r["targets"][target]
        n = len(r["samples"][f"{key}_ours_ips"])
        lines.append(f"{label:<30}{_fmt_rate(r[key + '_official_ips']):>10}"
                     f"{_fmt_rate(r[key + '_ours_ips']):>12}{r[key + '_speedup']:>9.2f}x"
                     f"{n:>3}   >= {t['threshold']:g}x {'PASS' if t['pass'] else 'MISS'}")
    t = r["targets"]["roofline"]
    lines += [
        "",
        f"cnn_small training FLOPs: {r['cnn_small_flops_per_image'] / 1e6:.2f} MFLOP/image "
        "(FlopCounterMode, forward + backward: conv and matmul FLOPs only)",
        f"achieved {r['cnn_small_gflops']:.2f} GFLOP/s vs measured matmul roofline "
        f"{r['roofline_gflops']:.1f} GFLOP/s ({r['roofline_dtype']} {r['roofline_n']}^3, "
        f"median of {r['roofline_reps']}) = {r['cnn_small_roofline_pct']:.1f}%   "
        f">= {t['threshold']:g}% {'PASS' if t['pass'] else 'MISS'}",
    ]
    return "\n".join(lines)


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not on every platform
        return []


def run_perf(quick: bool, threads: int, device: str, data_dir: Path | None, out: Path | None,
             echo: Callable[[str], None]) -> dict:
    """Run every measurement, print the table through `echo`, optionally write JSON to `out`
    (atomically), and return the results dict: MEASURED_KEYS, `targets`, per-run `samples` and
    the context (device, threads, torch version, load average, data source)."""
    plan = QUICK if quick else FULL
    dev = resolve_device(device)
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    load_start = _loadavg()
    omp_wait = os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP default)")
    t_start = time.perf_counter()
    try:
        arrays, source = load_perf_data(data_dir)
        data = from_arrays(dataset_info(FLAG), SIZE, arrays).to(dev)
        cfg = TrainConfig(dataset=FLAG, model="cnn_small", batch_size=BATCH, device=str(dev),
                          threads=threads)
        echo(f"medbench perf{' --quick' if quick else ''}: {FLAG} {SIZE} px, "
             f"{len(data.splits['train'])} train images, batch {BATCH}")
        echo(f"data: {source}")
        echo(f"device {dev}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
             f"OMP_WAIT_POLICY {omp_wait}, load average {' '.join(map(str, load_start))} "
             f"on {os.cpu_count()} CPUs")
        if (load_start and load_start[0] > (os.cpu_count() or 1) and torch.get_num_threads() > 1
                and omp_wait.lower() != "passive"):
            echo("note: the machine is busier than its CPU count; OpenMP threads that spin at "
                 "barriers then slow down both loops badly (try OMP_WAIT_POLICY=PASSIVE or "
                 "--threads 1)")

        samples: dict[str, list[float]] = {}
        r: dict[str, Any] = {}

        def record(key: str, official: list[float], ours: list[float]) -> None:
            samples[f"{key}_official_ips"], samples[f"{key}_ours_ips"] = official, ours
            r[f"{key}_official_ips"], r[f"{key}_ours_ips"] = _median(official), _median(ours)
            r[f"{key}_speedup"] = r[f"{key}_ours_ips"] / r[f"{key}_official_ips"]

        echo("(a) data path ...")
        record("data", *measure_data_path(arrays, data, False, plan, dev))
        record("data_aug", *measure_data_path(arrays, data, True, plan, dev))
        echo("(b) training cnn_small ...")
        record("train_cnn_small", *measure_cnn_small(arrays, data, cfg, plan, dev))
        echo("(b) training resnet18 ...")
        record("train_resnet18", *measure_resnet18(arrays, data, cfg, plan, dev))
        echo("(c) FLOPs and matmul roofline ...")
        r["cnn_small_flops_per_image"] = training_flops_per_image(cfg, data)
        r["cnn_small_gflops"] = r["cnn_small_flops_per_image"] * r["train_cnn_small_ours_ips"] / 1e9
        # On CUDA our loop runs under bf16 autocast, so its roofline is a bf16 matmul.
        rdtype = torch.bfloat16 if dev.type == "cuda" and cfg.amp else torch.float32
        r["roofline_gflops"] = matmul_roofline_gflops(dev, plan.matmul_n, plan.matmul_reps, rdtype)
        r["cnn_small_roofline_pct"] = 100 * r["cnn_small_gflops"] / r["roofline_gflops"]
        r.update(roofline_dtype=str(rdtype).removeprefix("torch."), roofline_n=plan.matmul_n,
                 roofline_reps=plan.matmul_reps)

        r["targets"] = {name: {"key": key, "threshold": thr, "what": what,
                               "value": r[key], "pass": bool(r[key] >= thr)}
                        for name, (key, thr, what) in TARGETS.items()}
        r.update(
            dataset=FLAG, size=SIZE, batch_size=BATCH, n_train=len(data.splits["train"]),
            data_source=source, synthetic=source.startswith("SYNTHETIC"), device=str(dev),
            threads=torch.get_num_threads(), torch=torch.__version__, quick=quick,
            omp_wait_policy=omp_wait, cpu_count=os.cpu_count(), load_avg_start=load_start,
            load_avg_end=_loadavg(), wall_s=time.perf_counter() - t_start, samples=samples,
        )
    finally:
        torch.set_num_threads(prev_threads)

    echo("")
    echo(format_table(r))
    echo("")
    echo(f"load average (1/5/15 min) at start {' '.join(map(str, r['load_avg_start']))}, "
         f"at end {' '.join(map(str, r['load_avg_end']))}; wall {r['wall_s']:.0f} s")
    if out is not None:
        from bench.results import write_json

        write_json(Path(out), r)
        echo(f"wrote {out}")
    return r

"""ONE training run: config + data -> per-epoch metrics, best-val-AUC weights, val/test scores.

A plain function (`fit`) you can call from a notebook; it imports no Ray and no W&B. The search
layer reports through the `on_epoch` hook. Speed comes from keeping the whole split on the
device as uint8 and taking batches as index slices (see bench/data.py).
"""

from __future__ import annotations

import copy
import math
import operator
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.augment import AugmentConfig, augment_batch
from bench.data import MedData, normalize
from bench.errors import UserError
from bench.metrics import evaluate
from bench.models import create_model, get_entry

OPTIMIZERS = ("sgd", "adam", "adamw", "nadam")
SCHEDULERS = ("multistep", "cosine", "onecycle", "constant")

# `medbench train --preset NAME` (not the experiment presets of `medbench run`, which are
# bench.spaces.PRESETS); `official` is the MedMNIST v2 protocol (../shared/anchors/README.md).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "official": {"model": "resnet18", "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                 "scheduler": "multistep", "batch_size": 128, "epochs": 100},
}


@dataclass
class TrainConfig:
    """Everything one run needs. Keys that are not fields here are the model's own
    hyperparameters (validated by the model registry)."""

    dataset: str = "breastmnist"
    size: int = 28
    model: str = "cnn_small"
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    nesterov: bool = False
    scheduler: str = "multistep"
    epochs: int = 30
    batch_size: int = 128
    eval_batch_size: int = 0  # 0: chosen from the image size
    label_smoothing: float = 0.0
    class_weighting: bool = False
    ema: float = 0.0  # decay of a moving average of the weights; > 0 scores and keeps the average
    seed: int = 0
    aug_hflip: float = 0.0
    aug_vflip: float = 0.0
    aug_rotation: float = 0.0
    aug_shift: float = 0.0
    aug_zoom: float = 0.0
    device: str = "auto"
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # NHWC / NDHWC: oneDNN's fast conv layout, on CPUs too
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    model_hp: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> TrainConfig:
        """Flat dict (CLI, YAML, a Tune sample) -> validated config."""
        cfg = dict(cfg)
        if "preset" in cfg:
            name = cfg.pop("preset")
            if name not in TRAIN_PRESETS:
                raise UserError(f"unknown preset {name!r}; choose one of: "
                                f"{', '.join(TRAIN_PRESETS)}")
            cfg = {**TRAIN_PRESETS[name], **cfg}
        names = {f.name for f in fields(cls)} - {"model_hp"}
        hp = {**cfg.pop("model_hp", {}), **{k: v for k, v in cfg.items() if k not in names}}
        conf = cls(**{k: v for k, v in cfg.items() if k in names}, model_hp=hp)
        conf.validate()
        return conf

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**{k: v for k, v in d.items() if k != "model_hp"}, **d["model_hp"]}

    def _coerce_types(self) -> None:
        """YAML files and `--set` can hand over strings for numbers (PyYAML reads `1e-3` as a
        string): convert what is clearly a number, else name the option in a UserError."""
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                if f.type == "float" and not isinstance(value, bool):
                    value = float(value)
                elif f.type == "int" and not isinstance(value, bool | np.bool_):
                    value = _as_int(value)
                elif f.type == "bool" and isinstance(value, np.bool_):
                    value = bool(value)
                elif f.type in ("int", "float", "bool", "str") and not isinstance(
                        value, {"int": int, "float": float, "bool": bool, "str": str}[f.type]):
                    raise TypeError
            except (TypeError, ValueError, OverflowError):
                kind = {"int": "an integer", "float": "a number", "bool": "true or false",
                        "str": "a string"}[f.type]
                raise UserError(f"{f.name} must be {kind}, got {value!r}") from None
            setattr(self, f.name, value)

    def validate(self) -> None:
        self._coerce_types()
        entry = get_entry(self.model)  # raises a UserError naming the known models
        unknown = sorted(set(self.model_hp) - set(entry.hparams()))
        if unknown:
            raise UserError(f"{', '.join(unknown)}: not a training option nor a hyperparameter "
                            f"of model {self.model!r} (it takes: "
                            f"{', '.join(sorted(entry.hparams())) or 'none'})")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose one of: "
                            f"{', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"unknown scheduler {self.scheduler!r}; choose one of: "
                            f"{', '.join(SCHEDULERS)}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) <= 0:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if not self.lr > 0:
            raise UserError(f"lr must be positive, got {self.lr}")
        if self.weight_decay < 0 or not 0 <= self.label_smoothing < 1:
            raise UserError("weight_decay must be >= 0 and label_smoothing in [0, 1)")
        if not 0 <= self.ema < 1:
            raise UserError(f"ema is a decay in [0, 1) (0: off; 0.99 is typical), got {self.ema}")
        AugmentConfig.from_config(self.to_dict())


def _as_int(value: Any) -> int:
    """int, numpy integer, integral float or integer string -> int; else ValueError."""
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value.strip())
    raise ValueError(value)


@dataclass
class FitResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_state: dict[str, torch.Tensor]
    val: dict[str, float]
    test: dict[str, float]
    val_scores: np.ndarray
    test_scores: np.ndarray
    val_labels: np.ndarray
    test_labels: np.ndarray
    wall_s: float
    train_images_per_s: float
    device: str
    n_params: int
    stopped_early: bool = False
    # the same model's probabilities for the left-right mirrored images (test-time flip);
    # computed only when fit(hflip_scores=True): the leaderboard decides on validation whether
    # averaging them in helps (bench.leaderboard)
    val_scores_hflip: np.ndarray | None = None
    test_scores_hflip: np.ndarray | None = None
    # every epoch's (val, test) probabilities of the scored weights, only when
    # fit(epoch_scores=True): studies of checkpoint rules re-choose the epoch offline
    epoch_scores: list[tuple[np.ndarray, np.ndarray]] | None = None

    def summary(self) -> dict[str, Any]:
        return {"val_auc": self.val["auc"], "val_acc": self.val["acc"],
                "test_auc": self.test["auc"], "test_acc": self.test["acc"],
                "best_epoch": self.best_epoch, "epochs_run": len(self.history),
                "wall_s": self.wall_s, "train_images_per_s": self.train_images_per_s,
                "device": self.device, "n_params": self.n_params}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    kw = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=cfg.momentum, nesterov=cfg.nesterov, **kw)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "nadam": torch.optim.NAdam}
    return cls[cfg.optimizer](params, **kw)


def make_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, total_steps: int):
    """Stepped once per batch, so every schedule means the same thing at any batch size."""
    if cfg.scheduler == "multistep":  # the official protocol: x0.1 at 50% and 75%
        marks = [int(0.5 * total_steps), int(0.75 * total_steps)]
        return torch.optim.lr_scheduler.MultiStepLR(opt, marks, gamma=0.1)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps)
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def make_loss(cfg: TrainConfig, data: MedData) -> LossFn:
    """Cross-entropy, or BCE-with-logits for multi-label; optional class weights for imbalance."""
    y = data.splits["train"].labels
    if data.info.multi_label:
        pos_weight = None
        if cfg.class_weighting:
            pos = y.sum(0)
            pos_weight = ((len(y) - pos) / pos.clamp(min=1)).float()
        ls = cfg.label_smoothing

        def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            target = target * (1 - ls) + 0.5 * ls
            return F.binary_cross_entropy_with_logits(logits.float(), target,
                                                      pos_weight=pos_weight)
        return bce
    weight = None
    if cfg.class_weighting:
        counts = torch.bincount(y, minlength=data.info.n_classes).float()
        weight = len(y) / (data.info.n_classes * counts.clamp(min=1))
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)


def scores_from_logits(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Probabilities, as the official metrics expect (never raw logits)."""
    logits = logits.float()
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, dim=1)


def memory_format(channels_last: bool, dims: int) -> torch.memory_format:
    """`channels_last` means NHWC for images and NDHWC (channels_last_3d) for volumes: cuDNN's
    fast 3D kernels (bf16 above all) and oneDNN's CPU ones both want channels innermost
    (measured on a CPU: reports/archive/bench-3d-cpu.md)."""
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if dims == 2 else torch.channels_last_3d


class Runner:
    """The per-batch work shared by training and scoring: device placement, normalisation,
    memory format and autocast decided once."""

    def __init__(self, cfg: TrainConfig, data: MedData, model: nn.Module):
        self.device = data.device
        self.cuda = self.device.type == "cuda"
        self.memory_format = memory_format(cfg.channels_last, data.info.dims)
        self.amp = self.cuda and cfg.amp
        self.model = model.to(self.device, memory_format=self.memory_format)
        self.multi_label = data.info.multi_label
        pixels = int(np.prod(data.splits["train"].images.shape[1:]))
        self.eval_batch = cfg.eval_batch_size or max(16, min(2048, (1 << 22) // pixels))

    def inputs(self, images_u8: torch.Tensor) -> torch.Tensor:
        return normalize(images_u8).contiguous(memory_format=self.memory_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with(self.model, x)

    def forward_with(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
            return model(x)

    @torch.no_grad()
    def scores(self, images_u8: torch.Tensor, model: nn.Module | None = None,
               hflip: bool = False) -> np.ndarray:
        """Probabilities for a split, from `model` (default: the trained one) in eval mode;
        `hflip`: of every image mirrored left-right (its last axis, 2D and 3D alike)."""
        model = self.model if model is None else model
        model.eval()

        def batch(i: int) -> torch.Tensor:
            x = images_u8[i:i + self.eval_batch]
            return torch.flip(x, dims=(-1,)) if hflip else x

        out = [scores_from_logits(self.forward_with(model, self.inputs(batch(i))),
                                  self.multi_label)
               for i in range(0, len(images_u8), self.eval_batch)]
        return torch.cat(out).cpu().numpy().astype(np.float64)


class WeightAverage:
    """An exponential moving average of a model's weights (as timm's ModelEmaV2), updated after
    every step; scoring the average instead of the last weights cuts the epoch-to-epoch noise
    that dominates small sets such as BreastMNIST (546 training images). Decay warms up as
    min(decay, (1 + t) / (10 + t)) so short runs are not stuck near the initial weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay, self.steps = decay, 0
        # tensor lists built once: update() runs after every optimiser step
        self._avg, self._src = list(self.model.parameters()), list(model.parameters())
        self._buffers = list(zip(self.model.buffers(), model.buffers(), strict=True))

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        self.steps += 1
        torch._foreach_lerp_(self._avg, self._src, 1 - d)
        for b, src in self._buffers:
            b.copy_(src)  # BatchNorm statistics: the current ones


def train_step(run: Runner, opt: torch.optim.Optimizer, sched, loss_fn: LossFn,
               aug: AugmentConfig, gen: torch.Generator, images_u8: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
    """One optimiser step on one batch; returns the batch's summed loss (no host sync).
    Shared by `fit` and the `medbench perf` benchmark, so the benchmark times the real step."""
    x = augment_batch(run.inputs(images_u8), aug, gen)
    loss = loss_fn(run.forward(x), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    return loss.detach() * len(labels)


def fit(cfg: TrainConfig | dict[str, Any], data: MedData,
        on_epoch: Callable[[dict[str, float]], bool | None] | None = None, *,
        rank: int = 0, world_size: int = 1,
        wrap_model: Callable[[nn.Module], nn.Module] | None = None,
        max_steps: int = 0, hflip_scores: bool = False,
        epoch_scores: bool = False) -> FitResult:
    """Train, keep the weights of the epoch with the best validation AUC, score val and test
    with them. `on_epoch(record)` may return True to stop early (budgets, schedulers).
    `max_steps` > 0 ends training after that many optimizer steps, inside an epoch if need be
    (`medbench perf` times the real loop this way on a few batches of a large model).
    `hflip_scores`: also score val and test mirrored left-right (for a test-time-flip entry).
    `epoch_scores`: keep every epoch's val and test probabilities (for checkpoint-rule studies).

    Data-parallel use (Ray Train): each of `world_size` workers passes its `rank` and a
    `wrap_model` (e.g. DDP); every epoch's shuffled order is the same on all workers (same
    seed) and each takes an equal-length shard, so all run the same number of steps."""
    cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = data.info
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    in_ch = data.splits["train"].images.shape[1]
    model = create_model(cfg.model, in_ch, info.n_classes, data.size, **cfg.model_hp)
    if get_entry(cfg.model).dims != info.dims:
        raise UserError(f"model {cfg.model!r} is for {get_entry(cfg.model).dims}D data but "
                        f"{info.flag} is {info.dims}D; pick a {info.dims}D model")
    run = Runner(cfg, data, model)
    if wrap_model is not None:
        run.model = wrap_model(run.model)  # shares `model`'s parameters
    train, val = data.splits["train"], data.splits["val"]
    n = len(train) // world_size * world_size  # equal shards: DDP needs equal step counts
    local = n // world_size
    batch = max(1, cfg.batch_size // world_size)  # the global batch stays cfg.batch_size
    steps_per_epoch = math.ceil(local / batch)
    opt = make_optimizer(cfg, run.model.parameters())
    sched = make_scheduler(cfg, opt, steps_per_epoch * cfg.epochs)
    loss_fn = make_loss(cfg, data)
    aug = AugmentConfig.from_config(cfg.to_dict())
    gen = torch.Generator(device=run.device).manual_seed(cfg.seed)
    average = WeightAverage(model, cfg.ema) if cfg.ema else None
    scored = average.model if average else model  # the weights that are scored and kept

    history: list[dict[str, float]] = []
    per_epoch: list[tuple[np.ndarray, np.ndarray]] = []
    best_auc, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    train_time, stopped, steps, images_trained = 0.0, False, 0, 0
    t_start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        run.model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(train), device=run.device, generator=gen)[:n]
        perm = perm[rank::world_size]
        total = torch.zeros((), device=run.device)
        seen = 0  # this worker's images this epoch
        for i in range(0, local, batch):
            idx = perm[i:i + batch]
            total += train_step(run, opt, sched, loss_fn, aug, gen,
                                train.images[idx], train.labels[idx])
            if average:
                average.update()
            seen, steps = seen + len(idx), steps + 1
            if steps == max_steps:
                break
        epoch_s = time.perf_counter() - t0
        train_time += epoch_s
        images_trained += seen * world_size
        val_now = run.scores(val.images, scored)
        val_metrics = evaluate(val.raw_labels, val_now, info.task)
        if epoch_scores:
            per_epoch.append((val_now, run.scores(data.splits["test"].images, scored)))
        record = {"epoch": epoch, "train_loss": float(total) / seen,
                  "val_auc": val_metrics["auc"],
                  "val_acc": val_metrics["acc"], "lr": opt.param_groups[0]["lr"],
                  "epoch_s": epoch_s, "images_per_s": seen * world_size / epoch_s,
                  "images_seen": images_trained}  # the search's fidelity unit (bench/budget.py)
        history.append(record)
        if record["val_auc"] > best_auc:
            best_auc, best_epoch = record["val_auc"], epoch
            best_state = {k: v.detach().clone() for k, v in scored.state_dict().items()}
        if on_epoch is not None and on_epoch(record):
            stopped = epoch < cfg.epochs
            break
        if steps == max_steps:
            break

    model.load_state_dict(best_state)
    val_scores = run.scores(val.images, model)
    test_scores = run.scores(data.splits["test"].images, model)
    mirrored = {}
    if hflip_scores:
        mirrored = {"val_scores_hflip": run.scores(val.images, model, hflip=True),
                    "test_scores_hflip": run.scores(data.splits["test"].images, model,
                                                    hflip=True)}
    return FitResult(
        history=history, best_epoch=best_epoch,
        best_state={k: v.cpu() for k, v in best_state.items()},
        val=evaluate(val.raw_labels, val_scores, info.task),
        test=evaluate(data.splits["test"].raw_labels, test_scores, info.task),
        val_scores=val_scores, test_scores=test_scores,
        val_labels=val.raw_labels, test_labels=data.splits["test"].raw_labels,
        wall_s=time.perf_counter() - t_start,
        train_images_per_s=images_trained / max(train_time, 1e-9),
        device=str(run.device), n_params=sum(p.numel() for p in model.parameters()),
        stopped_early=stopped, epoch_scores=per_epoch if epoch_scores else None, **mirrored,
    )

"""`medbench plan`: what a spec will cost before anything runs.

Per dataset x family: the images a full-fidelity trial trains on, how many search trials,
selection re-runs and final seeds the spec (and its budget) leads to, the images trained in
all, and the device-seconds on this machine and, as estimates, on an A100 and an H100; the
wall time on a given number of trial slots; and per dataset the smallest ACC difference its
test set can detect.

Where the numbers come from:

* This machine: a short calibration (`calibrate`): each family trains four tiny epochs of
  synthetic data of the dataset's shape with the threads a trial gets, in CALIBRATION_CONFIGS
  configurations of its search space (the typical one, the middle of every listed choice, and
  seeded draws from the space: a trial's cost varies several-fold with width and batch size,
  and the one middle configuration under-priced the trials a search runs); the mean seconds
  per image over them (the median warm epoch of each) are kept, cached per machine in
  `$XDG_CACHE_HOME/medbench/throughput.json`. Scoring (val every epoch, val and test at the
  end) is costed at EVAL_SPEEDUP x the training rate (forward only, no augmentation);
  TRIAL_OVERHEAD_S covers a trial's start, reports and records.
* A100 / H100 (estimates, marked as such): the family's training FLOPs per image (counted by
  `torch.utils.flop_counter`) at the rate published ResNet-50 training reaches (NVIDIA
  DeepLearningExamples, ResNet-50 v1.5 PyTorch, 1x A100 80GB, mixed precision: 2,470 img/s;
  24.6 GFLOP per trained image: 3 x 8.2 GFLOP forward), H100 at H100_OVER_A100 times that
  (MLPerf Training ResNet-50 times-to-train of 8-GPU systems, H100 vs A100: about 2x); but
  never faster than GPU_STEP_FLOOR_S per optimizer step, the kernel-launch bound small 28 px
  models hit long before the FLOP bound. `scripts/gpu_check.sh` measures the real rates
  when a GPU is lent.
* Trials under ASHA: the expected epochs when each rung keeps 1/reduction_factor of the
  trials reaching it. Under a wall-clock budget (`budget_s`), the search phase spends its
  share of the slots (`bench.budget.search_wall_s`), split evenly over the dataset's families
  until one runs out of trials (num_samples); the selection re-runs and final seeds are what
  `bench.budget.plan_rest` would choose with the rest.
* Detectable ACC difference: (z_0.975 + z_0.8) x sqrt(p (1 - p) / n_test), p the published
  reference ACC (ResNet-18 (28), or ResNet-18+3D): a mean test ACC nearer than this to the
  published number cannot be told apart from it at alpha 0.05 with 80% power.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.spaces import Spec

CALIBRATION_CONFIGS = 6  # a balanced design over the space: each of 2 or 3 choices equally often
EVAL_SPEEDUP = 3.0  # scoring an image costs ~1/3 of training on it (forward only)
TRIAL_OVERHEAD_S = 1.5  # a trial's start, per-epoch reports and completion record
# published ResNet-50 v1.5 training rate, 1x A100 80GB, AMP (NVIDIA DeepLearningExamples)
A100_RESNET50_IMG_S = 2470.0
RESNET50_TRAIN_FLOP = 3 * 8.2e9  # forward 4.1 GMAC = 8.2 GFLOP; backward ~2x forward
H100_OVER_A100 = 2.0  # MLPerf Training ResNet-50, 8-GPU systems: about 2x
GPU_STEP_FLOOR_S = 1.5e-3  # eager PyTorch optimizer step of a small CNN: launch-bound
GPUS = {"A100": A100_RESNET50_IMG_S * RESNET50_TRAIN_FLOP,
        "H100": A100_RESNET50_IMG_S * RESNET50_TRAIN_FLOP * H100_OVER_A100}  # FLOP/s
Z_ALPHA, Z_POWER = 0.975, 0.8


# --- throughput ---------------------------------------------------------------------------------

def typical_config(spec: Spec, family: str) -> dict[str, Any]:
    """A family's typical trial: the middle of every listed choice of its search space (batch
    size, width, depth...) and the middle of every numeric range; the rest as TrainConfig's
    defaults. Only what changes a trial's speed matters here."""
    return {name: p.middle() for name, p in spec.spaces()[family].items()}


def calibration_configs(spec: Spec, family: str) -> list[dict[str, Any]]:
    """The configurations a family's rate is measured in: a balanced design over its search
    space (each listed choice equally often, each range at evenly spaced quantiles, paired
    across parameters by seeded permutations: the same on every machine, so cached rates
    compare). A random searcher's trials cost the mean of these; a search that settles on the
    costliest choices costs up to the slowest."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = CALIBRATION_CONFIGS
    out: list[dict[str, Any]] = [{} for _ in range(n)]
    for name, p in spec.spaces()[family].items():
        order = rng.permutation(n)
        for cfg, k in zip(out, order, strict=True):
            cfg[name] = p.design_point(int(k), n)
    return out


def _cache_file() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "medbench" / "throughput.json"


def _machine() -> str:
    """Names the hardware a cached rate was measured on (a copied cache must not apply)."""
    from bench.experiment import hardware

    hw = hardware()
    return f"{hw['cpu_model']}|{hw['cpu_count']}cpu|{','.join(hw['gpu_models']) or 'nogpu'}|" \
           f"torch{hw['torch']}"


def _key(family: str, flag: str, size: int, threads: int, device: str) -> str:
    from bench.data import dataset_info

    i = dataset_info(flag)
    # `mix`: rates over the calibration configurations (older caches held one configuration's)
    return f"{family}|{i.dims}d{i.n_channels}ch{size}|{threads}t|{device}|mix{CALIBRATION_CONFIGS}"


def reference_config() -> dict[str, Any]:
    """The pipeline reference's one configuration (`Spec.reference_seeds`): the MedMNIST v2
    recipe, calibrated under its board name so its rate never mixes with a searched ResNet's."""
    from bench.train import TRAIN_PRESETS

    return {k: v for k, v in TRAIN_PRESETS["official"].items() if k != "epochs"}


def reference_jobs(spec: Spec) -> list[dict[str, Any]]:
    """The pipeline reference's final seeds the run will train (bench.search.reference_jobs):
    none unless `reference_seeds`; 2D datasets at 28 px only."""
    from bench.data import dataset_info
    from bench.search import reference_jobs as jobs

    return jobs(spec, {d: dataset_info(d).n_samples["train"] for d in spec.datasets})


def measure(spec: Spec, family: str, flag: str, threads: int, device: str) -> dict[str, float]:
    """Train `family` in each calibration configuration for four epochs of 2 batches of
    synthetic `flag`-shaped data with `threads` torch threads; returns the training images per
    second over them all (the mean seconds per image, each configuration's median warm epoch:
    the first epoch warms up) and of the slowest, the training FLOPs per image (the family's
    default model) and the typical configuration's batch size (the GPU estimates' step floor).
    `family` REFERENCE_ENTRY: the pipeline reference's recipe, its only configuration."""
    import numpy as np
    import torch

    from bench.data import dataset_info, from_arrays, synthetic_arrays
    from bench.results import REFERENCE_ENTRY
    from bench.train import TrainConfig, fit

    if family == REFERENCE_ENTRY:
        recipe = reference_config()
        family, configs = recipe.pop("model"), [recipe]
        batch = int(recipe["batch_size"])
    else:
        configs = calibration_configs(spec, family)
        batch = int(typical_config(spec, family).get("batch_size", 128))
    before, np_state = torch.get_num_threads(), np.random.get_state()
    per_image, flops = [], 0.0
    # `fit` seeds torch and numpy: the caller's random streams are put back as they were
    with torch.random.fork_rng(devices=[]):
        try:
            torch.set_num_threads(threads)
            for i, cfg in enumerate(configs):
                b = int(cfg.get("batch_size", 128))
                arrays = synthetic_arrays(flag, spec.size, n=(2 * b, 16, 16), seed=0)
                data = from_arrays(dataset_info(flag), spec.size, arrays).to(device)
                conf = TrainConfig.from_dict({**cfg, "dataset": flag, "model": family,
                                              "size": spec.size, "epochs": 4, "seed": 0,
                                              "threads": threads, "device": device})
                result = fit(conf, data)
                per_image.append(float(np.median([float(h["epoch_s"])
                                                  for h in result.history[1:]])) / (2 * b))
                if i == 0:
                    flops = training_flops_per_image(family, data)
        finally:
            torch.set_num_threads(before)
            np.random.set_state(np_state)
    return {"train_ips": 1.0 / max(float(np.mean(per_image)), 1e-12),
            "slowest_ips": 1.0 / max(max(per_image), 1e-12),
            "flops_per_image": flops, "batch_size": batch}


def training_flops_per_image(family: str, data) -> float:
    """FLOPs of one forward + backward of `family` per image (conv and matmul FLOPs, as
    `torch.utils.flop_counter.FlopCounterMode` counts them)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from bench.data import normalize
    from bench.models import create_model

    train = data.splits["train"]
    model = create_model(family, train.images.shape[1], data.info.n_classes, data.size)
    k = min(4, len(train))
    x = normalize(train.images[:k].cpu())
    target = (train.labels[:k].cpu() if data.info.multi_label else
              torch.zeros(k, dtype=torch.long))
    with FlopCounterMode(display=False) as counter:
        out = model(x)
        loss = (F.binary_cross_entropy_with_logits(out, target) if data.info.multi_label
                else F.cross_entropy(out, target))
        loss.backward()
    return counter.get_total_flops() / k


def calibrate(spec: Spec, threads: int, device: str = "cpu", refresh: bool = False,
              families: list[tuple[str, str]] | None = None) -> dict[str, dict[str, float]]:
    """Training rates of every (family, dataset shape) the spec trains, measured here (cached
    per machine, threads and device; `refresh` measures again). A family that fails to train
    gets `{"error": ...}` instead (not cached): its trials would fail the same way."""
    from bench.results import REFERENCE_ENTRY, write_json

    path = _cache_file()
    try:
        cache = json.loads(path.read_text()) if path.exists() and not refresh else {}
    except (OSError, ValueError):
        cache = {}
    machine = _machine()
    mine = cache.setdefault(machine, {})
    out = {}
    pairs = families or spec.pairs() + list(dict.fromkeys(
        (j["dataset"], REFERENCE_ENTRY) for j in reference_jobs(spec)))
    for flag, family in pairs:
        key = _key(family, flag, spec.size, threads, device)
        if key in mine:
            out[key] = mine[key]
            continue
        try:
            rate = measure(spec, family, flag, threads, device)
        except Exception as e:  # noqa: BLE001 - the plan says which family cannot train
            out[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            continue
        mine[key] = out[key] = {**rate, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        # kept at once (a long calibration stopped halfway keeps what it measured); a
        # read-only home: the rates were measured, just not kept
        with contextlib.suppress(OSError):
            write_json(path, cache)
    return out


# --- costs --------------------------------------------------------------------------------------

def promotion_odds(m: int, rf: float) -> float:
    """The chance that a trial reaching an ASHA rung after `m` others goes on: Ray's async
    ASHA stops it below the (1 - 1/rf) quantile of the m scores recorded there before it
    (linear interpolation), so with exchangeable scores the chance is
    (m/rf + 1 - 1/rf) / (m + 1): 1 for the first, 1/2 for the second, tending to 1/rf."""
    return 1.0 if m == 0 else (m / rf + 1 - 1 / rf) / (m + 1)


def _promoted(arrivals: float, rf: float) -> float:
    """Expected trials going on from a rung that `arrivals` trials reach (fractional counts
    interpolate)."""
    whole = int(arrivals)
    total = sum(promotion_odds(m, rf) for m in range(whole))
    return total + (arrivals - whole) * promotion_odds(whole, rf)


def asha_epochs(epochs: int, grace: int, rf: float, trials: float | None = None) -> float:
    """Expected epochs of a search trial under ASHA: every trial trains to the first rung
    (`grace`), and each rung (grace x rf^k, below `epochs`) lets trials on by
    `promotion_odds`; with `trials` unknown, 1/rf of those reaching it (the many-trial
    limit; a few trials go on far more often: the first at every rung always does)."""
    if grace >= epochs:
        return float(epochs)
    rungs = [grace]
    while rungs[-1] * rf < epochs:
        rungs.append(rungs[-1] * rf)
    n = float(trials) if trials else 1.0
    total, reach = float(grace) * n, n
    for a, b in zip(rungs, [*rungs[1:], epochs], strict=True):
        reach = _promoted(reach, rf) if trials else reach / rf
        total += (b - a) * reach
    return total / n


@dataclass
class Profile:
    """One place the plan is costed for: this machine (measured) or a GPU (estimated)."""

    name: str
    estimate: bool
    held: float  # devices a trial holds (CPUs here, or its GPU share)
    unit: str  # CPU | GPU
    rates: dict[str, dict[str, float]]  # _key -> {train_ips | flops_per_image, batch_size}
    flops_per_s: float = 0.0  # GPU estimates only
    threads: int = 1
    device: str = "cpu"

    slowest: bool = False  # price every trial at the space's costliest calibrated config

    def train_s(self, family: str, flag: str, size: int) -> float:
        """Seconds to train one image (exclusive use of the trial's devices)."""
        r = self.rates[_key(family, flag, size, self.threads, self.device)]
        if not self.estimate:
            return 1.0 / r["slowest_ips" if self.slowest else "train_ips"]
        return max(r["flops_per_image"] / self.flops_per_s, GPU_STEP_FLOOR_S / r["batch_size"])


def _run_s(p: Profile, family: str, flag: str, size: int, epochs: float,
           final: bool = False) -> float:
    """Wall seconds of one trial of `epochs` epochs: training, val scoring every epoch, val and
    test at the end (twice for a final seed: its left-right flipped scores too)."""
    from bench.data import dataset_info

    n = dataset_info(flag).n_samples
    t = p.train_s(family, flag, size)
    end = (n["val"] + n["test"]) * (2 if final else 1)
    return epochs * (n["train"] + n["val"] / EVAL_SPEEDUP) * t + end * t / EVAL_SPEEDUP \
        + TRIAL_OVERHEAD_S


def _water_fill(budget: float, demand: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Trials per family when `budget` device-seconds are shared evenly among families, each
    capped at its (max trials, cost per trial); what a capped family leaves goes to the rest."""
    out: dict[str, float] = {}
    active, left = dict(demand), budget
    while active:
        share = left / len(active)
        capped = {f: d for f, d in active.items() if d[0] * d[1] <= share}
        if not capped:
            out.update({f: share / c for f, (_, c) in active.items()})
            break
        for f, (n, c) in capped.items():
            out[f], left = float(n), left - n * c
            del active[f]
    return out


def plan_dataset(spec: Spec, flag: str, p: Profile, slots: int) -> list[dict[str, Any]]:
    """Rows of one dataset's families on one profile."""
    from bench.budget import final_epochs, plan_rest, search_wall_s
    from bench.data import dataset_info

    n_train = dataset_info(flag).n_samples["train"]
    fams = [f for d, f in spec.pairs() if d == flag]
    budgeted = bool(spec.budget_s) and not getattr(spec, "deterministic", False)
    rows: dict[str, dict[str, Any]] = {}
    demand = {}
    broken = {f: p.rates[_key(f, flag, spec.size, p.threads, p.device)].get("error")
              for f in fams}
    fams = [f for f in fams if not broken[f]]
    for f in fams:
        epochs = spec.trial_epochs(f, n_train)
        b = spec.budget(f)
        if spec.scheduler == "asha":
            grace = spec.fidelity_of(f).grace_epochs(epochs)
            search_epochs = asha_epochs(epochs, grace, float(spec.reduction_factor),
                                        None if budgeted else b["num_samples"])
        else:
            search_epochs = float(epochs)
        cost = _run_s(p, f, flag, spec.size, search_epochs) * p.held
        demand[f] = (float(b["num_samples"]), cost)
        final = final_epochs(epochs, spec.fidelity_config)
        rows[f] = {"dataset": flag, "family": f, "trial_epochs": epochs,
                   "trial_images": epochs * n_train, "search_epochs": search_epochs,
                   "rerun_s": _run_s(p, f, flag, spec.size, epochs) * p.held,
                   "final_s": _run_s(p, f, flag, spec.size, final, final=True) * p.held,
                   "final_epochs": final}
    if budgeted:
        search = search_wall_s(spec.budget_s) * slots * p.held
        trials = _water_fill(search, demand)
    else:
        trials = {f: n for f, (n, _) in demand.items()}
        if spec.time_budget_s:  # each experiment's Tuner stops at its wall limit
            cap = spec.time_budget_s * slots * p.held
            trials = {f: min(n, cap / demand[f][1]) for f, n in trials.items()}
    sel = spec.selection_config
    top_k, seeds = (sel.top_k, sel.seeds) if sel else (0, 0)
    n_final = int(spec.final_seeds)
    search_s = sum(trials[f] * demand[f][1] for f in fams)
    if budgeted:
        costs = {f: {"rerun_s": r["rerun_s"], "final_s": r["final_s"]} for f, r in rows.items()}
        rest = plan_rest(spec.budget_s * slots * p.held - search_s, costs, top_k, seeds,
                         n_final) if n_final else {"top_k": 0, "seeds": 0, "final_seeds": 0}
        top_k, seeds, n_final = rest["top_k"], rest["seeds"], rest["final_seeds"]
    out = []
    for f in fams:
        r, n = rows[f], trials[f]
        reruns = min(top_k, math.ceil(n)) * seeds
        r.update(trials=n, reruns=reruns, final_seeds=n_final,
                 search_device_s=n * demand[f][1],
                 device_s=n * demand[f][1] + reruns * r["rerun_s"] + n_final * r["final_s"],
                 images=round(n_train * (n * r["search_epochs"] + reruns * r["trial_epochs"]
                                         + n_final * r["final_epochs"])))
        out.append(r)
    out += [{"dataset": flag, "family": f, "error": err, "trial_epochs": spec.trial_epochs(
                f, n_train), "trial_images": spec.trial_epochs(f, n_train) * n_train,
             "trials": 0, "reruns": 0, "final_seeds": 0, "search_device_s": 0.0,
             "device_s": 0.0, "images": 0} for f, err in broken.items() if err]
    return out + reference_rows(spec, flag, p)


def reference_rows(spec: Spec, flag: str, p: Profile) -> list[dict[str, Any]]:
    """The pipeline reference's seeds on one dataset (none where it does not train): final
    seeds of the paper's ResNet-18 recipe, as long as the run trains them, outside any
    wall-time budget."""
    from bench.data import dataset_info
    from bench.results import REFERENCE_ENTRY

    jobs = [j for j in reference_jobs(spec) if j["dataset"] == flag]
    if not jobs:
        return []
    n_train, epochs = dataset_info(flag).n_samples["train"], int(jobs[0]["epochs"])
    row: dict[str, Any] = {"dataset": flag, "family": REFERENCE_ENTRY, "trial_epochs": epochs,
                           "trial_images": epochs * n_train, "trials": 0, "reruns": 0,
                           "final_seeds": len(jobs), "search_device_s": 0.0}
    error = p.rates[_key(REFERENCE_ENTRY, flag, spec.size, p.threads, p.device)].get("error")
    if error:
        return [{**row, "error": error, "final_seeds": 0, "device_s": 0.0, "images": 0}]
    final_s = _run_s(p, REFERENCE_ENTRY, flag, spec.size, epochs, final=True) * p.held
    return [{**row, "final_epochs": epochs, "final_s": final_s,
             "device_s": row["final_seeds"] * final_s,
             "images": row["final_seeds"] * epochs * n_train}]


def detectable_acc(flag: str, size: int = 28) -> dict[str, Any]:
    """Smallest ACC difference from the published reference the test set can detect (module
    doc); the reference method and its ACC, the test images."""
    from scipy.stats import norm

    from bench.baselines import load_published
    from bench.data import dataset_info
    from bench.leaderboard import comparable_baselines

    rows, ref, _ = comparable_baselines(load_published(), flag, size)
    n = dataset_info(flag).n_samples["test"]
    hit = rows[rows["method"] == ref]
    acc = float(hit["acc"].iloc[0]) if len(hit) else 0.5  # no published number: the worst case
    mde = (norm.ppf(Z_ALPHA) + norm.ppf(Z_POWER)) * math.sqrt(acc * (1 - acc) / n)
    return {"test_images": n, "reference": ref if len(hit) else None, "reference_acc": acc,
            "min_detectable_acc_diff": mde}


# --- the whole plan -----------------------------------------------------------------------------

def make_plan(spec: Spec, workers: int | None = None, refresh: bool = False) -> dict[str, Any]:
    """The plan of `spec` (see the module doc) on this machine and, estimated, on an A100 and
    an H100. `workers`: parallel trial slots for the wall times (default: this machine's)."""
    import torch

    from bench.preflight import local_node
    from bench.resources import describe, resolve
    from bench.search import trial_slots

    node = local_node()
    res = resolve(spec.resources, [node])
    here_slots = trial_slots(Spec(**{**spec.to_dict(), "resources": res}), node)
    slots = int(workers or here_slots)
    if slots < 1:
        raise UserError(f"--workers {workers}: give at least one parallel trial slot")
    on_gpu = res["gpu"] > 0 and torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    threads = max(1, int(res["cpu"]))
    rates = calibrate(spec, threads, device, refresh=refresh)
    here = Profile("this machine", False, res["gpu"] if on_gpu else res["cpu"],
                   "GPU" if on_gpu else "CPU", rates, threads=threads, device=device)
    gpu_share = float(expand_gpu(spec))
    profiles = [here] + [Profile(name, True, gpu_share, "GPU", rates, flops_per_s=fps,
                                 threads=threads, device=device)
                         for name, fps in GPUS.items()]
    out: dict[str, Any] = {
        "spec": spec.name, "datasets": spec.datasets, "families": spec.families,
        "budget_s_per_dataset": spec.budget_s or None, "slots": slots,
        "machine": {"cpus": node["CPU"], "gpus": node["GPU"], "per_trial": describe(res),
                    "trial_slots": here_slots, "platform": platform.machine()},
        "rates": {k: v if "error" in v else
                  {kk: v[kk] for kk in ("train_ips", "slowest_ips", "flops_per_image",
                                        "batch_size")}
                  for k, v in rates.items()},
        "assumptions": {"eval_speedup": EVAL_SPEEDUP, "trial_overhead_s": TRIAL_OVERHEAD_S,
                        "a100_resnet50_img_s": A100_RESNET50_IMG_S,
                        "h100_over_a100": H100_OVER_A100,
                        "gpu_step_floor_s": GPU_STEP_FLOOR_S, "gpu_per_trial": gpu_share},
        "profiles": {}, "detectable": {}}
    for p in profiles:
        rows = [r for flag in spec.datasets for r in plan_dataset(spec, flag, p, slots)]
        total = sum(r["device_s"] for r in rows)
        out["profiles"][p.name] = {
            "estimate": p.estimate, "unit": p.unit, "held_per_trial": p.held, "rows": rows,
            "device_s": total, "trials": sum(r["trials"] for r in rows),
            "wall_s": total / (slots * p.held)}
    # the bound: a search that settles on the space's costliest configurations (it often
    # does: wider models score higher) re-runs and trains its final seeds on those too
    slow = Profile(here.name, False, here.held, here.unit, rates, threads=threads,
                   device=device, slowest=True)
    high = {(r["dataset"], r["family"]): r["device_s"]
            for flag in spec.datasets for r in plan_dataset(spec, flag, slow, slots)}
    for r in out["profiles"][here.name]["rows"]:
        r["device_s_high"] = high.get((r["dataset"], r["family"]), r["device_s"])
    mine = out["profiles"][here.name]
    mine["device_s_high"] = sum(r["device_s_high"] for r in mine["rows"])
    mine["wall_s_high"] = mine["device_s_high"] / (slots * here.held)
    for flag in spec.datasets:
        out["detectable"][flag] = detectable_acc(flag, spec.size)
    return out


def expand_gpu(spec: Spec) -> float:
    """The GPU share a trial asks for where GPUs exist (`resources: auto`: 1)."""
    from bench.resources import Resources

    gpu = Resources.of(spec.resources).gpu
    return gpu if gpu > 0 else 1.0


# --- text ---------------------------------------------------------------------------------------

def _dur(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 3 * 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _n(x: float) -> str:
    return f"{x / 1e9:.1f}G" if x >= 1e9 else f"{x / 1e6:.1f}M" if x >= 1e6 else \
        f"{x / 1e3:.0f}k" if x >= 1e3 else f"{x:.0f}"


def summary_line(plan: dict[str, Any]) -> str:
    """One line for `medbench run` to print before it starts."""
    here = plan["profiles"]["this machine"]
    rows = here["rows"]
    trials = sum(r["trials"] for r in rows)
    more = sum(r["reruns"] + r["final_seeds"] for r in rows)
    det = ", ".join(f"{f} {d['min_detectable_acc_diff']:.3f}"
                    for f, d in plan["detectable"].items())
    broken = sorted({f"{r['family']} ({r['error']})" for r in rows if r.get("error")})
    return (f"plan: ~{trials:.0f} search trials + {more} re-runs/final seeds, "
            f"~{here['device_s']:,.0f} {here['unit']}-s here, up to "
            f"{here['device_s_high']:,.0f} on its costliest configurations "
            f"(~{_dur(here['wall_s'])}-{_dur(here['wall_s_high'])} on "
            f"{plan['slots']} trial slots); smallest detectable ACC difference: {det}"
            + (f"; CANNOT TRAIN here: {'; '.join(broken)}" if broken else "")
            + " (`medbench plan` for details)")


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as a text table."""
    m = plan["machine"]
    here = plan["profiles"]["this machine"]
    gpus = [n for n, p in plan["profiles"].items() if p["estimate"]]
    fw = max([13] + [len(r["family"]) + 1 for r in here["rows"]])  # family column width
    lines = [f"plan for {plan['spec']}: {', '.join(plan['datasets'])} x "
             f"{', '.join(plan['families'])}"
             + (f"; budget {plan['budget_s_per_dataset']:.0f} s wall per dataset"
                if plan["budget_s_per_dataset"] else ""),
             f"this machine: {m['cpus']:g} CPU / {m['gpus']:g} GPU, {m['per_trial']}, "
             f"{m['trial_slots']} trial slot(s); {plan['slots']} slot(s) assumed below",
             "",
             f"{'dataset':<15}{'family':<{fw}}{'images/trial':>13}{'trials':>8}{'re-runs':>8}"
             f"{'seeds':>6}{'images':>9}{'device-s':>10}{'up to':>8}"
             + "".join(f"{g + ' GPU-s*':>13}" for g in gpus)]
    est = {g: {(r["dataset"], r["family"]): r for r in plan["profiles"][g]["rows"]}
           for g in gpus}
    for r in here["rows"]:
        k = (r["dataset"], r["family"])
        if r.get("error"):
            lines.append(f"{r['dataset']:<15}{r['family']:<{fw}}{_n(r['trial_images']):>13}  "
                         f"cannot train here: {r['error']}")
            continue
        lines.append(f"{r['dataset']:<15}{r['family']:<{fw}}{_n(r['trial_images']):>13}"
                     f"{r['trials']:>8.0f}{r['reruns']:>8}{r['final_seeds']:>6}"
                     f"{_n(r['images']):>9}{r['device_s']:>10,.0f}{r['device_s_high']:>8,.0f}"
                     + "".join(f"{est[g][k]['device_s']:>13,.0f}" for g in gpus))
    lines.append(f"{'total':<{15 + fw}}{'':>13}{here['trials']:>8.0f}{'':>8}{'':>6}"
                 f"{_n(sum(r['images'] for r in here['rows'])):>9}{here['device_s']:>10,.0f}"
                 f"{here['device_s_high']:>8,.0f}"
                 + "".join(f"{plan['profiles'][g]['device_s']:>13,.0f}" for g in gpus))
    lines += ["", f"wall time on {plan['slots']} trial slot(s): this machine "
              f"{_dur(here['wall_s'])} (up to {_dur(here['wall_s_high'])}; "
              f"{here['unit']}-s / {plan['slots']} x "
              f"{here['held_per_trial']:g} {here['unit']} per trial)"
              + "".join(f"; {g}* {_dur(plan['profiles'][g]['wall_s'])}" for g in gpus),
              f"* estimates: published ResNet-50 training rates (A100 "
              f"{A100_RESNET50_IMG_S:,.0f} img/s, H100 {H100_OVER_A100:g}x) applied to each "
              f"family's FLOPs, at most one step per {GPU_STEP_FLOOR_S * 1e3:g} ms; "
              f"{plan['assumptions']['gpu_per_trial']:g} GPU per trial",
              "", "smallest ACC difference each test set can detect (alpha 0.05, power 0.8):"]
    for flag, d in plan["detectable"].items():
        ref = (f"{d['reference']} ACC {d['reference_acc']:.3f}" if d["reference"]
               else "no published ACC: at p = 0.5")
        lines.append(f"  {flag:<15} {d['test_images']:>6} test images, {ref}: "
                     f"{d['min_detectable_acc_diff']:.3f}")
    return "\n".join(lines)

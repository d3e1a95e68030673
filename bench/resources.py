"""Per-trial resources: what a spec's `resources` asks for, and what that becomes on the machine
or cluster a run meets.

Why a separate step: a spec is written once and run on a laptop, one 4-GPU box, or a cluster
of GPU nodes. `resources: auto` (every preset's default) means "one GPU per trial where there
are GPUs, CPUs as usual where there are none": each GPU trial then asks Ray for its GPU (or
the fraction `--gpus-per-trial` declares), so Ray sets CUDA_VISIBLE_DEVICES per trial and
concurrent trials land on different devices instead of all on cuda:0. A trial that asks for
no GPU never touches CUDA (`bench.trial.trial_device`).

Forms a spec may give (checked by `bench.spaces._check_resources`):

* `auto`: the same as `{cpu: auto, gpu: 1}`;
* `{cpu: N | auto, gpu: G, require_gpu: bool}`: G GPUs per trial (a fraction up to 1, whole
  numbers above) where the cluster has GPUs (or always, with `require_gpu`, for an
  autoscaler that adds GPU nodes on demand); `cpu: auto` gives a GPU trial its share of its
  node's CPUs (CPUs x G / GPUs, at least 1) and a CPU trial one CPU.

`resolve` turns that into plain numbers `{cpu, gpu}` from the nodes' resources; the driver
does it once, from the whole cluster (`bench.search.resolve_resources`), before any Tuner
starts, so every trial of a run asks for the same thing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.errors import UserError

AUTO = "auto"
# `resources: auto`, spelled out: one GPU per trial where GPUs exist, CPUs derived
AUTO_RESOURCES: dict[str, Any] = {"cpu": AUTO, "gpu": 1}
MAX = {"cpu": 1024, "gpu": 64}  # per trial, upper bounds (far above any real use)


def expand(raw: Any) -> Any:
    """`auto` -> its dict form; anything else unchanged (for the spec check to judge)."""
    return dict(AUTO_RESOURCES) if raw == AUTO else raw


@dataclass(frozen=True)
class Resources:
    """Per-trial resources as a spec or a resolved run gives them, typed: `cpu` a number or
    AUTO, `gpu` a number, `require_gpu`. The defaults of a key left out (1 CPU, no GPU) are
    declared here once; every reader goes through `Resources.of` instead of re-deriving them.
    Spec.resources keeps the mapping as written (spec.yaml compares it on resume)."""

    cpu: float | str = 1.0
    gpu: float = 0.0
    require_gpu: bool = False

    @classmethod
    def of(cls, raw: Mapping[str, Any] | str) -> Resources:
        """From a spec's (checked) `resources`: `auto` or a mapping."""
        raw = expand(raw)
        cpu = raw.get("cpu", 1)
        return cls(cpu=AUTO if cpu == AUTO else float(cpu), gpu=float(raw.get("gpu", 0)),
                   require_gpu=bool(raw.get("require_gpu", False)))

    @property
    def plain(self) -> bool:
        """Whether the CPUs are a number already (not `auto`, which a cluster resolves)."""
        return self.cpu != AUTO

    def as_plain(self) -> dict[str, float]:
        """`{cpu, gpu}` numbers; only for plain resources (`resolve` makes `auto` plain)."""
        if not self.plain:
            raise ValueError("cpu: auto has no number before `resolve`")
        return {"cpu": float(self.cpu), "gpu": self.gpu}


def check_gpus_per_trial(value: float) -> float:
    """`--gpus-per-trial`: a fraction of a GPU up to 1, or a whole number of GPUs."""
    where = "--gpus-per-trial"
    if not 0 <= value <= MAX["gpu"] or (value > 1 and value != int(value)):
        raise UserError(f"{where} {value:g}: give a fraction of one GPU (e.g. 0.25: four "
                        f"trials share a GPU) or a whole number up to {MAX['gpu']}")
    return float(value)


def with_gpus_per_trial(resources: Mapping[str, Any], gpus: float) -> dict[str, Any]:
    """The spec's resources with `gpu` replaced (`--gpus-per-trial`); `cpu: auto` stays auto,
    so a GPU trial still gets its share of its node's CPUs. 0 asks for CPU-only trials."""
    out = {**expand(resources), "gpu": check_gpus_per_trial(gpus)}
    if out["gpu"] == 0:
        out.pop("require_gpu", None)
        if out.get("cpu") == AUTO:
            out["cpu"] = 1
    return out


def resolve(res: Mapping[str, Any], nodes: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Plain per-trial `{cpu, gpu}` for a cluster of `nodes` (each a Ray resource dict, `CPU`,
    `GPU`): GPUs only where some node has one (or `require_gpu`), `cpu: auto` as the module
    doc says. Already-plain resources without GPUs on the cluster keep their CPUs."""
    asked = Resources.of(res)
    nodes = [dict(n) for n in nodes]
    gpu = asked.gpu
    gpu_nodes = [n for n in nodes if n.get("GPU", 0) > 0]
    if gpu > 0 and not gpu_nodes and not asked.require_gpu:
        gpu = 0.0
    cpu = asked.cpu if asked.plain else _cpu_share(gpu, gpu_nodes) if gpu > 0 else 1.0
    return {"cpu": float(cpu), "gpu": gpu}


def _cpu_share(gpu: float, gpu_nodes: list[dict[str, float]]) -> float:
    """CPUs of a trial holding `gpu` GPUs: its node's CPUs in proportion (CPU x gpu / GPU,
    whole, at least 1), on the smallest share among nodes that can hold the trial, so a
    trial fits beside its GPU siblings on every such node. With no node known (an
    autoscaler will add them), 1."""
    hosts = [n for n in gpu_nodes if n.get("GPU", 0) >= gpu and n.get("CPU", 0) >= 1]
    if not hosts:
        return 1.0
    return float(max(1, min(math.floor(n["CPU"] * gpu / n["GPU"] + 1e-9) for n in hosts)))


def describe(res: Mapping[str, float]) -> str:
    """`1 GPU + 4 CPU per trial` / `1 CPU per trial`, for the driver's and the plan's lines."""
    r = Resources.of(res)
    cpu, gpu = float(r.cpu), r.gpu
    parts = ([f"{gpu:g} GPU"] if gpu > 0 else []) + ([f"{cpu:g} CPU"] if cpu > 0 else [])
    return " + ".join(parts) + " per trial"


def on_this_node() -> dict[str, Any]:
    """Ray options that keep a zero-CPU control process (the progress board, the Tuner tasks)
    on the driver's node, the head of a cluster: Ray may otherwise place a task or actor that
    asks for nothing on any node, and a worker node that goes away (spot, autoscaler, a failed
    machine) took the progress board with it and ended the whole run (seen in
    tests/test_cluster_sim.py). Soft: where that node cannot take it, anywhere."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(
        node_id=ray.get_runtime_context().get_node_id(), soft=True)}

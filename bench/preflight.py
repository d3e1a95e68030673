"""Checks a run needs beyond its spec file, all before the first trial starts: the loaded data
(no empty split), the machine a local run starts on, and the cluster a run joins.

Why here and not in the trials: a trial asking for more CPUs or GPUs than any node has is never
scheduled, and Ray Tune waits for it forever with nothing on the console; an empty training
split makes every trial fail, after the whole search ran. Both are one line before any work.

On a cluster the answer can change (an autoscaler adds nodes on demand), so a shortfall there
is a wait with a message and a limit ($MEDBENCH_CAPACITY_WAIT_S, default 600 s), not an error;
the demand is handed to the autoscaler (`request_resources`) so it can act on it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from bench.errors import RunFailure, UserError
from bench.spaces import Spec

WAIT_ENV = "MEDBENCH_CAPACITY_WAIT_S"
DEFAULT_WAIT_S = 600.0
SPLITS = ("train", "val", "test")


def check_splits(arrays: Mapping[str, Mapping[str, Any]]) -> None:
    """Every dataset has images in train, val and test: the search trains on train and selects
    on val; the final phase scores test."""
    for flag, a in arrays.items():
        for split in SPLITS:
            n = len(a[f"{split}_images"])
            if n == 0:
                raise UserError(f"{flag}: the {split} split is empty (0 images); every trial "
                                f"would fail. Use the official file (delete it to re-download) "
                                f"or regenerate it with `medbench synth {flag} --n 96,32,48`")


def is_local(address: str | None) -> bool:
    """True for the embedded Ray node medbench starts itself (no --address, no RAY_ADDRESS)."""
    return not address and not os.environ.get("RAY_ADDRESS")


def trial_bundles(spec: Spec, nodes: list[dict[str, float]], for_autoscaler: bool = False
                  ) -> dict[str, tuple[dict[str, float], int]]:
    """Per family: (resources of one placement bundle, how many bundles a trial needs), with
    the spec's resources resolved for `nodes` as the driver will resolve them
    (`bench.resources.resolve`: GPUs only where some node has one, or `require_gpu`; `cpu:
    auto` from the GPU nodes' shape). A plain trial is one bundle; a `distributed` family's
    trial is `workers` bundles of max(1, cpu) CPUs (and one GPU each when GPUs are used), as
    `bench.trial.fit_distributed` asks Ray Train for. `for_autoscaler`: the GPU bundles an
    autoscaler should add (GPUs kept though no node has one yet)."""
    from bench.resources import Resources, expand, resolve

    res = expand(spec.resources)
    if for_autoscaler and Resources.of(res).gpu > 0:
        res = {**res, "require_gpu": True}
    plain = resolve(res, nodes)
    gpu, cpu = plain["gpu"], plain["cpu"]
    out = {}
    for fam in spec.families:
        workers = int(spec.distributed.get(fam, 0))
        if workers > 1:
            out[fam] = ({"CPU": max(1.0, float(int(cpu))), "GPU": 1.0 if gpu > 0 else 0.0},
                        workers)
        else:
            out[fam] = ({"CPU": cpu, "GPU": gpu}, 1)
    return out


def _shortfall(spec: Spec, nodes: list[dict[str, float]]) -> str | None:
    """What no node (or the nodes together, for a multi-worker trial) can give, or None."""
    for fam, (bundle, count) in trial_bundles(spec, nodes).items():
        fits = [n for n in nodes if all(n.get(k, 0) >= v for k, v in bundle.items())]
        per_node = [min(int(n.get(k, 0) // v) for k, v in bundle.items() if v > 0)
                    for n in fits] if any(bundle.values()) else [count]
        if sum(per_node) < count:
            biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
            want = " / ".join(f"{v:g} {k}" for k, v in bundle.items() if v > 0)
            times = f"{count} workers x " if count > 1 else ""
            return (f"a {fam} trial needs {times}{want}, but the largest node has "
                    f"{biggest.get('CPU', 0):g} CPU / {biggest.get('GPU', 0):g} GPU "
                    f"({len(nodes)} node{'s' if len(nodes) != 1 else ''})")
    return None


def local_node(num_cpus: int | None = None) -> dict[str, float]:
    """CPUs and GPUs the embedded Ray node will have, found as Ray finds them (cgroup limits
    included) without starting it."""
    import torch

    cpus: float
    if num_cpus:
        cpus = float(num_cpus)
    else:
        try:
            from ray._private.utils import get_num_cpus

            cpus = float(get_num_cpus())
        except (ImportError, AttributeError):
            cpus = float(os.cpu_count() or 1)
    return {"CPU": cpus, "GPU": float(torch.cuda.device_count())}


def check_local_capacity(spec: Spec, num_cpus: int | None = None,
                         node: dict[str, float] | None = None) -> None:
    """A local run whose trials can never fit this machine: one UserError (exit 2) instead of
    a search that waits forever."""
    node = node or local_node(num_cpus)
    short = _shortfall(spec, [node])
    if short:
        raise UserError(f"resources: {short}; this machine can never run it. Lower "
                        "resources.cpu/gpu (or distributed workers) in the spec, or run on a "
                        "cluster (--address)")


def wait_seconds() -> float:
    text = os.environ.get(WAIT_ENV)
    if text is None:
        return DEFAULT_WAIT_S
    try:
        value = float(text)
        if not value >= 0:
            raise ValueError
    except ValueError:
        raise UserError(f"${WAIT_ENV} must be a number of seconds >= 0, got {text!r}") from None
    return value


def _alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def wait_for_capacity(spec: Spec, echo: Callable[[str], None], timeout_s: float | None = None,
                      poll_s: float = 5.0,
                      nodes: Callable[[], list[dict[str, float]]] = _alive_nodes) -> None:
    """Return once the connected Ray cluster can place every family's trial; until then say
    what is missing, ask the autoscaler for it, and give up after `timeout_s` (RunFailure,
    exit 1). With timeout 0 (a local node cannot grow) the shortfall is a UserError now."""
    timeout_s = wait_seconds() if timeout_s is None else timeout_s
    short = _shortfall(spec, nodes())
    if short is None:
        return
    if timeout_s <= 0:
        raise UserError(f"resources: {short}; lower resources.cpu/gpu in the spec")
    echo(f"waiting up to {timeout_s:.0f} s for the cluster: {short}. An autoscaler may add "
         f"such a node (set ${WAIT_ENV} to wait longer, or lower resources in the spec)")
    _request(spec)
    deadline = time.monotonic() + timeout_s
    try:
        while short is not None:
            if time.monotonic() >= deadline:
                raise RunFailure(f"after {timeout_s:.0f} s the cluster still cannot run a "
                                 f"trial: {short}; add nodes or lower resources.cpu/gpu in "
                                 "the spec")
            time.sleep(poll_s)
            short = _shortfall(spec, nodes())
    finally:
        _request(None)
    echo("the cluster can run every trial now")


def _request(spec: Spec | None) -> None:
    """Tell an autoscaler (if any) about the bundles we wait for; None withdraws the request
    (the trials' own demand takes over)."""
    try:
        from ray.autoscaler.sdk import request_resources

        if spec is None:
            request_resources(bundles=[])
            return
        bundles = []
        for bundle, count in trial_bundles(spec, _alive_nodes(), for_autoscaler=True).values():
            bundles += [{k: v for k, v in bundle.items() if v > 0}] * count
        request_resources(bundles=bundles)
    except Exception:  # noqa: BLE001 - no autoscaler or an old cluster: waiting still works
        pass

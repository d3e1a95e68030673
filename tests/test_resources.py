"""GPU-aware per-trial resources (bench/resources.py), the device a trial picks, device-seconds,
and the W&B project setting; no Ray, no CUDA (a GPU is simulated where one is needed)."""

from __future__ import annotations

import pytest

from bench.errors import UserError
from bench.resources import AUTO_RESOURCES, resolve, with_gpus_per_trial
from bench.spaces import build_spec, load_spec

GOOD = {"name": "t", "datasets": ["breastmnist"], "families": ["mlp"]}
GPU_BOX = {"CPU": 16.0, "GPU": 4.0}  # one 4-GPU machine
LAPTOP = {"CPU": 2.0, "GPU": 0.0}


def test_auto_is_one_gpu_per_trial_where_gpus_exist_and_one_cpu_where_none() -> None:
    assert resolve("auto", [LAPTOP]) == {"cpu": 1.0, "gpu": 0.0}
    # its share of the node's CPUs: 16 CPUs / 4 GPUs -> 4 per 1-GPU trial
    assert resolve("auto", [GPU_BOX]) == {"cpu": 4.0, "gpu": 1.0}
    assert resolve({"cpu": "auto", "gpu": 0.25}, [GPU_BOX]) == {"cpu": 1.0, "gpu": 0.25}
    assert resolve({"cpu": "auto", "gpu": 2}, [GPU_BOX]) == {"cpu": 8.0, "gpu": 2.0}
    # a CPU-only head with many CPUs does not set the GPU trials' share; the smallest GPU node
    # does, so a trial fits beside its siblings on every GPU node
    mixed = [{"CPU": 64.0, "GPU": 0.0}, {"CPU": 8.0, "GPU": 1.0}, {"CPU": 32.0, "GPU": 4.0}]
    assert resolve("auto", mixed) == {"cpu": 8.0, "gpu": 1.0}
    assert resolve("auto", [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 12.0, "GPU": 4.0}]) == \
        {"cpu": 3.0, "gpu": 1.0}
    # declared numbers stay; GPUs only where there are some, unless required (autoscaler)
    assert resolve({"cpu": 4, "gpu": 0.5}, [LAPTOP]) == {"cpu": 4.0, "gpu": 0.0}
    assert resolve({"cpu": 4, "gpu": 0.5}, [GPU_BOX]) == {"cpu": 4.0, "gpu": 0.5}
    assert resolve({"cpu": "auto", "gpu": 1, "require_gpu": True}, [LAPTOP]) == \
        {"cpu": 1.0, "gpu": 1.0}


def test_gpus_per_trial_replaces_the_gpu_share_and_keeps_cpu_auto() -> None:
    assert with_gpus_per_trial("auto", 0.25) == {"cpu": "auto", "gpu": 0.25}
    assert with_gpus_per_trial({"cpu": 2, "gpu": 0}, 1) == {"cpu": 2, "gpu": 1.0}
    assert with_gpus_per_trial({"cpu": "auto", "gpu": 1, "require_gpu": True}, 0) == \
        {"cpu": 1, "gpu": 0.0}  # 0: CPU-only trials
    for bad in (1.5, -1, 100):
        with pytest.raises(UserError, match="--gpus-per-trial"):
            with_gpus_per_trial("auto", bad)


def test_every_preset_defaults_to_auto_and_specs_take_auto() -> None:
    for preset in ("smoke", "quick", "standard", "full", "breast-recipe"):
        assert load_spec(None, preset).resources["cpu"] == "auto", preset
    assert load_spec(None, "quick").resources == AUTO_RESOURCES
    assert build_spec(GOOD).resources == AUTO_RESOURCES  # the default when a spec says none
    assert build_spec({**GOOD, "resources": "auto"}).resources == AUTO_RESOURCES
    assert build_spec({**GOOD, "resources": {"cpu": "auto", "gpu": 0.5}}).resources == \
        {"cpu": "auto", "gpu": 0.5}
    for res, text in (("gpu", "resources must be a mapping"),
                      ({"cpu": "many"}, "resources.cpu must be .* \\(or auto\\)"),
                      ({"cpu": "auto", "gpu": "auto"}, "resources.gpu must be")):
        with pytest.raises(UserError, match=text):
            build_spec({**GOOD, "resources": res})


def test_trial_slots_count_the_scarcest_resource_asked_for() -> None:
    from bench.search import resolve_resources, trial_slots

    def spec(res):
        return build_spec({**GOOD, "resources": res})

    # 16 GPU quarters but only 4 trials of 4 CPUs: 4, not 16
    assert trial_slots(spec({"cpu": 4, "gpu": 0.25}), GPU_BOX) == 4
    assert trial_slots(spec({"cpu": 1, "gpu": 0.25}), GPU_BOX) == 16
    assert trial_slots(spec("auto"), GPU_BOX) == 4  # 1 GPU + 4 CPUs each
    assert trial_slots(spec("auto"), LAPTOP) == 2  # no GPU: one CPU each
    resolved = resolve_resources(spec("auto"), nodes=[GPU_BOX])
    assert resolved.resources == {"cpu": 4.0, "gpu": 1.0}
    assert resolve_resources(spec("auto"), nodes=[LAPTOP]).resources == {"cpu": 1.0, "gpu": 0.0}


def test_device_seconds_are_wall_times_the_devices_held() -> None:
    from bench.budget import device_seconds, devices_held, planned_device_s

    assert device_seconds(10.0, {"cpu": 4, "gpu": 0}) == 40.0  # 4 CPUs
    assert device_seconds(10.0, {"cpu": 1, "gpu": 2}) == 20.0  # 2 GPUs (CPUs ride along)
    assert device_seconds(10.0, {"cpu": 1, "gpu": 0.25}) == 2.5  # a quarter of a GPU
    # a 2-worker DDP trial holds a whole GPU per worker, whatever the per-trial share says
    assert device_seconds(10.0, {"cpu": 4, "gpu": 0.5}, workers=2) == 20.0
    assert devices_held({"cpu": 3, "gpu": 0}, workers=2) == 6.0
    # planned and spent are the same unit: 2 slots of 4-CPU trials running the whole budget
    # spend exactly what was planned
    assert planned_device_s(100.0, 2, {"cpu": 4, "gpu": 0}) == \
        2 * device_seconds(100.0, {"cpu": 4, "gpu": 0})


def test_budget_accounting_plans_in_the_unit_it_charges() -> None:
    from bench.budget import accounting

    spec = build_spec({**GOOD, "resources": {"cpu": 4, "gpu": 0}, "budget_s": 100,
                       "fidelity": {"trial_images": 1000}})
    rows = [{"dataset": "breastmnist", "wall_s": 100.0, "device_s": 400.0}] * 2
    acc = accounting(spec, {"trials": rows}, slots=2, run_wall_s=100.0)
    b = acc["datasets"]["breastmnist"]
    assert b["planned_device_s"] == 800.0 == b["spent_device_s"]
    # an `auto` spec (resolved on the driver only): the devices its rows were charged for
    auto = build_spec({**GOOD, "budget_s": 100, "fidelity": {"trial_images": 1000}})
    assert accounting(auto, {"trials": rows}, 2, 100.0)["datasets"]["breastmnist"][
        "planned_device_s"] == 800.0


def test_a_trial_without_gpus_never_touches_cuda(monkeypatch) -> None:
    import torch

    from bench.trial import trial_device

    def no_cuda() -> bool:
        raise AssertionError("a 0-GPU trial asked CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", no_cuda)
    assert trial_device("") == torch.device("cpu")
    # a GPU id Ray gave, but no usable CUDA here (logical GPUs): CPU, id still recorded
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trial_device("3") == torch.device("cpu")
    # with CUDA: Ray set CUDA_VISIBLE_DEVICES to the trial's GPU, which is cuda:0 inside it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert trial_device("3") == torch.device("cuda", 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # another trial's ids first: not ours
    assert trial_device("3") == torch.device("cuda", 3)


def test_preflight_resolves_auto_like_the_driver() -> None:
    from bench.preflight import check_local_capacity, trial_bundles

    spec = build_spec({**GOOD, "resources": "auto"})
    assert trial_bundles(spec, [GPU_BOX])["mlp"] == ({"CPU": 4.0, "GPU": 1.0}, 1)
    assert trial_bundles(spec, [LAPTOP])["mlp"] == ({"CPU": 1.0, "GPU": 0.0}, 1)
    # the autoscaler is asked for GPU bundles although no GPU node is up yet
    assert trial_bundles(spec, [LAPTOP], for_autoscaler=True)["mlp"][0]["GPU"] == 1.0
    check_local_capacity(spec, node=LAPTOP)
    check_local_capacity(spec, node={"CPU": 1.0, "GPU": 1.0})
    with pytest.raises(UserError, match="needs 1 CPU / 2 GPU"):
        check_local_capacity(build_spec({**GOOD, "resources": {"cpu": "auto", "gpu": 2}}),
                             node={"CPU": 8.0, "GPU": 1.0})


def test_wandb_project_comes_from_the_environment_over_the_spec(monkeypatch, tmp_path) -> None:
    from bench.tracking import Tracker, resolve_project

    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    assert resolve_project("medmnist-bench") == "medmnist-bench"
    assert Tracker.from_env(False, "spec-proj", tmp_path).project == "spec-proj"
    monkeypatch.setenv("WANDB_PROJECT", "team-bench")
    assert Tracker.from_env(False, "spec-proj", tmp_path).project == "team-bench"
    monkeypatch.setenv("WANDB_PROJECT", "   ")  # empty: unset
    assert resolve_project("spec-proj") == "spec-proj"
    monkeypatch.setenv("WANDB_PROJECT", "no/slashes")
    with pytest.raises(UserError, match=r"\$WANDB_PROJECT: the W&B project must be"):
        resolve_project("spec-proj")


def test_the_rest_of_a_budget_is_counted_in_devices_held() -> None:
    """4-CPU trials on 2 slots: 100 s of budget is 800 device-s, so after 400 spent there is
    room for two final seeds of 200 (counting slots only, 200 - 400 < 0 leaves just one)."""
    from bench.search import rest_plans

    spec = build_spec({**GOOD, "resources": {"cpu": 4, "gpu": 0}, "budget_s": 100,
                       "fidelity": {"trial_images": 1000}, "final_seeds": 5})
    trials = [{"dataset": "breastmnist", "family": "mlp", "status": "ok", "epochs_run": 1,
               "device_s": 200.0, "wall_s": 50.0, "config": {"epochs": 1}}] * 2
    assert rest_plans(spec, 2, trials)["breastmnist"]["final_seeds"] == 2


def test_a_retried_trials_history_is_its_last_attempt() -> None:
    """A trial whose node was lost after epoch 1 trains again from epoch 1 elsewhere; Tune
    keeps both attempts' reports (seen in tests/test_cluster_sim.py): the row's history,
    epochs_run and best epoch must be the last attempt's."""
    from types import SimpleNamespace

    import pandas as pd

    from bench.search import _history

    df = pd.DataFrame({"epoch": [1, 1, 2, 3], "val_auc": [0.9, 0.5, 0.6, 0.7],
                       "time_total_s": [1.0, 1.0, 2.0, 3.0]})
    hist = _history(SimpleNamespace(metrics_dataframe=df))
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert [h["val_auc"] for h in hist] == [0.5, 0.6, 0.7]  # not the lost attempt's 0.9
    once = pd.DataFrame({"epoch": [1, 2, 3], "val_auc": [0.5, 0.6, 0.7]})
    assert len(_history(SimpleNamespace(metrics_dataframe=once))) == 3


def test_resources_of_a_spec_take_their_defaults_in_one_place():
    """A key left out means 1 CPU and no GPU for every reader (the budget, the slots, the
    plan): one typed reading, not a `.get` with its own default in each."""
    from bench.resources import AUTO, Resources

    assert Resources.of({"gpu": 0.5}) == Resources(cpu=1.0, gpu=0.5)
    assert Resources.of({}).as_plain() == {"cpu": 1.0, "gpu": 0.0}
    auto = Resources.of("auto")
    assert auto.cpu == AUTO and auto.gpu == 1.0 and not auto.plain
    with pytest.raises(ValueError):
        auto.as_plain()
    assert Resources.of({"cpu": 2, "gpu": 1, "require_gpu": True}).require_gpu

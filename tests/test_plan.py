"""`medbench plan` (bench/plan.py): the arithmetic on fixed rates, checked by hand; the
command itself, calibrating for real on a tiny family."""

from __future__ import annotations

import json
import math

import pytest
from cli_helpers import run_main

from bench import plan as planmod
from bench.plan import _water_fill, asha_epochs, make_plan
from bench.spaces import build_spec

N_BREAST = {"train": 546, "val": 78, "test": 156}


def test_asha_expected_epochs() -> None:
    # rung at 25 epochs keeps a third, who train the remaining 49
    assert asha_epochs(74, 25, 3) == pytest.approx(25 + 49 / 3)
    # rungs 1, 3, 9 below 10 epochs: each keeps a third of those reaching it
    assert asha_epochs(10, 1, 3) == pytest.approx(1 + 2 / 3 + 6 / 9 + 1 / 27)
    assert asha_epochs(5, 5, 3) == 5  # grace at the end: no early stop


def test_few_trials_go_on_more_often_than_one_in_rf() -> None:
    """Ray's ASHA compares a trial with the scores recorded at the rung before it: the first
    always goes on, the second half the time; 14 trials at rf 3 promote about 6, not 14/3.
    (A deterministic quick run promoted 7 of 14 cnn_small and 4 of 12 mlp trials: 11 in all,
    against 11.4 here and 8.7 by the many-trial rule.)"""
    from bench.plan import promotion_odds

    assert promotion_odds(0, 3) == 1 and promotion_odds(1, 3) == pytest.approx(0.5)
    assert promotion_odds(10_000, 3) == pytest.approx(1 / 3, abs=1e-3)
    promoted = sum(promotion_odds(m, 3) for m in range(14))
    assert asha_epochs(74, 25, 3, trials=14) == pytest.approx(25 + 49 * promoted / 14)
    assert 5.8 < promoted < 6.3
    assert asha_epochs(74, 25, 3, trials=10_000) == pytest.approx(asha_epochs(74, 25, 3),
                                                                  rel=1e-2)


def test_calibration_configs_cover_each_choice_equally() -> None:
    """The rate is measured over a balanced design: each listed choice of a speed-relevant
    parameter appears equally often (a plan priced at one middle configuration cost the
    quick run at 0.4x what it spent; its search ran 8 of 14 cnn_small trials at the widest)."""
    from collections import Counter

    from bench.plan import CALIBRATION_CONFIGS, calibration_configs
    from bench.spaces import load_spec

    spec = load_spec(preset="quick", datasets="breastmnist")
    configs = calibration_configs(spec, "cnn_small")
    assert len(configs) == CALIBRATION_CONFIGS
    for name in ("width", "batch_size", "depth"):
        values = spec.spaces()["cnn_small"][name].values
        counts = Counter(c[name] for c in configs)
        assert set(counts) == set(values) and len(set(counts.values())) == 1, (name, counts)
    assert calibration_configs(spec, "cnn_small") == configs  # the same everywhere


def test_a_family_out_of_trials_leaves_its_share_to_the_others() -> None:
    # 100 device-s: `a` needs only 2 x 10 of its 50; `b` gets the other 80 (16 trials of 5)
    assert _water_fill(100.0, {"a": (2, 10.0), "b": (100, 5.0)}) == {"a": 2.0, "b": 16.0}
    # nobody capped: an even split
    assert _water_fill(100.0, {"a": (99, 10.0), "b": (99, 5.0)}) == {"a": 5.0, "b": 10.0}


@pytest.fixture
def fixed_rates(monkeypatch, tmp_path):
    """1,000 training images/s here for every family; FLOPs per image chosen per family (in a
    cache of their own: the measured rates of other tests must not meet these)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    flops = {"mlp": 1e6, "cnn_small": 1e12}  # mlp launch-bound on GPUs, cnn_small FLOP-bound

    def fake(spec, family, flag, threads, device):
        return {"train_ips": 1000.0, "slowest_ips": 250.0, "flops_per_image": flops[family],
                "batch_size": 128}

    monkeypatch.setattr(planmod, "measure", fake)
    return flops


def _spec(**kw):
    raw = {"name": "p", "datasets": ["breastmnist"], "families": ["mlp", "cnn_small"],
           "scheduler": "fifo", "num_samples": 4, "max_epochs": 3, "final_seeds": 2,
           "resources": {"cpu": 1, "gpu": 0}, **kw}
    return build_spec(raw)


def test_unbudgeted_plan_is_trials_times_their_cost(fixed_rates) -> None:
    n = N_BREAST
    p = make_plan(_spec(), workers=2, refresh=True)
    here = p["profiles"]["this machine"]
    one = 3 * (n["train"] + n["val"] / 3) / 1000 + (n["val"] + n["test"]) / 3 / 1000 + 1.5
    final = 3 * (n["train"] + n["val"] / 3) / 1000 + 2 * (n["val"] + n["test"]) / 3 / 1000 + 1.5
    for r in here["rows"]:
        assert (r["trials"], r["reruns"], r["final_seeds"]) == (4, 0, 2)
        assert r["device_s"] == pytest.approx(4 * one + 2 * final)
        assert r["images"] == (4 * 3 + 2 * 3) * n["train"]
    assert here["device_s"] == pytest.approx(2 * (4 * one + 2 * final))
    assert here["wall_s"] == pytest.approx(here["device_s"] / 2)  # 2 slots of 1 CPU
    # the bound prices every image at the slowest calibrated configuration (4x slower here;
    # the fixed per-trial overhead is not)
    assert 2 * here["device_s"] < here["device_s_high"] < 4 * here["device_s"]
    # GPU estimates: a FLOP-bound family runs twice as fast on an H100; a launch-bound one not
    rows = {g: {r["family"]: r["device_s"] for r in p["profiles"][g]["rows"]}
            for g in ("A100", "H100")}
    overhead = (4 + 2) * planmod.TRIAL_OVERHEAD_S
    assert rows["A100"]["cnn_small"] - overhead == \
        pytest.approx(2 * (rows["H100"]["cnn_small"] - overhead))
    assert rows["A100"]["mlp"] == pytest.approx(rows["H100"]["mlp"])
    assert p["profiles"]["A100"]["estimate"] and not here["estimate"]


def test_budgeted_search_spends_its_share_and_the_rest_follows_plan_rest(fixed_rates) -> None:
    from bench.budget import search_wall_s

    spec = _spec(scheduler="asha", num_samples=500, budget_s=300,
                 fidelity={"trial_images": 5000, "min_epochs": 2, "max_epochs": 100},
                 selection={"top_k": 2, "seeds": 2}, final_seeds=3)
    here = make_plan(spec, workers=2)["profiles"]["this machine"]
    search = sum(r["search_device_s"] for r in here["rows"])
    assert search == pytest.approx(search_wall_s(300) * 2)  # never out of trials: all of it
    assert here["device_s"] <= 300 * 2 + 1e-6  # the rest fits what the budget has left
    assert {(r["reruns"], r["final_seeds"]) for r in here["rows"]} == {(4, 3)}
    # deterministic mode: fixed trial counts and the spec's phases, whatever the budget
    det = make_plan(_spec(scheduler="asha", budget_s=300, deterministic=True,
                          fixed_trials={"mlp": 3, "cnn_small": 5},
                          fidelity={"trial_images": 5000}), workers=2)
    assert {r["family"]: r["trials"] for r in det["profiles"]["this machine"]["rows"]} == \
        {"mlp": 3, "cnn_small": 5}


def test_the_pipeline_reference_is_planned_as_the_seeds_the_run_trains(fixed_rates) -> None:
    """`--reference` adds the paper's ResNet-18 recipe on final seeds of each 2D 28 px set, for
    as many images as a full-fidelity trial (10 epochs of 546 here, not max_epochs' 3): the
    plan prices those seeds too, and says nothing of them at another size."""
    from bench.results import REFERENCE_ENTRY

    fixed_rates[REFERENCE_ENTRY] = 1e12
    fidelity = {"trial_images": 5460, "min_epochs": 2, "max_epochs": 100}
    base = make_plan(_spec(fidelity=fidelity), workers=2)["profiles"]["this machine"]
    plan = make_plan(_spec(fidelity=fidelity, reference_seeds=3), workers=2)
    here = plan["profiles"]["this machine"]
    ref = [r for r in here["rows"] if r["family"] == REFERENCE_ENTRY]
    n = N_BREAST
    seed_s = 10 * (n["train"] + n["val"] / 3) / 1000 + 2 * (n["val"] + n["test"]) / 3 / 1000 + 1.5
    assert [(r["dataset"], r["final_seeds"], r["trial_epochs"]) for r in ref] == \
        [("breastmnist", 3, 10)]
    assert ref[0]["device_s"] == pytest.approx(3 * seed_s)
    assert here["device_s"] == pytest.approx(base["device_s"] + 3 * seed_s)
    assert here["trials"] == base["trials"]  # seeds, not search trials
    assert "+ 7 re-runs/final seeds" in planmod.summary_line(plan)  # 2 x 2 finals + 3
    assert REFERENCE_ENTRY in planmod.format_plan(plan)
    other = make_plan(_spec(fidelity=fidelity, reference_seeds=3, size=64), workers=2)
    assert all(r["family"] != REFERENCE_ENTRY for r in other["profiles"]["this machine"]["rows"])


def test_detectable_acc_difference_of_a_test_set() -> None:
    from bench.plan import detectable_acc

    d = detectable_acc("breastmnist")
    # 156 test images, ResNet-18 (28) ACC 0.863: (1.960 + 0.842) sqrt(p (1 - p) / n)
    assert d["test_images"] == 156 and d["reference_acc"] == pytest.approx(0.863)
    assert d["min_detectable_acc_diff"] == pytest.approx(
        2.8016 * math.sqrt(0.863 * 0.137 / 156), rel=1e-3)
    assert detectable_acc("pneumoniamnist")["min_detectable_acc_diff"] < \
        d["min_detectable_acc_diff"]  # 624 test images detect smaller differences


def test_plan_command_text_and_json(monkeypatch, capsys) -> None:
    code, out, err = run_main(monkeypatch, capsys, "plan", "--preset", "smoke", "--datasets",
                              "breastmnist", "--format", "json")
    assert code == 0, err
    p = json.loads(out)
    assert set(p["profiles"]) == {"this machine", "A100", "H100"}
    rates = p["rates"]
    assert len(rates) == 1 and next(iter(rates.values()))["train_ips"] > 0  # measured here
    rows = p["profiles"]["this machine"]["rows"]
    assert [(r["dataset"], r["family"], r["trials"], r["final_seeds"]) for r in rows] == \
        [("breastmnist", "cnn_small", 2, 2)]
    code, out, err = run_main(monkeypatch, capsys, "plan", "--preset", "smoke", "--datasets",
                              "breastmnist", "--workers", "4", "--gpus-per-trial", "0.5")
    assert code == 0, err
    assert "A100 GPU-s*" in out and "* estimates" in out and "0.5 GPU per trial" in out
    assert "4 slot(s) assumed" in out and "breastmnist        156 test images" in out
    code, _, err = run_main(monkeypatch, capsys, "plan", "--preset", "smoke",
                            "--gpus-per-trial", "1.5")
    assert code == 2 and "--gpus-per-trial 1.5" in err


def test_plan_command_prices_the_reference_when_asked(fixed_rates, monkeypatch, capsys) -> None:
    """`medbench plan --reference` plans what `medbench run --reference` trains: the recipe's
    seeds on each 2D set; without the flag there are none."""
    from bench.results import REFERENCE_ENTRY

    fixed_rates[REFERENCE_ENTRY] = 1e12
    args = ["plan", "--preset", "quick", "--deterministic", "--datasets", "breastmnist",
            "--format", "json"]
    seeds = {}
    for flag in ([], ["--reference"]):
        code, out, err = run_main(monkeypatch, capsys, *args, *flag)
        assert code == 0, err
        rows = json.loads(out)["profiles"]["this machine"]["rows"]
        seeds[bool(flag)] = [r["final_seeds"] for r in rows if r["family"] == REFERENCE_ENTRY]
    assert seeds == {False: [], True: [3]}


def test_a_family_that_cannot_train_is_named_not_fatal(fixed_rates, monkeypatch) -> None:
    from bench.plan import format_plan, summary_line

    good = planmod.measure

    def broken(spec, family, flag, threads, device):
        if family == "cnn_small":
            raise RuntimeError("required rank 5 tensor to use channels_last_3d format")
        return good(spec, family, flag, threads, device)

    monkeypatch.setattr(planmod, "measure", broken)
    p = make_plan(_spec(), workers=2)
    rows = {r["family"]: r for r in p["profiles"]["this machine"]["rows"]}
    assert rows["cnn_small"]["error"].startswith("RuntimeError: required rank 5")
    assert rows["cnn_small"]["device_s"] == 0 and rows["mlp"]["device_s"] > 0
    assert "CANNOT TRAIN here: cnn_small (RuntimeError" in summary_line(p)
    assert "cannot train here: RuntimeError" in format_plan(p)
    # not cached: the next plan measures it again
    monkeypatch.setattr(planmod, "measure", good)
    again = make_plan(_spec(), workers=2)
    assert not any(r.get("error") for r in again["profiles"]["this machine"]["rows"])

"""Specs are checked whole before any Ray work: one clear UserError per broken field."""

from __future__ import annotations

import pytest

from bench.errors import UserError
from bench.spaces import build_spec

GOOD = {"name": "ok", "datasets": ["breastmnist"], "families": ["mlp"], "num_samples": 1,
        "max_epochs": 1, "grace_period": 1, "final_seeds": 0, "verify_md5": False,
        "resources": {"cpu": 1, "gpu": 0}}


def test_the_good_spec_passes() -> None:
    assert build_spec(dict(GOOD)).name == "ok"


@pytest.mark.parametrize("name", ["../x", "../../x", "a/b", "a\\b", "..", ".", ".hidden", "",
                                  "a..b", "/abs", "x" * 101, "new\nline", 5, None])
def test_run_names_that_could_escape_are_refused(name) -> None:
    with pytest.raises(UserError, match=r"run name .*\(no path separators"):
        build_spec({**GOOD, "name": name})


@pytest.mark.parametrize("name", ["smoke", "quick-cpu_2", "a.b", "X1"])
def test_plain_names_pass(name: str) -> None:
    assert build_spec({**GOOD, "name": name}).name == name


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" + \
       "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
               for p, c in zip("bcdefgh", "cdefghi", strict=True))


def test_yaml_alias_bombs_and_huge_files_are_refused_before_expanding(tmp_path) -> None:
    from bench.spaces import MAX_YAML_BYTES, load_spec, read_yaml

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("name: x\ndatasets: [breastmnist]\nfamilies: [mlp]\n" + BOMB)
    with pytest.raises(UserError, match="aliases"):
        load_spec(bomb)  # 9**9 leaves if expanded; refused from the parse events
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: x\n" + "#" * MAX_YAML_BYTES)
    with pytest.raises(UserError, match="above the"):
        read_yaml(huge)
    with pytest.raises(UserError, match="no such file"):
        read_yaml(tmp_path / "missing.yaml", "spec file")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "ok.yaml").write_text("name: x\nlr: 1e-3\n")
    assert read_yaml(tmp_path / "ok.yaml") == {"name": "x", "lr": "1e-3"}


# --- every field: (field, bad value, text the one-line error must contain) ---------------------

BROKEN = [
    ("num_samples", 1_000_000_000, "num_samples must be at least 1 and at most 10000"),
    ("num_samples", "8", "num_samples must be"),
    ("num_samples", 2.5, "num_samples must be"),
    ("num_samples", True, "num_samples must be"),
    ("num_samples", 0, "num_samples must be at least 1"),
    ("max_epochs", 0, "max_epochs must be at least 1"),
    ("max_epochs", 10**6, "max_epochs must be at least 1 and at most 10000"),
    ("max_epochs", "ten", "max_epochs must be"),
    ("grace_period", -1, "grace_period must be at least 1"),
    ("reduction_factor", 1, "reduction_factor must be at least 1.1"),
    ("reduction_factor", "3", "reduction_factor must be"),
    ("final_seeds", -1, "final_seeds must be >= 0"),
    ("final_seeds", 1000, "final_seeds must be >= 0 and at most 100"),
    ("final_seed_base", 5, "final_seed_base must be at least 21"),
    ("max_failures", -1, "max_failures must be >= 0"),
    ("max_failures", 10**6, "max_failures must be >= 0 and at most 100"),
    ("max_concurrent_trials", -1, "max_concurrent_trials must be >= 0"),
    ("max_concurrent_experiments", 1e9, "max_concurrent_experiments must be >= 0"),
    ("time_budget_s", -5, "time_budget_s must be >= 0"),
    ("time_budget_s", float("nan"), "time_budget_s must be >= 0"),
    ("time_budget_s", "1h", "time_budget_s must be"),
    ("size", 27, "breastmnist has no size 27"),
    ("size", "28", "size must be an image size"),
    ("size", True, "size must be an image size"),
    ("project", "a/b", "project (the W&B project) must be"),
    ("project", "", "project (the W&B project) must be"),
    ("project", 5, "project (the W&B project) must be"),
    ("verify_md5", "no", "verify_md5 must be true or false"),
    ("searcher", ["random"], "searcher must be a name"),
    ("searcher", "grid", "unknown searcher 'grid'"),
    ("scheduler", 5, "scheduler must be a name"),
    ("scheduler", "pbt", "unknown scheduler 'pbt'"),
    ("datasets", 5, "datasets must be a list of names"),
    ("datasets", [1, 2], "datasets must be a list of names"),
    ("datasets", {"breastmnist": 1}, "datasets must be a list of names"),
    ("datasets", ["breastmnist", "breastmnist"], "datasets names breastmnist more than once"),
    ("datasets", ["nosuchmnist"], "unknown dataset 'nosuchmnist'"),
    ("families", ["mlp", "mlp"], "families names mlp more than once"),
    ("families", ["nosuchnet"], "unknown model 'nosuchnet'"),
    ("resources", [1], "resources must be a mapping"),
    ("resources", {"cpu": -1}, "resources.cpu must be >= 0"),
    ("resources", {"cpu": 2000}, "resources.cpu must be >= 0 and at most 1024"),
    ("resources", {"cpu": "1"}, "resources.cpu must be"),
    ("resources", {"cpu": 1.5}, "resources.cpu = 1.5: Ray takes fractions only up to 1"),
    ("resources", {"cpu": 1, "gpu": 100}, "resources.gpu must be >= 0 and at most 64"),
    ("resources", {"cpu": 0, "gpu": 0}, "ask for no cpu and no gpu"),
    ("resources", {"cpu": 1, "memory": 4}, "resources takes cpu, gpu and require_gpu"),
    ("resources", {"cpu": 1, "require_gpu": "yes"}, "require_gpu must be true or false"),
    ("resources", {"cpu": 1, "gpu": 0, "require_gpu": True}, "require_gpu is true but gpu is 0"),
    ("overrides", "x", "overrides must be a mapping"),
    ("overrides", {"mlp": [1]}, "overrides.mlp must map parameters to definitions"),
    ("overrides", {"mlp": {"epochs": 3}}, "overrides.mlp sets epochs, which the experiment sets"),
    ("overrides", {"mlp": {"seed": 3}}, "overrides.mlp sets seed"),
    ("overrides", {"nosuchnet": {"lr": 1}}, "overrides names unknown family 'nosuchnet'"),
    ("overrides", {"mlp": {"hidden": {"values": [[1, 2]]}}}, "no nested lists or mappings"),
    ("overrides", {"mlp": {"hidden": {"values": list(range(2000))}}}, "at most 1000"),
    ("overrides", {"mlp": {"hidden": {"a": {"b": 1}}}}, "parameter 'hidden' has keys"),
    ("overrides", {"mlp": {"hidden": {"value": {"x": 1}}}}, "`value` must be a number"),
    ("overrides", {"mlp": {"hidden": [64, 128]}}, "parameter 'hidden' is a list"),
    ("overrides", {"mlp": {"lr": {"values": ["abc"]}}}, "'lr': 'abc' is not a valid value"),
    ("overrides", {"mlp": {"lr": {"min": 0.1, "max": "inf"}}}, "min/max must be finite"),
    ("overrides", {"mlp": {"lr": {"values": [100.0]}}}, "'lr': 100.0 is outside [0, 10]"),
    ("overrides", {"mlp": {"batch_size": {"min": 16, "max": 64}}}, "is an integer; use "
                                                                   "distribution int_uniform"),
    ("overrides", {"mlp": {"batch_size": {"values": [100_000]}}}, "outside [1, 8192]"),
    ("overrides", {"mlp": {"batch_size": {"values": [0]}}}, "batch_size must be a positive"),
    ("overrides", {"mlp": {"optimizer": "rmsprop"}}, "unknown optimizer 'rmsprop'"),
    ("overrides", {"mlp": {"scheduler": {"values": ["cosine", "step"]}}},
     "unknown scheduler 'step'"),
    ("overrides", {"mlp": {"aug_hflip": 2.0}}, "'aug_hflip': 2.0 is not a valid value"),
    ("overrides", {"mlp": {"hidden": "big"}}, "'big' is not int like its default 512"),
    ("overrides", {"mlp": {"hidden": True}}, "True is not int like its default 512"),
    ("overrides", {"mlp": {"dropout": 1.5}}, "'dropout': 1.5 is outside [0, 0.99]"),
    ("overrides", {"mlp": {"layers": {"min": 1, "max": 3}}}, "'layers' is an integer"),
    ("overrides", {"mlp": {"nosuch": 1}}, "'nosuch' is neither a training option"),
    ("budgets", {"mlp": "x"}, "budgets must map families to"),
    ("budgets", {"mlp": {"num_samples": "many"}}, "budgets.mlp.num_samples must be an integer"),
    ("budgets", {"mlp": {"num_samples": 10**9}}, "budgets.mlp.num_samples must be an integer "
                                                 "of at most 10000"),
    ("budgets", {"mlp": {"max_epochs": 1.5}}, "budgets.mlp.max_epochs must be an integer"),
    ("budgets", {"mlp": {"num_samples": 0}}, "num_samples must be at least 1 (budget of mlp)"),
    ("distributed", {"mlp": True}, "distributed.mlp (Ray Train workers) must be at least 1"),
    ("distributed", {"mlp": 0}, "distributed.mlp (Ray Train workers) must be at least 1"),
    ("distributed", {"mlp": 10_000}, "and at most 256"),
    ("distributed", [2], "distributed must be a mapping"),
    ("selection", {"seeds": 1.5}, "selection.seeds must be an integer"),
    ("selection", {"top_k": 100}, "selection.top_k must be a number in [1, 50]"),
    ("selection", {"k": 2}, "selection takes top_k and seeds"),
    ("fidelity", {"trial_images": 10**12}, "fidelity.trial_images must be a number in"),
    ("fidelity", "x", "fidelity must be a mapping"),
    ("budget_s", -1, "budget_s"),
    ("portfolio", 21, "portfolio is how many start configurations"),
    ("name", "../x", "run name '../x' must be"),
    ("num_sample", 3, "unknown key(s) num_sample"),
    ("deterministic", "yes", "deterministic must be true or false"),
    ("fixed_trials", {"mlp": 0}, "fixed_trials must map families to a trial count >= 1"),
    ("fixed_trials", {"mlp": 2.5}, "fixed_trials must map families to a trial count >= 1"),
    ("fixed_trials", {"nosuchnet": 3}, "fixed_trials names unknown family 'nosuchnet'"),
    ("reference_seeds", 21, "reference_seeds is how many final seeds"),
    ("reference_seeds", True, "reference_seeds is how many final seeds"),
]


@pytest.mark.parametrize(("field", "value", "text"), BROKEN,
                         ids=[f"{f}={v!r}"[:60] for f, v, _ in BROKEN])
def test_each_broken_field_is_one_line_naming_it(field, value, text) -> None:
    with pytest.raises(UserError) as e:
        build_spec({**GOOD, field: value}, "spec.yaml")
    message = str(e.value)
    assert text in message, message
    assert message.startswith("spec.yaml: ") or "unknown dataset" in message \
        or "unknown model" in message or "no size" in message, message
    assert "\n" not in message, message
    assert type(e.value).exit_code == 2


def test_the_broken_table_covers_every_spec_field() -> None:
    """A field added to Spec without a broken case here fails this test."""
    from bench.spaces import Spec

    covered = {f for f, _, _ in BROKEN}
    assert set(Spec.__dataclass_fields__) <= covered, \
        set(Spec.__dataclass_fields__) - covered


@pytest.mark.parametrize("preset", ["smoke", "quick", "standard", "full", "breast-recipe"])
def test_every_shipped_preset_passes(preset: str) -> None:
    from bench.spaces import PRESETS, load_spec

    assert preset in PRESETS
    spec = load_spec(preset=preset)
    assert spec.name == preset
    if any(f.endswith("3d") or "_3d" in f or "2_5d" in f or "acs" in f for f in spec.families) \
            or preset in ("quick", "standard"):
        three = load_spec(preset=preset, datasets="adrenalmnist3d,vesselmnist3d")
        assert three.families


def test_every_shipped_preset_is_listed() -> None:
    from bench.spaces import PRESETS, spaces_dir

    assert sorted(p.stem for p in (spaces_dir() / "experiments").glob("*.yaml")) \
        == sorted(PRESETS)


# --- what needs the data or the machine (bench.preflight) ---------------------------------------

def test_an_empty_split_is_refused_with_the_fix() -> None:
    from bench.data import synthetic_arrays
    from bench.preflight import check_splits

    check_splits({"breastmnist": synthetic_arrays("breastmnist", n=(8, 4, 4))})
    for n, split in (((0, 4, 4), "train"), ((8, 0, 4), "val"), ((8, 4, 0), "test")):
        with pytest.raises(UserError, match=f"breastmnist: the {split} split is empty .*"
                                            "medbench synth breastmnist"):
            check_splits({"breastmnist": synthetic_arrays("breastmnist", n=n)})


def test_trials_bigger_than_this_machine_are_refused() -> None:
    from bench.preflight import check_local_capacity

    node = {"CPU": 2.0, "GPU": 0.0}
    check_local_capacity(build_spec({**GOOD, "resources": {"cpu": 2, "gpu": 0}}), node=node)
    # gpu asked but none here: the spec runs CPU-only (bench.search.resolve_resources)
    check_local_capacity(build_spec({**GOOD, "resources": {"cpu": 1, "gpu": 1}}), node=node)
    for res, text in (({"cpu": 64, "gpu": 0}, "a mlp trial needs 64 CPU, but the largest "
                                              "node has 2 CPU / 0 GPU"),
                      ({"cpu": 1, "gpu": 1, "require_gpu": True}, "needs 1 CPU / 1 GPU")):
        with pytest.raises(UserError, match=text) as e:
            check_local_capacity(build_spec({**GOOD, "resources": res}), node=node)
        assert "can never run it" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="needs 1 CPU / 2 GPU, but the largest node has 8 CPU "
                                        "/ 1 GPU"):
        check_local_capacity(build_spec({**GOOD, "resources": {"cpu": 1, "gpu": 2}}),
                             node={"CPU": 8.0, "GPU": 1.0})
    wide = build_spec({**GOOD, "families": ["mlp"], "distributed": {"mlp": 4},
                       "resources": {"cpu": 1, "gpu": 0}})
    with pytest.raises(UserError, match="4 workers x 1 CPU"):
        check_local_capacity(wide, node=node)
    check_local_capacity(wide, node={"CPU": 4.0, "GPU": 0.0})


def test_a_cluster_short_of_a_big_node_is_waited_for_then_refused() -> None:
    from bench.errors import RunFailure
    from bench.preflight import wait_for_capacity

    spec = build_spec({**GOOD, "resources": {"cpu": 4, "gpu": 0}})
    said: list[str] = []
    small = [{"CPU": 2.0}, {"CPU": 2.0}]  # 4 CPUs in all, but no node holds a 4-CPU trial
    with pytest.raises(RunFailure, match="after 0 s the cluster still cannot run a trial: "
                                         "a mlp trial needs 4 CPU"):
        wait_for_capacity(spec, said.append, timeout_s=0.2, poll_s=0.05, nodes=lambda: small)
    assert len(said) == 1 and "waiting up to 0 s" in said[0] and "autoscaler" in said[0]
    grows = iter([small, small, [*small, {"CPU": 8.0}]])
    said.clear()
    wait_for_capacity(spec, said.append, timeout_s=30, poll_s=0.01, nodes=lambda: next(grows))
    assert said[-1] == "the cluster can run every trial now"
    with pytest.raises(UserError, match="lower resources"):  # a local node cannot grow
        wait_for_capacity(spec, said.append, timeout_s=0, nodes=lambda: small)


def test_capacity_wait_setting_is_checked(monkeypatch) -> None:
    from bench.preflight import WAIT_ENV, wait_seconds

    monkeypatch.setenv(WAIT_ENV, "soon")
    with pytest.raises(UserError, match=WAIT_ENV):
        wait_seconds()
    monkeypatch.setenv(WAIT_ENV, "12")
    assert wait_seconds() == 12.0


def test_medbench_run_refuses_before_ray_starts(tmp_path) -> None:
    """Through the CLI: a trial bigger than this machine and an empty train split are each one
    line and exit 2, with no run directory made and no Ray node started."""
    import os
    import subprocess
    import sys

    import yaml

    from bench.data import write_synthetic

    write_synthetic("breastmnist", tmp_path / "data", n=(16, 8, 8))
    write_synthetic("pneumoniamnist", tmp_path / "data", n=(0, 8, 8))
    env = {**os.environ, "WANDB_MODE": "disabled", "RAY_ADDRESS": ""}
    cases = {"big": ({"resources": {"cpu": 4096, "gpu": 0}}, "resources.cpu must be"),
             "cpus": ({"resources": {"cpu": (os.cpu_count() or 1) + 1, "gpu": 0}},
                      "this machine can never run it"),
             "empty": ({"datasets": ["pneumoniamnist"]}, "pneumoniamnist: the train split is "
                                                         "empty")}
    for name, (change, text) in cases.items():
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({**GOOD, "name": name, **change}))
        out = subprocess.run([sys.executable, "-m", "bench.cli", "run", "--spec", str(spec),
                              "--out", str(tmp_path / name), "--data-dir",
                              str(tmp_path / "data"), "--no-wandb", "--no-verify"],
                             capture_output=True, text=True, timeout=300, env=env)
        lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
        assert out.returncode == 2, out.stdout + out.stderr
        assert len(lines) == 1 and text in lines[0], lines
        assert not (tmp_path / name).exists()
        assert "ray" not in out.stdout.lower()

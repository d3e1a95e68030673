"""Search spaces and experiment specs: every shipped YAML loads and validates, `to_tune` builds
the right Ray Tune domains, and each kind of bad input is one clear UserError. No Ray start."""

from __future__ import annotations

import random

import pytest
from ray import tune
from ray.tune.search import sample

from bench.data import dataset_info
from bench.errors import UserError
from bench.models import get_entry, list_models
from bench.spaces import (
    PRESETS,
    Param,
    build_spec,
    load_family_space,
    load_spec,
    spaces_dir,
)
from bench.train import TrainConfig

FAMILY_FILES = sorted(p.stem for p in spaces_dir().glob("*.yaml")
                      if p.stem not in ("common", "portfolio"))
PRESET_FILES = sorted(p.stem for p in (spaces_dir() / "experiments").glob("*.yaml"))


def tiny(**kw) -> dict:
    """A valid raw spec; tests change one thing at a time."""
    return {"name": "t", "datasets": ["breastmnist"], "families": ["cnn_small"],
            "num_samples": 2, "max_epochs": 2, "grace_period": 1, **kw}


def error_of(raw: dict) -> str:
    with pytest.raises(UserError) as e:
        build_spec(raw)
    return str(e.value)


# --- the shipped YAML files ---------------------------------------------------------------------

def test_every_family_has_a_space_file_and_every_file_a_family():
    assert list_models() == FAMILY_FILES


@pytest.mark.parametrize("family", FAMILY_FILES)
def test_family_space_loads_and_validates(family):
    space = load_family_space(family)
    entry = get_entry(family)
    train_keys = set(TrainConfig.__dataclass_fields__) - {"model_hp"}
    assert space, family
    for name, p in space.items():
        assert name in train_keys | set(entry.hparams()), name
        assert isinstance(p, Param) and p.kind in ("value", "values", "range"), (name, p)
        assert Param.parse(name, p.as_dict(), "t") == p  # the YAML form reads back the same
    # the common training options are searched for every family
    assert {"optimizer", "lr", "batch_size"} <= set(space)
    # every domain builds, and a sample of it is a config the trainer accepts
    domains = {k: v.to_tune() for k, v in space.items()}
    rng = random.Random(0)
    for _ in range(3):
        cfg = {k: (d.sample(random_state=rng.randrange(2**31)) if isinstance(d, sample.Domain)
                   else d) for k, d in domains.items()}
        TrainConfig.from_dict({**cfg, "model": family, "dataset": "breastmnist", "epochs": 1})


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_builds(preset):
    assert preset in PRESET_FILES
    spec = load_spec(preset=preset)
    assert spec.name == preset
    assert spec.pairs()
    assert set(spec.spaces()) == set(spec.families)


def test_preset_files_and_names_agree():
    assert sorted(PRESETS) == PRESET_FILES


def test_full_preset_pairs_3d_sets_with_the_3d_families_only():
    spec = load_spec(preset="full")
    pairs = spec.pairs()
    three_d = [(d, f) for d, f in pairs if dataset_info(d).dims == 3]
    assert three_d
    assert {f for _, f in three_d} == set(list_models(dims=3))
    assert {d for d, _ in three_d} == {d for d in spec.datasets if d.endswith("3d")}
    assert all(get_entry(f).dims == 2 for d, f in pairs if dataset_info(d).dims == 2)
    n2d = sum(dataset_info(d).dims == 2 for d in spec.datasets)
    n2f = sum(get_entry(f).dims == 2 for f in spec.families)
    assert len(pairs) == n2d * n2f + len(three_d)


def test_cli_values_override_the_preset():
    spec = load_spec(preset="smoke", num_samples=5, families="mlp,cnn_small", searcher=None)
    assert spec.num_samples == 5
    assert spec.families == ["mlp", "cnn_small"]
    assert spec.searcher == "random"  # None leaves the preset's value


def test_smoke_preset_is_small():
    spec = load_spec(preset="smoke")
    assert spec.num_samples <= 4 and spec.max_epochs <= 3 and spec.final_seeds >= 1
    assert spec.grace_period <= spec.max_epochs


# --- to_tune -------------------------------------------------------------------------------------

def test_to_tune_domain_types():
    assert Param.parse("x", {"value": 3}, "t").to_tune() == 3
    choice = Param.parse("x", {"values": ["adam", "sgd"]}, "t").to_tune()
    assert isinstance(choice, sample.Categorical)
    assert list(choice.categories) == ["adam", "sgd"]

    uni = Param.parse("x", {"distribution": "uniform", "min": 0, "max": 0.5}, "t").to_tune()
    assert isinstance(uni, sample.Float)
    assert isinstance(uni.get_sampler(), sample.Float._Uniform)
    assert (uni.lower, uni.upper) == (0.0, 0.5)

    log = Param.parse("x", {"distribution": "log_uniform", "min": 1e-4, "max": 1e-2},
                      "t").to_tune()
    assert isinstance(log, sample.Float)
    assert isinstance(log.get_sampler(), sample.Float._LogUniform)
    assert (log.lower, log.upper) == (1e-4, 1e-2)


def test_wandb_alias_log_uniform_values_means_log_uniform():
    p = Param.parse("lr", {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
                    "t")
    assert p.as_dict() == {"distribution": "log_uniform", "min": 1e-4, "max": 1e-1}
    assert isinstance(p.to_tune().get_sampler(), sample.Float._LogUniform)


def test_int_uniform_is_inclusive_of_max():
    d = Param.parse("layers", {"distribution": "int_uniform", "min": 1, "max": 3},
                    "t").to_tune()
    assert isinstance(d, sample.Integer)
    assert isinstance(d.get_sampler(), sample.Integer._Uniform)
    assert (d.lower, d.upper) == (1, 4)  # Tune's upper bound is exclusive
    seen = set(d.sample(size=400, random_state=0))
    assert seen == {1, 2, 3}


def test_int_log_uniform_is_inclusive_of_max():
    d = Param.parse("hidden", {"distribution": "int_log_uniform", "min": 2, "max": 4},
                    "t").to_tune()
    assert isinstance(d, sample.Integer)
    assert isinstance(d.get_sampler(), sample.Integer._LogUniform)
    assert (d.lower, d.upper) == (2, 5)
    seen = set(d.sample(size=600, random_state=0))
    assert seen == {2, 3, 4}


def test_to_tune_domains_match_ray_constructors():
    # the same types Tune's own constructors return (guards against Ray API drift)
    assert type(Param.parse("x", {"values": [1]}, "t").to_tune()) is type(tune.choice([1]))
    p = Param.parse("x", {"distribution": "int_uniform", "min": 1, "max": 2}, "t")
    assert type(p.to_tune()) is type(tune.randint(1, 3))


def test_bare_scalar_is_a_constant():
    assert Param.parse("x", 0.5, "t") == Param("value", value=0.5)
    assert Param.parse("x", 0.5, "t").to_tune() == 0.5


def test_family_space_applies_overrides():
    space = load_family_space("cnn_small", {"width": {"values": [0.25]}, "lr": 0.01})
    assert space["width"].as_dict() == {"values": [0.25]}
    assert space["lr"].as_dict() == {"value": 0.01}
    assert space["optimizer"].values  # common.yaml still applies


def test_spec_overrides_reach_the_family_space():
    spec = build_spec(tiny(overrides={"cnn_small": {"width": {"values": [0.5]}}}))
    assert spec.spaces()["cnn_small"]["width"].as_dict() == {"values": [0.5]}


# --- bad input: one UserError, saying what is wrong ----------------------------------------------

def test_unknown_distribution():
    with pytest.raises(UserError, match="unknown distribution 'normal'") as e:
        Param.parse("lr", {"distribution": "normal", "min": 0, "max": 1}, "space x")
    assert "log_uniform" in str(e.value)  # names the choices
    msg = error_of(tiny(overrides={"cnn_small": {"lr": {"distribution": "normal", "min": 0.1,
                                                        "max": 1}}}))
    assert "unknown distribution 'normal'" in msg and "'lr'" in msg


def test_min_above_max():
    with pytest.raises(UserError, match=r"min 0\.5 > max 0\.1; swap them"):
        Param.parse("dropout", {"distribution": "uniform", "min": 0.5, "max": 0.1}, "t")


@pytest.mark.parametrize("dist", ["log_uniform", "int_log_uniform", "log_uniform_values"])
@pytest.mark.parametrize("lo", [0, -1e-3])
def test_log_distribution_needs_positive_min(dist, lo):
    with pytest.raises(UserError, match="log distribution needs min > 0"):
        Param.parse("lr", {"distribution": dist, "min": lo, "max": 1}, "t")


@pytest.mark.parametrize("bad", [{"values": []}, {"values": 3}, {"distribution": "uniform"},
                                 {"min": "a", "max": 1}])
def test_malformed_parameter(bad):
    with pytest.raises(UserError, match="'p'"):
        Param.parse("p", bad, "t")


def test_hyperparameter_the_family_does_not_take():
    with pytest.raises(UserError) as e:
        load_family_space("cnn_small", {"hidden": {"values": [64]}})
    msg = str(e.value)
    assert "'hidden'" in msg and "cnn_small" in msg and "width" in msg  # lists what it takes
    msg = error_of(tiny(overrides={"cnn_small": {"hidden": {"values": [64]}}}))
    assert "'hidden'" in msg


def test_unknown_spec_key():
    msg = error_of(tiny(num_sample=3))
    assert "unknown key(s) num_sample" in msg and "num_samples" in msg


def test_unknown_dataset():
    msg = error_of(tiny(datasets=["breastmnist", "nosuchmnist"]))
    assert "unknown dataset 'nosuchmnist'" in msg and "pathmnist" in msg


def test_unknown_family():
    msg = error_of(tiny(families=["cnn_small", "transformer9"]))
    assert "unknown model 'transformer9'" in msg and "cnn_small" in msg


def test_grace_period_above_max_epochs():
    msg = error_of(tiny(grace_period=5, max_epochs=3))
    assert "grace_period 5 is above max_epochs 3" in msg


def test_num_samples_zero():
    assert "num_samples must be at least 1" in error_of(tiny(num_samples=0))


def test_unknown_searcher():
    msg = error_of(tiny(searcher="hyperband9"))
    assert "unknown searcher 'hyperband9'" in msg and "optuna" in msg


def test_unknown_scheduler():
    assert "unknown scheduler 'pbt'" in error_of(tiny(scheduler="pbt"))


def test_per_family_settings_of_families_left_out_do_not_apply():
    # a preset narrowed with --families keeps working: mlp's override is simply dropped
    spec = build_spec(tiny(overrides={"mlp": {"hidden": {"values": [64]}}},
                           budgets={"mlp": {"num_samples": 1}}, distributed={"mlp": 2}))
    assert spec.overrides == {} and spec.budgets == {} and spec.distributed == {}


def test_per_family_settings_of_an_unknown_family():
    msg = error_of(tiny(overrides={"nosuchnet": {"hidden": {"values": [64]}}}))
    assert "overrides names unknown family 'nosuchnet'" in msg and "cnn_small" in msg


def test_3d_dataset_with_only_2d_families():
    msg = error_of(tiny(datasets=["breastmnist", "organmnist3d"], families=["cnn_small", "mlp"]))
    assert "no family fits organmnist3d (3D)" in msg and "resnet18_3d" in msg


def test_3d_family_with_only_2d_datasets():
    msg = error_of(tiny(families=["cnn_small", "resnet18_3d"]))
    assert "'resnet18_3d'" in msg and "fits none of the datasets" in msg


def test_no_datasets_or_families():
    assert "at least one dataset" in error_of(tiny(datasets=[]))
    assert "at least one dataset" in error_of(tiny(families=""))


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown preset 'huge'"):
        load_spec(preset="huge")


def test_spec_file_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [breastmnist\nfamilies: {")
    with pytest.raises(UserError, match="not valid YAML"):
        load_spec(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        load_spec(listy)


def test_spec_file_with_cli_override(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("name: mine\ndatasets: breastmnist\nfamilies: [mlp]\nnum_samples: 3\n"
                 "grace_period: 1\nmax_epochs: 2\n")
    spec = load_spec(f, max_epochs=4)
    assert (spec.name, spec.datasets, spec.families) == ("mine", ["breastmnist"], ["mlp"])
    assert (spec.num_samples, spec.max_epochs) == (3, 4)


def test_per_family_budgets():
    spec = build_spec(tiny(families=["cnn_small", "mlp"], num_samples=4, max_epochs=6,
                           budgets={"mlp": {"num_samples": 2, "max_epochs": 3}}))
    assert spec.budget("mlp") == {"num_samples": 2, "max_epochs": 3, "grace_period": 1}
    assert spec.budget("cnn_small") == {"num_samples": 4, "max_epochs": 6, "grace_period": 1}


@pytest.mark.parametrize("budgets, text", [
    ({"nosuchnet": {"num_samples": 2}}, "budgets names unknown family 'nosuchnet'"),
    ({"cnn_small": {"epochs": 2}}, "budgets must map families to"),
    ({"cnn_small": {"num_samples": 0}}, "num_samples must be at least 1 (budget of cnn_small)"),
    ({"cnn_small": {"grace_period": 3}}, "grace_period 3 is above max_epochs 2 (budget of"),
])
def test_bad_budgets(budgets, text):
    assert text in error_of(tiny(budgets=budgets))


def test_concurrent_experiments_cap() -> None:
    from bench.search import concurrent_experiments

    def spec(**kw):
        return build_spec({"name": "t", "datasets": ["breastmnist", "pneumoniamnist"],
                           "families": ["cnn_small", "mlp", "lstm"], **kw})

    six = spec(resources={"cpu": 1, "gpu": 0})
    assert concurrent_experiments(six, {"CPU": 2.0}) == 2  # as many as trials fit at once
    assert concurrent_experiments(six, {"CPU": 64.0}) == 6  # never more than experiments
    assert concurrent_experiments(six, {"CPU": 0.5}) == 1  # at least one
    assert concurrent_experiments(spec(resources={"cpu": 2, "gpu": 0}), {"CPU": 8.0}) == 4
    gpu = spec(resources={"cpu": 4, "gpu": 0.5})
    assert concurrent_experiments(gpu, {"CPU": 16.0, "GPU": 2.0}) == 4  # 4 half-GPU trials
    assert concurrent_experiments(spec(max_concurrent_experiments=3), {"CPU": 64.0}) == 3
    with pytest.raises(UserError, match="max_concurrent_experiments must be >= 0"):
        spec(max_concurrent_experiments=-1)


def test_a_preset_keeps_the_families_that_fit_the_chosen_datasets():
    """quick lists 2D and 3D families: 3D subsets get cnn3d_small with its own (smaller)
    images per trial; 2D subsets the 2D families; --families naming a misfit is still an error."""
    three = load_spec(preset="quick", datasets="adrenalmnist3d,vesselmnist3d")
    assert three.families == ["cnn3d_small"] and set(three.budgets) == {"cnn3d_small"}
    assert three.trial_epochs("cnn3d_small", 1188) < three.trial_epochs("cnn_small", 1188)
    two = load_spec(preset="quick", datasets="breastmnist")
    assert "cnn3d_small" not in two.families and "cnn_small" in two.families
    with pytest.raises(UserError, match="fits none of the datasets"):
        load_spec(preset="quick", datasets="breastmnist", families="cnn_small,cnn3d_small")


def test_budgets_trial_images_must_be_a_positive_integer():
    with pytest.raises(UserError, match="trial_images must be an integer >= 1"):
        load_spec(preset="quick", datasets="adrenalmnist3d",
                  budgets={"cnn3d_small": {"trial_images": 0}})


def test_a_param_owns_membership_typical_value_and_design_points():
    """Param is the one interpreter of a parameter: the portfolio asks `contains`, the cost plan
    `middle` and `design_point`, Tune `to_tune`, Optuna `to_optuna`."""
    depth = Param.parse("depth", {"distribution": "int_uniform", "min": 1, "max": 4}, "t")
    assert depth.contains(2) and depth.contains(4.0) and not depth.contains(2.5)
    assert not depth.contains(True) and not depth.contains(float("nan"))
    assert not depth.contains(5) and depth.middle() == 2  # round(2.5): banker's rounding
    lr = Param.parse("lr", {"distribution": "log_uniform", "min": 1e-4, "max": 1e-2}, "t")
    assert lr.middle() == pytest.approx(1e-3)  # geometric, not (1e-4 + 1e-2) / 2
    points = [lr.design_point(k, 4) for k in range(4)]
    assert points == sorted(points) and points[0] > 1e-4 and points[-1] < 1e-2
    assert points[1] * points[2] == pytest.approx(1e-6)  # symmetric about 1e-3 on a log scale
    width = Param.parse("width", {"values": [0.5, 1.0, 2.0]}, "t")
    assert width.middle() == 1.0 and [width.design_point(k, 6) for k in range(4)] == \
        [0.5, 1.0, 2.0, 0.5]
    assert width.contains(2.0) and not width.contains(3.0) and width.searched
    const = Param.parse("ema", 0.0, "t")
    assert not const.searched and const.contains(0.0) and const.to_optuna() is None


def test_a_sub_config_left_partly_unset_takes_one_default_everywhere(tmp_path):
    """`selection: {top_k: 2}` leaves seeds unset. The selection phase re-ran each candidate on
    2 seeds (search.py's default) while meta.json's reproduction block listed none (its own
    default was 0): each reader re-derived the default. Now Selection/Fidelity declare them once
    and every reader agrees."""
    from bench.experiment import reproduction
    from bench.search import selection_jobs

    spec = build_spec(tiny(selection={"top_k": 2},
                           fidelity={"trial_images": 1000, "max_epochs": 40}))
    assert spec.selection_config.seeds == 2 and spec.selection_config.top_k == 2
    cands = {("breastmnist", "cnn_small"): [{"trial_id": "a", "config": {"lr": 0.1}}]}
    ran = sorted({j["seed"] for j in selection_jobs(spec, cands)})
    assert reproduction(spec, tmp_path)["seeds"]["selection"] == ran == [1, 2]
    f = spec.fidelity_config
    assert (f.min_epochs, f.max_epochs, f.final_factor) == (1, 40, 1.0)
    assert f.grace_epochs(9) == 3 and spec.trial_epochs("cnn_small", 100) == 10
    assert spec.to_dict()["selection"] == {"top_k": 2}  # spec.yaml keeps what was written
    assert build_spec(tiny()).selection_config is None
    assert "selection.seeds must be a number in [0, 20]" in error_of(tiny(selection={"seeds": 30}))


def test_one_precedence_rule_and_none_never_hides_a_layer():
    """layered: each later layer wins, an option left out (None) leaves the earlier value.
    The experiment commands and `medbench train` both build their settings with it."""
    from bench.spaces import layered

    assert layered({"lr": 1, "epochs": 5}, {"lr": 2, "epochs": None}, None, {"lr": 3}) == \
        {"lr": 3, "epochs": 5}
    spec = load_spec(preset="quick", datasets="breastmnist", gpus_per_trial=0.5,
                     num_samples=None, final_seeds=2)
    assert spec.resources["gpu"] == 0.5 and spec.final_seeds == 2
    assert spec.num_samples == load_spec(preset="quick", datasets="breastmnist").num_samples


def test_every_spec_reads_one_fidelity_form_with_family_budgets_over_it():
    """A spec in epochs and a spec in images seen are read through one Fidelity: the trial's
    epochs, ASHA's first rung and a final seed's epochs per family. A family's `budgets`
    win over the spec's in both forms (a rule reading the spec's numbers, or the other form's
    field, gives other epochs here)."""
    from bench.budget import final_epochs

    epochs = build_spec(tiny(families=["cnn_small", "mlp"], max_epochs=10, grace_period=1,
                             budgets={"mlp": {"max_epochs": 6, "grace_period": 2}}))
    for family, n_epochs, grace in (("cnn_small", 10, 1), ("mlp", 6, 2)):
        f = epochs.fidelity_of(family)
        assert [epochs.trial_epochs(family, n) for n in (50, 546, 34_581)] == [n_epochs] * 3
        assert f.grace_epochs(n_epochs) == grace
        assert final_epochs(n_epochs, epochs.fidelity_config) == n_epochs
    images = build_spec(tiny(families=["cnn_small", "mlp"], max_epochs=10, grace_period=1,
                             fidelity={"trial_images": 5460, "max_epochs": 40,
                                       "grace_fraction": 0.5, "final_factor": 2},
                             budgets={"mlp": {"trial_images": 1092}}))
    assert images.trial_epochs("cnn_small", 546) == 10 and images.trial_epochs("mlp", 546) == 2
    assert images.trial_epochs("cnn_small", 54) == 40  # clamped by fidelity.max_epochs
    assert images.fidelity_of("cnn_small").grace_epochs(10) == 5
    assert final_epochs(10, images.fidelity_config) == 20

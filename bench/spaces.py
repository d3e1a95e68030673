"""YAML search spaces and experiment specs -> validated Python objects and Ray Tune domains.

Spaces use the shape people know from W&B sweeps: each parameter has `values` (a choice),
`value` (a constant), or `min`/`max` with a `distribution` in DISTRIBUTIONS. Unlike W&B,
`log_uniform` takes the real bounds (W&B's `log_uniform_values`, accepted as an alias).

A family's space = search_spaces/common.yaml (optimiser, lr, batch size, augmentation...) merged
with search_spaces/<family>.yaml (its own width/depth/dropout), then the experiment's overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.budget import Fidelity, in_range
from bench.errors import UserError
from bench.resources import AUTO, AUTO_RESOURCES
from bench.resources import MAX as RESOURCE_MAX
from bench.selection import Selection

DISTRIBUTIONS = ("uniform", "log_uniform", "log_uniform_values", "int_uniform", "int_log_uniform")
SEARCHERS = ("random", "optuna")
SCHEDULERS = ("asha", "fifo")
PRESETS = ("smoke", "quick", "standard", "full", "breast-recipe")


def spaces_dir() -> Path:
    """The search spaces and presets ship inside the package (so a wheel finds them); the
    checkout's top-level `search_spaces/` is a link to this folder for users who edit them."""
    return Path(__file__).resolve().parent / "search_spaces"


MAX_YAML_BYTES = 1 << 20  # a spec or config is a few kB; anything this big is a mistake


def read_yaml(path: Path, what: str = "file") -> dict[str, Any]:
    """A YAML mapping from a user's file (spec, search space, train config), or one clear
    UserError. Anchors and aliases are refused: nothing here needs them, and an alias chain
    (a "billion laughs" file of a few lines) expands to gigabytes in safe_load."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path}: no such file (not found); check the path")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise UserError(f"{path} is {path.stat().st_size} bytes, above the {MAX_YAML_BYTES} "
                        "a spec or config may have; is it the right file?")
    try:
        text = path.read_text()
        if any(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise UserError(f"{path} uses YAML aliases (*name), which medbench does not accept; "
                            "write the values out")
        obj = yaml.safe_load(text) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:  # str(e) spans lines: keep one
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or " ".join(str(e).split())
        raise UserError(f"{path} is not valid YAML ({problem}{where}); fix the syntax") from e
    if not isinstance(obj, dict):
        raise UserError(f"{path} must hold a mapping of option: value, not {type(obj).__name__}")
    return obj


PARAM_KEYS = ({"value"}, {"values"}, {"distribution", "min", "max"})
MAX_VALUES = 1000  # choices of one parameter; a longer list is a mistake (or a bomb)


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, str | int | float | bool)


@dataclass(frozen=True)
class Param:
    """One search-space parameter, validated once (`Param.parse`) and owning its distribution.

    Why a value object: the `{value | values | distribution, min, max}` mapping was read by five
    interpreters (Ray Tune domains, Optuna distributions, the portfolio's membership test, the
    cost plan's design points, the spec's value checks), each re-deciding what a key means.
    `kind` is "value" (a constant), "values" (a choice) or "range" (`distribution` over
    [min, max], int_* ones inclusive at both ends). `as_dict` gives the YAML form
    (spaces.yaml), which `parse` reads back to an equal Param."""

    kind: str
    value: Any = None
    values: tuple[Any, ...] = ()
    distribution: str = ""
    min: float = 0.0
    max: float = 0.0

    @classmethod
    def parse(cls, name: str, p: Any, where: str) -> Param:
        """One parameter definition from YAML (or a bare scalar: a constant), checked, or one
        UserError. Values are scalars: a parameter never holds a free-form mapping or list
        that could grow without bound."""
        if not isinstance(p, dict):
            if not _scalar(p):
                raise UserError(f"{where}: parameter {name!r} is a {type(p).__name__}; give a "
                                "number/string/boolean, or {values: [...]} or {min, max}")
            return cls("value", value=p)
        keys = set(p)
        if not any(keys <= allowed for allowed in PARAM_KEYS):
            raise UserError(f"{where}: parameter {name!r} has keys {sorted(map(str, keys))}; "
                            "use one of {value}, {values: [...]} or {distribution, min, max}")
        if "value" in keys:
            if not _scalar(p["value"]):
                raise UserError(f"{where}: parameter {name!r}: `value` must be a number, string "
                                f"or boolean, got {type(p['value']).__name__}")
            return cls("value", value=p["value"])
        if "values" in keys:
            if not isinstance(p["values"], list | tuple) or not p["values"]:
                raise UserError(f"{where}: parameter {name!r} needs a non-empty list of "
                                "`values`")
            if len(p["values"]) > MAX_VALUES or not all(map(_scalar, p["values"])):
                raise UserError(f"{where}: parameter {name!r}: `values` must be at most "
                                f"{MAX_VALUES} numbers, strings or booleans (no nested lists or "
                                "mappings)")
            return cls("values", values=tuple(p["values"]))
        dist = p.get("distribution", "uniform")
        if dist not in DISTRIBUTIONS:
            raise UserError(f"{where}: parameter {name!r} has unknown distribution {dist!r}; "
                            f"use one of: {', '.join(DISTRIBUTIONS)}")
        if "min" not in p or "max" not in p:
            raise UserError(f"{where}: parameter {name!r} needs `min` and `max` (or `values`)")
        try:
            if isinstance(p["min"], bool) or isinstance(p["max"], bool):
                raise TypeError
            lo, hi = float(p["min"]), float(p["max"])
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError
        except (TypeError, ValueError):
            raise UserError(f"{where}: parameter {name!r}: min/max must be finite numbers "
                            f"(got {p['min']!r}, {p['max']!r})") from None
        if lo > hi:
            raise UserError(f"{where}: parameter {name!r} has min {lo:g} > max {hi:g}; swap "
                            "them")
        if "log" in dist and lo <= 0:
            raise UserError(f"{where}: parameter {name!r}: a log distribution needs min > 0")
        if dist == "log_uniform_values":
            dist = "log_uniform"
        return cls("range", distribution=dist, min=lo, max=hi)

    @property
    def searched(self) -> bool:
        """A constant is passed to every trial as it is; only choices and ranges are searched."""
        return self.kind != "value"

    @property
    def integer(self) -> bool:
        return self.kind == "range" and self.distribution.startswith("int")

    @property
    def log(self) -> bool:
        return self.kind == "range" and "log" in self.distribution

    def as_dict(self) -> dict[str, Any]:
        """The YAML form, as a search-space file writes it."""
        if self.kind == "value":
            return {"value": self.value}
        if self.kind == "values":
            return {"values": list(self.values)}
        return {"distribution": self.distribution, "min": self.min, "max": self.max}

    def contains(self, value: Any) -> bool:
        """Whether `value` is a point of this parameter (a portfolio start point must be)."""
        if self.kind == "value":
            return value == self.value
        if self.kind == "values":
            return value in self.values
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return False
        if self.integer and float(value) != int(value):
            return False
        return self.min <= value <= self.max

    def to_tune(self) -> Any:
        """A Ray Tune domain (or the constant itself)."""
        from ray import tune

        if self.kind == "value":
            return self.value
        if self.kind == "values":
            return tune.choice(list(self.values))
        lo, hi = self.min, self.max
        if self.distribution == "uniform":
            return tune.uniform(lo, hi)
        if self.distribution == "log_uniform":
            return tune.loguniform(lo, hi)
        if self.distribution == "int_uniform":
            return tune.randint(int(lo), int(hi) + 1)  # inclusive max, as W&B
        return tune.lograndint(int(lo), int(hi) + 1)

    def to_optuna(self) -> Any:
        """An Optuna distribution, or None for a constant (not searched)."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "value":
            return None
        if self.kind == "values":
            return CategoricalDistribution(list(self.values))
        if self.integer:
            return IntDistribution(int(self.min), int(self.max), log=self.log)
        return FloatDistribution(float(self.min), float(self.max), log=self.log)

    def middle(self) -> Any:
        """The typical value: the middle listed choice, or the middle of the range (geometric
        for a log distribution)."""
        if self.kind == "value":
            return self.value
        if self.kind == "values":
            return self.values[len(self.values) // 2]
        lo, hi = self.min, self.max
        mid = math.sqrt(lo * hi) if self.log else (lo + hi) / 2
        return round(mid) if self.integer else mid

    def design_point(self, k: int, n: int) -> Any:
        """Point `k` of an `n`-point balanced design: each choice equally often (k mod the
        number of choices), a range at the (k + 0.5) / n quantile of its distribution."""
        if self.kind == "value":
            return self.value
        if self.kind == "values":
            return self.values[int(k) % len(self.values)]
        lo, hi, q = self.min, self.max, (int(k) + 0.5) / n
        x = math.exp(math.log(lo) + q * math.log(hi / lo)) if self.log else lo + q * (hi - lo)
        return round(x) if self.integer else x


@functools.lru_cache(maxsize=64)
def _space_file(path: Path, mtime_ns: int, size: int) -> dict[str, Any]:
    """A search-space file's `parameters`, read once per version of the file: a run asks for
    its spaces at validation, planning, every Tuner and the saved copy. The file's mtime and
    size are part of the key, so an edited file is read again. The mapping is shared: callers
    only read it (load_family_space copies its entries into a new mapping)."""
    del mtime_ns, size  # cache key only
    return read_yaml(path, "search space").get("parameters") or {}


def load_family_space(family: str, overrides: dict[str, Any] | None = None) -> dict[str, Param]:
    """common.yaml + <family>.yaml + overrides, every parameter validated against the trainer's
    options and the family's own hyperparameters."""
    from bench.models import get_entry
    from bench.train import TrainConfig

    entry = get_entry(family)
    params: dict[str, Any] = {}
    for path in (spaces_dir() / "common.yaml", spaces_dir() / f"{family}.yaml"):
        if path.exists():
            stat = path.stat()
            params.update(_space_file(path, stat.st_mtime_ns, stat.st_size))
    params.update(overrides or {})
    train_keys = set(TrainConfig.__dataclass_fields__) - {"model_hp"}
    allowed = train_keys | set(entry.hparams())
    out = {}
    for name, p in params.items():
        if name not in allowed:
            raise UserError(f"search space for {family!r}: {name!r} is neither a training option "
                            f"nor a hyperparameter of {family} (it takes: "
                            f"{', '.join(sorted(entry.hparams())) or 'none'})")
        out[name] = Param.parse(name, p, f"search space {family}")
    return out


@dataclass(frozen=True)
class Spec:
    """An experiment: which datasets x families, how to search, how to evaluate finally.

    Frozen: build_spec validates it once and nothing changes it afterwards (a changed copy is
    `dataclasses.replace`, validated again). Its mappings (`fidelity`, `selection`, `resources`)
    keep the form a spec file writes, so spec.yaml compares on resume; their typed readings are
    `fidelity_config`, `selection_config` and `bench.resources.Resources.of`."""

    name: str
    datasets: list[str]
    families: list[str]
    size: int = 28
    project: str = "medmnist-bench"
    searcher: str = "random"
    num_samples: int = 8
    max_concurrent_trials: int = 0  # 0: as many as resources allow
    # Tuners ((dataset, family) searches) running at once; each is a process of ~0.5 GB, so the
    # full grid (100+ pairs) must not start all at once. 0: as many as trials fit side by side.
    max_concurrent_experiments: int = 0
    time_budget_s: float = 0  # per (dataset, family) experiment; 0: none
    scheduler: str = "asha"
    grace_period: int = 1
    max_epochs: int = 10
    reduction_factor: int = 3
    # per-trial resources (bench/resources.py): `auto` is {cpu: auto, gpu: 1}: a GPU per trial
    # where the cluster has GPUs, one CPU per trial where it has none
    resources: dict[str, Any] = field(default_factory=lambda: dict(AUTO_RESOURCES))
    final_seeds: int = 5
    final_seed_base: int = 10_000  # search trials use seed 0; finals never reuse a seed
    max_failures: int = 2
    verify_md5: bool = True
    overrides: dict[str, dict] = field(default_factory=dict)  # family -> {param: def}
    budgets: dict[str, dict] = field(default_factory=dict)  # family -> smaller/larger budget
    # Compute budgets (bench/budget.py). `fidelity`: {trial_images, min_epochs, max_epochs,
    # grace_fraction, final_factor}: trials train for images seen (then max_epochs and
    # grace_period above are unused); without it, for max_epochs on every dataset (both read
    # through `fidelity_config` / `fidelity_of`). `budget_s`: wall seconds per dataset on the
    # run's resources (search, selection, final). `portfolio`: start configurations per
    # family (bench/portfolio.py). `selection`: {top_k, seeds} re-runs of the best trials
    # before the final phase.
    fidelity: dict[str, float] = field(default_factory=dict)
    budget_s: float = 0
    portfolio: int = 0
    selection: dict[str, int] = field(default_factory=dict)
    distributed: dict[str, int] = field(default_factory=dict)  # family -> Ray Train workers
    # Deterministic mode (`--deterministic`): the search stops on a fixed number of trials
    # (`fixed_trials` per family, else its num_samples), never on wall seconds; each Tuner
    # runs its trials one after another, so Optuna and ASHA see results in the same order
    # under any load; the selection and final phases run as the spec says (no budget cuts).
    # Picks and numbers then depend on the code, the data, the seeds and the kind of CPU/GPU
    # (its float kernels), not on load.
    deterministic: bool = False
    fixed_trials: dict[str, int] = field(default_factory=dict)
    # Seeds of the pipeline reference: the MedMNIST v2 recipe (ResNet-18, Adam 1e-3, x0.1 at
    # 50% and 75%, batch 128; bench.train.TRAIN_PRESETS["official"]) trained by this pipeline on
    # the first `reference_seeds` final seeds of each 2D 28 px dataset, as long as a full
    # ResNet-18 trial of the run (`trial_epochs`). Never picked; it separates the method from
    # the pipeline when the board is held against the paper. 0: off.
    reference_seeds: int = 0

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    @property
    def fidelity_config(self) -> Fidelity:
        """How long trials train (bench.budget.Fidelity): `fidelity`, typed, else
        `max_epochs` with ASHA's first rung at `grace_period` (`Fidelity.in_epochs`)."""
        if self.fidelity:
            return Fidelity(**self.fidelity)
        return Fidelity.in_epochs(self.max_epochs, self.grace_period)

    def fidelity_of(self, family: str) -> Fidelity:
        """`fidelity_config` for one family, its `budgets` over the spec's: trial_images (a
        3D CNN on a CPU sees fewer images per trial), or max_epochs and grace_period."""
        if not self.fidelity:
            b = self.budget(family)
            return Fidelity.in_epochs(b["max_epochs"], b["grace_period"])
        images = self.budgets.get(family, {}).get("trial_images")
        f = self.fidelity_config
        return dataclasses.replace(f, trial_images=images) if images else f

    @property
    def selection_config(self) -> Selection | None:
        """`selection`, typed (None: no selection phase)."""
        return Selection(**self.selection) if self.selection else None

    def budget(self, family: str) -> dict[str, int]:
        """num_samples / max_epochs / grace_period for one family: the spec's, unless
        `budgets` overrides them (a ResNet on a CPU costs ~100x a small CNN per epoch)."""
        base = {"num_samples": int(self.num_samples), "max_epochs": int(self.max_epochs),
                "grace_period": int(self.grace_period)}
        out = {**base, **{k: int(v) for k, v in self.budgets.get(family, {}).items()
                          if k in base}}
        if self.deterministic and family in self.fixed_trials:
            out["num_samples"] = int(self.fixed_trials[family])
        return out

    def trial_epochs(self, family: str, n_train: int) -> int:
        """Epochs of a full-fidelity trial of `family` on a training split of n_train images."""
        return self.fidelity_of(family).epochs(n_train)

    def pairs(self) -> list[tuple[str, str]]:
        """(dataset, family) experiments: 2D families on 2D sets, 3D on 3D."""
        from bench.data import dataset_info
        from bench.models import get_entry

        return [(d, f) for d in self.datasets for f in self.families
                if get_entry(f).dims == dataset_info(d).dims]

    def spaces(self) -> dict[str, dict[str, Param]]:
        return {f: load_family_space(f, self.overrides.get(f)) for f in self.families}


def _as_list(v: Any, key: str = "list", where: str = "spec") -> list[str]:
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    if v is None:
        return []
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
        raise UserError(f"{where}: {key} must be a list of names (or 'a,b'), got {v!r}")
    return list(v)


# Upper bounds: far above any real use (the `full` preset: 48 trials, 100 epochs, 5 seeds), low
# enough that a typo (num_samples: 1000000000) is an error, not hours of trial directories.
# field -> (type, min, max, what it means / how to fix it)
SCALAR_FIELDS: dict[str, tuple[type, float, float, str]] = {
    "num_samples": (int, 1, 10_000, "trials per experiment; budget_s or time_budget_s ends a "
                                    "search earlier"),
    "max_concurrent_trials": (int, 0, 10_000, "0: as many as resources allow"),
    "max_concurrent_experiments": (int, 0, 10_000, "0: as many as trials fit side by side"),
    "time_budget_s": (float, 0, 1e7, "wall seconds per experiment; 0: no limit"),
    "grace_period": (int, 1, 10_000, "epochs before ASHA may stop a trial"),
    "max_epochs": (int, 1, 10_000, "epochs of a full trial"),
    "reduction_factor": (float, 1.1, 100, "ASHA keeps 1/reduction_factor per rung; 3 is usual"),
    "final_seeds": (int, 0, 100, "fresh seeds per chosen config; 0: no final phase"),
    "final_seed_base": (int, 21, 2**31 - 1000, "first final seed; search and selection use "
                                               "seeds 0-20"),
    "max_failures": (int, 0, 100, "retries of a failing trial"),
}
BUDGET_KEYS = {"num_samples": 10_000, "max_epochs": 10_000, "grace_period": 10_000,
               "trial_images": 10**10}
MAX_DISTRIBUTED_WORKERS = 256


def _range_text(lo: float, hi: float) -> str:
    return f"{'>= 0' if lo == 0 else f'at least {lo:g}'} and at most {hi:g}"


def check_number(value: Any, key: str, kind: type, lo: float, hi: float, where: str,
                 fix: str = "") -> None:
    """An int (kind int: no bool, no float) or a finite number in [lo, hi], else one line."""
    ok_type = not isinstance(value, bool) and (
        isinstance(value, int) if kind is int else isinstance(value, int | float))
    if not ok_type or not lo <= value <= hi:  # NaN fails the range test too
        kind_text = "an integer" if kind is int else "a number"
        raise UserError(f"{where}: {key} must be {_range_text(lo, hi)} ({kind_text}), got "
                        f"{value!r}{'; ' + fix if fix else ''}")


def _check_fields(raw: dict[str, Any], where: str) -> None:
    """Types and ranges of every top-level field, before a Spec is built from them (so a
    string where a number belongs is one line here, not a traceback after the search)."""
    for key, (kind, lo, hi, fix) in SCALAR_FIELDS.items():
        if key in raw:
            check_number(raw[key], key, kind, lo, hi, where, fix)
    if "size" in raw and (isinstance(raw["size"], bool) or not isinstance(raw["size"], int)):
        raise UserError(f"{where}: size must be an image size (28, 64, 128 or 224), got "
                        f"{raw['size']!r}")
    if "verify_md5" in raw and not isinstance(raw["verify_md5"], bool):
        raise UserError(f"{where}: verify_md5 must be true or false, got {raw['verify_md5']!r}")
    for key in ("searcher", "scheduler"):
        if key in raw and not isinstance(raw[key], str):
            raise UserError(f"{where}: {key} must be a name, got {raw[key]!r}")
    if "project" in raw and not (isinstance(raw["project"], str)
                                 and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
                                                  raw["project"])):
        raise UserError(f"{where}: project (the W&B project) must be 1-128 letters, digits, "
                        f"'.', '_' or '-', got {raw['project']!r}")
    if raw.get("resources") == "auto":
        raw["resources"] = dict(AUTO_RESOURCES)
    for key in ("resources", "overrides", "budgets", "fidelity", "selection", "distributed",
                "fixed_trials"):
        if key in raw and raw[key] is not None and not isinstance(raw[key], dict):
            raise UserError(f"{where}: {key} must be a mapping (key: value), got "
                            f"{type(raw[key]).__name__} {raw[key]!r}")
        if raw.get(key) is None and key in raw:
            raw[key] = {}
    _check_resources(raw.get("resources", AUTO_RESOURCES), where)
    for fam, params in (raw.get("overrides") or {}).items():
        if not isinstance(params, dict):
            raise UserError(f"{where}: overrides.{fam} must map parameters to definitions "
                            f"(e.g. lr: {{values: [1.0e-3]}}), got {params!r}")
        fixed = sorted(set(params) & SET_BY_EXPERIMENT)
        if fixed:
            raise UserError(f"{where}: overrides.{fam} sets {', '.join(fixed)}, which the "
                            "experiment sets itself (datasets, families, size, max_epochs or "
                            "fidelity, seeds, resources); remove it from overrides")
    for fam, b in (raw.get("budgets") or {}).items():
        if not isinstance(b, dict):
            continue  # build_spec names the keys a budget takes
        for k, v in b.items():
            if k in BUDGET_KEYS and (isinstance(v, bool) or not isinstance(v, int)
                                     or v > BUDGET_KEYS[k]):
                raise UserError(f"{where}: budgets.{fam}.{k} must be an integer of at most "
                                f"{BUDGET_KEYS[k]:g}, got {v!r}")
    for fam, w in (raw.get("distributed") or {}).items():
        check_number(w, f"distributed.{fam} (Ray Train workers)", int, 1,
                     MAX_DISTRIBUTED_WORKERS, where, "workers per trial of that family")


# Training options each trial gets from the experiment, not from a search space.
SET_BY_EXPERIMENT = {"dataset", "model", "size", "epochs", "seed", "phase", "threads",
                     "candidate", "job"}


def _check_resources(res: Any, where: str) -> None:
    """Per-trial resources (bench/resources.py): cpu (a number or `auto`) and gpu numbers Ray
    accepts (above 1 only whole numbers), not both 0; require_gpu a boolean that needs
    gpu > 0."""
    extra = set(res) - {*RESOURCE_MAX, "require_gpu"}
    if extra:
        raise UserError(f"{where}: resources takes cpu, gpu and require_gpu (got "
                        f"{', '.join(sorted(map(str, extra)))}); e.g. "
                        "resources: {cpu: 1, gpu: 0}, or resources: auto")
    for key, hi in RESOURCE_MAX.items():
        v = res.get(key, 1 if key == "cpu" else 0)
        if key == "cpu" and v == AUTO:
            continue
        check_number(v, f"resources.{key}", float, 0, hi, where,
                     f"{key}s per trial" + (" (or auto)" if key == "cpu" else ""))
        if v > 1 and v != int(v):
            raise UserError(f"{where}: resources.{key} = {v!r}: Ray takes fractions only up to "
                            f"1; use a whole number of {key}s above 1")
    if res.get("cpu", 1) != AUTO and float(res.get("cpu", 1)) == 0 \
            and float(res.get("gpu", 0)) == 0:
        raise UserError(f"{where}: resources ask for no cpu and no gpu; a trial needs at least "
                        "one of them (e.g. resources: {cpu: 1, gpu: 0}, or resources: auto)")
    if "require_gpu" in res:
        if not isinstance(res["require_gpu"], bool):
            raise UserError(f"{where}: resources.require_gpu must be true or false, got "
                            f"{res['require_gpu']!r}")
        if res["require_gpu"] and not float(res.get("gpu", 0)) > 0:
            raise UserError(f"{where}: resources.require_gpu is true but gpu is 0; set gpu "
                            "(e.g. 1) or drop require_gpu")


def check_name(name: Any, where: str = "spec") -> str:
    """A run name names a folder under runs/ and under the Tune storage root, nothing else:
    letters, digits, `.`, `_`, `-`, starting with a letter or digit (so no `/`, `\\`, `..`, or
    hidden name), at most 100 characters."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", name) \
            or ".." in name:
        raise UserError(f"{where}: run name {name!r} must be 1-100 letters, digits, '.', '_' or "
                        "'-' (no path separators or '..'); use --out to choose a directory")
    return name


def build_spec(raw: dict[str, Any], where: str = "spec") -> Spec:
    """Dict (from YAML and CLI flags) -> a validated Spec, or one clear UserError."""
    from bench.data import check_size, dataset_info
    from bench.models import get_entry, list_models

    known = set(Spec.__dataclass_fields__)
    unknown = sorted(set(raw) - known - {"preset"})
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: "
                        f"{', '.join(sorted(known))}")
    raw = dict(raw)
    raw["datasets"] = _as_list(raw.get("datasets"), "datasets", where)
    raw["families"] = _as_list(raw.get("families"), "families", where)
    for key in ("datasets", "families"):
        twice = sorted({x for x in raw[key] if raw[key].count(x) > 1})
        if twice:
            raise UserError(f"{where}: {key} names {', '.join(twice)} more than once; list "
                            "each once")
    raw.setdefault("name", "experiment")
    check_name(raw["name"], where)
    _check_fields(raw, where)
    try:
        spec = Spec(**{k: v for k, v in raw.items() if k in known})
    except TypeError as e:
        raise UserError(f"{where}: {e}") from None
    if not spec.datasets or not spec.families:
        raise UserError(f"{where}: name at least one dataset and one family "
                        "(--datasets a,b --families x,y, or in the spec file)")
    for flag in spec.datasets:
        check_size(dataset_info(flag), spec.size)
    for flag in spec.datasets:
        if not any(p[0] == flag for p in spec.pairs()):
            dims = dataset_info(flag).dims
            raise UserError(f"{where}: no family fits {flag} ({dims}D); add a {dims}D family "
                            f"(2D: cnn_small, resnet18, ...; 3D: resnet18_3d)")
    for fam in spec.families:
        get_entry(fam)
        if not any(p[1] == fam for p in spec.pairs()):
            raise UserError(f"{where}: family {fam!r} ({get_entry(fam).dims}D) fits none of the "
                            "datasets; remove it or add a dataset of its dimension")
    if spec.searcher not in SEARCHERS:
        raise UserError(f"{where}: unknown searcher {spec.searcher!r}; use one of "
                        f"{', '.join(SEARCHERS)}")
    if spec.scheduler not in SCHEDULERS:
        raise UserError(f"{where}: unknown scheduler {spec.scheduler!r}; use one of "
                        f"{', '.join(SCHEDULERS)}")
    # Per-family settings may name any registered family; those of families this run leaves
    # out (e.g. a preset narrowed with --families) simply do not apply.
    for key in ("overrides", "budgets", "distributed", "fixed_trials"):
        per_family = getattr(spec, key) or {}
        for fam in per_family:
            if fam not in list_models():
                raise UserError(f"{where}: {key} names unknown family {fam!r}; choose from: "
                                f"{', '.join(list_models())}")
        spec = dataclasses.replace(
            spec, **{key: {f: v for f, v in per_family.items() if f in spec.families}})
    for fam, n in spec.fixed_trials.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise UserError(f"{where}: fixed_trials must map families to a trial count >= 1 "
                            f"(got {fam!r}: {n!r})")
    if not isinstance(spec.deterministic, bool):
        raise UserError(f"{where}: deterministic must be true or false "
                        f"(got {spec.deterministic!r})")
    if isinstance(spec.reference_seeds, bool) or not isinstance(spec.reference_seeds, int) \
            or not 0 <= spec.reference_seeds <= 20:
        raise UserError(f"{where}: reference_seeds is how many final seeds also train the "
                        f"official ResNet-18 recipe (0-20), got {spec.reference_seeds!r}")
    for fam, w in spec.distributed.items():
        if not isinstance(w, int) or w < 1:
            raise UserError(f"{where}: distributed must map families to a worker count >= 1 "
                            f"(got {fam!r}: {w!r})")
    for fam, b in spec.budgets.items():
        if not isinstance(b, dict) or set(b) - {"num_samples", "max_epochs", "grace_period",
                                                "trial_images"}:
            raise UserError(f"{where}: budgets must map families to num_samples / max_epochs / "
                            f"grace_period / trial_images (got {fam!r}: {b!r})")
        if "trial_images" in b and not (isinstance(b["trial_images"], int)
                                        and b["trial_images"] >= 1):
            raise UserError(f"{where}: budgets.{fam}.trial_images must be an integer >= 1 "
                            f"(got {b['trial_images']!r})")
    for fam in [None, *spec.budgets]:
        b = spec.budget(fam) if fam else spec.budget("")
        label = f" (budget of {fam})" if fam else ""
        if b["num_samples"] < 1:
            raise UserError(f"{where}: num_samples must be at least 1{label} "
                            f"(got {b['num_samples']})")
        if b["max_epochs"] < 1 or b["grace_period"] < 1:
            raise UserError(f"{where}: max_epochs and grace_period must be at least 1{label}")
        if b["grace_period"] > b["max_epochs"]:
            raise UserError(f"{where}: grace_period {b['grace_period']} is above max_epochs "
                            f"{b['max_epochs']}{label}; ASHA could never stop a trial. "
                            "Lower grace_period")
    _check_budget_fields(spec, where)
    if int(spec.final_seeds) < 0 or spec.time_budget_s < 0 or spec.max_failures < 0 \
            or int(spec.max_concurrent_experiments) < 0:
        raise UserError(f"{where}: final_seeds, time_budget_s, max_failures and "
                        "max_concurrent_experiments must be >= 0")
    try:
        spaces = spec.spaces()
    except UserError as e:  # name the spec too: an override there is the usual cause
        raise UserError(f"{where}: {e}") from None
    for fam, space in spaces.items():  # every family's space, before anything runs
        _check_space_values(spec, fam, space, where)
    return spec


# Sanity bounds on training options a search space may set (TrainConfig checks the lower ones).
OPTION_BOUNDS = {"batch_size": (1, 8192), "eval_batch_size": (0, 65_536), "lr": (0, 10),
                 "momentum": (0, 1), "weight_decay": (0, 1), "threads": (0, 1024)}
HPARAM_BOUNDS = {"dropout": (0, 0.99), "width": (0.01, 16), "depth": (1, 16),
                 "layers": (1, 16), "hidden": (1, 65_536), "stem_stride": (1, 4)}


def _check_space_values(spec: Spec, family: str, space: dict[str, dict], where: str) -> None:
    """Every value a family's space can give (each constant and choice, both ends of a
    range) is a valid training option or hyperparameter of the right type, so no trial fails
    on a bad value after the search started."""
    from bench.data import dataset_info
    from bench.models import get_entry
    from bench.train import TrainConfig

    entry = get_entry(family)
    defaults = entry.hparams()
    dataset = next((d for d in spec.datasets if dataset_info(d).dims == entry.dims),
                   spec.datasets[0])
    int_options = {n for n, f in TrainConfig.__dataclass_fields__.items() if f.type == "int"}
    for name, p in space.items():
        at = f"{where}: search space {family}, parameter {name!r}"
        is_int = name in int_options or (isinstance(defaults.get(name), int)
                                         and not isinstance(defaults.get(name), bool))
        if p.kind == "range":
            if name in defaults and not isinstance(defaults[name], int | float) \
                    or isinstance(defaults.get(name), bool):
                raise UserError(f"{at}: a {type(defaults[name]).__name__} cannot take a "
                                "min/max range; list its choices with `values`")
            if is_int and not p.integer:
                raise UserError(f"{at} is an integer; use distribution int_uniform or "
                                "int_log_uniform")
            candidates = [int(p.min), int(p.max)] if is_int else [p.min, p.max]
        else:
            candidates = [p.value] if p.kind == "value" else list(p.values)
        for v in candidates:
            bounds = OPTION_BOUNDS.get(name) or (HPARAM_BOUNDS.get(name) if name in defaults
                                                 else None)
            if name in defaults:
                d = defaults[name]
                kinds = (bool,) if isinstance(d, bool) else (str,) if isinstance(d, str) \
                    else (int,) if isinstance(d, int) else (int, float)
                if not isinstance(v, kinds) or (bool not in kinds and isinstance(v, bool)):
                    raise UserError(f"{at}: {v!r} is not {kinds[-1].__name__} like its "
                                    f"default {d!r}; fix the value")
            else:
                try:
                    TrainConfig.from_dict({"dataset": dataset, "model": family,
                                           "size": spec.size, name: v})
                except UserError as e:
                    raise UserError(f"{at}: {v!r} is not a valid value ({e})") from None
            try:  # YAML reads 1e-3 as a string; TrainConfig turns it into a number
                number = None if isinstance(v, bool) else float(v)
            except (TypeError, ValueError):
                number = None
            if bounds and number is not None and not bounds[0] <= number <= bounds[1]:
                raise UserError(f"{at}: {v!r} is outside [{bounds[0]:g}, {bounds[1]:g}]; "
                                "choose a value in that range")


def _check_budget_fields(spec: Spec, where: str) -> None:
    """fidelity / budget_s / portfolio / selection, each with its fix."""
    for key in ("fidelity", "selection"):
        if not isinstance(getattr(spec, key), dict):
            raise UserError(f"{where}: {key} must be a mapping")
    Fidelity.check(spec.fidelity, where)
    in_range(spec.budget_s, "budget_s (seconds per dataset; 0: no limit)", 0, 1e7, where)
    if isinstance(spec.portfolio, bool) or not isinstance(spec.portfolio, int) \
            or not 0 <= spec.portfolio <= 20:
        raise UserError(f"{where}: portfolio is how many start configurations per family "
                        f"(0-20), got {spec.portfolio!r}")
    Selection.check(spec.selection, where)


def layered(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """The one precedence rule of medbench's settings: each layer over the ones before it
    (defaults < preset < file < options < --set), a value of None meaning "not given" (an
    option left out), so it never hides an earlier layer's value. `medbench train` and the
    experiment commands both build their settings with it."""
    out: dict[str, Any] = {}
    for layer in layers:
        out.update({k: v for k, v in (layer or {}).items() if v is not None})
    return out


def load_spec(spec_file: Path | None = None, preset: str | None = None,
              gpus_per_trial: float | None = None, **cli: Any) -> Spec:
    """A spec from a file or a named preset, the CLI values (non-None) over it, then
    `--gpus-per-trial` over its resources; validated once (build_spec)."""
    raw: dict[str, Any] = {}
    if spec_file is not None:
        raw = read_yaml(Path(spec_file), "spec file")
        where = str(spec_file)
    else:
        preset = preset or "quick"
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        raw = read_yaml(spaces_dir() / "experiments" / f"{preset}.yaml", "preset")
        where = f"preset {preset}"
    raw = layered(raw, cli)
    if spec_file is None and cli.get("families") is None:
        raw["families"] = _families_that_fit(raw.get("families"), raw.get("datasets"))
    if gpus_per_trial is not None:
        from bench.resources import expand, with_gpus_per_trial

        asked = expand(raw.get("resources", AUTO_RESOURCES))
        if isinstance(asked, dict):  # anything else: build_spec names what is wrong with it
            raw["resources"] = with_gpus_per_trial(asked, gpus_per_trial)
    return build_spec(raw, where)


def _families_that_fit(families: Any, datasets: Any) -> Any:
    """A preset lists 2D and 3D families alike (quick: cnn_small ... cnn3d_small); the datasets
    chosen decide which apply. Unknown names, or none fitting, are left for build_spec to
    report."""
    from bench.data import dataset_info
    from bench.models import get_entry, list_models

    try:
        dims = {dataset_info(d).dims for d in _as_list(datasets)}
    except UserError:
        return families
    fit = [f for f in _as_list(families) if f in list_models() and get_entry(f).dims in dims]
    return fit or families

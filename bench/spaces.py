"""YAML search spaces and experiment specs -> validated Python objects and Ray Tune domains.

Spaces use the shape people know from W&B sweeps: each parameter has `values` (a choice),
`value` (a constant), or `min`/`max` with a `distribution` in DISTRIBUTIONS. Unlike W&B,
`log_uniform` takes the real bounds (W&B's `log_uniform_values`, accepted as an alias).

A family's space = search_spaces/common.yaml (optimiser, lr, batch size, augmentation...) merged
with search_spaces/<family>.yaml (its own width/depth/dropout), then the experiment's overrides.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.errors import UserError

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


def validate_param(name: str, p: Any, where: str) -> dict[str, Any]:
    """One parameter definition, checked; returns it normalised."""
    if not isinstance(p, dict):
        return {"value": p}  # a bare scalar is a constant
    keys = set(p)
    if "value" in keys:
        return {"value": p["value"]}
    if "values" in keys:
        if not isinstance(p["values"], list) or not p["values"]:
            raise UserError(f"{where}: parameter {name!r} needs a non-empty list of `values`")
        return {"values": list(p["values"])}
    dist = p.get("distribution", "uniform")
    if dist not in DISTRIBUTIONS:
        raise UserError(f"{where}: parameter {name!r} has unknown distribution {dist!r}; use "
                        f"one of: {', '.join(DISTRIBUTIONS)}")
    if "min" not in p or "max" not in p:
        raise UserError(f"{where}: parameter {name!r} needs `min` and `max` (or `values`)")
    try:
        lo, hi = float(p["min"]), float(p["max"])
    except (TypeError, ValueError):
        raise UserError(f"{where}: parameter {name!r}: min/max must be numbers") from None
    if lo > hi:
        raise UserError(f"{where}: parameter {name!r} has min {lo:g} > max {hi:g}; swap them")
    if "log" in dist and lo <= 0:
        raise UserError(f"{where}: parameter {name!r}: a log distribution needs min > 0")
    if dist == "log_uniform_values":
        dist = "log_uniform"
    return {"distribution": dist, "min": lo, "max": hi}


def to_tune(p: dict[str, Any]):
    """One validated parameter -> a Ray Tune domain (or a constant)."""
    from ray import tune

    if "value" in p:
        return p["value"]
    if "values" in p:
        return tune.choice(p["values"])
    lo, hi, dist = p["min"], p["max"], p["distribution"]
    if dist == "uniform":
        return tune.uniform(lo, hi)
    if dist == "log_uniform":
        return tune.loguniform(lo, hi)
    if dist == "int_uniform":
        return tune.randint(int(lo), int(hi) + 1)  # inclusive max, as W&B
    return tune.lograndint(int(lo), int(hi) + 1)


def load_family_space(family: str, overrides: dict[str, Any] | None = None) -> dict[str, dict]:
    """common.yaml + <family>.yaml + overrides, every parameter validated against the trainer's
    options and the family's own hyperparameters."""
    from bench.models import get_entry
    from bench.train import TrainConfig

    entry = get_entry(family)
    params: dict[str, Any] = {}
    for path in (spaces_dir() / "common.yaml", spaces_dir() / f"{family}.yaml"):
        if path.exists():
            params.update(read_yaml(path, "search space").get("parameters") or {})
    params.update(overrides or {})
    train_keys = set(TrainConfig.__dataclass_fields__) - {"model_hp"}
    allowed = train_keys | set(entry.hparams())
    out = {}
    for name, p in params.items():
        if name not in allowed:
            raise UserError(f"search space for {family!r}: {name!r} is neither a training option "
                            f"nor a hyperparameter of {family} (it takes: "
                            f"{', '.join(sorted(entry.hparams())) or 'none'})")
        out[name] = validate_param(name, p, f"search space {family}")
    return out


@dataclass
class Spec:
    """An experiment: which datasets x families, how to search, how to evaluate finally."""

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
    resources: dict[str, float] = field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    final_seeds: int = 5
    final_seed_base: int = 10_000  # search trials use seed 0; finals never reuse a seed
    max_failures: int = 2
    verify_md5: bool = True
    overrides: dict[str, dict] = field(default_factory=dict)  # family -> {param: def}
    budgets: dict[str, dict] = field(default_factory=dict)  # family -> smaller/larger budget
    # Compute budgets (bench/budget.py). `fidelity`: {trial_images, min_epochs, max_epochs,
    # grace_fraction}: trials train for images seen, not epochs (then max_epochs/grace_period
    # above are unused). `budget_s`: wall seconds per dataset on the run's resources (search,
    # selection, final). `portfolio`: start configurations per family (bench/portfolio.py).
    # `selection`: {top_k, seeds} re-runs of the best trials before the final phase.
    fidelity: dict[str, float] = field(default_factory=dict)
    budget_s: float = 0
    portfolio: int = 0
    selection: dict[str, int] = field(default_factory=dict)
    distributed: dict[str, int] = field(default_factory=dict)  # family -> Ray Train workers

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.__dict__)

    def budget(self, family: str) -> dict[str, int]:
        """num_samples / max_epochs / grace_period for one family: the spec's, unless
        `budgets` overrides them (a ResNet on a CPU costs ~100x a small CNN per epoch)."""
        base = {"num_samples": int(self.num_samples), "max_epochs": int(self.max_epochs),
                "grace_period": int(self.grace_period)}
        return {**base, **{k: int(v) for k, v in self.budgets.get(family, {}).items()
                           if k in base}}

    def trial_epochs(self, family: str, n_train: int) -> int:
        """Epochs of a full-fidelity trial of `family` on a training split of n_train images."""
        from bench.budget import epochs_for

        if not self.fidelity:
            return self.budget(family)["max_epochs"]
        f = self.fidelity
        # a family may see fewer images per trial (a 3D CNN on a CPU: budgets.<family>)
        images = self.budgets.get(family, {}).get("trial_images", f["trial_images"])
        return epochs_for(int(images), n_train, int(f.get("min_epochs", 1)),
                          int(f.get("max_epochs", 1000)))

    def pairs(self) -> list[tuple[str, str]]:
        """(dataset, family) experiments: 2D families on 2D sets, 3D on 3D."""
        from bench.data import dataset_info
        from bench.models import get_entry

        return [(d, f) for d in self.datasets for f in self.families
                if get_entry(f).dims == dataset_info(d).dims]

    def spaces(self) -> dict[str, dict[str, dict]]:
        return {f: load_family_space(f, self.overrides.get(f)) for f in self.families}


def _as_list(v: Any) -> list[str]:
    if isinstance(v, str):
        return [x.strip() for x in v.split(",") if x.strip()]
    return list(v or [])


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
    raw["datasets"] = _as_list(raw.get("datasets"))
    raw["families"] = _as_list(raw.get("families"))
    raw.setdefault("name", "experiment")
    check_name(raw["name"], where)
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
    for key in ("overrides", "budgets", "distributed"):
        per_family = getattr(spec, key) or {}
        for fam in per_family:
            if fam not in list_models():
                raise UserError(f"{where}: {key} names unknown family {fam!r}; choose from: "
                                f"{', '.join(list_models())}")
        setattr(spec, key, {f: v for f, v in per_family.items() if f in spec.families})
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
    if float(spec.resources.get("cpu", 1)) < 0 or float(spec.resources.get("gpu", 0)) < 0:
        raise UserError(f"{where}: resources must be non-negative")
    spec.spaces()  # validates every family's space now, before anything runs
    return spec


def _check_budget_fields(spec: Spec, where: str) -> None:
    """fidelity / budget_s / portfolio / selection, each with its fix."""
    def num(value: Any, what: str, lo: float, hi: float) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not lo <= value <= hi:
            raise UserError(f"{where}: {what} must be a number in [{lo:g}, {hi:g}], got {value!r}")
        return float(value)

    for key in ("fidelity", "selection"):
        if not isinstance(getattr(spec, key), dict):
            raise UserError(f"{where}: {key} must be a mapping")
    f = spec.fidelity
    if f:
        extra = set(f) - {"trial_images", "min_epochs", "max_epochs", "grace_fraction"}
        if extra or "trial_images" not in f:
            raise UserError(f"{where}: fidelity takes trial_images (required), min_epochs, "
                            f"max_epochs, grace_fraction (got {sorted(f)})")
        num(f["trial_images"], "fidelity.trial_images", 1, 1e10)
        lo = num(f.get("min_epochs", 1), "fidelity.min_epochs", 1, 10_000)
        num(f.get("max_epochs", 1000), "fidelity.max_epochs", lo, 10_000)
        num(f.get("grace_fraction", 1 / 3), "fidelity.grace_fraction", 0.01, 1)
    num(spec.budget_s, "budget_s (seconds per dataset; 0: no limit)", 0, 1e7)
    if isinstance(spec.portfolio, bool) or not isinstance(spec.portfolio, int) \
            or not 0 <= spec.portfolio <= 20:
        raise UserError(f"{where}: portfolio is how many start configurations per family "
                        f"(0-20), got {spec.portfolio!r}")
    sel = spec.selection
    if sel:
        if set(sel) - {"top_k", "seeds"}:
            raise UserError(f"{where}: selection takes top_k and seeds (got {sorted(sel)})")
        num(sel.get("top_k", 3), "selection.top_k", 1, 50)
        num(sel.get("seeds", 2), "selection.seeds", 0, 20)


def load_spec(spec_file: Path | None = None, preset: str | None = None,
              **cli: Any) -> Spec:
    """A spec from a file or a named preset, with CLI values (non-None) taking precedence."""
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
    raw.update({k: v for k, v in cli.items() if v is not None})
    if spec_file is None and cli.get("families") is None:
        raw["families"] = _families_that_fit(raw.get("families"), raw.get("datasets"))
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

"""`medbench`: thin Typer commands that parse, call one library function each, and print.

User mistakes raise `UserError`; `main` prints its message (no traceback) and exits 2.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from bench.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Hyperparameter search and honest benchmarking on MedMNIST.\n\n"
                       "Exit codes: 0 success; 1 runtime failure (trials failed, no final "
                       "result, a download failed); 2 usage error (bad option or input file).")


def choice(*allowed: str):
    """An option callback that accepts only `allowed` values (a usage error, exit 2, else)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in allowed:
            raise typer.BadParameter(f"{value!r} is not one of: {', '.join(allowed)}")
        return value

    return check


def _print_version(value: bool) -> None:
    if value:
        import bench

        typer.echo(f"medbench {bench.__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="print the version and exit")] = False) -> None:
    """The options every command shares (here only --version)."""

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="folder of MedMNIST .npz files "
                                              "(default: $MEDMNIST_DATA, else ~/.medmnist)")]
NoVerify = Annotated[bool, typer.Option("--no-verify", help="skip the md5 check (synthetic data)")]


def parse_sets(items: list[str]) -> dict[str, Any]:
    """`--set key=value` pairs; values parsed as YAML scalars (numbers, booleans)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set width=2")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


class _TrainCommand(typer.core.TyperCommand):
    """`medbench train` whose --help shows each option's real default (TrainConfig's).

    Why not as the options' defaults: they stay None so that an option left out does not
    replace a --preset or --config value (precedence: defaults < preset < config file <
    options < --set). And why only while printing help: reading TrainConfig imports torch,
    seconds that no other command should pay."""

    DESCRIBED = {"out": "runs/train-<dataset>-<model>-s<seed>-<time>"}

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from dataclasses import MISSING, fields

        from bench.train import TrainConfig

        defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
        saved = [(p, p.default, p.show_default) for p in self.params]
        try:  # shown, then put back: parsing must still see None for an option left out
            for param in self.params:
                name = param.name or ""
                if param.default is None and name in defaults:
                    param.default, param.show_default = defaults[name], True
                elif param.default is None and name in self.DESCRIBED:
                    param.show_default = self.DESCRIBED[name]
            super().format_help(ctx, formatter)
        finally:
            for param, default, show in saved:
                param.default, param.show_default = default, show


@app.command(cls=_TrainCommand)
def train(
    dataset: Annotated[str | None, typer.Option(help="MedMNIST flag, e.g. breastmnist")] = None,
    model: Annotated[str | None, typer.Option(help="model family (see `medbench models`)")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    lr: Annotated[float | None, typer.Option()] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd | adam | adamw | nadam")] = None,
    scheduler: Annotated[str | None, typer.Option(help="multistep | cosine | onecycle | "
                                                  "constant")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    weight_decay: Annotated[float | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    seeds: Annotated[str | None, typer.Option(
        help="comma-separated seeds, e.g. 100,101,102: one run per seed, then mean ± std, a "
             "bootstrap CI and the verdict against the published numbers")] = None,
    size: Annotated[int | None, typer.Option(help="image size: 28, 64, 128, 224")] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda")] = None,
    preset: Annotated[str | None, typer.Option(help="named preset, e.g. official")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of training options")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="extra key=value "
                                                   "(model hyperparameters too)")] = None,
    data_dir: DataDir = None,
    no_verify: NoVerify = False,
    out: Annotated[Path | None, typer.Option(help="run directory to create")] = None,
    list_options: Annotated[bool, typer.Option(
        "--list-options", help="list every training option (--set key=value) and each model's "
                               "hyperparameters with their defaults, then exit")] = False,
) -> None:
    """Train one model on one dataset and write a run directory (with --seeds: one per seed,
    plus final.parquet, so `medbench leaderboard` and `report` read it like a `medbench run`).
    Options left out take the defaults shown (--list-options lists them all), unless --preset
    or --config sets them; options given override both, and --set overrides everything."""
    if list_options:
        typer.echo(training_options_text())
        return
    from bench.results import ensure_fresh_dir
    from bench.train import TrainConfig

    if seed is not None and seeds is not None:
        raise UserError("give either --seed (one run) or --seeds (several), not both")
    seed_list = parse_seeds(seeds) if seeds is not None else None
    from bench.spaces import layered, read_yaml

    flags = {"dataset": dataset, "model": model, "epochs": epochs, "lr": lr,
             "optimizer": optimizer, "scheduler": scheduler, "batch_size": batch_size,
             "weight_decay": weight_decay, "seed": seed_list[0] if seed_list else seed,
             "size": size, "device": device}
    # the preset is applied by TrainConfig.from_dict, beneath everything given here
    cfg = layered({"preset": preset}, read_yaml(config, "config") if config else None, flags,
                  parse_sets(set_ or []))
    conf = TrainConfig.from_dict(cfg)
    tag = f"seeds{seed_list[0]}-{seed_list[-1]}" if seed_list else f"s{conf.seed}"
    out = out or Path("runs") / f"train-{conf.dataset}-{conf.model}-{tag}-" \
                                f"{time.strftime('%Y%m%d-%H%M%S')}"
    ensure_fresh_dir(out)
    from bench.train_seeds import run_training

    run_training(conf, seed_list, out, data_dir, verify_md5=not no_verify, echo=typer.echo)


def training_options_text() -> str:
    """Every TrainConfig option with its default, then each model's own hyperparameters."""
    from dataclasses import MISSING, fields

    from bench.models import get_entry, list_models
    from bench.train import TRAIN_PRESETS, TrainConfig

    lines = ["Training options (--set key=value, a --config YAML, or the flags above):"]
    for f in fields(TrainConfig):
        if f.name == "model_hp":
            continue
        default = f.default if f.default is not MISSING else "(required)"
        lines.append(f"  {f.name:<18} {default!r}")
    lines += ["", f"Presets (--preset): {', '.join(TRAIN_PRESETS)}", "",
              "Model hyperparameters (--set key=value), per family:"]
    for name in list_models():
        e = get_entry(name)
        hp = ", ".join(f"{k}={v!r}" for k, v in e.hparams().items()) or "(none)"
        lines.append(f"  {name:<22} {e.dims}D  {hp}")
    return "\n".join(lines)


def parse_seeds(text: str) -> list[int]:
    """'100,101,102' -> [100, 101, 102], or one clear error."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        seeds = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--seeds takes comma-separated integers such as 100,101,102, got "
                        f"{text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise UserError(f"--seeds needs distinct non-negative integers, got {text!r}")
    return seeds


@app.command()
def datasets(data_dir: DataDir = None,
             size: Annotated[int, typer.Option(help="image size to check")] = 28) -> None:
    """List every MedMNIST subset: task, classes, channels, split sizes, local file status."""
    from bench.data import all_flags, data_root, dataset_info, file_status

    typer.echo(f"data root: {data_root(data_dir)}")
    typer.echo(f"{'flag':<16}{'dim':<5}{'task':<28}{'cls':>4}{'ch':>4}{'train':>8}{'val':>7}"
               f"{'test':>7}  status")
    for flag in all_flags():
        i = dataset_info(flag)
        status = file_status(flag, size, data_dir) if size in i.sizes else "no such size"
        n = i.n_samples
        typer.echo(f"{flag:<16}{i.dims}D{'':<3}{i.task:<28}{i.n_classes:>4}{i.n_channels:>4}"
                   f"{n['train']:>8}{n['val']:>7}{n['test']:>7}  {status}")


@app.command()
def models() -> None:
    """List the registered model families and their hyperparameters."""
    from bench.models import get_entry, list_models

    width = max(map(len, list_models())) + 2
    for name in list_models():
        e = get_entry(name)
        hp = ", ".join(f"{k}={v!r}" for k, v in e.hparams().items())
        typer.echo(f"{name:<{width}}{e.dims}D  {hp}")


@app.command()
def synth(
    flags: Annotated[str, typer.Argument(help="comma-separated flags, or 'all'")],
    out: Annotated[Path, typer.Option(help="folder to write <flag>.npz files into")],
    size: int = 28,
    n: Annotated[str, typer.Option(help="train,val,test sample counts")] = "96,32,48",
    seed: int = 0,
) -> None:
    """Write synthetic files in the exact MedMNIST format (for tests and demos, not benchmarks)."""
    from bench.data import all_flags, write_synthetic

    names = all_flags() if flags == "all" else [f.strip() for f in flags.split(",") if f.strip()]
    try:
        counts = tuple(int(c) for c in n.split(","))
        assert len(counts) == 3 and min(counts) > 0
    except (ValueError, AssertionError):
        raise UserError(f"--n {n!r}: expected three positive counts, e.g. 96,32,48") from None
    for flag in names:
        typer.echo(write_synthetic(flag, out, size, counts, seed))  # type: ignore[arg-type]


@app.command()
def perf(
    quick: Annotated[bool, typer.Option(help="fewer repetitions (a smoke check)")] = False,
    threads: Annotated[int, typer.Option(help="torch threads for both loops")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    data_dir: DataDir = None,
    out: Annotated[Path | None, typer.Option(help="also write the results as JSON")] = None,
) -> None:
    """Benchmark our trainer against an official-style DataLoader loop, side by side."""
    from bench.tools.perf import run_perf

    run_perf(quick=quick, threads=threads, device=device, data_dir=data_dir, out=out,
             echo=typer.echo)


@dataclass
class ExperimentOptions:
    """The options `search` and `run` share, declared once: each command's signature is built
    from these fields (see `experiment_command`) and its body gets one object."""

    spec_file: Annotated[Path | None, typer.Option("--spec", help="experiment spec YAML")] = None
    preset: Annotated[str | None, typer.Option(
        help="smoke | quick | standard | full | breast-recipe")] = None
    datasets: Annotated[str | None, typer.Option(help="comma-separated flags")] = None
    families: Annotated[str | None, typer.Option(help="comma-separated model families")] = None
    name: Annotated[str | None, typer.Option(help="run name (same name = resume)")] = None
    out: Annotated[Path | None, typer.Option(help="run directory (default runs/<name>)")] = None
    storage: Annotated[str | None, typer.Option(
        help="Tune storage: path, s3:// or gs://")] = None
    address: Annotated[str | None, typer.Option(help="Ray cluster address, e.g. auto")] = None
    data_dir: DataDir = None
    wandb: Annotated[bool, typer.Option(
        "--wandb/--no-wandb", help="W&B logging (offline unless WANDB_API_KEY is set)")] = True
    no_verify: NoVerify = False
    num_samples: Annotated[int | None, typer.Option(help="trials per experiment")] = None
    max_epochs: Annotated[int | None, typer.Option()] = None
    searcher: Annotated[str | None, typer.Option(help="random | optuna")] = None
    deterministic: Annotated[bool, typer.Option(
        "--deterministic", help="a fixed number of trials (the preset's fixed_trials), one at a "
                                "time per family, instead of wall seconds: reruns give the same "
                                "picks and numbers on the same kind of CPU/GPU")] = False
    reference: Annotated[bool, typer.Option(
        "--reference", help="also train the MedMNIST v2 ResNet-18 recipe on 3 of the final "
                            "seeds of each 2D 28 px dataset (the pipeline reference row)")] = False
    gpus_per_trial: Annotated[float | None, typer.Option(
        help="GPUs each trial asks for where the cluster has GPUs (0.25: four trials share "
             "one); 0: CPU-only trials. Default: the spec's resources (auto: 1)")] = None
    wandb_project: Annotated[str | None, typer.Option(
        help="W&B project (default: $WANDB_PROJECT, else the spec's project)")] = None


def experiment_command(body: Callable[..., None]) -> Callable[..., None]:
    """Register `body(opts: ExperimentOptions, **own_options)` as a command whose options are
    ExperimentOptions' fields, then `body`'s own: Typer reads the built signature, so the
    shared options are written once instead of once per command."""
    import inspect
    from dataclasses import fields
    from typing import get_type_hints

    shared = get_type_hints(ExperimentOptions, include_extras=True)
    own = get_type_hints(body, include_extras=True)
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                annotation=shared[f.name]) for f in fields(ExperimentOptions)]
    params += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=own[p.name])
               for p in list(inspect.signature(body).parameters.values())[1:]]

    def command(**kw: Any) -> None:
        opts = ExperimentOptions(**{f.name: kw.pop(f.name) for f in fields(ExperimentOptions)})
        body(opts, **kw)

    command.__name__, command.__doc__ = body.__name__, body.__doc__
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return app.command(name=body.__name__)(command)


def experiment_spec(opts: ExperimentOptions, final_seeds: int | None = None) -> Any:
    """The spec `search`, `run` and `plan` build from their options: the spec file or preset,
    the options given over it, then `--gpus-per-trial` over its resources."""
    from bench.spaces import load_spec

    return load_spec(opts.spec_file, opts.preset, gpus_per_trial=opts.gpus_per_trial,
                     datasets=opts.datasets,
                     families=opts.families, name=opts.name, num_samples=opts.num_samples,
                     max_epochs=opts.max_epochs, final_seeds=final_seeds,
                     searcher=opts.searcher, verify_md5=False if opts.no_verify else None,
                     deterministic=True if opts.deterministic else None,
                     reference_seeds=3 if opts.reference else None)


def plan_line(spec: Any) -> str:
    """`medbench plan`'s one-line summary, printed by `medbench run` before it starts; a plan
    that cannot be made (a calibration failing on this machine) never stops the run."""
    from bench.plan import make_plan, summary_line

    try:
        return summary_line(make_plan(spec))
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - an estimate must not fail the run it describes
        return f"plan: not available ({type(e).__name__}: {str(e).splitlines()[0][:200]})"


def _experiment(opts: ExperimentOptions, final_seeds: int | None = None, final: bool = True,
                report: Path | None = None) -> Path:
    """Shared body of `search` and `run`: build the spec, then execute it into a run dir."""
    from bench.experiment import execute, final_table

    spec = experiment_spec(opts, final_seeds)
    if opts.wandb_project is not None:  # what WANDB_PROJECT says, for this command
        import os

        from bench.tracking import check_project

        os.environ["WANDB_PROJECT"] = check_project(opts.wandb_project, "--wandb-project")
    if final:
        typer.echo(plan_line(spec))
    run_dir = opts.out or Path("runs") / spec.name

    def publish_locked(meta: dict) -> None:  # runs while execute still holds the run's lock
        from bench.experiment import publish

        typer.echo(final_table(run_dir.resolve()))
        board, report_md = publish(run_dir, report, wandb=opts.wandb, project=spec.project,
                                   data_dir=opts.data_dir)
        typer.echo(board)
        typer.echo(f"report: {report_md}")

    meta = execute(spec, run_dir, storage=opts.storage, address=opts.address,
                   data_dir=opts.data_dir, wandb=opts.wandb, final=final, echo=typer.echo,
                   then=publish_locked if final else None)
    typer.echo(f"run directory: {run_dir}")
    if meta.get("problems"):  # results so far are written; the exit code says it failed
        from bench.errors import RunFailure

        raise RunFailure(f"{'; '.join(meta['problems'])} (errors above, in "
                         f"{run_dir}/trials.parquet and meta.json); fix the cause and re-run "
                         "the same command to resume")
    return run_dir


@experiment_command
def search(opts: ExperimentOptions) -> None:
    """Only the Ray Tune search phase: one Tuner per (dataset, family)."""
    _experiment(opts, final=False)


@experiment_command
def run(
    opts: ExperimentOptions,
    final_seeds: Annotated[int | None, typer.Option(help="fresh seeds per best config")] = None,
    report: Annotated[Path | None, typer.Option(help="report path (default "
                                                "<run dir>/report.md)")] = None,
) -> None:
    """The main job: search -> final seeded runs -> leaderboard -> report."""
    _experiment(opts, final_seeds=final_seeds, final=True, report=report)


@app.command()
def plan(
    spec_file: Annotated[Path | None, typer.Argument(
        help="experiment spec YAML (or --preset)", show_default=False)] = None,
    preset: Annotated[str | None, typer.Option(
        help="smoke | quick | standard | full | breast-recipe (default quick)")] = None,
    datasets: Annotated[str | None, typer.Option(help="comma-separated flags")] = None,
    families: Annotated[str | None, typer.Option(help="comma-separated model families")] = None,
    num_samples: Annotated[int | None, typer.Option(help="trials per experiment")] = None,
    final_seeds: Annotated[int | None, typer.Option(help="fresh seeds per best config")] = None,
    deterministic: Annotated[bool, typer.Option(
        "--deterministic", help="plan the deterministic mode (fixed trial counts)")] = False,
    reference: Annotated[bool, typer.Option(
        "--reference", help="price the pipeline reference's seeds too (as for `run`)")] = False,
    gpus_per_trial: Annotated[float | None, typer.Option(
        help="GPUs per trial where there are GPUs (as for `run`)")] = None,
    workers: Annotated[int | None, typer.Option(
        help="parallel trial slots for the wall times (default: this machine's)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="text | json",
                                     callback=choice("text", "json"))] = "text",
    refresh: Annotated[bool, typer.Option(
        "--refresh", help="measure this machine's training rates again (else cached)")] = False,
) -> None:
    """What a spec will cost before anything runs: per dataset x family the images to train,
    trials, re-runs and seeds, device-seconds here (measured rates) and on an A100 / H100
    (estimates), wall time on N trial slots, and the smallest ACC difference each test set
    can detect."""
    import json

    from bench.plan import format_plan, make_plan

    opts = ExperimentOptions(spec_file=spec_file, preset=preset, datasets=datasets,
                             families=families, num_samples=num_samples,
                             deterministic=deterministic, reference=reference,
                             gpus_per_trial=gpus_per_trial)
    the_plan = make_plan(experiment_spec(opts, final_seeds), workers=workers, refresh=refresh)
    typer.echo(json.dumps(the_plan, indent=2, default=str) if fmt == "json"
               else format_plan(the_plan))


RunDirs = Annotated[list[Path], typer.Argument(help="run directories (several merge)")]


@app.command()
def leaderboard(
    run_dirs: RunDirs,
    fmt: Annotated[str, typer.Option("--format", help="md | csv | json",
                                     callback=choice("md", "csv", "json"))] = "md",
    n_boot: Annotated[int, typer.Option(help="bootstrap replicates for the CI")] = 1000,
) -> None:
    """Our final results vs the published MedMNIST v2 numbers, with CIs and verdicts (for
    search-only directories: their best trials, labelled as such)."""
    from bench.leaderboard import (
        build_leaderboard,
        format_best_trials,
        format_board,
        format_summary,
        is_search_only,
        summarize,
    )

    if run_dirs and all(is_search_only(p) for p in run_dirs):
        typer.echo(format_best_trials(run_dirs, fmt=fmt))
        return
    board = build_leaderboard(run_dirs, n_boot=n_boot)
    typer.echo(format_board(board, fmt))
    if fmt == "md":
        typer.echo("\n## Across datasets\n")
        typer.echo(format_summary(summarize(board)))


@app.command()
def report(
    run_dirs: RunDirs,
    out: Annotated[Path | None, typer.Option(help="markdown file; figures go beside it "
                                             "(default <first run dir>/report.md)")] = None,
    n_boot: Annotated[int, typer.Option(help="bootstrap replicates for the CI")] = 1000,
    data_dir: Annotated[Path | None, typer.Option(help="MedMNIST files, for the misclassified "
                                                  "test images (default as `run`)")] = None,
) -> None:
    """Markdown report with PNG figures from one or more run directories."""
    from bench.provenance import command_line
    from bench.report import write_report

    out = out or Path(run_dirs[0]) / "report.md"
    written = write_report(run_dirs, out, n_boot=n_boot, data_dir=data_dir,
                           report_command=command_line(sys.argv))
    typer.echo(f"report: {written}")


@app.command()
def predict(
    images: Annotated[list[Path], typer.Argument(
        help="image files (PNG, JPEG, ...) for 2D models; volumes (.npy (D,H,W), .nii, "
             ".nii.gz) for 3D models")],
    run_dir: Annotated[Path, typer.Option("--run", help="run directory of `medbench run` or "
                                          "`medbench train`")],
    dataset: Annotated[str | None, typer.Option(
        help="the dataset the model was trained on (default: the run's only one)")] = None,
    entry: Annotated[str | None, typer.Option(
        help="a board entry by name, e.g. 'cnn_small ×5 ens' (x5 works for ×5; default: the "
             "entry the run picked on validation)")] = None,
    family: Annotated[str | None, typer.Option(
        help="a family's own entry (its seed ensemble where it has one)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="text | json",
                                     callback=choice("text", "json"))] = "text",
) -> None:
    """Classify images or volumes with the entry a run picked (as the leaderboard scored it: a
    seed ensemble averages its seeds, a blend applies its weights); multi-label models list
    every label with p > 0.5."""
    from bench.predict import format_predictions
    from bench.predict import predict as run_predict

    model, rows = run_predict(run_dir, dataset, images, family, entry)
    for r in rows:
        for note in r["warnings"]:
            typer.echo(f"warning: {note}", err=True)
    typer.echo(format_predictions(model, rows, fmt))


@app.command()
def audit(
    flags: Annotated[str, typer.Argument(help="comma-separated flags, e.g. breastmnist,"
                                         "retinamnist")],
    data_dir: DataDir = None,
    size: Annotated[int, typer.Option(help="image size: 28, 64, 128, 224")] = 28,
    fmt: Annotated[str, typer.Option("--format", help="md | json")] = "md",
    out: Annotated[Path | None, typer.Option(help="write here instead of printing (md: with "
                                             "a figure of example pairs beside it)")] = None,
    run_dir: Annotated[Path | None, typer.Option("--run", help="also save the audit into this "
                                                 "run directory, for its leaderboard")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="recompute even if cached")] = False,
) -> None:
    """Data audit: exact/near duplicates within and across splits, blank images, label balance."""
    from bench.audit import run_audit

    typer.echo(run_audit(flags, data_dir, size, fmt, out, run_dir, use_cache=not no_cache))


@app.command()
def serve(
    run_dirs: Annotated[list[Path], typer.Argument(help="run directories to show")],
    host: Annotated[str, typer.Option(help="address to listen on; anything but loopback "
                                      "exposes a page with no authentication")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8501,
    allow_host: Annotated[list[str] | None, typer.Option(
        "--allow-host", help="another host name browsers may use to reach the page (e.g. a "
                             "reverse proxy's); loopback names and --host are always "
                             "allowed")] = None,
) -> None:
    """A local web page: the runs' leaderboard and a predictor for uploaded images or volumes
    (needs the web extra: pip install 'medmnist-bench[web]')."""
    from bench.serve import serve as run_server

    code = run_server(run_dirs, host=host, port=port, echo=typer.echo,
                      allow_hosts=allow_host or ())
    if code:
        raise typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so the driver unwinds like on Ctrl-C (Ray shut down
    in order, files closed) instead of dying inside Ray's C++ threads."""


_SIGNALS: list[int] = []  # signals received; Ray re-raises a Terminated as a KeyboardInterrupt


def _on_sigterm(signum: int, frame: Any) -> None:
    _SIGNALS.append(signum)
    raise Terminated()


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (Terminated) that Typer's `Exit(130)` stands for, if any: found
    in the exception's chain, so a command that exits 130 on its own is left alone."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, KeyboardInterrupt):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def os_error_text(e: OSError) -> str:
    """What failed, where, and the space left there (writes are atomic: the file being written
    was left as it was before)."""
    import contextlib
    import errno

    text = f"{e.strerror or e}: {e.filename}" if e.filename else str(e.strerror or e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        if e.filename:  # the file system that is full, not the current directory's
            from bench.experiment import space_text

            with contextlib.suppress(OSError):
                text += f" ({space_text(e.filename)})"
        text += "; free some space and re-run the same command to resume"
    return text + "; earlier results were left intact"


STOPPED = ("stopped by {what}: trials that finished are recorded and will not train again; "
           "trials that were running start over. Resume with the same command.")


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        try:
            app()
        except SystemExit as e:  # Typer turns any KeyboardInterrupt into a silent exit 130
            stop = _interrupt_behind(e)
            if stop is None:
                raise
            raise stop from None
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt as e:
        if not isinstance(e, Terminated) and not _SIGNALS:
            typer.echo(STOPPED.format(what="Ctrl-C (SIGINT)"), err=True)
            sys.exit(130)
        typer.echo(STOPPED.format(what="SIGTERM"), err=True)
        sys.exit(143)
    except OSError as e:  # disk full, read-only, permissions: one line, exit 1
        typer.echo(f"error: {os_error_text(e)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""What a reader needs to trust a report and re-run it: how its numbers were made.

Three sections of every report, each a pure function of the run directories and the board:
- `reproduce_md`: the exact commands, the commit, the data files with their md5, the package
  versions, the seeds, the hardware and the wall time (from each run's meta.json);
- `statistics_md`: how the intervals and verdicts are computed, how many replicates, and the
  smallest difference each test set can resolve;
- `rules_md`: which of the project's rules were set while official test scores were in view,
  and the check that was not (re-split data), so a reader can weigh the headline.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench import metrics
from bench.leaderboard import official_row, read_meta

# Rules of the pipeline that were set or changed after official test-split numbers of earlier
# runs had been read (the project's history). None reads a test score at run time; the point is
# that a person who had seen test numbers chose them, so the official-split headline is not a
# clean held-out estimate. The re-split check below is.
TEST_SHAPED_RULES = (
    ("selection re-runs", "the top trials of each family are re-trained on more seeds (the spec's "
     "`selection`) and "
     "chosen by their mean validation score (bench/selection.py)"),
    ("quick fidelity", "trials train for a number of images seen (40,000), not epochs, and "
     "final seeds train as long as a trial (bench/budget.py, quick.yaml)"),
    ("3D start points", "the 3D portfolio start configurations (search_spaces/portfolio.yaml)"),
    ("the pick", "a family competes as its seed ensemble, not as its single-model row "
     "(leaderboard.pickable); test-time flips only when the paired bootstrap CI of the "
     "validation gain is above zero (leaderboard.flip_helps)"),
)


def _minutes(seconds: float | None) -> str:
    if seconds is None or pd.isna(seconds):
        return "-"
    return f"{int(seconds // 60)} min {int(round(seconds % 60))} s"


def portable_command(command: str, base: Path | None = None) -> str:
    """`command` with each absolute path (`/x/y` or `--opt=/x/y`) made relative to `base` (the
    folder the report is built from): a report is committed and read on other machines, where
    the recording machine's paths mean nothing, while a path relative to the checkout does."""
    import os
    import shlex

    base = Path(base or Path.cwd())

    def rel(token: str) -> str:
        head, eq, tail = token.partition("=") if token.startswith("--") else ("", "", token)
        if not tail.startswith("/"):
            return token
        return f"{head}{eq}{os.path.relpath(tail, base)}"

    try:
        return shlex.join(rel(t) for t in shlex.split(command))
    except ValueError:  # unbalanced quotes: shown as recorded
        return command


# What a deterministic rerun repeats. Load never changes a deterministic run, but the CPU's
# floating-point kernels do (oneDNN picks other instructions on another vendor's CPU), and a
# trial's last digits steer the searcher and ASHA; reports/README.md measures what that did.
SAME_HARDWARE = ("a rerun of the same command at the same commit on the same kind of CPU (or "
                 "GPU) and packages gives the same picks and numbers, however loaded; on other "
                 "hardware the search can go another way (other trials, numbers, even picks)")


def reproduce_md(paths: list[Path], report_command: str | None = None) -> list[str]:
    """Per run: the command that made it, its commit, whether it was deterministic, its data
    files (md5, official or not), package versions, seeds, hardware and wall time."""
    out = ["## Reproduce", ""]
    for p in paths:
        meta = read_meta(p)
        name = meta.get("name") or Path(p).name
        cmd = (portable_command(meta["command"]) if meta.get("command")
               else f"(not recorded; the spec is {Path(p).name}/spec.yaml)")
        det = meta.get("deterministic")
        mode = ("one configuration trained on fixed seeds, no search (`medbench train "
                f"--seeds`); {SAME_HARDWARE}" if meta.get("mode") == "train"
                else "deterministic: fixed trial counts, one trial at a time per family; "
                f"{SAME_HARDWARE}" if det else "wall-time budget: trial counts follow the "
                "machine's speed and load, so a rerun can search a different number of trials "
                "and pick differently")
        hw = meta.get("hardware") or {}
        cpu = f"{hw.get('cpu_model', '?')}, {hw.get('cpu_count', '?')} cores"
        gpus = hw.get("gpu_models") or []
        out += [f"**{name}**", "", "```bash", cmd, "```", "",
                f"- commit `{meta.get('git_commit') or 'unknown'}`; mode: {mode}",
                f"- hardware: {cpu}" + (f", GPUs: {', '.join(gpus)}" if gpus else ", no GPU")
                + f"; wall time {_minutes(meta.get('wall_s'))}"
                + (" (of its last resume only)" if meta.get("resumed") else "")
                + (f", finished {meta['finished_at']}" if meta.get("finished_at") else "")]
        files = meta.get("data_files") or {}
        official = meta.get("official_data") or {}
        if files:
            out.append("- data: " + "; ".join(
                f"`{f['file']}` md5 `{f['md5']}` ("
                + ("the MedMNIST release" if official.get(flag) else "not the release") + ")"
                for flag, f in files.items()))
        versions = meta.get("versions") or {}
        if versions:
            out.append("- packages: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
        seeds = meta.get("seeds") or {}
        if seeds and "search" not in seeds:  # a `medbench train --seeds` run
            out.append(f"- seeds: {_seed_list(seeds.get('final'))}")
        elif seeds:
            out.append(f"- seeds: search trials {seeds.get('search', 0)}; selection re-runs "
                       f"{_seed_list(seeds.get('selection'))}; final "
                       f"{_seed_list(seeds.get('final'))}"
                       + (f"; pipeline reference {_seed_list(seeds.get('reference'))}"
                          if seeds.get("reference") else ""))
        budget = (meta.get("budget") or {}).get("datasets") or {}
        if budget:
            out.append("- compute per dataset (device-seconds, trial wall x devices held): "
                       + "; ".join(f"{flag} {b.get('spent_device_s', 0):.0f} (search "
                                   f"{b.get('search_device_s', 0):.0f}, selection "
                                   f"{b.get('selection_device_s', 0):.0f}, final "
                                   f"{b.get('final_device_s', 0):.0f}"
                                   + (f", reference {b['reference_device_s']:.0f}"
                                      if b.get("reference_device_s") else "") + ")"
                                   for flag, b in budget.items()))
        out.append("")
    if report_command:
        out += ["This report:", "", "```bash", report_command, "```", ""]
    return out


def _seed_list(seeds: list | None) -> str:
    if not seeds:
        return "none"
    seeds = [int(s) for s in seeds]
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))) and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(map(str, seeds))


def statistics_md(board: pd.DataFrame, n_test: dict[str, int], n_boot: int) -> list[str]:
    """How the report's intervals and verdicts are made, and what each test set can resolve."""
    out = ["## How the numbers are computed", "",
           "- Metrics: medmnist's own evaluator (ACC at a 0.5 threshold on probabilities; AUC "
           "one-vs-rest, averaged over classes), on the official test split unless a row says "
           "otherwise. Balanced accuracy, sensitivity and specificity use the same hard "
           "predictions; quadratic-weighted kappa (ordinal RetinaMNIST) too.",
           f"- Intervals: 95% percentile bootstrap, {n_boot} replicates. A single-model row "
           "(mean over seeds) resamples the test images and the seeds. An ensemble row "
           "resamples the test images and, within each family, which seeds form the ensemble "
           "(drawn with replacement), so the seed-to-seed variation stays in the interval. A "
           "resampled ensemble holds fewer distinct seeds than the real one, so this interval "
           "leans a little low (the point estimate sits near its top); it is not re-centred.",
           "- Verdicts: only the declared reference per dataset gets one (ResNet-18 (28) for "
           "2D at 28 px, ResNet-18 (224) for larger 2D images, ResNet-18+3D for 3D): "
           "**above**/**below** when our interval excludes the published number, else within "
           "noise. Differences to every other published method are exploratory: shown, not "
           "judged, and not corrected for multiplicity.",
           "- Published numbers are treated as exact: the paper reports the mean of at least 3 "
           "runs without a spread, so their own run-to-run noise (likely of the size of ours) "
           "is not in any interval; a verdict is therefore, if anything, too generous.",
           "- The pipeline reference (`official-resnet18`) is the paper's ResNet-18 recipe "
           "trained by this pipeline on the same final seeds; the majority-class row predicts "
           "the training split's most common class; the prior-shift row re-weights the "
           "picked entry's test probabilities to a class prior estimated by EM from the "
           "unlabelled test images (Saerens et al. 2002): it is transductive, never picked, "
           "and tells what to expect at another prevalence.",
           "- Nothing is chosen on a test split: configurations, epochs, entries, blend weights "
           "and the tuned threshold use validation only.", ""]
    rows = []
    for flag, g in board.groupby("dataset", sort=True):
        if flag not in n_test:
            continue
        pick = g[g["picked"].fillna(False).astype(bool)]
        acc = float(pick["test_acc_mean"].iloc[0]) if len(pick) else 0.85
        half = metrics.detectable_difference(n_test[flag], acc)
        rows.append(f"| {flag} | {n_test[flag]} | ±{half:.3f} (at ACC {acc:.3f}) |")
    if rows:
        out += ["Smallest ACC difference each test set can resolve (95% half-width of a "
                "binomial proportion at the picked entry's ACC):", "",
                "| dataset | test images | resolvable ACC difference |", "|---|---|---|",
                *rows, ""]
    return out


def rules_md(board: pd.DataFrame) -> list[str]:
    """Which rules were set with official test scores in view, and where to find the check
    that was not."""
    if board.empty or not any(official_row(r) for r in board.itertuples()):
        return []
    out = ["## Rules set while official test scores were in view", "",
           "These parts of the pipeline were chosen or changed after the official test-split "
           "numbers of earlier runs had been read. Nothing reads a test score when a run "
           "makes its choices, but a person who had seen test numbers set these rules, so "
           "the official-split numbers above are not a clean held-out estimate:", ""]
    out += [f"- **{name}**: {what}." for name, what in TEST_SHAPED_RULES]
    out += ["", "The held-out check: the same three real files with their images pooled and "
            "dealt again at random into splits of the official sizes, searched after these "
            "rules were fixed (`scripts/resplit.py`; `reports/archive/resplit-cpu.md` and the "
            "re-split tables of `reports/archive/NOTES.md`). There "
            "the search is held against a hand-tuned configuration, not the published numbers, "
            "which do not apply to other splits.", ""]
    return out


def command_line(argv: list[str]) -> str | None:
    """`medbench ...` as typed, when this process is the medbench command."""
    import shlex

    if argv and Path(argv[0]).name == "medbench":
        return shlex.join(["medbench", *argv[1:]])
    return None

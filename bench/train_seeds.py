"""`medbench train`'s work once its options are parsed: load the data once, train one model, or
with --seeds one per seed, and (with --seeds) write the run directory a `medbench run` would
(final.parquet, meta.json) so that `medbench leaderboard` and `report` read it unchanged.

Why here and not in bench.cli: the command only parses options and prints; the multi-seed
pipeline (which rows, which files, which board) is library code, testable without the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

Echo = Callable[[str], Any]


def run_training(conf: Any, seeds: list[int] | None, out: Path,
                 data_dir: str | Path | None, verify_md5: bool, echo: Echo) -> None:
    """Load `conf`'s dataset (checked like `medbench run` does: an empty split is one clear
    error), then train `conf` into `out`, or each of `seeds` into its final run directory below
    `out` (`train_seeds`). `out` must already be fresh (the caller checks it); whether it is
    writable is checked once the data has passed its checks, before any training (a bad input
    found first leaves the disk untouched)."""
    from bench.data import dataset_info, from_arrays, load_arrays
    from bench.preflight import check_splits
    from bench.train import resolve_device

    arrays = load_arrays(conf.dataset, conf.size, data_dir, verify_md5=verify_md5)
    check_splits({conf.dataset: arrays})  # as `run` does: an empty split is one line, exit 2
    check_writable(out)  # a read-only --out fails now, not after the training it would hold
    data = from_arrays(dataset_info(conf.dataset), conf.size, arrays).to(
        resolve_device(conf.device))
    echo(f"{conf.dataset} ({data.info.task}, {len(data.splits['train'])} train) | "
         f"{conf.model} | {conf.optimizer} lr {conf.lr:g} | {conf.epochs} epochs | "
         f"batch {conf.batch_size} | {data.device}")
    if seeds is None:
        train_one(conf, data, out, echo)
    else:
        train_seeds(conf, data, out, seeds, data_dir, echo)


def check_writable(out: Path) -> None:
    """Create `out` (or find it) and write and remove a probe file in it: one clear line now
    (read-only file system, no permission, a file in the way) instead of an error after
    training. Folders made for the probe are removed again, so a later bad input leaves the
    disk as it was."""
    import contextlib
    import os
    import tempfile

    from bench.errors import UserError

    made = [p for p in [Path(out), *Path(out).parents] if not p.exists()]
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".medbench-probe-", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"--out {out} is not writable ({e.strerror or e}); choose another "
                        "--out") from None
    finally:
        for folder in made:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


def train_one(conf: Any, data: Any, out: Path, echo: Echo) -> Any:
    """fit with one progress line per epoch, then the training-run directory and a summary
    line; returns the FitResult."""
    from bench.results import write_training_run
    from bench.train import fit

    def progress(r: dict[str, float]) -> None:
        echo(f"epoch {int(r['epoch']):>3}/{conf.epochs}  loss {r['train_loss']:.4f}  "
             f"val_auc {r['val_auc']:.4f}  val_acc {r['val_acc']:.4f}  "
             f"{r['epoch_s']:.1f}s  {r['images_per_s']:.0f} img/s")

    result = fit(conf, data, on_epoch=progress, hflip_scores=True)
    name = f"{conf.dataset}-{conf.model}-s{conf.seed}"
    write_training_run(out, conf.to_dict(), data.info, conf.size, result, run=name)
    echo(f"best epoch {result.best_epoch} (by val AUC): val AUC {result.val['auc']:.4f} "
         f"ACC {result.val['acc']:.4f} | test AUC {result.test['auc']:.4f} "
         f"ACC {result.test['acc']:.4f} | {result.wall_s:.1f}s, "
         f"{result.train_images_per_s:.0f} img/s | {out}")
    return result


def train_seeds(conf: Any, data: Any, out: Path, seeds: list[int],
                data_dir: str | Path | None, echo: Echo) -> None:
    """`conf` trained once per seed into `final/<dataset>/<model>/seed<s>` below `out`, their
    rows in final.parquet and in meta.json what a report's Reproduce section needs (command,
    commit, versions, hardware, data md5, seeds, wall time, and whether the data file is the
    official release), as a `medbench run` writes them; then the leaderboard of `out`."""
    import time

    from bench.data import file_status
    from bench.experiment import provenance
    from bench.leaderboard import build_leaderboard, format_board
    from bench.results import final_row, final_run_dir
    from bench.rundir import RunDir

    t0, rows = time.time(), []
    for s in seeds:
        echo(f"--- seed {s} ---")
        seed_conf = replace(conf, seed=s)
        result = train_one(seed_conf, data, out / final_run_dir(conf.dataset, conf.model, s),
                           echo)
        # one device for the whole run: its device-seconds are its wall seconds
        rows.append(final_row(seed_conf.to_dict(), {**result.summary(), "history": result.history,
                                                    "device_s": result.wall_s}))
    run = RunDir(out)
    run.write_final(rows)
    run.write_meta({"name": Path(out).name, "mode": "train",
                    **provenance([conf.dataset], conf.size, data_dir),
                    "official_data": {conf.dataset: file_status(conf.dataset, conf.size,
                                                                data_dir) == "md5 ok"},
                    "seeds": {"final": list(seeds)}, "wall_s": time.time() - t0,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    echo(format_board(build_leaderboard(out)))
    echo(f"run directory: {out}  (medbench leaderboard / report read it)")

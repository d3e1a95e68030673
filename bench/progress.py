"""The progress board: a tiny Ray actor holding, per Tuner, how many of its planned trials are
done, running, pending or failed, how often trials were retried, the best validation score and
the trial-seconds spent; fed by a Tune callback in every Tuner task and printed by the driver
(`bench.search._wait_all`).

Runs in three places: the actor in its own zero-CPU worker, `ProgressCallback` inside each
Tuner task, `format_progress` on the driver.

Why the callback sends counts read from Tune's own trial list (statuses, `num_failures`) rather
than counting start/complete events: a retried trial starts again, and counting starts showed
"10 running" for 4 trials on 2 CPUs; a resumed Tuner restores finished trials without any
event. Counts from the list are right in both cases.

Output: one line per dataset (its families summed) plus one per later phase, with totals,
elapsed time and an ETA in the header, so a 114-experiment grid prints 20 lines, not 114.
`rich` lays the table out; on a terminal it is a boxed, coloured table, elsewhere (CI logs,
files) plain aligned text that the driver prints only when a count changes.
"""

from __future__ import annotations

import sys
import time
from typing import Any

_BOARD = None  # this process's progress board (set by `attach` in each Tuner task)
COUNTS = ("planned", "done", "running", "pending", "failed", "retries")
_SEND_EVERY_S = 1.0  # a callback sends its Tuner's counts at most this often (and on changes)


def start_board():
    """A fresh board actor (one per `medbench run`)."""
    import ray

    @ray.remote(num_cpus=0, max_restarts=-1)  # a node lost with it: back, counts resent
    class Board:
        def __init__(self) -> None:
            self.state: dict[str, dict] = {}

        def put(self, key: str, counts: dict) -> None:
            self.state[key] = counts

        def snapshot(self) -> dict[str, dict]:
            return self.state

    from bench.resources import on_this_node

    return Board.options(**on_this_node()).remote()  # on the driver's node, never a worker's


def attach(board) -> None:
    """Make `board` the one this process's callbacks report to."""
    global _BOARD
    _BOARD = board


def _put(key: str, counts: dict) -> None:
    """Send to this process's board, if any. A module-level function on purpose: cloudpickle
    pickles the callback class below by value together with the globals its methods name, so
    a method that named `_BOARD` itself would freeze a live actor handle into tuner.pkl, which
    cannot be unpickled after the driver is gone (resume fails)."""
    if _BOARD is not None:
        _BOARD.put.remote(key, counts)


def tuner_counts(trials: list, planned: int, metric: str) -> dict[str, Any]:
    """Counts for one Tuner from Tune's trial list (see module doc). `planned` is the Tuner's
    total number of samples (trials not yet created by the searcher are pending)."""
    status = [getattr(t, "status", "") for t in trials]
    done = status.count("TERMINATED")
    failed = status.count("ERROR")
    running = sum(s in ("RUNNING", "PAUSED") for s in status)
    planned = max(int(planned or 0), len(trials))
    # num_failures also counts the final failure of a trial that ends in error
    retries = sum(max(0, int(getattr(t, "num_failures", 0) or 0) - (s == "ERROR"))
                  for t, s in zip(trials, status, strict=True))
    best, spent = None, 0.0
    for t in trials:
        last = getattr(t, "last_result", None) or {}
        spent += float(last.get("time_total_s", 0.0) or 0.0)
        top = (getattr(t, "metric_analysis", None) or {}).get(metric, {}).get("max")
        top = last.get(metric) if top is None else top
        if isinstance(top, (int, float)) and (best is None or top > best):
            best = float(top)
    return {"planned": planned, "done": done, "running": running, "failed": failed,
            "pending": max(0, planned - done - running - failed), "retries": retries,
            "best": best, "trial_s": spent}


class ProgressCallback:
    """Tune callback -> this process's progress board. It reaches the board through a module
    global, not a captured handle: Tune pickles callbacks into tuner.pkl, and a handle from a
    killed driver's Ray session cannot be unpickled when the search resumes."""

    def __new__(cls, key: str, metric: str):
        from ray import tune

        class CB(tune.Callback):
            planned = 0
            last_sent: tuple = ()
            sent_at = 0.0

            def setup(self, stop=None, num_samples=None, total_num_samples=None, **info):
                self.planned = int(total_num_samples or num_samples or 0)

            def _send(self, trials, force: bool = False) -> None:
                counts = tuner_counts(trials, self.planned, metric)
                sig = tuple(counts[k] for k in COUNTS) + (counts["best"],)
                now = time.monotonic()
                if force or (sig != self.last_sent and now - self.sent_at >= _SEND_EVERY_S):
                    self.last_sent, self.sent_at = sig, now
                    _put(key, counts)

            def on_step_end(self, iteration, trials, **info):
                self._send(trials)

            def on_trial_complete(self, iteration, trials, trial, **info):
                self._send(trials, force=True)

            def on_trial_error(self, iteration, trials, trial, **info):
                self._send(trials, force=True)

            def on_experiment_end(self, trials, **info):
                self._send(trials, force=True)

        return CB()


def group_rows(state: dict[str, dict]) -> dict[str, dict]:
    """Per dataset (search Tuners are keyed `dataset/family`) and per later phase: summed."""
    rows: dict[str, dict] = {}
    for key in sorted(state, key=lambda k: ("/" not in k, k)):
        name = key.split("/", 1)[0]
        row = rows.setdefault(name, {k: 0 for k in COUNTS} | {"best": None, "trial_s": 0.0,
                                                             "tuners": 0})
        s = state[key]
        for k in COUNTS:
            row[k] += int(s.get(k, 0))
        row["trial_s"] += float(s.get("trial_s", 0.0))
        row["tuners"] += 1
        if s.get("best") is not None and (row["best"] is None or s["best"] > row["best"]):
            row["best"] = s["best"]
    return rows


def eta_s(state: dict[str, dict], elapsed: float) -> float | None:
    """Remaining seconds at the pace so far (finished trials per second); None before any."""
    finished = sum(int(s.get("done", 0)) + int(s.get("failed", 0)) for s in state.values())
    left = sum(int(s.get("pending", 0)) + int(s.get("running", 0)) for s in state.values())
    if not finished or elapsed <= 0:
        return None
    return left * elapsed / finished


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"


def format_progress(state: dict[str, dict], elapsed: float, terminal: bool | None = None,
                    width: int = 100) -> str:
    """The board as text: a header (elapsed, totals, ETA) and one line per dataset/phase.
    `terminal` (default: whether stdout is one) picks colours and box lines."""
    from io import StringIO

    from rich import box
    from rich.console import Console
    from rich.table import Table

    terminal = sys.stdout.isatty() if terminal is None else terminal
    rows = group_rows(state)
    tot = {k: sum(r[k] for r in rows.values()) for k in COUNTS}
    spent = sum(r["trial_s"] for r in rows.values())
    header = (f"[{_hms(elapsed)} elapsed] {tot['done']}/{tot['planned']} trials done, "
              f"{tot['running']} running, {tot['pending']} pending, {tot['failed']} failed, "
              f"{tot['retries']} retries | ETA {_hms(eta_s(state, elapsed))} | "
              f"{spent:.0f} trial-s")
    table = Table(box=box.SIMPLE if terminal else None, show_edge=terminal, pad_edge=False,
                  header_style="bold" if terminal else "")
    columns = ["dataset / phase", "done", "running", "pending", "failed", "retries",
               "best val AUC"]
    # Off a terminal the rows hold counts only, so the driver prints again only when a count
    # changes (trial-seconds grow every epoch; their total is in the header).
    columns += ["trial-s"] if terminal else []
    for col in columns:
        table.add_column(col, justify="left" if col.startswith("dataset") else "right",
                         no_wrap=True)
    for name, r in rows.items():
        failed = f"[red]{r['failed']}[/red]" if terminal and r["failed"] else str(r["failed"])
        cells = [name, f"{r['done']}/{r['planned']}", str(r["running"]), str(r["pending"]),
                 failed, str(r["retries"]), f"{r['best']:.4f}" if r["best"] is not None else "-"]
        table.add_row(*cells, *([f"{r['trial_s']:.0f}"] if terminal else []))
    buf = StringIO()
    Console(file=buf, width=width, force_terminal=terminal, no_color=not terminal,
            highlight=False).print(table)
    body = "\n".join(line.rstrip() for line in buf.getvalue().rstrip().splitlines())
    return f"{header}\n{body}"

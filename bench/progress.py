"""The progress board: a tiny Ray actor that counts running / done / failed trials and the best
validation score per experiment, fed by a Tune callback in every Tuner task and printed by the
driver (`bench.search._wait_all`).

Runs in three places: the actor in its own zero-CPU worker, `ProgressCallback` inside each
Tuner task, `format_progress` on the driver.
"""

from __future__ import annotations

import time

_BOARD = None  # this process's progress board (set by `attach` in each Tuner task)


def start_board():
    """A fresh board actor (one per `medbench run`)."""
    import ray

    @ray.remote(num_cpus=0)
    class Board:
        def __init__(self) -> None:
            self.state: dict[str, dict] = {}

        def update(self, key: str, event: str, value: float | None = None) -> None:
            s = self.state.setdefault(key, {"running": 0, "done": 0, "failed": 0, "best": None,
                                            "t0": time.time()})
            if event == "start":
                s["running"] += 1
            elif event in ("done", "failed"):
                s["running"] = max(0, s["running"] - 1)
                s[event] += 1
            elif value is not None and (s["best"] is None or value > s["best"]):
                s["best"] = value

        def snapshot(self) -> dict[str, dict]:
            return self.state

    return Board.remote()


def attach(board) -> None:
    """Make `board` the one this process's callbacks report to."""
    global _BOARD
    _BOARD = board


def _board_update(key: str, event: str, value: float | None = None) -> None:
    if _BOARD is not None:
        _BOARD.update.remote(key, event, value)


class ProgressCallback:
    """Tune callback -> this process's progress board. It reaches the board through a module
    global, not a captured handle: Tune pickles callbacks into tuner.pkl, and a handle from a
    killed driver's Ray session cannot be unpickled when the search resumes."""

    def __new__(cls, key: str, metric: str):
        from ray import tune

        class CB(tune.Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                _board_update(key, "start")

            def on_trial_result(self, iteration, trials, trial, result, **info):
                _board_update(key, "result", result.get(metric))

            def on_trial_complete(self, iteration, trials, trial, **info):
                _board_update(key, "done")

            def on_trial_error(self, iteration, trials, trial, **info):
                _board_update(key, "failed")

        return CB()


def format_progress(state: dict[str, dict], elapsed: float) -> str:
    lines = [f"[{elapsed:6.0f}s] {'experiment':<28}{'run':>4}{'done':>5}{'fail':>5}"
             f"{'best val AUC':>14}"]
    for key in sorted(state):
        s = state[key]
        best = f"{s['best']:.4f}" if s["best"] is not None else "-"
        lines.append(f"{'':9}{key:<28}{s['running']:>4}{s['done']:>5}{s['failed']:>5}{best:>14}")
    return "\n".join(lines)

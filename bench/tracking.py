"""Weights & Biases tracking: the one module in the project that knows about ``wandb``.

Why it is shaped this way:

* ``wandb`` is imported lazily, inside functions, so ``import bench.tracking`` is cheap, works on a
  machine where W&B was never configured, and a disabled tracker never imports it at all.
* Tracking is optional telemetry, never a reason for a benchmark to fail. Every call into ``wandb``
  (``init``, ``log``, ``finish``) is wrapped: on an error we warn once per process and kind of
  failure (``warnings.warn``), and the run turns into a no-op. An online ``init`` that fails falls
  back to an offline run in the same directory (``wandb sync`` uploads it later); after the first
  online failure a process goes straight to offline so later trials do not wait again.
* An unreachable server is found once, on the driver, with a plain TCP connect to the W&B host
  (:func:`_server_reachable`, a few seconds at most) before any trial starts: ``wandb.init`` would
  otherwise retry for its whole ``init_timeout`` in every Ray worker process.
* :class:`Tracker` is a small frozen dataclass so it pickles cheaply to Ray worker processes. Its
  ``mode`` is resolved once on the driver (:meth:`Tracker.from_env`) and is the one switch:
  ``online``, ``offline`` or ``disabled``.
* Search trials are logged from outside the trial, by a Tune callback
  (:func:`trial_runs_callback`) in the process that runs their Tuner. Logged from inside, a trial
  that ASHA stops at a rung lost its record: Tune raises ``SystemExit`` in the trial's thread and
  ends the worker process without waiting for it, so wandb's service could be torn down before
  the offline run was written (runs were lost that way, despite an exit hook that finished open
  runs first; reports/archive/measured-in-code.md). The Tuner's process outlives every trial
  it runs, and Tune tells its callbacks every reported epoch and every end (finished, stopped by the
  scheduler, failed), so each run is finished there, in order, by a process nobody kills.
* That is Ray's ``WandbLoggerCallback`` idea (results logged driver side, one W&B run per trial)
  without its cost and gaps: it starts two extra Ray actors per trial (a logging actor and a
  queue, kept alive until the trial ends), its ``init`` failure is not degraded to offline, and
  it has neither our offline default, our run ids nor our grouping. wandb 0.31 keeps several
  runs open in one process (``reinit="create_new"``, logging through each ``Run`` object), so one
  process holds the runs of all its Tuner's running trials. We keep Ray's conventions: one run per
  trial, its id from the trial id (``resume="allow"``), so a restarted trial continues its run
  (offline, a trial restarted by a resumed Tuner writes a second offline directory under the same
  id; a trial retried within one Tuner stays in its run). A resumed Tuner gives no events for
  trials it restored as finished, so their runs are left alone.
* Final and selection runs are still logged inside their trial: nothing stops those early, and
  each finishes its run before its last ``tune.report``. For runs a process still holds when it
  exits, the first run it starts registers :func:`_finish_open_runs` with ``atexit`` *after*
  wandb registered its teardown; exit hooks run last-registered first, so open runs are finished
  while wandb's service is still alive.
* Each epoch is logged with ``commit=True``: a row logged at an explicit step is otherwise held
  back until the next step arrives, and a trial stopped after its first epoch had no history.
* Runs in one process are kept apart: ``reinit="create_new"`` and logging through the ``Run``
  object (never ``wandb.log``); a run a crashed trial left open is finished before the next starts.
* The API key is never passed to ``wandb`` by us, never put in config, and never written to a file
  or a log; ``wandb`` reads it from ``WANDB_API_KEY`` itself. A test greps the run directory for it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import math
import os
import re
import socket
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

if TYPE_CHECKING:  # pragma: no cover - typing only; pandas is not needed to import this module
    import pandas as pd

__all__ = [
    "TrackedRun",
    "Tracker",
    "TrackingWarning",
    "log_leaderboard",
    "run_id",
    "trial_runs_callback",
]

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")
# File under <root>/wandb/ where every started run appends the mode it really used, so the
# driver can tell "online", "offline", or "fallback" (online asked, some runs went offline).
MODES_FILE = "medbench-modes.txt"
# File under <root>/wandb/ where each search trial's run appends `<run id> <step> <score>` for
# every epoch it logged: a trial that a resumed Tuner (a new process) restarts replays its
# completion record, and without this its run would get every epoch it holds a second time.
STEPS_FILE = "medbench-steps.txt"

# Seconds an online ``wandb.init`` may take before we fall back to offline (once per process).
# Overridable with MEDBENCH_WANDB_INIT_TIMEOUT for slow-but-working networks.
DEFAULT_INIT_TIMEOUT_S = 8.0
# Seconds the driver's reachability probe may take (TCP connect to the W&B host).
DEFAULT_PROBE_TIMEOUT_S = 3.0
# Seconds ``finish`` may spend uploading at the end of an online run; the rest stays on disk for
# ``wandb sync``. Offline runs upload nothing, so their finish is fast regardless.
DEFAULT_FINISH_TIMEOUT_S = 60.0
# Seconds the exit hook waits for a trial thread's own in-flight ``finish``.
EXIT_WAIT_S = 30.0

# Process-wide state. Kinds of failure we have already warned about (warn once, then log at DEBUG)
# and whether online init failed here (then later runs in this process go offline at once).
_WARNED: set[str] = set()
_ONLINE_FAILED: bool = False
# Runs this process started and has not finished yet (see Tracker.start: one at a time).
_OPEN: list[_WandbRun] = []
_OPEN_LOCK = threading.Lock()
_EXIT_HOOK_REGISTERED = False


_PROJECT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_project(name: str, where: str) -> str:
    """A W&B project name (what a spec's ``project`` may be), or a UserError naming ``where``."""
    from bench.errors import UserError

    if not _PROJECT_RE.fullmatch(name or ""):
        raise UserError(f"{where}: the W&B project must be 1-128 letters, digits, '.', '_' or "
                        f"'-', got {name!r}")
    return name


def resolve_project(project: str) -> str:
    """The W&B project runs go to: ``WANDB_PROJECT`` when set (a cluster's or a shell's
    setting, and what ``--wandb-project`` sets), else the spec's ``project``. Read on the
    driver only: the resolved name travels inside the pickled :class:`Tracker`, so worker
    nodes need not share the driver's environment."""
    env = os.environ.get("WANDB_PROJECT", "").strip()
    return check_project(env, "$WANDB_PROJECT") if env else project


class TrackingWarning(UserWarning):
    """Emitted when W&B fails and tracking degrades; the benchmark itself carries on."""


def _warn_once(kind: str, message: str) -> None:
    """Warn the first time a kind of W&B failure happens in this process; DEBUG-log the rest.

    Why: a sweep of hundreds of trials with W&B down would otherwise print hundreds of identical
    warnings and bury the benchmark's own output.
    """
    if kind in _WARNED:
        log.debug("W&B %s: %s", kind, message)
        return
    _WARNED.add(kind)
    warnings.warn(f"W&B tracking degraded ({kind}): {message}", TrackingWarning, stacklevel=3)
    log.warning("W&B tracking degraded (%s): %s", kind, message)


def _reset_process_state() -> None:
    """Forget warn-once and online-failure memory (for tests)."""
    global _ONLINE_FAILED
    _WARNED.clear()
    _ONLINE_FAILED = False


def _env_float(name: str, default: float) -> float:
    """A float from the environment, or the default when unset or malformed."""
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


def _resolve_mode(wanted: bool) -> str:
    """The W&B mode implied by ``wanted`` and the environment (see :meth:`Tracker.from_env`)."""
    if not wanted:
        return "disabled"
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in ("disabled", "off"):
        return "disabled"
    if env_mode in ("offline", "dryrun"):
        return "offline"
    if env_mode in ("online", "run"):
        return "online"
    if os.environ.get("WANDB_API_KEY", "").strip():
        return "online"
    return "offline"


def _server_reachable(timeout: float) -> tuple[bool, str]:
    """Whether a TCP connection to the W&B server (``WANDB_BASE_URL``) opens within ``timeout``.

    Why: with the server unreachable, ``wandb.init`` retries until its ``init_timeout`` in every
    process that starts a run; one connect on the driver settles it for the whole benchmark.
    """
    url = os.environ.get("WANDB_BASE_URL", "").strip() or "https://api.wandb.ai"
    parsed = urlparse(url if "://" in url else f"https://{url}")
    host = parsed.hostname or "api.wandb.ai"
    try:
        port = parsed.port or (80 if parsed.scheme == "http" else 443)
    except ValueError:
        return False, f"{url} has an invalid port"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        return False, f"cannot connect to {host}:{port} ({err})"
    return True, ""


_WANDB_MODE_VALUES = ("online", "offline", "shared", "disabled", "dryrun", "run")


def _drop_invalid_wandb_mode() -> None:
    """Remove an empty or unknown ``WANDB_MODE`` from the environment before ``wandb.init``.

    Why: ``wandb.init`` validates ``WANDB_MODE`` even when a mode is passed explicitly, and an
    empty value fails it. Ray's runtime_env ``env_vars: {WANDB_MODE: ${WANDB_MODE}}`` produces
    exactly that on a node where the variable is unset (Ray substitutes ""). Our mode was
    already resolved by :meth:`Tracker.from_env`, so the variable carries nothing we need.
    """
    value = os.environ.get("WANDB_MODE")
    if value is not None and value.strip().lower() not in _WANDB_MODE_VALUES:
        log.debug("ignoring WANDB_MODE=%r (not a W&B mode)", value)
        del os.environ["WANDB_MODE"]
    elif value is not None and value != value.strip().lower():
        os.environ["WANDB_MODE"] = value.strip().lower()


def _plain(value: Any) -> Any:
    """Make a config value JSON-friendly (paths, tuples, sets, nested mappings).

    Why: ``wandb`` rejects or mangles some Python types in config; a config is for reading on a
    dashboard, so a faithful string is better than a failed ``init``.
    """
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)


def run_id(experiment: str, key: str) -> str:
    """A W&B run id for ``key`` (e.g. a Tune trial id) inside ``experiment``.

    Deterministic, so a restarted trial resumes its run. W&B ids allow letters, digits, ``-`` and
    ``_`` and must be unique per project; the experiment name keeps two runs' trials apart, and a
    long or exotic name is shortened with a hash of the whole so it stays unique.
    """
    raw = f"{experiment}-{key}" if experiment else key
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")
    if clean == raw and len(clean) <= 64:
        return clean
    digest = hashlib.sha1(raw.encode()).hexdigest()[:10]
    return f"{clean[:53]}-{digest}"


def _settings(mode: str) -> Any:
    """``wandb.Settings`` for our runs: quiet, no console capture, bounded timeouts.

    Unknown field names are dropped so an older or newer ``wandb`` that lacks one of them still
    works (``wandb.Settings`` forbids extra fields).
    """
    import wandb

    wanted: dict[str, Any] = {
        "silent": True,
        "quiet": True,
        "console": "off",  # Ray already captures trial output; no output.log copy
        "disable_git": True,  # a git remote URL can carry a token; the run dir records the commit
        "save_code": False,
        # requirements.txt is a full package scan per run, most of what a run costs; the
        # benchmark's run directory already records the environment once.
        "x_save_requirements": False,
        "reinit": "create_new",
        "init_timeout": _env_float("MEDBENCH_WANDB_INIT_TIMEOUT", DEFAULT_INIT_TIMEOUT_S),
    }
    if mode == "online":
        wanted["finish_timeout"] = _env_float(
            "MEDBENCH_WANDB_FINISH_TIMEOUT", DEFAULT_FINISH_TIMEOUT_S
        )
    fields = getattr(wandb.Settings, "model_fields", None)
    if fields is not None:
        wanted = {k: v for k, v in wanted.items() if k in fields}
    return wandb.Settings(**wanted)


class TrackedRun:
    """One tracked run. This base class is the no-op used when tracking is off or W&B failed.

    Why a class with a no-op base: callers write ``run.log(...)`` / ``run.finish(...)``
    unconditionally, with no ``if`` branches scattered through training code.
    It is also a context manager: ``with tracker.start(...) as run:`` finishes the run and marks
    it failed (exit code 1) if the block raised.
    """

    live: bool = False  # True while a real W&B run is open
    dir: Path | None = None  # the W&B run directory, when there is one

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Record a dict of metrics, optionally at an explicit step (e.g. the epoch)."""

    def finish(self, summary: Mapping[str, Any] | None = None, *, exit_code: int = 0) -> None:
        """Write final summary values and close the run. Safe to call more than once."""

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Ray Tune ends a stopped trial (ASHA, max epochs) with SystemExit(0) raised inside
        # tune.report: a clean stop, not a failure.
        clean = exc is None or (isinstance(exc, SystemExit) and exc.code in (0, None))
        self.finish(exit_code=0 if clean else 1)


def _finish_stale_runs() -> None:
    """Finish runs this process left open before a new one starts (not the concurrent ones a
    Tune callback holds for the trials still running).

    Why: a Ray worker runs trial after trial (``reuse_actors``), one at a time. A trial whose
    code never reached ``finish`` would otherwise stay open until the worker ends, and a later
    ``wandb.init`` must not mix its records with the new trial's.
    """
    with _OPEN_LOCK:
        stale = [run for run in _OPEN if run.exclusive]
    for run in stale:
        log.debug("finishing W&B run left open by an earlier trial in this process")
        run.finish()


def _finish_open_runs() -> None:
    """Exit hook: finish every run still open, or wait for a finish already under way.

    Registered after wandb's own service teardown hook, so it runs before it (see module doc).
    A run Tune stopped is a clean stop: exit code 0.
    """
    with _OPEN_LOCK:
        runs = list(_OPEN)
    for run in runs:
        run.finish(wait_s=EXIT_WAIT_S)


def _register_exit_hook() -> None:
    global _EXIT_HOOK_REGISTERED
    if not _EXIT_HOOK_REGISTERED:
        atexit.register(_finish_open_runs)
        _EXIT_HOOK_REGISTERED = True


class _WandbRun(TrackedRun):
    """A live ``wandb`` run; any error turns it into a no-op (after one warning)."""

    live = True

    def __init__(self, run: Any, exclusive: bool = True) -> None:
        self._run: Any = run
        self.exclusive = exclusive  # one at a time in its process (see _finish_stale_runs)
        # Held for the whole of finish: the exit hook waits on it for a trial thread's finish.
        self._finishing = threading.Lock()
        self.dir = Path(run.dir).parent if getattr(run, "dir", None) else None
        with _OPEN_LOCK:
            _OPEN.append(self)

    def _forget(self) -> None:
        with _OPEN_LOCK, contextlib.suppress(ValueError):
            _OPEN.remove(self)

    def _fail(self, kind: str, err: BaseException) -> None:
        """Stop talking to W&B for this run after an error; try to close it quietly."""
        _warn_once(kind, f"{type(err).__name__}: {err}")
        run, self._run, self.live = self._run, None, False
        self._forget()
        if run is not None:
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._run is None:
            return
        try:
            self._run.log(dict(metrics), step=step, commit=True)
        except Exception as err:
            self._fail("log", err)

    def finish(
        self,
        summary: Mapping[str, Any] | None = None,
        *,
        exit_code: int = 0,
        wait_s: float = -1,
    ) -> None:
        if not self._finishing.acquire(timeout=wait_s):
            log.debug("W&B finish still running after %.0f s; leaving it", wait_s)
            return
        try:
            run = self._run
            if run is None:
                return
            self._run, self.live = None, False
            try:
                if summary:
                    run.summary.update({str(k): _plain(v) for k, v in summary.items()})
                run.finish(exit_code=exit_code)
            except Exception as err:
                _warn_once("finish", f"{type(err).__name__}: {err}")
                with contextlib.suppress(Exception):
                    run.finish(exit_code=1)
            finally:
                self._forget()
        finally:
            self._finishing.release()


@dataclass(frozen=True)
class Tracker:
    """Where and how runs are tracked. Frozen and tiny so it pickles to Ray workers.

    ``root`` is the benchmark's run directory (absolute); W&B writes ``<root>/wandb/...``, so
    offline runs land in ``<root>/wandb/offline-run-*`` next to the results they describe.
    ``mode`` is ``online``, ``offline`` or ``disabled``; ``requested`` is what the user's
    environment asked for (``online`` with ``mode`` ``offline`` means the server was unreachable).
    ``experiment`` (the run name) goes into every run's group and tags, so runs of different
    benchmark runs never merge in the W&B UI.
    """

    project: str
    root: str
    mode: str = "offline"
    experiment: str = ""
    requested: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Tracker mode must be one of {MODES}, got {self.mode!r}")

    @classmethod
    def from_env(
        cls, wanted: bool, project: str, root: str | Path, experiment: str | None = None
    ) -> Tracker:
        """Resolve the mode and the project once, on the driver, from ``wanted`` and the
        environment (``WANDB_PROJECT`` over the spec's ``project``: :func:`resolve_project`).

        ``disabled`` if not wanted (or ``WANDB_MODE=disabled``); ``online`` if
        ``WANDB_MODE=online`` or ``WANDB_API_KEY`` is set (and ``WANDB_MODE`` isn't
        offline/disabled) and the server answers; otherwise ``offline``. Offline is the default
        because it needs no account or network and the runs can still be uploaded later with
        ``wandb sync``. ``root`` is made absolute because Ray workers run elsewhere; the
        experiment name defaults to the run directory's name.
        """
        root_path = Path(root).expanduser().resolve()
        project = resolve_project(project)
        requested = _resolve_mode(wanted)
        mode = requested
        if mode == "online":
            ok, why = _server_reachable(
                _env_float("MEDBENCH_WANDB_PROBE_TIMEOUT", DEFAULT_PROBE_TIMEOUT_S)
            )
            if not ok:
                _warn_once(
                    "init-online",
                    f"W&B server unreachable: {why}; logging offline under {root_path}/wandb"
                    " instead (upload later with `wandb sync`)",
                )
                mode = "offline"
        return cls(
            project=project,
            root=str(root_path),
            mode=mode,
            experiment=experiment if experiment is not None else root_path.name,
            requested=requested,
        )

    def start(
        self,
        *,
        name: str,
        group: str,
        job_type: str,
        config: Mapping[str, Any],
        tags: list[str] | None = None,
        key: str | None = None,
        concurrent: bool = False,
    ) -> TrackedRun:
        """Start a run; returns a no-op :class:`TrackedRun` when disabled or when W&B fails.

        ``group`` ties runs together in the W&B UI (e.g. all trials of one dataset x family
        search); it is prefixed with the experiment name, which is also added to ``tags``.
        ``job_type`` says what the run is (``search``, ``final``, ``leaderboard``). ``key`` (a Tune
        trial id) makes the run id deterministic and resumable: a restarted trial continues its
        run. Finish a run before starting the next one in the same process (a run left open is
        finished by the next ``start``), unless ``concurrent``: then other open runs stay open
        (the callback that logs every running trial of a Tuner).
        """
        if self.mode == "disabled":
            return TrackedRun()
        os.environ.setdefault("WANDB_SILENT", "true")  # the login banner ignores Settings.silent
        _drop_invalid_wandb_mode()
        try:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            _warn_once("init", f"cannot create run directory {self.root}: {err}")
            return TrackedRun()
        all_tags = [self.experiment] if self.experiment else []
        all_tags += [t for t in (tags or []) if t not in all_tags]
        kwargs: dict[str, Any] = dict(
            project=self.project,
            dir=self.root,
            name=name,
            group=f"{self.experiment}/{group}" if self.experiment else group,
            job_type=job_type,
            config=_plain(dict(config)),
            tags=all_tags or None,
        )
        if key:
            kwargs.update(id=run_id(self.experiment, key), resume="allow")
        if not concurrent:
            _finish_stale_runs()
        mode = self.mode
        global _ONLINE_FAILED
        if mode == "online" and _ONLINE_FAILED:
            mode = "offline"
        if mode == "online":
            run = self._init("online", kwargs, not concurrent)
            if run is not None:
                return run
            _ONLINE_FAILED = True
            mode = "offline"
        run = self._init(mode, kwargs, not concurrent)
        return run if run is not None else TrackedRun()

    def _init(self, mode: str, kwargs: dict[str, Any], exclusive: bool = True) -> _WandbRun | None:
        """One ``wandb.init`` attempt; ``None`` (after a warning) when it fails."""
        try:
            import wandb

            run = wandb.init(mode=mode, settings=_settings(mode), **kwargs)
        except Exception as err:
            hint = (
                f"; logging offline under {self.root}/wandb instead"
                " (upload later with `wandb sync`)"
                if mode == "online"
                else "; this run is not tracked"
            )
            _warn_once(f"init-{mode}", f"wandb.init failed: {type(err).__name__}: {err}{hint}")
            return None
        if run is None or not hasattr(run, "log"):
            return None
        _register_exit_hook()  # after wandb registered its teardown: ours runs first
        self._record_mode(mode)
        return _WandbRun(run, exclusive)

    def _record_mode(self, mode: str) -> None:
        """Append the mode a run really used to ``<root>/wandb/medbench-modes.txt``.

        One short ``O_APPEND`` write per run, so concurrent workers never interleave lines.
        """
        _append_line(Path(self.root) / "wandb" / MODES_FILE, mode)

    def used_mode(self) -> str:
        """The mode the runs really used: ``online``, ``offline``, ``disabled`` or ``fallback``
        (online was asked for, and at least one run, or all, went offline).

        Read from the runs' records on the driver's disk; with no record (no run started yet,
        or runs on other machines) it is the planned mode, or ``fallback`` when the driver
        already found the server unreachable.
        """
        if self.mode == "disabled":
            return "disabled"
        if self.requested == "online" and self.mode != "online":
            return "fallback"
        try:
            used = set((Path(self.root) / "wandb" / MODES_FILE).read_text().split())
        except OSError:
            used = set()
        if self.mode == "online" and "offline" in used:
            return "fallback"
        return self.mode


# --- search trials: one run per trial, logged by a Tune callback in the Tuner's process ---------

# What Tune adds to every result (ray.tune.result's automatic keys and bookkeeping); not metrics
# the trial reported. ``time_total_s`` is kept: it is the trial's wall time so far.
_TUNE_KEYS = frozenset({
    "config", "trial_id", "experiment_tag", "date", "timestamp", "pid", "hostname", "node_ip",
    "done", "should_checkpoint", "checkpoint_dir_name", "training_iteration",
    "time_this_iter_s", "time_since_restore", "iterations_since_restore",
    "timesteps_since_restore", "timesteps_total", "episodes_total",
})


@dataclass
class _TrialRun:
    """A trial's open run and what its summary needs."""

    run: TrackedRun
    trial_id: str
    group: str
    last_step: int = -1
    rows: int = 0
    best: float | None = None
    best_step: int | None = None


# Open runs of the trials this process's Tuner is running, by W&B run id. Module state, never
# an attribute of the callback: Tune pickles its callbacks into tuner.pkl.
_TRIAL_RUNS: dict[str, _TrialRun] = {}


def _metrics(result: Mapping[str, Any]) -> dict[str, Any]:
    """The numbers a trial reported, without Tune's own keys."""
    from numbers import Real

    return {str(k): v for k, v in result.items()
            if k not in _TUNE_KEYS and isinstance(v, Real) and not isinstance(v, bool)}


def start_trial_run(tracker: Tracker, group: str, tags: list[str], trial_id: str,
                    config: Mapping[str, Any]) -> _TrialRun | None:
    """The open run of a search trial, started (with the trial's config) when Tune starts the
    trial: a trial that fails, or that a time budget ends, before its first epoch still has
    its run. A retried attempt keeps the run it has. ``None`` when tracking is off."""
    if tracker.mode == "disabled":
        return None
    key = run_id(tracker.experiment, trial_id)
    entry = _TRIAL_RUNS.get(key)
    if entry is None:
        job = {k: v for k, v in dict(config.get("job", config)).items()
               if k not in ("phase", "candidate")}
        run = tracker.start(name=f"{group.replace('/', '-')}-{trial_id}", group=group,
                            job_type="search", config=job, tags=tags, key=trial_id,
                            concurrent=True)
        entry = _TRIAL_RUNS[key] = _TrialRun(run, trial_id, group,
                                             **_logged_before(tracker, key))
    return entry


def _steps_file(tracker: Tracker) -> Path:
    return Path(tracker.root) / "wandb" / STEPS_FILE


def _logged_before(tracker: Tracker, key: str) -> dict[str, Any]:
    """What an earlier process logged to run `key` (`_TrialRun` fields: last step, rows, best
    score and its step); {} when nothing. A restarted trial's replay skips those steps, and
    its run's summary still counts them."""
    try:
        text = _steps_file(tracker).read_text()
    except OSError:
        return {}
    seen: dict[int, float | None] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] != key:
            continue
        with contextlib.suppress(ValueError):
            seen[int(parts[1])] = None if parts[2] == "-" else float(parts[2])
    if not seen:
        return {}
    scored = [(score, step) for step, score in seen.items() if score is not None]
    best, best_step = max(scored, key=lambda x: (x[0], -x[1])) if scored else (None, None)
    return {"last_step": max(seen), "rows": len(seen), "best": best, "best_step": best_step}


def _note_logged(tracker: Tracker, key: str, step: int, score: float | None) -> None:
    """Append `key step score` (one short O_APPEND write: concurrent Tuners never
    interleave)."""
    _append_line(_steps_file(tracker), f"{key} {step} {'-' if score is None else repr(score)}")


def _append_line(path: Path, line: str) -> None:
    """One line appended in a single short O_APPEND write, so that concurrent workers never
    interleave; a file that cannot be written is skipped (these notes are bookkeeping)."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{line}\n".encode())
        finally:
            os.close(fd)


def log_trial_result(tracker: Tracker, group: str, tags: list[str], metric: str,
                     trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any]) -> None:
    """Log one reported epoch of a search trial (starting its run if Tune did not say it
    started).

    The step is the result's ``epoch`` (Tune's ``training_iteration`` without one). A step not
    above the last one logged is skipped: a retried attempt, or a trial replaying its completion
    record, reports epochs this run already holds (online, W&B would drop them with a warning;
    offline, a restarted trial's new run directory would hold them again). The last step
    logged is kept in ``STEPS_FILE``, so this holds across a driver restart too.
    """
    entry = start_trial_run(tracker, group, tags, trial_id, config)
    if entry is None:
        return
    step = result.get("epoch", result.get("training_iteration"))
    step = int(step) if isinstance(step, (int, float)) else entry.last_step + 1
    if step <= entry.last_step:
        return
    metrics = _metrics(result)
    entry.run.log(metrics, step=step)
    entry.last_step, entry.rows = step, entry.rows + 1
    score = metrics.get(metric)
    if score is not None and (entry.best is None or score > entry.best):
        entry.best, entry.best_step = float(score), step
    if entry.run.live:
        _note_logged(tracker, run_id(tracker.experiment, trial_id), step,
                     None if score is None else float(score))


def end_trial_run(tracker: Tracker, metric: str, trial_id: str, exit_code: int = 0) -> None:
    """Finish a trial's run (Tune finished it, its scheduler stopped it, or it failed for good),
    with a summary of the best ``metric``, its step and the number of epochs logged."""
    entry = _TRIAL_RUNS.pop(run_id(tracker.experiment, trial_id), None)
    if entry is None:
        return
    summary: dict[str, Any] = {"epochs_run": entry.rows}
    if entry.best is not None:
        summary.update({f"best_{metric}": entry.best, "best_epoch": entry.best_step})
    entry.run.finish(summary, exit_code=exit_code)


def end_trial_runs(tracker: Tracker, group: str, metric: str) -> None:
    """Finish every run still open for a trial of this Tuner (experiment and group): the Tuner
    has ended (a time budget stops its running trials)."""
    open_here = [e.trial_id for k, e in _TRIAL_RUNS.items()
                 if e.group == group and k == run_id(tracker.experiment, e.trial_id)]
    for trial_id in open_here:
        end_trial_run(tracker, metric, trial_id, 0)


def trial_runs_callback(tracker: Tracker, group: str, tags: list[str], metric: str) -> Any:
    """A Tune callback that logs every trial of one Tuner as its own W&B run (see module doc):
    config when the trial starts, one history row per reported epoch, a summary at the end.

    Its methods only call this module's functions with plain values, so the callback pickles
    into tuner.pkl without any open run or wandb object in it, and a resumed Tuner's copy works
    in a fresh process.
    """
    from ray import tune

    class TrialRuns(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            start_trial_run(tracker, group, tags, trial.trial_id, trial.config)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            log_trial_result(tracker, group, tags, metric, trial.trial_id, trial.config, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            end_trial_run(tracker, metric, trial.trial_id, 0)

        def on_trial_error(self, iteration, trials, trial, **info):
            end_trial_run(tracker, metric, trial.trial_id, 1)

        def on_experiment_end(self, trials, **info):
            end_trial_runs(tracker, group, metric)

    return TrialRuns()


def _plain_table_frame(board: pd.DataFrame) -> pd.DataFrame:
    """The board with plain Python cells, so ``wandb.Table`` accepts any dtype (pandas 2 or 3).

    Why: pandas extension dtypes (nullable ints, the new string dtype, ``pd.NA``) and numpy
    scalars are not all understood by ``wandb.Table``; missing values become ``None``.
    """
    import pandas as pd

    def cell(v: Any) -> Any:
        if v is None or v is pd.NA or v is pd.NaT:
            return None
        if isinstance(v, float) and math.isnan(v):
            return None
        return _plain(v)

    plain = board.reset_index(drop=not _has_named_index(board))
    plain.columns = [str(c) for c in plain.columns]
    return pd.DataFrame(
        [[cell(v) for v in row] for row in plain.itertuples(index=False, name=None)],
        columns=list(plain.columns),
        dtype=object,
    )


def _has_named_index(board: pd.DataFrame) -> bool:
    """Whether the index carries information worth a column (named, or a MultiIndex)."""
    return any(n is not None for n in board.index.names)


def log_leaderboard(
    tracker: Tracker,
    board: pd.DataFrame,
    figures: Mapping[str, Path],
    name: str | None = None,
) -> None:
    """Log the leaderboard as one run of job_type ``leaderboard``: a table plus the figures.

    The run is named ``<experiment>-leaderboard`` unless ``name`` is given. The board becomes a
    ``wandb.Table`` under the key ``leaderboard`` (offline it is stored as
    ``files/media/table/leaderboard_*.table.json`` in the run directory); each figure becomes a
    ``wandb.Image`` under ``figures/<key>``. Missing figure files are skipped with a warning.
    Like everything here, a failure warns and returns; it never raises.
    """
    if tracker.mode == "disabled":
        return
    if name is None:
        name = f"{tracker.experiment}-leaderboard" if tracker.experiment else "leaderboard"
    run = tracker.start(
        name=name,
        group="leaderboard",
        job_type="leaderboard",
        config={"rows": int(len(board)), "columns": [str(c) for c in board.columns]},
    )
    if not isinstance(run, _WandbRun):
        return
    try:
        import wandb

        payload: dict[str, Any] = {"leaderboard": wandb.Table(dataframe=_plain_table_frame(board))}
        for key, path in figures.items():
            p = Path(path)
            if not p.is_file():
                _warn_once("leaderboard-figure", f"figure {key!r} not found at {p}; skipped")
                continue
            payload[f"figures/{key}"] = wandb.Image(str(p), caption=key)
    except Exception as err:
        _warn_once("leaderboard", f"{type(err).__name__}: {err}")
        run.finish(exit_code=1)
        return
    run.log(payload)
    run.finish()

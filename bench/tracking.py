"""Weights & Biases tracking: the one module in the project that knows about ``wandb``.

Why it is shaped this way:

* ``wandb`` is imported lazily, inside functions, so ``import bench.tracking`` is cheap, works on a
  machine where W&B was never configured, and a disabled tracker never imports it at all.
* Tracking is optional telemetry, never a reason for a benchmark to fail. Every call into ``wandb``
  (``init``, ``log``, ``finish``) is wrapped: on an error we warn once per process and kind of
  failure (``warnings.warn``), and the run turns into a no-op. An online ``init`` that fails (no
  network, bad key, W&B outage) falls back to an offline run in the same directory, which
  ``wandb sync`` can upload later; after the first online failure a process goes straight to
  offline so each later trial does not pay the ``init_timeout`` again.
* :class:`Tracker` is a small frozen dataclass so it pickles cheaply to Ray worker processes. The
  mode is resolved once on the driver (:meth:`Tracker.from_env`); workers only need
  ``WANDB_API_KEY`` in their environment when the mode is ``online``.
* Trials run concurrently in Ray worker processes and one worker runs trials one after another
  (``reuse_actors``). ``wandb.init`` in 0.31 defaults to ``reinit="return_previous"`` outside
  notebooks, which would silently hand a new trial the previous trial's run if that one was never
  finished (e.g. the trial raised). We pass ``reinit="create_new"`` and always log through the
  ``Run`` object (never ``wandb.log``), so runs in one process never get mixed up.
* The API key is never passed to ``wandb`` by us, never put in config, and never written to a file
  or a log; ``wandb`` reads it from ``WANDB_API_KEY`` itself. A test greps the run directory for it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only; pandas is not needed to import this module
    import pandas as pd

__all__ = [
    "OfflineRun",
    "TrackedRun",
    "Tracker",
    "TrackingWarning",
    "log_leaderboard",
    "read_offline_run",
]

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")

# Seconds an online ``wandb.init`` may take before we give up and fall back to offline. Short,
# because every trial would otherwise stall this long when W&B is unreachable. Overridable with
# MEDBENCH_WANDB_INIT_TIMEOUT for slow-but-working networks.
DEFAULT_INIT_TIMEOUT_S = 20.0
# Seconds ``finish`` may spend uploading at the end of an online run; the rest stays on disk for
# ``wandb sync``. Offline runs upload nothing, so their finish is fast regardless.
DEFAULT_FINISH_TIMEOUT_S = 60.0

# Process-wide state. Kinds of failure we have already warned about (warn once, then log at DEBUG)
# and whether online init failed here (then later runs in this process go offline at once).
_WARNED: set[str] = set()
_ONLINE_FAILED: bool = False
# Runs this process started and has not finished yet (see Tracker.start: one at a time).
_ACTIVE: list[_WandbRun] = []
_ACTIVE_LOCK = threading.Lock()


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


def _resolve_mode(enabled: bool) -> str:
    """The W&B mode implied by ``enabled`` and the environment (see :meth:`Tracker.from_env`)."""
    if not enabled:
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
        # requirements.txt per run costs ~150 ms (a full package scan) of the ~170 ms a run
        # costs; the benchmark's run directory already records the environment once.
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
    unconditionally, with no ``if tracker.enabled`` branches scattered through training code.
    It is also a context manager: ``with tracker.start(...) as run:`` finishes the run and marks
    it failed (exit code 1) if the block raised.
    """

    active: bool = False
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
    """Finish runs this process left open before a new one starts.

    Why: a Ray worker runs trial after trial (``reuse_actors``), one at a time. A trial whose
    code never reached ``finish`` (it crashed, or Tune stopped it inside ``tune.report`` and
    nothing caught the ``SystemExit``) would otherwise stay open until the worker is killed, and
    wandb-core only writes an offline run's buffered records to disk when the run is finished:
    we measured such runs as 7-byte ``.wandb`` files holding no data at all.
    """
    with _ACTIVE_LOCK:
        stale = list(_ACTIVE)
    for run in stale:
        log.debug("finishing W&B run left open by an earlier trial in this process")
        run.finish()


class _WandbRun(TrackedRun):
    """A live ``wandb`` run; any error turns it into a no-op (after one warning)."""

    active = True

    def __init__(self, run: Any) -> None:
        self._run: Any = run
        self.dir = Path(run.dir).parent if getattr(run, "dir", None) else None
        with _ACTIVE_LOCK:
            _ACTIVE.append(self)

    def _forget(self) -> None:
        with _ACTIVE_LOCK, contextlib.suppress(ValueError):
            _ACTIVE.remove(self)

    def _fail(self, kind: str, err: BaseException) -> None:
        """Stop talking to W&B for this run after an error; try to close it quietly."""
        _warn_once(kind, f"{type(err).__name__}: {err}")
        run, self._run, self.active = self._run, None, False
        self._forget()
        if run is not None:
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._run is None:
            return
        try:
            self._run.log(dict(metrics), step=step)
        except Exception as err:
            self._fail("log", err)

    def finish(self, summary: Mapping[str, Any] | None = None, *, exit_code: int = 0) -> None:
        run = self._run
        if run is None:
            return
        self._run, self.active = None, False
        self._forget()
        try:
            if summary:
                run.summary.update({str(k): _plain(v) for k, v in summary.items()})
            run.finish(exit_code=exit_code)
        except Exception as err:
            _warn_once("finish", f"{type(err).__name__}: {err}")
            with contextlib.suppress(Exception):
                run.finish(exit_code=1)


@dataclass(frozen=True)
class Tracker:
    """Where and how runs are tracked. Frozen and tiny so it pickles to Ray workers.

    ``root`` is the benchmark's run directory (absolute); W&B writes ``<root>/wandb/...``, so
    offline runs land in ``<root>/wandb/offline-run-*`` next to the results they describe.
    """

    enabled: bool
    project: str
    root: str
    mode: str = field(default="offline")

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Tracker mode must be one of {MODES}, got {self.mode!r}")

    @classmethod
    def from_env(cls, enabled: bool, project: str, root: str | Path) -> Tracker:
        """Resolve the mode once, on the driver, from ``enabled`` and the environment.

        ``disabled`` if not enabled (or ``WANDB_MODE=disabled``); ``online`` if
        ``WANDB_MODE=online`` or ``WANDB_API_KEY`` is set (and ``WANDB_MODE`` isn't
        offline/disabled); otherwise ``offline``. Offline is the default because it needs no
        account or network and the runs can still be uploaded later with ``wandb sync``.
        ``root`` is made absolute because Ray workers run with a different working directory.
        """
        mode = _resolve_mode(enabled)
        return cls(
            enabled=mode != "disabled",
            project=project,
            root=str(Path(root).expanduser().resolve()),
            mode=mode,
        )

    @property
    def active(self) -> bool:
        """True when :meth:`start` will try to talk to W&B."""
        return self.enabled and self.mode != "disabled"

    def start(
        self,
        *,
        name: str,
        group: str,
        job_type: str,
        config: Mapping[str, Any],
        tags: list[str] | None = None,
    ) -> TrackedRun:
        """Start a run; returns a no-op :class:`TrackedRun` when disabled or when W&B fails.

        ``group`` ties runs together in the W&B UI (e.g. all seeds of one config, or all trials of
        one dataset x family search); ``job_type`` says what the run is (``trial``, ``final``,
        ``leaderboard``). Finish a run before starting the next one in the same process.
        """
        if not self.active:
            return TrackedRun()
        os.environ.setdefault("WANDB_SILENT", "true")  # the login banner ignores Settings.silent
        _drop_invalid_wandb_mode()
        try:
            Path(self.root).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            _warn_once("init", f"cannot create run directory {self.root}: {err}")
            return TrackedRun()
        kwargs = dict(
            project=self.project,
            dir=self.root,
            name=name,
            group=group,
            job_type=job_type,
            config=_plain(dict(config)),
            tags=list(tags) if tags else None,
        )
        _finish_stale_runs()
        mode = self.mode
        global _ONLINE_FAILED
        if mode == "online" and _ONLINE_FAILED:
            mode = "offline"
        if mode == "online":
            run = self._init("online", kwargs)
            if run is not None:
                return run
            _ONLINE_FAILED = True
            mode = "offline"
        run = self._init(mode, kwargs)
        return run if run is not None else TrackedRun()

    def _init(self, mode: str, kwargs: dict[str, Any]) -> _WandbRun | None:
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
        return _WandbRun(run)


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
    name: str = "leaderboard",
) -> None:
    """Log the leaderboard as one run of job_type ``leaderboard``: a table plus the figures.

    The board becomes a ``wandb.Table`` under the key ``leaderboard`` (offline it is stored as
    ``files/media/table/leaderboard_*.table.json`` in the run directory); each figure becomes a
    ``wandb.Image`` under ``figures/<key>``. Missing figure files are skipped with a warning.
    Like everything here, a failure warns and returns; it never raises.
    """
    if not tracker.active:
        return
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


# --- reading offline runs back (tests, debugging) ------------------------------------------------


@dataclass
class OfflineRun:
    """What an offline ``.wandb`` file holds, decoded to plain Python (values JSON-decoded)."""

    run_id: str
    name: str
    group: str
    job_type: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    tags: list[str]
    complete: bool  # the final ``exit`` record was found: the run was finished and flushed
    exit_code: int | None = None


_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 32 KiB blocks, 7-byte record headers
_HEADER = 7


def _records(path: Path) -> list[bytes]:
    """The raw protobuf records of a ``.wandb`` file (LevelDB log framing, no CRC check)."""
    data = path.read_bytes()
    if not data:  # created but not flushed yet
        return []
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log (header {data[:7]!r})")
    pos, pending, out = _HEADER, b"", []
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        pos += _HEADER
        if pos + length > len(data):  # a record still being written
            break
        chunk = data[pos : pos + length]
        pos += length
        if kind == 1:  # FULL
            out.append(chunk)
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            out.append(pending + chunk)
            pending = b""
    return out


def read_offline_run(run_dir: str | Path, wait_s: float = 10.0) -> OfflineRun:
    """Decode ``<root>/wandb/offline-run-*/run-*.wandb`` into config, history and summary.

    Why: 0.31 writes no ``config.yaml``/``wandb-history.jsonl`` for offline runs (everything is
    in the binary ``.wandb`` log that ``wandb sync`` uploads), and ``wandb`` no longer ships a
    Python reader for it. Uses ``wandb``'s own protobuf definitions.

    ``run.finish()`` returns before the wandb-core writer has flushed and closed the file (we
    measured reads right after ``finish`` that saw an empty file), so this re-reads for up to
    ``wait_s`` seconds until the run's final ``exit`` record is there; ``complete`` says whether
    it was.
    """
    import time

    deadline = time.monotonic() + wait_s
    while True:
        out = _read_offline_run_once(Path(run_dir))
        if out.complete or time.monotonic() >= deadline:
            return out
        time.sleep(0.05)


def _read_offline_run_once(run_dir: Path) -> OfflineRun:
    """One pass of :func:`read_offline_run` over the file as it is now."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_dir}")

    def key_of(item: Any) -> str:
        return item.key or "/".join(item.nested_key)

    def decode(text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            return text

    out = OfflineRun("", "", "", "", {}, [], {}, [], False)
    for raw in _records(files[0]):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out.run_id, out.name, out.group, out.job_type = (
                r.run_id,
                r.display_name,
                r.run_group,
                r.job_type,
            )
            out.tags = list(r.tags)
            out.config.update({key_of(u): decode(u.value_json) for u in r.config.update})
        elif kind == "config":
            out.config.update({key_of(u): decode(u.value_json) for u in rec.config.update})
        elif kind == "history":
            out.history.append({key_of(i): decode(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            out.summary.update(
                {key_of(u): decode(u.value_json) for u in rec.summary.update if key_of(u)}
            )
        elif kind == "exit":
            out.complete = True
            out.exit_code = rec.exit.exit_code
    out.config.pop("_wandb", None)
    return out

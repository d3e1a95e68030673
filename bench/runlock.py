"""One `medbench` process per run directory (and per Tune storage path).

Two drivers on the same run would both "resume" each other's Tuners and train every trial
twice. A lock is a file `<dir>/.medbench.lock` holding the holder's PID, host and start time,
kept under an exclusive `flock` for as long as the run lasts:

* a second run finds the file locked and refuses, naming the holder;
* the kernel drops the flock when its process dies (SIGKILL included), so a lock left by a dead
  process is simply taken over: there is no PID guessing and no race between two takers;
* on storage that has no working `flock` (some network file systems) the file's PID and host
  are checked instead: a live process on this host, or any other host, keeps it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from bench.errors import UserError

LOCK_NAME = ".medbench.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _holder_text(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"PID {info.get('pid', '?')} on {info.get('host', '?')}, started {started}"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


class RunLock:
    """The lock of one folder, held from `acquire` until `release` (or until this object is
    collected, or the process ends: the kernel drops a dead holder's flock)."""

    def __init__(self, folder: str | Path, what: str = "run directory") -> None:
        self.folder, self.what, self.fd = Path(folder), what, -1

    def acquire(self) -> RunLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise UserError(f"{self.what} {self.folder} is in use by "
                                f"{_holder_text(_read(path))}; wait for it to end, or stop "
                                "that process first") from None
            # no working flock on this file system: trust the PID/host the file names
            info = _read(path)
            if info and (info.get("host") != socket.gethostname()
                         or _pid_alive(int(info.get("pid", 0)))):
                raise UserError(f"{self.what} {self.folder} is in use by {_holder_text(info)}; "
                                "wait for it to end, or stop that process first") from None
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)  # the file stays: removing it would race a new taker
            os.close(self.fd)  # drops the flock
            self.fd = -1

    def __del__(self) -> None:
        self.release()


class Locks:
    """Several folders' locks taken in order and released together."""

    def __init__(self, locks: list[RunLock]) -> None:
        self.locks: list[RunLock] = []
        try:
            for lock in locks:
                self.locks.append(lock.acquire())
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        for lock in reversed(self.locks):
            lock.release()


def lock_run(run_dir: str | Path, storage: str | None = None) -> Locks:
    """Lock a run directory, and its Tune storage path when that is a local folder outside
    it (two runs may share a storage root but never one run's folder in it)."""
    run_dir = Path(run_dir).resolve()
    locks = [RunLock(run_dir)]
    if storage and "://" not in storage and not Path(storage).resolve().is_relative_to(run_dir):
        locks.append(RunLock(storage, "Tune storage"))
    return Locks(locks)

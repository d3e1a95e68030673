"""One `medbench` process per run directory (and per Tune storage path).

Two drivers on the same run would both "resume" each other's Tuners and train every trial
twice. A lock is a file `<dir>/.medbench.lock` holding the holder's PID, host and start time,
kept under an exclusive `flock` for as long as the run lasts:

* a second run finds the file locked and refuses, naming the holder;
* the kernel drops the flock when its process dies (SIGKILL included), so a lock left by a dead
  process is simply taken over: there is no PID guessing and no race between two takers;
* on storage that has no working `flock` (some network file systems) the file's PID and host
  are checked instead: a live process on this host, or any other host, keeps it.

The driver's Ray processes end with it (`reap_with_driver`): a local run's Ray node is the
driver's children, and Ray's own fate-sharing stops GCS, raylet and workers within seconds of
a SIGKILLed driver, but its dashboard and runtime-env agents lingered 60-90 s (measured), holding
memory and ports. A small watcher process, in a session of its own so a kill of the driver's
process group spares it, waits for the driver to die and then ends every process of that Ray
node (found by the `RAY_RAYLET_PID` Ray puts in their environment, and the node's own list),
then exits; it also exits quietly once the node has shut down normally.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
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


# --- the driver's Ray processes end with it ---------------------------------------------------

def _start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot), or None when it is gone: with the pid
    it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def _node_processes(raylet_pid: int, known: dict[int, str]) -> list[int]:
    """Live processes of one Ray node: those Ray started with RAY_RAYLET_PID=<raylet> in their
    environment (agents, workers), and the node's own list (`known`: pid -> start time)."""
    mark = f"RAY_RAYLET_PID={raylet_pid}".encode()
    me = os.getpid()  # the watcher is one of the driver's children: never its own victim
    found = [pid for pid, started in known.items() if pid != me and _start_time(pid) == started]
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in found or int(d.name) == os.getpid():
            continue
        try:
            if mark in (d / "environ").read_bytes().split(b"\0"):
                found.append(int(d.name))
        except OSError:
            continue
    return found


def _children(pid: int) -> list[int]:
    """A process's children (Linux `/proc/<pid>/task/<tid>/children`, all threads)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                out += [int(c) for c in (task / "children").read_text().split()]
    return out


def watch(driver: int, driver_started: str, raylet_pid: int, known: dict[int, str],
          every: float = 0.5, grace: float = 3.0) -> int:
    """The watcher's loop (see module doc). Returns how many processes it ended. While the
    driver lives it adds the raylet's children to `known` (once the raylet dies they belong
    to init and only their environment tells them apart). The driver's other children are
    not the node's (a test process driving Ray starts unrelated ones) and are left alone."""
    raylet_started = known.get(raylet_pid)
    while _start_time(driver) == driver_started:
        for child in _children(raylet_pid):
            if child not in known and (started := _start_time(child)):
                known[child] = started
        if raylet_started is not None and _start_time(raylet_pid) != raylet_started \
                and not _node_processes(raylet_pid, known):
            return 0  # the node shut down while the driver lives on: nothing to do
        time.sleep(every)
    victims = _node_processes(raylet_pid, known)
    for pid in victims:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.time() + grace
    while time.time() < deadline and _node_processes(raylet_pid, known):
        time.sleep(0.2)
    for pid in _node_processes(raylet_pid, known):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return len(victims)


_WATCHED: dict[int, subprocess.Popen] = {}  # raylet pid -> its watcher, one per node


def reap_with_driver() -> subprocess.Popen | None:
    """Start the watcher for this process's local Ray node (after `ray.init`); None when
    there is none (no Ray, a cluster, not Linux). A node already watched keeps its watcher
    (one driver may execute several runs on one node)."""
    try:
        import ray
        from ray._private import ray_constants

        node = ray._private.worker._global_node
        procs = node.all_processes if node is not None else {}
        raylet = procs[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    except (ImportError, AttributeError, KeyError, IndexError):
        return None
    me = _start_time(os.getpid())
    if me is None:
        return None
    if raylet in _WATCHED and _WATCHED[raylet].poll() is None:
        return _WATCHED[raylet]
    known = {info.process.pid: _start_time(info.process.pid)
             for infos in procs.values() for info in infos}
    arg = json.dumps({"driver": os.getpid(), "driver_started": me, "raylet_pid": raylet,
                      "known": {str(k): v for k, v in known.items() if v}})
    watcher = subprocess.Popen([sys.executable, "-m", "bench.runlock", arg],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    _WATCHED[raylet] = watcher
    return watcher


if __name__ == "__main__":  # the watcher: python -m bench.runlock '<json>'
    args = json.loads(sys.argv[1])
    watch(int(args["driver"]), args["driver_started"], int(args["raylet_pid"]),
          {int(k): v for k, v in args["known"].items()})

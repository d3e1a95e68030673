"""End to end on a real (loopback) Ray cluster: `ray start --head`, then the README's
`ray job submit --runtime-env cluster/runtime_env.yaml -- medbench run --preset smoke ...`,
twice; the second submission must resume the run directory without new trials.

The head is a separate cluster for this test only (own temp dir, own ports, no auth) and is
torn down by process: `ray stop` would stop every Ray session on the machine, including the
in-process one that other tests of the same pytest run keep alive. Linux only (reads /proc).
Prints the time of each phase (pytest -s); MEDBENCH_SHOW_JOB_LOGS=1 also prints the job logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc"),
]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's `ray` and `medbench`: the job runs this python
JOB_TIMEOUT_S = 480
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _data_dir() -> Path:
    env = os.environ.get("MEDMNIST_DATA")
    root = (Path(env).expanduser() if env else REPO.parent / "shared" / "medmnist").resolve()
    if not (root / "breastmnist.npz").is_file():
        pytest.skip(f"real MedMNIST files not found: no breastmnist.npz in {root}")
    return root


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env(tmp: Path) -> dict[str, str]:
    """The head's and the CLI's environment: no inherited Ray settings (RAY_ADDRESS of another
    session, token auth), auth and usage stats off, a private cache for the md5 records."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.pop("MEDMNIST_DATA", None)  # runtime_env.yaml's ${MEDMNIST_DATA} becomes "": --data-dir
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", WANDB_MODE="disabled",
               XDG_CACHE_HOME=str(tmp / "cache"), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


# --- this cluster's processes, from /proc ------------------------------------------------------


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every readable process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)": state, ppid
        out[int(entry)] = (ppid, cmd)
    return out


def _cluster_pids(tag: str, procs: dict[int, tuple[int, str]] | None = None) -> set[int]:
    """Processes whose command line names this cluster's temp dir (GCS, raylet, dashboard,
    workers: all get it as --temp-dir/--session-dir/--log-dir), plus all their descendants
    (the job's driver and anything it spawned)."""
    procs = _processes() if procs is None else procs
    found = {pid for pid, (_, cmd) in procs.items() if tag in cmd and pid != os.getpid()}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _) in procs.items() if ppid in found} - found
        found |= children
        grew = bool(children)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stop_cluster(tag: str, grace_s: float = 10.0) -> set[int]:
    """Stop this cluster the way `ray stop` orders it, but only its processes: SIGTERM the
    raylet, then everything else, then the GCS (which lingers >10 s if it goes first), each
    with a grace period; SIGKILL what is left. Returns the pids that were found."""
    procs = _processes()
    pids = _cluster_pids(tag, procs)  # before the raylet dies and its workers are reparented
    raylet = {p for p in pids if "/raylet/raylet " in procs[p][1]}
    gcs = {p for p in pids if "/gcs/gcs_server " in procs[p][1]}
    for bucket, sig in ((raylet, signal.SIGTERM), (pids - raylet - gcs, signal.SIGTERM),
                        (gcs, signal.SIGTERM), (pids | _cluster_pids(tag), signal.SIGKILL)):
        bucket = {p for p in bucket if _alive(p)}
        for pid in bucket:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while any(_alive(p) for p in bucket) and time.monotonic() < deadline:
            time.sleep(0.1)
    return pids


# --- the test ----------------------------------------------------------------------------------


def _ray(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    res = subprocess.run([str(BIN / "ray"), *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout)
    res.stdout, res.stderr = ANSI.sub("", res.stdout), ANSI.sub("", res.stderr)
    return res


def _submit(url: str, sid: str, entry: list[str], env: dict[str, str]) -> tuple[str, float]:
    """`ray job submit` as the README has it, from the repository root (runtime_env.yaml's
    `working_dir: .` is the cwd); blocks until the job ends. Returns (output, seconds)."""
    t0 = time.monotonic()
    res = _ray(["job", "submit", "--address", url, "--submission-id", sid,
                "--runtime-env", "cluster/runtime_env.yaml", "--", *entry], env, JOB_TIMEOUT_S)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"job {sid} failed (rc {res.returncode}):\n{out[-6000:]}"
    assert re.search(rf"Job '{sid}' succeeded", out), out[-6000:]
    status = _ray(["job", "status", "--address", url, sid], env, 60)  # asks the server again
    assert f"Job '{sid}' succeeded" in status.stdout + status.stderr, status.stdout + status.stderr
    if os.environ.get("MEDBENCH_SHOW_JOB_LOGS"):
        print(out)
    return out, time.monotonic() - t0


@pytest.mark.timeout(1500)  # above the sum of the subprocess timeouts
def test_ray_job_submit_runs_and_resumes_smoke_preset() -> None:
    data = _data_dir()
    assert (BIN / "ray").is_file() and (BIN / "medbench").is_file(), BIN
    t_start = time.monotonic()
    # Short: Ray puts unix sockets under <temp dir>/session_*/sockets (limit ~107 bytes).
    tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    tag = str(tmp)  # in every command line of this cluster, and of nothing else
    timings: dict[str, float] = {}
    try:
        temp_dir, out = tmp / "ray", tmp / "out"
        env = _env(tmp)
        gcs, dash, agent, agent_grpc, client, metrics, rtenv, nm, om = _free_ports(9)
        url = f"http://127.0.0.1:{dash}"
        t0 = time.monotonic()
        started = _ray(["start", "--head", f"--port={gcs}",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                        f"--dashboard-agent-listen-port={agent}",
                        f"--dashboard-agent-grpc-port={agent_grpc}",
                        f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}",
                        f"--runtime-env-agent-port={rtenv}", f"--node-manager-port={nm}",
                        f"--object-manager-port={om}", "--num-cpus=2",
                        f"--object-store-memory={300 * 2**20}", f"--temp-dir={temp_dir}",
                        "--disable-usage-stats"], env, 180)
        assert started.returncode == 0, started.stdout + started.stderr
        timings["head start"] = time.monotonic() - t0

        entry = ["medbench", "run", "--preset", "smoke", "--data-dir", str(data),
                 "--out", str(out), "--no-wandb", "--address", "auto"]
        first, timings["first job"] = _submit(url, "smoke-1", entry, env)
        assert "starting smoke" in first, first[-4000:]
        for name in ("spec.yaml", "meta.json", "trials.parquet", "final.parquet",
                     "leaderboard.md", "report.md"):
            assert (out / name).is_file(), f"{name} missing in {sorted(os.listdir(out))}"
        figures = sorted((out / "report_figures").glob("*.png"))
        assert figures, "report.md without figures"
        report = (out / "report.md").read_text()
        for link in re.findall(r"\]\((report_figures/[^)]+)\)", report):
            assert (out / link).is_file(), link

        import pandas as pd

        final = pd.read_parquet(out / "final.parquet")
        assert list(final.status) == ["ok", "ok"], final[["seed", "status", "error"]]
        assert final.seed.nunique() == 2
        trials = pd.read_parquet(out / "trials.parquet")
        assert len(trials) == 2 and set(trials.status) == {"ok"}, trials[["trial_id", "status"]]
        meta = json.loads((out / "meta.json").read_text())
        assert meta["resumed"] is False and meta["cluster"]["CPU"] == 2.0, meta
        from bench.experiment import code_sha256

        assert meta["code_sha256"] == code_sha256(), meta  # the upload is this checkout's code

        second, timings["resumed job"] = _submit(url, "smoke-2", entry, env)
        assert "resuming smoke" in second, second[-4000:]
        again = pd.read_parquet(out / "trials.parquet")
        assert sorted(again.trial_id) == sorted(trials.trial_id), "the resumed job ran new trials"
        assert json.loads((out / "meta.json").read_text())["resumed"] is True
        final_again = pd.read_parquet(out / "final.parquet")
        assert list(final_again.status) == ["ok", "ok"]
        def by_seed(df: pd.DataFrame) -> list[tuple[int, float]]:
            return sorted(zip(df.seed, df.test_auc, strict=True))

        assert by_seed(final_again) == by_seed(final), "the resumed job changed the final runs"
    finally:
        t0 = time.monotonic()
        found = _stop_cluster(tag)
        timings["teardown"] = time.monotonic() - t0
        procs = _processes()
        survivors = {pid: procs.get(pid, (0, "?"))[1][:200]
                     for pid in found | _cluster_pids(tag) if _alive(pid)}
        shutil.rmtree(tmp, ignore_errors=True)
        timings["total"] = time.monotonic() - t_start
        print("\ncluster job timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    assert not survivors, f"processes of the test cluster still running: {survivors}"

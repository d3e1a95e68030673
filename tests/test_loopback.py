"""A local `medbench` run listens on loopback only: every listening TCP socket of the driver
and of the Ray processes it starts (GCS, raylet, workers, agents) is on 127.0.0.0/8 or ::1,
sampled while a real (tiny) search runs. Sockets are read from /proc (Linux), no psutil."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


def _address(hexaddr: str) -> tuple[str, int]:
    ip, port = hexaddr.split(":")
    raw = bytes.fromhex(ip)
    if len(raw) == 4:
        text = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:  # four little-endian 32-bit words
        text = socket.inet_ntop(socket.AF_INET6,
                                b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return text, int(port, 16)


def listening_sockets() -> dict[str, tuple[str, int]]:
    """inode -> (address, port) of every TCP socket in LISTEN state."""
    out = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(table).exists():
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A":
                    out[fields[9]] = _address(fields[1])
    return out


def process_tree(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    seen, todo = set(), [root]
    while todo:
        pid = todo.pop()
        seen.add(pid)
        todo += children.get(pid, [])
    return seen


def sockets_of(pids: set[int]) -> set[tuple[str, str, int]]:
    """(process name, address, port) of the listening sockets these processes hold."""
    listening = listening_sockets()
    found = set()
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            inode = target[len("socket:["):-1] if target.startswith("socket:[") else None
            if inode in listening:
                found.add((Path(name).name, *listening[inode]))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_address_parsing_and_the_loopback_rule() -> None:
    assert _address("0100007F:1F90") == ("127.0.0.1", 8080)
    assert _address("00000000:0016") == ("0.0.0.0", 22)
    assert _address("00000000000000000000000001000000:0050") == ("::1", 80)
    assert _address("0000000000000000FFFF00000100007F:0050") == ("::ffff:127.0.0.1", 80)
    assert all(map(is_loopback, ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.0.2.2", "::ffff:10.0.0.1"]))


def test_bind_setting_is_checked(monkeypatch) -> None:
    from ray._private import ray_constants

    from bench.errors import UserError
    from bench.search import BIND_ENV, bind_local_ray

    before = ray_constants.ENABLE_RAY_CLUSTER
    monkeypatch.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "1")
    try:
        monkeypatch.setenv(BIND_ENV, "everywhere")
        with pytest.raises(UserError, match=f"{BIND_ENV}='everywhere'"):
            bind_local_ray()
        monkeypatch.setenv(BIND_ENV, "node")
        assert bind_local_ray() is False and ray_constants.ENABLE_RAY_CLUSTER is True
        monkeypatch.delenv(BIND_ENV)
        assert bind_local_ray() is True and ray_constants.ENABLE_RAY_CLUSTER is False
        assert os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] == "0"
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_local_run_listens_on_loopback_only(tmp_path) -> None:
    from bench.data import write_synthetic

    write_synthetic("breastmnist", tmp_path / "data", n=(64, 32, 32))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "loopback", "datasets": ["breastmnist"], "families": ["mlp"],
        "num_samples": 2, "max_epochs": 2, "grace_period": 1, "scheduler": "fifo",
        "final_seeds": 0, "resources": {"cpu": 1, "gpu": 0}}))
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "MEDBENCH_RAY_BIND", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", "search", "--spec", str(spec), "--out",
         str(tmp_path / "run"), "--data-dir", str(tmp_path / "data"), "--no-wandb",
         "--no-verify"], cwd=REPO, env={**env, "WANDB_MODE": "disabled"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen: set[tuple[str, str, int]] = set()
    try:
        deadline = time.time() + 500
        while proc.poll() is None and time.time() < deadline:
            seen |= sockets_of(process_tree(proc.pid))
            time.sleep(0.3)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, out
    names = {name for name, _, _ in seen}
    # the servers a local run starts: GCS, raylet, and the trial workers
    assert {"gcs_server", "raylet"} <= names, seen
    assert any(n.startswith("ray::") for n in names), seen
    exposed = sorted(s for s in seen if not is_loopback(s[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"

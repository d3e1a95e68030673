"""SIGTERM and Ctrl-C stop the driver in order: one line saying what happened and how to
resume, exit 143 / 130, no traceback. (The soak script kills real runs this way.)"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import default_sigint

REPO = Path(__file__).resolve().parent.parent
BUSY = ("import sys, time\nfrom bench import cli\n"
        "def app():\n    print('ready', flush=True)\n    time.sleep(120)\n"
        "cli.app = app\ncli.main()\n")


@pytest.mark.parametrize(("sig", "code", "what"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                   (signal.SIGINT, 130, "Ctrl-C")])
def test_signal_stops_the_driver_with_a_resume_hint(sig, code, what) -> None:
    proc = subprocess.Popen([sys.executable, "-c", BUSY], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"stopped by {what}" in err and "Resume with the same command" in err
    assert "Traceback" not in err


def test_disk_full_is_one_line_exit_1(tmp_path) -> None:
    """ENOSPC from a table write (simulated in the atomic writer's rename step): one error
    line naming the file and the free space, exit 1, the old table left as it was."""
    table = tmp_path / "run" / "trials.parquet"
    table.parent.mkdir()
    table.write_bytes(b"old table")
    script = ("import errno, os, sys\nfrom bench import cli, results\n"
              "def full(*a, **k):\n    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "
              f"{str(table)!r})\n"
              "os.replace = full\n"
              "def app():\n    results.write_table(__import__('pathlib').Path("
              f"{str(table)!r}), [{{'a': 1}}], ['a'])\n"
              "cli.app = app\ncli.main()\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: No space left on device: "), lines
    assert str(table) in lines[0] and "MiB free" in lines[0] and "resume" in lines[0]
    assert table.read_bytes() == b"old table"
    assert sorted(p.name for p in table.parent.iterdir()) == ["trials.parquet"]  # no temp left

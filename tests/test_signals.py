"""SIGTERM and Ctrl-C stop the driver in order: one line saying what happened and how to
resume, exit 143 / 130, no traceback. (The soak script kills real runs this way.)"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BUSY = ("import sys, time\nfrom bench import cli\n"
        "def app():\n    print('ready', flush=True)\n    time.sleep(120)\n"
        "cli.app = app\ncli.main()\n")


@pytest.mark.parametrize(("sig", "code", "what"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                   (signal.SIGINT, 130, "Ctrl-C")])
def test_signal_stops_the_driver_with_a_resume_hint(sig, code, what) -> None:
    proc = subprocess.Popen([sys.executable, "-c", BUSY], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert f"stopped by {what}" in err and "Resume with the same command" in err
    assert "Traceback" not in err

"""scripts/gpu_check.sh: on a machine without CUDA it skips with one clear line and exit 0;
its Python steps at least compile (the script itself runs where a GPU is lent)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"


def test_gpu_check_is_valid_bash_and_its_python_compiles() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    blocks = re.findall(r"<<'EOF'[^\n]*\n(.*?)\nEOF\n", text, flags=re.S)
    assert len(blocks) == 3
    for block in blocks:
        compile(block, "gpu_check.sh heredoc", "exec")


def test_gpu_check_skips_without_cuda() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: run scripts/gpu_check.sh itself")
    done = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: SKIP: no CUDA device"), lines

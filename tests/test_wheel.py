"""The built wheel works on its own: installed into a fresh virtual environment, `medbench run
--preset smoke` finds its presets and search spaces inside the package, from another directory.

Offline and quick: the wheel is built with the setuptools already installed (no build
isolation, no download), the fresh venv gets only the wheel (`--no-deps`), and reaches the
heavy dependencies (torch, ray, ...) through a `.pth` line naming this environment's
site-packages. Paths named in a `.pth` file are not scanned for `.pth` files themselves, so the
editable install of this checkout stays invisible to the fresh venv; the test checks that
`bench` is imported from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def sh(*cmd: str | Path, cwd: Path, env: dict | None = None) -> str:
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600, check=False)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


def test_wheel_installs_and_runs_the_smoke_preset_elsewhere(tmp_path):
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "bench", src / "bench",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
       "-w", tmp_path / "dist", src, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("medmnist_bench-*.whl")

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    sh(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "-q", wheel,
       cwd=tmp_path)
    site = Path(sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                   cwd=tmp_path).strip())
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", MEDBENCH_OFFLINE="1")
    where = sh(py, "-c", "import bench; print(bench.__file__)", cwd=elsewhere, env=env)
    assert Path(where.strip()).is_relative_to(env_dir), where
    medbench = env_dir / "bin" / "medbench"
    sh(medbench, "synth", "breastmnist", "--out", "data", "--n", "64,32,32", cwd=elsewhere,
       env=env)
    out = sh(medbench, "run", "--preset", "smoke", "--data-dir", "data", "--no-verify",
             "--no-wandb", "--out", "runs/smoke", cwd=elsewhere, env=env)
    assert "breastmnist" in out
    run = elsewhere / "runs" / "smoke"
    assert (run / "final.parquet").is_file() and (run / "report.md").is_file()

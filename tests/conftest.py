"""Shared fixtures: the real MedMNIST files, synthetic files, and a private md5 cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Synthetic subsets that cover every layout: multi-label (14 labels), 11-class grayscale,
# RGB, and a 3D volume (kept small: 3D training on a CPU is slow).
SYNTH_FLAGS = {
    "chestmnist": (96, 32, 48),
    "organamnist": (96, 33, 44),
    "dermamnist": (96, 32, 48),
    "organmnist3d": (22, 22, 22),
}


@pytest.fixture(scope="session", autouse=True)
def _private_cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point XDG_CACHE_HOME at a temp folder for the whole session, so the md5 cache
    (bench.data.file_md5) never touches the user's home; restore it afterwards."""
    old = os.environ.get("XDG_CACHE_HOME")
    cache = tmp_path_factory.mktemp("xdg-cache")
    os.environ["XDG_CACHE_HOME"] = str(cache)
    try:
        yield cache
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """Folder of the real (md5-verified) MedMNIST files: $MEDMNIST_DATA, else
    <repo>/../shared/medmnist."""
    env = os.environ.get("MEDMNIST_DATA")
    root = Path(env).expanduser() if env else REPO.parent / "shared" / "medmnist"
    if not (root / "breastmnist.npz").is_file():
        pytest.skip(f"real MedMNIST files not found: no breastmnist.npz in {root} "
                    "(set MEDMNIST_DATA to the folder that holds them)")
    return root


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic chestmnist, organamnist, dermamnist and organmnist3d files (28 px)."""
    from bench.data import write_synthetic

    root = tmp_path_factory.mktemp("synth")
    for flag, n in SYNTH_FLAGS.items():
        write_synthetic(flag, root, n=n, seed=0)
    return root


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models train several times faster on one thread, and much faster still on a
    shared, busy CPU (OpenMP threads spin-wait for each other); restored afterwards.
    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

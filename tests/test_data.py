"""bench.data: INFO-driven layout for every subset, md5 checks and cache, downloads, and one
clear UserError for each way a file can be wrong."""

from __future__ import annotations

import hashlib
import io
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from medmnist.info import INFO

import bench.data as bd
from bench.data import (
    dataset_info,
    ensure_file,
    file_md5,
    file_status,
    load_arrays,
    load_dataset,
    synthetic_arrays,
    write_synthetic,
)
from bench.errors import UserError

SMALL = (8, 4, 5)

# Real files that may sit in the shared folder: (flag, size).
REAL = [("breastmnist", 28), ("pneumoniamnist", 28), ("retinamnist", 28),
        ("adrenalmnist3d", 28), ("vesselmnist3d", 28),
        pytest.param("adrenalmnist3d_64", 64, marks=pytest.mark.slow)]  # 300 MB of voxels


def _real(real_data_dir: Path, name: str) -> Path:
    path = real_data_dir / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


def _write(folder: Path, flag: str, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{flag}.npz"
    np.savez_compressed(path, **arrays)
    return path


# --- layout of every subset --------------------------------------------------------------------

@pytest.mark.parametrize("flag", list(INFO))
def test_every_flag_round_trips(flag: str, tmp_path: Path) -> None:
    path = write_synthetic(flag, tmp_path, n=SMALL, seed=1)
    assert path == tmp_path / f"{flag}.npz"
    data = load_dataset(flag, data_dir=tmp_path, verify_md5=False)
    info = INFO[flag]
    raw = np.load(path)
    assert data.info.flag == flag and data.info.task == info["task"]
    assert data.info.n_classes == len(info["label"])
    for split, n in zip(("train", "val", "test"), SMALL, strict=True):
        s = data.splits[split]
        assert len(s) == n
        assert s.images.dtype == torch.uint8
        if flag.endswith("3d"):
            assert data.info.dims == 3
            assert s.images.shape == (n, 1, 28, 28, 28)
        elif info["n_channels"] == 1:
            assert s.images.shape == (n, 1, 28, 28)
        else:
            assert s.images.shape == (n, 3, 28, 28)  # channels-first
        # the tensor is the file's pixels, only re-laid out
        file_images = raw[f"{split}_images"]
        if info["n_channels"] == 3:
            file_images = file_images.transpose(0, 3, 1, 2)
        else:
            file_images = file_images[:, None]
        assert np.array_equal(s.images.numpy(), file_images)
        np.testing.assert_array_equal(s.raw_labels, raw[f"{split}_labels"])
        if info["task"] == "multi-label, binary-class":
            assert s.labels.dtype == torch.float32 and s.labels.shape == (n, 14)
        else:
            assert s.labels.dtype == torch.int64 and s.labels.shape == (n,)
            assert int(s.labels.max()) < len(info["label"])


@pytest.mark.parametrize("flag", ["breastmnist", "dermamnist", "organmnist3d"])
def test_larger_sizes_round_trip(flag: str, tmp_path: Path) -> None:
    path = write_synthetic(flag, tmp_path, size=64, n=(4, 2, 2))
    assert path.name == f"{flag}_64.npz"
    data = load_dataset(flag, size=64, data_dir=tmp_path, verify_md5=False)
    assert data.size == 64
    assert data.splits["train"].images.shape[-2:] == (64, 64)
    if flag.endswith("3d"):
        assert data.splits["train"].images.shape == (4, 1, 64, 64, 64)


def test_synthetic_is_deterministic_and_learnable() -> None:
    a, b = synthetic_arrays("organamnist", seed=3), synthetic_arrays("organamnist", seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = synthetic_arrays("organamnist", seed=4)
    assert not np.array_equal(a["train_images"], c["train_images"])
    # every class is present in every split of the default sizes
    assert set(np.unique(a["val_labels"])) == set(range(11))


# --- real files --------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "size"), REAL)
def test_real_files_load_with_md5(real_data_dir: Path, name: str, size: int) -> None:
    _real(real_data_dir, name)
    flag = name.split("_")[0]
    assert file_status(flag, size, real_data_dir) == "md5 ok"
    data = load_dataset(flag, size, real_data_dir, verify_md5=True)
    info = INFO[flag]
    for split in ("train", "val", "test"):
        s = data.splits[split]
        assert len(s) == info["n_samples"][split]
        spatial = (size,) * (3 if flag.endswith("3d") else 2)
        assert s.images.shape == (len(s), info["n_channels"], *spatial)
        assert s.images.dtype == torch.uint8
        assert s.raw_labels.shape == (len(s), 1)


def test_file_status_missing_and_mismatch(tmp_path: Path) -> None:
    assert file_status("breastmnist", data_dir=tmp_path) == "missing"
    write_synthetic("breastmnist", tmp_path, n=SMALL)
    assert file_status("breastmnist", data_dir=tmp_path) == "md5 mismatch"
    assert file_status("breastmnist", 64, tmp_path) == "missing"


def test_data_root_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDMNIST_DATA", str(tmp_path / "env"))
    assert bd.data_root() == tmp_path / "env"
    assert bd.data_root(tmp_path / "flag") == tmp_path / "flag"
    assert bd.npz_path("organmnist3d", 64, tmp_path) == tmp_path / "organmnist3d_64.npz"
    monkeypatch.delenv("MEDMNIST_DATA")
    from medmnist.info import DEFAULT_ROOT

    assert bd.data_root() == Path(DEFAULT_ROOT)


# --- md5 cache ---------------------------------------------------------------------------------

def test_md5_cache_hashes_each_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = write_synthetic("breastmnist", tmp_path / "data", n=SMALL)
    calls = []
    real_md5 = hashlib.md5

    def counting_md5(*a, **kw):
        calls.append(1)
        return real_md5(*a, **kw)

    monkeypatch.setattr(hashlib, "md5", counting_md5)
    expected = real_md5(path.read_bytes()).hexdigest()
    assert file_md5(path) == expected
    assert len(calls) == 1
    assert (tmp_path / "cache" / "medbench" / "md5.json").is_file()
    assert file_md5(path) == expected
    assert len(calls) == 1  # served from the cache
    # a changed file (new size/mtime) is hashed again
    write_synthetic("breastmnist", tmp_path / "data", n=(9, 4, 5))
    assert file_md5(path) == real_md5(path.read_bytes()).hexdigest()
    assert len(calls) == 2


def test_md5_cache_survives_unwritable_cache(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")  # cache dir cannot be created under a file
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    path = write_synthetic("breastmnist", tmp_path / "data", n=SMALL)
    assert file_md5(path) == hashlib.md5(path.read_bytes()).hexdigest()


# --- errors ------------------------------------------------------------------------------------

def test_unknown_flag() -> None:
    with pytest.raises(UserError, match="unknown dataset 'nosuchmnist'") as e:
        load_dataset("nosuchmnist")
    assert "breastmnist" in str(e.value) and "medbench datasets" in str(e.value)


@pytest.mark.parametrize(("flag", "size", "sizes"), [("organmnist3d", 128, "28, 64"),
                                                      ("breastmnist", 32, "28, 64, 128, 224")])
def test_size_that_does_not_exist(flag: str, size: int, sizes: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"{flag} has no size {size}; available sizes: {sizes}"):
        load_dataset(flag, size, tmp_path)
    with pytest.raises(UserError, match="no size"):
        write_synthetic(flag, tmp_path, size=size)
    assert list(tmp_path.iterdir()) == []


def test_missing_file_when_download_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDBENCH_OFFLINE", raising=False)
    urls = []

    def no_network(url, *a, **kw):
        urls.append(url)
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(UserError) as e:
        load_dataset("breastmnist", data_dir=tmp_path)
    msg = str(e.value)
    assert urls == [INFO["breastmnist"]["url"]]
    assert "breastmnist.npz not found" in msg and str(tmp_path) in msg
    assert "download failed" in msg and "no route to host" in msg
    assert INFO["breastmnist"]["MD5"] in msg
    assert "--data-dir" in msg and "MEDMNIST_DATA" in msg
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


def test_missing_file_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_download(*a, **kw):
        raise AssertionError("tried to download with MEDBENCH_OFFLINE=1")

    monkeypatch.setattr(urllib.request, "urlopen", must_not_download)
    monkeypatch.setenv("MEDBENCH_OFFLINE", "1")
    with pytest.raises(UserError, match="downloads are off") as e:
        ensure_file("organmnist3d", 64, tmp_path)
    assert "organmnist3d_64.npz" in str(e.value)
    assert INFO["organmnist3d"]["MD5_64"] in str(e.value)
    monkeypatch.delenv("MEDBENCH_OFFLINE")
    with pytest.raises(UserError, match="downloads are off"):
        ensure_file("breastmnist", data_dir=tmp_path, allow_download=False)


def test_md5_mismatch(tmp_path: Path) -> None:
    write_synthetic("breastmnist", tmp_path, n=SMALL)
    with pytest.raises(UserError) as e:
        load_dataset("breastmnist", data_dir=tmp_path)
    msg = str(e.value)
    assert "md5" in msg and INFO["breastmnist"]["MD5"] in msg and "--no-verify" in msg
    load_dataset("breastmnist", data_dir=tmp_path, verify_md5=False)  # the escape hatch


def test_truncated_file(real_data_dir: Path, tmp_path: Path) -> None:
    blob = _real(real_data_dir, "breastmnist").read_bytes()
    (tmp_path / "breastmnist.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="not a readable .npz file"):
        load_dataset("breastmnist", data_dir=tmp_path, verify_md5=False)
    with pytest.raises(UserError, match="md5"):  # and with verification on, md5 says it first
        load_dataset("breastmnist", data_dir=tmp_path)


@pytest.mark.parametrize("content", [b"", b"this is not an npz file\n", b"PK\x03\x04garbage"])
def test_not_an_npz(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "organamnist.npz").write_bytes(content)
    with pytest.raises(UserError, match="not a readable .npz file.*download it again"):
        load_dataset("organamnist", data_dir=tmp_path, verify_md5=False)


def _broken(flag: str, **changes) -> dict[str, np.ndarray]:
    arrays = synthetic_arrays(flag, n=SMALL)
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v(arrays[k]) if callable(v) else v
    return arrays


BROKEN = {
    "missing key": ("breastmnist", {"test_labels": None}, "lacks the key 'test_labels'"),
    "float images": ("breastmnist", {"train_images": lambda x: x.astype(np.float32)},
                     r"train_images is float32\[8, 28, 28\], expected uint8\[N, 28, 28\]"),
    "wrong image size": ("breastmnist", {"val_images": np.zeros((4, 32, 32), np.uint8)},
                         "expected uint8"),
    "gray where RGB": ("dermamnist", {"val_images": lambda x: x[..., 0]}, "expected uint8"),
    "channels-first RGB": ("dermamnist", {"test_images": lambda x: x.transpose(0, 3, 1, 2)},
                           "expected uint8"),
    "1-D labels": ("breastmnist", {"train_labels": lambda y: y[:, 0]},
                   r"train_labels has shape \[8\], expected \[8, 1\]"),
    "label count": ("breastmnist", {"val_labels": lambda y: y[:3]}, "val_labels has shape"),
    "chest labels not 14": ("chestmnist", {"test_labels": lambda y: y[:, :13]},
                            r"expected \[5, 14\]"),
    "label out of range": ("breastmnist", {"test_labels": lambda y: y + 1},
                           r"test_labels hold values in \[1, 2\], expected \[0, 1\]"),
    "negative label": ("organamnist", {"val_labels": lambda y: y.astype(np.int64) - 1},
                       r"expected \[0, 10\]"),
    "multi-label value 2": ("chestmnist", {"train_labels": lambda y: y * 2},
                            r"expected \[0, 1\]"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_wrong_contents(case: str, tmp_path: Path) -> None:
    flag, changes, message = BROKEN[case]
    _write(tmp_path, flag, _broken(flag, **changes))
    with pytest.raises(UserError, match=message) as e:
        load_arrays(flag, data_dir=tmp_path, verify_md5=False)
    assert str(tmp_path) in str(e.value)
    assert "medbench synth" in str(e.value)


# --- downloads ---------------------------------------------------------------------------------

class _Served(io.BytesIO):
    """What urlopen returns: a readable context manager."""


def test_download_success(real_data_dir: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    blob = _real(real_data_dir, "breastmnist").read_bytes()
    monkeypatch.delenv("MEDBENCH_OFFLINE", raising=False)
    seen = []

    def serve(url, *a, **kw):
        seen.append(url)
        return _Served(blob)

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    dest = tmp_path / "new" / "dir"
    data = load_dataset("breastmnist", data_dir=dest)
    assert seen == [INFO["breastmnist"]["url"]]
    assert sorted(p.name for p in dest.iterdir()) == ["breastmnist.npz"]
    assert (dest / "breastmnist.npz").read_bytes() == blob
    assert file_status("breastmnist", data_dir=dest) == "md5 ok"
    assert len(data.splits["test"]) == INFO["breastmnist"]["n_samples"]["test"]
    # present now: no second download
    ensure_file("breastmnist", data_dir=dest)
    assert len(seen) == 1


def test_download_with_wrong_bytes_leaves_nothing(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_synthetic("breastmnist", tmp_path / "src", n=SMALL)
    monkeypatch.delenv("MEDBENCH_OFFLINE", raising=False)
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **kw: _Served(src.read_bytes()))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(UserError, match="download failed.*wrong md5"):
        ensure_file("breastmnist", data_dir=dest)
    assert list(dest.iterdir()) == []


def test_download_does_not_replace_existing_file(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_synthetic("breastmnist", tmp_path, n=SMALL)
    before = src.read_bytes()
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **kw: pytest.fail("downloaded"))
    assert ensure_file("breastmnist", data_dir=tmp_path) == src
    assert src.read_bytes() == before


def test_copied_real_file_verifies(real_data_dir: Path, tmp_path: Path) -> None:
    shutil.copy(_real(real_data_dir, "breastmnist"), tmp_path / "breastmnist.npz")
    assert file_status("breastmnist", data_dir=tmp_path) == "md5 ok"
    assert dataset_info("breastmnist").md5(28) == INFO["breastmnist"]["MD5"]

"""scripts/resplit.py: the same images dealt into new splits of the official sizes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from bench.data import load_arrays, write_synthetic

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("resplit", REPO / "scripts" / "resplit.py")
resplit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resplit)  # type: ignore[union-attr]

SPLITS = ("train", "val", "test")


def _rows(arrays: dict, splits=SPLITS) -> list[bytes]:
    """Each (image, label) pair as bytes, sorted: the pool as a multiset."""
    return sorted(arrays[f"{s}_images"][i].tobytes() + arrays[f"{s}_labels"][i].tobytes()
                  for s in splits for i in range(len(arrays[f"{s}_labels"])))


def test_resplit_keeps_sizes_and_images_and_stratifies(tmp_path) -> None:
    src = write_synthetic("retinamnist", tmp_path / "official", n=(300, 60, 120), seed=3)
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    out = resplit.resplit(arrays, seed=1, stratify=True)
    assert _rows(out) == _rows(arrays)  # the same images with their own labels, none twice
    for s in SPLITS:
        assert len(out[f"{s}_labels"]) == len(arrays[f"{s}_labels"])
        assert out[f"{s}_images"].dtype == arrays[f"{s}_images"].dtype
    # the test split is new: most of it came from the official train split
    assert _rows(out, ("test",)) != _rows(arrays, ("test",))
    pool = np.concatenate([arrays[f"{s}_labels"][:, 0] for s in SPLITS])
    share = np.bincount(pool, minlength=5) / len(pool)
    for s in SPLITS:
        got = np.bincount(out[f"{s}_labels"][:, 0], minlength=5) / len(out[f"{s}_labels"])
        assert np.abs(got - share).max() < 0.03, (s, got, share)
    again = resplit.resplit(arrays, seed=1, stratify=True)
    other = resplit.resplit(arrays, seed=2, stratify=True)
    assert all(np.array_equal(again[k], out[k]) for k in out)
    assert not np.array_equal(other["test_images"], out["test_images"])


def test_resplit_cli_writes_loadable_files_and_refuses_bad_input(tmp_path, capsys) -> None:
    write_synthetic("chestmnist", tmp_path / "official", n=(80, 20, 30), seed=0)
    write_synthetic("breastmnist", tmp_path / "official", n=(80, 20, 30), seed=0)
    out = tmp_path / "resplit"
    assert resplit.main(["chestmnist", "breastmnist", "--data-dir", str(tmp_path / "official"),
                         "--out", str(out)]) == 0
    for flag in ("chestmnist", "breastmnist"):  # multi-label is dealt unstratified
        arrays = load_arrays(flag, 28, out, verify_md5=False, allow_download=False)
        assert [len(arrays[f"{s}_labels"]) for s in SPLITS] == [80, 20, 30]
    assert not list(out.glob(".*tmp*"))
    capsys.readouterr()
    assert resplit.main(["nosuchmnist", "--data-dir", str(tmp_path / "official"),
                         "--out", str(out)]) == 2
    assert "unknown subset" in capsys.readouterr().err
    assert resplit.main(["pneumoniamnist", "--data-dir", str(tmp_path / "official"),
                         "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    before = (tmp_path / "official" / "breastmnist.npz").read_bytes()
    assert resplit.main(["breastmnist", "--data-dir", str(tmp_path / "official"),
                         "--out", str(tmp_path / "official")]) == 2
    assert (tmp_path / "official" / "breastmnist.npz").read_bytes() == before

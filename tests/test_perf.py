"""`medbench perf` as a smoke run: every measured number is there and positive (no timings
are asserted: they depend on the machine and its load)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bench.data import dataset_info, normalize, write_synthetic
from bench.tools.perf import (
    FLAG,
    MEASURED_KEYS,
    OfficialStyleDataset,
    load_perf_data,
    official_transform,
    run_perf,
)


def test_quick_run_reports_every_measurement(tmp_path, monkeypatch) -> None:
    data_dir = tmp_path / "data"
    write_synthetic(FLAG, data_dir, n=(16, 8, 8))  # tiny, so resnet18's one batch is quick
    monkeypatch.delenv("MEDMNIST_DATA", raising=False)
    lines: list[str] = []
    threads = torch.get_num_threads()
    r = run_perf(quick=True, threads=1, device="cpu", data_dir=data_dir,
                 out=tmp_path / "perf.json", echo=lines.append)
    assert torch.get_num_threads() == threads  # restored
    for key in MEASURED_KEYS:
        assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, key
    assert set(r["targets"]) == {"data_path", "data_path_aug", "cnn_small", "resnet18",
                                 "roofline"}
    assert not r["synthetic"] and r["device"] == "cpu" and r["threads"] == 1
    assert r["n_train"] == 16
    text = "\n".join(lines)
    assert "train resnet18" in text and "roofline" in text and ("PASS" in text or "MISS" in text)
    saved = json.loads((tmp_path / "perf.json").read_text())
    assert saved["data_speedup"] == r["data_speedup"]


def test_missing_file_falls_back_to_synthetic_of_official_size(tmp_path) -> None:
    arrays, source = load_perf_data(tmp_path / "empty")
    assert source.startswith("SYNTHETIC") and "not found" in source
    n = dataset_info(FLAG).n_samples
    assert arrays["train_images"].shape == (n["train"], 28, 28)
    assert arrays["test_labels"].shape == (n["test"], 1)
    assert not (tmp_path / "empty").exists()  # the synthetic file lived in a temp dir


def test_official_style_item_equals_our_normalisation(tmp_path) -> None:
    write_synthetic(FLAG, tmp_path)
    with np.load(tmp_path / f"{FLAG}.npz") as z:
        imgs, labels = z["train_images"], z["train_labels"]
    ds = OfficialStyleDataset(imgs, labels, official_transform(augment=False))
    x, y = ds[3]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and y.shape == (1,)
    ours = normalize(torch.from_numpy(imgs[3]).unsqueeze(0))
    torch.testing.assert_close(x, ours, atol=1e-6, rtol=0)
    x_aug, _ = OfficialStyleDataset(imgs, labels, official_transform(augment=True))[3]
    assert x_aug.shape == x.shape and x_aug.min() >= -1 and x_aug.max() <= 1


def test_openmp_wait_policy_choice(monkeypatch) -> None:
    import bench

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(bench.sys, "argv", ["/x/ray/_private/workers/default_worker.py"])
    assert bench._openmp_wait_policy() == "PASSIVE"  # Ray workers share their node
    monkeypatch.setattr(bench.sys, "argv", ["/usr/bin/medbench", "train"])
    assert bench._openmp_wait_policy() is None  # idle machine: OpenMP's default (spinning) wins
    monkeypatch.setattr(bench.os, "getloadavg", lambda: (64.0, 64.0, 64.0))
    assert bench._openmp_wait_policy() == "PASSIVE"  # busier than its cores
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert bench._openmp_wait_policy() is None  # the user's choice is kept


def test_fit_max_steps_trains_exactly_that_many_steps(tmp_path) -> None:
    """`medbench perf` times resnet18 through `fit(..., max_steps=)`: the cut must fall inside
    an epoch, and the images/s must count only the images of those steps."""
    from bench.data import load_dataset
    from bench.train import TrainConfig, fit

    write_synthetic("breastmnist", tmp_path, n=(40, 8, 8))
    data = load_dataset("breastmnist", 28, tmp_path, verify_md5=False)
    cfg = TrainConfig(dataset="breastmnist", model="mlp", batch_size=8, epochs=3, device="cpu")
    cut = fit(cfg, data, max_steps=3)
    assert len(cut.history) == 1 and cut.history[0]["images_seen"] == 3 * 8
    assert cut.train_images_per_s == pytest.approx(24 / cut.history[0]["epoch_s"])
    whole = fit(cfg, data, max_steps=7)  # 5 steps per epoch: stops 2 steps into epoch 2
    assert [h["images_seen"] for h in whole.history] == [40, 56]
    assert fit(cfg, data).history[-1]["images_seen"] == 3 * 40  # no limit: every epoch

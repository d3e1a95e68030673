"""The data audit: planted exact/near duplicates and blanks are found (2D grey, RGB, 3D), clean
data gives (almost) no false pairs, labels are summarised, results are cached per md5, the
leaderboard shows leakage-free scores, and bad input fails with one line and writes nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from audit_synth import planted_arrays
from cli_helpers import invoke
from typer.testing import CliRunner

from bench import audit as A
from bench import cli
from bench.data import dataset_info, synthetic_arrays

runner = CliRunner()


def _save(folder: Path, flag: str, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{flag}.npz"
    np.savez_compressed(path, **arrays)
    return path


# --- planted problems --------------------------------------------------------------------------

CASES = [("pneumoniamnist", 2, 1), ("retinamnist", 2, 3), ("adrenalmnist3d", 3, 1)]


@pytest.mark.parametrize("flag,dims,channels", CASES)
def test_planted_duplicates_and_blanks_are_found(flag: str, dims: int, channels: int) -> None:
    n = (600, 100, 300) if dims == 2 else (160, 30, 90)
    n_near = 80 if dims == 2 else 40
    arrays, truth = planted_arrays(n=n, dims=dims, channels=channels, n_exact=10, n_near=n_near,
                                   n_blank=4, seed=3)
    res = A.audit_arrays(dataset_info(flag), 28, arrays)
    exact = {(p["train_index"], p["test_index"]) for p in res["exact"]["across"]["train-test"]}
    assert set(map(tuple, truth["exact_train_test"])) <= exact  # every planted copy
    within = {(p["index_a"], p["index_b"]) for p in res["exact"]["within"]["train"]}
    assert set(map(tuple, truth["exact_within_train"])) <= within
    near = {(p["train_index"], p["test_index"]) for p in res["near"]["across"]["train-test"]}
    found = sum((i, j) in near for i, j, _ in truth["near_train_test"])
    assert found >= 0.95 * len(truth["near_train_test"]), (found, len(truth["near_train_test"]))
    planted_tests = {j for _, j in truth["exact_train_test"]} | {
        j for _, j, _ in truth["near_train_test"]}
    false = {p["test_index"] for k in ("train-test", "val-test") for p in res["near"]["across"][k]
             if p["test_index"] not in planted_tests}
    assert len(false) <= 0.01 * n[2]
    assert set(res["leaky_test_indices"]) >= {j for _, j in truth["exact_train_test"]}
    # blanks: the planted constant images, and exact copies of each other across splits too
    assert set(truth["blank_train"]) <= set(res["blank"]["train"])
    assert set(truth["blank_test"]) <= set(res["blank"]["test"])
    assert not set(res["blank"]["val"])


def test_clean_data_has_no_false_pairs() -> None:
    arrays, truth = planted_arrays(n=(600, 100, 300), n_exact=0, n_near=0, n_blank=0,
                                   n_within=0, seed=5)
    res = A.audit_arrays(dataset_info("breastmnist"), 28, arrays)
    pairs = sum(len(v) for v in res["near"]["across"].values())
    assert pairs <= 0.01 * 300 and len(res["leaky_test_indices"]) <= 0.01 * 300
    assert not any(res["exact"]["within"].values()) and not any(res["exact"]["across"].values())
    assert res["nn_distance_quantiles"]["train-test"]["q0"] > A.NEAR_THRESHOLD


def test_chunking_does_not_change_the_answer() -> None:
    arrays, _ = planted_arrays(n=(300, 20, 70), n_exact=3, n_near=12, n_blank=0, seed=7)
    info = dataset_info("breastmnist")
    big = A.nearest_neighbours(arrays["test_images"], arrays["train_images"], info, 28)
    small = A.nearest_neighbours(arrays["test_images"], arrays["train_images"], info, 28,
                                 query_chunk=16, db_chunk=37)
    assert np.array_equal(big[0], small[0])
    np.testing.assert_allclose(big[1], small[1], atol=1e-5)


def test_shifted_copy_at_size_64_still_matches() -> None:
    arrays, truth = planted_arrays(n=(80, 10, 40), size=64, n_exact=0, n_near=8, n_blank=0,
                                   seed=2)
    idx, dist = A.nearest_neighbours(arrays["test_images"], arrays["train_images"],
                                     dataset_info("breastmnist"), 64)
    for i, j, _ in truth["near_train_test"]:
        assert idx[j] == i and dist[j] <= A.NEAR_THRESHOLD


# --- labels ------------------------------------------------------------------------------------

def test_label_summary_counts_imbalance_and_out_of_range() -> None:
    info = dataset_info("pneumoniamnist")
    y = np.array([[0]] * 6 + [[1]] * 2 + [[3]], dtype=np.uint8)
    s = A.label_summary(y, info)
    assert s["counts"] == [6, 2] and s["imbalance_ratio"] == 3.0 and s["out_of_range"] == 1
    assert A.label_summary(np.zeros((4, 1), np.uint8), info)["imbalance_ratio"] == float("inf")


def test_chestmnist_cooccurrence() -> None:
    info = dataset_info("chestmnist")
    arrays = synthetic_arrays("chestmnist", n=(60, 10, 20), seed=1)
    res = A.audit_arrays(info, 28, arrays)
    y = arrays["train_labels"].astype(int)
    lab = res["labels"]["train"]
    assert np.array_equal(np.asarray(lab["cooccurrence"]), y.T @ y)
    assert lab["counts"] == y.sum(0).tolist() and lab["no_label"] == int((y.sum(1) == 0).sum())


# --- leakage-free scores -----------------------------------------------------------------------

def test_leakage_free_drops_exactly_the_leaky_test_images() -> None:
    y = np.array([[0], [1], [0], [1], [0], [1]])
    right = np.eye(2)[y[:, 0]] * 0.8 + 0.1
    scores = right.copy()
    scores[[4, 5]] = scores[[4, 5]][:, ::-1]  # the model is wrong on test images 4 and 5
    audit = {"leaky_test_indices": [0, 1], "test_labels_hash": A.labels_hash(y)}
    out = A.leakage_free([{"test_labels": y, "test_scores": scores}], audit, "binary-class")
    assert out["leakfree_n_removed"] == 2 and out["leakfree_n_test"] == 4
    assert out["leakfree_acc_mean"] == pytest.approx(0.5)  # 2 right of the 4 kept (was 4/6)
    other = {**audit, "test_labels_hash": A.labels_hash(y[::-1])}  # an audit of another file
    assert np.isnan(A.leakage_free([{"test_labels": y, "test_scores": scores}], other,
                                   "binary-class")["leakfree_acc_mean"])


def test_leaderboard_shows_leakage_free_next_to_official(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from fake_run import labels, make_run

    from bench.leaderboard import build_leaderboard, format_board, load_scores, load_seeds

    monkeypatch.setenv("MEDMNIST_DATA", str(tmp_path / "no-data"))
    run = make_run(tmp_path, datasets=("breastmnist",))
    y = labels("breastmnist", "test")
    seeds = load_seeds(run)
    cnn = seeds[(seeds.family == "cnn") & (seeds.status == "ok")]
    first = load_scores(run, cnn.iloc[0]["run_dir"])
    right = np.flatnonzero((first["test_scores"][:, 1] > 0.5) == (y[:, 0] == 1))
    leaky = right[:40].tolist()  # remove 40 images the model got right: ACC must drop
    board = build_leaderboard(run, n_boot=50)
    assert board["leakfree_acc_mean"].isna().all()  # no audit anywhere: no column
    assert "leakage-free" not in format_board(board)
    A.run_audit_path(run, "breastmnist", 28).parent.mkdir()
    A.run_audit_path(run, "breastmnist", 28).write_text(json.dumps(
        {"leaky_test_indices": leaky, "test_labels_hash": A.labels_hash(y)}))
    board = build_leaderboard(run, n_boot=50)
    row = board[(board.family == "cnn") & (board.kind == "single")].iloc[0]
    accs = []
    keep = np.setdiff1d(np.arange(len(y)), leaky)
    for r in cnn.itertuples():
        s = load_scores(run, r.run_dir)
        accs.append(np.mean((s["test_scores"][keep, 1] > 0.5) == (y[keep, 0] == 1)))
    assert row["leakfree_acc_mean"] == pytest.approx(np.mean(accs))
    assert row["leakfree_acc_mean"] < row["test_acc_mean"]
    assert row["leakfree_n_removed"] == 40 and row["leakfree_n_test"] == len(y) - 40
    assert board["leakfree_auc_mean"].notna().all()  # ensembles too
    text = format_board(board)
    assert "leakage-free ACC / AUC" in text and "(40 of 156 removed)" in text


# --- the command -------------------------------------------------------------------------------

def test_cli_json_lists_pairs_and_caches_per_md5(tmp_path: Path) -> None:
    arrays, truth = planted_arrays(n=(200, 40, 100), n_exact=3, n_near=8, n_blank=2, seed=4)
    data = tmp_path / "data"
    _save(data, "breastmnist", arrays)
    out = tmp_path / "audit.json"
    r = invoke("audit", "breastmnist", "--data-dir", data, "--format", "json", "--out", out)
    assert r.exit_code == 0, r.output
    (res,) = json.loads(out.read_text())
    exact = res["exact"]["across"]["train-test"]
    assert {(p["train_index"], p["test_index"]) for p in exact} >= set(
        map(tuple, truth["exact_train_test"]))
    assert all(p["distance"] == 0 for p in exact)
    near = res["near"]["across"]["train-test"]
    assert near and all(set(p) >= {"train_index", "test_index", "distance"} for p in near)
    assert res["official_md5"] is False
    cached = list((data / ".medbench-audit").glob("breastmnist-*-v*.json"))
    assert len(cached) == 1 and res["md5"] in cached[0].name
    # a cached audit is read back, not recomputed
    cached[0].write_text(json.dumps({**res, "seconds": 123.0}))
    assert A.audit_file("breastmnist", data_dir=data)["seconds"] == 123.0
    assert A.audit_file("breastmnist", data_dir=data, use_cache=False)["seconds"] != 123.0


def test_cli_markdown_with_figure_and_run_copy(tmp_path: Path) -> None:
    arrays, _ = planted_arrays(n=(200, 40, 100), n_exact=2, n_near=4, n_blank=1, seed=6)
    data = tmp_path / "data"
    _save(data, "breastmnist", arrays)
    run = tmp_path / "run"
    run.mkdir()
    out = tmp_path / "rep" / "audit.md"
    r = invoke("audit", "breastmnist", "--data-dir", data, "--out", out, "--run", run)
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "| breastmnist |" in text and "![breastmnist duplicate pairs]" in text
    assert (out.parent / "audit_figures" / "breastmnist_pairs.png").stat().st_size > 1000
    saved = json.loads(A.run_audit_path(run, "breastmnist", 28).read_text())
    assert saved["leaky_test_indices"] and A.audit_for_run(run, "breastmnist", 28) == saved


def test_read_only_data_root_falls_back_to_user_cache(tmp_path: Path) -> None:
    arrays, _ = planted_arrays(n=(60, 10, 30), n_exact=1, n_near=0, n_blank=0, seed=8)
    data = tmp_path / "ro"
    _save(data, "breastmnist", arrays)
    os.chmod(data, 0o555)
    try:
        r = invoke("audit", "breastmnist", "--data-dir", data)
        assert r.exit_code == 0, r.output
        assert not (data / ".medbench-audit").exists()
        user = Path(os.environ["XDG_CACHE_HOME"]) / "medbench" / "audit"
        assert list(user.glob("breastmnist-*.json"))
    finally:
        os.chmod(data, 0o755)


@pytest.mark.parametrize("problem", ["missing", "corrupt", "wrong-shape", "unknown-flag",
                                     "unknown-option", "bad-format"])
def test_bad_input_one_line_nonzero_nothing_written(tmp_path: Path, problem: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDBENCH_OFFLINE", "1")
    data = tmp_path / "data"
    arrays, _ = planted_arrays(n=(40, 10, 20), n_exact=1, n_near=0, n_blank=0, seed=9)
    _save(data, "breastmnist", arrays)
    flags, extra = "breastmnist,pneumoniamnist", []
    if problem == "missing":
        pass  # pneumoniamnist.npz is not there
    elif problem == "corrupt":
        (data / "pneumoniamnist.npz").write_bytes(b"not a zip file")
    elif problem == "wrong-shape":
        _save(data, "pneumoniamnist", {**arrays, "test_images": arrays["test_images"][:, :20]})
    elif problem == "unknown-flag":
        flags = "breastmnist,nosuchmnist"
    elif problem == "unknown-option":
        flags, extra = "breastmnist", ["--colour", "red"]
    else:
        flags, extra = "breastmnist", ["--format", "xml"]
    before = sorted(p.name for p in data.iterdir())
    out = tmp_path / "out" / "audit.md"
    r = runner.invoke(cli.app, ["audit", flags, "--data-dir", str(data), "--out", str(out),
                                *extra])
    assert r.exit_code != 0
    if problem != "unknown-option":  # typer's own usage error; ours raise UserError
        assert isinstance(r.exception, A.UserError)
        msg = str(r.exception)
        assert "\n" not in msg and len(msg) > 20
    assert sorted(p.name for p in data.iterdir()) == before  # no cache written
    assert not out.parent.exists()


def test_report_section_counts_and_pairs_figure(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDMNIST_DATA", str(tmp_path / "no-data"))
    arrays, _ = planted_arrays(n=(120, 20, 60), n_exact=2, n_near=4, n_blank=0, seed=12)
    data = tmp_path / "data"
    _save(data, "breastmnist", arrays)
    run = tmp_path / "run"
    run.mkdir()
    A.run_audit("breastmnist", data, run_dir=run)
    figs = tmp_path / "rep_figures"
    lines = A.report_lines([(run, "breastmnist", 28)], figs, figs.name, data)
    text = "\n".join(lines)
    assert "## Data audit" in text and "| breastmnist | 120/20/60 |" in text
    assert "6 (10.0%)" in text  # 2 exact + 4 near test images have a copy in train
    assert (figs / "breastmnist_pairs.png").stat().st_size > 1000
    assert A.report_lines([(tmp_path / "other", "breastmnist", 28)], figs, "f", data) == []

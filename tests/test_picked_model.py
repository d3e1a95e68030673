"""The model deployed is the model reported (issue 26): `medbench predict` and the web page serve
the board's picked entry as the board scored it, and name it.

Run directories are written by hand: each seed has an untrained, seeded model.pt (so the
members answer differently and an average is visibly not any one of them) and a scores.npz
whose validation/test probabilities are crafted, so which entry the board picks is set by the
fixture, and each case is one where a wrong rule (test instead of validation, validation AUC
or ACC alone instead of the board's validation score) would pick another entry.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import run_main
from PIL import Image

from bench import metrics
from bench.data import dataset_info
from bench.errors import UserError
from bench.leaderboard import build_leaderboard, entry_probabilities, load_seeds, pickable
from bench.models import create_model
from bench.picked import canonical_name, picked_entry, run_board
from bench.predict import EnsembleModel, load_network, predict, score
from bench.results import FINAL_COLUMNS, write_table
from bench.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FLAG, TASK = "breastmnist", metrics.BINARY


@pytest.fixture
def cli(monkeypatch, capsys):
    """`medbench ARGS` through `bench.cli.main` (UserError -> exit 2): (code, stdout, stderr)."""
    return lambda *argv: run_main(monkeypatch, capsys, *argv)


def _probs(y: np.ndarray, signal: float, shift: float, seed: int) -> np.ndarray:
    """Binary probabilities: logit = signal * (+1 for class 1, -1 for class 0) + shift + noise.
    A large `shift` keeps the ranking (AUC) but moves the 0.5 threshold (ACC)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, len(y)) + signal * (2 * y[:, 0] - 1) + shift
    p1 = 1 / (1 + np.exp(-z))
    return np.stack([1 - p1, p1], axis=1)


Y_VAL = np.array([[0]] * 50 + [[1]] * 50)
Y_TEST = np.array([[0]] * 60 + [[1]] * 60)


def write_run(root: Path, families: dict[str, list[dict]]) -> Path:
    """A run directory: per family, one seed per dict (its model name and its val/test
    probabilities, optionally their mirrored twins); each seed's model.pt is an untrained
    network seeded by its own number, so members differ."""
    run, rows, k = Path(root), [], 0
    info = dataset_info(FLAG)
    for family, seeds in families.items():
        for s in seeds:
            k += 1
            rel = f"final/{FLAG}/{family}/seed{k}"
            (run / rel).mkdir(parents=True)
            arrays = {"val_labels": Y_VAL, "val_scores": s["val"], "test_labels": Y_TEST,
                      "test_scores": s["test"]}
            if "val_hflip" in s:
                arrays.update(val_scores_hflip=s["val_hflip"], test_scores_hflip=s["test_hflip"])
            np.savez(run / rel / "scores.npz", **arrays)
            conf = TrainConfig.from_dict({"dataset": FLAG, "model": s.get("model", family),
                                          "seed": k})
            torch.manual_seed(100 + k)
            net = create_model(conf.model, info.n_channels, info.n_classes, conf.size)
            torch.save({"config": conf.to_dict(), "state_dict": net.state_dict()},
                       run / rel / "model.pt")
            val = metrics.evaluate(Y_VAL, s["val"], TASK)
            test = metrics.evaluate(Y_TEST, s["test"], TASK)
            rows.append({"dataset": FLAG, "family": family, "seed": k, "size": 28,
                         "val_auc": val["auc"], "val_acc": val["acc"], "test_auc": test["auc"],
                         "test_acc": test["acc"], "run_dir": rel, "status": "ok",
                         "wall_s": 1.0, "device_s": 1.0})
    write_table(run / "final.parquet", rows, FINAL_COLUMNS)
    return run


def images(tmp: Path, n: int = 3) -> tuple[list[Path], np.ndarray]:
    """`n` random greyscale PNGs of the model's size, and the same pixels as a batch."""
    rng = np.random.default_rng(7)
    batch = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    paths = []
    for i, img in enumerate(batch):
        paths.append(tmp / f"img{i}.png")
        Image.fromarray(img).save(paths[-1])
    return paths, batch


def member_probabilities(entry, batch: np.ndarray, hflip: bool = False) -> list[np.ndarray]:
    """Each member's own probabilities, its model.pt loaded alone (mirrored in file layout,
    the input's last axis, when `hflip`)."""
    out = []
    for m in entry.members:
        net = load_network(m.run_dir, FLAG)
        p = score(net, batch)
        if hflip:
            p = (p + score(net, np.ascontiguousarray(batch[..., ::-1]))) / 2
        out.append(p)
    return out


# --- the rule: validation score, never test, never one validation metric alone ----------------

# Two entries compete: family `a`'s seed ensemble (2 seeds, the `cnn_small` model) and family
# `b`'s single seed (`mlp`). In both cases the board's rule picks `a ×2 ens`; the named wrong
# rule picks `b`.
CASES = {
    # b ranks validation images better (AUC 1.0) but its threshold is off (ACC ~0.64)
    "val AUC alone would pick b": (dict(signal=1.2, shift=0.0), dict(signal=2.5, shift=3.0)),
    # b has the higher validation ACC, a the much higher AUC and the higher mean of the two
    "val ACC alone would pick b": (dict(signal=2.5, shift=2.5), dict(signal=0.9, shift=0.0)),
}


def rule_case(root: Path, a: dict, b: dict) -> Path:
    """`a`'s validation as given, test weak; `b`'s test strong (so test would pick b)."""
    fams = {
        "a": [{"model": "cnn_small", "val": _probs(Y_VAL, **a, seed=s),
               "test": _probs(Y_TEST, 0.3, 0.0, seed=10 + s)} for s in (1, 2)],
        "b": [{"model": "mlp", "val": _probs(Y_VAL, **b, seed=3),
               "test": _probs(Y_TEST, 4.0, 0.0, seed=13)}],
    }
    return write_run(root, fams)


@pytest.mark.parametrize("case", list(CASES))
def test_the_pick_is_the_boards_validation_score_not_test_nor_one_metric(tmp_path, case):
    run = rule_case(tmp_path / "run", *CASES[case])
    board = build_leaderboard(run, n_boot=200)
    eligible = board[pickable(board)]
    assert sorted(eligible["family"]) == ["a ×2 ens", "b"]
    seeds = load_seeds(run)
    val = {row["family"]: metrics.evaluate(Y_VAL, entry_probabilities(seeds, row)["val_scores"],
                                           TASK) for _, row in eligible.iterrows()}
    eligible = eligible.set_index("family")
    # the fixture is a discriminating case: the wrong rules disagree with the board's
    assert eligible["test_auc_mean"].idxmax() == "b" and eligible["test_acc_mean"].idxmax() == "b"
    wrong = "auc" if "AUC" in case else "acc"
    assert max(val, key=lambda n: val[n][wrong]) == "b", val
    assert max(val, key=lambda n: val[n]["auc"] + val[n]["acc"]) == "a ×2 ens", val
    # ... and every consumer follows the board's marker
    assert board.loc[board["picked"], "family"].tolist() == ["a ×2 ens"]
    picked = picked_entry(run)
    assert picked.name == "a ×2 ens" and picked.picked and picked.kind == "ensemble"
    assert [(m.family, m.weight) for m in picked.members] == [("a", 0.5), ("a", 0.5)]
    quick = run_board(run)  # the choosing board predict builds: same rows, same pick
    assert quick["family"].tolist() == board["family"].tolist()
    assert quick["picked"].tolist() == board["picked"].tolist()
    from bench.webapp import predictable_entries

    names, default = predictable_entries(board, board["run"].iloc[0], FLAG)
    assert names[default] == "a ×2 ens"


# --- predict serves the entry: averaged, weighted, flipped ------------------------------------

def test_predict_serves_the_picked_seed_ensemble_and_names_it(tmp_path, cli):
    run = rule_case(tmp_path / "run", *CASES["val AUC alone would pick b"])
    paths, batch = images(tmp_path)
    m, rows = predict(run, None, paths)
    assert isinstance(m, EnsembleModel) and m.entry.name == "a ×2 ens"
    own = member_probabilities(m.entry, batch)
    want = np.mean(own, axis=0)
    np.testing.assert_allclose(score(m, batch), want, rtol=0, atol=1e-12)
    for p in own:  # the average is not any one member's answer
        assert np.abs(p - want).max() > 1e-3
    for row, p in zip(rows, want, strict=True):
        assert row["probabilities"] == pytest.approx(p.tolist(), abs=1e-4)
    code, out, err = cli("predict", "--run", run, "--format", "json", *paths)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["entry"] == "a ×2 ens" and doc["picked"] is True and doc["kind"] == "ensemble"
    assert [(Path(x["model"]), x["weight"]) for x in doc["members"]] == \
        [(mem.run_dir, 0.5) for mem in m.entry.members]
    assert [r["probabilities"] for r in doc["predictions"]] == [r["probabilities"] for r in rows]
    code, out, _ = cli("predict", "--run", run, *paths)
    assert code == 0 and "entry: a ×2 ens (picked); 2 models' probabilities mixed" in out


def test_entry_and_family_choose_another_board_entry(tmp_path, cli):
    run = rule_case(tmp_path / "run", *CASES["val AUC alone would pick b"])
    paths, batch = images(tmp_path, 2)
    m, rows = predict(run, FLAG, paths, entry="b")
    assert m.entry.name == "b" and not m.entry.picked and len(m.entry.members) == 1
    [own] = member_probabilities(m.entry, batch)
    assert [r["probabilities"] for r in rows] == [pytest.approx(p.tolist(), abs=1e-4)
                                                  for p in own]
    # `x2` stands for `×2`; --family names a family's own entry (its seed ensemble)
    assert canonical_name("a x2 ens") == "a ×2 ens"
    assert predict(run, FLAG, paths, entry="a x2 ens")[0].entry.name == "a ×2 ens"
    assert predict(run, FLAG, paths, family="a")[0].entry.name == "a ×2 ens"
    assert predict(run, FLAG, paths, family="b")[0].entry.name == "b"
    # a single-model entry of several seeds answers with its best-validation-AUC seed
    single = predict(run, FLAG, paths, entry="a")[0].entry
    seeds = load_seeds(run)
    best = seeds[seeds["family"] == "a"].sort_values("val_auc").iloc[-1]
    assert [m.run_dir for m in single.members] == [run / best["run_dir"]]

    code, out, err = cli("predict", "--run", run, "--entry", "c ×9 ens", *paths)
    assert code == 2 and out == "" and "Traceback" not in err and len(err.splitlines()) == 1
    assert "no entry 'c ×9 ens' for breastmnist" in err
    assert "choose one of: 'a ×2 ens', 'a', 'b'" in err  # picked first, then by val score
    code, _, err = cli("predict", "--run", run, "--entry", "b", "--family", "b", *paths)
    assert code == 2 and "--entry or --family, not both" in err
    code, _, err = cli("predict", "--run", run, "--family", "resnet18", *paths)
    assert code == 2 and "no resnet18 model for breastmnist" in err and "a, b" in err


def _complementary(y: np.ndarray, first_half: bool, seed: int) -> np.ndarray:
    """Informative on one half of the images only: two such families blend (bench.ensemble)."""
    half = np.arange(len(y)) < len(y) // 2
    signal = np.where(half if first_half else ~half, 3.0, 0.0)
    rng = np.random.default_rng(seed)
    p1 = 1 / (1 + np.exp(-(rng.normal(0, 1, len(y)) + signal * (2 * y[:, 0] - 1))))
    return np.stack([1 - p1, p1], axis=1)


def test_a_picked_blend_applies_its_weights(tmp_path, cli):
    fams = {f: [{"model": model, "val": _complementary(Y_VAL, f == "cnn_small", s),
                 "test": _complementary(Y_TEST, f == "cnn_small", 20 + s)} for s in range(2)]
            for f, model in (("cnn_small", "cnn_small"), ("mlp", "mlp"))}
    run = write_run(tmp_path / "run", fams)
    picked = picked_entry(run)
    assert picked.kind == "ensemble" and " + " in picked.name, picked.name
    weights = {m.family: 0 for m in picked.members}
    for mem in picked.members:
        weights[mem.family] += mem.weight
    board = run_board(run)
    row = board[board["picked"]].iloc[0]
    assert weights == pytest.approx(json.loads(row["weights"]))
    paths, batch = images(tmp_path)
    m, rows = predict(run, FLAG, paths)
    own = member_probabilities(m.entry, batch)
    by_family = {f: np.mean([p for p, mem in zip(own, m.entry.members, strict=True)
                             if mem.family == f], axis=0) for f in weights}
    want = sum(w * by_family[f] for f, w in json.loads(row["weights"]).items())
    np.testing.assert_allclose(score(m, batch), want, rtol=0, atol=1e-12)
    assert [r["probabilities"] for r in rows] == [pytest.approx(p.tolist(), abs=1e-4)
                                                  for p in want]
    code, out, _ = cli("predict", "--run", run, "--format", "json", paths[0])
    doc = json.loads(out)
    assert code == 0 and doc["entry"] == picked.name and len(doc["members"]) == 4
    assert sum(x["weight"] for x in doc["members"]) == pytest.approx(1.0)


def test_a_picked_flip_entry_averages_the_mirrored_input(tmp_path):
    """Mirrored validation scores far better than plain ones: the board adds `+hflip` and
    picks it; predict averages each member over the file and its mirror."""
    fams = {"cnn_small": [{"val": _probs(Y_VAL, 0.3, 0.0, s), "test": _probs(Y_TEST, 0.3, 0, s),
                           "val_hflip": _probs(Y_VAL, 3.0, 0.0, 30 + s),
                           "test_hflip": _probs(Y_TEST, 3.0, 0.0, 40 + s)} for s in range(2)]}
    run = write_run(tmp_path / "run", fams)
    picked = picked_entry(run)
    assert picked.name == "cnn_small ×2 ens +hflip" and picked.tta == "hflip"
    paths, batch = images(tmp_path)
    m, _ = predict(run, FLAG, paths)
    want = np.mean(member_probabilities(m.entry, batch, hflip=True), axis=0)
    np.testing.assert_allclose(score(m, batch), want, rtol=0, atol=1e-12)
    plain = np.mean(member_probabilities(m.entry, batch), axis=0)
    assert np.abs(plain - want).max() > 1e-4  # the mirror changed the answer


# --- what did not change ----------------------------------------------------------------------

def test_run_directories_without_a_board_give_the_old_errors(tmp_path, cli):
    paths, _ = images(tmp_path, 1)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds neither model.pt .* nor final.parquet"):
        predict(empty, None, paths)
    run = rule_case(tmp_path / "run", *CASES["val AUC alone would pick b"])
    with pytest.raises(UserError, match="no finished final model for pneumoniamnist"):
        predict(run, "pneumoniamnist", paths)
    code, _, err = cli("predict", "--run", empty, paths[0])
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_train_directory_serves_its_one_model(tmp_path, cli):
    run = tmp_path / "train"
    run.mkdir()
    conf = TrainConfig.from_dict({"dataset": FLAG, "model": "mlp", "seed": 4})
    info = dataset_info(FLAG)
    torch.manual_seed(0)
    net = create_model("mlp", info.n_channels, info.n_classes, 28)
    torch.save({"config": conf.to_dict(), "state_dict": net.state_dict()}, run / "model.pt")
    paths, _ = images(tmp_path, 1)
    code, out, _ = cli("predict", "--run", run, "--format", "json", paths[0])
    doc = json.loads(out)
    assert code == 0 and doc["entry"] == "mlp" and doc["members"] == [
        {"model": str(run), "family": "mlp", "seed": 4, "weight": 1.0}]
    code, _, err = cli("predict", "--run", run, "--entry", "cnn_small ×3 ens", paths[0])
    assert code == 2 and "`medbench train` directory holding one mlp model" in err


# --- the page ---------------------------------------------------------------------------------

def _page(run_dirs: list[str]) -> None:
    from bench.webapp import main

    main(run_dirs)


def test_the_page_serves_the_picked_ensemble_like_predict(tmp_path, cli):
    testing = pytest.importorskip("streamlit.testing.v1",
                                  reason="the web extra (Streamlit) is not installed")
    run = rule_case(tmp_path / "run", *CASES["val AUC alone would pick b"])
    at = testing.AppTest.from_function(_page, args=([str(run)],), default_timeout=300).run()
    at = at.sidebar.radio(key="view").set_value("Predict").run()
    assert not at.exception and not at.error
    assert at.selectbox[1].value == "a ×2 ens"
    shown = " ".join(m.value for m in at.markdown)
    assert "**Entry**: a ×2 ens (picked on validation)" in shown
    assert "**Members** (2)" in shown and "weight 0.500" in shown
    paths, _ = images(tmp_path, 1)
    png = paths[0]
    at.file_uploader[0].set_value((png.name, png.read_bytes(), "image/png")).run()
    assert not at.exception and not at.error
    code, out, _ = cli("predict", "--run", run, "--format", "json", png)
    expected = json.loads(out)["predictions"][0]
    assert list(at.table[0].value["probability"]) == [f"{p:.4f}"
                                                      for p in expected["probabilities"]]
    # choosing another entry on the page loads that entry
    at.selectbox[1].set_value("b").run()
    assert "**Entry**: b" in " ".join(m.value for m in at.markdown)

"""The published MedMNIST v2 table, pinned cell by cell.

`PUBLISHED` below is Tables 3 (MedMNIST2D: 12 datasets x 7 methods) and 4 (MedMNIST3D: 6
datasets x 8 methods) of Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D
and 3D biomedical image classification", Scientific Data 10:41 (2023),
doi:10.1038/s41597-022-01721-8: test AUC and ACC, written out here as a literal (generated once
from the verified copy ../shared/anchors/medmnist_v2_published.csv). The shipped
bench/baselines/medmnist_v2.csv must equal it in every dataset, method and metric, with no row
missing or extra: a mistyped baseline turns into a false "above"/"below" verdict on the board.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import medmnist
import pytest

from bench.baselines import COLUMNS, load_published

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "bench" / "baselines" / "medmnist_v2.csv"
ANCHOR = REPO.parent / "shared" / "anchors" / "medmnist_v2_published.csv"

METHODS_2D = ["ResNet-18 (28)", "ResNet-18 (224)", "ResNet-50 (28)", "ResNet-50 (224)",
              "auto-sklearn", "AutoKeras", "Google AutoML Vision"]
METHODS_3D = ["ResNet-18+2.5D", "ResNet-18+3D", "ResNet-18+ACS", "ResNet-50+2.5D",
              "ResNet-50+3D", "ResNet-50+ACS", "auto-sklearn", "AutoKeras"]

# (dataset, flag, method, AUC, ACC): Table 3 (2D) then Table 4 (3D), in the paper's order
PUBLISHED = (
    # PathMNIST
    ("PathMNIST", "pathmnist", "ResNet-18 (28)", 0.983, 0.907),
    ("PathMNIST", "pathmnist", "ResNet-18 (224)", 0.989, 0.909),
    ("PathMNIST", "pathmnist", "ResNet-50 (28)", 0.990, 0.911),
    ("PathMNIST", "pathmnist", "ResNet-50 (224)", 0.989, 0.892),
    ("PathMNIST", "pathmnist", "auto-sklearn", 0.934, 0.716),
    ("PathMNIST", "pathmnist", "AutoKeras", 0.959, 0.834),
    ("PathMNIST", "pathmnist", "Google AutoML Vision", 0.944, 0.728),
    # ChestMNIST
    ("ChestMNIST", "chestmnist", "ResNet-18 (28)", 0.768, 0.947),
    ("ChestMNIST", "chestmnist", "ResNet-18 (224)", 0.773, 0.947),
    ("ChestMNIST", "chestmnist", "ResNet-50 (28)", 0.769, 0.947),
    ("ChestMNIST", "chestmnist", "ResNet-50 (224)", 0.773, 0.948),
    ("ChestMNIST", "chestmnist", "auto-sklearn", 0.649, 0.779),
    ("ChestMNIST", "chestmnist", "AutoKeras", 0.742, 0.937),
    ("ChestMNIST", "chestmnist", "Google AutoML Vision", 0.778, 0.948),
    # DermaMNIST
    ("DermaMNIST", "dermamnist", "ResNet-18 (28)", 0.917, 0.735),
    ("DermaMNIST", "dermamnist", "ResNet-18 (224)", 0.920, 0.754),
    ("DermaMNIST", "dermamnist", "ResNet-50 (28)", 0.913, 0.735),
    ("DermaMNIST", "dermamnist", "ResNet-50 (224)", 0.912, 0.731),
    ("DermaMNIST", "dermamnist", "auto-sklearn", 0.902, 0.719),
    ("DermaMNIST", "dermamnist", "AutoKeras", 0.915, 0.749),
    ("DermaMNIST", "dermamnist", "Google AutoML Vision", 0.914, 0.768),
    # OCTMNIST
    ("OCTMNIST", "octmnist", "ResNet-18 (28)", 0.943, 0.743),
    ("OCTMNIST", "octmnist", "ResNet-18 (224)", 0.958, 0.763),
    ("OCTMNIST", "octmnist", "ResNet-50 (28)", 0.952, 0.762),
    ("OCTMNIST", "octmnist", "ResNet-50 (224)", 0.958, 0.776),
    ("OCTMNIST", "octmnist", "auto-sklearn", 0.887, 0.601),
    ("OCTMNIST", "octmnist", "AutoKeras", 0.955, 0.763),
    ("OCTMNIST", "octmnist", "Google AutoML Vision", 0.963, 0.771),
    # PneumoniaMNIST
    ("PneumoniaMNIST", "pneumoniamnist", "ResNet-18 (28)", 0.944, 0.854),
    ("PneumoniaMNIST", "pneumoniamnist", "ResNet-18 (224)", 0.956, 0.864),
    ("PneumoniaMNIST", "pneumoniamnist", "ResNet-50 (28)", 0.948, 0.854),
    ("PneumoniaMNIST", "pneumoniamnist", "ResNet-50 (224)", 0.962, 0.884),
    ("PneumoniaMNIST", "pneumoniamnist", "auto-sklearn", 0.942, 0.855),
    ("PneumoniaMNIST", "pneumoniamnist", "AutoKeras", 0.947, 0.878),
    ("PneumoniaMNIST", "pneumoniamnist", "Google AutoML Vision", 0.991, 0.946),
    # RetinaMNIST
    ("RetinaMNIST", "retinamnist", "ResNet-18 (28)", 0.717, 0.524),
    ("RetinaMNIST", "retinamnist", "ResNet-18 (224)", 0.710, 0.493),
    ("RetinaMNIST", "retinamnist", "ResNet-50 (28)", 0.726, 0.528),
    ("RetinaMNIST", "retinamnist", "ResNet-50 (224)", 0.716, 0.511),
    ("RetinaMNIST", "retinamnist", "auto-sklearn", 0.690, 0.515),
    ("RetinaMNIST", "retinamnist", "AutoKeras", 0.719, 0.503),
    ("RetinaMNIST", "retinamnist", "Google AutoML Vision", 0.750, 0.531),
    # BreastMNIST
    ("BreastMNIST", "breastmnist", "ResNet-18 (28)", 0.901, 0.863),
    ("BreastMNIST", "breastmnist", "ResNet-18 (224)", 0.891, 0.833),
    ("BreastMNIST", "breastmnist", "ResNet-50 (28)", 0.857, 0.812),
    ("BreastMNIST", "breastmnist", "ResNet-50 (224)", 0.866, 0.842),
    ("BreastMNIST", "breastmnist", "auto-sklearn", 0.836, 0.803),
    ("BreastMNIST", "breastmnist", "AutoKeras", 0.871, 0.831),
    ("BreastMNIST", "breastmnist", "Google AutoML Vision", 0.919, 0.861),
    # BloodMNIST
    ("BloodMNIST", "bloodmnist", "ResNet-18 (28)", 0.998, 0.958),
    ("BloodMNIST", "bloodmnist", "ResNet-18 (224)", 0.998, 0.963),
    ("BloodMNIST", "bloodmnist", "ResNet-50 (28)", 0.997, 0.956),
    ("BloodMNIST", "bloodmnist", "ResNet-50 (224)", 0.997, 0.950),
    ("BloodMNIST", "bloodmnist", "auto-sklearn", 0.984, 0.878),
    ("BloodMNIST", "bloodmnist", "AutoKeras", 0.998, 0.961),
    ("BloodMNIST", "bloodmnist", "Google AutoML Vision", 0.998, 0.966),
    # TissueMNIST
    ("TissueMNIST", "tissuemnist", "ResNet-18 (28)", 0.930, 0.676),
    ("TissueMNIST", "tissuemnist", "ResNet-18 (224)", 0.933, 0.681),
    ("TissueMNIST", "tissuemnist", "ResNet-50 (28)", 0.931, 0.680),
    ("TissueMNIST", "tissuemnist", "ResNet-50 (224)", 0.932, 0.680),
    ("TissueMNIST", "tissuemnist", "auto-sklearn", 0.828, 0.532),
    ("TissueMNIST", "tissuemnist", "AutoKeras", 0.941, 0.703),
    ("TissueMNIST", "tissuemnist", "Google AutoML Vision", 0.924, 0.673),
    # OrganAMNIST
    ("OrganAMNIST", "organamnist", "ResNet-18 (28)", 0.997, 0.935),
    ("OrganAMNIST", "organamnist", "ResNet-18 (224)", 0.998, 0.951),
    ("OrganAMNIST", "organamnist", "ResNet-50 (28)", 0.997, 0.935),
    ("OrganAMNIST", "organamnist", "ResNet-50 (224)", 0.998, 0.947),
    ("OrganAMNIST", "organamnist", "auto-sklearn", 0.963, 0.762),
    ("OrganAMNIST", "organamnist", "AutoKeras", 0.994, 0.905),
    ("OrganAMNIST", "organamnist", "Google AutoML Vision", 0.990, 0.886),
    # OrganCMNIST
    ("OrganCMNIST", "organcmnist", "ResNet-18 (28)", 0.992, 0.900),
    ("OrganCMNIST", "organcmnist", "ResNet-18 (224)", 0.994, 0.920),
    ("OrganCMNIST", "organcmnist", "ResNet-50 (28)", 0.992, 0.905),
    ("OrganCMNIST", "organcmnist", "ResNet-50 (224)", 0.993, 0.911),
    ("OrganCMNIST", "organcmnist", "auto-sklearn", 0.976, 0.829),
    ("OrganCMNIST", "organcmnist", "AutoKeras", 0.990, 0.879),
    ("OrganCMNIST", "organcmnist", "Google AutoML Vision", 0.988, 0.877),
    # OrganSMNIST
    ("OrganSMNIST", "organsmnist", "ResNet-18 (28)", 0.972, 0.782),
    ("OrganSMNIST", "organsmnist", "ResNet-18 (224)", 0.974, 0.778),
    ("OrganSMNIST", "organsmnist", "ResNet-50 (28)", 0.972, 0.770),
    ("OrganSMNIST", "organsmnist", "ResNet-50 (224)", 0.975, 0.785),
    ("OrganSMNIST", "organsmnist", "auto-sklearn", 0.945, 0.672),
    ("OrganSMNIST", "organsmnist", "AutoKeras", 0.974, 0.813),
    ("OrganSMNIST", "organsmnist", "Google AutoML Vision", 0.964, 0.749),
    # OrganMNIST3D
    ("OrganMNIST3D", "organmnist3d", "ResNet-18+2.5D", 0.977, 0.788),
    ("OrganMNIST3D", "organmnist3d", "ResNet-18+3D", 0.996, 0.907),
    ("OrganMNIST3D", "organmnist3d", "ResNet-18+ACS", 0.994, 0.900),
    ("OrganMNIST3D", "organmnist3d", "ResNet-50+2.5D", 0.974, 0.769),
    ("OrganMNIST3D", "organmnist3d", "ResNet-50+3D", 0.994, 0.883),
    ("OrganMNIST3D", "organmnist3d", "ResNet-50+ACS", 0.994, 0.889),
    ("OrganMNIST3D", "organmnist3d", "auto-sklearn", 0.977, 0.814),
    ("OrganMNIST3D", "organmnist3d", "AutoKeras", 0.979, 0.804),
    # NoduleMNIST3D
    ("NoduleMNIST3D", "nodulemnist3d", "ResNet-18+2.5D", 0.838, 0.835),
    ("NoduleMNIST3D", "nodulemnist3d", "ResNet-18+3D", 0.863, 0.844),
    ("NoduleMNIST3D", "nodulemnist3d", "ResNet-18+ACS", 0.873, 0.847),
    ("NoduleMNIST3D", "nodulemnist3d", "ResNet-50+2.5D", 0.835, 0.848),
    ("NoduleMNIST3D", "nodulemnist3d", "ResNet-50+3D", 0.875, 0.847),
    ("NoduleMNIST3D", "nodulemnist3d", "ResNet-50+ACS", 0.886, 0.841),
    ("NoduleMNIST3D", "nodulemnist3d", "auto-sklearn", 0.914, 0.874),
    ("NoduleMNIST3D", "nodulemnist3d", "AutoKeras", 0.844, 0.834),
    # FractureMNIST3D
    ("FractureMNIST3D", "fracturemnist3d", "ResNet-18+2.5D", 0.587, 0.451),
    ("FractureMNIST3D", "fracturemnist3d", "ResNet-18+3D", 0.712, 0.508),
    ("FractureMNIST3D", "fracturemnist3d", "ResNet-18+ACS", 0.714, 0.497),
    ("FractureMNIST3D", "fracturemnist3d", "ResNet-50+2.5D", 0.552, 0.397),
    ("FractureMNIST3D", "fracturemnist3d", "ResNet-50+3D", 0.725, 0.494),
    ("FractureMNIST3D", "fracturemnist3d", "ResNet-50+ACS", 0.750, 0.517),
    ("FractureMNIST3D", "fracturemnist3d", "auto-sklearn", 0.628, 0.453),
    ("FractureMNIST3D", "fracturemnist3d", "AutoKeras", 0.642, 0.458),
    # AdrenalMNIST3D
    ("AdrenalMNIST3D", "adrenalmnist3d", "ResNet-18+2.5D", 0.718, 0.772),
    ("AdrenalMNIST3D", "adrenalmnist3d", "ResNet-18+3D", 0.827, 0.721),
    ("AdrenalMNIST3D", "adrenalmnist3d", "ResNet-18+ACS", 0.839, 0.754),
    ("AdrenalMNIST3D", "adrenalmnist3d", "ResNet-50+2.5D", 0.732, 0.763),
    ("AdrenalMNIST3D", "adrenalmnist3d", "ResNet-50+3D", 0.828, 0.745),
    ("AdrenalMNIST3D", "adrenalmnist3d", "ResNet-50+ACS", 0.828, 0.758),
    ("AdrenalMNIST3D", "adrenalmnist3d", "auto-sklearn", 0.828, 0.802),
    ("AdrenalMNIST3D", "adrenalmnist3d", "AutoKeras", 0.804, 0.705),
    # VesselMNIST3D
    ("VesselMNIST3D", "vesselmnist3d", "ResNet-18+2.5D", 0.748, 0.846),
    ("VesselMNIST3D", "vesselmnist3d", "ResNet-18+3D", 0.874, 0.877),
    ("VesselMNIST3D", "vesselmnist3d", "ResNet-18+ACS", 0.930, 0.928),
    ("VesselMNIST3D", "vesselmnist3d", "ResNet-50+2.5D", 0.751, 0.877),
    ("VesselMNIST3D", "vesselmnist3d", "ResNet-50+3D", 0.907, 0.918),
    ("VesselMNIST3D", "vesselmnist3d", "ResNet-50+ACS", 0.912, 0.858),
    ("VesselMNIST3D", "vesselmnist3d", "auto-sklearn", 0.910, 0.915),
    ("VesselMNIST3D", "vesselmnist3d", "AutoKeras", 0.773, 0.894),
    # SynapseMNIST3D
    ("SynapseMNIST3D", "synapsemnist3d", "ResNet-18+2.5D", 0.634, 0.696),
    ("SynapseMNIST3D", "synapsemnist3d", "ResNet-18+3D", 0.820, 0.745),
    ("SynapseMNIST3D", "synapsemnist3d", "ResNet-18+ACS", 0.705, 0.722),
    ("SynapseMNIST3D", "synapsemnist3d", "ResNet-50+2.5D", 0.669, 0.735),
    ("SynapseMNIST3D", "synapsemnist3d", "ResNet-50+3D", 0.851, 0.795),
    ("SynapseMNIST3D", "synapsemnist3d", "ResNet-50+ACS", 0.719, 0.709),
    ("SynapseMNIST3D", "synapsemnist3d", "auto-sklearn", 0.631, 0.730),
    ("SynapseMNIST3D", "synapsemnist3d", "AutoKeras", 0.538, 0.724),
)


def table_mismatches(path: Path) -> list[str]:
    """Every difference between the CSV at `path` and `PUBLISHED`, one line each naming the
    cell (flag / method / metric) or the row; empty when they agree exactly. Numbers are
    compared as parsed floats, so "0.990" and "0.99" agree but 0.989 and 0.990 do not."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != COLUMNS:
            return [f"columns: file has {reader.fieldnames}, expected {COLUMNS}"]
        rows = list(reader)
    want = {(flag, method): (dataset, auc, acc) for dataset, flag, method, auc, acc in PUBLISHED}
    out: list[str] = []
    seen: set[tuple[str, str]] = set()
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        key = (row["flag"], row["method"])
        if key in seen:
            out.append(f"line {n}: duplicate row {key[0]} / {key[1]}")
            continue
        seen.add(key)
        if key not in want:
            out.append(f"line {n}: extra row {key[0]} / {key[1]} (not in the paper)")
            continue
        dataset, auc, acc = want[key]
        if row["dataset"] != dataset:
            out.append(f"{key[0]} / {key[1]} / dataset: file has {row['dataset']!r}, "
                       f"paper {dataset!r}")
        for metric, paper in (("auc", auc), ("acc", acc)):
            try:
                value = float(row[metric])
            except (TypeError, ValueError):
                out.append(f"{key[0]} / {key[1]} / {metric}: file has {row[metric]!r}, "
                           f"paper {paper}")
                continue
            if value != paper:
                out.append(f"{key[0]} / {key[1]} / {metric}: file has {row[metric]}, "
                           f"paper {paper}")
    out += [f"missing row {flag} / {method}" for flag, method in want if (flag, method) not in seen]
    return out


def test_the_literal_is_the_papers_two_tables() -> None:
    """12 2D datasets x 7 methods (Table 3) and 6 3D datasets x 8 methods (Table 4), every
    medmnist flag, no duplicate cell, every value a fraction."""
    assert len(PUBLISHED) == 12 * 7 + 6 * 8 == 132
    by_flag: dict[str, list[str]] = {}
    for _, flag, method, auc, acc in PUBLISHED:
        by_flag.setdefault(flag, []).append(method)
        assert 0 < auc <= 1 and 0 < acc <= 1, (flag, method)
    assert sorted(by_flag) == sorted(medmnist.INFO)
    for flag, methods in by_flag.items():
        want = METHODS_3D if flag.endswith("3d") else METHODS_2D
        assert methods == want, flag
    assert sum(f.endswith("3d") for f in by_flag) == 6


def test_shipped_csv_equals_the_paper_cell_by_cell() -> None:
    assert table_mismatches(SHIPPED) == []


def test_loaded_table_equals_the_paper() -> None:
    """What the leaderboard actually reads (bench.baselines.load_published) is the same table."""
    got = [(r.dataset, r.flag, r.method, r.auc, r.acc) for r in load_published().itertuples()]
    assert got == list(PUBLISHED)


def test_the_verified_anchor_copy_agrees() -> None:
    if not ANCHOR.is_file():
        pytest.skip(f"{ANCHOR} not available")
    assert table_mismatches(ANCHOR) == []


def _edit(src: Path, dst: Path, line_no: int, old: str, new: str) -> Path:
    lines = src.read_text().splitlines(keepends=True)
    assert old in lines[line_no - 1]
    lines[line_no - 1] = lines[line_no - 1].replace(old, new, 1)
    dst.write_text("".join(lines))
    return dst


def test_one_altered_number_is_caught_and_named(tmp_path: Path) -> None:
    lines = SHIPPED.read_text().splitlines()
    n = next(i for i, line in enumerate(lines, start=1)
             if line.startswith("BreastMNIST,breastmnist,ResNet-18 (28),"))
    assert lines[n - 1].endswith(",0.901,0.863")
    bad = _edit(SHIPPED, tmp_path / "acc.csv", n, ",0.863", ",0.864")
    assert table_mismatches(bad) == [
        "breastmnist / ResNet-18 (28) / acc: file has 0.864, paper 0.863"]
    bad = _edit(SHIPPED, tmp_path / "auc.csv", n, "0.901,", "0.91,")
    assert table_mismatches(bad) == [
        "breastmnist / ResNet-18 (28) / auc: file has 0.91, paper 0.901"]
    # the same number written with another number of digits is the same cell
    same = _edit(SHIPPED, tmp_path / "same.csv", n, "0.901,", "0.9010,")
    assert table_mismatches(same) == []


def test_missing_extra_and_duplicate_rows_are_caught(tmp_path: Path) -> None:
    lines = SHIPPED.read_text().splitlines(keepends=True)
    (tmp_path / "missing.csv").write_text("".join(lines[:-1]))
    assert table_mismatches(tmp_path / "missing.csv") == [
        "missing row synapsemnist3d / AutoKeras"]
    extra = "".join(lines) + "BreastMNIST,breastmnist,ResNet-18 (64),0.9,0.9\n"
    (tmp_path / "extra.csv").write_text(extra)
    assert table_mismatches(tmp_path / "extra.csv") == [
        f"line {len(lines) + 1}: extra row breastmnist / ResNet-18 (64) (not in the paper)"]
    (tmp_path / "dup.csv").write_text("".join(lines) + lines[1])
    assert table_mismatches(tmp_path / "dup.csv") == [
        f"line {len(lines) + 1}: duplicate row pathmnist / ResNet-18 (28)"]
    shutil.copy(SHIPPED, tmp_path / "cols.csv")
    _edit(SHIPPED, tmp_path / "cols.csv", 1, "auc,acc", "acc,auc")
    assert table_mismatches(tmp_path / "cols.csv")[0].startswith("columns:")

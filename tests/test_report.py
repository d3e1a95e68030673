"""Tests for bench.report: the markdown and every figure are written, non-empty, linked, and
nothing half-written is left behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fake_run import make_run

from bench.errors import UserError
from bench.report import write_report


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    run_a = make_run(root, "run-a")
    run_b = make_run(root, "run-b", strengths={"cnn": 2.0, "vgg": 0.8}, seed=1,
                     datasets=("breastmnist",))
    return write_report([run_a, run_b], root / "reports" / "demo.md", n_boot=200)


def test_report_writes_markdown_and_figures(report):
    md = report.read_text()
    figs = report.parent / "demo_figures"
    pngs = sorted(p.name for p in figs.iterdir())
    assert pngs == sorted([
        "cost.png", "trials_progress.png",
        *(f"{f}_{kind}.png" for f in ("breastmnist", "retinamnist")
          for kind in ("vs_published", "learning_curves", "confusion"))])
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert sorted(Path(x).name for x in linked) == pngs  # every PNG linked, once
    for rel in linked:
        png = report.parent / rel
        assert png.is_file() and png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_contents(report):
    md = report.read_text()
    for text in ("## Runs", "medbench run --name run-a", "spec.yaml", "## Leaderboard",
                 "### breastmnist (binary-class)", "## Across datasets", "| run-b |",
                 "Best final model (chosen by val AUC", "| 0 | malignant |",
                 "doi:10.1038/s41597-022-01721-8"):
        assert text in md, text
    assert not list(report.parent.rglob(".*"))  # no temp files left


def test_report_rejects_a_non_run_directory(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        write_report([tmp_path], tmp_path / "r.md")
    assert not (tmp_path / "r.md").exists()

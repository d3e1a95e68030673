"""`medbench report` on a `medbench search` directory (trials, no final.parquet): a search
report (best trials by validation, search figures, the run's record), not an error."""

from __future__ import annotations

import json

import numpy as np
from cli_helpers import run_main

from bench.results import TRIAL_COLUMNS, write_json, write_table


def search_only_run(root, n: int = 6):
    """trials.parquet as `medbench search` writes it: 6 mlp trials, ASHA stopped 3 at epoch 1,
    one failed."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        lr, epochs = float(10 ** rng.uniform(-4, -2)), 3 if i % 2 == 0 else 1
        failed = i == n - 1
        hist = [] if failed else [{"epoch": e, "val_auc": 0.6 + 0.05 * e + 0.01 * i,
                                   "images_seen": 64 * e} for e in range(1, epochs + 1)]
        rows.append({"dataset": "breastmnist", "family": "mlp", "trial_id": f"ab_0000{i}",
                     "status": "failed" if failed else "ok",
                     "error": "RuntimeError: boom" if failed else None,
                     "config": {"dataset": "breastmnist", "model": "mlp", "epochs": 3,
                                "lr": lr, "hidden": int(rng.choice([64, 128]))},
                     "history": hist, "best_val_auc": None if failed else hist[-1]["val_auc"],
                     "best_val_acc": None if failed else 0.7,
                     "best_epoch": None if failed else epochs, "epochs_run": len(hist),
                     "wall_s": 1.0, "device_s": 1.0, "finished_at": 1_700_000_000.0 + i,
                     "retries": 0})
    write_table(root / "trials.parquet", rows, TRIAL_COLUMNS)
    write_json(root / "meta.json", {"name": "s1", "wandb_mode": "offline"})
    return rows


def test_report_on_a_search_only_directory(tmp_path, monkeypatch, capsys):
    run = tmp_path / "s1"
    rows = search_only_run(run)
    code, out, err = run_main(monkeypatch, capsys, "report", run)
    assert code == 0, err
    report = run / "report.md"
    assert f"report: {report}" in out
    text = report.read_text()
    assert "# MedMNIST-Bench report (search only)" in text
    assert "Search only (no final phase)" in text and "not a leaderboard" in text
    best = max((r for r in rows if r["status"] == "ok"), key=lambda r: r["best_val_auc"])
    table = [line for line in text.splitlines() if line.startswith("| ") and "ab_0" in line]
    assert table[0].split(" | ")[3] == best["trial_id"] and len(table) == 3
    assert "breastmnist/mlp: 1 failed, 5 ok" in text
    assert "## Leaderboard" not in text and "test_auc" not in text  # nothing on test data
    figures = {p.name for p in (run / "report_figures").iterdir()}
    assert {"trials_progress.png", "breastmnist_learning_curves.png"} <= figures
    for name in figures:  # every figure drawn is linked from the report
        assert f"(report_figures/{name})" in text
    assert "## Runs" in text and json.loads((run / "meta.json").read_text())["name"] == "s1"
    assert not (run / "final.parquet").exists()

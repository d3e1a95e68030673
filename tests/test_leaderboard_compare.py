"""The board's comparison with the published numbers (`bench.leaderboard._compare`): the signed
deltas users read, and a (dataset, size) with no published row (NaN and 'n/a', no crash).

Written after mutation testing (reports/archive/test-strength.md): flipping the sign of either
delta, or breaking the no-reference branch, went unnoticed by the end-to-end board tests."""

from __future__ import annotations

import math

import pandas as pd

from bench.leaderboard import _compare

ROW = {"test_acc_mean": 0.80, "acc_lo": 0.75, "acc_hi": 0.85,
       "test_auc_mean": 0.90, "auc_lo": 0.88, "auc_hi": 0.92}
PUBLISHED = pd.DataFrame({"method": ["ResNet-18 (28)", "AutoKeras", "Google AutoML Vision"],
                          "acc": [0.70, 0.86, 0.78], "auc": [0.95, 0.89, 0.91]})


def test_deltas_are_ours_minus_published_and_verdicts_follow_the_ci() -> None:
    out = _compare(ROW, PUBLISHED, "ResNet-18 (28)")
    assert out["ref_method"] == "ResNet-18 (28)"
    assert (out["ref_acc"], out["ref_auc"]) == (0.70, 0.95)
    assert math.isclose(out["delta_acc_vs_resnet18"], 0.80 - 0.70)
    assert math.isclose(out["delta_auc_vs_resnet18"], 0.90 - 0.95)
    assert (out["best_acc_method"], out["best_acc"]) == ("AutoKeras", 0.86)
    assert (out["best_auc_method"], out["best_auc"]) == ("ResNet-18 (28)", 0.95)
    assert math.isclose(out["delta_acc_vs_best"], 0.80 - 0.86)
    assert math.isclose(out["delta_auc_vs_best"], 0.90 - 0.95)
    assert out["verdict_acc_vs_resnet18"] == "above"  # CI [0.75, 0.85] > 0.70
    assert out["verdict_auc_vs_resnet18"] == "below"  # CI [0.88, 0.92] < 0.95
    assert out["verdict_acc_vs_best"] == "below"  # CI [0.75, 0.85] < 0.86
    assert out["verdict_auc_vs_best"] == "below"

def test_no_published_row_gives_nan_and_na_not_an_error() -> None:
    out = _compare(ROW, PUBLISHED.iloc[0:0], "ResNet-18 (28)")
    for m in ("acc", "auc"):
        assert math.isnan(out[f"ref_{m}"]) and math.isnan(out[f"best_{m}"])
        assert out[f"best_{m}_method"] is None
        assert math.isnan(out[f"delta_{m}_vs_resnet18"]) and math.isnan(out[f"delta_{m}_vs_best"])
        assert out[f"verdict_{m}_vs_resnet18"] == out[f"verdict_{m}_vs_best"] == "n/a"


def test_reference_missing_but_other_methods_published() -> None:
    out = _compare(ROW, PUBLISHED.iloc[1:], "ResNet-18 (28)")
    assert math.isnan(out["ref_acc"]) and out["verdict_acc_vs_resnet18"] == "n/a"
    assert (out["best_acc_method"], out["best_acc"]) == ("AutoKeras", 0.86)

"""spaces.yaml: a run saves the search spaces it searched (after the spec's overrides) beside
spec.yaml, and the studies behind the report read that copy, not today's search_spaces/*.yaml;
runs made before the file existed fall back to today's YAML."""

from __future__ import annotations

from pathlib import Path

import yaml

from bench.experiment import prepare_run_dir
from bench.run_spaces import SPACES_FILE, family_space, read_spaces
from bench.spaces import build_spec, load_family_space
from bench.studies import search_distributions

RAW = {"name": "spaces", "datasets": ["breastmnist"], "families": ["mlp", "cnn_small"],
       "num_samples": 1, "max_epochs": 1, "scheduler": "fifo", "final_seeds": 0,
       "verify_md5": False, "resources": {"cpu": 1, "gpu": 0},
       "overrides": {"mlp": {"hidden": {"values": [32, 64]}, "lr": 0.01}}}


def test_a_fresh_run_directory_saves_the_resolved_spaces_beside_its_spec(tmp_path: Path):
    spec = build_spec(dict(RAW))
    run_dir = tmp_path / "run"
    assert prepare_run_dir(run_dir, spec) is False
    saved = yaml.safe_load((run_dir / SPACES_FILE).read_text())
    assert list(saved) == ["mlp", "cnn_small"]
    assert saved == {f: {n: p.as_dict() for n, p in space.items()}
                     for f, space in spec.spaces().items()}
    assert {f: family_space(run_dir, f) for f in saved} == spec.spaces()  # reads back equal
    assert saved["mlp"]["hidden"] == {"values": [32, 64]}  # the override, not mlp.yaml's
    assert saved["mlp"]["lr"] == {"value": 0.01}
    # a resume finds the same spec and leaves the saved copy as it was
    (run_dir / SPACES_FILE).write_text(yaml.safe_dump({"mlp": {"hidden": {"values": [7]}}}))
    assert prepare_run_dir(run_dir, spec) is True
    assert read_spaces(run_dir) == {"mlp": {"hidden": {"values": [7]}}}


def test_studies_read_the_saved_spaces_not_todays_yaml(tmp_path: Path):
    """The saved mlp space searched hidden in {7, 9} and dropout in [0, 0.9]; today's mlp.yaml
    says {256, 512, 1024} and [0, 0.5]. The study's distributions follow the run."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / SPACES_FILE).write_text(yaml.safe_dump({"mlp": {
        "hidden": {"values": [7, 9]},
        "dropout": {"distribution": "uniform", "min": 0.0, "max": 0.9}}}))
    configs = [{"hidden": 7, "dropout": 0.8}, {"hidden": 9, "dropout": 0.1}]
    dists = search_distributions(run_dir, "mlp", configs)
    assert list(dists["hidden"].choices) == [7, 9]
    assert (dists["dropout"].low, dists["dropout"].high) == (0.0, 0.9)
    assert "lr" not in dists  # not in the run's space, though common.yaml searches it today


def test_a_run_without_spaces_yaml_falls_back_to_todays_space(tmp_path: Path):
    run_dir = tmp_path / "old-run"
    run_dir.mkdir()
    assert read_spaces(run_dir) is None
    assert family_space(run_dir, "mlp") == load_family_space("mlp")
    overrides = {"hidden": {"values": [5, 6]}}
    assert family_space(run_dir, "mlp", overrides)["hidden"].as_dict() == {"values": [5, 6]}
    # a saved file without this family: today's space for it too
    (run_dir / SPACES_FILE).write_text(yaml.safe_dump({"cnn_small": {"lr": {"value": 0.1}}}))
    assert family_space(run_dir, "mlp") == load_family_space("mlp")
    # an unreadable file counts as none
    (run_dir / SPACES_FILE).write_text("mlp: [unclosed")
    assert read_spaces(run_dir) is None


def test_the_report_shows_the_saved_spaces_beside_the_spec(tmp_path: Path):
    from bench.report import _runs_md

    run_dir = tmp_path / "run"
    prepare_run_dir(run_dir, build_spec(dict(RAW)))
    text = "\n".join(_runs_md([run_dir]))
    assert "<summary>spec.yaml</summary>" in text
    assert f"<summary>{SPACES_FILE} (the search spaces as searched)</summary>" in text
    assert "- 32\n" in text  # the mlp override's hidden sizes, as saved


def test_a_resume_may_add_reference_seeds_but_change_nothing_else(tmp_path: Path):
    """`--reference` on a finished run trains the reference seeds without a new search:
    spec.yaml takes the larger count; any other change, or fewer reference seeds, is refused
    and leaves spec.yaml as it was."""
    import pytest

    from bench.errors import UserError

    run_dir = tmp_path / "run"
    assert prepare_run_dir(run_dir, build_spec(dict(RAW))) is False
    assert prepare_run_dir(run_dir, build_spec({**RAW, "reference_seeds": 3})) is True
    assert yaml.safe_load((run_dir / "spec.yaml").read_text())["reference_seeds"] == 3
    for change in ({"reference_seeds": 1}, {"reference_seeds": 3, "num_samples": 2},
                   {"reference_seeds": 4, "final_seeds": 2}):
        before = (run_dir / "spec.yaml").read_bytes()
        with pytest.raises(UserError, match="holds a run of a different spec"):
            prepare_run_dir(run_dir, build_spec({**RAW, **change}))
        assert (run_dir / "spec.yaml").read_bytes() == before

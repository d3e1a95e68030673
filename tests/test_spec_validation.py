"""Specs are checked whole before any Ray work: one clear UserError per broken field."""

from __future__ import annotations

import pytest

from bench.errors import UserError
from bench.spaces import build_spec

GOOD = {"name": "ok", "datasets": ["breastmnist"], "families": ["mlp"], "num_samples": 1,
        "max_epochs": 1, "grace_period": 1, "final_seeds": 0, "verify_md5": False,
        "resources": {"cpu": 1, "gpu": 0}}


def test_the_good_spec_passes() -> None:
    assert build_spec(dict(GOOD)).name == "ok"


@pytest.mark.parametrize("name", ["../x", "../../x", "a/b", "a\\b", "..", ".", ".hidden", "",
                                  "a..b", "/abs", "x" * 101, "new\nline", 5, None])
def test_run_names_that_could_escape_are_refused(name) -> None:
    with pytest.raises(UserError, match=r"run name .*\(no path separators"):
        build_spec({**GOOD, "name": name})


@pytest.mark.parametrize("name", ["smoke", "quick-cpu_2", "a.b", "X1"])
def test_plain_names_pass(name: str) -> None:
    assert build_spec({**GOOD, "name": name}).name == name


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" + \
       "".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n"
               for p, c in zip("bcdefgh", "cdefghi", strict=True))


def test_yaml_alias_bombs_and_huge_files_are_refused_before_expanding(tmp_path) -> None:
    from bench.spaces import MAX_YAML_BYTES, load_spec, read_yaml

    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("name: x\ndatasets: [breastmnist]\nfamilies: [mlp]\n" + BOMB)
    with pytest.raises(UserError, match="aliases"):
        load_spec(bomb)  # 9**9 leaves if expanded; refused from the parse events
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: x\n" + "#" * MAX_YAML_BYTES)
    with pytest.raises(UserError, match="above the"):
        read_yaml(huge)
    with pytest.raises(UserError, match="no such file"):
        read_yaml(tmp_path / "missing.yaml", "spec file")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must hold a mapping"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "ok.yaml").write_text("name: x\nlr: 1e-3\n")
    assert read_yaml(tmp_path / "ok.yaml") == {"name": "x", "lr": "1e-3"}

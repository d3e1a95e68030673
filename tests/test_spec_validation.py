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

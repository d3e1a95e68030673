"""`medbench train --help` shows each option's real default, while an option left out still
lets a preset or a config file decide (defaults < preset < config file < options < --set)."""

from __future__ import annotations

import re
from dataclasses import fields

import cli_helpers

from bench.errors import UserError


def run_main(monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    monkeypatch.setenv("COLUMNS", "200")  # one help row per option
    return cli_helpers.run_main(monkeypatch, capsys, *argv)


def test_train_help_shows_the_trainconfig_defaults(monkeypatch, capsys):
    from bench.train import TrainConfig

    code, out, _ = run_main(monkeypatch, capsys, "train", "--help")
    assert code == 0
    defaults = {f.name: getattr(TrainConfig(), f.name) for f in fields(TrainConfig)}
    shown = {}
    for line in out.splitlines():
        m = re.search(r"--([a-z-]+)\s.*\[default: ([^\]]+)\]", line)
        if m:
            shown[m.group(1).replace("-", "_")] = m.group(2)
    for name in ("dataset", "model", "epochs", "lr", "optimizer", "scheduler", "batch_size",
                 "weight_decay", "seed", "size", "device"):
        assert shown.get(name) == str(defaults[name]), name
    assert "None" not in shown.values()
    assert shown["out"].startswith("(runs/train-")


def test_options_left_out_leave_preset_and_config_values(monkeypatch, capsys, tmp_path):
    """preset < config file < option < --set, and a default shown in --help replaces none of
    them (the options' own defaults stay None)."""
    from bench.train import TrainConfig

    made: list[TrainConfig] = []
    original = TrainConfig.from_dict

    def recording(cls, cfg):
        made.append(original(cfg))
        return made[-1]

    def stop(*args, **kwargs):
        raise UserError("stop before loading data")

    monkeypatch.setattr(TrainConfig, "from_dict", classmethod(recording))
    monkeypatch.setattr("bench.data.load_arrays", stop)
    config = tmp_path / "train.yaml"
    config.write_text("model: mlp\nepochs: 3\nlr: 0.01\nbatch_size: 16\n")
    code, _, err = run_main(monkeypatch, capsys, "train", "--preset", "official", "--config",
                            config, "--lr", "0.05", "--set", "batch_size=8", "--out",
                            tmp_path / "run")
    assert code == 2 and "stop before loading data" in err
    (conf,) = made
    assert (conf.model, conf.epochs, conf.lr, conf.batch_size) == ("mlp", 3, 0.05, 8)
    assert conf.scheduler == "multistep" and conf.optimizer == "adam"  # the preset's
    assert conf.dataset == TrainConfig().dataset and conf.seed == 0

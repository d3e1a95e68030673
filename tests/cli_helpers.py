"""The two ways tests call `medbench`, written once.

`run_main` goes through `bench.cli.main`, the path a user's shell takes (UserError -> one line
and exit 2, RunFailure/OSError -> exit 1, signals -> 130/143); `invoke` goes through Typer's
CliRunner (output captured by Typer; an unexpected exception is raised, not hidden in the
result, so a test sees its traceback)."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner, Result

from bench import cli

_runner = CliRunner()


def run_main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
             *argv: object) -> tuple[int, str, str]:
    """`medbench ARGV` through `bench.cli.main` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["medbench", *map(str, argv)])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def invoke(*args: object) -> Result:
    """`medbench ARGS` through Typer's test runner; exceptions other than SystemExit raise."""
    result = _runner.invoke(cli.app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def default_sigint() -> None:
    """`preexec_fn` for a child that must see Ctrl-C: a test suite started in the background
    by a non-interactive shell (`cmd &`, as CI runners may do) inherits SIGINT *ignored*, and
    Python keeps an ignored SIGINT ignored; a user's terminal has the default."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)

"""Shared fixtures of the hostile tests: run the ``signstream`` CLI, read its one-line error."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from signstream.tools.cli import main as cli


@pytest.fixture
def run_cli() -> Callable[[list[str]], int]:
    """``run_cli(argv)``: the CLI's exit code, argparse's ``SystemExit`` included."""

    def run(argv: list[str]) -> int:
        try:
            return cli(argv)
        except SystemExit as exc:  # argparse errors
            return exc.code

    return run


@pytest.fixture
def one_line(capsys) -> Callable[[], str]:
    """``one_line()``: what the command wrote to stderr, asserted to be one line and no traceback."""

    def read() -> str:
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "Traceback" not in err[0], err
        return err[0]

    return read

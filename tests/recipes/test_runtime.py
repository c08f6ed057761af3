"""The one exit-code policy (recipes/runtime.py), shared by the recipes and the `signstream` commands."""

from __future__ import annotations

import errno
import os
import signal

import pytest

from signstream import SignstreamError
from signstream.recipes.runtime import guarded, main_guard


def _raises(exc: BaseException):
    def run():
        raise exc

    return run


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (the main) thread before kill returns
    raise AssertionError("SIGTERM did not stop the command")


@pytest.mark.parametrize(
    ("run", "code", "line"),
    [
        (
            _raises(SignstreamError("bad key 'x' in s3://user:secret@host/a")),
            2,
            "error: bad key 'x' in s3://***@host/a",
        ),
        (_raises(OSError(errno.ENOSPC, "No space left on device")), 1, "error: No space left on device"),
        (_raises(KeyboardInterrupt()), 130, "interrupted; rerun the same command to resume"),
        (_sigterm, 143, "terminated; rerun the same command to resume"),
    ],
)
def test_every_expected_ending_is_one_line_and_its_exit_code(run, code, line, capsys):
    before = signal.getsignal(signal.SIGTERM)
    assert guarded(run) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line.split(" in ")[0]) and "Traceback" not in err[0], err
    if code == 2:
        assert "secret" not in err[0]
    assert signal.getsignal(signal.SIGTERM) == before  # the handlers are put back


def test_a_named_command_prefixes_its_lines_and_says_rerun_only_when_it_resumes(capsys):
    assert guarded(_raises(KeyboardInterrupt()), name="signstream verify", resumable=False) == 130
    assert capsys.readouterr().err.strip() == "signstream verify: interrupted"
    assert guarded(_raises(SignstreamError("no such file")), name="signstream pack") == 2
    assert capsys.readouterr().err.strip() == "signstream pack: error: no such file"


def test_a_bug_keeps_its_traceback_and_main_guard_passes_argv():
    with pytest.raises(ZeroDivisionError):
        guarded(lambda: 1 / 0)
    with pytest.raises(OSError):
        guarded(_raises(OSError(errno.EACCES, "Permission denied")))  # not a full disk: a real error
    assert main_guard(lambda argv: len(argv), ["a=1", "b=2"]) == 2
    assert main_guard(lambda argv: None) == 0

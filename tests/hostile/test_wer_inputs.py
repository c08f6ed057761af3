"""Hostile inputs to ``signstream wer``: one-line errors (exit 2) for directories,
unwritable outputs and empty or incomplete hypothesis files; BOMs are accepted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from signstream.tools.cli import main

pytestmark = pytest.mark.hostile


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture
def files(tmp_path):
    ref = _write(tmp_path / "ref.txt", "s1\tREGEN WIND SONNE\ns2\tNEBEL\ns3\tSCHNEE\n")
    hyp = _write(tmp_path / "hyp.txt", "s1\tREGEN SONNE\ns2\tNEBEL\ns3\tSCHNEE\n")
    return ref, hyp


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("signstream wer: error:") and "Traceback" not in err, err
    return err


def test_reference_that_is_a_directory_is_a_one_line_error(files, tmp_path, capsys):
    _, hyp = files
    assert main(["wer", "--ref", str(tmp_path), "--hyp", str(hyp)]) == 2
    assert "is a directory" in _error(capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_ctm_in_a_read_only_directory_is_a_one_line_error(files, tmp_path, capsys):
    ref, hyp = files
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(["wer", "--ref", str(ref), "--hyp", str(hyp), "--ctm", str(locked / "h.ctm")]) == 2
        assert "not writable" in _error(capsys)
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs a Linux /proc")
def test_ctm_where_even_root_cannot_create_files_is_a_one_line_error(files, capsys):
    ref, hyp = files
    assert main(["wer", "--ref", str(ref), "--hyp", str(hyp), "--ctm", "/proc/signstream-h.ctm"]) == 2
    err = _error(capsys)
    assert "--ctm /proc/signstream-h.ctm" in err and ".tmp" not in err


@pytest.mark.parametrize("where", ["file_as_parent", "directory", "input"])
def test_ctm_or_stm_that_cannot_be_written_is_refused_before_anything_is_written(files, tmp_path, capsys, where):
    ref, hyp = files
    stm = tmp_path / "out.stm"
    ctm = {"file_as_parent": ref / "h.ctm", "directory": tmp_path, "input": hyp}[where]
    before = hyp.read_bytes()
    code = main(["wer", "--ref", str(ref), "--hyp", str(hyp), "--stm", str(stm), "--ctm", str(ctm)])
    assert code == 2
    assert "--ctm" in _error(capsys)
    assert not stm.exists() and hyp.read_bytes() == before
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("side", ["ref", "hyp", "both"])
def test_utf8_byte_order_mark_is_not_part_of_the_first_name(files, capsys, side):
    ref, hyp = files
    for path in {"ref": [ref], "hyp": [hyp], "both": [ref, hyp]}[side]:
        _write(path, path.read_text(encoding="utf-8"), "utf-8-sig")
    assert main(["wer", "--ref", str(ref), "--hyp", str(hyp), "--json"]) == 0
    score = json.loads(capsys.readouterr().out)
    assert (score["sentences"], score["missing"], score["del"]) == (3, 0, 1)


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_hypothesis_file_is_an_error_not_a_100_percent_score(files, capsys, text):
    ref, hyp = files
    _write(hyp, text)
    assert main(["wer", "--ref", str(ref), "--hyp", str(hyp)]) == 2
    assert "no hypotheses" in _error(capsys)
    assert capsys.readouterr().out == ""


def test_empty_reference_file_is_an_error_naming_it(files, capsys):
    ref, hyp = files
    _write(ref, "")
    assert main(["wer", "--ref", str(ref), "--hyp", str(hyp)]) == 2
    assert "ref.txt: no reference sentences" in _error(capsys)


def test_hypothesis_file_missing_sentences_is_an_error_saying_how_many(files, capsys):
    ref, hyp = files
    _write(hyp, "s1\tREGEN SONNE\n")
    assert main(["wer", "--ref", str(ref), "--hyp", str(hyp)]) == 2
    err = _error(capsys)
    assert "2 of 3 reference sentences have no hypothesis" in err and "'s2'" in err
    assert "--allow-missing" in err


def test_allow_missing_scores_gaps_as_deletions_with_a_warning(files, capsys):
    ref, hyp = files
    _write(hyp, "s1\tREGEN SONNE\n")
    assert main(["wer", "--ref", str(ref), "--hyp", str(hyp), "--allow-missing", "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning: 2 of 3 reference sentences have no hypothesis" in captured.err
    score = json.loads(captured.out)
    assert (score["missing"], score["del"], score["n"]) == (2, 3, 5)


def test_argument_errors_are_one_line(files, capsys):
    ref, _ = files
    with pytest.raises(SystemExit) as exc:
        main(["wer", "--ref", str(ref)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--hyp" in err and not err.startswith("usage")

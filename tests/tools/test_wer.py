"""The `signstream wer` command: output, CTM/STM files, one-line errors, start-up."""

import json
import subprocess
import sys

import pytest

from signstream.tools.cli import main


def _write(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- wer_score


# --------------------------------------------------------------------- CLI


@pytest.fixture
def ref_hyp(tmp_path):
    ref = _write(tmp_path / "ref.txt", ["s1\tREGEN WIND SONNE", "s2\tNEBEL"])
    hyp = _write(tmp_path / "hyp.txt", ["s1\tREGEN SONNE", "s2\tNEBEL"])
    return ref, hyp


def test_cli_prints_one_human_line(ref_hyp, capsys):
    ref, hyp = ref_hyp
    assert main(["wer", "--ref", str(ref), "--hyp", str(hyp)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == "WER 25.00% (S=0 D=1 I=0 N=4)"


def test_cli_json_is_parseable(ref_hyp, capsys):
    ref, hyp = ref_hyp
    assert main(["wer", "--ref", str(ref), "--hyp", str(hyp), "--json", "--cleanup", "none"]) == 0
    score = json.loads(capsys.readouterr().out)
    assert score["wer"] == 25.0 and score["del"] == 1 and score["cleanup"] == "none"


def test_cli_writes_cleaned_ctm_and_stm(ref_hyp, tmp_path, capsys):
    ref, hyp = ref_hyp
    hyp.write_text("s1\tloc-REGEN SONNE\ns2\t\n")
    ctm, stm = tmp_path / "o.ctm", tmp_path / "o.stm"
    assert main(["wer", "--ref", str(ref), "--hyp", str(hyp), "--ctm", str(ctm), "--stm", str(stm)]) == 0
    assert [line.split()[4] for line in ctm.read_text().splitlines()] == ["REGEN", "SONNE"]
    assert len(stm.read_text().splitlines()) == 2


def test_cli_unknown_hypothesis_name_exits_2_with_one_line(ref_hyp, capsys):
    ref, hyp = ref_hyp
    hyp.write_text("s1\tREGEN\nzz\tWIND\n")
    assert main(["wer", "--ref", str(ref), "--hyp", str(hyp)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'zz'" in err and err.startswith("signstream wer: error:")


def test_cli_missing_file_exits_2_naming_it(ref_hyp, tmp_path, capsys):
    ref, _ = ref_hyp
    assert main(["wer", "--ref", str(ref), "--hyp", str(tmp_path / "none.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.txt" in err


def test_cli_malformed_line_exits_2_with_file_and_line(ref_hyp, capsys):
    ref, hyp = ref_hyp
    hyp.write_text("s1\tREGEN\nbroken line\n")
    assert main(["wer", "--ref", str(ref), "--hyp", str(hyp)]) == 2
    assert "hyp.txt:2:" in capsys.readouterr().err


def test_cli_bad_cleanup_choice_is_an_argparse_error(ref_hyp):
    ref, hyp = ref_hyp
    with pytest.raises(SystemExit) as exc:
        main(["wer", "--ref", str(ref), "--hyp", str(hyp), "--cleanup", "bogus"])
    assert exc.value.code == 2


def test_wer_module_does_not_import_torch():
    code = "import sys, signstream.tools.wer; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

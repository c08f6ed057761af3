"""Scoring: corpus WER, gloss-file reading, CTM/STM writing, sclite agreement."""

import random
import re
import shutil
import subprocess

import pytest

from signstream import SignstreamError
from signstream.recipes.scoring import read_gloss_file, wer_score, write_ctm, write_stm


def _write(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- wer_score


def test_perfect_hypotheses_score_zero():
    refs = {"a": "REGEN WIND", "b": "SONNE"}
    s = wer_score(refs, dict(refs))
    assert (s["wer"], s["sub"], s["del"], s["ins"], s["n"], s["sentences"]) == (0.0, 0, 0, 0, 3, 2)


def test_empty_hypotheses_are_all_deletions():
    s = wer_score({"a": "REGEN WIND", "b": "SONNE"}, {"a": "", "b": ""})
    assert (s["wer"], s["del"], s["sub"], s["ins"]) == (100.0, 3, 0, 0)


def test_hypothesis_empty_after_cleanup_counts_as_deletions():
    s = wer_score({"a": "REGEN WIND"}, {"a": "__PU__ __EMOTION__"})
    assert (s["del"], s["wer"]) == (2, 100.0)


def test_missing_hypothesis_counts_as_empty():
    s = wer_score({"a": "REGEN WIND", "b": "SONNE"}, {"a": "REGEN WIND"})
    assert (s["del"], s["missing"], s["n"]) == (1, 1, 3)
    assert s["wer"] == pytest.approx(100 / 3)


def test_hypothesis_without_reference_raises_naming_it():
    with pytest.raises(SignstreamError, match="'ghost'"):
        wer_score({"a": "REGEN"}, {"a": "REGEN", "ghost": "WIND"})


def test_empty_reference_sentence_counts_hypothesis_as_insertions():
    s = wer_score({"a": "REGEN", "b": ""}, {"a": "REGEN", "b": "WIND SONNE"})
    assert (s["ins"], s["n"], s["wer"]) == (2, 1, 200.0)


def test_no_reference_tokens_at_all_raises():
    with pytest.raises(SignstreamError, match="no glosses"):
        wer_score({"a": "__PU__"}, {"a": "REGEN"})


def test_insertion_heavy_hypothesis_exceeds_100_percent():
    s = wer_score({"a": "REGEN"}, {"a": "WIND REGEN SONNE NEBEL"}, cleanup="none")
    assert (s["ins"], s["sub"], s["del"]) == (3, 0, 0)
    assert s["wer"] == 300.0


def test_corpus_wer_is_pooled_not_mean_of_sentence_rates():
    refs = {"short": "A1", "long": "B1 B2 B3 B4 B5 B6 B7 B8 B9"}
    hyps = {"short": "X1", "long": "B1 B2 B3 B4 B5 B6 B7 B8 B9"}
    s = wer_score(refs, hyps, cleanup="none")
    assert s["wer"] == pytest.approx(10.0)  # 1 error / 10 tokens; the sentence mean would be 50 %


def test_cleanup_is_applied_to_both_sides():
    s = wer_score({"a": "loc-NORD REGEN"}, {"a": "NORD REGEN REGEN"})
    assert s["wer"] == 0.0
    s_raw = wer_score({"a": "loc-NORD REGEN"}, {"a": "NORD REGEN REGEN"}, cleanup="none")
    assert s_raw["wer"] > 0.0


def test_substitution_is_counted_as_one_error():
    s = wer_score({"a": "REGEN WIND SONNE"}, {"a": "REGEN NEBEL SONNE"})
    assert (s["sub"], s["del"], s["ins"], s["hits"]) == (1, 0, 0, 2)


# ------------------------------------------------------------- gloss files


def test_read_gloss_file_reads_names_and_empty_sentences(tmp_path):
    p = _write(tmp_path / "h.txt", ["a\tREGEN  WIND", "", "b\t"])
    assert read_gloss_file(p) == {"a": "REGEN WIND", "b": ""}


def test_read_gloss_file_duplicate_name_names_file_and_line(tmp_path):
    p = _write(tmp_path / "h.txt", ["a\tREGEN", "b\tWIND", "a\tSONNE"])
    with pytest.raises(SignstreamError, match=r"h\.txt:3: duplicate sentence name 'a'"):
        read_gloss_file(p)


def test_read_gloss_file_line_without_tab_names_file_and_line(tmp_path):
    p = _write(tmp_path / "h.txt", ["a\tREGEN", "b REGEN"])
    with pytest.raises(SignstreamError, match=r"h\.txt:2: expected"):
        read_gloss_file(p)


def test_read_gloss_file_missing_file_raises(tmp_path):
    with pytest.raises(SignstreamError, match="nope.txt"):
        read_gloss_file(tmp_path / "nope.txt")


# ----------------------------------------------------------------- CTM/STM


def test_ctm_has_one_line_per_gloss_with_increasing_times(tmp_path):
    write_ctm(tmp_path / "h.ctm", {"b": "WIND", "a": "REGEN SONNE", "c": ""})
    rows = [line.split() for line in (tmp_path / "h.ctm").read_text().splitlines()]
    assert [r[0] for r in rows] == ["a", "a", "b"]
    assert [r[4] for r in rows] == ["REGEN", "SONNE", "WIND"]
    assert all(r[1] == "1" for r in rows) and float(rows[1][2]) > float(rows[0][2])


def test_stm_has_one_segment_per_sentence_covering_ctm_times(tmp_path):
    write_stm(tmp_path / "r.stm", {"a": "REGEN SONNE", "b": ""}, speakers={"a": "Signer 01"})
    rows = [line.split() for line in (tmp_path / "r.stm").read_text().splitlines()]
    assert rows[0] == ["a", "1", "Signer01", "0.000", rows[0][4], "REGEN", "SONNE"]
    assert rows[1][:3] == ["b", "1", "unknown"] and len(rows[1]) == 5
    assert float(rows[0][4]) > 1000


def test_ctm_rejects_names_with_whitespace(tmp_path):
    with pytest.raises(SignstreamError, match="whitespace"):
        write_ctm(tmp_path / "h.ctm", {"a b": "REGEN"})


# ------------------------------------------------------------------ sclite


def _sclite_cmd():
    if shutil.which("sclite"):
        return ["sclite"]
    if shutil.which("sctk"):  # Debian wraps the tools: `sctk sclite ...`
        return ["sctk", "sclite"]
    return None


def _random_corpus(seed, n):
    rng = random.Random(seed)
    # include the token shapes PHOENIX cleanup produces (+, -, __X__, umlauts)
    vocab = [f"G{i}" for i in range(40)] + ["A+B", "WIE-AUSSEHEN", "__ON__", "__OFF__", "SÜD"]
    refs, hyps = {}, {}
    for i in range(n):
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 12))]
        hyp = list(ref)
        for _ in range(rng.randint(0, 6)):
            op = rng.random()
            if op < 0.33 and hyp:
                hyp[rng.randrange(len(hyp))] = rng.choice(vocab)
            elif op < 0.66 and hyp:
                del hyp[rng.randrange(len(hyp))]
            else:
                hyp.insert(rng.randint(0, len(hyp)), rng.choice(vocab))
        refs[f"s{i:04d}"] = " ".join(ref)
        hyps[f"s{i:04d}"] = "" if i % 41 == 0 else " ".join(hyp)
    return refs, hyps


@pytest.mark.skipif(_sclite_cmd() is None, reason="sclite (Debian package sctk) not installed")
def test_wer_agrees_with_sclite_within_0_1_points(tmp_path):
    refs, hyps = _random_corpus(seed=7, n=300)
    ours = wer_score(refs, hyps, cleanup="none")
    write_ctm(tmp_path / "hyp.ctm", hyps)
    write_stm(tmp_path / "ref.stm", refs)
    cmd = [
        *_sclite_cmd(),
        "-h",
        str(tmp_path / "hyp.ctm"),
        "ctm",
        "-r",
        str(tmp_path / "ref.stm"),
        "stm",
        "-f",
        "0",
        "-o",
        "rsum",
        "stdout",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    # raw-count summary row: | Sum | #Snt #Wrd | Corr Sub Del Ins Err S.Err |
    row = re.search(r"\|\s*Sum\s*\|\s*(\d+)\s+(\d+)\s*\|\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", out)
    assert row, out
    n, err = int(row.group(2)), int(row.group(7))
    assert n == ours["n"]
    assert abs(100.0 * err / n - ours["wer"]) < 0.1

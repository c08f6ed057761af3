"""Vocabulary: id layout (blank 0, file line i -> i+1, trailing <unk>), I/O and errors."""

import pytest

from signstream import SignstreamError
from signstream.models.vocab import UNK, Vocabulary


def test_ids_follow_file_lines_with_blank_zero_and_unk_last(tmp_path):
    p = tmp_path / "glosses.txt"
    p.write_text("NEBEL\nREGEN\nWIND\n")
    v = Vocabulary.from_file(p)
    assert v.encode("NEBEL REGEN WIND") == [1, 2, 3]
    assert v.blank_id == 0 and v.unk_id == 4 and len(v) == 5


def test_encode_decode_round_trip():
    v = Vocabulary.from_glosses(["A", "B", "C-D", "__ON__"])
    s = "__ON__ C-D A A B"
    assert " ".join(v.decode(v.encode(s))) == s


def test_unknown_gloss_maps_to_unk_and_decodes_as_unk():
    v = Vocabulary.from_glosses(["A", "B"])
    ids = v.encode("A NEU B")
    assert ids == [1, v.unk_id, 2]
    assert v.decode(ids) == ["A", UNK, "B"]


def test_decode_skips_blanks_and_rejects_out_of_range_ids():
    v = Vocabulary.from_glosses(["A", "B"])
    assert v.decode([0, 1, 0, 2]) == ["A", "B"]
    with pytest.raises(SignstreamError, match="class id 9 out of range"):
        v.decode([1, 9])


def test_save_then_from_file_gives_equal_vocabulary(tmp_path):
    v = Vocabulary.from_sentences(["REGEN WIND", "SONNE REGEN"])
    assert v.glosses == ["REGEN", "SONNE", "WIND"]
    v.save(tmp_path / "sub" / "glosses.txt")
    assert Vocabulary.from_file(tmp_path / "sub" / "glosses.txt") == v
    assert not list((tmp_path / "sub").glob(".*tmp"))  # atomic write left no temp file


def test_missing_file_error_names_it(tmp_path):
    with pytest.raises(SignstreamError, match="absent.txt"):
        Vocabulary.from_file(tmp_path / "absent.txt")


def test_empty_file_error_names_it(tmp_path):
    p = tmp_path / "glosses.txt"
    p.write_text("\n\n")
    with pytest.raises(SignstreamError, match=r"glosses\.txt: vocabulary file is empty"):
        Vocabulary.from_file(p)


def test_trailing_blank_lines_are_ignored_but_inner_blank_line_is_an_error(tmp_path):
    p = tmp_path / "glosses.txt"
    p.write_text("A\nB\n\n")
    assert len(Vocabulary.from_file(p)) == 4
    p.write_text("A\n\nB\n")
    with pytest.raises(SignstreamError, match=r"glosses\.txt:2"):
        Vocabulary.from_file(p)


def test_duplicate_gloss_error_names_line(tmp_path):
    p = tmp_path / "glosses.txt"
    p.write_text("A\nB\nA\n")
    with pytest.raises(SignstreamError, match=r"glosses\.txt:3: duplicate gloss 'A'"):
        Vocabulary.from_file(p)


def test_reserved_unk_in_file_is_rejected():
    with pytest.raises(SignstreamError, match="reserved"):
        Vocabulary.from_glosses(["A", "<unk>"])

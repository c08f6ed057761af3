"""The shard format: the key rule, tars and their DALI index."""

from __future__ import annotations

import pytest

from signstream import SignstreamError
from signstream.loaders.format import (
    KEY_MAX,
    Member,
    is_key,
    make_keys,
    read_index,
    sample_key,
    sample_members,
    write_index,
    write_tar,
)


def test_keys_are_dot_free_and_unique():
    keys = make_keys(["a.b", "a_b", "x/y.avi", "a.b"])
    assert keys == ["a_b", "a_b_2", "x_y_avi", "a_b_3"]
    assert all("." not in k and is_key(k) for k in keys)


def test_a_key_is_cut_to_its_maximum_and_never_empty():
    assert sample_key("x" * (KEY_MAX + 5)) == "x" * KEY_MAX
    assert sample_key("") == "sample" and make_keys(["", ""]) == ["sample", "sample_2"]
    assert not is_key("a.b") and not is_key("")


def test_tar_and_index_round_trip_byte_for_byte(tmp_path):
    from signstream.loaders.format import (
        index_path_for,
        index_text,
        iter_samples,
        read_json_members,
        sample_members,
        scan_tar,
        shard_name,
        write_index,
        write_tar,
    )

    samples = [sample_members(k, "webm", bytes([i]) * (100 + i), {"name": n, "key": k})
               for i, (n, k) in enumerate([("a.b", "a_b"), ("ü", "_")])]
    tar = tmp_path / shard_name("dev", 3)
    assert tar.name == "dev-000003.tar" and index_path_for(tar).name == "dev-000003.idx"
    layout = write_tar(tar, samples)
    write_index(index_path_for(tar), layout)
    first = tar.read_bytes()
    assert write_tar(tmp_path / "again.tar", samples) == layout and (tmp_path / "again.tar").read_bytes() == first
    assert index_text(scan_tar(tar)) == index_path_for(tar).read_text()
    assert index_path_for(tar).read_text().startswith("v1.2 2\n")
    assert [k for k, _ in iter_samples(tar)] == ["a_b", "_"]
    assert [m["name"] for m in read_json_members(tar)] == ["a.b", "ü"]
    assert "ü".encode() in dict(samples[1])["_.json"]  # names keep their own characters


def test_an_index_reads_back_as_the_layout_it_was_written_from(tmp_path):
    layout = write_tar(tmp_path / "a.tar", [sample_members("k", "mp4", b"v" * 700, {"key": "k"})])
    write_index(tmp_path / "a.idx", layout)
    assert read_index(tmp_path / "a.idx") == layout
    assert [m.ext for m in layout[0]] == ["mp4", "json"] and layout[0][0].offset == 512


def test_an_index_line_states_the_extension():
    assert Member("x/a.b.webm", 0, 1).ext == "b.webm" and Member("x/a.b.webm", 0, 1).key == "x/a"
    assert Member("a.webm", 0, 1, "mp4").ext == "mp4"


@pytest.mark.parametrize(("text", "message"), [
    ("", r"is not a DALI v1.2 index \(first line \[\]\)"),
    ("v1.1 1\nwebm 512 10 a.webm\n", "is not a DALI v1.2 index"),
    ("v1.2 1\nwebm 512 10\n", r"a.idx:2: expected 'ext offset size name' groups"),
    ("v1.2 1\nwebm 512 ten a.webm\n", r"a.idx:2: offsets and sizes must be integers"),
    ("v1.2 2\nwebm 512 10 a.webm\n\n", r"a.idx: header says 2 samples, found 1 lines"),
])
def test_a_malformed_index_is_a_one_line_error_naming_the_file(tmp_path, text, message):
    (tmp_path / "a.idx").write_text(text)
    with pytest.raises(SignstreamError, match=message) as info:
        read_index(tmp_path / "a.idx")
    assert "\n" not in str(info.value)


def test_a_missing_index_is_an_error_naming_it(tmp_path):
    with pytest.raises(SignstreamError, match="cannot read index .*gone.idx"):
        read_index(tmp_path / "gone.idx")


def test_an_index_cannot_list_a_member_without_an_extension():
    from signstream.loaders.format import index_text

    assert index_text([[Member("a.mp4", 512, 10)]]) == "v1.2 1\nmp4 512 10 a.mp4\n"
    with pytest.raises(SignstreamError, match="'README' has no extension"):
        index_text([[Member("README", 512, 10)]])

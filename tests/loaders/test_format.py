"""The shard format: the key rule."""

from __future__ import annotations

from signstream.loaders.format import KEY_MAX, is_key, make_keys, sample_key


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

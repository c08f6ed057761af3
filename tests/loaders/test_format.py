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

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

    samples = [
        sample_members(k, "webm", bytes([i]) * (100 + i), {"name": n, "key": k})
        for i, (n, k) in enumerate([("a.b", "a_b"), ("ü", "_")])
    ]
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


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"is not a DALI v1.2 index \(first line \[\]\)"),
        ("v1.1 1\nwebm 512 10 a.webm\n", "is not a DALI v1.2 index"),
        ("v1.2 1\nwebm 512 10\n", r"a.idx:2: expected 'ext offset size name' groups"),
        ("v1.2 1\nwebm 512 ten a.webm\n", r"a.idx:2: offsets and sizes must be integers"),
        ("v1.2 2\nwebm 512 10 a.webm\n\n", r"a.idx: header says 2 samples, found 1 lines"),
    ],
)
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


# ------------------------------------------------------------------- manifest
def _manifest(**rest):
    from signstream.loaders.format import Manifest, ShardEntry

    entry = ShardEntry("dev-000000.tar", "dev-000000.idx", "ab" * 32, 2, 40, 4096, ("v0", "v1"))
    return Manifest.build(
        "dev",
        "vp9",
        "webm",
        "f" * 64,
        {"codec": "vp9"},
        [entry],
        png_bytes=9,
        skipped=({"name": "x", "reason": "gone"},),
        versions={"av": "1"},
        **rest,
    )


def test_a_manifest_written_reads_back_equal_and_its_layout_names_its_files(tmp_path):
    from signstream.loaders.format import (
        GLOSSES,
        MANIFEST,
        PackLayout,
        read_manifest,
        write_manifest,
    )

    layout = PackLayout(tmp_path)
    path = layout.manifest_path("dev")
    assert (path, layout.glosses_path) == (tmp_path / "dev" / MANIFEST, tmp_path / GLOSSES)
    assert layout.shard_path("dev", 1) == tmp_path / "dev" / "dev-000001.tar"
    path.parent.mkdir()
    write_manifest(path, _manifest())
    back = read_manifest(path)
    assert back == _manifest() and read_manifest(path.read_bytes(), "m") == back
    assert back.totals == {"shards": 1, "samples": 2, "frames": 40, "bytes": 4096, "png_bytes": 9}
    assert path.read_bytes() == _manifest().to_json()  # deterministic bytes


def _broken(change):
    import json

    data = _manifest().to_dict()
    change(data)
    return json.dumps(data).encode()


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d.pop("split"), "missing key 'split'"),
        (lambda d: d.pop("totals"), "missing key 'totals'"),
        (lambda d: d.update(codec=3), "'codec' is not text (got 3)"),
        (lambda d: d.update(fingerprint=None), "'fingerprint' is not text"),
        (lambda d: d.update(options=[]), "'options' is not an object"),
        (lambda d: d.update(shards={}), "'shards' is not a list"),
        (lambda d: d.update(skipped=[{"name": 1}]), "skipped entry 0 is not an object"),
        (lambda d: d["totals"].update(samples="2"), "'totals' 'samples' is not a whole number >= 0 (got '2')"),
        (lambda d: d["shards"][0].pop("sha256"), "shard entry 0 lacks sha256"),
        (lambda d: d["shards"][0].update(sha256="xyz"), "shard entry 0 'sha256' is not 64 hex digits"),
        (lambda d: d["shards"][0].update(samples=-1), "shard entry 0 'samples' is not a whole number >= 0"),
        (lambda d: d["shards"][0].update(frames=1.5), "shard entry 0 'frames' is not a whole number"),
        (lambda d: d["shards"][0].update(keys=["a.b"]), "shard entry 0 'keys' is not a list of sample keys"),
        (lambda d: d["shards"][0].update(file="../x.tar"), "shard entry 0 has an unusable 'file': '../x.tar'"),
        (lambda d: d["shards"][0].update(index="/abs.idx"), "shard entry 0 has an unusable 'index'"),
        (lambda d: d.update(shards=["x"]), "shard entry 0 is not an object"),
        (lambda d: d.pop("format"), "missing key 'format'"),
        (lambda d: d.update(format="webdataset/1"), "'format' is 'webdataset/1', not signstream-shards/<version>"),
    ],
)
def test_every_broken_manifest_field_is_named_on_one_line(change, named):
    from signstream.loaders.format import read_manifest

    with pytest.raises(SignstreamError) as info:
        read_manifest(_broken(change), "dev/manifest.json")
    assert str(info.value).startswith("dev/manifest.json: ") and named in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "named"),
    [
        (b"{not json", "not a readable JSON manifest"),
        (b"[1]", "not a manifest (a JSON list, not an object)"),
        (b'{"format": NaN}', "not a readable JSON manifest"),
    ],
)
def test_a_manifest_that_is_not_a_json_object_is_one_line(raw, named):
    from signstream.loaders.format import read_manifest

    with pytest.raises(SignstreamError) as info:
        read_manifest(raw, "m.json")
    assert str(info.value).startswith(f"m.json: {named}")


def test_a_missing_manifest_file_is_named(tmp_path):
    from signstream.loaders.format import read_manifest

    with pytest.raises(SignstreamError, match="cannot read manifest .*gone.json"):
        read_manifest(tmp_path / "gone.json")


def test_a_newer_format_version_is_refused_in_one_line():
    from signstream.loaders.format import read_manifest

    with pytest.raises(
        SignstreamError,
        match=r"m: format version 2 was written by a newer signstream "
        r"\(this one reads 1\)",
    ) as info:
        read_manifest(_manifest(version=2).to_json(), "m")
    assert "\n" not in str(info.value)


def test_an_older_readable_version_is_still_read_after_a_bump(monkeypatch):
    from signstream.loaders import format as fmt

    old = _manifest().to_json()  # written by version 1
    monkeypatch.setattr(fmt, "FORMAT_VERSION", 2)
    monkeypatch.setattr(fmt, "READABLE_VERSIONS", frozenset({1, 2}))
    assert fmt.read_manifest(old, "m").version == 1
    assert _manifest().version == 2 and b'"signstream-shards/2"' in _manifest().to_json()
    monkeypatch.setattr(fmt, "READABLE_VERSIONS", frozenset({2}))  # version 1 dropped
    with pytest.raises(SignstreamError, match="format version 1 is not one this signstream reads"):
        fmt.read_manifest(old, "m")


def test_the_writer_refuses_a_manifest_the_reader_would_refuse(tmp_path):
    from dataclasses import replace

    from signstream.loaders.format import write_manifest

    bad = replace(_manifest(), split=None)
    with pytest.raises(SignstreamError, match="'split' is not text"):
        write_manifest(tmp_path / "m.json", bad)
    assert not (tmp_path / "m.json").exists()

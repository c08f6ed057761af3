"""Resolving, validating, splitting and reading shards."""

from __future__ import annotations

import json
import shutil

import pytest

from signstream import SignstreamError
from signstream.loaders.format import (
    MANIFEST,
    Manifest,
    read_manifest,
    sample_members,
    scan_tar,
    write_manifest,
    write_tar,
)
from signstream.loaders.shards import SampleReader, rank_range, resolve_shards


def test_every_way_of_naming_a_split_gives_the_same_samples(vp9_split):
    tars = sorted(str(p) for p in vp9_split.glob("*.tar"))
    pattern = str(vp9_split / f"dev-{{000000..{len(tars) - 1:06d}}}.tar")
    keys = [r.key for r in resolve_shards(vp9_split).refs]
    assert len(keys) == 7 and len(set(keys)) == 7
    for spec in (vp9_split / MANIFEST, pattern, tars):
        assert [r.key for r in resolve_shards(spec).refs] == keys
    manifest = read_manifest(vp9_split / MANIFEST)
    assert keys == [k for shard in manifest.shards for k in shard.keys]
    assert resolve_shards(vp9_split).codecs == {"vp9"}


def test_index_and_tar_scan_agree(vp9_split):
    shardset = resolve_shards(vp9_split)
    for shard in shardset.shards:
        scanned = scan_tar(shard.path)
        assert [(m[0].offset, m[0].size) for m in scanned] == [r.video for r in shard.samples]


def test_reader_returns_video_bytes_and_metadata(vp9_split):
    shardset = resolve_shards(vp9_split)
    with SampleReader(shardset) as reader:
        data, meta, nbytes = reader.read(shardset.refs[0])
    assert data[:4] == b"\x1a\x45\xdf\xa3"  # EBML magic: a WebM file
    assert meta["key"] == shardset.refs[0].key and meta["num_frames"] > 0
    assert nbytes > len(data)


def test_missing_shard_is_a_one_line_error_naming_the_file(vp9_split, tmp_path):
    copy = tmp_path / "dev"
    shutil.copytree(vp9_split, copy)
    (copy / "dev-000001.tar").unlink()
    with pytest.raises(SignstreamError) as info:
        resolve_shards(copy)
    assert "dev-000001.tar" in str(info.value) and "\n" not in str(info.value)


def test_empty_split_is_an_error(tmp_path):
    with pytest.raises(SignstreamError, match="empty split"):
        resolve_shards(tmp_path)
    write_manifest(tmp_path / MANIFEST, Manifest.build("dev", "vp9", "webm", "", {}, []))
    with pytest.raises(SignstreamError, match="empty split"):
        resolve_shards(tmp_path)


def test_index_disagreeing_with_manifest_is_an_error(vp9_split, tmp_path):
    copy = tmp_path / "dev"
    shutil.copytree(vp9_split, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["shards"][0]["samples"] += 1
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SignstreamError, match="dev-000000"):
        resolve_shards(copy)


def test_shard_without_index_is_scanned(vp9_split, tmp_path):
    copy = tmp_path / "dev"
    shutil.copytree(vp9_split, copy)
    (copy / "dev-000000.idx").unlink()
    (copy / MANIFEST).unlink()
    shardset = resolve_shards(copy)
    assert shardset.shards[0].index_path is None
    assert [r.key for r in shardset.refs] == [r.key for r in resolve_shards(vp9_split).refs]


def test_a_file_that_is_not_a_tar_is_a_one_line_error_naming_it(tmp_path):
    bad = tmp_path / "dev-000000.tar"
    bad.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(SignstreamError, match="cannot read shard .*dev-000000.tar") as info:
        resolve_shards(bad)
    assert "\n" not in str(info.value)


def test_a_member_without_an_extension_is_a_sample_without_video(tmp_path):
    # the format's (and wds2idx's) grouping: "README" is a sample of its own, never silently dropped
    tar = tmp_path / "dev-000000.tar"
    write_tar(tar, [sample_members("v0", "webm", b"x" * 10, {"key": "v0"}), [("README", b"hello")]])
    with pytest.raises(SignstreamError, match="sample README in .*dev-000000.tar has no video member"):
        resolve_shards(tar)


def test_duplicate_keys_across_shards_are_an_error(vp9_split):
    tar = str(vp9_split / "dev-000000.tar")
    with pytest.raises(SignstreamError, match="duplicate sample key"):
        resolve_shards([tar, tar])


@pytest.mark.parametrize("n,world", [(7, 1), (7, 2), (7, 3), (2, 3), (100, 8)])
def test_rank_ranges_cover_every_item_once(n, world):
    seen = [i for r in range(world) for i in range(*rank_range(n, r, world))]
    assert seen == list(range(n))


def test_a_manifest_of_a_newer_format_is_refused_in_one_line(vp9_split, tmp_path):
    copy = tmp_path / "dev"
    shutil.copytree(vp9_split, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["format"] = "signstream-shards/99"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SignstreamError, match="manifest.json: format version 99 was written by a newer") as info:
        resolve_shards(copy)
    assert "\n" not in str(info.value)


def test_a_manifest_shard_name_that_is_a_path_is_refused_before_anything_is_opened(vp9_split, tmp_path):
    copy = tmp_path / "dev"
    shutil.copytree(vp9_split, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["shards"][0]["file"] = "../elsewhere.tar"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SignstreamError, match="shard entry 0 has an unusable 'file'"):
        resolve_shards(copy)

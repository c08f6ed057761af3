"""A bucket is guarded like a local ``--out``: packing other options over an earlier pack is
refused in one line, ``--overwrite`` re-uploads every object whose bytes differ (never
trusting an equal size) and removes the old shards the new manifest does not list."""

from __future__ import annotations

import json

import pytest

from signstream.tools.pack import pack_corpus

pytestmark = pytest.mark.hostile


def _fs():
    from signstream.loaders.remote import filesystem

    return filesystem("s3://")


def _pack(root, url: str, *extra: str) -> list[str]:
    return [
        "pack",
        "phoenix2014",
        "--root",
        str(root),
        "--out",
        url,
        "--splits",
        "dev",
        "--workers",
        "1",
        "--quiet",
        *extra,
    ]


def _objects(fs, prefix: str) -> dict[str, bytes]:
    return {p.split(prefix + "/", 1)[1]: fs.cat_file(p) for p in fs.find(prefix) if not p.endswith("pack-stats.json")}


def test_other_options_into_a_packed_bucket_are_refused_and_overwrite_replaces_every_object(
    synth_root, s3_env, tmp_path, run_cli, one_line, capsys
):
    fs = _fs()
    fs.mkdir("options-change")
    url = "s3://options-change/corpus"
    assert run_cli(_pack(synth_root, url, "--max-samples", "1")) == 0
    capsys.readouterr()
    before = _objects(fs, "options-change/corpus")
    assert run_cli(_pack(synth_root, url, "--quality", "31")) == 2
    line = one_line()
    assert f"{url}/dev" in line and "packed from other rows or options" in line and "--overwrite" in line
    fs.invalidate_cache()
    assert _objects(fs, "options-change/corpus") == before  # refused before anything was uploaded
    assert run_cli(_pack(synth_root, url, "--quality", "31", "--overwrite")) == 0
    local = tmp_path / "local"
    pack_corpus("phoenix2014", local, root=synth_root, splits=["dev"], workers=1, progress=False, quality=31)
    expected = {
        p.relative_to(local).as_posix(): p.read_bytes()
        for p in local.rglob("*")
        if p.is_file() and p.name != "pack-stats.json"
    }
    fs.invalidate_cache()
    assert _objects(fs, "options-change/corpus") == expected  # old one-video shards beyond the new ones gone


def test_object_of_equal_size_but_other_bytes_is_uploaded_again(synth_root, s3_env, run_cli):
    fs = _fs()
    fs.mkdir("same-size")
    url = "s3://same-size/corpus"
    assert run_cli(_pack(synth_root, url)) == 0
    manifest = json.loads(fs.cat_file("same-size/corpus/dev/manifest.json"))
    tar = f"same-size/corpus/dev/{manifest['shards'][0]['file']}"
    good = fs.cat_file(tar)
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF
    fs.pipe_file(tar, bytes(damaged))  # same size, other bytes (as another run's shard would be)
    assert run_cli(_pack(synth_root, url)) == 0
    assert fs.cat_file(tar) == good

"""Tests for ``signstream verify``: a good pack passes, each kind of damage is caught."""

from __future__ import annotations

import json
import shutil

from signstream.loaders.format import MANIFEST, PackLayout
from signstream.tools.cli import main as cli
from signstream.tools.verify import verify


def _copy(packed, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(packed, out)
    return out


def test_good_pack_verifies_with_decoding(packed, capsys):
    report = verify(packed, decode=True)
    assert report["ok"] and report["problems"] == []
    assert set(report["splits"]) == {"train", "dev", "test"}
    assert cli(["verify", str(packed), "--decode"]) == 0
    assert "verify: OK (decoded)" in capsys.readouterr().out


def test_flipped_byte_is_a_checksum_failure_and_exit_1(packed, tmp_path, capsys):
    out = _copy(packed, tmp_path)
    tar = sorted((out / "train").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF  # inside the first video's data
    tar.write_bytes(bytes(data))
    report = verify(out)
    assert not report["ok"]
    assert any("sha256" in p and tar.name in p for p in report["problems"])
    assert cli(["verify", str(out)]) == 1
    assert "verify: FAILED" in capsys.readouterr().out


def test_index_that_does_not_match_its_tar_is_reported(packed, tmp_path):
    out = _copy(packed, tmp_path)
    idx = sorted((out / "train").glob("*.idx"))[0]
    lines = idx.read_text().splitlines()
    idx.write_text("\n".join(lines[:-1]) + "\n")
    report = verify(out)
    assert any("does not describe" in p for p in report["problems"])


def test_missing_shard_and_unlisted_shard_are_reported(packed, tmp_path):
    out = _copy(packed, tmp_path)
    first = sorted((out / "dev").glob("*.tar"))[0]
    first.rename(out / "dev" / "dev-999999.tar")
    problems = verify(out)["problems"]
    assert any(p.endswith("missing") and first.name in p for p in problems)
    assert any("not listed in the manifest" in p for p in problems)


def test_decode_check_catches_wrong_frame_count(packed, tmp_path):
    out = _copy(packed, tmp_path)
    manifest_path = PackLayout(out).manifest_path("test")
    manifest = json.loads(manifest_path.read_text())
    # Rewrite one sample's JSON inside the tar with a wrong frame count, then
    # refresh checksums so that only the decode check can notice.
    from signstream.loaders.format import (
        index_path_for,
        iter_samples,
        sha256_file,
        write_index,
        write_tar,
    )

    shard = manifest["shards"][0]
    tar = out / "test" / shard["file"]
    samples = []
    for i, (key, members) in enumerate(iter_samples(tar)):
        if i == 0:
            meta = json.loads(members["json"])
            meta["num_frames"] += 3
            members["json"] = json.dumps(meta).encode()
        samples.append([(f"{key}.{ext}", data) for ext, data in members.items()])
    write_index(index_path_for(tar), write_tar(tar, samples))
    shard["sha256"] = sha256_file(tar)
    manifest_path.write_text(json.dumps(manifest))
    assert verify(out)["ok"]
    report = verify(out, decode=True)
    assert not report["ok"] and any("decodes to" in p for p in report["problems"])


def test_directory_without_manifest_is_a_one_line_error(tmp_path, capsys):
    assert cli(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"no {MANIFEST}" in err[0]


def test_a_manifest_of_a_newer_format_is_one_finding_and_its_shards_are_not_opened(packed, tmp_path, capsys):
    out = _copy(packed, tmp_path)
    path = PackLayout(out).manifest_path("dev")
    manifest = json.loads(path.read_text())
    manifest["format"] = "signstream-shards/7"
    path.write_text(json.dumps(manifest))
    report = verify(out)
    assert not report["ok"] and report["splits"]["dev"]["shards"] == 0
    assert report["problems"] == [
        f"{path}: format version 7 was written by a newer signstream (this one reads 1); upgrade signstream to read it"
    ]
    assert report["splits"]["train"]["problems"] == 0
    assert cli(["verify", str(out)]) == 1


def test_a_mistyped_manifest_field_is_a_finding_naming_it(packed, tmp_path):
    out = _copy(packed, tmp_path)
    path = PackLayout(out).manifest_path("dev")
    manifest = json.loads(path.read_text())
    manifest["codec"], manifest["shards"][0]["samples"] = 9, "3"
    path.write_text(json.dumps(manifest))
    problems = verify(out)["problems"]
    assert f"{path}: 'codec' is not text (got 9)" in problems
    assert f"{path}: shard entry 0 'samples' is not a whole number >= 0 (got '3')" in problems

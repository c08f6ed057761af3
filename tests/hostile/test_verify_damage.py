"""Hostile shards for ``signstream verify --decode``: every sample is checked, each
problem is one line naming shard, key and reason, and the exit code is 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from signstream.loaders.format import (
    index_path_for,
    iter_samples,
    scan_tar,
    sha256_file,
    write_index,
    write_tar,
)
from signstream.tools.cli import main as cli
from signstream.tools.verify import verify

pytestmark = pytest.mark.hostile


def _copy(packed: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(packed, out)
    return out


def _rewrite(out: Path, split: str, shard_no: int, change) -> list[str]:
    """Rewrite one shard's samples with ``change(i, key, members)``, then refresh the
    manifest's checksum and the index, so that only the decode check can notice."""
    manifest_path = out / split / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    shard = manifest["shards"][shard_no]
    tar = out / split / shard["file"]
    samples, keys = [], []
    for i, (key, members) in enumerate(iter_samples(tar)):
        change(i, key, members)
        samples.append([(f"{key}.{ext}", data) for ext, data in members.items()])
        keys.append(key)
    write_index(index_path_for(tar), write_tar(tar, samples))
    shard["sha256"] = sha256_file(tar)
    manifest_path.write_text(json.dumps(manifest))
    return keys


def _cli(out: Path, capsys) -> tuple[int, list[str]]:
    code = cli(["verify", str(out), "--decode"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err == ""
    return code, [line.strip() for line in captured.out.splitlines()]


def test_invalid_and_empty_json_are_named_and_every_other_sample_still_checked(packed, tmp_path, capsys):
    out = _copy(packed, tmp_path)

    def damage(i, key, members):
        if i == 0:
            members["json"] = b'{"name": "x", "num_frames": '  # cut short
        elif i == 1:
            members["json"] = b""
        elif i == 2:  # after the broken ones: must still be checked
            meta = json.loads(members["json"])
            meta["num_frames"] += 1
            members["json"] = json.dumps(meta).encode()

    keys = _rewrite(out, "train", 0, damage)
    assert verify(out)["ok"]  # checksums and index agree; only --decode can tell
    code, lines = _cli(out, capsys)
    assert code == 1 and lines[-1] == "verify: FAILED"
    tar = out / "train" / "train-000000.tar"
    problems = [line for line in lines if line.startswith(str(tar))]
    assert any(f"sample {keys[0]}: JSON is not valid" in p for p in problems)
    assert any(f"sample {keys[1]}: JSON member is empty" in p for p in problems)
    assert any(f"sample {keys[2]}: decodes to" in p for p in problems)
    assert not any(keys[3] in p for p in problems)  # the sound sample is not reported
    assert "dev: 1 shard(s)" in "\n".join(lines)  # the other splits were verified too


def test_json_claiming_a_frame_size_the_video_does_not_have_is_caught(packed, tmp_path, capsys):
    out = _copy(packed, tmp_path)

    def claim(i, key, members):
        if i == 1:
            meta = json.loads(members["json"])
            meta["height"] = meta["width"] = 9999
            members["json"] = json.dumps(meta).encode()

    keys = _rewrite(out, "dev", 0, claim)
    code, lines = _cli(out, capsys)
    assert code == 1
    assert any(f"sample {keys[1]}: frames are 48x64 (HxW), JSON says 9999x9999" in line for line in lines)


def test_json_without_fields_or_with_wrong_types_is_reported_not_a_crash(packed, tmp_path):
    out = _copy(packed, tmp_path)

    def strip(i, key, members):
        meta = json.loads(members["json"])
        if i == 0:
            del meta["num_frames"], meta["width"]
        elif i == 1:
            meta["height"] = "tall"
        elif i == 2:
            meta = [meta]
        members["json"] = json.dumps(meta).encode()

    keys = _rewrite(out, "test", 0, strip)
    problems = verify(out, decode=True)["problems"]
    assert any(f"sample {keys[0]}: JSON lacks num_frames, width" in p for p in problems)
    assert any(f"sample {keys[1]}: JSON height not a whole number" in p for p in problems)
    assert any(f"sample {keys[2]}: JSON is a list, not an object" in p for p in problems)


def test_manifest_missing_keys_is_reported_and_its_shards_still_decoded(packed, tmp_path, capsys):
    out = _copy(packed, tmp_path)
    keys = _rewrite(out, "dev", 0, lambda i, k, m: m.update(json=b"") if i == 0 else None)
    path = out / "dev" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["totals"], manifest["shards"][0]["sha256"]
    path.write_text(json.dumps(manifest))
    code, lines = _cli(out, capsys)
    assert code == 1
    assert f"{path}: missing key 'totals'" in lines
    assert f"{path}: shard entry 0 lacks sha256" in lines
    assert any(f"sample {keys[0]}: JSON member is empty" in line for line in lines)
    assert any(line.startswith("dev: 1 shard(s), ? videos") for line in lines)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", ""])
def test_broken_manifest_is_one_finding_and_other_splits_are_still_verified(packed, tmp_path, capsys, text):
    out = _copy(packed, tmp_path)
    (out / "dev" / "manifest.json").write_text(text)
    code, lines = _cli(out, capsys)
    assert code == 1
    assert any(line.startswith(str(out / "dev" / "manifest.json")) for line in lines)
    assert any(line.startswith("train:") and line.endswith(": ok") for line in lines)


def test_manifest_naming_a_file_outside_its_split_is_not_opened(packed, tmp_path):
    out = _copy(packed, tmp_path)
    (tmp_path / "secret.tar").write_bytes(b"x" * 2048)
    path = out / "dev" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["shards"][0]["file"] = "../../secret.tar"
    path.write_text(json.dumps(manifest))
    problems = verify(out, decode=True)["problems"]
    assert any("shard entry 0 has an unusable 'file'" in p for p in problems)
    assert not any("secret.tar: " in p and "sha256" in p for p in problems)


def test_tar_cut_mid_member_reports_damage_and_checks_the_samples_before_it(packed, tmp_path):
    out = _copy(packed, tmp_path)
    keys = _rewrite(out, "train", 0, lambda i, k, m: m.update(json=b"{") if i == 0 else None)
    tar = out / "train" / "train-000000.tar"
    video = next(m for m in scan_tar(tar)[1] if m.ext != "json")
    tar.write_bytes(tar.read_bytes()[: video.offset + video.size // 2])  # index and manifest kept
    problems = verify(out, decode=True)["problems"]
    assert any(p.startswith(f"{tar}: not a readable tar") for p in problems)
    assert f"{tar}: sample {keys[0]}: JSON is not valid" in "\n".join(problems)
    assert f"{tar}: sample {keys[1]}: member {video.name} is cut short" in problems
    assert all("\n" not in p for p in problems)

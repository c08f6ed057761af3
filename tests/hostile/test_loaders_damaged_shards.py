"""Hostile shards against the loaders: every backend skips and names what it cannot read.

Each case builds a small shard by hand (the packer never writes these): a tar
cut in the middle of a member (with and without its index), a zero-byte JSON
member, members stored inside a folder, and a JSON that lies about the frame
size. PyAV and DALI (both DALI post-processing paths) must deliver every
intact sample and record each bad one with its key, shard and reason.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from signstream.loaders import Transform, make_loader
from tests.loaders.shardkit import encode, moving_frames, write_tar

pytestmark = pytest.mark.hostile

BACKENDS = [
    ("pyav", {"num_workers": 0}),
    ("pyav", {"num_workers": 2}),
    ("dali", {"postprocess": "opencv"}),
    ("dali", {"postprocess": "dali"}),
]
IDS = ["pyav", "pyav-2-workers", "dali-opencv", "dali-ops"]


@pytest.fixture(scope="module")
def clips() -> dict[str, tuple[bytes, dict]]:
    """Four short VP9 clips with honest JSON (keys v0..v3)."""
    out = {}
    for i, n in enumerate([9, 14, 11, 12]):
        frames = moving_frames(n, seed=i)
        meta = {
            "key": f"v{i}",
            "name": f"v{i}",
            "num_frames": n,
            "height": frames.shape[1],
            "width": frames.shape[2],
            "codec": "vp9",
        }
        out[f"v{i}"] = (encode(frames), meta)
    return out


def shard(path: Path, samples: list[list[tuple[str, bytes]]], index: bool = True) -> Path:
    text = write_tar(path, samples)
    if index:
        path.with_suffix(".idx").write_text(text)
    return path


def members(clips, key: str, prefix: str = "", meta: dict | None = None, raw_meta: bytes | None = None):
    data, honest = clips[key]
    body = raw_meta if raw_meta is not None else json.dumps(meta or honest).encode()
    return [(f"{prefix}{key}.webm", data), (f"{prefix}{key}.json", body)]


def load(tar: Path, backend: str, options: dict):
    ld = make_loader(
        [tar],
        backend=backend,
        batch_size=2,
        transform=Transform(size=32, output="uint8"),
        handler="skip",
        rank=0,
        world_size=1,
        **options,
    )
    batches = list(ld)
    return [k for b in batches for k in b.keys], {s.key: s for s in ld.stats.skipped}


def cut_inside(tar: Path, member: str) -> None:
    """Truncate ``tar`` in the middle of ``member``'s data."""
    with tarfile.open(tar) as t:
        info = t.getmember(member)
    with open(tar, "r+b") as f:
        f.truncate(info.offset_data + info.size // 2)


@pytest.mark.parametrize(("backend", "options"), BACKENDS, ids=IDS)
@pytest.mark.parametrize("index", [True, False], ids=["with-index", "without-index"])
def test_a_tar_cut_mid_member_skips_and_names_only_the_cut_sample(tmp_path, clips, backend, options, index):
    tar = shard(tmp_path / "dev-000000.tar", [members(clips, k) for k in clips], index=index)
    cut_inside(tar, "v3.webm")
    keys, skipped = load(tar, backend, options)
    assert sorted(keys) == ["v0", "v1", "v2"]
    assert list(skipped) == ["v3"] and skipped["v3"].shard == "dev-000000.tar"
    assert "truncated" in skipped["v3"].reason


@pytest.mark.parametrize(("backend", "options"), BACKENDS, ids=IDS)
def test_a_zero_byte_json_member_is_skipped_and_named(tmp_path, clips, backend, options):
    samples = [members(clips, k, raw_meta=b"" if k == "v1" else None) for k in clips]
    keys, skipped = load(shard(tmp_path / "dev-000000.tar", samples), backend, options)
    assert sorted(keys) == ["v0", "v2", "v3"]
    assert list(skipped) == ["v1"] and "JSON" in skipped["v1"].reason


@pytest.mark.parametrize(("backend", "options"), BACKENDS, ids=IDS)
@pytest.mark.parametrize("index", [True, False], ids=["with-index", "without-index"])
def test_members_inside_a_folder_are_keyed_like_webdataset(tmp_path, clips, backend, options, index):
    # webdataset's rule: key = the member path up to the first dot of its file name
    samples = [members(clips, k, prefix="shard_a/") for k in clips]
    keys, skipped = load(shard(tmp_path / "dev-000000.tar", samples, index=index), backend, options)
    assert sorted(keys) == [f"shard_a/{k}" for k in clips] and not skipped


@pytest.mark.parametrize(("backend", "options"), BACKENDS, ids=IDS)
def test_json_that_lies_about_the_frame_size_is_skipped_and_named(tmp_path, clips, backend, options):
    lie = {**clips["v2"][1], "height": 9999, "width": 9999}
    samples = [members(clips, k, meta=lie if k == "v2" else None) for k in clips]
    keys, skipped = load(shard(tmp_path / "dev-000000.tar", samples), backend, options)
    assert sorted(keys) == ["v0", "v1", "v3"]
    assert list(skipped) == ["v2"]
    assert "9999x9999" in skipped["v2"].reason and "48x64" in skipped["v2"].reason

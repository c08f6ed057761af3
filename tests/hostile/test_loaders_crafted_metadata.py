"""Crafted sample JSON against every reader: shard metadata is untrusted input.

A JSON member nested thousands of levels deep (the parser's ``RecursionError``),
one too large to be metadata, one whose index entry claims a terabyte, and
fields of the wrong type or far out of range (``num_frames: 1e10`` once made the
loaders allocate tens of gigabytes). Each crafted sample is skipped and named
(key, shard, reason) by the PyAV and DALI loaders, reported on one line by
``signstream verify --decode``, and skipped by feature extraction, while every
honest sample still comes through.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from signstream.loaders import Transform, make_loader
from signstream.loaders.format import (
    MAX_JSON_BYTES,
    index_path_for,
    iter_samples,
    sha256_file,
    write_index,
    write_tar,
)
from signstream.tools.cli import main as cli
from tests.loaders.shardkit import encode, moving_frames
from tests.loaders.shardkit import write_tar as write_test_tar

pytestmark = pytest.mark.hostile

HONEST = {
    "name": "x",
    "split": "dev",
    "signer": "S1",
    "gloss": "A B",
    "text": "",
    "num_frames": 9,
    "fps": 25.0,
    "height": 48,
    "width": 64,
    "codec": "vp9",
}


def _nested(depth: int) -> bytes:
    return b'{"num_frames": ' + b"[" * depth + b"]" * depth + b"}"


# key -> (raw JSON member, what the skip reason must say)
CRAFTED = {
    "deep": (_nested(30_000), "nested more than 16 levels"),  # RecursionError inside json
    "huge": (b"[" * 200_000 + b"]" * 200_000, f"over the {MAX_JSON_BYTES}"),  # the 400 KB case
    "float_frames": (json.dumps({**HONEST, "num_frames": 1e10}).encode(), "num_frames not a whole number"),
    "int_frames": (json.dumps({**HONEST, "num_frames": 10**10}).encode(), "num_frames not a whole number"),
    "bytes_frames": (json.dumps({**HONEST, "num_frames": 900_000}).encode(), "-byte video can hold"),
    "nan_fps": (json.dumps({**HONEST, "fps": float("nan")}).encode(), "NaN is not a JSON number"),
    "zero_fps": (json.dumps({**HONEST, "fps": 0}).encode(), "JSON fps not a frame rate"),
    "tall": (json.dumps({**HONEST, "height": 10**9}).encode(), "JSON height not a whole number"),
    "list_gloss": (json.dumps({**HONEST, "gloss": ["A", "B"]}).encode(), "JSON gloss not text"),
}
BACKENDS = [("pyav", {"num_workers": 0}), ("dali", {"postprocess": "opencv"}), ("dali", {"postprocess": "dali"})]
IDS = ["pyav", "dali-opencv", "dali-ops"]


@pytest.fixture(scope="module")
def video() -> bytes:
    return encode(moving_frames(9, seed=1))


def _shard(tmp_path: Path, video: bytes, crafted: dict[str, bytes]) -> Path:
    """Honest samples h0..h2 around the crafted ones, with a DALI index."""
    samples = [
        [(f"h{i}.webm", video), (f"h{i}.json", json.dumps({**HONEST, "key": f"h{i}"}).encode())] for i in range(3)
    ]
    samples[1:1] = [[(f"{k}.webm", video), (f"{k}.json", raw)] for k, raw in crafted.items()]
    tar = tmp_path / "dev-000000.tar"
    tar.with_suffix(".idx").write_text(write_test_tar(tar, samples))
    return tar


def _load(tar: Path, backend: str, options: dict):
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
    keys = [k for batch in ld for k in batch.keys]
    return keys, {s.key: s for s in ld.stats.skipped}


@pytest.mark.parametrize(("backend", "options"), BACKENDS, ids=IDS)
def test_crafted_sample_json_is_skipped_and_named_and_honest_samples_load(tmp_path, video, backend, options):
    tar = _shard(tmp_path, video, {k: raw for k, (raw, _) in CRAFTED.items()})
    keys, skipped = _load(tar, backend, options)
    assert sorted(keys) == ["h0", "h1", "h2"]
    assert sorted(skipped) == sorted(CRAFTED)
    for key, (_, says) in CRAFTED.items():
        assert skipped[key].shard == "dev-000000.tar"
        assert says in skipped[key].reason and "\n" not in skipped[key].reason, (key, skipped[key].reason)


@pytest.mark.parametrize(("backend", "options"), BACKENDS, ids=IDS)
def test_an_index_claiming_a_terabyte_json_member_is_refused_before_reading(tmp_path, video, backend, options):
    tar = _shard(tmp_path, video, {"liar": json.dumps({**HONEST, "key": "liar"}).encode()})
    idx = tar.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    fields = lines[2].split()  # the crafted sample: "webm off size name json off size name"
    fields[6] = str(1 << 40)
    lines[2] = " ".join(fields)
    idx.write_text("\n".join(lines) + "\n")
    keys, skipped = _load(tar, backend, options)
    assert sorted(keys) == ["h0", "h1", "h2"]
    assert list(skipped) == ["liar"] and f"{1 << 40} bytes" in skipped["liar"].reason


def _craft_split(packed: Path, dest: Path, split: str, crafted: list[bytes]) -> list[str]:
    """Copy ``split`` and replace the JSON of its first samples by ``crafted`` (checksum and
    index refreshed, so only reading the JSON can tell); returns the crafted keys."""
    shutil.copytree(packed / split, dest / split)
    shutil.copyfile(packed / "glosses.txt", dest / "glosses.txt")
    manifest_path = dest / split / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    tar = dest / split / manifest["shards"][0]["file"]
    samples, keys = [], []
    for i, (key, members) in enumerate(iter_samples(tar)):
        if i < len(crafted):
            members["json"] = crafted[i]
            keys.append(key)
        samples.append([(f"{key}.{ext}", data) for ext, data in members.items()])
    write_index(index_path_for(tar), write_tar(tar, samples))
    manifest["shards"][0]["sha256"] = sha256_file(tar)
    manifest_path.write_text(json.dumps(manifest))
    return keys


def test_verify_decode_reports_crafted_json_on_one_line_each_and_checks_the_rest(packed, tmp_path, capsys):
    deep, huge, frames = CRAFTED["deep"], CRAFTED["huge"], CRAFTED["float_frames"]
    keys = _craft_split(packed, tmp_path, "train", [deep[0], huge[0], frames[0]])
    code = cli(["verify", str(tmp_path), "--decode"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    lines = [line.strip() for line in captured.out.splitlines()]
    assert lines[-1] == "verify: FAILED"
    for key, (_, says) in zip(keys, (deep, huge, frames)):
        assert any(f"sample {key}: " in line and says in line for line in lines), (key, lines)
    assert sum("train-000000.tar: sample" in line for line in lines) == 3  # the 4th sample is sound


def test_extract_features_skips_a_crafted_sample_and_extracts_the_others(packed, tmp_path, caplog):
    shards = tmp_path / "shards"
    (key,) = _craft_split(packed, shards, "dev", [CRAFTED["deep"][0]])
    out = tmp_path / "out"
    argv = [
        "extract_features",
        f"shards={shards}",
        f"out={out}",
        "backbone=s3d",
        "stop_after=4",
        "image_size=32",
        "backend=pyav",
        "num_workers=0",
        "progress=false",
        "dtype=float32",
        "calibrate_bn=2",
        "splits=dev",
        "writers=npy",
        "max_skipped_fraction=0.5",
    ]  # 1 of 3 skipped
    assert cli(argv) == 0
    dev = json.loads((out / "summary.json").read_text())["splits"]["dev"]
    (skipped,) = dev["skipped"]
    assert skipped["key"] == key and "nested" in skipped["reason"]
    assert dev["videos"] == 2
    assert f"skipping sample {key} in dev-000000.tar: JSON is nested" in caplog.text

"""Hostile feature files and names: untrusted pickles, colliding corpus names, samples
without metadata, path-like names in metadata, and byte-deterministic SignJoey files."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from signstream import SignstreamError
from signstream.loaders.feature_readers import load_split
from signstream.loaders.feature_writers import WRITERS, write_video
from signstream.tools.cli import main as cli

pytestmark = pytest.mark.hostile

EXTRACT = [
    "backbone=s3d",
    "stop_after=4",
    "image_size=32",
    "backend=pyav",
    "num_workers=0",
    "progress=false",
    "dtype=float32",
    "calibrate_bn=2",
]


class _RunsCommand:
    """Unpickling this runs a shell command (what a crafted feature file does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted(features: Path, marker: Path) -> None:
    features.mkdir()
    (features / "glosses.txt").write_text("AA\nBB\n")
    for split in ("train", "dev", "test"):
        with gzip.open(features / f"downloaded.{split}", "wb") as f:
            pickle.dump([{"name": "v", "gloss": "AA", "sign": _RunsCommand(marker)}], f)


def test_crafted_signjoey_pickle_is_refused_naming_the_file_and_its_command_never_runs(tmp_path, capsys):
    marker = tmp_path / "command-ran"
    _crafted(tmp_path / "feats", marker)
    out = tmp_path / "run"
    assert cli(["train_head", f"features={tmp_path / 'feats'}", f"out={out}", "epochs=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "downloaded.train" in err[0] and "refusing" in err[0]
    assert not marker.exists()
    assert not out.exists()
    with pytest.raises(SignstreamError, match="posix.system|os.system"):
        load_split(tmp_path / "feats", "dev", "signjoey")
    assert not marker.exists()


def test_plain_signjoey_pickles_written_by_other_tools_still_load(tmp_path):
    sign = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    (tmp_path / "f").mkdir()
    with gzip.open(tmp_path / "f" / "other.dev", "wb") as f:
        pickle.dump([{"name": "v1", "signer": "S", "gloss": "AA", "text": "a", "sign": sign}], f)
    (sample,) = load_split(tmp_path / "f", "dev", "signjoey")
    assert sample.name == "v1" and np.array_equal(sample.features, sign.numpy())


NAMES = [
    "dup",
    "dup",
    "a/b",
    "a_b",
    "features",
    "summary",
    "index",
    "config",
    "glosses",
    "fingerprint",
    "features.index",
    *[f"v{i:02d}" for i in range(8)],
]


@pytest.fixture(scope="module")
def colliding(synth_root, tmp_path_factory):
    """19 videos whose names collide as files (dup twice, a/b beside a_b, run-level file names), packed."""
    frames = sorted({p.parent for p in synth_root.rglob("*.png")})
    root = tmp_path_factory.mktemp("collide")
    rows = [f"{name}\t{frames[i % len(frames)]}/*.png\tAA BB\ttrain" for i, name in enumerate(NAMES)]
    (root / "table.tsv").write_text("name\tpath\tgloss\tsplit\n" + "\n".join(rows) + "\n")
    from signstream.tools.pack import pack_corpus

    pack_corpus("csv", root / "shards", table=root / "table.tsv", workers=1, progress=False, max_samples=8)
    out = root / "features"
    assert (
        cli(
            [
                "extract_features",
                f"shards={root / 'shards'}",
                f"out={out}",
                *EXTRACT,
                "splits=train",
                "writers=npy,signjoey,shards",
            ]
        )
        == 0
    )
    return out


@pytest.mark.slow
def test_colliding_names_keep_all_19_videos_in_every_output(colliding):
    assert len(NAMES) == 19
    summary = json.loads((colliding / "summary.json").read_text())["splits"]["train"]
    assert summary["videos"] == 19 and summary["resumed"] == 0 and summary["skipped"] == []
    assert len(list(colliding.glob("train/*.npy"))) == 19
    for fmt in ("npy", "signjoey", "shards"):
        samples = load_split(colliding, "train", fmt)
        assert len(samples) == 19, fmt
        assert all(s.features.shape[1] == 832 for s in samples)
    index = json.loads((colliding / "train" / "features.index.json").read_text())["videos"]
    assert sorted(m["name"] for m in index) == sorted(NAMES)
    assert len({m["key"] for m in index}) == 19
    with gzip.open(colliding / "features.train", "rb") as f:
        names = [e["name"] for e in pickle.load(f)]
    assert len(set(names)) == 19 and "features" in names and "a/b" in names


def _truncate_json(split_dir: Path) -> str:
    """Rewrite the first shard without its first sample's JSON member; returns that sample's key."""
    from signstream.loaders.format import write_index, write_tar

    manifest = json.loads((split_dir / "manifest.json").read_text())
    tar_path = split_dir / manifest["shards"][0]["file"]
    with tarfile.open(tar_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    dropped = next(name for name, _ in members if name.endswith(".json"))
    groups: dict[str, list] = {}
    for name, data in members:
        if name != dropped:
            groups.setdefault(name.split(".")[0], []).append((name, data))
    write_index(split_dir / manifest["shards"][0]["index"], write_tar(tar_path, list(groups.values())))
    return dropped.split(".")[0]


def test_a_sample_without_json_is_skipped_and_named_and_the_run_continues(packed, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(packed / "dev", shards / "dev")
    shutil.copyfile(packed / "glosses.txt", shards / "glosses.txt")
    key = _truncate_json(shards / "dev")
    out = tmp_path / "out"
    assert (
        cli(
            [
                "extract_features",
                f"shards={shards}",
                f"out={out}",
                *EXTRACT,
                "splits=dev",
                "writers=npy",
                "max_skipped_fraction=0.5",
            ]
        )
        == 0
    )  # 1 of 3 skipped: above the default share
    dev = json.loads((out / "summary.json").read_text())["splits"]["dev"]
    (skipped,) = dev["skipped"]
    assert skipped["key"] == key and skipped["shard"].endswith(".tar") and skipped["reason"]
    assert dev["videos"] == 2
    assert key in capsys.readouterr().err
    assert len(load_split(out, "dev", "npy")) == 2


def test_feature_shard_member_names_come_from_the_sanitised_key_never_from_metadata(tmp_path):
    store = tmp_path / "store"
    feats = np.zeros((2, 3), np.float32)
    write_video(store, "dev", "../../x", {"name": "/abs/x", "key": "/abs/x"}, feats, "float32")
    write_video(store, "dev", "ok", {"name": "ok"}, feats, "float32")
    sidecar = store / "dev" / "ok.json"  # metadata edited to point elsewhere
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "key": "../../y"}))
    assert sorted(p.name for p in (store / "dev").iterdir()) == ["______x.json", "______x.npy", "ok.json", "ok.npy"]
    shard_dir = WRITERS["shards"](store, tmp_path / "out", "dev")
    names = [m.name for tar in sorted(shard_dir.glob("*.tar")) for m in tarfile.open(tar)]
    assert len(names) == 4
    for name in names:
        assert "/" not in name and not name.startswith(".")
        assert name.split(".")[0].replace("_", "").replace("-", "").isalnum()
    assert sorted(s.name for s in load_split(tmp_path / "out", "dev", "shards")) == ["/abs/x", "ok"]


_WRITE = """
import sys, torch
from pathlib import Path
junk = [torch.empty(int(sys.argv[3])) for _ in range(5)]  # other allocations: other addresses
from signstream.loaders.feature_writers import WRITERS
print(WRITERS["signjoey"](Path(sys.argv[1]), Path(sys.argv[2]), "dev", prefix="demo"))
"""


def test_signjoey_files_are_byte_identical_across_two_runs(tmp_path):
    store = tmp_path / "store"
    rng = np.random.default_rng(0)
    for i in range(4):
        write_video(
            store,
            "dev",
            f"v{i}",
            {"name": f"v.{i}", "gloss": "AA", "signer": "S", "num_frames": 9},
            rng.normal(size=(3, 5)).astype(np.float32),
            "float32",
        )
    outs = []
    for n, size in (("a", 10), ("b", 12345)):
        subprocess.run(
            [sys.executable, "-c", _WRITE, str(store), str(tmp_path / n), str(size)],
            check=True,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
            capture_output=True,
        )
        outs.append((tmp_path / n / "demo.dev").read_bytes())
    assert outs[0] == outs[1]
    with gzip.open(tmp_path / "a" / "demo.dev", "rb") as f:
        entries = pickle.load(f)  # still a plain pickle, as SignJoey reads it
    assert [e["name"] for e in entries] == [f"v.{i}" for i in range(4)]
    assert all(isinstance(e["sign"], torch.Tensor) and e["sign"].shape == (3, 5) for e in entries)

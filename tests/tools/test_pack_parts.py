"""``signstream pack --part I/N`` and ``--merge``: N parts into one output give a one-machine pack's samples."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from signstream import SignstreamError
from signstream.loaders import Transform, make_loader
from signstream.loaders.format import iter_samples
from signstream.loaders.ownership import LOCK_NAME, OutputBusy
from signstream.tools import pack as pack_mod
from signstream.tools.cli import main as cli
from signstream.tools.pack_parts import merge_parts, pack_part, parse_part, part_range

PACK = dict(workers=1, progress=False, max_samples=2)


def _part(root, out, index, count=3, **kw):
    return pack_part("phoenix2014", out, part=(index, count), root=root, **{**PACK, **kw})


def _samples(out: Path, split: str) -> dict[str, dict[str, bytes]]:
    """Every sample of a split, by key, in manifest order: member extension -> bytes."""
    manifest = json.loads((out / split / "manifest.json").read_text())
    found = {}
    for shard in manifest["shards"]:
        for key, members in iter_samples(out / split / shard["file"]):
            found[key] = members
    return found


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def merged(synth_root, tmp_path_factory):
    """``synth_root`` packed as 3 parts (2 videos per shard) and merged."""
    out = tmp_path_factory.mktemp("parts")
    for index in (1, 2, 3):
        _part(synth_root, out, index)
    merge_parts("phoenix2014", out, root=synth_root, max_samples=2)
    return out


def test_three_parts_and_a_merge_give_the_samples_and_bytes_of_one_machine(merged, packed):
    for split in ("train", "dev", "test"):
        one, many = _samples(packed, split), _samples(merged, split)
        assert list(many) == list(one) and len(one) >= 3  # the same keys, in table order
        for key in one:  # encoding is deterministic: video and JSON members are byte for byte the same
            assert many[key] == one[key], key
        m = json.loads((merged / split / "manifest.json").read_text())
        files = [s["file"] for s in m["shards"]]
        assert files == sorted(files) and all(f.startswith(f"{split}-p") for f in files)  # part order
        assert {f.split("-")[1] for f in files} == {"p001of003", "p002of003", "p003of003"}
        ref = json.loads((packed / split / "manifest.json").read_text())
        assert (m["totals"]["samples"], m["totals"]["frames"]) == (ref["totals"]["samples"], ref["totals"]["frames"])
    assert (merged / "glosses.txt").read_bytes() == (packed / "glosses.txt").read_bytes()
    assert not (merged / ".parts").exists() and not (merged / LOCK_NAME).exists()


def test_the_merged_output_passes_verify_decode_and_the_loaders(merged, capsys):
    assert cli(["verify", str(merged), "--decode"]) == 0
    expected = list(_samples(merged, "dev"))
    kw = dict(rank=0, world_size=1, batch_size=2, transform=Transform(size=32))
    pyav = make_loader(merged / "dev", backend="pyav", num_workers=0, **kw)
    assert [k for b in pyav for k in b.keys] == expected and pyav.stats.skipped == []
    pytest.importorskip("nvidia.dali")
    dali = make_loader(merged / "dev", backend="dali", device="cpu", num_workers=1, **kw)
    assert [k for b in dali for k in b.keys] == expected


def test_merge_before_every_part_is_packed_names_the_missing_parts(synth_root, tmp_path, capsys):
    out = tmp_path / "out"
    _part(synth_root, out, 2, splits=["dev"])
    argv = ["pack", "phoenix2014", "--root", str(synth_root), "--out", str(out), "--splits", "dev", "--merge"]
    assert cli([*argv, "--max-samples", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dev 1/3, dev 3/3" in err[0] and "dev 2/3" not in err[0], err
    assert not (out / "dev" / "manifest.json").exists() and (out / ".parts" / "p002of003" / "dev.json").is_file()
    _part(synth_root, out, 1, splits=["dev"], max_samples=3)  # other options: not the part the merge wants
    assert cli([*argv, "--max-samples", "2"]) == 2
    assert "dev 1/3 (packed from other rows or options), dev 3/3" in capsys.readouterr().err


def test_an_interrupted_part_resumes_to_the_bytes_of_an_uninterrupted_one(synth_root, tmp_path, monkeypatch):
    ref, out = tmp_path / "ref", tmp_path / "out"
    _part(synth_root, ref, 1, count=2, splits=["train"], max_samples=1)
    flush = pack_mod.ShardWriter.flush

    def fail_after_one_shard(self, next_row):
        if self.state["shards"]:
            raise KeyboardInterrupt  # as a kill after the first shard
        flush(self, next_row)

    monkeypatch.setattr(pack_mod.ShardWriter, "flush", fail_after_one_shard)
    with pytest.raises(KeyboardInterrupt):
        _part(synth_root, out, 1, count=2, splits=["train"], max_samples=1)
    state = json.loads((out / ".parts" / "p001of002" / "train.state.json").read_text())
    assert len(state["shards"]) == 1 and not (out / ".parts" / "p001of002" / "train.json").exists()
    monkeypatch.setattr(pack_mod.ShardWriter, "flush", flush)
    _part(synth_root, out, 1, count=2, splits=["train"], max_samples=1)
    assert _tree(out) == _tree(ref)  # shards, indexes and the part record; no state, no lock left
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        f"train-p001of002-00000{i}.{ext}" for i in range(3) for ext in ("idx", "tar")
    ]


_HOLD_PART = """
import sys, time
from pathlib import Path
from signstream.tools import pack_parts
real, gate = pack_parts.pack_split, Path(sys.argv[3])

def held(*args, **kwargs):  # holds the part's lock until the test opens the gate (bounded)
    Path(sys.argv[4]).touch()
    deadline = time.time() + 60
    while not gate.exists() and time.time() < deadline:
        time.sleep(0.05)
    return real(*args, **kwargs)

pack_parts.pack_split = held
pack_parts.pack_part("phoenix2014", sys.argv[2], part=(2, 3), root=sys.argv[1], workers=1, progress=False,
                     max_samples=2, splits=["dev"])
"""


def test_two_runs_of_the_same_part_refuse_each_other_while_other_parts_run(synth_root, tmp_path):
    out, gate, started = tmp_path / "out", tmp_path / "gate", tmp_path / "started"
    cmd = [sys.executable, "-c", textwrap.dedent(_HOLD_PART), str(synth_root), str(out), str(gate), str(started)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not started.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert started.exists(), proc.stderr.read() if proc.poll() is not None else "part 2/3 did not start"
        with pytest.raises(OutputBusy, match=rf"p002of003 is being written by another run \(pid {proc.pid} "):
            _part(synth_root, out, 2, splits=["dev"])
        _part(synth_root, out, 1, splits=["dev"])  # another part packs side by side
        _part(synth_root, out, 3, splits=["dev"])
    finally:
        gate.touch()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    merge_parts("phoenix2014", out, root=synth_root, splits=["dev"], max_samples=2)
    assert json.loads((out / "dev" / "manifest.json").read_text())["totals"]["samples"] == 3


def test_parts_are_contiguous_blocks_covering_every_row_once():
    for rows in (0, 1, 5, 6, 7, 100):
        for count in (1, 2, 3, 7):
            blocks = [part_range(rows, i, count) for i in range(1, count + 1)]
            assert [r for b in blocks for r in b] == list(range(rows))
            assert max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_part_numbers_count_from_one_and_slurm_arrays_from_either_end():
    assert parse_part("2/3") == (2, 3) and parse_part("1/1") == (1, 1)
    for bad in ("0/3", "4/3", "3", "a/b", "1/1000"):
        with pytest.raises(SignstreamError, match="--part"):
            parse_part(bad)
    env = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "2", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert [parse_part("slurm", {**env, "SLURM_ARRAY_TASK_ID": str(t)}) for t in range(3)] == [(1, 3), (2, 3), (3, 3)]
    one_based = {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "3", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert parse_part("slurm", {**one_based, "SLURM_ARRAY_TASK_ID": "3"}) == (3, 3)
    with pytest.raises(SignstreamError, match="SLURM_ARRAY_TASK_ID is not set"):
        parse_part("slurm", {})
    with pytest.raises(SignstreamError, match="plain range"):
        parse_part("slurm", {**one_based, "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_ID": "1"})


def test_a_merged_output_is_left_alone_by_reruns_and_a_one_machine_pack(merged, synth_root, capsys):
    before = _tree(merged)
    _part(synth_root, merged, 2)
    merge_parts("phoenix2014", merged, root=synth_root, max_samples=2)
    pack_mod.pack_corpus("phoenix2014", merged, root=synth_root, **PACK)  # same rows and options: already packed
    after = {k: v for k, v in _tree(merged).items() if not k.endswith("pack-stats.json")}
    assert after == before
    assert "already merged" in capsys.readouterr().err


def test_part_and_merge_refuse_a_bucket_out(synth_root, tmp_path, capsys):
    argv = ["pack", "phoenix2014", "--root", str(synth_root), "--out", "s3://bucket/x", "--part", "1/2"]
    assert cli(argv) == 2
    assert "not an s3:// --out" in capsys.readouterr().err
    assert not os.listdir(tmp_path)


def test_merge_over_another_pack_needs_overwrite_and_then_removes_only_its_shards(synth_root, tmp_path):
    out = tmp_path / "out"
    pack_mod.pack_corpus("phoenix2014", out, root=synth_root, splits=["dev"], **{**PACK, "max_samples": 1})
    (out / "dev" / "notes.txt").write_text("mine")
    for index in (1, 2):
        _part(synth_root, out, index, count=2, splits=["dev"])
    with pytest.raises(SignstreamError, match="holds shards packed from other rows or options; pass --overwrite"):
        merge_parts("phoenix2014", out, root=synth_root, splits=["dev"], max_samples=2)
    assert (out / "dev" / "dev-000000.tar").is_file()
    merge_parts("phoenix2014", out, root=synth_root, splits=["dev"], max_samples=2, overwrite=True)
    assert sorted(p.name for p in (out / "dev").iterdir()) == [
        *(f"dev-p00{i}of002-000000.{ext}" for i in (1, 2) for ext in ("idx", "tar")),
        "manifest.json",
        "notes.txt",
    ]

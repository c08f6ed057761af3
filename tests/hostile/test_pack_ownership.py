"""Hostile cases for ``signstream pack``: it deletes only what it wrote, keeps the
train vocabulary when other splits are packed alone, and leaves no temporary file
of its own behind after a kill and a rerun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from signstream import SignstreamError
from signstream.loaders.corpora import LAYOUTS
from signstream.tools import pack as pack_mod
from signstream.tools.pack import STATE_FILE, pack_corpus

pytestmark = pytest.mark.hostile

OPTS = dict(workers=1, progress=False, max_samples=4)  # as the session's `packed` fixture


def _tree(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "pack-stats.json"
    }


def test_unknown_tar_in_the_split_directory_survives_a_pack(synth_root, tmp_path, run_cli):
    out = tmp_path / "out"
    (out / "dev").mkdir(parents=True)
    (out / "dev" / "mine.tar").write_text("x\n")
    (out / "dev" / ".notes.tmp").write_text("mine too\n")
    code = run_cli(
        [
            "pack",
            "phoenix2014",
            "--root",
            str(synth_root),
            "--out",
            str(out),
            "--splits",
            "dev",
            "--workers",
            "1",
            "--quiet",
        ]
    )
    assert code == 0
    assert (out / "dev" / "mine.tar").read_text() == "x\n"
    assert (out / "dev" / ".notes.tmp").read_text() == "mine too\n"
    assert (out / "dev" / "manifest.json").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_file_with_a_shard_name_pack_did_not_record_stops_the_run_untouched(
    synth_root, tmp_path, overwrite, run_cli, one_line
):
    out = tmp_path / "out"
    (out / "dev").mkdir(parents=True)
    (out / "dev" / "dev-000000.tar").write_text("someone else's shard\n")
    argv = [
        "pack",
        "phoenix2014",
        "--root",
        str(synth_root),
        "--out",
        str(out),
        "--splits",
        "dev",
        "--workers",
        "1",
        "--quiet",
    ] + (["--overwrite"] if overwrite else [])
    assert run_cli(argv) == 2
    line = one_line()
    assert "dev-000000.tar" in line and "not written by pack" in line
    assert (out / "dev" / "dev-000000.tar").read_text() == "someone else's shard\n"
    assert sorted(p.name for p in (out / "dev").iterdir()) == ["dev-000000.tar"]


def test_a_stranger_in_one_split_stops_the_run_before_any_split_is_written(synth_root, tmp_path, run_cli, one_line):
    out = tmp_path / "out"
    (out / "test").mkdir(parents=True)
    (out / "test" / "test-000003.idx").write_text("not ours\n")
    code = run_cli(["pack", "phoenix2014", "--root", str(synth_root), "--out", str(out), "--workers", "1", "--quiet"])
    assert code == 2 and "test-000003.idx" in one_line()
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == ["test", "test/test-000003.idx"]


def test_overwrite_replaces_recorded_shards_and_leaves_foreign_files(packed, synth_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(packed, out)
    old_shards = sorted(p.name for p in (out / "train").glob("train-??????.tar"))
    foreign = {"mine.tar": b"x", "notes.idx": b"y", ".draft.tmp": b"z", "train-1.tar": b"w"}
    for name, data in foreign.items():
        (out / "train" / name).write_bytes(data)
    pack_corpus(
        "phoenix2014", out, root=synth_root, splits=["train"], overwrite=True, workers=1, progress=False, max_samples=3
    )
    for name, data in foreign.items():
        assert (out / "train" / name).read_bytes() == data
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert old_shards and [s["samples"] for s in manifest["shards"]] == [3, 3]  # 4 + 2 before
    assert sorted(p.name for p in (out / "train").glob("train-??????.tar")) == [s["file"] for s in manifest["shards"]]


def test_manifest_that_pack_did_not_write_is_refused_even_with_overwrite(synth_root, tmp_path, run_cli, one_line):
    out = tmp_path / "out"
    (out / "dev").mkdir(parents=True)
    (out / "dev" / "manifest.json").write_text('{"shards": [{"file": "../../victim.txt"}]}')
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    for extra in ([], ["--overwrite"]):
        code = run_cli(
            [
                "pack",
                "phoenix2014",
                "--root",
                str(synth_root),
                "--out",
                str(out),
                "--splits",
                "dev",
                "--workers",
                "1",
                "--quiet",
                *extra,
            ]
        )
        assert code == 2 and "not a signstream pack manifest" in one_line()
    assert victim.read_text() == "keep me"


def test_unfinished_pack_is_not_discarded_by_a_rerun_with_other_options(synth_root, tmp_path, monkeypatch):
    out = tmp_path / "out"

    def die(*_a, **_k):
        raise KeyboardInterrupt  # stands for a kill after the shards were written

    with monkeypatch.context() as m:
        m.setattr(pack_mod, "build_manifest", die)
        with pytest.raises(KeyboardInterrupt):
            pack_corpus("phoenix2014", out, root=synth_root, splits=["train"], **OPTS)
    before = _tree(out)
    assert (out / "train" / STATE_FILE).exists()
    with pytest.raises(SignstreamError, match="unfinished pack.*--overwrite"):
        pack_corpus("phoenix2014", out, root=synth_root, splits=["train"], workers=1, progress=False, max_samples=3)
    assert _tree(out) == before
    pack_corpus("phoenix2014", out, root=synth_root, splits=["train"], **OPTS)  # same options resume
    assert not (out / "train" / STATE_FILE).exists()


def test_kill_after_a_shard_is_renamed_but_before_it_is_recorded_resumes_exactly(
    packed, synth_root, tmp_path, monkeypatch
):
    out = tmp_path / "out"
    real = pack_mod.write_index
    calls = []

    def index_then_die(path, layout):
        calls.append(path)
        if len(calls) == 2:  # the second shard's tar is in place, its index is not
            raise KeyboardInterrupt
        real(path, layout)

    with monkeypatch.context() as m:
        m.setattr(pack_mod, "write_index", index_then_die)
        with pytest.raises(KeyboardInterrupt):
            pack_corpus("phoenix2014", out, root=synth_root, splits=["train"], **OPTS)
    assert (out / "train" / "train-000001.tar").exists()
    pack_corpus("phoenix2014", out, root=synth_root, splits=["train"], **OPTS)
    assert _tree(out / "train") == _tree(packed / "train")


def test_packing_dev_alone_keeps_the_train_vocabulary(packed, synth_root, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(packed, out)
    vocab = (out / "glosses.txt").read_bytes()
    dev_only = {g for row in LAYOUTS["phoenix2014"].read(synth_root) if row.split == "dev" for g in row.gloss.split()}
    assert dev_only != set(vocab.decode().split())  # the case only bites when they differ
    result = pack_corpus("phoenix2014", out, root=synth_root, splits=["dev"], **OPTS)
    assert (out / "glosses.txt").read_bytes() == vocab
    assert result["vocab"] == vocab.decode().split()
    (out / "glosses.txt").unlink()  # rebuilt from the earlier train pack's samples
    pack_corpus("phoenix2014", out, root=synth_root, splits=["dev"], **OPTS)
    assert (out / "glosses.txt").read_bytes() == vocab


def test_packing_dev_alone_into_an_empty_output_writes_no_vocabulary(synth_root, tmp_path, capsys, run_cli):
    out = tmp_path / "out"
    assert (
        run_cli(
            [
                "pack",
                "phoenix2014",
                "--root",
                str(synth_root),
                "--out",
                str(out),
                "--splits",
                "dev",
                "--workers",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert not (out / "glosses.txt").exists()
    assert "vocabulary: not written" in capsys.readouterr().out


_KILL_AT = """
import os, signal, sys
from signstream.tools.cli import main
target = sys.argv[1]
real = os.replace
def replace(src, dst):
    if os.path.basename(dst) == target:
        os.kill(os.getpid(), signal.SIGKILL)
    real(src, dst)
os.replace = replace
main(sys.argv[2:])
"""


@pytest.mark.slow
@pytest.mark.parametrize("target", ["pack-stats.json", "glosses.txt"])
def test_kill_while_writing_stats_or_vocabulary_leaves_no_temp_after_rerun(
    packed, synth_root, tmp_path, target, run_cli
):
    out = tmp_path / "out"
    argv = [
        "pack",
        "phoenix2014",
        "--root",
        str(synth_root),
        "--out",
        str(out),
        "--workers",
        "1",
        "--max-samples",
        "4",
        "--quiet",
    ]
    proc = subprocess.run([sys.executable, "-c", _KILL_AT, target, *argv], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [p for p in out.rglob(f".{target}.*.tmp")]
    assert leftovers, "the kill should have left the temporary file the rerun must clean"
    assert run_cli(argv) == 0
    assert not list(out.rglob("*.tmp"))
    assert _tree(out) == _tree(packed)


def test_rerun_removes_only_the_packers_own_temp_names(packed, synth_root, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(packed, out)
    ours = [
        out / "dev" / ".pack-stats.json.k2j4h1x9.tmp",
        out / "dev" / ".dev-000000.tar.partial.tmp",
        out / ".glosses.txt.ab12cd34.tmp",
        out / "dev" / ".manifest.json.tmp",
    ]
    theirs = [out / "dev" / ".mine.json.ab12cd34.tmp", out / ".notes.tmp", out / "dev" / "draft.tmp"]
    for p in ours + theirs:
        p.write_text("partial")
    pack_corpus("phoenix2014", out, root=synth_root, **OPTS)
    assert [p for p in ours if p.exists()] == []
    assert all(p.read_text() == "partial" for p in theirs)
    assert os.listdir(out / "dev")  # still a complete output
    assert _tree(out) == {**_tree(packed), **{str(p.relative_to(out)): b"partial" for p in theirs}}

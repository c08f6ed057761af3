"""One writer per output folder: a second ``pack`` or recipe run into a folder another run
holds stops with one line naming the holder, before it reads or touches anything; a lock
left by a dead process is taken over with a warning; a finished run leaves no lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from signstream.loaders.ownership import LOCK_NAME, OutputLock
from signstream.tools import pack as pack_mod

pytestmark = pytest.mark.hostile

EXTRACT = [
    "backbone=s3d",
    "stop_after=2",
    "image_size=32",
    "backend=pyav",
    "num_workers=0",
    "progress=false",
    "dtype=float32",
    "calibrate_bn=0",
    "splits=dev",
]


def _pack(root: Path, out, *extra: str) -> list[str]:
    return [
        "pack",
        "phoenix2014",
        "--root",
        str(root),
        "--out",
        str(out),
        "--splits",
        "dev",
        "--workers",
        "1",
        "--quiet",
        *extra,
    ]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def _lock_record(pid: int, host: str) -> str:
    return json.dumps(
        {"pid": pid, "host": host, "command": "signstream pack ...", "started": "yesterday", "token": "0" * 32}
    )


def test_pack_into_a_folder_another_run_holds_is_one_line_naming_the_holder_and_writes_nothing(
    synth_root, tmp_path, run_cli, one_line
):
    out = tmp_path / "out"
    with OutputLock(out, key="--out"):
        assert run_cli(_pack(synth_root, out)) == 2
        line = one_line()
        assert f"pid {os.getpid()}" in line and socket.gethostname() in line and "another run" in line
        assert "choose another --out" in line
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # no split, no shard
    assert run_cli(_pack(synth_root, out)) == 0  # released: the next run packs
    assert not (out / LOCK_NAME).exists()


def test_pack_holds_the_lock_before_its_ownership_check_reads_the_folder(synth_root, tmp_path, monkeypatch):
    out, seen = tmp_path / "out", []
    real = pack_mod.load_state

    def spy(split_dir, *args, **kwargs):
        seen.append((split_dir.parent / LOCK_NAME).is_file())
        return real(split_dir, *args, **kwargs)

    monkeypatch.setattr(pack_mod, "load_state", spy)
    pack_mod.pack_corpus("phoenix2014", out, root=synth_root, splits=["dev"], workers=1, progress=False)
    assert seen and all(seen)  # every check ran under the lock
    assert not (out / LOCK_NAME).exists()


def test_lock_left_by_a_dead_process_on_this_host_is_taken_over_with_a_warning(synth_root, tmp_path, capsys, run_cli):
    out = tmp_path / "out"
    out.mkdir()
    pid = _dead_pid()
    (out / LOCK_NAME).write_text(_lock_record(pid, socket.gethostname()))
    assert run_cli(_pack(synth_root, out)) == 0
    err = capsys.readouterr().err
    assert f"pid {pid}" in err and "taking it over" in err
    assert (out / "dev" / "manifest.json").is_file() and not (out / LOCK_NAME).exists()


def test_lock_of_another_host_is_never_taken_over_and_the_line_names_the_file_to_delete(
    synth_root, tmp_path, run_cli, one_line
):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(_lock_record(_dead_pid(), "some-other-machine"))
    assert run_cli(_pack(synth_root, out)) == 2
    line = one_line()
    assert "some-other-machine" in line and str(out / LOCK_NAME) in line
    assert (out / LOCK_NAME).is_file() and not (out / "dev").exists()


def test_unreadable_lock_is_a_run_claiming_the_folder_when_fresh_and_taken_over_when_old(
    synth_root, tmp_path, run_cli, one_line, capsys
):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_bytes(b"")  # a holder between creating the lock and writing it
    assert run_cli(_pack(synth_root, out)) == 2
    assert "being claimed by another run" in one_line()
    old = time.time() - 3600
    os.utime(out / LOCK_NAME, (old, old))  # ... or one that died there long ago
    assert run_cli(_pack(synth_root, out)) == 0
    assert "taking it over" in capsys.readouterr().err
    assert not (out / LOCK_NAME).exists()


def test_second_pack_started_while_the_first_runs_is_refused_and_the_first_finishes(synth_root, tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys, time; from signstream.loaders.ownership import OutputLock\n"
        f"with OutputLock({str(out)!r}):\n"
        "    print('held', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        second = subprocess.run(
            [sys.executable, "-m", "signstream.tools.cli", *_pack(synth_root, out, "--codec", "mjpeg")],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {holder.pid}" in lines[0], lines
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0 and not (out / LOCK_NAME).exists()


def test_bucket_prefix_another_run_holds_is_refused_in_one_line(synth_root, s3_env, run_cli, one_line):
    from signstream.loaders.ownership import BucketLock
    from signstream.loaders.remote import filesystem

    filesystem("s3://").mkdir("lock-held")
    url = "s3://lock-held/corpus"
    with BucketLock(url):
        assert run_cli(_pack(synth_root, url)) == 2
        line = one_line()
        assert f"pid {os.getpid()}" in line and url in line
        assert not filesystem("s3://").exists("lock-held/corpus/dev/manifest.json")
    assert run_cli(_pack(synth_root, url)) == 0
    assert not filesystem("s3://").exists(f"lock-held/corpus/{LOCK_NAME}")


def test_recipe_into_a_held_out_is_refused_and_leaves_the_holders_temp_files(packed, tmp_path, capsys):
    from signstream.tools.cli import main as cli

    out = tmp_path / "feats"
    with OutputLock(out, key="out"):
        temp = out / ".summary.json.abcd1234.tmp"  # the holder's atomic write in flight
        temp.write_text("{}")
        assert cli(["extract_features", f"shards={packed}", f"out={out}", *EXTRACT]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"pid {os.getpid()}" in err[0] and "choose another out" in err[0], err
        assert temp.is_file() and sorted(p.name for p in out.iterdir()) == sorted([temp.name, LOCK_NAME])
    temp.unlink()
    assert cli(["extract_features", f"shards={packed}", f"out={out}", *EXTRACT]) == 0
    assert not (out / LOCK_NAME).exists() and (out / "summary.json").is_file()


@pytest.mark.parametrize("recipe", ["finetune_ctc", "train_head"])
def test_training_recipes_refuse_a_held_out_in_one_line(recipe, packed, tmp_path, capsys):
    from signstream.tools.cli import main as cli

    out = tmp_path / "run"
    args = (
        [
            f"shards={packed}",
            "backbone=s3d",
            "image_size=32",
            "max_frames=8",
            "batch_size=1",
            "num_workers=0",
            "max_steps_per_epoch=1",
            "dev_split=test",
        ]
        if recipe == "finetune_ctc"
        else [f"features={packed}"]
    )  # the lock is checked before the inputs are read
    with OutputLock(out, key="out"):
        started = time.monotonic()
        assert cli([recipe, *args, f"out={out}", "epochs=1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "being written by another run" in err[0], err
        assert time.monotonic() - started < 120
        assert [p.name for p in out.iterdir()] == [LOCK_NAME]

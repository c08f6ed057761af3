"""Unlucky endings that are one line, never a traceback: a full disk, SIGTERM and Ctrl-C,
a server that drops or fails during ``verify --decode``, contradictory or absurd options,
third-party feature files with empty or mixed-width entries, and a shard deleted under a
running loader."""

from __future__ import annotations

import errno
import gzip
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from signstream.benchmarks.servers import RangeHandler, http_server
from signstream.loaders import make_loader
from signstream.loaders.fileio import atomic_write
from tests.remote_fixtures import FAST_FAILURE

pytestmark = pytest.mark.hostile

EXTRACT = [
    "backbone=resnet18_2d",
    "image_size=32",
    "num_workers=0",
    "calibrate_bn=0",
    "progress=false",
    "device=cpu",
    "splits=train",
]


def _full_disk(path: Path) -> None:
    """Start writing ``path`` the way the project does, then fail like a full disk would."""
    with atomic_write(path, "wb") as f:
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ------------------------------------------------------------------- a full disk
def test_a_full_disk_while_packing_is_one_line_naming_the_shard_and_a_rerun_completes(
    synth_root, tmp_path, run_cli, one_line, monkeypatch
):
    import signstream.tools.pack as pack

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
        "--quiet",
        "--splits",
        "train",
    ]
    monkeypatch.setattr(pack, "write_tar", lambda path, samples: _full_disk(path))
    assert run_cli(argv) == 1
    line = one_line()
    assert "No space left on device" in line and "train-000000.tar" in line and "rerun" in line
    assert not [p for p in (out / "train").iterdir() if p.name.endswith(".tmp")]  # no half-written shard
    monkeypatch.undo()
    assert run_cli(argv) == 0


def test_a_full_disk_while_extracting_is_one_line_naming_the_file(packed, tmp_path, run_cli, one_line, monkeypatch):
    import signstream.recipes.extract_features as extract

    monkeypatch.setattr(
        extract, "write_video", lambda store, split, key, *a, **k: _full_disk(store / split / f"{key}.npy")
    )
    assert run_cli(["extract_features", f"shards={packed}", f"out={tmp_path / 'out'}", *EXTRACT]) == 1
    line = one_line()
    assert "No space left on device" in line and ".npy" in line and "rerun" in line


# ------------------------------------------------------------- Ctrl-C and SIGTERM
def test_ctrl_c_in_a_recipe_is_one_line_exit_130_and_a_rerun_resumes(packed, tmp_path, run_cli, one_line, monkeypatch):
    import signstream.recipes.extract_features as extract

    real, calls = extract.write_video, []

    def interrupted_after_one(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real(*args, **kwargs)

    monkeypatch.setattr(extract, "write_video", interrupted_after_one)
    argv = ["extract_features", f"shards={packed}", f"out={tmp_path / 'out'}", *EXTRACT]
    try:
        code = run_cli(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped the recipe as a traceback")
    assert code == 130
    assert one_line() == "interrupted; rerun the same command to resume"
    monkeypatch.undo()
    assert run_cli(argv) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["splits"]["train"]["resumed"] == 1


def test_sigterm_to_pack_ends_in_one_line_and_a_rerun_completes_the_pack(tmp_path):
    from signstream.tools.synth import make_corpus

    root = make_corpus(
        tmp_path / "synth", layout="phoenix2014", seed=1, train=60, dev=0, test=0, vocab=8, height=48, width=64
    )
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "signstream.tools.cli",
        "pack",
        "phoenix2014",
        "--root",
        str(root),
        "--out",
        str(out),
        "--workers",
        "2",
        "--quiet",
        "--max-samples",
        "2",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state, deadline = out / "train" / ".pack-state.json", time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # mid-run: a shard written, more to come
        try:
            if json.loads(state.read_text())["shards"]:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, "the pack finished before it could be interrupted; make the corpus bigger"
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("pack did not exit within 30 s of SIGTERM")
    lines = err.strip().splitlines()
    assert proc.returncode == 143 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == "signstream pack: terminated; rerun the same command to resume"
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    manifest = json.loads((out / "train" / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 60
    check = subprocess.run(
        [sys.executable, "-m", "signstream.tools.cli", "verify", str(out)], capture_output=True, text=True, timeout=300
    )
    assert check.returncode == 0, check.stdout


# ------------------------------------------------------ verify --decode, remote
class _FailsLater(RangeHandler):
    """Serves each tar's bytes once (verify's checksum pass), then answers 500 (the decode pass)."""

    served: dict[str, int] = {}

    def send_head(self):
        if self.command == "GET" and self.path.endswith(".tar"):
            self.served[self.path] = self.served.get(self.path, 0) + 1
            if self.served[self.path] > 1:
                self.send_error(500, "internal error")
                return None
        return super().send_head()


def _serve(directory: Path, handler: type):
    import functools
    import threading
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("failure", ["dropped", "500"])
def test_remote_verify_decode_reports_a_failing_server_as_a_problem_not_a_traceback(
    packed, failure, run_cli, capsys, monkeypatch
):
    for name, value in FAST_FAILURE.items():
        monkeypatch.setenv(name, value)
    if failure == "dropped":
        with http_server(packed, drop=("train-000000.tar",)) as base:
            code = run_cli(["verify", "--decode", f"{base}/train"])
    else:
        server = _serve(packed, type("Handler", (_FailsLater,), {"served": {}}))
        try:
            code = run_cli(["verify", "--decode", f"http://127.0.0.1:{server.server_port}/train"])
        finally:
            server.shutdown()
            server.server_close()
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err and captured.err == ""
    assert "verify: FAILED" in captured.out and "train-000000.tar" in captured.out


# --------------------------------------------------- options refused up front
def test_train_head_with_the_train_split_in_eval_splits_is_refused_before_out_is_written(tmp_path, run_cli, one_line):
    features = _signjoey(tmp_path / "features", {"train": [(5, 8), (4, 8)], "dev": [(3, 8)]})
    out = tmp_path / "out"
    assert (
        run_cli(["train_head", f"features={features}", "eval_splits=train", "epochs=1", "device=cpu", f"out={out}"])
        == 2
    )
    line = one_line()
    assert "eval_splits" in line and "'train'" in line
    assert not out.exists()


def test_pack_resize_beyond_the_bound_is_refused_at_parse_time(tmp_path, run_cli, one_line):
    out = tmp_path / "out"
    assert (
        run_cli(
            ["pack", "phoenix2014", "--root", str(tmp_path / "none"), "--out", str(out), "--resize", "100000x100000"]
        )
        == 2
    )
    line = one_line()
    assert "--resize" in line and "2048" in line
    assert not out.exists()


@pytest.mark.parametrize("recipe", ["extract_features", "finetune_ctc"])
def test_image_size_beyond_the_bound_is_refused_at_parse_time(recipe, tmp_path, run_cli, one_line):
    out = tmp_path / "out"
    assert run_cli([recipe, f"shards={tmp_path / 'none'}", "image_size=100000", f"out={out}"]) == 2
    line = one_line()
    assert "'image_size'" in line and "1024" in line
    assert not out.exists()


# --------------------------------------------------- third-party SignJoey files
def _signjoey(folder: Path, splits: dict[str, list[tuple[int, int]]]) -> Path:
    """SignJoey gzip pickles ``feats.<split>``: one entry ``v<i>`` of shape ``(T, D)`` per tuple."""
    folder.mkdir()
    (folder / "glosses.txt").write_text("AA\nBB\n")
    rng = np.random.default_rng(0)
    for split, shapes in splits.items():
        entries = [
            {
                "name": f"v{i}",
                "gloss": "AA BB",
                "signer": "s",
                "text": "",
                "sign": rng.standard_normal(shape).astype(np.float32),
            }
            for i, shape in enumerate(shapes)
        ]
        with gzip.open(folder / f"feats.{split}", "wb") as f:
            pickle.dump(entries, f)
    return folder


@pytest.mark.parametrize(
    ("train", "words"),
    [
        ([(5, 8), (0, 8)], ["'v1'", "feats.train", "no frames"]),
        ([(5, 8), (4, 16)], ["'v1'", "feats.train", "16-wide", "'v0'"]),
    ],
)
def test_a_signjoey_entry_with_no_frames_or_another_width_is_one_line_naming_it(
    tmp_path, run_cli, one_line, train, words
):
    features = _signjoey(tmp_path / "features", {"train": train, "dev": [(3, 8)]})
    out = tmp_path / "out"
    assert (
        run_cli(["train_head", f"features={features}", "eval_splits=dev", "epochs=1", "device=cpu", f"out={out}"]) == 2
    )
    line = one_line()
    assert all(w in line for w in words), line


# ----------------------------------------------- a shard deleted under a loader
def test_a_shard_deleted_under_a_running_loader_is_skipped_and_named(packed, tmp_path):
    split = tmp_path / "train"
    shutil.copytree(packed / "train", split)
    loader = make_loader(split, backend="pyav", batch_size=1, num_workers=0, shuffle=False, handler="skip")
    batches = iter(loader)
    first = next(batches)
    (split / "train-000001.tar").unlink()  # the second shard goes while the first is being read
    keys = first.keys + [k for batch in batches for k in batch.keys]
    skipped = loader.stats.skipped
    assert keys and skipped and all(s.shard == "train-000001.tar" for s in skipped)
    assert "deleted or repacked" in skipped[0].reason
    assert len(keys) + len(skipped) == 6

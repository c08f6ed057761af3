"""Tests for ``recipes/extract_features.py``: one vs two processes, resume after a
kill, the SignJoey file's layout, and one-line errors for bad configs."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from signstream.tools.cli import main as cli
from tests.tolerance import worst_relative_error

BASE = [
    "backbone=s3d",
    "stop_after=4",
    "image_size=32",
    "backend=pyav",
    "num_workers=0",
    "writers=npy,signjoey,shards",
    "dtype=float32",
    "progress=false",
    "seed=3",
]


def _args(packed, out, *extra):
    return [f"shards={packed}", f"out={out}", *BASE, *extra]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _outputs(out: Path) -> dict[str, np.ndarray]:
    return {str(p.relative_to(out)): np.load(p) for p in sorted(out.glob("*/*.npy"))}


def _accelerate(n: int, args: list[str], **kw) -> subprocess.Popen:
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(n),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    if n > 1:
        launch.insert(3, "--multi_gpu")
    return subprocess.Popen(
        [*launch, "-m", "signstream.recipes.extract_features", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


@pytest.fixture(scope="module")
def one_process(packed, tmp_path_factory):
    out = tmp_path_factory.mktemp("extract1")
    assert cli(["extract_features", *_args(packed, out)]) == 0
    return out


def test_every_video_of_every_split_gets_features_of_the_right_shape(packed, one_process):
    outputs = _outputs(one_process)
    for split in ("train", "dev", "test"):
        manifest = json.loads((packed / split / "manifest.json").read_text())
        names = {p.split("/")[1][:-4] for p in outputs if p.startswith(split + "/")}
        assert len(names) == manifest["totals"]["samples"]
    for name, feats in outputs.items():
        meta = json.loads((one_process / name.replace(".npy", ".json")).read_text())
        assert feats.shape == (meta["feature_frames"], 832)
        assert feats.shape[0] == -(-meta["num_frames"] // 4)  # stop_after=4: stride 4
    summary = json.loads((one_process / "summary.json").read_text())
    assert summary["splits"]["train"]["videos"] == 6 and summary["feature_dim"] == 832


def test_signjoey_file_loads_with_gzip_pickle_and_matches_npy(one_process):
    with gzip.open(one_process / "features.dev", "rb") as f:
        entries = pickle.load(f)
    assert [e["name"] for e in entries] == sorted(e["name"] for e in entries) and len(entries) == 3
    for e in entries:
        assert {"name", "signer", "gloss", "text", "sign", "num_frames"} <= set(e)
        assert isinstance(e["sign"], torch.Tensor) and e["sign"].ndim == 2 and e["sign"].shape[1] == 832
        np.testing.assert_array_equal(e["sign"].numpy(), np.load(one_process / "dev" / f"{e['name']}.npy"))


@pytest.mark.slow
def test_two_processes_write_the_same_outputs_as_one(packed, one_process, tmp_path):
    out = tmp_path / "extract2"
    proc = _accelerate(2, _args(packed, out))
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    one, two = _outputs(one_process), _outputs(out)
    assert one.keys() == two.keys()
    for k in one:  # one thread per process sums in another order: compare whole feature vectors
        assert worst_relative_error(two[k], one[k]) < 1e-4, k
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    assert sum(s["videos"] for s in summary["splits"].values()) == len(one)  # no duplicate work


def _sidecars(out):
    """Per-video JSON sidecars (keys have no dots; the split index file has one)."""
    return [p for p in out.glob("*/*.json") if "." not in p.stem]


@pytest.mark.slow
def test_rerun_after_a_kill_skips_finished_videos_and_ends_identical(packed, one_process, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "signstream.tools.cli", "extract_features", *_args(packed, out)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and len(_sidecars(out)) < 2:
        time.sleep(0.02)
    assert proc.poll() is None, "extraction finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(_sidecars(out))  # a video counts as finished once its JSON sidecar is written
    assert cli(["extract_features", *_args(packed, out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sum(s["resumed"] for s in summary["splits"].values()) >= done - 1 > 0
    one, again = _outputs(one_process), _outputs(out)
    assert one.keys() == again.keys()
    for k in one:
        np.testing.assert_allclose(one[k], again[k], rtol=1e-3, atol=1e-3)  # thread counts differ
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["colour=red"], "unknown config key(s) colour"),
        (["weights=/nonexistent/rgb_imagenet.pt"], "rgb_imagenet.pt"),
        (["writers=npy,parquet"], "unknown feature writer 'parquet'"),
    ],
)
def test_bad_configs_are_one_line_errors(packed, tmp_path, capsys, extra, message):
    assert cli(["extract_features", *_args(packed, tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_missing_shard_directory_is_a_one_line_error(tmp_path, capsys):
    assert cli(["extract_features", f"shards={tmp_path / 'none'}", f"out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "shards directory not found" in err[0]


def test_a_resumed_run_decodes_no_finished_video(packed, one_process, tmp_path, monkeypatch):
    import shutil

    from signstream.loaders import pyav_backend
    from signstream.recipes import extract_features as recipe

    decoded, extracting = [], []
    real_decode, real_split = pyav_backend.decode_clip, recipe.Extraction.extract_split

    def counting_decode(data, plan, *args, **kwargs):
        if extracting:  # BatchNorm calibration decodes its videos on every run; not counted
            decoded.append(len(plan.indices))
        return real_decode(data, plan, *args, **kwargs)

    def split_counted(*args, **kwargs):
        extracting.append(True)
        try:
            return real_split(*args, **kwargs)
        finally:
            extracting.pop()

    monkeypatch.setattr(pyav_backend, "decode_clip", counting_decode)
    monkeypatch.setattr(recipe.Extraction, "extract_split", split_counted)
    out = tmp_path / "again"
    shutil.copytree(one_process, out)
    assert cli(["extract_features", *_args(packed, out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    total = sum(
        json.loads((packed / s / "manifest.json").read_text())["totals"]["samples"] for s in ("train", "dev", "test")
    )
    assert decoded == [] and sum(s["resumed"] for s in summary["splits"].values()) == total
    # two unfinished videos (one lost its sidecar, one both files): exactly those two are decoded
    lost = sorted(p for p in out.glob("dev/*.json") if p.with_suffix(".npy").exists())[:2]
    lost[0].unlink()
    lost[1].unlink()
    lost[1].with_suffix(".npy").unlink()
    assert cli(["extract_features", *_args(packed, out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(decoded) == 2 and summary["splits"]["dev"]["videos"] == 2
    dev_total = json.loads((packed / "dev" / "manifest.json").read_text())["totals"]["samples"]
    assert summary["splits"]["dev"]["resumed"] == dev_total - 2
    one, again = _outputs(one_process), _outputs(out)
    assert one.keys() == again.keys()
    for k in one:
        np.testing.assert_allclose(one[k], again[k], rtol=1e-3, atol=1e-3)


def test_unfinished_leaves_out_finished_samples_or_for_dali_only_finished_shards(packed, tmp_path):
    from signstream.loaders.feature_writers import write_video
    from signstream.loaders.shards import resolve_shards
    from signstream.recipes.extract_features import unfinished

    shardset = resolve_shards(packed / "train")
    assert [len(s.samples) for s in shardset.shards] == [4, 2]
    first, second = shardset.shards
    for ref in [*first.samples, second.samples[0]]:
        write_video(tmp_path, "train", ref.key, {"name": ref.key}, np.zeros((2, 3), np.float32), "float32")
    todo, finished = unfinished(shardset, tmp_path, "train", whole_shards=False)
    assert finished == {r.key for r in [*first.samples, second.samples[0]]}
    assert [s.path for s in todo.shards] == [second.path]
    assert [(r.key, r.shard) for r in todo.refs] == [(second.samples[1].key, 0)]
    todo, finished = unfinished(shardset, tmp_path, "train", whole_shards=True)
    assert finished == {r.key for r in first.samples}
    assert [r.key for r in todo.refs] == [r.key for r in second.samples] and {r.shard for r in todo.refs} == {0}


def test_the_next_videos_forward_overlaps_the_writes_and_runs_at_most_a_few_videos_ahead(packed, tmp_path, monkeypatch):
    from signstream.recipes import extract_features as recipe

    real_forward, real_write = recipe.extract_features, recipe.write_video
    written, ahead, threads = [], [], set()

    def forward(*args, **kwargs):
        ahead.append(len(ahead) + 1 - len(written))  # this video and those computed but not yet on disk
        return real_forward(*args, **kwargs)

    def slow_write(*args, **kwargs):  # a slow disk: each video's fsyncs take far longer than its forward
        threads.add(threading.current_thread().name)
        time.sleep(0.3)
        real_write(*args, **kwargs)
        written.append(args[2])

    monkeypatch.setattr(recipe, "extract_features", forward)
    monkeypatch.setattr(recipe, "write_video", slow_write)
    out = tmp_path / "out"
    assert cli(["extract_features", *_args(packed, out, "splits=train", "writers=npy")]) == 0
    total = json.loads((packed / "train" / "manifest.json").read_text())["totals"]["samples"]
    assert len(written) == len(ahead) == total and len(_outputs(out)) == total  # no write lost
    assert max(ahead) >= 2, "each forward waited for the previous video's files"
    assert max(ahead) <= recipe.PENDING_WRITES + 2  # one computing, one writing, the rest queued
    assert threading.current_thread().name not in threads

"""Tests for ``recipes/finetune_ctc.py``: it learns, writes a checkpoint that
extraction accepts, resumes a killed run on the same trajectory, and rejects
bad configs with one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file

from signstream.models.ctc import load_backbone
from signstream.recipes.finetune_ctc import main
from signstream.tools.cli import main as cli

BASE = [
    "backbone=s3d",
    "stop_after=4",
    "image_size=32",
    "max_frames=32",
    "batch_size=2",
    "num_workers=0",
    "head=linear",
    "lr=3e-3",
    "backbone_lr=3e-3",
    "warmup_steps=1",
    "freeze=2",
    "seed=1",
]


def _args(packed, out, *extra):
    return [f"shards={packed}", f"out={out}", *BASE, *extra]


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_loadable_checkpoints(packed, tmp_path):
    out = tmp_path / "ft"
    assert main(_args(packed, out, "epochs=6")) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(6))
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    backbone, meta = load_backbone(out / "best.safetensors")
    assert meta["backbone"] == "s3d" and backbone.num_features == 832
    # best.safetensors is the epoch with the lowest dev WER (the later one on a tie)
    wers = [h["dev_wer"] for h in history]
    assert int(meta["epoch"]) == max(i for i, w in enumerate(wers) if w == min(wers))
    for name in ("config.yaml", "glosses.txt", "model.safetensors"):
        assert (out / name).exists()


@pytest.mark.slow
def test_resume_after_a_kill_continues_the_same_trajectory(packed, tmp_path):
    out = tmp_path / "ft"
    args = _args(packed, out, "epochs=3", "dropout=0.3")
    assert main(args) == 0
    straight = load_file(str(out / "model.safetensors"))
    history = json.loads((out / "metrics.json").read_text())["history"]
    for epoch in (1, 2):  # the run "died" after epoch 0 was checkpointed
        shutil.rmtree(out / "checkpoints" / f"epoch_{epoch:03d}")
    (out / "metrics.json").unlink()
    assert main(args) == 0
    resumed = load_file(str(out / "model.safetensors"))
    for k in straight:
        np.testing.assert_allclose(straight[k].numpy(), resumed[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
    again = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["train_loss"] for h in again] == pytest.approx([h["train_loss"] for h in history], rel=1e-4)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["epocs=3"], "unknown config key(s) epocs"),
        (["weights=/nonexistent/s3d-d76dad2f.pth"], "s3d-d76dad2f.pth"),
        (["freeze=some"], "freeze must be none, all or a number"),
    ],
)
def test_bad_configs_are_one_line_errors(packed, tmp_path, capsys, extra, message):
    assert cli(["finetune_ctc", *_args(packed, tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_missing_shards_is_a_one_line_error(tmp_path, capsys):
    assert cli(["finetune_ctc", f"shards={tmp_path / 'nope'}"]) == 2
    assert "not a pack output" in capsys.readouterr().err

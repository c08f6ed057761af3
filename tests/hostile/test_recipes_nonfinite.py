"""NaN never passes for a result: diverging runs, NaN inputs and NaN checkpoints.

A learning rate of 1e9 with no warm-up and no clipping, one all-NaN feature
entry, a checkpoint of a diverged run: each must end the recipe with one line
(where it happened, what to do) and leave no "best" model or NaN feature file;
``nonfinite=skip`` trains past the spoiled steps and counts them; every JSON
file is strict JSON (``null``, never a bare ``NaN``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from signstream.loaders.fileio import write_json
from signstream.models.ctc import checkpoint_metadata, save_checkpoint
from signstream.recipes import checkpoints
from signstream.recipes.finetune_ctc import FinetuneConfig, build_model
from signstream.tools.cli import main as cli
from tests.recipes.test_train_head import make_features

pytestmark = pytest.mark.hostile

HEAD = ["hidden=16", "batch_size=4", "cleanup=none", "epochs=2"]
DIVERGE = ["lr=1e9", "warmup_steps=0", "clip_grad=0"]
FINETUNE = [
    "backbone=s3d",
    "stop_after=4",
    "image_size=32",
    "max_frames=16",
    "batch_size=2",
    "num_workers=0",
    "head=linear",
    "epochs=1",
]
EXTRACT = [
    "backbone=s3d",
    "image_size=32",
    "backend=pyav",
    "num_workers=0",
    "progress=false",
    "dtype=float32",
    "splits=dev",
]


def strict_load(path):
    """Parse JSON as any strict reader does: a bare NaN/Infinity is an error."""

    def refuse(name):
        raise ValueError(f"{path} holds a bare {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


def error_line(capsys) -> str:
    """The recipe's one error line; no traceback anywhere."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def features(tmp_path):
    return make_features(tmp_path / "feats", n_train=16, n_eval=4)


def poison(features, split: str, index: int) -> str:
    """Overwrite one stored feature entry with NaN; returns its name."""
    name = f"{split}_{index:03d}"
    path = features / split / f"{name}.npy"
    values = np.load(path)
    np.save(path, np.full_like(values, np.nan))
    return name


def test_a_diverging_head_run_stops_at_the_first_nonfinite_step_and_keeps_no_best(features, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["train_head", f"features={features}", f"out={out}", *HEAD, *DIVERGE]) == 2
    line = error_line(capsys)
    assert "epoch 0, step" in line and "NaN/inf" in line and "loss" in line and "nonfinite=skip" in line
    assert not (out / "head_best.safetensors").exists()
    assert not (out / "metrics.json").exists()


def test_an_all_nan_feature_entry_is_refused_naming_it(features, tmp_path, capsys):
    name = poison(features, "train", 3)
    out = tmp_path / "run"
    assert cli(["train_head", f"features={features}", f"out={out}", *HEAD]) == 2
    line = error_line(capsys)
    assert name in line and "'train'" in line and "not finite" in line
    assert not (out / "head_best.safetensors").exists()


def test_an_all_nan_eval_entry_is_refused_even_when_skipping(features, tmp_path, capsys):
    name = poison(features, "dev", 1)
    assert cli(["train_head", f"features={features}", f"out={tmp_path / 'run'}", *HEAD, "nonfinite=skip"]) == 2
    line = error_line(capsys)
    assert name in line and "'dev'" in line


def test_nonfinite_skip_leaves_out_the_spoiled_steps_and_counts_them_in_strict_json(features, tmp_path):
    poison(features, "train", 3)
    out = tmp_path / "run"
    assert cli(["train_head", f"features={features}", f"out={out}", *HEAD, "nonfinite=skip"]) == 0
    metrics = strict_load(out / "metrics.json")
    # the poisoned entry spoils exactly one batch per epoch
    assert [h["nonfinite_skipped"] for h in metrics["history"]] == [1, 1]
    assert metrics["nonfinite_skipped_steps"] == 2
    assert all(math.isfinite(h["train_loss"]) for h in metrics["history"])
    from safetensors.torch import load_file

    assert all(torch.isfinite(v).all() for v in load_file(str(out / "head_best.safetensors")).values())


def test_a_diverged_epoch_is_never_the_best_even_with_a_lower_wer():
    sane = {"epoch": 0, "train_loss": 3.2, "dev_wer": 121.0}
    diverged = {"epoch": 1, "train_loss": float("nan"), "dev_wer": 100.0}  # all blanks: "only" 100 %
    assert checkpoints.is_best([sane]) is True
    assert not checkpoints.is_best([sane, diverged])
    assert not checkpoints.is_best([sane, {**diverged, "train_loss": 1.0, "dev_wer": float("nan")}])
    assert not checkpoints.is_best([{**diverged, "dev_wer": None}])  # no dev split: still not kept
    assert checkpoints.best_score([sane, diverged]) == 121.0


def test_json_outputs_are_strict_nan_and_inf_become_null(tmp_path):
    write_json(tmp_path / "m.json", {"loss": float("nan"), "list": [1.0, float("inf")], "ok": 2.5})
    assert strict_load(tmp_path / "m.json") == {"loss": None, "list": [1.0, None], "ok": 2.5}


def test_a_diverging_finetune_run_stops_with_one_line_and_writes_no_checkpoint(packed, tmp_path, capsys):
    out = tmp_path / "ft"
    assert cli(["finetune_ctc", f"shards={packed}", f"out={out}", *FINETUNE, "backbone_lr=1e9", *DIVERGE]) == 2
    line = error_line(capsys)
    assert "training stopped" in line and "epoch 0, step" in line
    assert not (out / "best.safetensors").exists() and not (out / "model.safetensors").exists()


def _checkpoint(path, fill):
    """A finetune_ctc checkpoint whose weights went through ``fill`` (a diverged run's model)."""
    cfg = FinetuneConfig(backbone="s3d", stop_after=4)
    model = build_model(cfg, num_classes=10)
    with torch.no_grad():
        for p in model.parameters():
            fill(p)
    save_checkpoint(
        model, path, checkpoint_metadata("s3d", {"stop_after": 4}, "linear", {"hidden": 256, "dropout": 0.1}, 10)
    )
    return path


def test_extraction_refuses_a_nan_checkpoint_naming_it_before_writing_features(packed, tmp_path, capsys):
    ckpt = _checkpoint(tmp_path / "best.safetensors", lambda p: p.fill_(float("nan")))
    out = tmp_path / "feats"
    assert cli(["extract_features", f"shards={packed}", f"out={out}", f"checkpoint={ckpt}", *EXTRACT]) == 2
    line = error_line(capsys)
    assert str(ckpt) in line and "non-finite weights" in line
    assert not list(out.glob("dev/*.npy")) and not (out / "features.dev").exists()


def test_extraction_refuses_features_that_overflow_naming_the_video_and_split(packed, tmp_path, capsys):
    # finite weights, but so large that the activations overflow to inf/NaN
    ckpt = _checkpoint(tmp_path / "huge.safetensors", lambda p: p.mul_(1e12))
    out = tmp_path / "feats"
    assert cli(["extract_features", f"shards={packed}", f"out={out}", f"checkpoint={ckpt}", *EXTRACT]) == 2
    line = error_line(capsys)
    assert "split 'dev'" in line and "dev-000000.tar" in line and "not finite" in line
    assert not list(out.glob("dev/*.npy")) and not (out / "features.dev").exists()
    assert not (out / "dev" / "features.index.json").exists()

"""Experiment trackers in the recipes: what ``log_with=tensorboard`` writes, read back from the event files.

Train loss and learning rate per step, dev WER, epoch loss and loader frames/s per epoch, at
global steps that a resumed run continues; a bad tracker name is one line before anything is written.
"""

from __future__ import annotations

import json
import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # the dev extra has it

from signstream.recipes import finetune_ctc, trackers, train_head
from signstream.recipes.config import parse_config
from signstream.tools.cli import main as cli
from tests.recipes.test_extract_features import BASE as EXTRACT_ARGS
from tests.recipes.test_finetune_ctc import BASE as FINETUNE_ARGS
from tests.recipes.test_train_head import ARGS as HEAD_ARGS
from tests.recipes.test_train_head import make_features

EPOCH_TAGS = ["train/epoch_loss", "dev/wer", "loader/frames_per_s", "epoch"]


def scalars(run_dir) -> dict[str, list[int]]:
    """The steps of every scalar tag in one tracker run folder (TensorBoard's view: purged events hidden)."""
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_train_head_logs_steps_and_epochs_and_a_resume_continues_them(tmp_path):
    feats = make_features(tmp_path / "feats", n_train=16, n_eval=4)
    out = tmp_path / "run"
    args = [f"features={feats}", f"out={out}", "epochs=3", "log_with=tensorboard", "log_every=1", *HEAD_ARGS]
    assert train_head.main(args) == 0
    steps = 2  # 16 training samples in batches of 8
    logged = scalars(out / "trackers" / "train_head")
    assert logged["train/loss"] == logged["train/lr"] == list(range(3 * steps))
    for tag in EPOCH_TAGS:
        assert logged[tag] == [steps - 1, 2 * steps - 1, 3 * steps - 1], tag
    assert logged["final/dev_wer"] == logged["final/test_wer"] == [3 * steps - 1]
    # the tracker keys are not part of the run: the same run without them resumes (nothing to do)
    fingerprint = json.loads((out / "fingerprint.json").read_text())["fingerprint"]["config"]
    assert not set(trackers.TRACKER_KEYS) & set(fingerprint)

    # killed after epoch 0: the resumed run logs from epoch 1's first step, and TensorBoard
    # shows each step once (what the first run logged past the checkpoint is hidden)
    for epoch in (1, 2):
        shutil.rmtree(out / "checkpoints" / f"epoch_{epoch:03d}")
    (out / "metrics.json").unlink()
    assert train_head.main(args) == 0
    files = sorted((out / "trackers" / "train_head").glob("events.out.tfevents.*"))
    assert len(files) == 2
    resumed = scalars(out / "trackers" / "train_head")
    assert resumed["train/loss"] == list(range(3 * steps))
    assert resumed["dev/wer"] == [steps - 1, 2 * steps - 1, 3 * steps - 1]
    history = json.loads((out / "metrics.json").read_text())["history"]
    events = EventAccumulator(str(out / "trackers" / "train_head"))
    events.Reload()
    assert [e.value for e in events.Scalars("dev/wer")] == pytest.approx([h["dev_wer"] for h in history])


def test_project_name_logging_dir_and_log_every(tmp_path):
    feats = make_features(tmp_path / "feats", n_train=16, n_eval=4)
    out, logs = tmp_path / "run", tmp_path / "logs"
    args = [f"features={feats}", f"out={out}", "epochs=2", "eval_splits=dev", *HEAD_ARGS]
    extra = ["log_with=tensorboard", "project_name=exp1", f"logging_dir={logs}", "log_every=3"]
    assert train_head.main([*args, *extra]) == 0
    assert not (out / "trackers").exists()
    logged = scalars(logs / "exp1")
    assert logged["train/loss"] == [0, 3]  # 4 steps in all, every third logged
    assert logged["dev/wer"] == [1, 3]


@pytest.mark.slow
def test_finetune_ctc_logs_both_learning_rates_and_loader_frames(packed, tmp_path):
    out = tmp_path / "ft"
    args = [f"shards={packed}", f"out={out}", *FINETUNE_ARGS, "epochs=2", "max_steps_per_epoch=2"]
    assert finetune_ctc.main([*args, "log_with=tensorboard", "log_every=1"]) == 0
    logged = scalars(out / "trackers" / "finetune_ctc")
    # two parameter groups: the head (train/lr) and the unfrozen backbone blocks (train/lr_1)
    assert logged["train/loss"] == logged["train/lr"] == logged["train/lr_1"] == [0, 1, 2, 3]
    for tag in EPOCH_TAGS:
        assert logged[tag] == [1, 3], tag
    history = json.loads((out / "metrics.json").read_text())["history"]
    events = EventAccumulator(str(out / "trackers" / "finetune_ctc"))
    events.Reload()
    assert [e.value for e in events.Scalars("loader/frames_per_s")] == pytest.approx(
        [h["frames_per_s"] for h in history], rel=1e-3
    )
    hparams = next((out / "trackers" / "finetune_ctc").glob("*/hparams.yml")).read_text()
    assert "backbone: s3d" in hparams and "temporal_rescale: 0.5,1.5" in hparams


@pytest.mark.parametrize(
    "value, message",
    [
        ("nosuch", "unknown tracker 'nosuch'"),
        ("tensorboard,nosuch", "unknown tracker 'nosuch'"),
    ],
)
def test_an_unknown_tracker_is_one_line_and_writes_nothing(tmp_path, capsys, value, message):
    out = tmp_path / "run"
    assert cli(["train_head", f"features={tmp_path}", f"out={out}", f"log_with={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "'log_with'" in err[0]
    assert not out.exists()


def test_a_missing_tracker_package_names_what_to_install(tmp_path, capsys, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    out = tmp_path / "run"
    assert cli(["train_head", f"features={tmp_path}", f"out={out}", "log_with=wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install wandb" in err[0]
    assert not out.exists()


def test_no_tracker_by_default_and_none_spelled_out(tmp_path):
    for value in ([], ["log_with=none"], ["log_with="]):
        assert parse_config(train_head.TrainHeadConfig, value).log_with is None
    feats = make_features(tmp_path / "feats", n_train=8, n_eval=2)
    out = tmp_path / "run"
    assert train_head.main([f"features={feats}", f"out={out}", "epochs=1", "eval_splits=dev", *HEAD_ARGS]) == 0
    assert not (out / "trackers").exists()


@pytest.mark.slow
def test_extract_features_logs_each_splits_counts_and_frames_per_second(packed, tmp_path):
    out = tmp_path / "feats"
    args = [f"shards={packed}", f"out={out}", *EXTRACT_ARGS, "splits=train,dev", "writers=npy", "log_with=tensorboard"]
    assert cli(["extract_features", *args]) == 0
    summary = json.loads((out / "summary.json").read_text())["splits"]
    events = EventAccumulator(str(out / "trackers" / "extract_features"))
    events.Reload()
    for index, split in enumerate(("train", "dev")):
        for key in ("videos", "frames", "skipped", "frames_per_s"):
            assert [e.step for e in events.Scalars(f"{split}/{key}")] == [index]
        assert events.Scalars(f"{split}/videos")[0].value == summary[split]["videos"] > 0
        assert events.Scalars(f"{split}/frames_per_s")[0].value > 0


def test_flat_config_holds_scalars_only_and_hides_url_secrets():
    cfg = finetune_ctc.FinetuneConfig(shards="https://user:secret@example.org/packed", log_with=["tensorboard"])
    flat = trackers.flat_config(cfg)
    assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())
    assert flat["temporal_rescale"] == "0.5,1.5" and flat["weights"] == "none" and flat["log_with"] == "tensorboard"
    assert "secret" not in flat["shards"]

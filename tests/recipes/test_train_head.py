"""Tests for ``recipes/train_head.py``: it learns, scores, writes its files, resumes exactly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file

from signstream import SignstreamError
from signstream.loaders.feature_writers import WRITERS, write_video
from signstream.recipes.train_head import main

GLOSSES = ["AA", "BB", "CC", "DD", "EE", "FF"]


def make_features(root, seed=0, n_train=40, n_eval=10, dim=16):
    """Features where each gloss is a fixed vector held for 6 frames, plus noise."""
    rng = np.random.default_rng(seed)
    protos = rng.normal(size=(len(GLOSSES), dim)) * 2
    for split, n in (("train", n_train), ("dev", n_eval), ("test", n_eval)):
        for i in range(n):
            ids = rng.integers(0, len(GLOSSES), size=rng.integers(2, 5))
            frames = np.concatenate([np.repeat(protos[g][None], 6, 0) for g in ids])
            frames = frames + rng.normal(scale=0.3, size=frames.shape)
            meta = {
                "name": f"{split}_{i:03d}",
                "gloss": " ".join(GLOSSES[g] for g in ids),
                "signer": "S1",
                "num_frames": len(frames),
            }
            write_video(root, split, meta["name"], meta, frames.astype(np.float32), dtype="float32")
        WRITERS["npy"](root, root, split)
    (root / "glosses.txt").write_text("\n".join(GLOSSES) + "\n")
    return root


ARGS = ["head=conv_bilstm", "hidden=64", "batch_size=8", "lr=3e-3", "warmup_steps=5", "dropout=0.0", "cleanup=none"]


@pytest.mark.slow
def test_head_learns_the_task_and_writes_scored_outputs(tmp_path):
    feats = make_features(tmp_path / "feats")
    out = tmp_path / "run"
    assert main([f"features={feats}", f"out={out}", "epochs=12", *ARGS]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    history = metrics["history"]
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert metrics["dev_wer"] < 50.0 and metrics["test_wer"] < 50.0
    for name in ("config.yaml", "head_best.safetensors", "dev.hyp.txt", "dev.ref.txt", "test.ctm", "test.stm"):
        assert (out / name).exists(), name
    assert len((out / "dev.hyp.txt").read_text().splitlines()) == 10


@pytest.mark.slow
def test_resume_from_a_checkpoint_continues_the_same_trajectory(tmp_path):
    feats = make_features(tmp_path / "feats", n_train=16, n_eval=4)
    out = tmp_path / "run"
    args = [f"features={feats}", f"out={out}", "epochs=4", *ARGS]
    assert main(args) == 0
    straight = load_file(str(out / "checkpoints" / "epoch_003" / "model.safetensors"))
    history = json.loads((out / "metrics.json").read_text())["history"]
    # Simulate a kill after epoch 1: later checkpoints and the results never happened.
    for epoch in (2, 3):
        shutil.rmtree(out / "checkpoints" / f"epoch_{epoch:03d}")
    (out / "metrics.json").unlink()
    assert main(args) == 0
    resumed = load_file(str(out / "checkpoints" / "epoch_003" / "model.safetensors"))
    assert straight.keys() == resumed.keys()
    for k in straight:
        np.testing.assert_allclose(straight[k].numpy(), resumed[k].numpy(), rtol=1e-5, atol=1e-6)
    resumed_history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in resumed_history] == [0, 1, 2, 3]
    assert [h["train_loss"] for h in resumed_history] == pytest.approx([h["train_loss"] for h in history])


def test_missing_features_and_unknown_key_are_clear_errors(tmp_path):
    with pytest.raises(SignstreamError, match="features directory not found"):
        main([f"features={tmp_path / 'nope'}", f"out={tmp_path / 'o'}", f"vocab={tmp_path / 'g.txt'}"])
    with pytest.raises(SignstreamError, match="unknown config key"):
        main(["featurez=x"])

"""The end-to-end CTC checkpoint: written by finetune_ctc, read back strictly by extraction."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from signstream import SignstreamError
from signstream.models.ctc import VideoCTC, checkpoint_metadata, load_backbone, save_checkpoint
from signstream.models.registry import create_model

OPTIONS = {"stop_after": 2}


@pytest.fixture()
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = VideoCTC(create_model("s3d", **OPTIONS), num_classes=5)
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path, checkpoint_metadata("s3d", OPTIONS, "linear", {}, 5))
    return model, path


def test_the_backbone_comes_back_with_every_weight(checkpoint):
    model, path = checkpoint
    backbone, meta = load_backbone(path)
    assert meta["backbone"] == "s3d" and backbone.stop_after == 2
    theirs = backbone.state_dict()
    assert theirs.keys() == model.backbone.state_dict().keys()
    assert all(torch.equal(v, theirs[k]) for k, v in model.backbone.state_dict().items())


def test_a_checkpoint_of_another_backbone_is_a_one_line_error_naming_the_file(checkpoint):
    _, path = checkpoint
    with pytest.raises(SignstreamError) as info:
        load_backbone(path, stop_after=3)  # the file holds blocks 1-2 only
    message = str(info.value)
    assert str(path) in message and "does not match S3D" in message and "missing" in message
    assert "\n" not in message


def test_a_checkpoint_with_a_foreign_or_misshaped_weight_names_the_key_and_the_file(checkpoint, tmp_path):
    _, path = checkpoint
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    name = next(k for k in state if k.startswith("backbone.") and k.endswith(".weight"))
    state[name] = torch.zeros(3)
    state["backbone.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=meta)
    with pytest.raises(SignstreamError, match="bad.safetensors does not match S3D") as info:
        load_backbone(bad)
    message = str(info.value)
    assert "1 unexpected: extra.weight" in message and name[len("backbone.") :] in message
    assert "another shape" in message


@pytest.mark.parametrize("device", ["meta", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_cpu_lengths_are_checked_on_the_host_and_reach_the_head_on_the_video_device(device):
    # meta tensors have no data: reading lengths back from the "device" would raise here,
    # as it would synchronise the host on a GPU (which the cuda run turns into an error)
    torch.manual_seed(0)
    model = VideoCTC(create_model("s3d", **OPTIONS), num_classes=5).to(device)
    video, lengths = torch.randn(2, 3, 8, 32, 32).to(device), torch.tensor([8, 5])
    with torch.no_grad():
        feats = model.backbone.forward_features(video)
        steps = model.feature_lengths(lengths, video.shape[2])
        assert steps.device.type == "cpu" and steps.tolist() == [4, 3]
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            log_probs, out_lengths = model.head(feats, steps)
        finally:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    assert log_probs.shape == (4, 2, 5) and log_probs.device == out_lengths.device == feats.device
    with pytest.raises(SignstreamError, match=r"lengths must be 2 values in \[1, 4\], got \[5, 3\]"):
        model.head(feats, torch.tensor([5, 3]))

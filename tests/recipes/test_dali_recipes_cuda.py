"""``extract_features`` and ``finetune_ctc`` reading through DALI (``backend=dali``), on the CPU and on CUDA.

The recipes read ``phoenix_size_packed`` (210×260 VP9, ``tests/conftest.py``):
NVDEC refuses the 48×64 corpus of the other recipe tests. Each test runs with
DALI's CPU decoder here and, marked ``cuda``, with NVDEC; they differ only in
``device=``. A spy on ``DaliLoader`` records every batch it delivers (mode and
device), so a test proves DALI fed the model on that device, not only that the
recipe finished.

Extraction through DALI is compared with extraction through PyAV on the same
device: worst relative error per feature vector at most 5 %. The two inputs
differ by the decoders' rounding (under 1 grey level at the 99th percentile,
``tests/loaders/test_dali_cuda.py``), which moves these random-weight S3D
features (112 px, cut after block 3) by 0.8-1.2 % on the CPU, with DALI's
operators and with OpenCV alike; a clip shifted by one pixel moves them by
12 %, a flipped one by 18 %. TF32 is switched off for the comparison so that
on CUDA the arithmetic adds nothing to the loaders' difference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from signstream.loaders.dali_backend import DaliLoader
from signstream.models.ctc import VideoCTC
from signstream.models.s3d import S3D
from signstream.tools.cli import main as cli
from tests.recipes.test_devices import _assert_ran_on, _fresh_accelerate_state, _spy  # noqa: F401 - autouse fixture
from tests.recipes.test_extract_features import _outputs
from tests.tolerance import worst_relative_error

pytest.importorskip("nvidia.dali")

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", marks=pytest.mark.cuda, id="cuda")]
EXTRACT = [
    "backbone=s3d",
    "stop_after=3",
    "image_size=112",
    "num_workers=1",
    "writers=npy",
    "dtype=float32",
    "progress=false",
    "seed=3",
    "splits=dev",
    "precision=fp32",
]
FINETUNE = [
    "backbone=s3d",
    "stop_after=4",
    "image_size=64",
    "max_frames=32",
    "batch_size=2",
    "num_workers=1",
    "head=linear",
    "lr=3e-3",
    "backbone_lr=3e-3",
    "warmup_steps=1",
    "freeze=2",
    "seed=1",
    "epochs=2",
    "backend=dali",
]


@pytest.fixture
def dali_batches(monkeypatch) -> list[tuple[str, torch.device]]:
    """``(mode, device)`` of every batch a DALI loader delivers while the test runs."""
    seen = []
    original = DaliLoader.__iter__

    def spy(self):
        for batch in original(self):
            seen.append((self.mode, batch.video.device))
            yield batch

    monkeypatch.setattr(DaliLoader, "__iter__", spy)
    return seen


def _reset_accelerate() -> None:
    """Accelerate keeps one state per process; a second recipe run in one test needs it cleared."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.mark.parametrize("device", DEVICES)
def test_extract_features_through_dali_matches_pyav_on_the_same_device(
    phoenix_size_packed, tmp_path, monkeypatch, dali_batches, device
):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare loaders, not arithmetic
    calls = _spy(monkeypatch, S3D, when=torch.is_inference_mode_enabled)
    outs = {}
    for backend in ("pyav", "dali"):
        outs[backend] = tmp_path / backend
        assert (
            cli(
                [
                    "extract_features",
                    f"shards={phoenix_size_packed}",
                    f"out={outs[backend]}",
                    *EXTRACT,
                    f"backend={backend}",
                    f"device={device}",
                ]
            )
            == 0
        )
        _reset_accelerate()
    _assert_ran_on(calls, device, "fp32")
    assert {mode for mode, _ in dali_batches} == {"eval"} and len(dali_batches) == 3  # batch_size=1, 3 videos
    assert {d.type for _, d in dali_batches} == {device}
    reference, features = _outputs(outs["pyav"]), _outputs(outs["dali"])
    assert features.keys() == reference.keys() and len(features) == 3
    for key, ref in reference.items():
        meta = json.loads((outs["dali"] / key.replace(".npy", ".json")).read_text())
        assert features[key].shape == ref.shape == (-(-meta["num_frames"] // 2), 480)  # stop_after=3: stride 2
        assert np.isfinite(features[key]).all()
        assert worst_relative_error(features[key], ref) <= 0.05, key
    summary = json.loads((outs["dali"] / "summary.json").read_text())
    assert summary["splits"]["dev"]["videos"] == 3 and summary["splits"]["dev"]["skipped"] == []


@pytest.mark.parametrize("device", DEVICES)
def test_finetune_ctc_through_dali_trains_and_evaluates_on_the_device_for_two_epochs(
    phoenix_size_packed, tmp_path, monkeypatch, dali_batches, device
):
    calls = _spy(monkeypatch, VideoCTC)
    out = tmp_path / "ft"
    assert cli(["finetune_ctc", f"shards={phoenix_size_packed}", f"out={out}", *FINETUNE, f"device={device}"]) == 0
    _assert_ran_on(calls, device, "fp32")
    modes = [mode for mode, _ in dali_batches]
    # each epoch: 4 train videos in 2 batches (train mode: random crops, temporal rescale), 3 dev videos in 2
    assert modes == ["train", "train", "eval", "eval"] * 2
    assert {d.type for _, d in dali_batches} == {device}
    history = json.loads((out / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1] and all(h["steps"] == 2 for h in history)
    assert all(np.isfinite(h["train_loss"]) and h["train_loss"] > 0 and h["dev_wer"] >= 0 for h in history)
    assert (out / "model.safetensors").exists()

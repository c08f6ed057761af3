"""Feature modes: dense (chunked) and window extraction."""

from __future__ import annotations

import math

import pytest
import torch

from signstream import SignstreamError
from signstream.models import create_model, extract_features
from signstream.models.features import frames_between, pad_frames
from signstream.models.layers import calibrate_batchnorm


def _video(frames: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def _model(name: str, size: int = 16, **kw):
    # Calibrated BatchNorm statistics give eval-mode features of a realistic
    # scale (random init alone gives ~1e-6), so tolerances mean something.
    torch.manual_seed(0)
    model = create_model(name, **kw)
    return calibrate_batchnorm(model, [torch.randn(2, 3, 16, size, size)]).eval()


def _assert_close(actual, expected, rel=1e-4):
    scale = expected.abs().max()
    assert scale > 1e-2
    assert (actual - expected).abs().max() <= rel * scale


def _unchunked(model, video):
    with torch.no_grad():
        return model.forward_features(video.unsqueeze(0))[0]


class _FrameCounter:
    """Wraps forward_features to record the clip lengths it was called with."""

    def __init__(self, model):
        self.lengths: list[int] = []
        self._inner = model.forward_features
        model.forward_features = self

    def __call__(self, x):
        self.lengths.append(x.shape[2])
        return self._inner(x)


@pytest.mark.parametrize(
    ("name", "size", "frames", "kw"),
    [("i3d", 16, 200, {}), ("i3d", 16, 203, {}), ("s3d", 17, 198, {"stop_after": 4})],
)
def test_dense_chunked_equals_unchunked_with_default_overlap(name, size, frames, kw):
    model = _model(name, size, **kw)
    video = _video(frames, size)
    counter = _FrameCounter(model)
    chunked = extract_features(model, video, "dense", chunk_len=32)
    stride = model.temporal_stride
    default_overlap = -(-(model.receptive_field // 2) // stride) * stride
    assert max(counter.lengths) == 32 + 2 * default_overlap  # memory bound: one chunk
    assert len(counter.lengths) > 2  # it really was chunked
    # The reference: the whole video, padded (repeat last frame) to a multiple of the stride.
    ref = _unchunked(model, pad_frames(video.unsqueeze(0), -(-frames // stride) * stride)[0])
    assert chunked.shape == ref.shape == (math.ceil(frames / stride), model.num_features)
    _assert_close(chunked, ref)


def test_dense_without_overlap_differs_at_the_seams():
    # The control for the test above: too little context changes the seam features.
    model = _model("i3d")
    video = _video(96)
    chunked = extract_features(model, video, "dense", chunk_len=32, overlap=0)
    ref = _unchunked(model, video)
    assert chunked.shape == ref.shape
    assert (chunked - ref).abs().max() > 0.01 * ref.abs().max()


def test_dense_resnet_chunks_are_exact_without_overlap():
    model = _model("resnet18_2d")
    video = _video(11)
    chunked = extract_features(model, video, "dense", chunk_len=4)
    _assert_close(chunked, _unchunked(model, video))


@pytest.mark.parametrize("frames", [141, 150, 155])
@pytest.mark.parametrize("name", ["i3d", "s3d"])
def test_dense_pad_none_keeps_the_unchunked_length(name, frames):
    model = _model(name, 17)
    video = _video(frames, 17)
    out = extract_features(model, video, "dense", chunk_len=16, overlap=8, pad="none")
    assert out.shape[0] == model.out_frames(frames) == _unchunked(model, video).shape[0]


def test_dense_pad_repeat_covers_every_frame():
    model = _model("s3d", 17)
    out = extract_features(model, _video(20, 17), "dense")
    assert out.shape[0] == 3 == math.ceil(20 / 8)  # unpadded S3D would give 2


def test_short_video_is_padded_by_repeating_the_last_frame():
    model = _model("s3d", 17)
    video = _video(3, 17)
    out = extract_features(model, video, "dense")
    padded = torch.cat([video, video[:, -1:].expand(-1, 5, -1, -1)], dim=1)
    assert out.shape == (1, 1024)
    _assert_close(out, _unchunked(model, padded))
    assert extract_features(model, video[:, :1], "window", clip_len=8).shape == (1, 1024)


@pytest.mark.parametrize(("frames", "count"), [(5, 1), (16, 1), (17, 2), (40, 4), (41, 5)])
def test_window_clip_count_is_ceil_of_remaining_over_stride_plus_one(frames, count):
    model = _model("resnet18_2d")
    out = extract_features(model, _video(frames), "window", clip_len=16, stride=8, clips_per_batch=3)
    assert out.shape == (count, 512)


def test_window_features_are_clip_means_with_the_last_clip_padded():
    model = _model("i3d")
    video = _video(21)
    out = extract_features(model, video, "window", clip_len=8, stride=6)
    assert out.shape[0] == math.ceil((21 - 8) / 6) + 1 == 4
    last = pad_frames(video.unsqueeze(0), 26)[0, :, 18:26]
    _assert_close(out[-1], _unchunked(model, last).mean(dim=0))
    _assert_close(out[0], _unchunked(model, video[:, :8]).mean(dim=0))
    assert (out[0] - out[-1]).abs().max() > 0.01 * out[0].abs().max()


def test_extract_features_accepts_batched_input_restores_mode_and_returns_cpu_float32():
    model = _model("resnet18_2d").train()
    video = _video(5)
    a = extract_features(model, video)
    b = extract_features(model, video.unsqueeze(0))
    assert model.training
    assert a.dtype == torch.float32 and a.device.type == "cpu" and torch.equal(a, b)
    assert not torch.is_inference(a)  # usable in autograd afterwards


def test_bfloat16_autocast_runs_and_stays_close():
    model = _model("resnet18_2d", 32)
    video = _video(4, 32)
    ref = extract_features(model, video)
    low = extract_features(model, video, autocast=torch.bfloat16)
    assert low.dtype == torch.float32
    _assert_close(low, ref, rel=0.1)


def test_frames_between_repeats_the_last_frame_past_the_end():
    video = torch.arange(5.0).view(1, 1, 5, 1, 1)
    assert frames_between(video, 1, 4).flatten().tolist() == [1, 2, 3]
    assert frames_between(video, 3, 8).flatten().tolist() == [3, 4, 4, 4, 4]
    assert frames_between(video, 6, 8).flatten().tolist() == [4, 4]
    assert pad_frames(video, 3) is video


def test_bad_mode_and_options_raise_signstream_error():
    model = _model("i3d")
    with pytest.raises(SignstreamError, match="unknown feature mode 'sparse'; choose from dense, window"):
        extract_features(model, _video(8), "sparse")
    with pytest.raises(SignstreamError, match="chunk_len=12 must be a positive multiple of 8"):
        extract_features(model, _video(8), chunk_len=12)
    with pytest.raises(SignstreamError, match="overlap=4"):
        extract_features(model, _video(8), overlap=4)
    with pytest.raises(SignstreamError, match="clip_len=4 is shorter"):
        extract_features(model, _video(8), "window", clip_len=4)
    with pytest.raises(SignstreamError, match="pad must be"):
        extract_features(model, _video(8), pad="zeros")
    with pytest.raises(SignstreamError, match="one video"):
        extract_features(model, torch.zeros(2, 3, 8, 16, 16))

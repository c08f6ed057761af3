"""Backbone tests, driven by the registry: every registered model gets them.

Tiny inputs (32x32, <= 24 frames) keep each test well under a few seconds on CPU.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from signstream import SignstreamError
from signstream.loaders.batch import normalize
from signstream.loaders.transform import Transform
from signstream.models import VideoBackbone, create_model, list_models
from signstream.models.layers import MaxPool3dSame, Unit3D, calibrate_batchnorm, same_padding

SIZE = 32


def _video(batch: int, frames: int, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, frames, size, size, generator=g)


def _twin(name: str, **kw) -> tuple[VideoBackbone, VideoBackbone]:
    torch.manual_seed(0)
    a = create_model(name)
    b = create_model(name, **kw)
    b.load_state_dict(a.state_dict())
    return a, b


def test_registry_lists_the_three_backbones():
    assert {"i3d", "s3d", "resnet18_2d"} <= set(list_models())


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("frames", [8, 13])
def test_forward_features_shape_is_batch_by_out_frames_by_num_features(name, frames):
    model = create_model(name).eval()
    with torch.no_grad():
        y = model.forward_features(_video(2, frames))
    assert y.shape == (2, model.out_frames(frames), model.num_features)
    assert torch.isfinite(y).all()
    # One output step per temporal_stride frames, up to the rounding at the end.
    assert abs(model.out_frames(frames) * model.temporal_stride - frames) < model.temporal_stride


@pytest.mark.parametrize("name", list_models())
def test_backward_gives_gradients_to_every_parameter(name):
    model = create_model(name).train()
    model.forward_features(_video(2, 8)).square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    first = next(model.blocks()[0].parameters())
    assert first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_models())
def test_input_spec_is_frozen_and_consistent_with_stride(name):
    model = create_model(name)
    spec = model.input_spec
    assert len(spec.mean) == len(spec.std) == 3 and min(spec.std) > 0
    assert spec.pad_multiple % model.temporal_stride == 0 or model.temporal_stride == 1
    with pytest.raises(AttributeError):
        spec.min_frames = 1  # frozen dataclass


def test_input_specs_match_each_checkpoints_convention():
    assert create_model("i3d").input_spec.mean == (0.5, 0.5, 0.5)
    assert create_model("s3d").input_spec.mean == (0.43216, 0.394666, 0.37645)
    assert create_model("s3d", variant="kylemin").input_spec.std == (0.5, 0.5, 0.5)
    assert create_model("resnet18_2d").input_spec.mean == (0.485, 0.456, 0.406)
    # the loaders' normalisation is the one that applies a spec: white maps to 1 for i3d's [-1, 1]
    transform = Transform.from_input_spec(create_model("i3d").input_spec)
    white = torch.full((1, 3, 2, 4, 4), 255, dtype=torch.uint8)
    assert torch.allclose(normalize(white, transform), torch.ones(white.shape))


@pytest.mark.parametrize("frames", range(1, 25))
def test_i3d_temporal_length_is_ceil_t_over_8(frames):
    model = create_model("i3d").eval()
    with torch.no_grad():
        y = model.forward_features(_video(1, frames, size=16))
    assert y.shape[1] == math.ceil(frames / 8) == model.out_frames(frames)


def test_s3d_temporal_length_is_floor_of_ceil_t_over_4_halved():
    model = create_model("s3d").eval()
    differs = []
    for frames in range(5, 25):
        with torch.no_grad():
            got = model.forward_features(_video(1, frames)).shape[1]
        assert got == math.ceil(frames / 4) // 2 == model.out_frames(frames)
        if got != math.ceil(frames / 8):
            differs.append(frames)
    # As docs/design/models.md states: T mod 8 in 1..4 loses the tail.
    assert differs == [9, 10, 11, 12, 17, 18, 19, 20]


@pytest.mark.parametrize("name", ["i3d", "s3d"])
def test_stop_after_block_4_gives_832_features_at_stride_4(name):
    model = create_model(name, stop_after=4).eval()
    assert (model.num_features, model.temporal_stride, len(model.blocks())) == (832, 4, 4)
    with torch.no_grad():
        y = model.forward_features(_video(1, 16))
    assert y.shape == (1, 4, 832)


@pytest.mark.parametrize("name", list_models())
def test_freeze_blocks_stops_gradients_and_batchnorm_updates(name):
    model = create_model(name, freeze_blocks=2).train()
    frozen, trained = model.blocks()[:2], model.blocks()[2:]
    stats = [
        b.running_mean.clone()
        for b in frozen[0].modules()
        if isinstance(b, torch.nn.BatchNorm3d | torch.nn.BatchNorm2d)
    ]
    model.forward_features(_video(2, 8)).mean().backward()
    assert all(p.grad is None and not p.requires_grad for blk in frozen for p in blk.parameters())
    assert all(p.grad is not None for blk in trained for p in blk.parameters())
    after = [b.running_mean for b in frozen[0].modules() if isinstance(b, torch.nn.BatchNorm3d | torch.nn.BatchNorm2d)]
    assert stats and all(torch.equal(a, b) for a, b in zip(stats, after, strict=True))
    model.freeze(0)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_freeze_blocks_out_of_range_raises(name):
    with pytest.raises(SignstreamError, match="out of range"):
        create_model(name, freeze_blocks=99)


@pytest.mark.parametrize("name", list_models())
def test_grad_checkpointing_gives_the_same_gradients(name):
    plain, ckpt = _twin(name, grad_checkpointing=True)
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    x = _video(2, 8)
    for model in (plain, ckpt):
        model.train()
        model.forward_features(x).square().mean().backward()
    assert sum(p.grad.abs().sum() for p in plain.parameters()) > 0
    # Relative per tensor (some are exactly zero: timm zero-inits residual BN gammas).
    for (n, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert (p.grad - q.grad).abs().max() <= 1e-4 * p.grad.abs().max() + 1e-12, n


@pytest.mark.parametrize("name", list_models())
def test_channels_last_gives_the_same_features(name):
    plain, cl = _twin(name, channels_last=True)
    calibrate_batchnorm(plain, [_video(2, 8, seed=1)])
    cl.load_state_dict(plain.state_dict())
    x = _video(1, 8)
    with torch.no_grad():
        a, b = plain.eval().forward_features(x), cl.eval().forward_features(x)
    assert a.abs().max() > 1e-2
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()


@pytest.mark.parametrize("name", list_models())
def test_calibrate_batchnorm_gives_realistic_eval_feature_scale(name):
    model = create_model(name).eval()
    x = _video(2, 8)
    with torch.no_grad():
        raw = model.forward_features(x).abs().mean()
        calibrate_batchnorm(model, [x])
        calibrated = model.forward_features(x).abs().mean()
    assert not model.training
    assert calibrated > 0.05 and calibrated > 2 * raw


def test_unknown_model_and_unknown_option_raise_signstream_error():
    with pytest.raises(SignstreamError, match="unknown model 'c3d'"):
        create_model("c3d")
    with pytest.raises(SignstreamError, match="no option 'depth'"):
        create_model("i3d", depth=50)
    with pytest.raises(SignstreamError, match="variant"):
        create_model("s3d", variant="tf")
    with pytest.raises(SignstreamError, match=r"\[B, C, T, H, W\]"):
        create_model("i3d").forward_features(torch.zeros(3, 8, 32, 32))


@pytest.mark.parametrize(("name", "stop_after"), [("i3d", 5), ("s3d", 5), ("s3d", 4)])
def test_declared_receptive_field_and_default_overlap_cover_the_gradient_probe(name, stop_after):
    model = create_model(name, stop_after=stop_after).eval()
    stride = model.temporal_stride
    x = _video(1, 192, size=17 if name == "s3d" else 8).requires_grad_(True)
    y = model.forward_features(x)
    j = y.shape[1] // 2
    y[0, j].sum().backward()
    touched = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3, 4))).flatten()
    first, last = touched.min().item(), touched.max().item()
    assert last - first + 1 == model.receptive_field
    # Default dense overlap (half the field, rounded up to the stride) covers the reach.
    overlap = -(-(model.receptive_field // 2) // stride) * stride
    assert j * stride - first <= overlap and last - ((j + 1) * stride - 1) <= overlap


# -- TensorFlow SAME padding ------------------------------------------------------


@pytest.mark.parametrize("kernel", [1, 2, 3, 7])
@pytest.mark.parametrize("stride", [1, 2])
def test_same_padding_matches_pytorch_i3d_rule_and_gives_ceil_output(kernel, stride):
    for size in range(1, 30):
        front, back = same_padding(size, kernel, stride)
        # pytorch-i3d's rule, stated independently: k - stride if size divides, else k - size % stride.
        rule = max(kernel - (stride if size % stride == 0 else size % stride), 0)
        assert front + back == rule and front == rule // 2
        assert (size + front + back - kernel) // stride + 1 == math.ceil(size / stride)


def test_unit3d_stride_1_equals_conv_with_same_padding():
    torch.manual_seed(0)
    unit = Unit3D(4, 5, 3, batch_norm=False, activation=False)
    x = torch.randn(1, 4, 6, 7, 8)
    ref = F.conv3d(x, unit.conv3d.weight, padding="same")
    assert torch.allclose(unit(x), ref, atol=1e-6)


def test_unit3d_stride_2_puts_the_odd_padding_at_the_back():
    unit = Unit3D(1, 1, (1, 1, 2), (1, 1, 2), batch_norm=False, activation=False)
    with torch.no_grad():
        unit.conv3d.weight.fill_(1.0)
    x = torch.arange(1.0, 6.0).view(1, 1, 1, 1, 5)  # W = 5: total pad 1 → front 0, back 1
    assert unit(x).flatten().tolist() == [3.0, 7.0, 5.0]


def test_maxpool_same_zero_padding_equals_ignoring_padding_on_relu_output():
    x = torch.relu(torch.randn(1, 2, 5, 7, 7))
    pool = MaxPool3dSame(3, 2)
    ref = F.max_pool3d(F.pad(x, (1, 1, 1, 1, 1, 1), value=-math.inf), 3, 2)
    assert torch.equal(pool(x), ref)

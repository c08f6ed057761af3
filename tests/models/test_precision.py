"""Backbone features in bf16/fp16 (and fp32 on CUDA) against fp32 on the CPU.

The recipes' ``precision=bf16|fp16`` keeps the weights in fp32 and runs the
forward pass under ``torch.autocast`` (``extract_features(..., autocast=dtype)``
in extraction, Accelerate's ``mixed_precision`` in training), so that is what
is compared here, through the same :func:`extract_features` the extraction
recipe calls. Each test runs on the CPU here and, marked ``cuda``, on a GPU;
the two variants differ only in the device.

Inputs: one 16-frame 32x32 clip, random weights (seeded) with BatchNorm
calibrated on four other random clips, eval mode.

Reference: fp32 on the CPU. On CUDA, fp32 convolutions run in TF32 by default
(``torch.backends.cudnn.allow_tf32``), whose 10-bit mantissa would make a CUDA
"fp32" reference about as inexact as fp16 itself.

Tolerance: the worst relative error of one feature vector,
``max_t ||a_t - b_t|| / ||b_t||``, at most 32 unit roundoffs ``u`` of the
arithmetic used (bf16 u = 2^-9: 0.0625; fp16 u = 2^-12: 0.0078; TF32 for fp32
on CUDA u = 2^-11: 0.0156). Measured on the CPU over five seeds it is 7-15 u
for every backbone and both low precisions (the error grows with depth, in
units of u alike), so 32 u leaves twice the worst measured case for the
device's own kernels, while a wrong cast, an overflow or a layer skipped in
low precision is far outside it. And at least u/4: the run really was in low
precision (an fp32 run on the CPU is bit-identical to the reference).

Depth: I3D and S3D are cut after block 3 (``stop_after=3``). With random
weights every further Inception block multiplies the rounding error by 5-10
(measured: bf16 at full depth is 10-50 % off, fp16 2-9 %), a property of
random BatchNorm networks, not of the arithmetic, which no bound tighter than
"not garbage" would survive. The full-depth networks are checked separately
for finite output and for fp16 (3 more mantissa bits) staying closer to fp32
than bf16. ResNet-18 is compared at full depth.
"""

from __future__ import annotations

import pytest
import torch

from signstream.models import create_model, extract_features
from signstream.models.layers import calibrate_batchnorm
from tests.tolerance import AUTOCAST, UNIT_ROUNDOFF, tolerance, worst_relative_error

SIZE, FRAMES = 32, 16
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]
BACKBONES = [("i3d", {"stop_after": 3}), ("s3d", {"stop_after": 3}), ("resnet18_2d", {})]


def _clips(batch: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _backbone(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, **kw)
    return calibrate_batchnorm(model, [_clips(4, seed=1)]).eval()


def _features(model, video, device, precision) -> torch.Tensor:
    out = extract_features(model.to(device), video, autocast=AUTOCAST[precision])
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert torch.isfinite(out).all()
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize(("name", "kw"), BACKBONES, ids=[n for n, _ in BACKBONES])
def test_features_match_cpu_fp32_within_32_unit_roundoffs(device, precision, name, kw):
    model = _backbone(name, **kw)
    video = _clips(1, seed=2)[0]
    reference = _features(model, video, "cpu", "fp32")
    assert reference.abs().mean() > 0.1  # calibrated BatchNorm: a realistic scale, so errors mean something
    out = _features(model, video, device, precision)
    assert out.shape == reference.shape == (model.out_frames(FRAMES), model.num_features)
    error = worst_relative_error(out, reference)
    assert error <= tolerance(device, precision), f"{error:.2e} > {tolerance(device, precision):.2e}"
    if precision != "fp32":
        assert error >= UNIT_ROUNDOFF[precision] / 4, f"{error:.2e}: was autocast to {precision} applied?"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["i3d", "s3d"])
def test_full_depth_autocast_is_finite_and_fp16_stays_closer_than_bf16(device, name):
    model = _backbone(name)
    video = _clips(1, seed=2)[0]
    reference = _features(model, video, "cpu", "fp32")
    bf16 = worst_relative_error(_features(model, video, device, "bf16"), reference)
    fp16 = worst_relative_error(_features(model, video, device, "fp16"), reference)
    assert 0 < fp16 < bf16 / 2, (fp16, bf16)  # measured on the CPU: fp16 is 5-8x closer
    assert bf16 < 1.0  # not garbage: closer to the reference than a zero vector is


class _DeviceSpy:
    """Wraps ``forward_features`` and records the device of every input it gets."""

    def __init__(self, model):
        self.devices: list[torch.device] = []
        self._inner = model.forward_features
        model.forward_features = self

    def __call__(self, x):
        self.devices.append(x.device)
        return self._inner(x)


@pytest.mark.parametrize(
    "device",
    [
        pytest.param("cpu"),
        pytest.param(
            "cuda:1",
            marks=[
                pytest.mark.cuda,
                pytest.mark.skipif(torch.cuda.device_count() < 2, reason="cuda:1 needs at least 2 CUDA devices"),
            ],
        ),
    ],
)
def test_features_are_computed_on_the_device_the_backbone_was_moved_to(device):
    model = _backbone("resnet18_2d")
    video = _clips(1, seed=2)[0]
    reference = _features(model, video, "cpu", "fp32")
    spy = _DeviceSpy(model.to(device))
    out = _features(model, video, device, "fp32")
    assert spy.devices and set(spy.devices) == {torch.device(device)}
    assert all(p.device == torch.device(device) for p in model.parameters())
    assert worst_relative_error(out, reference) <= tolerance(device, "fp32")

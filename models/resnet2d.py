"""ResNet-18 applied frame by frame: the 2D baseline (512-d ImageNet features per frame).

The layers are timm's ``resnet18`` (built with ``pretrained=False``,
``num_classes=0``), kept under timm's names (``conv1``, ``bn1``, ``layer1`` …
``layer4``); torchvision's ResNet-18 uses the same names, so both timm and
torchvision ResNet-18 state-dict files load strictly. Their classifier keys
``fc.weight``/``fc.bias`` are dropped explicitly.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from signstream.models.layers import VideoBackbone
from signstream.models.registry import IMAGENET_MEAN, IMAGENET_STD, InputSpec, register_model
from signstream.models.weights import StateDict, load_pretrained

__all__ = ["ResNet2d", "checkpoint_filter_fn", "resnet18_2d"]

HEAD_KEYS = ("fc.weight", "fc.bias")
WEIGHTS_HINT = (
    "save a timm resnet18 or torchvision resnet18 (IMAGENET1K_V1) state dict to a local "
    ".pth/.safetensors file and pass its path as weights="
)


class ResNet2d(VideoBackbone):
    """A 2D timm ResNet run on every frame independently.

    ``forward_features(x)``: ``[B, 3, T, H, W]`` (ImageNet-normalised) →
    ``[B, T, 512]``; temporal stride 1, receptive field 1 frame.

    Args:
        arch: timm architecture name (registered here: ``resnet18``).
        freeze_blocks: number of leading blocks (stem, layer1 … layer4) to freeze.
        grad_checkpointing: checkpoint each trainable block.
        channels_last: run frames in ``channels_last`` (NHWC), which helps
            cuDNN/oneDNN 2D convolutions, notably with AMP.
    """

    channels_last_format = torch.channels_last

    def __init__(
        self,
        arch: str = "resnet18",
        *,
        freeze_blocks: int = 0,
        grad_checkpointing: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        # Imported here: timm is only needed when a 2D backbone is built.
        import timm

        net = timm.create_model(arch, pretrained=False, num_classes=0)
        # Adopt timm's children directly so the state-dict keys stay timm's.
        for name in ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            self.add_module(name, getattr(net, name))
        self.num_features = net.num_features
        self.temporal_stride = 1
        self.receptive_field = 1
        self.input_spec = InputSpec(mean=IMAGENET_MEAN, std=IMAGENET_STD, default_size=224)
        self._configure(freeze_blocks, grad_checkpointing, channels_last)

    def _build_blocks(self) -> list[nn.Module]:
        stem = nn.Sequential(self.conv1, self.bn1, self.act1, self.maxpool)
        return [stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def out_frames(self, num_frames: int) -> int:
        return num_frames

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``[B, C, T, H, W]`` to ``[B, T, num_features]`` (per-frame global average)."""
        self._check_input(x)
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        y = self.forward_blocks(frames)
        return y.mean(dim=(2, 3)).reshape(b, t, -1)


def checkpoint_filter_fn(state_dict: StateDict, model: ResNet2d) -> StateDict:
    """Drop exactly the classifier keys ``fc.weight``/``fc.bias``; keep every other key."""
    return {k: v for k, v in state_dict.items() if k not in HEAD_KEYS}


@register_model
def resnet18_2d(
    weights: str | os.PathLike | None = None,
    *,
    freeze_blocks: int = 0,
    grad_checkpointing: bool = False,
    channels_last: bool = False,
) -> ResNet2d:
    """Build the per-frame ResNet-18, optionally loading a timm/torchvision state-dict file.

    Input: ``[B, 3, T, H, W]`` normalised with ImageNet mean/std on [0, 1].
    """
    model = ResNet2d(
        "resnet18",
        freeze_blocks=freeze_blocks,
        grad_checkpointing=grad_checkpointing,
        channels_last=channels_last,
    )
    if weights is not None:
        load_pretrained(model, weights, checkpoint_filter_fn, hint=WEIGHTS_HINT)
    return model

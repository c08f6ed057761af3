"""Shared building blocks of the video backbones.

TensorFlow-style SAME padding and the two I3D layers built on it (:class:`Unit3D`,
:class:`MaxPool3dSame`, under pytorch-i3d's parameter names), and :class:`VideoBackbone`,
the base class giving every backbone one interface: ``forward_features`` -> ``[B, T', D]``,
``blocks()``, ``freeze(k)``, gradient checkpointing and channels-last.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from signstream import SignstreamError
from signstream.models.registry import InputSpec

__all__ = [
    "MaxPool3dSame",
    "Unit3D",
    "VideoBackbone",
    "calibrate_batchnorm",
    "pad_same",
    "same_padding",
]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Return TensorFlow SAME padding ``(front, back)`` for one dimension.

    ``total = max((ceil(size / stride) - 1) * stride + kernel - size, 0)``;
    the front gets ``total // 2`` and the back the rest, so an odd total puts
    the extra element at the back. The output length is then ``ceil(size / stride)``.
    """
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """Zero-pad a ``[B, C, T, H, W]`` tensor so a ``kernel``/``stride`` window gives SAME output.

    The padding depends on the input size, as in TensorFlow, so it is computed
    on every call rather than fixed at construction.
    """
    pads: list[int] = []
    # F.pad lists the last dimension first: (W front, W back, H front, ...).
    for dim in (4, 3, 2):
        pads.extend(same_padding(x.shape[dim], kernel[dim - 2], stride[dim - 2]))
    if not any(pads):
        return x
    return F.pad(x, pads)


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


class Unit3D(nn.Module):
    """SAME-padded Conv3d → BatchNorm3d → ReLU with pytorch-i3d's names.

    Parameters are ``conv3d.weight`` (``conv3d.bias`` when ``bias``) and
    ``bn.*``; BatchNorm uses pytorch-i3d's eps 1e-3 and momentum 0.01.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | tuple[int, int, int] = 1,
        stride: int | tuple[int, int, int] = 1,
        *,
        batch_norm: bool = True,
        bias: bool = False,
        activation: bool = True,
    ) -> None:
        super().__init__()
        self.kernel = _triple(kernel)
        self.stride = _triple(stride)
        self.activation = activation
        # padding=0: SAME padding is applied in forward from the actual input size.
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.activation else x


class MaxPool3dSame(nn.Module):
    """Max pooling with TensorFlow SAME padding, padding with zeros like pytorch-i3d.

    TensorFlow's SAME max-pool ignores padded positions (as if they were -inf);
    pytorch-i3d pads with zeros instead. Every I3D pool follows a ReLU, so its
    input is >= 0 and both give identical results; zeros are kept to match
    pytorch-i3d bit for bit.
    """

    def __init__(self, kernel: int | tuple[int, int, int], stride: int | tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel = _triple(kernel)
        self.stride = _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(pad_same(x, self.kernel, self.stride), self.kernel, self.stride)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding=SAME(zeros)"


class VideoBackbone(nn.Module):
    """Common interface of every registered backbone.

    Subclasses set ``num_features``, ``temporal_stride``, ``receptive_field``
    (temporal extent, in frames, of the input that one output step can see)
    and ``input_spec``, implement :meth:`_build_blocks` and :meth:`out_frames`,
    and call :meth:`_configure` at the end of ``__init__``.
    """

    num_features: int
    temporal_stride: int
    receptive_field: int
    input_spec: InputSpec
    # Memory format used when channels_last=True (channels_last_3d for 3D nets).
    channels_last_format: torch.memory_format = torch.channels_last_3d

    def __init__(self) -> None:
        super().__init__()
        self.grad_checkpointing = False
        self.frozen_blocks = 0
        self.channels_last = False
        self._blocks: list[nn.Module] | None = None

    # -- interface to implement -------------------------------------------------
    def _build_blocks(self) -> list[nn.Module]:
        """Return the stages in forward order, as modules sharing this model's layers."""
        raise NotImplementedError

    def out_frames(self, num_frames: int) -> int:
        """Return the output length ``T'`` of :meth:`forward_features` for ``num_frames`` frames."""
        raise NotImplementedError

    # -- shared behaviour -------------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        """Return the backbone's blocks in forward order (what ``freeze``/checkpointing act on).

        The blocks are views: containers over this model's own layers, kept in a
        plain list (not registered), so parameter names stay those of the
        original checkpoints. Built once, so ``forward`` creates no modules.
        """
        if self._blocks is None:
            self._blocks = self._build_blocks()
        return list(self._blocks)

    def _configure(self, freeze_blocks: int, grad_checkpointing: bool, channels_last: bool) -> None:
        self.set_grad_checkpointing(grad_checkpointing)
        if channels_last:
            # Helps where NDHWC/NHWC kernels exist (cuDNN with AMP); on CPU it is
            # usually neutral, hence off by default.
            self.to(memory_format=self.channels_last_format)
            self.channels_last = True
        self.freeze(freeze_blocks)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each trainable block's activations in backward instead of storing them.

        Trades about one extra forward pass for activation memory. Caveat: a
        BatchNorm inside a checkpointed block in training mode updates its
        running statistics twice per step (forward and recomputation);
        gradients are unaffected.
        """
        self.grad_checkpointing = bool(enable)

    def freeze(self, num_blocks: int) -> None:
        """Freeze the first ``num_blocks`` blocks; ``0`` unfreezes everything.

        Frozen blocks get ``requires_grad=False`` and stay in eval mode (their
        BatchNorm statistics stop updating) even after ``model.train()``.

        Raises:
            SignstreamError: if ``num_blocks`` is outside ``0..len(blocks())``.
        """
        blocks = self.blocks()
        if not 0 <= num_blocks <= len(blocks):
            raise SignstreamError(
                f"freeze_blocks={num_blocks} is out of range: {type(self).__name__} has {len(blocks)} blocks"
            )
        self.frozen_blocks = num_blocks
        for i, block in enumerate(blocks):
            for p in block.parameters():
                p.requires_grad_(i >= num_blocks)
        self.train(self.training)

    def train(self, mode: bool = True) -> VideoBackbone:
        super().train(mode)
        for block in self.blocks()[: self.frozen_blocks]:
            block.eval()
        return self

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """Run the blocks in order, checkpointing the trainable ones when enabled."""
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks()):
            if use_ckpt and i >= self.frozen_blocks:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise SignstreamError(
                f"{type(self).__name__} expects a [B, C, T, H, W] video tensor, got shape {tuple(x.shape)}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Map a ``[B, C, T, H, W]`` video to ``[B, T', num_features]`` (mean over H and W)."""
        self._check_input(x)
        if self.channels_last:
            x = x.contiguous(memory_format=self.channels_last_format)
        y = self.forward_blocks(x)
        return y.mean(dim=(3, 4)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward_features` (backbones carry no classifier)."""
        return self.forward_features(x)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor]) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics from ``inputs`` ("precise BN").

    A randomly initialised backbone in eval mode shrinks its activations layer
    by layer (running mean 0, var 1 do not match the real statistics), so its
    features are ~1e-6 in size. Calibrating on a few clips gives eval-mode
    features of a sensible scale: useful for demos and tests without
    pretrained weights, or after changing the input domain.

    Args:
        model: a backbone with ``forward_features``.
        inputs: ``[B, C, T, H, W]`` batches, normalised like real inputs.

    Returns:
        ``model``, in the mode it had before, with running statistics equal to
        the average batch statistics over ``inputs`` (frozen blocks included).
    """
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all calibration batches
        m.train()
    for x in inputs:
        model.forward_features(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.train(was_training)
    return model

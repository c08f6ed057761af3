"""S3D backbone: torchvision's ``torchvision.models.video.s3d`` layers, under torchvision's names.

torchvision's ``s3d-d76dad2f.pth`` loads strictly, kylemin's ``S3D_kinetics400.pt`` through
:func:`kylemin_key_map`; ``variant`` (Kinetics mean/std or [-1, 1]) follows the checkpoint's
key layout unless given. Invariant (whole network): ``T' = floor(ceil(T / 4) / 2)``, ``T / 8`` once T is
padded to ``input_spec.pad_multiple``. Why (and the derivation): docs/design/models.md
"""

from __future__ import annotations

import functools
import math
import os
import re

import torch
from torch import nn

from signstream import SignstreamError
from signstream.models.layers import VideoBackbone
from signstream.models.registry import (
    KINETICS_MEAN,
    KINETICS_STD,
    SYMMETRIC_MEAN,
    SYMMETRIC_STD,
    InputSpec,
    register_model,
)
from signstream.models.weights import StateDict, apply_state_dict, read_state_dict

__all__ = [
    "S3D",
    "checkpoint_filter_fn",
    "detect_layout",
    "kylemin_key_map",
    "s3d",
    "torchvision_to_kylemin_key",
]

VARIANTS = ("torchvision", "kylemin")
# End index (exclusive) in torchvision's ``features`` of each of the five
# blocks (SLRT's grouping: after the stem conv, conv 2c, Mixed_3c, Mixed_4f, Mixed_5c).
BLOCK_ENDS = (1, 4, 7, 13, 16)
# Per block: output channels, temporal stride, temporal receptive field in frames.
_STAGE_INFO = ((64, 2, 7), (192, 2, 11), (480, 2, 19), (832, 4, 63), (1024, 8, 99))
HEAD_KEYS = ("classifier.1.weight", "classifier.1.bias")

WEIGHTS_HINT = (
    "get torchvision's s3d-d76dad2f.pth (the S3D_Weights.KINETICS400_V1 file, copied from a "
    "machine with network access) or kylemin's S3D_kinetics400.pt (repository kylemin/S3D) "
    "and pass its path as weights="
)


def _torchvision_s3d() -> nn.Module:
    # Imported here: torchvision is only needed when an S3D is built.
    from torchvision.models.video.s3d import S3D as TorchvisionS3D

    return TorchvisionS3D(num_classes=400)


class S3D(VideoBackbone):
    """S3D backbone over torchvision's ``features`` layers.

    Args:
        variant: ``"torchvision"`` (Kinetics mean/std) or ``"kylemin"`` ([-1, 1]);
            only the ``input_spec`` differs.
        stop_after: last block to keep (1-5); 5 → 1024-d, stride 8; 4 → the
            SLRT truncation after Mixed_4f, 832-d, stride 4.
        freeze_blocks: number of leading blocks to freeze.
        grad_checkpointing: checkpoint each trainable block.
        channels_last: keep weights and inputs in ``channels_last_3d``.
    """

    def __init__(
        self,
        *,
        variant: str = "torchvision",
        stop_after: int = 5,
        freeze_blocks: int = 0,
        grad_checkpointing: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise SignstreamError(f"s3d: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if stop_after not in range(1, len(BLOCK_ENDS) + 1):
            raise SignstreamError(f"s3d: stop_after must be 1..{len(BLOCK_ENDS)}, got {stop_after}")
        self.variant = variant
        self.stop_after = stop_after
        # Slicing keeps torchvision's child names "0".."k-1", hence its state-dict keys.
        self.features = _torchvision_s3d().features[: BLOCK_ENDS[stop_after - 1]]
        self.num_features, self.temporal_stride, self.receptive_field = _STAGE_INFO[stop_after - 1]
        mean, std = (KINETICS_MEAN, KINETICS_STD) if variant == "torchvision" else (SYMMETRIC_MEAN, SYMMETRIC_STD)
        self.input_spec = InputSpec(
            mean=mean,
            std=std,
            min_frames=self.temporal_stride,
            pad_multiple=self.temporal_stride,
            default_size=224,
        )
        self._configure(freeze_blocks, grad_checkpointing, channels_last)

    def _build_blocks(self) -> list[nn.Module]:
        starts = (0, *BLOCK_ENDS[:-1])
        return [self.features[a:b] for a, b in zip(starts, BLOCK_ENDS[: self.stop_after], strict=False)]

    def out_frames(self, num_frames: int) -> int:
        n = math.ceil(num_frames / 2)
        if self.stop_after >= 4:
            n = math.ceil(n / 2)
        if self.stop_after == 5:
            n //= 2
        return n


# -- kylemin key map ----------------------------------------------------------------
_UNIT = ("conv", "bn")  # torchvision Conv3dNormActivation children 0, 1
_SEP = ("s", "t")  # torchvision TemporalSeparableConv children 0 (spatial), 1 (temporal)


def _kylemin_rest(index: int, parts: list[str]) -> list[str]:
    if index in (0, 3):  # TemporalSeparableConv → SepConv3d
        return [f"{_UNIT[int(parts[1])]}_{_SEP[int(parts[0])]}", *parts[2:]]
    if index == 2:  # Conv3dNormActivation → BasicConv3d
        return [_UNIT[int(parts[0])], *parts[1:]]
    branch, rest = parts[0], parts[1:]
    if branch == "branch0":  # kylemin wraps branch 0 in a one-element Sequential
        return [branch, "0", _UNIT[int(rest[0])], *rest[1:]]
    if branch in ("branch1", "branch2") and rest[0] == "1":  # separable 3x3x3
        return [branch, "1", f"{_UNIT[int(rest[2])]}_{_SEP[int(rest[1])]}", *rest[3:]]
    # branch1/2 ".0" (1x1x1 unit) and branch3 ".1" (1x1x1 unit after the pool)
    return [branch, rest[0], _UNIT[int(rest[1])], *rest[2:]]


def torchvision_to_kylemin_key(key: str) -> str:
    """Return kylemin's name for a torchvision S3D state-dict key.

    ``features.<i>.…`` becomes ``base.<i>.…`` with torchvision's numbered
    conv/norm children renamed to ``conv``/``bn`` (``conv_s``/``bn_s``/
    ``conv_t``/``bn_t`` in separable convs); ``classifier.1.*`` becomes ``fc.0.*``.

    Raises:
        ValueError: for a key that is not part of torchvision's S3D.
    """
    if key.startswith("classifier.1."):
        return "fc.0." + key[len("classifier.1.") :]
    m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
    if m is None:
        raise ValueError(f"not a torchvision S3D key: {key}")
    index = int(m.group(1))
    return ".".join(["base", str(index), *_kylemin_rest(index, m.group(2).split("."))])


@functools.cache
def kylemin_key_map() -> dict[str, str]:
    """Return ``{kylemin key: torchvision key}`` for the whole S3D (classifier included).

    Built by applying :func:`torchvision_to_kylemin_key` to every key of a
    torchvision S3D, so the map is one-to-one by construction.
    """
    with torch.device("meta"):  # key names only: no memory, no init cost
        keys = list(_torchvision_s3d().state_dict())
    mapping = {torchvision_to_kylemin_key(k): k for k in keys}
    if len(mapping) != len(keys):
        raise RuntimeError("kylemin key map is not one-to-one")
    return mapping


def detect_layout(state_dict: StateDict) -> str:
    """Return ``"kylemin"`` if the keys use kylemin's ``base.*`` names, else ``"torchvision"``."""
    return "kylemin" if any(k.startswith("base.") for k in state_dict) else "torchvision"


def checkpoint_filter_fn(state_dict: StateDict, model: S3D) -> StateDict:
    """Adapt a torchvision- or kylemin-layout S3D state dict to ``model``.

    kylemin keys are renamed with :func:`kylemin_key_map` (a key outside the
    map keeps its name and fails the strict load under it). Then exactly the
    classifier keys (``classifier.1.weight``/``.bias``, kylemin's ``fc.0.*``)
    and the keys of blocks beyond ``model.stop_after`` are dropped.
    """
    if detect_layout(state_dict) == "kylemin":
        mapping = kylemin_key_map()
        state_dict = {mapping.get(k, k): v for k, v in state_dict.items()}
    end = BLOCK_ENDS[model.stop_after - 1]
    out = {}
    for k, v in state_dict.items():
        m = re.match(r"features\.(\d+)\.", k)
        if k in HEAD_KEYS or (m is not None and int(m.group(1)) >= end):
            continue
        out[k] = v
    return out


@register_model
def s3d(
    weights: str | os.PathLike | None = None,
    *,
    variant: str | None = None,
    stop_after: int = 5,
    freeze_blocks: int = 0,
    grad_checkpointing: bool = False,
    channels_last: bool = False,
) -> S3D:
    """Build S3D, optionally loading torchvision's or kylemin's Kinetics-400 weights.

    Args:
        weights: ``s3d-d76dad2f.pth``, ``S3D_kinetics400.pt`` or a compatible file.
        variant: input convention; ``None`` = from the checkpoint's key layout
            (``torchvision`` when there is no checkpoint).
        stop_after: last block kept (4 = SLRT-style 832-d, stride 4).
        freeze_blocks, grad_checkpointing, channels_last: see :class:`S3D`.
    """
    if variant is not None and variant not in VARIANTS:
        raise SignstreamError(f"s3d: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    state_dict = read_state_dict(weights, WEIGHTS_HINT) if weights is not None else None
    if variant is None:
        variant = detect_layout(state_dict) if state_dict is not None else "torchvision"
    model = S3D(
        variant=variant,
        stop_after=stop_after,
        freeze_blocks=freeze_blocks,
        grad_checkpointing=grad_checkpointing,
        channels_last=channels_last,
    )
    if state_dict is not None:
        apply_state_dict(model, state_dict, weights, checkpoint_filter_fn)
    return model

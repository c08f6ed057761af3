"""Backbone registry: build any video backbone by name (timm style).

Each backbone file decorates one factory function with :func:`register_model`;
``signstream.models`` imports those files so the registry is filled on first
import. :class:`InputSpec` is the small, frozen description of what a backbone
expects as input; the loaders' transform consumes it directly.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from signstream import SignstreamError, lookup
from signstream.loaders.transform import NORMALIZATIONS

__all__ = ["InputSpec", "create_model", "is_model", "list_models", "register_model"]

# The backbones' input statistics, by name from the one table (the loaders' presets).
IMAGENET_MEAN, IMAGENET_STD = NORMALIZATIONS["imagenet"]
KINETICS_MEAN, KINETICS_STD = NORMALIZATIONS["kinetics"]
SYMMETRIC_MEAN, SYMMETRIC_STD = NORMALIZATIONS["minus_one_one"]


@dataclass(frozen=True)
class InputSpec:
    """What a backbone expects as input.

    Attributes:
        mean: per-channel (RGB) mean subtracted after scaling pixels to ``value_range``.
        std: per-channel (RGB) std divided by after subtracting ``mean``.
        value_range: range raw pixels are scaled to before ``mean``/``std`` apply;
            ``(0.0, 1.0)`` means uint8 / 255.
        min_frames: shortest clip the backbone accepts; shorter videos are
            padded by repeating the last frame (never dropped).
        pad_multiple: padding a clip to a multiple of this many frames makes
            the output length exactly ``T / temporal_stride`` and keeps chunked
            extraction aligned with whole-video extraction.
        default_size: square spatial size (pixels) the pretrained weights were trained at.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    value_range: tuple[float, float] = (0.0, 1.0)
    min_frames: int = 1
    pad_multiple: int = 1
    default_size: int = 224


_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a backbone factory under its function name.

    The factory takes ``weights`` (a checkpoint path or ``None``) plus its own
    keyword options and returns a built (and, with ``weights``, loaded) model.

    Raises:
        ValueError: if the name is already taken (a programming error).
    """
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Return the registered backbone names, sorted."""
    return sorted(_MODELS)


def is_model(name: str) -> bool:
    """Return whether ``name`` is a registered backbone."""
    return name in _MODELS


def create_model(name: str, weights: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Build a registered backbone by name.

    Args:
        name: a name from :func:`list_models` (``"i3d"``, ``"s3d"``, ``"resnet18_2d"``).
        weights: path of a local checkpoint (.pt/.pth/.safetensors) loaded
            strictly through the backbone's ``checkpoint_filter_fn``; ``None``
            keeps the random initialisation. Nothing is ever downloaded.
        **kwargs: backbone options, e.g. ``freeze_blocks``, ``grad_checkpointing``,
            ``channels_last`` and backbone-specific ones (``variant``, ``stop_after``).

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        SignstreamError: for an unknown name, an unknown option, or a checkpoint
            that is missing or does not match.
    """
    fn = lookup(_MODELS, name, "model")
    params = inspect.signature(fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            allowed = ", ".join(p for p in params if p != "weights")
            raise SignstreamError(f"model {name!r} has no option {unknown[0]!r}; its options: {allowed}")
    return fn(weights=weights, **kwargs)

"""Strict loading of local checkpoint files (``.pt``/``.pth``/``.safetensors``) into backbones.

Containers are unwrapped, keys pass the backbone's ``checkpoint_filter_fn``, and the load is
``strict=True``: any missing, unexpected or mis-shaped key is a
:class:`~signstream.SignstreamError` naming the keys and the file. Nothing here downloads.
Why: docs/design/models.md
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from signstream import SignstreamError

__all__ = [
    "FilterFn",
    "StateDict",
    "apply_state_dict",
    "check_keys",
    "load_pretrained",
    "read_state_dict",
    "strip_prefix",
]

StateDict = dict[str, torch.Tensor]
FilterFn = Callable[[StateDict, nn.Module], StateDict]

# Containers that training scripts wrap the weights in, tried in this order.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_MAX_NAMED = 5


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Return ``state_dict`` with ``prefix`` removed from every key that starts with it."""
    n = len(prefix)
    return {(k[n:] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _unwrap(obj: object, path: Path) -> StateDict:
    # Descend through wrapper dicts until the values are tensors.
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return strip_prefix(obj, "module.")
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    raise SignstreamError(
        f"{path}: not a state dict (expected a mapping of parameter names to tensors, "
        f"optionally under one of {', '.join(_WRAPPER_KEYS)})"
    )


def read_state_dict(path: str | os.PathLike, hint: str = "") -> StateDict:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict on the CPU.

    Args:
        path: ``.safetensors`` file, or any other suffix read with
            ``torch.load(weights_only=True)`` (``.pt``, ``.pth``, ``.bin``, ...).
        hint: where to get the file, appended to the "not found" message.

    Returns:
        The state dict, unwrapped from ``state_dict``/``model`` containers and
        with DataParallel ``module.`` prefixes removed.

    Raises:
        SignstreamError: if the file is missing, unreadable or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        where = f"; {hint}" if hint else ""
        raise SignstreamError(f"checkpoint not found: {path}{where}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any deserializer failure means "not a checkpoint" (a text file gives KeyError)
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SignstreamError(f"{path}: cannot read checkpoint ({first_line})") from e
    return _unwrap(obj, path)


def _fill_batch_counters(state_dict: StateDict, expected: Mapping[str, torch.Tensor]) -> None:
    # Checkpoints saved before PyTorch 0.4.1 (pytorch-i3d's among them) have no
    # BatchNorm ``num_batches_tracked`` counters. They only matter for
    # BatchNorm(momentum=None), so a missing one is filled with 0 rather than
    # reported; every other missing key still fails.
    for key, value in expected.items():
        if key.endswith(".num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros_like(value)


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED])
    more = len(keys) - _MAX_NAMED
    return shown + (f" (+{more} more)" if more > 0 else "")


def check_keys(state_dict: StateDict, model: nn.Module, path: str | os.PathLike) -> None:
    """Raise if ``state_dict`` does not match ``model`` key for key and shape.

    Raises:
        SignstreamError: naming up to five missing, unexpected and mis-shaped keys and the file.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {_names(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_names(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} with another shape (file vs model): {_names(shapes)}")
    if problems:
        raise SignstreamError(f"{path} does not match {type(model).__name__}: " + "; ".join(problems))


def apply_state_dict(
    model: nn.Module,
    state_dict: StateDict,
    path: str | os.PathLike,
    filter_fn: FilterFn | None = None,
) -> nn.Module:
    """Filter an already-read state dict and load it into ``model`` strictly.

    Args:
        model: the freshly built backbone.
        state_dict: as returned by :func:`read_state_dict`.
        path: the file it came from (named in error messages).
        filter_fn: the backbone's ``checkpoint_filter_fn(state_dict, model)``
            converting the file's layout to the model's.

    Returns:
        ``model``, with every parameter and buffer taken from ``state_dict``.

    Raises:
        SignstreamError: on any missing, unexpected or mis-shaped key.
    """
    if filter_fn is not None:
        state_dict = filter_fn(state_dict, model)
    _fill_batch_counters(state_dict, model.state_dict())
    check_keys(state_dict, model, path)
    model.load_state_dict(state_dict, strict=True)
    return model


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike,
    filter_fn: FilterFn | None = None,
    hint: str = "",
) -> nn.Module:
    """Load a local checkpoint file into ``model`` strictly.

    Args:
        model: the freshly built backbone.
        path: checkpoint file (see :func:`read_state_dict`).
        filter_fn: the backbone's ``checkpoint_filter_fn(state_dict, model)``.
        hint: where to get the file, shown if it is missing.

    Returns:
        ``model``, with every parameter and buffer taken from the file.

    Raises:
        SignstreamError: on a missing/unreadable file or any key or shape mismatch.
    """
    return apply_state_dict(model, read_state_dict(path, hint), path, filter_fn)

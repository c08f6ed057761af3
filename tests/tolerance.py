"""How close features computed in another precision, or on another device, must be.

A result computed in arithmetic with unit roundoff ``u`` (half the spacing of
representable numbers at 1: bf16 2^-9, fp16 2^-12, TF32 2^-11, fp32 2^-24)
is compared by its worst relative error per feature vector,
``max_t ||a_t - b_t|| / ||b_t||``, so that one bad time step cannot hide among
good ones. The bound used by the precision tests is ``FACTOR * u``; the
reasons for the factor are in ``tests/models/test_precision.py``.
"""

from __future__ import annotations

import torch

UNIT_ROUNDOFF = {"fp32": 2.0**-24, "tf32": 2.0**-11, "fp16": 2.0**-12, "bf16": 2.0**-9}
FACTOR = 32
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # what the recipes pass


def arithmetic(device: str | torch.device, precision: str) -> str:
    """The arithmetic a ``precision`` run on ``device`` really uses for its convolutions.

    fp32 on CUDA is TF32 (10-bit mantissa) while ``torch.backends.cudnn.allow_tf32``
    is on, which is PyTorch's default; under autocast the convolutions run in
    bf16/fp16 wherever they run.
    """
    if precision == "fp32" and torch.device(device).type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return precision


def tolerance(device: str | torch.device, precision: str) -> float:
    """``FACTOR`` unit roundoffs of the arithmetic of a ``precision`` run on ``device``."""
    return FACTOR * UNIT_ROUNDOFF[arithmetic(device, precision)]


def worst_relative_error(actual, expected) -> float:
    """``max_t ||a_t - e_t|| / ||e_t||`` over the feature vectors (last axis) of two ``[..., D]`` arrays."""
    a = torch.as_tensor(actual).double()
    e = torch.as_tensor(expected).double()
    assert a.shape == e.shape, (a.shape, e.shape)
    norms = e.norm(dim=-1)
    assert bool((norms > 0).all()), "a zero reference feature vector has no relative error"
    return float(((a - e).norm(dim=-1) / norms).max())

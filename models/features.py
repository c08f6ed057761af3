"""Feature modes: turn one normalised video into a ``[T', D]`` feature sequence.

``dense`` (one feature per ``temporal_stride`` frames, computed in overlapping chunks) and
``window`` (one time-averaged feature per sliding clip), chosen by :data:`FeatureMode`;
:func:`extract_features` is the entry point. A video shorter than ``input_spec.min_frames``
is padded by repeating its last frame, never dropped. Why: docs/design/models.md
"""

from __future__ import annotations

import contextlib
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from signstream import SignstreamError, lookup

__all__ = [
    "MODES",
    "FeatureMode",
    "FeatureOptions",
    "extract_features",
    "frames_between",
    "pad_frames",
]

DEFAULT_CHUNK_LEN = 128
PAD_POLICIES = ("repeat", "none")


@dataclass(frozen=True)
class FeatureOptions:
    """Options of the feature modes (each mode reads the ones it needs).

    Attributes:
        chunk_len: dense: frames of new output per chunk (multiple of the
            backbone's temporal stride). ``None`` = 128.
        overlap: dense: context frames added on each side of a chunk and
            discarded from its output (multiple of the temporal stride).
            ``None`` = half the backbone's temporal receptive field, rounded up
            to the stride, which makes chunked equal to unchunked output.
        clip_len: window: frames per clip.
        stride: window: frames between clip starts; ``None`` = ``clip_len // 2``.
        pad: dense: ``"repeat"`` pads the video (repeating its last frame) to
            a multiple of ``input_spec.pad_multiple`` so every frame is covered
            and chunks align exactly; ``"none"`` pads only up to ``min_frames``.
        clips_per_batch: window: clips run through the backbone at once.
        autocast: dtype for ``torch.autocast`` (e.g. ``torch.bfloat16``), ``None`` = off.
    """

    chunk_len: int | None = None
    overlap: int | None = None
    clip_len: int = 16
    stride: int | None = None
    pad: str = "repeat"
    clips_per_batch: int = 8
    autocast: torch.dtype | None = None


def pad_frames(video: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Pad ``[B, C, T, H, W]`` to ``num_frames`` frames by repeating the last frame.

    Returns ``video`` itself when it is already long enough.
    """
    if num_frames <= video.shape[2]:
        return video
    return frames_between(video, 0, num_frames)


def frames_between(video: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Frames ``[lo, hi)`` of ``video`` as if it were extended by repeating its last frame.

    Only the requested span is materialised (a view when it lies inside the
    video), so padding a long video never copies the whole of it.
    """
    n = video.shape[2]
    if hi <= n:
        return video[:, :, lo:hi]
    tail = video[:, :, n - 1 :].expand(-1, -1, hi - max(lo, n), -1, -1)
    return torch.cat([video[:, :, min(lo, n) : n], tail], dim=2)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _runner(model: nn.Module, opts: FeatureOptions) -> Callable[[torch.Tensor], torch.Tensor]:
    # One forward pass on the model's device, returned as float32 on the CPU.
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    amp = torch.autocast(device.type, dtype=opts.autocast) if opts.autocast is not None else contextlib.nullcontext()

    def run(clip: torch.Tensor) -> torch.Tensor:
        with amp:
            feats = model.forward_features(clip.to(device=device, dtype=dtype, non_blocking=True))
        return feats.float().cpu()

    return run


def dense(model: nn.Module, video: torch.Tensor, opts: FeatureOptions) -> torch.Tensor:
    """Whole-video features, one per ``temporal_stride`` frames, computed chunk by chunk.

    The (padded) video of ``T`` frames is cut into cores of ``chunk_len``
    frames starting at multiples of ``chunk_len``; each core is run with up to
    ``overlap`` real frames of context on both sides, and the outputs that
    belong to the context are dropped at the seams. A video that fits in one
    chunk (``T <= chunk_len + 2 * overlap``) runs in one pass.

    Relation to the unchunked output ``model.forward_features(video)``:

    * the length is always identical (``model.out_frames(T)``);
    * with ``pad="repeat"`` (T and every chunk edge a multiple of the stride,
      so every layer's padding and stride phase match) and ``overlap`` at
      least the receptive-field radius (the default), the values are equal up
      to float rounding for an eval-mode backbone (BatchNorm uses running
      statistics; in training mode batch statistics differ per chunk);
    * with a smaller overlap the features near each seam differ, since they
      lose context; with ``pad="none"`` and a length that is not a multiple of
      the stride, I3D's TensorFlow SAME padding shifts by one frame between the
      whole video and the chunks, so values differ slightly throughout.

    Peak memory is that of one chunk of at most ``chunk_len + 2 * overlap``
    frames plus the ``[T', D]`` output.
    """
    stride, spec = model.temporal_stride, model.input_spec
    align = math.lcm(stride, spec.pad_multiple)
    chunk_len = DEFAULT_CHUNK_LEN if opts.chunk_len is None else opts.chunk_len
    overlap = _round_up(model.receptive_field // 2, align) if opts.overlap is None else opts.overlap
    if chunk_len <= 0 or chunk_len % align:
        raise SignstreamError(f"dense: chunk_len={chunk_len} must be a positive multiple of {align}")
    if overlap < 0 or overlap % align:
        raise SignstreamError(f"dense: overlap={overlap} must be a non-negative multiple of {align}")
    # The padded length; padding is materialised per chunk by frames_between.
    total = max(video.shape[2], spec.min_frames)
    if opts.pad == "repeat":
        total = _round_up(total, spec.pad_multiple)
    expected = model.out_frames(total)
    run = _runner(model, opts)
    if total <= chunk_len + 2 * overlap:
        return run(frames_between(video, 0, total))[0]
    pieces, produced = [], 0
    for start in range(0, total, chunk_len):
        if produced >= expected:  # a short tail whose frames no output needs
            break
        lo_frame, hi_frame = max(0, start - overlap), min(total, start + chunk_len + overlap)
        feats = run(frames_between(video, lo_frame, hi_frame))[0]
        first = (start - lo_frame) // stride
        last = len(feats) if hi_frame == total else first + chunk_len // stride
        pieces.append(feats[first:last])
        produced += last - first
        if hi_frame == total:
            break
    out = torch.cat(pieces)
    if len(out) != expected:  # the alignment rules above guarantee this
        raise RuntimeError(f"dense: produced {len(out)} features, expected {expected}")
    return out


def window(model: nn.Module, video: torch.Tensor, opts: FeatureOptions) -> torch.Tensor:
    """One feature per sliding clip: ``[N, D]``, each clip's features averaged over time.

    Clips start every ``stride`` frames. Edge policy: ``N = 1`` when
    ``T <= clip_len``, else ``N = ceil((T - clip_len) / stride) + 1``; the last
    clip may run past the end and is completed by repeating the last frame (as
    is a video shorter than ``clip_len``), so no frame is ever dropped.
    """
    clip_len = opts.clip_len
    stride = max(1, clip_len // 2) if opts.stride is None else opts.stride
    if clip_len < model.input_spec.min_frames:
        raise SignstreamError(
            f"window: clip_len={clip_len} is shorter than the backbone's min_frames={model.input_spec.min_frames}"
        )
    if stride <= 0 or opts.clips_per_batch <= 0:
        raise SignstreamError(f"window: stride={stride} and clips_per_batch={opts.clips_per_batch} must be positive")
    num_frames = video.shape[2]
    count = 1 if num_frames <= clip_len else math.ceil((num_frames - clip_len) / stride) + 1
    run = _runner(model, opts)
    pooled = []
    for first in range(0, count, opts.clips_per_batch):
        starts = range(first * stride, min(count, first + opts.clips_per_batch) * stride, stride)
        batch = torch.cat([frames_between(video, s, s + clip_len) for s in starts])
        pooled.append(run(batch).mean(dim=1))
    return torch.cat(pooled)


FeatureMode = Literal["dense", "window"]
MODES = typing.get_args(FeatureMode)


def extract_features(
    model: nn.Module,
    video: torch.Tensor,
    mode: FeatureMode = "dense",
    *,
    chunk_len: int | None = None,
    overlap: int | None = None,
    clip_len: int = 16,
    stride: int | None = None,
    pad: str = "repeat",
    clips_per_batch: int = 8,
    autocast: torch.dtype | None = None,
) -> torch.Tensor:
    """Extract the feature sequence of one normalised video.

    Runs under ``torch.inference_mode()`` with the model switched to eval mode
    (its previous mode is restored afterwards).

    Args:
        model: a registered backbone (``forward_features``, ``temporal_stride``,
            ``receptive_field``, ``input_spec``, ``out_frames``).
        video: ``[C, T, H, W]`` or ``[1, C, T, H, W]`` float tensor, normalised
            with ``model.input_spec``; it may stay on the CPU, chunks are moved
            to the model's device one at a time.
        mode: ``"dense"`` or ``"window"``.
        chunk_len, overlap, clip_len, stride, pad, clips_per_batch, autocast:
            see :class:`FeatureOptions`.

    Returns:
        ``[T', D]`` float32 features on the CPU (an ordinary tensor, not an
        inference tensor).

    Raises:
        SignstreamError: for a bad shape, mode or option.
    """
    strategy = lookup({"dense": dense, "window": window}, mode, "feature mode")
    if pad not in PAD_POLICIES:
        raise SignstreamError(f"pad must be one of {', '.join(PAD_POLICIES)}, got {pad!r}")
    if video.dim() == 4:
        video = video.unsqueeze(0)
    if video.dim() != 5 or video.shape[0] != 1 or video.shape[2] == 0:
        raise SignstreamError(
            f"extract_features expects one video [C, T, H, W] or [1, C, T, H, W] with T >= 1, "
            f"got shape {tuple(video.shape)}"
        )
    opts = FeatureOptions(chunk_len, overlap, clip_len, stride, pad, clips_per_batch, autocast)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            feats = strategy(model, video, opts)
    finally:
        model.train(was_training)
    # A clone made outside inference mode is an ordinary tensor, usable later
    # in autograd (e.g. training a head on freshly extracted features).
    return feats.clone()

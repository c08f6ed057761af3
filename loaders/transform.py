"""The preprocessing every backend shares: one ``Transform``, one per-sample plan.

Every random choice for a sample is drawn in :func:`plan_sample` from a generator seeded by
``(seed, epoch, key, pass)``; backends only execute the resulting :class:`SamplePlan`. So plans
never depend on the backend, worker count or batch, and backends agree frame for frame.
Presets: :data:`NORMALIZATIONS`, :data:`WINDOWS`. Why: docs/design/transform.md
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from signstream import SignstreamError, lookup

# Largest side of a frame a Transform outputs. Backbones are trained at 112-256 pixels;
# one 64-frame float32 clip at 1024x1024 is already 800 MB, and beyond that a typo
# (an extra zero) would only surface as an out-of-memory crash deep in a run.
MAX_INPUT_SIDE = 1024

# ------------------------------------------------------------------ normalisation
# mean/std in 0-1 units, RGB order; the output is (x / 255 - mean) / std. The one table:
# the backbones' input specs (models/registry.py) take their statistics from here.
# mean = std = 0.5 is exactly the [-1, 1] scaling of the TensorFlow-trained
# checkpoints (pytorch-i3d, kylemin S3D).
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "kinetics": ((0.43216, 0.394666, 0.37645), (0.22803, 0.22145, 0.216989)),
    "minus_one_one": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "zero_one": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
}


# --------------------------------------------------------------- temporal windows
def _window_centre(idx: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    start = (len(idx) - m) // 2
    return idx[start : start + m]


def _window_random(idx: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    start = int(rng.integers(0, len(idx) - m + 1))
    return idx[start : start + m]


def _window_start(idx: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    return idx[:m]


def _window_uniform(idx: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    # m frames spread evenly over the whole clip (a coarser stride, not a window).
    return idx[np.round(np.linspace(0, len(idx) - 1, m)).astype(np.int64)]


WINDOWS: dict[str, Callable[[np.ndarray, int, np.random.Generator], np.ndarray]] = {
    "centre": _window_centre,
    "random": _window_random,
    "start": _window_start,
    "uniform": _window_uniform,
}


def _pad_replicate(video: np.ndarray, length: int) -> None:
    video[:, length:] = video[:, length - 1 : length]


def _pad_zeros(video: np.ndarray, length: int) -> None:
    video[:, length:] = 0


# How frames past a clip's length are filled in a batch ``[C, T, H, W]`` slot (in place).
PADS: dict[str, Callable[[np.ndarray, int], None]] = {"replicate": _pad_replicate, "zeros": _pad_zeros}
PAD_MODES = tuple(PADS)
OUTPUTS = ("float", "float16", "uint8")


def _pair(value: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    h, w = value
    return (int(h), int(w))


# ---------------------------------------------------------------------- Transform
@dataclass(frozen=True)
class Transform:
    """What preprocessing to apply, shared by the DALI, PyAV and PNG-folder backends.

    A frozen description, not a callable: each backend turns it into per-sample
    plans (:class:`SamplePlan`, from the sample's key, epoch and seed) and
    carries those out with its own decoder, so the three deliver the same tensors.
    The name is kept from the public API.

    Attributes:
        size: output crop ``(H, W)`` (an int means square); ``None`` keeps the
            resized frame whole.
        resize: an int resizes the short side to it, ``(h, w)`` resizes to that
            exact size; ``None`` resizes the short side to ``max(size)``.
        normalize: preset name (see :data:`NORMALIZATIONS`); ``mean``/``std``
            (0-1 units) override it.
        output: ``"float"`` (normalised float32), ``"float16"`` (normalised
            half precision, for AMP) or ``"uint8"`` (raw RGB).
        frame_stride: keep every k-th frame.
        max_frames: longest clip; longer ones are cut by ``window`` (eval) or
            ``train_window`` (train).
        min_frames: shortest T of a batch (padded, see ``pad``).
        pad_multiple: T of a batch is rounded up to a multiple of this.
        pad: how frames past a clip's length are filled: ``replicate`` (last
            frame) or ``zeros`` (zero after normalisation).
        train_scale: at train time the crop box side is ``size * U(a, b)``
            (``(1, 1)`` is a plain random crop).
        temporal_rescale: at train time the clip is resampled to ``U(a, b)``
            times its length (VAC/SLRT style); ``None`` disables it.
        colour_jitter: strength ``j`` of brightness/contrast/saturation factors
            drawn from ``1 ± j`` at train time; 0 disables it.
        hflip: random horizontal flip at train time. Off by default: which
            hand signs carries meaning in sign language.
    """

    size: int | tuple[int, int] | None = 224
    resize: int | tuple[int, int] | None = None
    normalize: str = "imagenet"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    output: str = "float"
    frame_stride: int = 1
    max_frames: int | None = None
    min_frames: int = 1
    pad_multiple: int = 1
    window: str = "centre"
    train_window: str = "random"
    pad: str = "replicate"
    train_scale: tuple[float, float] = (0.8, 1.0)
    temporal_rescale: tuple[float, float] | None = (0.5, 1.5)
    colour_jitter: float = 0.0
    hflip: bool = False

    def __post_init__(self) -> None:
        lookup(WINDOWS, self.window, "temporal window")
        lookup(WINDOWS, self.train_window, "temporal window")
        if self.mean is None or self.std is None:
            lookup(NORMALIZATIONS, self.normalize, "normalisation")
        checks = [
            (self.output in OUTPUTS, f"output must be one of {OUTPUTS}, got {self.output!r}"),
            (self.pad in PAD_MODES, f"pad must be one of {PAD_MODES}, got {self.pad!r}"),
            (self.frame_stride >= 1, f"frame_stride must be >= 1, got {self.frame_stride}"),
            (self.max_frames is None or self.max_frames >= 1, f"max_frames must be >= 1, got {self.max_frames}"),
            (self.min_frames >= 1, f"min_frames must be >= 1, got {self.min_frames}"),
            (self.pad_multiple >= 1, f"pad_multiple must be >= 1, got {self.pad_multiple}"),
            (0 < self.train_scale[0] <= self.train_scale[1], f"bad train_scale {self.train_scale}"),
            (
                self.temporal_rescale is None or 0 < self.temporal_rescale[0] <= self.temporal_rescale[1],
                f"bad temporal_rescale {self.temporal_rescale}",
            ),
            (0 <= self.colour_jitter < 1, f"colour_jitter must be in [0, 1), got {self.colour_jitter}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SignstreamError(f"Transform: {message}")
        for name in ("size", "resize"):
            pair = _pair(getattr(self, name))
            if pair is not None and not (1 <= min(pair) and max(pair) <= MAX_INPUT_SIDE):
                raise SignstreamError(
                    f"Transform: {name} must be between 1 and {MAX_INPUT_SIDE}, got {getattr(self, name)}"
                )

    # -- construction -----------------------------------------------------------
    @classmethod
    def from_input_spec(cls, spec: Any, **overrides: Any) -> Transform:
        """Build a transform from a backbone's ``input_spec`` (object or dict).

        Reads whichever of ``mean``, ``std``, ``value_range``, ``min_frames``,
        ``pad_multiple`` and ``size`` / ``input_size`` / ``default_size`` the
        spec has; ``overrides`` win. A spec's mean/std apply after pixels are
        scaled to ``value_range`` (default ``(0, 1)``); they are converted to
        0-1 units here, so ``value_range=(-1, 1)`` with mean 0 and std 1 gives
        the same tensors as the ``minus_one_one`` preset.
        """
        get = spec.get if isinstance(spec, Mapping) else (lambda k, d=None: getattr(spec, k, d))
        kw: dict[str, Any] = {}
        lo, hi = (float(v) for v in (get("value_range") or (0.0, 1.0)))
        if get("mean") is not None and get("std") is not None:
            kw["mean"] = tuple((float(m) - lo) / (hi - lo) for m in get("mean"))
            kw["std"] = tuple(float(s) / (hi - lo) for s in get("std"))
        elif (lo, hi) == (-1.0, 1.0):
            kw["normalize"] = "minus_one_one"
        for name in ("min_frames", "pad_multiple"):
            if get(name) is not None:
                kw[name] = int(get(name))
        size = next((get(k) for k in ("size", "input_size", "default_size") if get(k) is not None), None)
        if size is not None:
            kw["size"] = size if isinstance(size, int) else tuple(int(v) for v in size)[-2:]
        kw.update(overrides)
        return cls(**kw)

    def replace(self, **changes: Any) -> Transform:
        """A copy with some fields changed (the dataclass is frozen)."""
        return replace(self, **changes)

    # -- derived values ---------------------------------------------------------
    @property
    def crop_hw(self) -> tuple[int, int] | None:
        """The output ``(H, W)`` or ``None`` when the resized frame is kept whole."""
        return _pair(self.size)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` as float32 arrays in 0-255 units (RGB order)."""
        if self.mean is not None and self.std is not None:
            mean, std = self.mean, self.std
        else:
            mean, std = lookup(NORMALIZATIONS, self.normalize, "normalisation")
        return np.asarray(mean, np.float32) * 255.0, np.asarray(std, np.float32) * 255.0

    def batch_frames(self, longest: int) -> int:
        """T of a batch whose longest clip has ``longest`` frames."""
        t = max(longest, self.min_frames)
        return int(math.ceil(t / self.pad_multiple) * self.pad_multiple)

    def as_dict(self) -> dict[str, Any]:
        """Plain-data view (for logs and saved configs)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ------------------------------------------------------------------------- plans
@dataclass(frozen=True)
class SamplePlan:
    """What a backend does to one video: the executable form of a Transform.

    Attributes:
        indices: source frame index of each output frame (non-decreasing; may
            repeat when temporal rescaling stretches a clip).
        box: ``(y0, x0, h, w)`` source-pixel box that is cropped ...
        out_hw: ... and resized to this ``(H, W)``.
        flip: mirror horizontally.
        jitter: ``(brightness, contrast, saturation)`` factors, or ``None``.
        src_hw: the frame size the plan was made for (from the sample's
            metadata); decoders check the decoded frames against it, so a
            JSON that lies about the size is caught instead of mis-cropped.
    """

    indices: np.ndarray
    box: tuple[int, int, int, int]
    out_hw: tuple[int, int]
    flip: bool = False
    jitter: tuple[float, float, float] | None = None
    src_hw: tuple[int, int] | None = None

    @property
    def length(self) -> int:
        """Frames this sample contributes (its entry in ``Batch.lengths``)."""
        return len(self.indices)

    def unique_frames(self) -> tuple[np.ndarray, np.ndarray]:
        """``(frames to decode, position of each output frame among them)``.

        Decoders are asked for each frame once, in increasing order; the
        expansion to ``indices`` (repeats) is a cheap gather afterwards.
        """
        unique, order = np.unique(self.indices, return_inverse=True)
        return unique.astype(np.int64), order.astype(np.int64)

    def frame_slots(self) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(frames to decode, output positions of each)`` — usually one position each."""
        unique, order = self.unique_frames()
        counts = np.bincount(order, minlength=len(unique))
        return unique, np.split(np.arange(len(order)), np.cumsum(counts)[:-1])


def size_mismatch(plan: SamplePlan, height: int, width: int) -> str | None:
    """Why a decoded ``height x width`` video cannot take ``plan`` (``None`` when it can).

    Plans are made from the sample's JSON before decoding; a JSON whose frame
    size disagrees with the video would crop the wrong region silently, so
    every backend checks the decoded size and skips (and names) the sample.
    """
    if plan.src_hw is None or tuple(plan.src_hw) == (int(height), int(width)):
        return None
    return (
        f"metadata says {plan.src_hw[0]}x{plan.src_hw[1]} but the video is {height}x{width} "
        f"(fix the sample's JSON height/width)"
    )


def sample_rng(seed: int, epoch: int, key: str, pass_: int = 0) -> np.random.Generator:
    """The generator for one sample's random choices.

    Seeded by the sample's key (not its position), so a sample gets the same
    augmentation whichever backend, rank or worker reads it.
    """
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, zlib.crc32(key.encode("utf-8")), pass_])


def temporal_indices(num_frames: int, t: Transform, train: bool, rng: np.random.Generator) -> np.ndarray:
    """Source frame indices after stride, train-time rescale and the max_frames window."""
    if num_frames < 1:
        raise SignstreamError(f"a video must have at least one frame, got num_frames={num_frames}")
    idx = np.arange(0, num_frames, t.frame_stride, dtype=np.int64)
    if train and t.temporal_rescale is not None:
        factor = rng.uniform(*t.temporal_rescale)
        n = max(1, int(round(len(idx) * factor)))
        idx = idx[np.round(np.linspace(0, len(idx) - 1, n)).astype(np.int64)]
    if t.max_frames is not None and len(idx) > t.max_frames:
        idx = lookup(WINDOWS, t.train_window if train else t.window, "temporal window")(idx, t.max_frames, rng)
    return idx


def resized_hw(height: int, width: int, t: Transform) -> tuple[int, int]:
    """Frame size after the resize step, before cropping."""
    target = t.resize
    if target is None:
        crop = t.crop_hw
        target = max(crop) if crop else None
    if target is None:
        return height, width
    if isinstance(target, int):
        scale = target / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))
    return _pair(target)


def _even_span(start: float, size: float, limit: int) -> tuple[int, int]:
    """Round a 1-D box to even start and size inside ``[0, limit)`` (odd only if the frame is)."""
    size_i = max(2, 2 * int(round(size / 2)))
    size_i = min(size_i, limit - limit % 2) or limit
    start_i = 2 * int(round(start / 2))
    return max(0, min(start_i, limit - size_i)), size_i


def spatial_plan(
    height: int, width: int, t: Transform, train: bool, rng: np.random.Generator
) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    """Source box and output size: resize then crop, expressed as one crop+resize."""
    rh, rw = resized_hw(height, width, t)
    sy, sx = rh / height, rw / width
    out = t.crop_hw or (rh, rw)
    bh, bw = min(out[0], rh), min(out[1], rw)  # box in resized coordinates
    if train:
        f = rng.uniform(*t.train_scale)
        bh, bw = min(rh, out[0] * f), min(rw, out[1] * f)
        y, x = rng.uniform(0, rh - bh), rng.uniform(0, rw - bw)
    else:
        y, x = (rh - bh) / 2, (rw - bw) / 2
    # Even offsets and sizes: a box then starts and ends on whole 4:2:0 chroma
    # samples, which lets decoders crop the planes before converting to RGB.
    y0, h = _even_span(y / sy, bh / sy, height)
    x0, w = _even_span(x / sx, bw / sx, width)
    return (y0, x0, h, w), (int(out[0]), int(out[1]))


def plan_sample(
    num_frames: int, height: int, width: int, t: Transform, *, train: bool, rng: np.random.Generator
) -> SamplePlan:
    """All of a sample's choices, drawn in a fixed order (temporal, spatial, flip, jitter)."""
    indices = temporal_indices(num_frames, t, train, rng)
    box, out_hw = spatial_plan(height, width, t, train, rng)
    flip = bool(train and t.hflip and rng.random() < 0.5)
    jitter = None
    if train and t.colour_jitter > 0:
        j = t.colour_jitter
        jitter = tuple(float(v) for v in rng.uniform(1 - j, 1 + j, size=3))
    return SamplePlan(indices, box, out_hw, flip, jitter, (int(height), int(width)))


# ------------------------------------------------------------- numpy execution
def crop_resize(frames: np.ndarray, box: tuple[int, int, int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """Crop ``box`` out of ``[T, H, W, 3]`` uint8 frames and resize it to ``out_hw``.

    The filter is DALI's ``fn.resize(interp_type=LINEAR, antialias=True)``:
    plain bilinear when enlarging (OpenCV, written into one preallocated numpy
    array), bilinear with a widened triangle filter when shrinking (torch's
    uint8 channels-last kernel, the same filter as torchvision's antialias).
    """
    import cv2

    y0, x0, h, w = box
    region = frames[:, y0 : y0 + h, x0 : x0 + w]
    oh, ow = out_hw
    if (h, w) == (oh, ow):
        return np.ascontiguousarray(region)
    if oh >= h and ow >= w:
        # numpy allocations get transparent huge pages on Linux: far fewer page
        # faults than torch's allocator for these large, short-lived buffers.
        out = np.empty((len(region), oh, ow, 3), np.uint8)
        for i, frame in enumerate(region):
            cv2.resize(frame, (ow, oh), dst=out[i], interpolation=cv2.INTER_LINEAR)
        return out
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(region)).permute(0, 3, 1, 2)  # channels-last view
    y = F.interpolate(x, size=(oh, ow), mode="bilinear", antialias=True, align_corners=False)
    return y.permute(0, 2, 3, 1).contiguous().numpy()


def resize_frame(frame: np.ndarray, box: tuple[int, int, int, int], out_hw: tuple[int, int], dst: np.ndarray) -> None:
    """One ``[H, W, 3]`` frame's ``box`` resized into ``dst`` (``[*out_hw, 3]``), filters as :func:`crop_resize`."""
    import cv2

    y0, x0, h, w = box
    region = frame[y0 : y0 + h, x0 : x0 + w]
    oh, ow = out_hw
    if (h, w) == (oh, ow):
        dst[:] = region
    elif oh >= h and ow >= w:
        cv2.resize(region, (ow, oh), dst=dst, interpolation=cv2.INTER_LINEAR)
    else:
        dst[:] = crop_resize(region[None], (0, 0, h, w), out_hw)[0]


def apply_jitter(clip: np.ndarray, jitter: tuple[float, float, float]) -> np.ndarray:
    """Brightness, contrast (around 128) and saturation (towards luma) on ``[T, H, W, 3]`` uint8."""
    b, c, s = jitter
    x = clip.astype(np.float32)
    x = b * (128.0 + c * (x - 128.0))
    gray = x @ np.asarray([0.299, 0.587, 0.114], np.float32)
    x = gray[..., None] + s * (x - gray[..., None])
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def emit_frame(out: np.ndarray, positions: np.ndarray, frame: np.ndarray, plan: SamplePlan) -> None:
    """Write one ``[H, W, 3]`` frame, jittered and flipped as planned, to ``out[:, positions]``.

    ``out`` is channel-first ``[3, T, H, W]`` (the batch layout); OpenCV's
    ``split`` de-interleaves straight into it, faster than a numpy transpose
    copy (figure: docs/design/transform.md).
    """
    import cv2

    if plan.jitter is not None:
        frame = apply_jitter(frame[None], plan.jitter)[0]
    if plan.flip:
        frame = np.ascontiguousarray(frame[:, ::-1])
    for pos in positions:
        cv2.split(frame, [out[0, pos], out[1, pos], out[2, pos]])

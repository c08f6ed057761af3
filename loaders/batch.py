"""The one batch format of every backend, and the steps that build it.

Backends fill a uint8 ``[B, C, T, H, W]`` buffer; :func:`finish_batch` pads it,
:func:`finalize` moves it to the device and normalises it there, :func:`group_batches` forms
batches before decoding. Buffers are reused (:class:`SharedRing`, :class:`BufferPool`) so
steady-state batches cost no page faults. Why: docs/design/batch.md
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from signstream import SignstreamError, lookup
from signstream.loaders.transform import PADS, Transform

T = TypeVar("T")


@dataclass
class Batch:
    """What iterating a loader yields.

    Attributes:
        video: ``[B, C, T, H, W]``: float32 normalised for the backbone, or
            uint8 RGB when the transform asks for ``output="uint8"``.
        lengths: ``[B]`` int64 on the CPU whatever the video's device, frames of
            each clip after temporal sampling; frames past a length are padding.
            Kept on the host because everything that reads them (stats,
            slicing a clip, the CTC loss) reads them there: a device copy
            would cost a host sync per batch.
        keys: sample keys (shard keys; sanitised folder names for ``pngdir``).
        meta: parsed JSON metadata of each sample.
    """

    video: torch.Tensor
    lengths: torch.Tensor
    keys: list[str]
    meta: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Batch:
        """Move the video to ``device``; the lengths stay on the CPU (see :attr:`lengths`)."""
        return Batch(self.video.to(device, non_blocking=non_blocking), self.lengths, self.keys, self.meta)

    @property
    def padded_frames(self) -> int:
        """Frames of ``video`` that are padding."""
        return int(self.video.shape[0] * self.video.shape[2] - int(self.lengths.sum()))


@dataclass
class Decoded:
    """One decoded clip before batching: uint8 ``[3, T, H, W]``, T = its length."""

    key: str
    clip: np.ndarray
    meta: dict[str, Any]
    source: str


def collate(
    samples: list[Decoded], transform: Transform, alloc: Callable[[tuple[int, ...]], torch.Tensor] | None = None
) -> Batch:
    """Pad decoded clips to the batch's T and stack them as uint8 ``[B, C, T, H, W]``.

    T is the longest clip, at least ``transform.min_frames``, rounded up to a
    multiple of ``transform.pad_multiple``. ``alloc`` provides the output
    buffer (a worker's :class:`SharedRing`); default: a new array.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    check_frame_sizes([s.clip.shape[2:] for s in samples], [s.key for s in samples])
    c, _, h, w = samples[0].clip.shape
    lengths = [s.clip.shape[1] for s in samples]
    video = (alloc or new_buffer)((len(samples), c, transform.batch_frames(max(lengths)), h, w))
    out = video.numpy()
    for i, s in enumerate(samples):
        out[i, :, : lengths[i]] = s.clip
    return finish_batch(video, lengths, [s.key for s in samples], [s.meta for s in samples], transform)


def check_frame_sizes(sizes: list[tuple[int, int]], keys: list[str]) -> None:
    """Clips of one batch must share their frame size."""
    if len(set(sizes)) > 1:
        raise SignstreamError(
            f"clips of different frame sizes {sorted(set(sizes))} in one batch "
            f"(keys {keys}); set Transform.size to crop them alike"
        )


def finish_batch(
    video: torch.Tensor, lengths: list[int], keys: list[str], meta: list[dict[str, Any]], transform: Transform
) -> Batch:
    """Pad every clip of a filled ``[B, C, T, H, W]`` buffer past its length; wrap it as a Batch.

    T shrinks to what the clips need (a buffer sized for a batch that lost a
    corrupt sample can be longer).
    """
    t = transform.batch_frames(max(lengths))
    video = video[: len(lengths), :, :t]
    out = video.numpy()
    pad = lookup(PADS, transform.pad, "pad mode")
    for i, n in enumerate(lengths):
        if n < t:
            pad(out[i], n)
    return Batch(video, torch.tensor(lengths, dtype=torch.int64), keys, meta)


class SharedRing:
    """Round-robin shared-memory batch buffers for one DataLoader worker.

    Sending a fresh tensor from a worker costs a new shared-memory file and
    page faults on both sides (more than decoding it; why: docs/design/batch.md).
    A worker instead writes its batches
    into ``slots`` buffers in turn; the main process keeps the buffers it has
    received mapped (:meth:`keep`), so torch reuses the mapping and nothing is
    faulted in again. Reuse is safe because a DataLoader worker runs at most
    ``prefetch_factor`` batches ahead of the batch the main process is
    finishing: with ``slots >= prefetch_factor + 2`` a buffer is rewritten only
    after the main process is done with it (and normalisation copies out of
    it before the batch reaches the user).
    """

    def __init__(self, slots: int):
        self.slots = slots
        self._buffers: list[torch.Tensor | None] = [None] * slots
        self._next = 0

    def get(self, shape: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised uint8 tensor of ``shape`` in the next slot."""
        n = int(np.prod(shape))
        i, self._next = self._next, (self._next + 1) % self.slots
        buf = self._buffers[i]
        if buf is None or buf.numel() < n:
            # grow with headroom so slightly longer batches do not reallocate
            storage = torch.UntypedStorage._new_shared(int(n * 1.25), device="cpu")
            buf = self._buffers[i] = torch.tensor([], dtype=torch.uint8).set_(storage)
        return buf[:n].view(shape)


def new_buffer(shape: tuple[int, ...], pin: bool = False) -> torch.Tensor:
    """An uninitialised uint8 tensor of ``shape`` (outside a worker's ring).

    ``pin=True`` (batches bound for a GPU, decoded in this process): page-locked
    memory from torch's pinned-memory cache, so the copy to the GPU needs no
    staging copy and does not block the host.
    """
    if pin:
        return torch.empty(shape, dtype=torch.uint8, pin_memory=True)
    # numpy, not torch.empty: numpy asks Linux for transparent huge pages, so far
    # fewer page faults for these large, short-lived buffers.
    return torch.from_numpy(np.empty(shape, dtype=np.uint8))


class BufferPool:
    """Reuses large float32 output buffers once nothing refers to them any more.

    Writing a fresh float batch costs as much in page faults as in arithmetic;
    a loader's batches are usually dropped one iteration later, so their memory
    can be reused. A buffer is handed out again only when no array or tensor
    views it (CPython reference count), so a batch the caller keeps is never
    overwritten.
    """

    def __init__(self, keep: int = 3):
        self.keep = keep
        self._buffers: list[np.ndarray] = []

    def get(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of ``shape`` (uninitialised)."""
        n = int(np.prod(shape))
        for i in range(len(self._buffers)):
            if self._buffers[i].size >= n and self._free(i):
                return self._buffers[i][:n].reshape(shape)
        self._buffers.append(np.empty(n, dtype=np.float32))
        if len(self._buffers) > self.keep:  # forget the smallest free buffer
            free = [i for i in range(len(self._buffers) - 1) if self._free(i)]
            if free:
                del self._buffers[min(free, key=lambda i: self._buffers[i].size)]
        return self._buffers[-1].reshape(shape)

    def _free(self, i: int) -> bool:
        # references when nothing else holds it: the list and getrefcount's argument
        return sys.getrefcount(self._buffers[i]) <= 2


# --------------------------------------------------------------- normalisation
def normalize_clip(src: np.ndarray, dst: np.ndarray, mean: np.ndarray, inv: np.ndarray) -> None:
    """uint8 ``[C, T, H, W]`` -> float32 ``(x - mean) * inv`` into ``dst``, one plane per channel.

    OpenCV's ``addWeighted`` with a float32 destination is ``convertTo``'s
    scale-and-shift in one pass (faster than numpy, equal to 1e-6; docs/design/batch.md);
    a channel plane ``[T, H, W]`` is viewed as one 2-D image.
    """
    import cv2

    for c in range(src.shape[0]):
        s = src[c].reshape(-1, src.shape[-1])
        d = dst[c].reshape(-1, dst.shape[-1])
        cv2.addWeighted(s, float(inv[c]), s, 0.0, float(-mean[c] * inv[c]), dst=d, dtype=cv2.CV_32F)


@functools.lru_cache(maxsize=32)
def device_constants(
    mean: tuple[float, ...], inv: tuple[float, ...], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mean`` and ``1/std`` as ``[1, C, 1, 1, 1]`` tensors on ``device``, built once per
    (values, device, dtype) and reused by every batch.

    Built per batch they would cost a blocking host-to-device copy each, that
    is a host sync per batch; built once, the one copy is made non-blocking
    from page-locked memory.
    """
    host = torch.tensor([mean, inv], dtype=dtype)
    if device.type == "cuda":
        host = host.pin_memory()
    both = host.to(device, non_blocking=True)
    return both[0].view(1, -1, 1, 1, 1), both[1].view(1, -1, 1, 1, 1)


def normalize(video: torch.Tensor, transform: Transform, pool: BufferPool | None = None) -> torch.Tensor:
    """uint8 ``[B, C, T, H, W]`` -> float32 ``(x - mean) / std`` (on the tensor's device)."""
    mean, std = transform.mean_std()
    inv = (1.0 / std).astype(np.float32)
    if video.device.type != "cpu":
        m, s = device_constants(tuple(mean.tolist()), tuple(inv.tolist()), video.device, torch.float32)
        return video.float().sub_(m).mul_(s)
    src = video.numpy()
    out = pool.get(src.shape) if pool is not None else np.empty(src.shape, dtype=np.float32)
    if not (src.flags.c_contiguous and out.flags.c_contiguous):
        out = np.empty(src.shape, dtype=np.float32)
        src = np.ascontiguousarray(src)
    for b in range(src.shape[0]):
        normalize_clip(src[b], out[b], mean, inv)
    return torch.from_numpy(out)


def mask_padding(video: torch.Tensor, lengths: torch.Tensor) -> None:
    """Set frames past each clip's length to zero, in place (``lengths`` on the CPU: no sync)."""
    for i, n in enumerate(lengths.tolist()):
        video[i, :, n:].zero_()


def to_device(video: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU batch to ``device`` without making the host wait: non-blocking, from pinned memory.

    A buffer already pinned (decoded in this process for a GPU) is copied as it
    is. Any other one, such as a worker's shared-memory ring buffer, is first
    copied into a pinned staging buffer: torch's pinned-memory cache reuses that
    buffer only once the GPU copy has finished, whereas a ring buffer is
    rewritten by its worker on the worker's schedule, however far behind the
    GPU's queue of copies is, so it is never handed to the GPU directly.
    """
    if device.type == "cuda" and not video.is_pinned():
        video = video.pin_memory()
    return video.to(device, non_blocking=True)


def finalize(
    batch: Batch, transform: Transform, device: str | torch.device = "cpu", pool: BufferPool | None = None
) -> Batch:
    """Move a uint8 batch to ``device``, normalise it if asked, zero the padding if asked.

    The lengths stay on the CPU (see :attr:`Batch.lengths`).
    """
    video = batch.video
    target = torch.device(device)
    if target.type != "cpu":
        video = to_device(video, target)
    if transform.output != "uint8":
        video = normalize(video, transform, pool)
        if transform.pad == "zeros":
            mask_padding(video, batch.lengths)
        if transform.output == "float16":
            video = video.half()
    return Batch(video, batch.lengths, batch.keys, batch.meta)


# -------------------------------------------------------------------- batching
def group_batches(
    items: Iterable[T],
    batch_size: int,
    *,
    length: Callable[[T], int] | None = None,
    bucket: int = 0,
    rng: np.random.Generator | None = None,
) -> Iterator[list[T]]:
    """Group a stream into lists of ``batch_size`` (the last one may be short).

    Args:
        items: the stream.
        batch_size: samples per batch.
        length: a sample's length (needed when bucketing).
        bucket: 0 keeps stream order; ``k > 0`` fills a buffer of ``k``
            batches, sorts it by length, cuts it into batches and yields those
            in a random order (``rng``), so each batch holds similar lengths.
        rng: generator for the batch order inside a bucket buffer.
    """
    if batch_size < 1:
        raise SignstreamError(f"batch_size must be >= 1, got {batch_size}")
    if bucket <= 0:
        batch: list[T] = []
        for item in items:
            batch.append(item)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch
        return
    if length is None:
        raise ValueError("bucketing needs a length function")
    rng = rng or np.random.default_rng(0)
    buffer: list[T] = []
    for item in items:
        buffer.append(item)
        if len(buffer) == bucket * batch_size:
            yield from _flush_bucket(buffer, batch_size, length, rng)
            buffer = []
    if buffer:
        yield from _flush_bucket(buffer, batch_size, length, rng)


def _flush_bucket(
    buffer: list[T], batch_size: int, length: Callable[[T], int], rng: np.random.Generator
) -> Iterator[list[T]]:
    ordered = sorted(buffer, key=length)
    chunks = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    for i in rng.permutation(len(chunks)):
        yield chunks[i]

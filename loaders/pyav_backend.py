"""PyAV backend: shards decoded on the CPU in DataLoader worker processes.

The whole loader is one WebDataset pipeline per worker (see
:meth:`PyAVStream.pipeline`)::

    samples of the epoch -> split by rank -> split by worker -> shuffle (replayed in training)
        -> read + plan -> batch (optionally length-bucketed) -> decode + transform
        -> [training: exactly this worker's number of batches]

Samples are read by offset through the shard's index, so shuffling is a full
permutation of the worker's share rather than a buffer. Batches are formed on
planned lengths *before* decoding, so a bucketing buffer holds compressed
bytes, never decoded frames, and each clip is decoded straight into its slot
of the batch buffer (a worker's shared-memory ring). Decoding asks PyAV for
the planned frames only and stops after the last one, so a 2,000-frame video
with ``max_frames=64`` holds 64 frames in memory. Corrupt
or truncated videos are skipped, counted and named: every stage reports skips
into a per-worker :class:`Report` that travels to the main process with the
next batch (or on its own at the end).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import av
import cv2
import numpy as np
import torch
import webdataset as wds

from signstream import SignstreamError, lookup
from signstream.loaders.base import PREFETCH, RING_SLOTS, BaseLoader, train_batches
from signstream.loaders.batch import (
    Batch,
    SharedRing,
    check_frame_sizes,
    finish_batch,
    group_batches,
    new_buffer,
)
from signstream.loaders.cpu import WORKER_TIMEOUT_S, one_opencv_thread, worker_timeout_message
from signstream.loaders.shards import SampleError, SampleReader, SampleRef, ShardSet, rank_range
from signstream.loaders.stats import HANDLERS, Report, Skipped
from signstream.loaders.transform import (
    SamplePlan,
    Transform,
    crop_resize,
    emit_frame,
    plan_sample,
    sample_rng,
    size_mismatch,
)

# A clip planned larger than this (uint8 bytes) is confirmed against its video before use.
TRUSTED_CLIP_BYTES = 256 << 20


# ------------------------------------------------------------- colour conversion
def _yuv_matrix(kr: float, kb: float, full: bool) -> np.ndarray:
    """3x4 matrix for cv2.transform: [Y, U, V, 1] -> RGB."""
    kg = 1.0 - kr - kb
    ys, cs = (1.0, 1.0) if full else (255.0 / 219.0, 255.0 / 224.0)
    m = np.array([[ys, 0.0, 2 * (1 - kr) * cs],
                  [ys, -2 * kb * (1 - kb) / kg * cs, -2 * kr * (1 - kr) / kg * cs],
                  [ys, 2 * (1 - kb) * cs, 0.0]], np.float64)
    offset = -m @ np.array([0.0 if full else 16.0, 128.0, 128.0])
    return np.hstack([m, offset[:, None]]).astype(np.float32)


# keyed by (matrix, full range); BT.601 unless the stream says BT.709 (colorspace 1).
_MATRICES = {("601", False): _yuv_matrix(0.299, 0.114, False), ("601", True): _yuv_matrix(0.299, 0.114, True),
             ("709", False): _yuv_matrix(0.2126, 0.0722, False), ("709", True): _yuv_matrix(0.2126, 0.0722, True)}


def _plane(plane: Any, h: int, w: int) -> np.ndarray:
    return np.frombuffer(plane, np.uint8, count=plane.line_size * h).reshape(h, plane.line_size)[:, :w]


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as uint8 ``[H, W, 3]`` RGB.

    4:2:0 frames are converted like DALI's decoder does (bilinear chroma
    upsampling, BT.601 limited range unless tagged otherwise), so both
    backends give the same pixels; it is also about half the cost of
    swscale's RGB path. Other pixel formats go through swscale.
    """
    fmt = frame.format.name
    if fmt not in ("yuv420p", "yuvj420p"):
        return frame.to_ndarray(format="rgb24")
    h, w = frame.height, frame.width
    full = fmt == "yuvj420p" or frame.color_range == 2
    matrix = _MATRICES[("709" if frame.colorspace == 1 else "601", full)]
    y = _plane(frame.planes[0], h, w)
    ch, cw = (h + 1) // 2, (w + 1) // 2
    u = cv2.resize(_plane(frame.planes[1], ch, cw), (w, h), interpolation=cv2.INTER_LINEAR)
    v = cv2.resize(_plane(frame.planes[2], ch, cw), (w, h), interpolation=cv2.INTER_LINEAR)
    return cv2.transform(cv2.merge([np.ascontiguousarray(y), u, v]), matrix)


def yuv_crop_resize(frame: av.VideoFrame, box: tuple[int, int, int, int], out_hw: tuple[int, int],
                    dst: np.ndarray) -> bool:
    """Crop + convert + enlarge a 4:2:0 frame straight into ``dst`` (``[H, W, 3]`` RGB).

    The planes are cropped before anything else, so pixels outside the box
    are never converted and no full-size RGB frame is made. The steps are
    DALI's (bilinear chroma up to the box, convert, resize the RGB box), so
    both backends round alike. (OpenCV's SIMD I420 converter is 14x faster
    but repeats chroma samples instead of interpolating them: measured 0.94
    grey levels mean from DALI on small clips, beyond the parity tolerance.)
    The box must start and end on whole chroma samples (spatial plans are
    even) and the output must not be smaller than the box (shrinking needs
    the antialiased RGB path). Returns False, writing nothing, when that does
    not hold.
    """
    y0, x0, h, w = box
    oh, ow = out_hw
    fmt = frame.format.name
    if fmt not in ("yuv420p", "yuvj420p") or oh < h or ow < w or y0 % 2 or x0 % 2:
        return False
    full = fmt == "yuvj420p" or frame.color_range == 2
    height, width = frame.height, frame.width
    matrix = _MATRICES[("709" if frame.colorspace == 1 else "601", full)]
    y = _plane(frame.planes[0], height, width)[y0:y0 + h, x0:x0 + w]
    ch, cw = (height + 1) // 2, (width + 1) // 2
    rows, cols = slice(y0 // 2, (y0 + h + 1) // 2), slice(x0 // 2, (x0 + w + 1) // 2)
    # Chroma up to the box size, convert, then resize: DALI's order of steps.
    u = cv2.resize(_plane(frame.planes[1], ch, cw)[rows, cols], (w, h), interpolation=cv2.INTER_LINEAR)
    v = cv2.resize(_plane(frame.planes[2], ch, cw)[rows, cols], (w, h), interpolation=cv2.INTER_LINEAR)
    # cv2.merge is several times slower on a strided view (the plane's line size is wider than
    # the box) than on a contiguous plane, and the copy costs less than the difference.
    y = np.ascontiguousarray(y)
    if (h, w) == (oh, ow):
        cv2.transform(cv2.merge([y, u, v]), matrix, dst=dst)
    else:
        cv2.resize(cv2.transform(cv2.merge([y, u, v]), matrix), (ow, oh), dst=dst, interpolation=cv2.INTER_LINEAR)
    return True


# ----------------------------------------------------------------------- decode
def probe_video(data: bytes | np.ndarray) -> tuple[int, int, int]:
    """``(num_frames, height, width)`` of an encoded video, counting packets (no decoding)."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            frames = sum(1 for packet in container.demux(stream) if packet.size)
            return frames, stream.codec_context.height, stream.codec_context.width
    except (av.FFmpegError, IndexError) as exc:
        raise SampleError(f"cannot probe video: {exc}") from None


def probe_size(data: bytes | np.ndarray) -> tuple[int, int]:
    """``(height, width)`` of an encoded video from its container header (nothing decoded)."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            ctx = container.streams.video[0].codec_context
            if ctx.height and ctx.width:
                return ctx.height, ctx.width
            frame = next(container.decode(video=0))  # a header without the size: decode one frame
            return frame.height, frame.width
    except (av.FFmpegError, IndexError, StopIteration) as exc:
        raise SampleError(f"cannot probe video: {exc}") from None


def decode_clip(data: bytes | np.ndarray, plan: SamplePlan, threads: int = 1,
                out: np.ndarray | None = None) -> np.ndarray:
    """Decode the planned frames of a video into uint8 ``[3, T, H, W]`` (T = ``plan.length``).

    Only the planned frames are converted and kept; decoding stops after the
    last one. ``out`` (e.g. a slot of a batch buffer) receives the frames in
    place. Raises :class:`SampleError` on a corrupt or truncated video.
    """
    unique, slots = plan.frame_slots()
    y0, x0, h, w = plan.box
    if out is None:
        out = np.empty((3, plan.length, *plan.out_hw), np.uint8)
    frame_hwc = np.empty((*plan.out_hw, 3), np.uint8)
    got, seen = 0, 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise SampleError("no video stream")
            stream = container.streams.video[0]
            stream.thread_count = threads
            for frame in container.decode(stream):
                if seen == 0 and (why := size_mismatch(plan, frame.height, frame.width)):
                    raise SampleError(why)
                if seen == unique[got]:
                    if not yuv_crop_resize(frame, plan.box, plan.out_hw, frame_hwc):
                        # shrinking or not 4:2:0: full RGB frame, then the antialiased resize
                        crop = frame_to_rgb(frame)[None, y0:y0 + h, x0:x0 + w]
                        frame_hwc[:] = crop_resize(crop, (0, 0, h, w), plan.out_hw)[0]
                    emit_frame(out, slots[got], frame_hwc, plan)
                    got += 1
                    if got == len(unique):
                        break
                seen += 1
    except av.FFmpegError as exc:
        raise SampleError(f"decode failed: {exc}") from None
    except (ValueError, cv2.error) as exc:  # a frame smaller than the planned box (bad metadata)
        raise SampleError(f"frame does not match its metadata: {exc}") from None
    if got < len(unique):
        raise SampleError(f"truncated video: {seen} frames decoded, frame {unique[got]} needed")
    return out


def plan_from_meta(meta: dict[str, Any], key: str, data: bytes | np.ndarray, transform: Transform, *, train: bool,
                   seed: int, epoch: int, pass_: int = 0) -> SamplePlan:
    """Plan a sample from its JSON (``num_frames``, ``height``, ``width``; probed if absent).

    The JSON passed the format's strict reader, so its numbers are in range; a
    plan whose clip would exceed :data:`TRUSTED_CLIP_BYTES` is checked against
    the video itself before any buffer is sized from it, so a crafted frame
    count or size cannot make the loader allocate gigabytes.
    """
    try:
        n, h, w = int(meta["num_frames"]), int(meta["height"]), int(meta["width"])
        claimed = True
    except (KeyError, TypeError, ValueError):
        (n, h, w), claimed = probe_video(data), False
    if n < 1:
        raise SampleError("video has no frames")
    plan = plan_sample(n, h, w, transform, train=train, rng=sample_rng(seed, epoch, key, pass_))
    if claimed and plan.length * 3 * plan.out_hw[0] * plan.out_hw[1] > TRUSTED_CLIP_BYTES:
        real = probe_video(data)
        if real != (n, h, w):
            raise SampleError(f"JSON says {n} frames of {h}x{w}, the video holds {real[0]} of "
                              f"{real[1]}x{real[2]} (HxW)")
    return plan


# ----------------------------------------------------------------------- stages
@dataclass
class Planned:
    """A read and planned sample on its way to the decoder."""

    ref: SampleRef
    data: bytes
    meta: dict[str, Any]
    plan: SamplePlan


def epoch_order(shardset: ShardSet, epoch: int, seed: int, shuffle: bool) -> list[SampleRef]:
    """The epoch's sample order, identical on every rank: shard order shuffled, samples in file order."""
    shards = list(range(len(shardset.shards)))
    if shuffle:
        shards = list(np.random.default_rng([seed & 0xFFFFFFFF, epoch]).permutation(shards))
    return [ref for i in shards for ref in shardset.shards[i].samples]


def take_range(start: int, stop: int) -> Callable[[Iterator], Iterator]:
    """Stage: items ``[start, stop)`` of the stream (a contiguous rank or worker share)."""
    return lambda src: islice(src, start, stop)


def passes(forever: bool, shuffle: bool, rng: np.random.Generator) -> Callable[[Iterator], Iterator]:
    """Stage: ``(item, pass)`` pairs — the shuffle step.

    Each pass over the share is a fresh permutation when shuffling (a full
    shuffle of the share: no duplicates within an epoch, unlike a buffer over
    a replayed stream); training replays the share until the consumer stops.
    """
    def stage(src: Iterator) -> Iterator:
        items = list(src)
        pass_ = 0
        while items:
            order = rng.permutation(len(items)) if shuffle else range(len(items))
            for i in order:
                yield items[i], pass_
            pass_ += 1
            if not forever:
                return
    return stage


class PyAVStream(torch.utils.data.IterableDataset):
    """The per-worker pipeline (an IterableDataset a DataLoader runs in its workers)."""

    def __init__(self, shardset: ShardSet, transform: Transform, *, train: bool, shuffle: bool, seed: int,
                 rank: int, world: int, batch_size: int, bucket: int, handler: str,
                 decode_threads: int):
        super().__init__()
        self.shardset, self.transform = shardset, transform
        self.train, self.shuffle, self.seed = train, shuffle, seed
        self.rank, self.world = rank, world
        self.batch_size, self.bucket = batch_size, bucket
        self.handler, self.decode_threads = handler, decode_threads
        self.epoch = 0
        # Decode into pinned buffers (set by the loader for a GPU target without workers;
        # a worker process never touches CUDA, its batches are pinned by the main process).
        self.pin = False

    def worker_batches(self, worker: int, workers: int) -> int | None:
        """Batches a worker yields in training (``None``: until its share ends)."""
        if not self.train:
            return None
        start, stop = rank_range(train_batches(self.shardset.num_samples, self.world, self.batch_size),
                                 worker, workers)
        return stop - start

    def __iter__(self) -> Iterator[tuple[Batch | None, Report]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            one_opencv_thread()
        self._ring = getattr(self, "_ring", None) or (SharedRing(RING_SLOTS) if info is not None else None)
        # Persistent workers keep this object between epochs: each iteration is the next epoch.
        self._current, self.epoch = self.epoch, self.epoch + 1
        self._report, self._streak = Report(), 0
        with SampleReader(self.shardset) as reader:
            for batch in self.pipeline(reader, worker, workers):
                report, self._report = self._report, Report()
                yield batch, report
        yield None, self._report

    def pipeline(self, reader: SampleReader, worker: int, workers: int) -> wds.DataPipeline:
        """The stages of one worker's epoch, in order."""
        refs = epoch_order(self.shardset, self._current, self.seed, self.shuffle)
        r0, r1 = rank_range(len(refs), self.rank, self.world)
        w0, w1 = rank_range(r1 - r0, worker, workers)
        self._share = w1 - w0
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self._current, self.rank, worker])
        n_batches = self.worker_batches(worker, workers)
        return wds.DataPipeline(
            lambda: iter(refs),
            take_range(r0, r1),                            # split by node (rank)
            take_range(w0, w1),                            # split by worker
            passes(self.train, self.shuffle, rng),         # shuffle (and replay when training)
            self._read(reader),
            lambda src: group_batches(src, self.batch_size, bucket=self.bucket, rng=rng,
                                      length=lambda p: p.plan.length),
            self._decode,                                  # decode + transform into the batch
            (lambda src: islice(src, n_batches)) if n_batches is not None else None,
        )

    def _skip(self, ref: SampleRef, reason: str) -> None:
        record = Skipped(ref.key, self.shardset.shard_of(ref), reason)
        self._report.skipped.append(record)
        lookup(HANDLERS, self.handler, "handler")(record)
        # Training replays a share forever: if it has no good sample at all, stop
        # after two full passes without one instead of spinning.
        self._streak += 1
        if self.train and self._streak > 2 * self._share:
            raise SignstreamError(f"no readable sample among this worker's {self._share} samples "
                                  f"(last: {record.key} in {record.shard}: {reason})")

    def _read(self, reader: SampleReader) -> Callable[[Iterator], Iterator[Planned]]:
        def stage(src: Iterator[tuple[SampleRef, int]]) -> Iterator[Planned]:
            for ref, pass_ in src:
                try:
                    data, meta, nbytes = reader.read(ref)
                    self._report.bytes_read += nbytes
                    plan = plan_from_meta(meta, ref.key, data, self.transform, train=self.train,
                                          seed=self.seed, epoch=self._current, pass_=pass_)
                except SampleError as exc:
                    self._skip(ref, str(exc))
                    continue
                yield Planned(ref, data, meta, plan)
        return stage

    def _decode(self, src: Iterator[list[Planned]]) -> Iterator[Batch]:
        """Decode each planned group straight into its batch buffer (no per-clip copies)."""
        for group in src:
            check_frame_sizes([p.plan.out_hw for p in group], [p.ref.key for p in group])
            shape = (len(group), 3, self.transform.batch_frames(max(p.plan.length for p in group)),
                     *group[0].plan.out_hw)
            video = self._ring.get(shape) if self._ring else new_buffer(shape, pin=self.pin)
            slots = video.numpy()
            good: list[Planned] = []
            for p in group:
                try:  # a failed sample's slot is simply reused by the next one
                    decode_clip(p.data, p.plan, self.decode_threads, out=slots[len(good), :, :p.plan.length])
                except SampleError as exc:
                    self._skip(p.ref, str(exc))
                    continue
                self._streak = 0
                good.append(p)
            if good:
                yield finish_batch(video, [p.plan.length for p in good], [p.ref.key for p in good],
                                   [p.meta for p in good], self.transform)


def _identity(item: Any) -> Any:
    return item


class PyAVLoader(BaseLoader):
    """Loader over shards with PyAV decoding in ``num_workers`` processes."""

    backend = "pyav"

    def __init__(self, shardset: ShardSet, *, num_workers: int, bucket: int = 0,
                 decode_threads: int = 1, **common: Any):
        super().__init__(**common)
        self.shardset = shardset
        r0, r1 = rank_range(shardset.num_samples, self.rank, self.world)
        # never more workers than samples on this rank: an idle worker could not fill its train batches
        self.num_workers = max(0, min(num_workers, r1 - r0))
        self.dataset = PyAVStream(
            shardset, self.transform, train=self.train, shuffle=self.shuffle, seed=self.seed,
            rank=self.rank, world=self.world, batch_size=self.batch_size, bucket=bucket,
            handler=self.handler, decode_threads=decode_threads)
        self.dataset.pin = self.num_workers == 0 and torch.device(self.device).type == "cuda"
        self._dataloader: torch.utils.data.DataLoader | None = None
        self._next_worker_epoch = -1

    def __len__(self) -> int:
        """Batches per epoch on this rank (eval: before any skips)."""
        workers = max(1, self.num_workers)
        if self.train:
            return train_batches(self.shardset.num_samples, self.world, self.batch_size)
        r0, r1 = rank_range(self.shardset.num_samples, self.rank, self.world)
        shares = [rank_range(r1 - r0, w, workers) for w in range(workers)]
        return sum(-(-(b - a) // self.batch_size) for a, b in shares)

    def _epoch(self, epoch: int) -> Iterator[tuple[Batch | None, Report]]:
        if self._dataloader is None or epoch != self._next_worker_epoch:
            # (Re)start the workers; they keep their shared-memory rings across
            # epochs and count epochs themselves, so only a jump (set_epoch) restarts them.
            self.dataset.epoch = epoch
            self._keep_mapped(self.num_workers)
            self._dataloader = torch.utils.data.DataLoader(
                self.dataset, batch_size=None, num_workers=self.num_workers, collate_fn=_identity,
                pin_memory=False, prefetch_factor=PREFETCH if self.num_workers else None,
                persistent_workers=self.num_workers > 0,
                timeout=WORKER_TIMEOUT_S if self.num_workers else 0)
        self._next_worker_epoch = epoch + 1
        if self.num_workers == 0:
            self.dataset.epoch = epoch
        try:
            yield from self._dataloader
        except SignstreamError as exc:
            # torch re-raises a worker's error with the worker's whole traceback in its
            # message; the user gets the worker's own one line, as without workers
            marker = "\nsignstream.SignstreamError: "
            raise SignstreamError(str(exc).rsplit(marker, 1)[-1]) from None
        except RuntimeError as exc:
            if "timed out" not in str(exc):
                raise
            raise SignstreamError(worker_timeout_message(self.num_workers)) from None

"""PyAV backend: shards read by offset and decoded on the CPU, in DataLoader worker processes.

The shared stages (epoch order, rank and worker split, shuffle, read + plan,
batching, skip-and-report) are :mod:`signstream.loaders.stages`; this module
only decodes. Decoding asks PyAV for the planned frames only and stops after
the last one, straight into the clip's slot of the batch buffer, so a
2,000-frame video with ``max_frames=64`` holds 64 frames in memory.
"""

from __future__ import annotations

import io
from typing import Any

import av
import cv2
import numpy as np

from signstream.loaders.shards import SampleError, SampleReader, SampleRef, ShardSet
from signstream.loaders.stages import (  # noqa: F401  (re-exported: backends and tools import them from here)
    TRUSTED_CLIP_BYTES,
    Planned,
    SampleStream,
    StreamLoader,
    epoch_order,
    passes,
    plan_from_meta,
    take_range,
)
from signstream.loaders.transform import (
    SamplePlan,
    Transform,
    crop_resize,
    emit_frame,
    size_mismatch,
)


# ------------------------------------------------------------- colour conversion
def _yuv_matrix(kr: float, kb: float, full: bool) -> np.ndarray:
    """3x4 matrix for cv2.transform: [Y, U, V, 1] -> RGB."""
    kg = 1.0 - kr - kb
    ys, cs = (1.0, 1.0) if full else (255.0 / 219.0, 255.0 / 224.0)
    m = np.array(
        [
            [ys, 0.0, 2 * (1 - kr) * cs],
            [ys, -2 * kb * (1 - kb) / kg * cs, -2 * kr * (1 - kr) / kg * cs],
            [ys, 2 * (1 - kb) * cs, 0.0],
        ],
        np.float64,
    )
    offset = -m @ np.array([0.0 if full else 16.0, 128.0, 128.0])
    return np.hstack([m, offset[:, None]]).astype(np.float32)


# keyed by (matrix, full range); BT.601 unless the stream says BT.709 (colorspace 1).
_MATRICES = {
    ("601", False): _yuv_matrix(0.299, 0.114, False),
    ("601", True): _yuv_matrix(0.299, 0.114, True),
    ("709", False): _yuv_matrix(0.2126, 0.0722, False),
    ("709", True): _yuv_matrix(0.2126, 0.0722, True),
}


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


def yuv_crop_resize(
    frame: av.VideoFrame, box: tuple[int, int, int, int], out_hw: tuple[int, int], dst: np.ndarray
) -> bool:
    """Crop + convert + enlarge a 4:2:0 frame straight into ``dst`` (``[H, W, 3]`` RGB).

    The planes are cropped before anything else, so pixels outside the box
    are never converted and no full-size RGB frame is made. The steps are
    DALI's (bilinear chroma up to the box, convert, resize the RGB box), so
    both backends round alike (OpenCV's faster I420 converter misses the parity
    tolerance; why: docs/design/loaders.md).
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
    y = _plane(frame.planes[0], height, width)[y0 : y0 + h, x0 : x0 + w]
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


def decode_clip(
    data: bytes | np.ndarray, plan: SamplePlan, threads: int = 1, out: np.ndarray | None = None
) -> np.ndarray:
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
                        crop = frame_to_rgb(frame)[None, y0 : y0 + h, x0 : x0 + w]
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


# ----------------------------------------------------------------------- backend
class PyAVStream(SampleStream):
    """The per-worker pipeline (see :class:`~signstream.loaders.stages.SampleStream`): shards read by
    offset, clips decoded by :func:`decode_clip`."""

    def __init__(self, shardset: ShardSet, transform: Transform, *, decode_threads: int = 1, **stream: Any):
        super().__init__(transform, num_samples=shardset.num_samples, **stream)
        self.shardset, self.decode_threads = shardset, decode_threads

    def samples(self, epoch: int) -> list[SampleRef]:
        return epoch_order(self.shardset, epoch, self.seed, self.shuffle)

    def where(self, ref: SampleRef) -> str:
        return self.shardset.shard_of(ref)

    def open(self) -> SampleReader:
        return SampleReader(self.shardset)

    def read(self, reader: SampleReader, ref: SampleRef, epoch: int, pass_: int) -> Planned:
        data, meta, nbytes = reader.read(ref)
        self.count_bytes(nbytes)
        plan = plan_from_meta(
            meta, ref.key, data, self.transform, train=self.train, seed=self.seed, epoch=epoch, pass_=pass_
        )
        return Planned(ref, data, meta, plan)

    def decode(self, p: Planned, out: np.ndarray) -> None:
        decode_clip(p.data, p.plan, self.decode_threads, out=out)


class PyAVLoader(StreamLoader):
    """Loader over shards with PyAV decoding in ``num_workers`` processes."""

    backend = "pyav"

    def __init__(
        self, shardset: ShardSet, *, num_workers: int, bucket: int = 0, decode_threads: int = 1, **common: Any
    ):
        super().__init__(**common)
        self.shardset = shardset
        self.attach(
            PyAVStream(
                shardset,
                self.transform,
                decode_threads=decode_threads,
                train=self.train,
                shuffle=self.shuffle,
                seed=self.seed,
                rank=self.rank,
                world=self.world,
                batch_size=self.batch_size,
                bucket=bucket,
                handler=self.handler,
            ),
            num_workers,
        )

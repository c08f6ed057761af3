"""Video encoding for the packer: frames in, compressed bytes out, checked.

One :class:`Codec` entry per output codec (container, encoder, options chosen
so that the same input gives byte-identical output on every run: single
threaded encoders, ``bitexact`` muxing). Every encoded video is decoded back
once and compared against the source frame count and shape before the packer
writes it.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import av
import cv2
import numpy as np


class EncodeError(Exception):
    """A row that cannot be packed (bad frames, unreadable video, bad round trip)."""


@dataclass(frozen=True)
class Codec:
    """How one codec is written: encoder, container, extension, pixel format."""

    name: str
    encoder: str
    container: str
    ext: str
    pix_fmt: str
    quality_option: str
    default_quality: int
    options: dict = field(default_factory=dict)
    quality_range: tuple[int, int] = (0, 63)


CODECS: dict[str, Codec] = {
    # VP9 is the one codec every backend decodes (DALI CPU, NVDEC, PyAV).
    "vp9": Codec("vp9", "libvpx-vp9", "webm", "webm", "yuv420p", "crf", 30,
                 {"b": "0", "deadline": "realtime", "row-mt": "0", "threads": "1"}, (0, 63)),
    # H.264 decodes on NVDEC and PyAV only; x264 threads pinned for determinism.
    "h264": Codec("h264", "libx264", "mp4", "mp4", "yuv420p", "crf", 18,
                  {"x264-params": "threads=1:lookahead-threads=1:sliced-threads=0"}, (0, 51)),
    # Fixed JPEG q-scale: qmin = qmax = quality (the rate controller otherwise starves later frames).
    "mjpeg": Codec("mjpeg", "mjpeg", "matroska", "mkv", "yuvj420p", "qscale", 3, {}, (1, 31)),
}
SPEED_OPTION = {"vp9": ("cpu-used", "8"), "h264": ("preset", "veryfast"), "mjpeg": None}
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow",
                "slower", "veryslow", "placebo")


def check_settings(codec: Codec, quality: int | None, speed: str | None, gop: int | None) -> None:
    """Refuse encoder settings the encoder would reject (or silently clamp).

    Checked before any row is read, so a typo fails at once with a message that
    says what is allowed, instead of every row failing inside a worker.

    Raises:
        ValueError: naming the option and its allowed values.
    """
    lo, hi = codec.quality_range
    if quality is not None and not lo <= quality <= hi:
        raise ValueError(f"--quality {quality} is out of range for {codec.name} ({lo}-{hi})")
    if gop is not None and gop < 1:
        raise ValueError(f"--gop must be a positive number of frames, got {gop}")
    if speed is None:
        return
    if codec.name == "vp9" and not re.fullmatch(r"-?[0-8]", speed):
        raise ValueError(f"--speed {speed!r} is not a vp9 speed (an integer from -8 to 8)")
    if codec.name == "h264" and speed not in X264_PRESETS:
        raise ValueError(f"--speed {speed!r} is not an h264 preset ({', '.join(X264_PRESETS)})")
    if SPEED_OPTION[codec.name] is None:
        raise ValueError(f"{codec.name} has no speed setting; drop --speed")


def read_frames(files: tuple[str, ...] | list[str], resize: tuple[int, int] | None = None) -> np.ndarray:
    """Read PNG/JPEG frames into ``uint8 [T, H, W, 3]`` RGB.

    Grayscale and RGBA frames are converted to RGB. Raises :class:`EncodeError`
    naming the file for unreadable frames and for mixed frame sizes.
    """
    frames = []
    for path in files:
        img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
        if img is None:
            raise EncodeError(f"unreadable frame {path}")
        frames.append(_to_rgb(img, path))
        if frames[-1].shape != frames[0].shape:
            raise EncodeError(f"mixed frame sizes: {path} is {frames[-1].shape[1]}x{frames[-1].shape[0]}, "
                              f"first frame is {frames[0].shape[1]}x{frames[0].shape[0]}")
    if not frames:
        raise EncodeError("no frames")
    video = np.stack(frames)
    return _resize(video, resize) if resize else video


def _to_rgb(img: np.ndarray, path: str) -> np.ndarray:
    if img.dtype != np.uint8:  # 16-bit PNGs: keep the top 8 bits
        img = (img >> 8).astype(np.uint8) if img.dtype == np.uint16 else img.astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    raise EncodeError(f"unsupported channel count {img.shape[2]} in {path}")


def _resize(video: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in video])


def read_video_file(path: str, resize: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """Decode a video file with PyAV into ``uint8 [T, H, W, 3]`` and its frame rate."""
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or 25)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.FFmpegError, IndexError) as exc:
        raise EncodeError(f"unreadable video {path}: {exc}") from None
    if not frames:
        raise EncodeError(f"video {path} has no frames")
    video = np.stack(frames)
    return (_resize(video, resize) if resize else video), fps


def encode_video(frames: np.ndarray, codec: Codec, fps: float = 25.0, quality: int | None = None,
                 speed: str | None = None, gop: int | None = None) -> bytes:
    """Encode ``uint8 [T, H, W, 3]`` RGB frames; the output is deterministic.

    Args:
        frames: the video; H and W must be even for 4:2:0 codecs.
        codec: the output :class:`Codec`.
        fps: frame rate written in the container.
        quality: CRF (vp9, h264; lower = better) or JPEG q-scale (mjpeg, 2–31).
        speed: encoder speed (vp9 ``cpu-used``, h264 ``preset``); ``None`` = default.
        gop: keyframe interval in frames (``None`` = encoder default).
    """
    t, h, w, _ = frames.shape
    opts = dict(codec.options, flags="+bitexact")
    q = str(codec.default_quality if quality is None else quality)
    if codec.quality_option == "qscale":
        opts.update(flags="+bitexact+qscale", qmin=q, qmax=q)
    else:
        opts[codec.quality_option] = q
    speed_opt = SPEED_OPTION[codec.name]
    if speed_opt:
        opts[speed_opt[0]] = speed if speed is not None else speed_opt[1]
    if gop:
        opts["g"] = str(gop)
    buf = io.BytesIO()
    rate = int(round(fps)) if abs(fps - round(fps)) < 1e-6 else fps
    with av.open(buf, "w", format=codec.container, options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(codec.encoder, rate=rate, options=opts)
        stream.width, stream.height, stream.pix_fmt = w, h, codec.pix_fmt
        stream.thread_count = 1
        for frame in frames:
            out.mux(stream.encode(_video_frame(frame, codec.pix_fmt)))
        out.mux(stream.encode())
    return buf.getvalue()


def _video_frame(rgb: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    # OpenCV's RGB -> I420 (BT.601, limited range, what decoders assume for untagged
    # streams) is ~3x faster than libswscale's, the largest cost of packing after PNG reads.
    if pix_fmt == "yuv420p":
        return av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
    return av.VideoFrame.from_ndarray(rgb, format="rgb24")


def check_round_trip(data: bytes, num_frames: int, height: int, width: int) -> None:
    """Decode ``data`` once; raise :class:`EncodeError` unless count and shape match.

    Frames are decoded but not converted to RGB (the count and plane size are
    what can go wrong; pixel fidelity is covered by the PSNR tests).
    """
    count = 0
    try:
        with av.open(io.BytesIO(data)) as container:
            for frame in container.decode(video=0):
                if (frame.height, frame.width) != (height, width):
                    raise EncodeError(f"round trip gave {frame.width}x{frame.height}, expected {width}x{height}")
                count += 1
    except av.FFmpegError as exc:
        raise EncodeError(f"encoded video does not decode: {exc}") from None
    if count != num_frames:
        raise EncodeError(f"round trip decoded {count} frames, expected {num_frames}")


def even_size(frames: np.ndarray) -> np.ndarray:
    """Crop one row/column when H or W is odd (4:2:0 chroma needs even sizes)."""
    _, h, w, _ = frames.shape
    return frames[:, : h - h % 2, : w - w % 2]

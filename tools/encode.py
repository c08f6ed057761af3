"""Video encoding for the packer: frames in, compressed bytes out, checked.

One :class:`Codec` per output codec, configured for byte-identical output on every run;
every encoded video is decoded back and checked before it is written. Source videos keep an
exact frame rate and come out upright, or are refused with a reason.
Why: docs/design/encoding.md
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field
from fractions import Fraction

import av
import cv2
import numpy as np
from av.sidedata.sidedata import Type

from signstream.loaders.format import MAX_FPS


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
    "vp9": Codec(
        "vp9",
        "libvpx-vp9",
        "webm",
        "webm",
        "yuv420p",
        "crf",
        30,
        {"b": "0", "deadline": "realtime", "row-mt": "0", "threads": "1"},
        (0, 63),
    ),
    # H.264 decodes on NVDEC and PyAV only; x264 threads pinned for determinism.
    "h264": Codec(
        "h264",
        "libx264",
        "mp4",
        "mp4",
        "yuv420p",
        "crf",
        18,
        {"x264-params": "threads=1:lookahead-threads=1:sliced-threads=0"},
        (0, 51),
    ),
    # Fixed JPEG q-scale: qmin = qmax = quality (the rate controller otherwise starves later frames).
    "mjpeg": Codec("mjpeg", "mjpeg", "matroska", "mkv", "yuvj420p", "qscale", 3, {}, (1, 31)),
}
SPEED_OPTION = {"vp9": ("cpu-used", "8"), "h264": ("preset", "veryfast"), "mjpeg": None}
X264_PRESETS = (
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
)


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
            raise EncodeError(
                f"mixed frame sizes: {path} is {frames[-1].shape[1]}x{frames[-1].shape[0]}, "
                f"first frame is {frames[0].shape[1]}x{frames[0].shape[0]}"
            )
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


def read_video_file(path: str, resize: tuple[int, int] | None = None) -> tuple[np.ndarray, Fraction]:
    """Decode every frame of a video file, in display order, into upright ``uint8 [T, H, W, 3]`` RGB.

    A variable-frame-rate source keeps all its frames in order; they are
    re-timed evenly at its average rate (:func:`frame_rate`). Rotation metadata
    (a display matrix, as phones write) is applied, so frames come out upright.

    Returns:
        The frames and the source's frame rate as an exact fraction (30000/1001, not 29.97).

    Raises:
        EncodeError: naming the file: unreadable, no frames, a damaged frame, fewer
            frames than the container records, a rotation that is not a quarter turn
            or is mirrored, a frame size that changes mid-stream, an implausible rate.
    """
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = frame_rate(stream, path)
            frames, span = _decode_upright(container, stream, path)
            _check_complete(len(frames), span, stream, container, rate, path)
    except (av.FFmpegError, IndexError) as exc:
        raise EncodeError(f"unreadable video {path}: {exc}") from None
    if not frames:
        raise EncodeError(f"video {path} has no frames")
    video = np.stack(frames)
    return (_resize(video, resize) if resize else video), rate


def frame_rate(stream: av.video.stream.VideoStream, path: str) -> Fraction:
    """A stream's frame rate: its average rate (frames over duration), else FFmpeg's guess, else 25.

    Raises:
        EncodeError: the stream states rates, but none a reader would accept (above :data:`MAX_FPS`).
    """
    stated = [Fraction(r) for r in (stream.average_rate, stream.guessed_rate) if r]
    for rate in stated:
        if 0 < rate <= MAX_FPS:
            return rate
    if stated:
        raise EncodeError(
            f"video {path} states a frame rate of {float(stated[0]):g} fps; "
            f"more than {MAX_FPS:g} is not a video frame rate"
        )
    return Fraction(25)  # no rate at all (a still image as a video): the frame-folder default


def _decode_upright(container, stream, path: str) -> tuple[list[np.ndarray], float | None]:
    """All frames, rotated upright, and the seconds they span (``None`` when untimed)."""
    frames: list[np.ndarray] = []
    turns, first, last = 0, None, None
    try:
        for frame in container.decode(stream):
            if frame.is_corrupt:
                raise EncodeError(f"damaged frame {len(frames)} in {path} (the decoder flags it corrupt)")
            if not frames:
                turns = _quarter_turns(frame, path)
            rgb = np.rot90(frame.to_ndarray(format="rgb24"), turns)
            if frames and rgb.shape != frames[0].shape:
                raise EncodeError(
                    f"frame size changes at frame {len(frames)} of {path} "
                    f"({rgb.shape[1]}x{rgb.shape[0]}, first frame {frames[0].shape[1]}x"
                    f"{frames[0].shape[0]})"
                )
            frames.append(rgb)
            if frame.time is not None:
                first = frame.time if first is None else first
                last = frame.time + float(frame.duration * frame.time_base) if frame.duration else frame.time
    except av.FFmpegError as exc:
        if not frames:
            raise
        raise EncodeError(f"damaged frame {len(frames)} in {path}: {exc}") from None
    return frames, (last - first if first is not None else None)


def _quarter_turns(frame: av.VideoFrame, path: str) -> int:
    """Counter-clockwise quarter turns that show a frame upright, from its display matrix."""
    matrix = frame.side_data.get(Type.DISPLAYMATRIX)
    if matrix is None:
        return 0
    a, b, _, c, d, *_ = struct.unpack("<9i", bytes(matrix))
    if a * d - b * c < 0:  # a negative determinant mirrors the picture
        raise EncodeError(
            f"video {path} is stored mirrored (display matrix with a flip); "
            "re-encode it upright, e.g. with ffmpeg's default autorotate"
        )
    if frame.rotation % 90:
        raise EncodeError(
            f"video {path} is rotated by {frame.rotation} degrees, not a quarter turn; re-encode it upright"
        )
    return (frame.rotation // 90) % 4


def _check_complete(count: int, span: float | None, stream, container, rate: Fraction, path: str) -> None:
    """Refuse a source that decodes to fewer frames than its container records (cut short or damaged)."""
    if stream.frames and count < stream.frames:
        raise EncodeError(f"only {count} of the {stream.frames} frames of {path} decode (damaged or cut short)")
    if stream.frames or span is None:
        return
    # No frame count (WebM, Matroska): compare the time the frames span with the recorded
    # duration. The container's duration is the video's only when no other stream could set it.
    if stream.duration:
        duration = float(stream.duration * stream.time_base)
    elif len(container.streams) == 1 and container.duration:
        duration = container.duration / av.time_base
    else:
        return
    if span < duration - max(2 / rate, 0.05 * duration):
        raise EncodeError(
            f"{path} decodes to {count} frames spanning {span:.2f} s of its recorded "
            f"{duration:.2f} s (damaged or cut short)"
        )


def encode_video(
    frames: np.ndarray,
    codec: Codec,
    fps: float | Fraction = 25,
    quality: int | None = None,
    speed: str | None = None,
    gop: int | None = None,
) -> bytes:
    """Encode ``uint8 [T, H, W, 3]`` RGB frames; the output is deterministic.

    Args:
        frames: the video; H and W must be even for 4:2:0 codecs.
        codec: the output :class:`Codec`.
        fps: frame rate written in the container (see :func:`container_rate`).
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
    rate = container_rate(fps)
    with av.open(buf, "w", format=codec.container, options={"fflags": "+bitexact"}) as out:
        stream = out.add_stream(codec.encoder, rate=rate, options=opts)
        stream.width, stream.height, stream.pix_fmt = w, h, codec.pix_fmt
        stream.thread_count = 1
        for frame in frames:
            out.mux(stream.encode(_video_frame(frame, codec.pix_fmt)))
        out.mux(stream.encode())
    return buf.getvalue()


def container_rate(fps: float | Fraction) -> Fraction:
    """The exact rate written into a packed container (and its JSON ``fps``).

    A float such as 29.97002997002997 becomes 30000/1001 again; denominators are
    kept small enough for every encoder's time base.
    """
    return Fraction(fps).limit_denominator(1 << 16)


def _video_frame(rgb: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    # OpenCV's RGB -> I420 (BT.601, limited range, what decoders assume for untagged
    # streams) rather than libswscale's: it is faster (figure: docs/design/encoding.md).
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

"""What DALI's decoders can decode, and the checks that refuse shards they cannot.

NVDEC's limits come from the driver of the GPU that decodes (``cuvidGetDecoderCaps``
through ctypes), else from :data:`NVDEC_LIMITS`; DALI's CPU decoder reads :data:`CPU_CODECS`.
Invariant: a shard is refused before decoding only with a one-line error naming it and a way out.
``python -m signstream.loaders.nvdec [--device N]`` prints the driver's answer beside the table.
Why the driver is asked, and where the table comes from: docs/design/dali.md.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
from dataclasses import dataclass
from typing import Any

import torch

from signstream import SignstreamError
from signstream.loaders.pyav_backend import probe_size
from signstream.loaders.shards import SampleError, SampleReader, ShardSet

# NVDEC frame-size limits per codec, ((min h, min w), (max h, max w)), for Turing, A100 and Hopper
# GPUs: the fallback when the driver cannot be asked. Maxima as the Video Codec SDK 13.0 NVDEC
# application note's capability table gives them (HEVC and VP9 8192x8192; H.264 8192x8192 only
# from Blackwell, so 4096 here). Minima from the decoder programming guide's capability table.
# The same note lists no AV1 decoding on A100/Hopper (only GA10x, Ada, Blackwell); pack writes
# no AV1, so the entry is for foreign shards.
NVDEC_LIMITS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "h264": ((16, 48), (4096, 4096)),
    "vp8": ((16, 48), (4096, 4096)),
    "hevc": ((144, 144), (8192, 8192)),
    "vp9": ((128, 128), (8192, 8192)),
    "av1": ((128, 128), (8192, 8192)),
}

# cudaVideoCodec values (cuviddec.h) of the codecs shards can hold
CODEC_IDS = {"h264": 4, "hevc": 8, "vp8": 9, "vp9": 10, "av1": 11}
CHROMA_420 = 1  # cudaVideoChromaFormat_420: what pack writes (yuv420p, 8 bit)
# What DALI's CPU video decoder (the PyPI wheel) reads; it has no H.264/HEVC.
CPU_CODECS = {"vp9", "vp8", "mjpeg"}


class DecodeCaps(ctypes.Structure):
    """``CUVIDDECODECAPS``: 88 bytes, the same offsets in SDK 8 to 13 headers (later
    versions gave some reserved bytes names, e.g. the NVDEC count, not read here)."""

    _fields_ = [
        ("eCodecType", ctypes.c_int),
        ("eChromaFormat", ctypes.c_int),
        ("nBitDepthMinus8", ctypes.c_uint),
        ("reserved1", ctypes.c_uint * 3),
        ("bIsSupported", ctypes.c_ubyte),
        ("reserved2", ctypes.c_ubyte * 3),
        ("nMaxWidth", ctypes.c_uint),
        ("nMaxHeight", ctypes.c_uint),
        ("nMaxMBCount", ctypes.c_uint),
        ("nMinWidth", ctypes.c_ushort),
        ("nMinHeight", ctypes.c_ushort),
        ("reserved3", ctypes.c_uint * 11),
    ]


@dataclass(frozen=True)
class Caps:
    """One codec's answer from the driver (8-bit 4:2:0)."""

    codec: str
    supported: bool
    min_hw: tuple[int, int]
    max_hw: tuple[int, int]
    max_macroblocks: int

    def limits(self) -> tuple[tuple[int, int], tuple[int, int]]:
        return self.min_hw, self.max_hw


class _Driver:
    """The two driver libraries and a current context on one GPU (its primary context)."""

    def __init__(self, cuda: Any, cuvid: Any, device: int):
        self.cuda, self.cuvid, self.device = cuda, cuvid, device

    def __enter__(self) -> _Driver:
        self._check(self.cuda.cuInit(0), "cuInit")
        dev = ctypes.c_int()
        self._check(self.cuda.cuDeviceGet(ctypes.byref(dev), self.device), "cuDeviceGet")
        self._dev, self._ctx = dev, ctypes.c_void_p()
        self._check(self.cuda.cuDevicePrimaryCtxRetain(ctypes.byref(self._ctx), dev), "cuDevicePrimaryCtxRetain")
        self._check(self.cuda.cuCtxPushCurrent(self._ctx), "cuCtxPushCurrent")
        return self

    def __exit__(self, *exc: object) -> None:
        popped = ctypes.c_void_p()
        self.cuda.cuCtxPopCurrent(ctypes.byref(popped))
        self.cuda.cuDevicePrimaryCtxRelease(self._dev)

    @staticmethod
    def _check(result: int, call: str) -> None:
        if result != 0:
            raise OSError(f"{call} returned CUDA error {result}")

    def query(self, codec: str) -> Caps:
        caps = DecodeCaps(eCodecType=CODEC_IDS[codec], eChromaFormat=CHROMA_420, nBitDepthMinus8=0)
        self._check(self.cuvid.cuvidGetDecoderCaps(ctypes.byref(caps)), "cuvidGetDecoderCaps")
        return Caps(
            codec,
            bool(caps.bIsSupported),
            (int(caps.nMinHeight), int(caps.nMinWidth)),
            (int(caps.nMaxHeight), int(caps.nMaxWidth)),
            int(caps.nMaxMBCount),
        )


def _libraries() -> tuple[Any, Any]:
    return ctypes.CDLL("libcuda.so.1"), ctypes.CDLL("libnvcuvid.so.1")


def query_caps(device: int = 0, libraries: tuple[Any, Any] | None = None) -> dict[str, Caps] | None:
    """Every codec of :data:`CODEC_IDS` as the driver reports it on GPU ``device``.

    ``None`` when the driver libraries are missing or a call fails (no GPU,
    no video library in the container): callers then use :data:`NVDEC_LIMITS`.
    """
    try:
        cuda, cuvid = libraries or _libraries()
        with _Driver(cuda, cuvid, device) as driver:
            return {codec: driver.query(codec) for codec in CODEC_IDS}
    except (OSError, AttributeError):
        return None


@functools.cache
def decoder_caps(device: int = 0) -> dict[str, Caps] | None:
    """:func:`query_caps`, asked once per GPU and process."""
    return query_caps(device)


def nvdec_limits(codec: str, device: int | None = None) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``((min h, min w), (max h, max w))`` NVDEC decodes for ``codec``.

    From the driver of GPU ``device`` when it can be asked, else from
    :data:`NVDEC_LIMITS`; ``None`` for a codec neither knows.
    """
    caps = decoder_caps(device) if device is not None else None
    if caps is not None and codec in caps and caps[codec].supported:
        return caps[codec].limits()
    return NVDEC_LIMITS.get(codec)


def unsupported_codec_error(codec: str, device: int, where: str) -> str | None:
    """One line when the driver says GPU ``device``'s NVDEC cannot decode 8-bit 4:2:0 ``codec``."""
    caps = decoder_caps(device)
    if caps is None or codec not in caps or caps[codec].supported:
        return None
    return (
        f"{where}: the NVDEC engines of GPU {device} cannot decode {codec} (the driver says so); "
        f"repack with signstream pack --codec vp9, or use device='cpu' / backend='pyav'"
    )


def check_codecs(shardset: ShardSet, device: str) -> None:
    """Refuse shards whose codec DALI's decoder on ``device`` cannot read, before any decoding.

    Args:
        shardset: the resolved shards.
        device: the loader's device; on the CPU DALI reads only :data:`CPU_CODECS`
            (on CUDA the driver's answer is checked by :func:`check_nvdec_sizes`).

    Raises:
        SignstreamError: one line naming the split, the codec and what to use instead.
    """
    if torch.device(device).type == "cuda":
        return
    bad = sorted(shardset.codecs - CPU_CODECS)
    if bad:
        raise SignstreamError(
            f"{shardset.origin}: DALI's CPU video decoder cannot decode {'/'.join(bad)}; "
            f"use backend='pyav', device='cuda', or repack the shards as VP9 (signstream pack --codec vp9)"
        )


def nvdec_size_error(codec: str, height: int, width: int, where: str, device: int | None = None) -> str | None:
    """The one-line reason NVDEC cannot decode a ``height x width`` video (``None`` if it can).

    Args:
        codec: the video codec.
        height: coded frame height.
        width: coded frame width.
        where: what the message names first (shard, sample).
        device: the GPU whose driver gives the limits; ``None`` (or a driver that cannot be
            asked): :data:`NVDEC_LIMITS`.
    """
    limits = nvdec_limits(codec, device)
    if limits is None:
        return None
    (min_h, min_w), (max_h, max_w) = limits
    if min_h <= height <= max_h and min_w <= width <= max_w:
        return None
    return (
        f"{where}: {height}x{width} {codec} frames are outside NVDEC's limits for {codec} "
        f"({min_h}x{min_w} to {max_h}x{max_w}, height x width); repack with "
        f"signstream pack --resize HxW, or use device='cpu' / backend='pyav'"
    )


def check_nvdec_sizes(shardset: ShardSet, device: int | None = None) -> None:
    """Refuse, before any decoding, shards NVDEC cannot decode.

    That is a codec the driver of GPU ``device`` says it lacks, or frames outside
    its limits (checked on the first sample of each shard).

    Raises:
        SignstreamError: one line naming the shard (and sample) and the way out.
    """
    codec = next(iter(shardset.codecs)) if len(shardset.codecs) == 1 else None
    if device is not None and codec is not None:
        why = unsupported_codec_error(codec, device, shardset.origin)
        if why:
            raise SignstreamError(why)
    if nvdec_limits(codec, device) is None:
        return
    with SampleReader(shardset) as reader:
        for shard in shardset.shards:
            for ref in shard.samples[:1]:
                try:
                    data, meta, _ = reader.read(ref)
                    h, w = (int(meta["height"]), int(meta["width"])) if "height" in meta else probe_size(data)
                except (SampleError, KeyError, TypeError, ValueError):
                    continue  # a damaged first sample is skipped later, not a size problem
                why = nvdec_size_error(codec, h, w, f"{shard.path.name} (sample {ref.key})", device)
                if why:
                    raise SignstreamError(why)


def report(device: int = 0) -> str:
    """The driver's answer beside the fallback table, one codec per line."""
    caps = query_caps(device)
    if caps is None:
        return f"GPU {device}: the driver could not be asked (no libcuda.so.1 / libnvcuvid.so.1, or no GPU)"
    lines = [f"GPU {device}, 8-bit 4:2:0 | supported | min HxW | max HxW | max macroblocks | table min / max"]
    for codec, c in caps.items():
        table = NVDEC_LIMITS.get(codec)
        tab = f"{table[0][0]}x{table[0][1]} / {table[1][0]}x{table[1][1]}" if table else "-"
        lines.append(
            f"{codec} | {c.supported} | {c.min_hw[0]}x{c.min_hw[1]} | {c.max_hw[0]}x{c.max_hw[1]} "
            f"| {c.max_macroblocks} | {tab}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="What NVDEC on a GPU decodes, as its driver reports it.")
    parser.add_argument("--device", type=int, default=0, help="GPU index (default 0)")
    print(report(parser.parse_args(argv).device))


if __name__ == "__main__":
    main()

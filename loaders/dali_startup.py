"""How DALI's video decoder starts: its size for the host, whether it works at all, and
the one line when it does not.

Sizing: :func:`resolve_decoder_threads`, :func:`default_batches_per_run`. A dead decoder fails
every iteration like a corrupt video fails one; :func:`reference_clip` tells them apart, and
:func:`dead_decoder_error` is the one line. Invariant: no DALI or torch import here, so all of
this is tested without a GPU. Why: docs/design/dali.md.
"""

from __future__ import annotations

import functools
import io
import re

import numpy as np

from signstream import SignstreamError
from signstream.loaders.cpu import available_cores, local_processes

# ------------------------------------------------------------- sizing for the host
# Default user batches per DALI iteration. CPU: enough batches for about CPU_CLIPS_PER_RUN clips, so
# one long clip does not leave DALI's threads idle (more frames/s than 1 batch per run at batch size 2,
# the same at batch size 8; benchmarks/loaders.py keeps a "1 batch per DALI run" row beside the default);
# peak memory grows with the clips in flight, so no more than that. CUDA: CUDA_CLIPS_PER_THREAD clips
# per decoder thread: DALI's mixed video decoder works one clip per thread of its pool, so an iteration
# of one clip per thread idles every thread that drew a short clip until the longest one is done; with
# two each, the pool stays busy. GPU memory grows with the clips in flight (dali_pipeline.PREFETCH_RUNS
# + 1 iterations of output): lower batches_per_run or decoder_threads on a small GPU.
CPU_CLIPS_PER_RUN = 8
CUDA_CLIPS_PER_THREAD = 2
# DALI's threads on CUDA when the caller names none, at most: the cap of every default worker count
# here (make_loader's num_workers); benchmarks/gpu_proof.sh measures NVDEC at 1 thread and at this.
MAX_DECODER_THREADS = 8


def default_batches_per_run(batch_size: int, cuda: bool, threads: int = 1) -> int:
    """User batches per DALI iteration when the caller does not choose.

    Args:
        batch_size: clips per user batch.
        cuda: decoding with NVDEC (``True``) or DALI's CPU decoder.
        threads: DALI's threads (CUDA: the iteration holds at least
            :data:`CUDA_CLIPS_PER_THREAD` clips for each).
    """
    if cuda:
        return max(1, -(-CUDA_CLIPS_PER_THREAD * max(1, threads) // max(1, batch_size)))
    return max(1, CPU_CLIPS_PER_RUN // max(1, batch_size))


def resolve_decoder_threads(
    cuda: bool, num_workers: int, override: int | None = None, *, cores: int | None = None, processes: int | None = None
) -> int:
    """DALI's thread count: ``override`` when given, else the default for the device.

    CUDA: this process's share of the host, ``min(MAX_DECODER_THREADS, cores // processes)``,
    whatever ``num_workers`` says. ``num_workers`` counts PyAV worker processes and the
    recipes default it to 1; tied to it, NVDEC would get one clip at a time on a 16-core host.
    CPU: ``num_workers`` (at least 1), because there DALI's threads are the decoding
    workers, and the recipes' torch thread policy counts them as such.

    Args:
        cuda: decoding with NVDEC.
        num_workers: the loader's ``num_workers``.
        override: the ``decoder_threads`` option (``None``: the default).
        cores: CPUs this process may use (default: :func:`available_cores`).
        processes: ranks sharing them (default: :func:`local_processes`, from the launcher).
    """
    if override is not None:
        if int(override) < 1:
            raise SignstreamError(f"decoder_threads must be >= 1, got {override}")
        return int(override)
    if not cuda:
        return max(1, int(num_workers or 1))
    cores = available_cores() if cores is None else cores
    processes = local_processes() if processes is None else processes
    return max(1, min(MAX_DECODER_THREADS, cores // max(1, processes)))


# ------------------------------------------------------ a decoder that cannot start
REFERENCE_FRAMES = 4
REFERENCE_SIDE = 128  # NVDEC's smallest VP9 frame; H.264's minimum is smaller

# (substrings of DALI's error text, lower case) -> what the user can do about that cause.
# First match wins, so the specific causes come before the generic "cannot create a decoder".
CAUSES: tuple[tuple[tuple[str, ...], str], ...] = (
    (
        ("libnvcuvid", "nvcuvid.so"),
        "the driver's video-decode library libnvcuvid.so.1 is missing (in a container, start it with "
        "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video, or install the full NVIDIA driver)",
    ),
    (
        ("out of memory", "out_of_memory", "memoryallocation", "insufficient memory", "bad_alloc"),
        "the GPU is out of memory (free it, or lower batch_size, batches_per_run or decoder_threads)",
    ),
    (
        (
            "driver version is insufficient",
            "insufficientdriver",
            "insufficient driver",
            "libcuda.so",
            "cuda driver is not installed",
            "failed to load cuda driver",
        ),
        "the CUDA driver is missing or older than this DALI build needs (update the driver, or install "
        "the nvidia-dali wheel for the CUDA version nvidia-smi reports)",
    ),
    (
        (
            "no cuda-capable device",
            "cuda_error_no_device",
            "failed to create video decoder",
            "decoder hardware does not support",
            "cuda_error_not_supported",
        ),
        "this GPU has no usable NVDEC engine (a MIG slice needs a profile with media engines, e.g. "
        "1g.18gb+me or a whole GPU; python -m signstream.loaders.nvdec shows what the driver reports)",
    ),
)


def dali_reason(exc: BaseException) -> str:
    """DALI's error condensed to one line: what follows ``encountered:``, without DALI's context lines."""
    text = str(exc).split("encountered:", 1)[-1]
    lines = [
        ln.strip()
        for ln in text.splitlines()
        if ln.strip() and not ln.strip().startswith(("C++ context", "Current pipeline object"))
    ]
    reason = re.sub(r'^Assert on ".*?" failed: ', "", " ".join(lines) or type(exc).__name__)
    return f"DALI: {reason}"[:300]


def cause_hint(*texts: str) -> str | None:
    """The way out for the first known cause named in DALI's error ``texts``; ``None`` if none is known."""
    haystack = " ".join(texts).lower()
    for needles, hint in CAUSES:
        if any(n in haystack for n in needles):
            return hint
    return None


def dead_decoder_error(errors: list[BaseException], device_id: int | None, *, stage: str) -> str:
    """The one line for a decoder that cannot decode anything (not even the reference clip).

    Args:
        errors: DALI's errors, the one that raised the alarm first (its reason is quoted).
        device_id: the GPU (``None``: DALI's CPU decoder).
        stage: when it failed, appended to the first words, e.g. ``", even for a reference clip"``.
    """
    where = f"NVDEC decoding fails on GPU {device_id}" if device_id is not None else "DALI's CPU video decoder fails"
    hint = cause_hint(*(str(e) for e in errors))
    if hint is None:
        hint = (
            "check the driver and the GPU's NVDEC engines (python -m signstream.loaders.nvdec)"
            if device_id is not None
            else "check the nvidia-dali installation"
        )
    reasons = " / ".join(dict.fromkeys(dali_reason(e) for e in errors))
    return f"{where}{stage}: {reasons}; {hint}; or use backend='pyav'"


def reference_codec(shard_codecs: set[str], cuda: bool) -> str:
    """The codec of the reference clip: H.264 for H.264 shards on CUDA, VP9 otherwise.

    VP9 is the one codec every decoder here reads (DALI's CPU decoder lacks H.264);
    on a GPU, H.264 shards are checked with an H.264 clip so a GPU whose NVDEC
    lacks VP9 is not called dead.
    """
    return "h264" if cuda and shard_codecs == {"h264"} else "vp9"


@functools.cache
def reference_clip(codec: str = "vp9", height: int = REFERENCE_SIDE, width: int = REFERENCE_SIDE) -> bytes:
    """A short, valid ``codec`` video (a moving gradient) that every working decoder reads.

    Made once per process with PyAV's encoders (libvpx / libx264), a few milliseconds.
    """
    import av

    container, encoder, options = {
        "vp9": ("webm", "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "b": "0", "crf": "40"}),
        "h264": ("mp4", "libx264", {"preset": "ultrafast", "crf": "30"}),
    }[codec]
    y, x = np.mgrid[0:height, 0:width]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(encoder, rate=25, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.thread_count = 1
        for t in range(REFERENCE_FRAMES):
            rgb = np.stack([(x + 8 * t) % 256, (y + 4 * t) % 256, (x + y) // 2 % 256], axis=-1).astype(np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")))
        out.mux(stream.encode())
    return buf.getvalue()


def reference_inputs(codec: str, height: int = REFERENCE_SIDE, width: int = REFERENCE_SIDE) -> dict[str, np.ndarray]:
    """Every per-sample graph input for decoding the whole reference clip at its own size."""
    frames = np.arange(REFERENCE_FRAMES, dtype=np.int32)
    return {
        "encoded": np.frombuffer(reference_clip(codec, height, width), np.uint8),
        "frames": frames,
        "order": frames.copy(),
        "roi_start": np.zeros(2, np.float32),
        "roi_end": np.array([height, width], np.float32),
        "size": np.array([height, width], np.float32),
        "mirror": np.array(0, np.int32),
        "jitter": np.ones(3, np.float32),
    }

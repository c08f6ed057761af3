"""DALI backend: one streaming DALI pipeline per loader, fed by a source callback.

::

    samples of the epoch -> split by rank -> shuffle (replayed in training)   (the PyAV stages)
        -> read by offset + plan -> batch (optionally length-bucketed)
        -> source callback: ``batches_per_run`` user batches per DALI iteration
           (CPU: ~8 clips; CUDA: 2 clips per decoder thread, up to 8 threads whatever num_workers says)
    DALI (pipelined async executor, prefetch queue of PREFETCH_RUNS iterations):
        fn.external_source(source=feed, batch=True) -> fn.decoders.video(frames=plan)  [cpu | mixed]
          postprocess="dali":   -> fn.resize(ROI) -> jitter -> fn.sequence_rearrange
                                   -> fn.crop_mirror_normalize(float32 | float16) -> [C, T, H, W]
          postprocess="opencv": native-size RGB frames, then crop + resize + normalise with
                                OpenCV in a small thread pool (CPU only; see below)
        -> torch [B, C, T, H, W]; on CUDA copied on the current stream, no host sync

Why the samples are read in Python and not by ``fn.readers.webdataset``: the
frames to decode depend on each sample's JSON and the Transform's random
draws, which must be known before the decoder runs; and DALI's reader cannot
skip a damaged tar member (it raises and the run dies), so recovery would be
impossible. Reading by offset through the index is the same code the PyAV
backend uses, which also makes both backends hand the same samples to the same
rank in the same order (exactly-once eval, equal train batches).

Why OpenCV after DALI on the CPU: DALI's CPU ``fn.resize`` costs about twice
DALI's own VP9 decode per frame at 224 px, whatever its settings; OpenCV's
bilinear resize does the same work in a tenth of the time and releases the
GIL, so a thread pool overlaps it with DALI's next iteration. The ``dali``
postprocess stays available on the CPU: it is the CPU twin of the CUDA graph,
so the tests exercise that graph without a GPU.

Corrupt samples: a failing iteration does not stop the pipeline (DALI 2.x
reports the error for that iteration only); its samples are retried one at a
time in a small synchronous pipeline, the bad ones are skipped and recorded
(key, shard, DALI's message) and the rest are delivered. A decoder that cannot
decode at all (no libnvcuvid, no NVDEC engine, no GPU memory) fails every
iteration the same way; so when an iteration fails before anything was decoded,
or several samples in a row fail alone, the decoder must first decode a
reference clip (:mod:`signstream.loaders.dali_startup`): if it cannot, the
loader raises one line naming the cause, instead of skipping the whole split.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from typing import Any

import numpy as np
import torch
import webdataset as wds

from signstream import SignstreamError, lookup
from signstream.loaders import remote
from signstream.loaders.base import BaseLoader, train_batches
from signstream.loaders.batch import (
    Batch,
    check_frame_sizes,
    group_batches,
    mask_padding,
    normalize_clip,
)
from signstream.loaders.dali_startup import (
    REFERENCE_SIDE,
    dali_reason,
    dead_decoder_error,
    default_batches_per_run,
    reference_codec,
    reference_inputs,
    resolve_decoder_threads,
)
from signstream.loaders.nvdec import nvdec_limits, unsupported_codec_error
from signstream.loaders.pyav_backend import (
    Planned,
    epoch_order,
    passes,
    plan_from_meta,
    probe_size,
    take_range,
)
from signstream.loaders.shards import SampleError, SampleReader, ShardSet, rank_range
from signstream.loaders.stats import HANDLERS, Report, Skipped
from signstream.loaders.transform import PADS, Transform, emit_frame, resize_frame, size_mismatch

CPU_CODECS = {"vp9", "vp8", "mjpeg"}
POSTPROCESS = ("auto", "opencv", "dali")
PREFETCH_RUNS = 2  # DALI iterations decoded ahead of the one being consumed
# Samples in a row that may fail alone before the decoder itself is checked again (with the reference
# clip): bounds what a decoder dying mid-run costs (one probe build per sample) before it is one line.
PROBES_BEFORE_CHECK = 4


def check_codecs(shardset: ShardSet, device: str) -> None:
    """DALI's CPU decoder reads VP8/VP9/MJPEG only; fail early with what to do instead."""
    if torch.device(device).type == "cuda":
        return
    bad = sorted(shardset.codecs - CPU_CODECS)
    if bad:
        raise SignstreamError(
            f"{shardset.origin}: DALI's CPU video decoder cannot decode {'/'.join(bad)}; "
            f"use backend='pyav', device='cuda', or repack the shards as VP9 (signstream pack --codec vp9)")


def nvdec_size_error(codec: str, height: int, width: int, where: str, device: int | None = None) -> str | None:
    """The one-line reason NVDEC cannot decode a ``height x width`` video (``None`` if it can).

    The limits are GPU ``device``'s as its driver reports them, or the
    documented table (:data:`signstream.loaders.nvdec.NVDEC_LIMITS`) when no device is given or the
    driver cannot be asked.
    """
    limits = nvdec_limits(codec, device)
    if limits is None:
        return None
    (min_h, min_w), (max_h, max_w) = limits
    if min_h <= height <= max_h and min_w <= width <= max_w:
        return None
    return (f"{where}: {height}x{width} {codec} frames are outside NVDEC's limits for {codec} "
            f"({min_h}x{min_w} to {max_h}x{max_w}, height x width); repack with "
            f"signstream pack --resize HxW, or use device='cpu' / backend='pyav'")


def check_nvdec_sizes(shardset: ShardSet, device: int | None = None) -> None:
    """Refuse, before any decoding, shards NVDEC cannot decode: a codec the driver of GPU
    ``device`` says it lacks, or frames outside its limits (first sample of each shard)."""
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


# ------------------------------------------------------------------- the graph
def dali_postprocess(video, order, roi_start, roi_end, size, mirror, jitter, *, transform: Transform):
    """The Transform as DALI operators on decoded frames (plain function on data nodes)."""
    from nvidia.dali import fn, types

    video = fn.resize(video, size=size, roi_start=roi_start, roi_end=roi_end, roi_relative=False,
                      interp_type=types.INTERP_LINEAR, antialias=True)
    if jitter is not None:
        video = fn.brightness_contrast(video, brightness=jitter[0], contrast=jitter[1], contrast_center=128.0)
        video = fn.color_twist(video, saturation=jitter[2])
    video = fn.sequence_rearrange(video, new_order=order)  # repeats + padding to the batch's T
    if transform.output != "uint8":
        mean, std = transform.mean_std()
        dtype = types.FLOAT16 if transform.output == "float16" else types.FLOAT
        return fn.crop_mirror_normalize(video, mirror=mirror, mean=mean.tolist(), std=std.tolist(),
                                        dtype=dtype, output_layout="CFHW")
    video = fn.flip(video, horizontal=mirror)
    return fn.transpose(video, perm=[3, 0, 1, 2], output_layout="CFHW")


# name -> (DALI type, ndim) of every per-sample input, by postprocess
_INPUTS = {"encoded": ("UINT8", 1), "frames": ("INT32", 1), "order": ("INT32", 1),
           "roi_start": ("FLOAT", 1), "roi_end": ("FLOAT", 1), "size": ("FLOAT", 1), "mirror": ("INT32", 0),
           "jitter": ("FLOAT", 1)}


def input_names(postprocess: str, transform: Transform) -> list[str]:
    """The per-sample inputs the graph of ``postprocess`` takes."""
    if postprocess == "opencv":
        return ["encoded", "frames"]
    names = [n for n in _INPUTS if n != "jitter"]
    return names + ["jitter"] if transform.colour_jitter > 0 else names


def build_pipeline(names: list[str], *, postprocess: str, transform: Transform, batch_size: int,
                   num_threads: int, device_id: int | None, source: Callable | None = None):
    """The decode pipeline: streaming from ``source`` (a batch callback), or fed by name when ``None``."""
    from nvidia.dali import fn, pipeline_def, types

    dtypes = [getattr(types, _INPUTS[n][0]) for n in names]
    ndims = [_INPUTS[n][1] for n in names]

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  prefetch_queue_depth=PREFETCH_RUNS if source is not None else 1, exec_dynamic=True)
    def decode():
        if source is not None:
            nodes = fn.external_source(source=source, num_outputs=len(names), batch=True, dtype=dtypes, ndim=ndims)
        else:
            nodes = [fn.external_source(name=n, dtype=t, ndim=d) for n, t, d in zip(names, dtypes, ndims)]
        inputs = dict(zip(names, nodes))
        video = fn.decoders.video(inputs["encoded"], frames=inputs["frames"], pad_mode="none",
                                  device="mixed" if device_id is not None else "cpu")
        if postprocess == "opencv":
            return video
        return dali_postprocess(video, *(inputs.get(n) for n in list(_INPUTS)[2:]), transform=transform)

    pipe = decode()
    pipe.build()
    return pipe


def sample_inputs(p: Planned, t: int) -> dict[str, np.ndarray]:
    """One sample's graph inputs; ``t`` is its batch's T (the order is padded to it)."""
    unique, order = p.plan.unique_frames()
    y0, x0, h, w = p.plan.box
    return {"encoded": np.frombuffer(p.data, np.uint8), "frames": unique.astype(np.int32),
            "order": np.pad(order, (0, t - len(order)), mode="edge").astype(np.int32),
            "roi_start": np.array([y0, x0], np.float32), "roi_end": np.array([y0 + h, x0 + w], np.float32),
            "size": np.array(p.plan.out_hw, np.float32), "mirror": np.array(int(p.plan.flip), np.int32),
            "jitter": np.array(p.plan.jitter or (1.0, 1.0, 1.0), np.float32)}


class Feed:
    """The source callback: each call returns the next DALI iteration (several user batches).

    The groups handed to DALI and not yet consumed are kept in order in
    ``inflight`` (DALI returns iterations in the order it asked for them).
    """

    def __init__(self, names: list[str], transform: Transform, per_run: int):
        self.names, self.transform, self.per_run = names, transform, per_run
        self.groups: Iterator[list[Planned]] = iter(())
        self.inflight: deque[list[list[Planned]]] = deque()

    def __call__(self) -> tuple[list[np.ndarray], ...]:
        run = list(islice(self.groups, self.per_run))
        if not run:
            raise StopIteration
        self.inflight.append(run)
        columns: tuple[list[np.ndarray], ...] = tuple([] for _ in self.names)
        for group in run:
            t = self.transform.batch_frames(max(p.plan.length for p in group))
            for p in group:
                inputs = sample_inputs(p, t)
                for column, name in zip(columns, self.names):
                    column.append(inputs[name])
        return columns


# --------------------------------------------------------------------- loader
class DaliLoader(BaseLoader):
    """Loader over VP9/MJPEG (CPU) or any NVDEC codec (CUDA) shards with one DALI pipeline.

    Args:
        shardset: the resolved shards.
        num_workers: make_loader's worker count: DALI's threads on the CPU when
            ``decoder_threads`` is not given (on CUDA it does not count).
        decoder_threads: DALI's threads (and the OpenCV pool's size on the CPU);
            default: :func:`resolve_decoder_threads` (CUDA: the host's share, up to 8).
        bucket: length-bucketing buffer in batches (0 = off).
        batches_per_run: user batches decoded by one DALI iteration (default:
            :func:`default_batches_per_run`: CUDA: 2 clips per decoder thread).
        postprocess: ``opencv`` (CPU), ``dali`` (DALI operators; the only choice on
            CUDA) or ``auto`` (``dali`` on CUDA, ``opencv`` on the CPU).
    """

    backend = "dali"

    def __init__(self, shardset: ShardSet, *, num_workers: int = 1, decoder_threads: int | None = None,
                 bucket: int = 0, batches_per_run: int | None = None, postprocess: str = "auto", **common: Any):
        super().__init__(**common)
        check_codecs(shardset, self.device)
        remote.check_dali(shardset)
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise SignstreamError("backend='dali' needs the nvidia-dali package") from None
        if postprocess not in POSTPROCESS:
            raise SignstreamError(f"postprocess must be one of {POSTPROCESS}, got {postprocess!r}")
        self.device_id = self._device_index()
        cuda = self.device_id is not None
        self.num_threads = resolve_decoder_threads(cuda, num_workers, decoder_threads)
        if batches_per_run is None:
            batches_per_run = default_batches_per_run(self.batch_size, cuda=cuda, threads=self.num_threads)
        if batches_per_run < 1:
            raise SignstreamError(f"batches_per_run must be >= 1, got {batches_per_run}")
        if self.device_id is not None:
            if postprocess == "opencv":
                raise SignstreamError("postprocess='opencv' runs on the CPU; on CUDA use 'dali' (or 'auto')")
            check_nvdec_sizes(shardset, self.device_id)
        self.postprocess = postprocess if postprocess != "auto" else ("dali" if self.device_id is not None
                                                                        else "opencv")
        self.shardset, self.bucket = shardset, bucket
        self.batches_per_run = batches_per_run
        self.names = input_names(self.postprocess, self.transform)
        self._pipe = self._probe = None
        self._feed = Feed(self.names, self.transform, batches_per_run)
        self._pool_threads: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._pending, self._streak = Report(), 0
        # Whether this loader's decoder has decoded anything yet (an iteration or the reference
        # clip), and the samples that failed alone in a row since: see _check_decoder.
        self._decodes, self._failed_probes = False, 0

    def _device_index(self) -> int | None:
        """GPU index from the device string (``cuda:1`` decodes on GPU 1); ``None`` on the CPU."""
        device = torch.device(self.device)
        if device.type != "cuda":
            return None
        index = torch.cuda.current_device() if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise SignstreamError(f"device={self.device!r} but only {torch.cuda.device_count()} CUDA device(s)")
        return index

    def __len__(self) -> int:
        """Batches per epoch on this rank (eval: before any skips)."""
        if self.train:
            return train_batches(self.shardset.num_samples, self.world, self.batch_size)
        r0, r1 = rank_range(self.shardset.num_samples, self.rank, self.world)
        return -(-(r1 - r0) // self.batch_size)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "postprocess": self.postprocess, "batches_per_run": self.batches_per_run,
                "decoder_threads": self.num_threads}

    # -- reading and planning (the same stages as the PyAV backend) --------------
    def _groups(self, epoch: int, reader: SampleReader) -> wds.DataPipeline:
        refs = epoch_order(self.shardset, epoch, self.seed, self.shuffle)
        r0, r1 = rank_range(len(refs), self.rank, self.world)
        self._share = r1 - r0
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, self.rank, 0])
        return wds.DataPipeline(
            lambda: iter(refs),
            take_range(r0, r1),                          # split by node (rank)
            passes(self.train, self.shuffle, rng),       # shuffle (and replay when training)
            self._read(reader, epoch),                   # read by offset, plan
            lambda src: group_batches(src, self.batch_size, bucket=self.bucket, rng=rng,
                                      length=lambda p: p.plan.length),
        )

    def _read(self, reader: SampleReader, epoch: int) -> Callable[[Iterator], Iterator[Planned]]:
        def stage(src: Iterator) -> Iterator[Planned]:
            for ref, pass_ in src:
                try:
                    data, meta, nbytes = reader.read(ref)
                    self._pending.bytes_read += nbytes
                    plan = plan_from_meta(meta, ref.key, data, self.transform, train=self.train,
                                          seed=self.seed, epoch=epoch, pass_=pass_)
                    if self.postprocess == "dali":  # DALI crops before Python sees a frame: check first
                        h, w = probe_size(data)
                        why = size_mismatch(plan, h, w)
                        if why:
                            raise SampleError(why)
                        if self.device_id is not None:
                            limit = nvdec_size_error(next(iter(self.shardset.codecs)), h, w,
                                                     f"{self.shardset.shard_of(ref)} (sample {ref.key})",
                                                     self.device_id)
                            if limit:
                                raise SignstreamError(limit)
                except SampleError as exc:
                    self._skip(ref, str(exc))
                    continue
                yield Planned(ref, data, meta, plan)
        return stage

    def _skip(self, ref, reason: str) -> None:
        record = Skipped(ref.key, self.shardset.shard_of(ref), reason)
        self._pending.skipped.append(record)
        lookup(HANDLERS, self.handler, "handler")(record)
        # Training replays the share forever: stop after two passes without a good sample.
        self._streak += 1
        if self.train and self._streak > 2 * max(1, self._share):
            raise SignstreamError(f"no readable sample in rank {self.rank}'s share of {self.shardset.origin} "
                                  f"(last: {record.key} in {record.shard}: {reason})")

    # -- the streaming loop ------------------------------------------------------
    def _epoch(self, epoch: int) -> Iterator[tuple[Batch | None, Report]]:
        self._pending, self._streak = Report(), 0
        clean = False
        with SampleReader(self.shardset) as reader:
            self._feed.groups = iter(self._groups(epoch, reader))
            self._feed.inflight.clear()
            if self._pipe is None:
                self._pipe = self._build(self.batches_per_run * self.batch_size, self._feed)
            batches = self._stream()
            if self.train:  # count delivered batches: a wholly corrupt group must not shorten the epoch
                batches = islice(batches, train_batches(self.shardset.num_samples, self.world, self.batch_size))
            try:
                for batch in batches:
                    report, self._pending = self._pending, Report()
                    yield batch, report
                clean = not self.train
            finally:
                if self._pool_threads is not None:  # no idle threads left behind between epochs
                    self._pool_threads.shutdown(wait=True)
                    self._pool_threads = None
                if clean:
                    self._pipe.reset()  # reached the end: ready for the next epoch
                else:
                    self._pipe = None  # iterations still queued (training, or the caller stopped early)
        yield None, self._pending

    def _build(self, batch_size: int, source: Callable | None):
        try:
            return build_pipeline(self.names, postprocess=self.postprocess, transform=self.transform,
                                  batch_size=batch_size, num_threads=self.num_threads,
                                  device_id=self.device_id, source=source)
        except RuntimeError as exc:  # no pipeline at all: no sample could ever decode
            raise SignstreamError(dead_decoder_error([exc], self.device_id, stage=" (building DALI's pipeline)")) \
                from None

    def _stream(self) -> Iterator[Batch]:
        while True:
            # the caller's stream at this iteration (it may switch streams between batches)
            stream = torch.cuda.current_stream(self.device_id) if self.device_id is not None else None
            try:
                (out,) = self._pipe.run(stream) if stream is not None else self._pipe.run()
            except StopIteration:
                return
            except RuntimeError as exc:
                if not self._feed.inflight:
                    raise SignstreamError(f"DALI pipeline failed: {dali_reason(exc)}") from None
                if not self._decodes:  # nothing decoded yet: a dead decoder fails here, once
                    self._check_decoder(exc)
                for group in self._feed.inflight.popleft():
                    batch = self._recover(group)
                    if batch is not None:
                        yield batch
                continue
            self._decodes, self._failed_probes = True, 0
            run = self._feed.inflight.popleft()
            starts = np.cumsum([0] + [len(group) for group in run]).tolist()
            batches: Iterator[Batch | None] | list[Batch | None] = (
                self._assemble(group, [out[s + j] for j in range(len(group))]) for group, s in zip(run, starts))
            if stream is not None:
                # Copy the whole iteration now, on the stream DALI bound its outputs to: once
                # ``out`` is released DALI reuses its memory in that stream's order, so a later
                # copy on another stream (the caller's next one) could read reused memory.
                batches = list(batches)
                del out
            yield from (batch for batch in batches if batch is not None)

    def _recover(self, group: list[Planned]) -> Batch | None:
        """Decode a failed group's samples one at a time; skip (and name) the ones DALI refuses."""
        t = self.transform.batch_frames(max(p.plan.length for p in group))
        good, outs = [], []
        for p in group:
            if self._probe is None:
                self._probe = self._build(1, None)
            try:
                result = self._run_probe(sample_inputs(p, t))
            except RuntimeError as exc:
                self._probe = None  # do not trust a pipeline that just failed
                self._failed_probes += 1
                if self._failed_probes >= PROBES_BEFORE_CHECK:  # many in a row: is the decoder dead?
                    self._check_decoder(exc)
                self._skip(p.ref, dali_reason(exc))
                continue
            self._failed_probes = 0
            good.append(p)
            outs.append(result)  # keeps the output alive until it is copied
        if not good:
            return None
        return self._assemble(good, [result[0][0] for result in outs], t=t)

    def _run_probe(self, inputs: dict[str, np.ndarray]):
        """One sample through the probe pipeline (outputs on the current stream on CUDA)."""
        stream = torch.cuda.current_stream(self.device_id) if self.device_id is not None else None
        return self._probe.run(stream, **{n: [inputs[n]] for n in self.names})

    def _check_decoder(self, failure: RuntimeError) -> None:
        """Raise the one line for a dead decoder unless it decodes the reference clip.

        Called when an iteration fails before anything was decoded, and after
        :data:`PROBES_BEFORE_CHECK` samples in a row failed alone: a corrupt
        video fails by itself, a decoder that cannot start (no libnvcuvid, no
        NVDEC engine, no memory) fails the reference clip too. Leaves a working
        probe pipeline behind, so the check costs no extra build.
        """
        codec = reference_codec(self.shardset.codecs, cuda=self.device_id is not None)
        side = REFERENCE_SIDE
        if self.device_id is not None:  # at least the GPU's smallest frame, in whole macroblocks
            (min_h, min_w), _ = nvdec_limits(codec, self.device_id) or ((side, side), None)
            side = -(-max(side, min_h, min_w) // 16) * 16
        self._probe = self._build(1, None)
        try:
            self._run_probe(reference_inputs(codec, side, side))
        except RuntimeError as exc:
            self._probe = None
            raise SignstreamError(dead_decoder_error([failure, exc], self.device_id,
                                                     stage=", even for a reference clip")) from None
        self._decodes, self._failed_probes = True, 0

    # -- outputs to torch --------------------------------------------------------
    def _assemble(self, group: list[Planned], outs: list, t: int | None = None) -> Batch | None:
        """One user batch from its samples' DALI outputs."""
        check_frame_sizes([p.plan.out_hw for p in group], [p.ref.key for p in group])
        t = t or self.transform.batch_frames(max(p.plan.length for p in group))
        if self.postprocess == "dali":
            video = self._copy_out(outs, (len(group), 3, t, *group[0].plan.out_hw))
        else:
            video, group = self._opencv(group, outs, t)
            if not group:
                return None
        self._streak = 0
        lengths = torch.tensor([p.plan.length for p in group], dtype=torch.int64)
        return Batch(video, lengths, [p.ref.key for p in group], [p.meta for p in group])

    def _copy_out(self, outs: list, shape: tuple[int, ...]) -> torch.Tensor:
        """DALI's per-sample outputs into one torch tensor.

        On CUDA the copies are queued on the current stream (the one the outputs
        were bound to by ``run``) and the host does not wait for them:
        ``feed_ndarray`` with a stream copies non-blocking, and the tensor, made
        by torch's allocator on that stream, is safe to use in stream order.
        """
        from nvidia.dali.plugin.pytorch import feed_ndarray

        dtype = {"float": torch.float32, "float16": torch.float16, "uint8": torch.uint8}[self.transform.output]
        if self.device_id is None:
            video = torch.empty(shape, dtype=dtype)
            for j, out in enumerate(outs):
                feed_ndarray(out, video[j])
            return video
        video = torch.empty(shape, dtype=dtype, device=torch.device("cuda", self.device_id))
        stream = torch.cuda.current_stream(self.device_id)
        for j, out in enumerate(outs):
            feed_ndarray(out, video[j], cuda_stream=stream)
        return video

    def _opencv(self, group: list[Planned], outs: list, t: int) -> tuple[torch.Tensor, list[Planned]]:
        """Crop, resize, jitter, pad and normalise decoded frames with OpenCV in a thread pool."""
        shape = (len(group), 3, t, *group[0].plan.out_hw)
        uint8 = self.transform.output == "uint8"
        video = np.empty(shape, np.uint8) if uint8 else self._pool.get(shape)
        if self._pool_threads is None:
            self._pool_threads = ThreadPoolExecutor(max_workers=self.num_threads)
        jobs = [(p, np.asarray(out), video[j]) for j, (p, out) in enumerate(zip(group, outs))]
        reasons = list(self._pool_threads.map(lambda job: self._post_sample(*job, t=t), jobs))
        good = [j for j, why in enumerate(reasons) if why is None]
        for j, why in enumerate(reasons):
            if why is not None:
                self._skip(group[j].ref, why)
        if len(good) < len(group):
            video = video[good]
        tensor = torch.from_numpy(video)
        return (tensor.half() if self.transform.output == "float16" else tensor), [group[j] for j in good]

    def _post_sample(self, p: Planned, frames: np.ndarray, dst: np.ndarray, *, t: int) -> str | None:
        """One sample's frames into its batch slot ``dst`` ([3, T, H, W]); the reason if it cannot be."""
        why = size_mismatch(p.plan, frames.shape[1], frames.shape[2])
        if why:
            return why
        unique, slots = p.plan.frame_slots()
        if len(frames) < len(unique):
            return f"DALI: {len(frames)} frames decoded, {len(unique)} planned"
        oh, ow = p.plan.out_hw
        local = self._local
        if getattr(local, "frame", None) is None or local.frame.shape != (oh, ow, 3):
            local.frame = np.empty((oh, ow, 3), np.uint8)
        if dst.dtype == np.uint8:
            clip = dst
        else:
            if getattr(local, "clip", None) is None or local.clip.shape != dst.shape:
                local.clip = np.empty(dst.shape, np.uint8)
            clip = local.clip
        for i, positions in enumerate(slots):
            resize_frame(frames[i], p.plan.box, p.plan.out_hw, local.frame)
            emit_frame(clip, positions, local.frame, p.plan)
        if p.plan.length < t:
            lookup(PADS, self.transform.pad, "pad mode")(clip, p.plan.length)
        if clip is not dst:
            mean, std = self.transform.mean_std()
            normalize_clip(clip, dst, mean, (1.0 / std).astype(np.float32))
        return None

    def _finalize(self, batch: Batch) -> Batch:
        # Already on the target device in its final dtype; only zero padding is left.
        # The lengths stay on the CPU: copying them to the GPU would block the host.
        if self.transform.pad == "zeros":
            mask_padding(batch.video, batch.lengths)
        return batch

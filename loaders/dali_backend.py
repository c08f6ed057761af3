"""DALI backend: ``fn.readers.webdataset`` + ``fn.decoders.video`` on NVDEC or the CPU.

Two small pipelines, joined in Python::

    reader pipeline   fn.readers.webdataset(tars, indexes, shard_id=rank, num_shards=world)
                          -> encoded video bytes + JSON           (compressed, a few KB/frame)
    Python            key, metadata -> SamplePlan (shared Transform) -> batches (bucketing)
    decode pipeline   external_source -> fn.decoders.video(frames=plan)        [cpu | mixed]
                          -> fn.resize(ROI) -> jitter -> fn.sequence_rearrange
                          -> fn.crop_mirror_normalize -> torch [B, C, T, H, W]

Why split: the frames to decode depend on each sample's JSON (``num_frames``)
and on the Transform's sampling, which DALI cannot parse; the plan is the same
function the PyAV backend uses, so both backends decode the same frames. The
split is also what makes corrupt videos recoverable: DALI operators cannot
skip a sample and a failed pipeline is dead, so when a batch fails the decode
pipeline is rebuilt, the batch's samples are tried one by one, the bad ones are
skipped and recorded (key, shard, DALI's message), and the rest are decoded —
the reader never loses its place.

Distributed: the reader splits samples by ``shard_id/num_shards`` (the same
contiguous rule as :func:`~signstream.loaders.shards.rank_range`). In eval mode
``pad_last_batch=True`` pads a rank's last reader batch with repeats of its last
sample; the loader keeps each key the first time it appears and stops as soon
as it has every key of its share (known from the index files), so the padding
duplicates never reach the user. In train mode every rank yields exactly
``train_batches`` batches; the shard order is permuted per epoch (same on all
ranks) so each rank sees different samples every epoch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch

from signstream import SignstreamError
from signstream.loaders import remote
from signstream.loaders.base import BaseLoader, train_batches
from signstream.loaders.batch import Batch, group_batches, mask_padding
from signstream.loaders.pyav_backend import Planned, epoch_order, plan_from_meta
from signstream.loaders.shards import SampleError, SampleRef, ShardSet, parse_meta, rank_range
from signstream.loaders.stats import Report, Skipped, get_handler
from signstream.loaders.transform import Transform

CPU_CODECS = {"vp9", "vp8", "mjpeg"}
READER = "reader"


def check_codecs(shardset: ShardSet, device: str) -> None:
    """DALI's CPU decoder reads VP8/VP9/MJPEG only; fail early with what to do instead."""
    if torch.device(device).type == "cuda":
        return
    bad = sorted(shardset.codecs - CPU_CODECS)
    if bad:
        raise SignstreamError(
            f"{shardset.origin}: DALI's CPU video decoder cannot decode {'/'.join(bad)}; "
            f"use backend='pyav', device='cuda', or repack the shards as VP9 (signstream pack --codec vp9)")


# ------------------------------------------------------------------ pipelines
def _reader_pipeline(shardset: ShardSet, order: list[int], *, rank: int, world: int, shuffle: bool,
                     seed: int, pad: bool, batch_size: int, fill: int):
    from nvidia.dali import fn, pipeline_def

    shards = [shardset.shards[i] for i in order]
    indexed = all(s.index_path is not None for s in shards)

    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None, seed=seed,
                  prefetch_queue_depth=2)
    def reader():
        video, meta = fn.readers.webdataset(
            paths=[str(s.path) for s in shards],
            index_paths=[str(s.index_path) for s in shards] if indexed else None,
            ext=[";".join(sorted(shardset.video_exts)), "json"], missing_component_behavior="empty",
            shard_id=rank, num_shards=world, random_shuffle=shuffle, initial_fill=fill, seed=seed,
            pad_last_batch=pad, stick_to_shard=True, dont_use_mmap=True, name=READER)
        return video, meta

    pipe = reader()
    pipe.build()
    return pipe


def dali_transform(encoded, frames, order, roi_start, roi_end, size, mirror, jitter, *,
                   device: str, transform: Transform):
    """The Transform as DALI operators (plain function on data nodes)."""
    from nvidia.dali import fn, types

    video = fn.decoders.video(encoded, frames=frames, pad_mode="none",
                              device="mixed" if device == "cuda" else "cpu")
    video = fn.resize(video, size=size, roi_start=roi_start, roi_end=roi_end, roi_relative=False,
                      interp_type=types.INTERP_LINEAR, antialias=True)
    if jitter is not None:
        video = fn.brightness_contrast(video, brightness=jitter[0], contrast=jitter[1], contrast_center=128.0)
        video = fn.color_twist(video, saturation=jitter[2])
    video = fn.sequence_rearrange(video, new_order=order)  # repeats + padding to the batch's T
    if transform.output == "float":
        mean, std = transform.mean_std()
        return fn.crop_mirror_normalize(video, mirror=mirror, mean=mean.tolist(), std=std.tolist(),
                                        dtype=types.FLOAT, output_layout="CFHW")
    video = fn.flip(video, horizontal=mirror)
    return fn.transpose(video, perm=[3, 0, 1, 2], output_layout="CFHW")


_INPUTS = {"encoded": ("UINT8", 1), "frames": ("INT32", 1), "order": ("INT32", 1),
           "roi_start": ("FLOAT", 1), "roi_end": ("FLOAT", 1), "size": ("FLOAT", 1), "mirror": ("INT32", 0)}


def _decode_pipeline(transform: Transform, device: str, batch_size: int, num_threads: int, device_id):
    from nvidia.dali import fn, pipeline_def, types

    jitter = transform.colour_jitter > 0

    # Synchronous execution: a failure surfaces on the batch that caused it.
    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id,
                  exec_pipelined=False, exec_async=False, prefetch_queue_depth=1)
    def decode():
        nodes = {name: fn.external_source(name=name, dtype=getattr(types, dtype), ndim=ndim)
                 for name, (dtype, ndim) in _INPUTS.items()}
        nodes["jitter"] = fn.external_source(name="jitter", dtype=types.FLOAT, ndim=1) if jitter else None
        return dali_transform(**nodes, device=device, transform=transform)

    pipe = decode()
    pipe.build()
    return pipe


def _feeds(group: list[Planned], transform: Transform) -> dict[str, list[np.ndarray]]:
    t = transform.batch_frames(max(p.plan.length for p in group))
    feeds: dict[str, list[np.ndarray]] = {name: [] for name in _INPUTS}
    if transform.colour_jitter > 0:
        feeds["jitter"] = []
    for p in group:
        unique, order = p.plan.unique_frames()
        y0, x0, h, w = p.plan.box
        feeds["encoded"].append(p.data)
        feeds["frames"].append(unique.astype(np.int32))
        feeds["order"].append(np.pad(order, (0, t - len(order)), mode="edge").astype(np.int32))
        feeds["roi_start"].append(np.array([y0, x0], np.float32))
        feeds["roi_end"].append(np.array([y0 + h, x0 + w], np.float32))
        feeds["size"].append(np.array(p.plan.out_hw, np.float32))
        feeds["mirror"].append(np.array(int(p.plan.flip), np.int32))
        if "jitter" in feeds:
            feeds["jitter"].append(np.array(p.plan.jitter or (1.0, 1.0, 1.0), np.float32))
    return feeds


def _dali_reason(exc: Exception) -> str:
    """The informative part of a DALI pipeline error (what follows "encountered:")."""
    text = str(exc)
    text = text.split("encountered:", 1)[-1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()
             and not ln.strip().startswith(("C++ context", "Current pipeline object"))]
    reason = " ".join(lines) or type(exc).__name__
    reason = re.sub(r'^Assert on ".*?" failed: ', "", reason)
    return f"DALI: {reason}"[:300]


# --------------------------------------------------------------------- loader
class DaliLoader(BaseLoader):
    """Loader over VP9/MJPEG (CPU) or any NVDEC codec (CUDA) shards with DALI."""

    backend = "dali"

    def __init__(self, shardset: ShardSet, *, num_threads: int, bucket: int = 0, **common: Any):
        super().__init__(**common)
        check_codecs(shardset, self.device)
        remote.check_dali(shardset)
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise SignstreamError("backend='dali' needs the nvidia-dali package") from None
        self.shardset, self.num_threads, self.bucket = shardset, max(1, num_threads), bucket
        self.refs = {ref.key: ref for ref in shardset.refs}
        self.device_id = torch.cuda.current_device() if torch.device(self.device).type == "cuda" else None
        self._decoder = None
        self._pending = Report()

    def __len__(self) -> int:
        """Batches per epoch on this rank (eval: before any skips)."""
        if self.train:
            return train_batches(self.shardset.num_samples, self.world, self.batch_size)
        r0, r1 = rank_range(self.shardset.num_samples, self.rank, self.world)
        return -(-(r1 - r0) // self.batch_size)

    # -- reading ----------------------------------------------------------------
    def _share(self, epoch: int) -> tuple[list[int], set[str]]:
        """Shard order of the epoch and the keys this rank must deliver in eval."""
        order = list(range(len(self.shardset.shards)))
        refs = epoch_order(self.shardset, epoch, self.seed, self.shuffle and self.train)
        if self.shuffle and self.train:
            order = list(dict.fromkeys(ref.shard for ref in refs))
        r0, r1 = rank_range(len(refs), self.rank, self.world)
        return order, {ref.key for ref in refs[r0:r1]}

    def _raw(self, epoch: int) -> Iterator[Planned]:
        """Planned samples from the reader: eval stops after the share, train never stops."""
        order, wanted = self._share(epoch)
        seed = int(np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, self.rank]).integers(1 << 30))
        pipe = _reader_pipeline(self.shardset, order, rank=self.rank, world=self.world,
                                shuffle=self.shuffle, seed=seed, pad=not self.train,
                                batch_size=self.batch_size, fill=max(1, min(1024, len(wanted))))
        seen: set[str] = set()
        passes: dict[str, int] = {}
        streak = 0
        try:
            while self.train or len(seen) < len(wanted):
                videos, metas = pipe.run()
                for i in range(len(videos)):
                    ref = self._ref(videos[i])
                    if not self.train:
                        if ref.key in seen:
                            continue  # eval padding: a repeat of the share's last sample
                        if ref.key not in wanted:
                            raise SignstreamError(f"DALI reader gave {ref.key}, outside rank "
                                                  f"{self.rank}'s share of {self.shardset.origin}")
                    seen.add(ref.key)
                    pass_ = passes[ref.key] = passes.get(ref.key, -1) + 1
                    planned = self._plan(ref, videos[i], metas.at(i), epoch, pass_)
                    streak = 0 if planned is not None else streak + 1
                    if streak > 2 * len(wanted):  # training replays the share: stop if none is readable
                        raise SignstreamError(f"no readable sample in rank {self.rank}'s share of "
                                              f"{self.shardset.origin}")
                    if planned is not None:
                        yield planned
        finally:
            del pipe

    def _ref(self, video) -> SampleRef:
        source = video.source_info()  # "path:offset:member"
        member = source.rsplit(":", 2)[-1].rsplit("/", 1)[-1]
        ref = self.refs.get(member.split(".", 1)[0])
        if ref is None:
            raise SignstreamError(f"DALI reader returned an unknown sample {source}")
        return ref

    def _plan(self, ref: SampleRef, video, meta_bytes: np.ndarray, epoch: int, pass_: int) -> Planned | None:
        data = np.array(video)
        self._pending.bytes_read += data.nbytes + meta_bytes.nbytes
        try:
            meta = parse_meta(meta_bytes.tobytes(), ref.key) if meta_bytes.size else {"key": ref.key}
            plan = plan_from_meta(meta, ref.key, data, self.transform, train=self.train,
                                  seed=self.seed, epoch=epoch, pass_=pass_)
        except SampleError as exc:
            self._skip(ref.key, self.shardset.shard_of(ref), str(exc))
            return None
        return Planned(ref, data, meta, plan)

    def _skip(self, key: str, shard: str, reason: str) -> None:
        record = Skipped(key, shard, reason)
        self._pending.skipped.append(record)
        get_handler(self.handler)(record)

    # -- decoding ---------------------------------------------------------------
    def _run(self, group: list[Planned]) -> torch.Tensor:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        if self._decoder is None:
            self._decoder = _decode_pipeline(self.transform, "cuda" if self.device_id is not None else "cpu",
                                             self.batch_size, self.num_threads, self.device_id)
        for name, data in _feeds(group, self.transform).items():
            self._decoder.feed_input(name, data)
        (out,) = self._decoder.run()
        shape = (len(group), *out[0].shape())
        if self.device_id is not None:
            dtype = torch.float32 if self.transform.output == "float" else torch.uint8
            tensor = torch.empty(shape, dtype=dtype, device=self.device)
            feed_ndarray(out.as_tensor(), tensor, cuda_stream=torch.cuda.current_stream())
            return tensor
        # CPU: reuse the loader's float buffers (see BufferPool) instead of fresh pages
        array = self._pool.get(shape) if self.transform.output == "float" else np.empty(shape, np.uint8)
        return feed_ndarray(out.as_tensor(), torch.from_numpy(array))

    def _decode(self, group: list[Planned]) -> Batch | None:
        """Decode a batch; on a DALI error find and skip the bad samples, decode the rest."""
        try:
            video = self._run(group)
        except RuntimeError:
            self._decoder = None  # a failed DALI pipeline cannot run again
            good = []
            for p in group:
                try:
                    self._run([p])
                    good.append(p)
                except RuntimeError as exc:
                    self._decoder = None
                    self._skip(p.ref.key, self.shardset.shard_of(p.ref), _dali_reason(exc))
            if not good:
                return None
            group, video = good, self._run(good)
        lengths = torch.tensor([p.plan.length for p in group], dtype=torch.int64)
        return Batch(video, lengths, [p.ref.key for p in group], [p.meta for p in group])

    def _epoch(self, epoch: int) -> Iterator[tuple[Batch | None, Report]]:
        self._pending = Report()  # skips and bytes since the last yield
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, self.rank, 1])
        groups = group_batches(self._raw(epoch), self.batch_size, bucket=self.bucket, rng=rng,
                               length=lambda p: p.plan.length)
        decoded = (self._decode(group) for group in groups)
        batches = (b for b in decoded if b is not None)
        if self.train:  # count delivered batches: a wholly corrupt group must not shorten the epoch
            batches = islice(batches, train_batches(self.shardset.num_samples, self.world, self.batch_size))
        for batch in batches:
            report, self._pending = self._pending, Report()
            yield batch, report
        yield None, self._pending

    def _finalize(self, batch: Batch) -> Batch:
        # DALI already normalised on the target device; only zero padding is left.
        if self.transform.pad == "zeros":
            mask_padding(batch.video, batch.lengths)
        return Batch(batch.video, batch.lengths.to(batch.video.device), batch.keys, batch.meta)

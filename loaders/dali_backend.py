"""DALI backend: the loader make_loader builds for ``backend="dali"``; it checks options, reads and plans.

Per epoch: samples -> split by rank -> shuffle (replayed in training) -> read by offset + plan
-> batch -> :class:`~signstream.loaders.dali_stream.DaliStream` (one streaming DALI pipeline;
graph in ``dali_pipeline``, copies to torch in ``dali_copy``, OpenCV post-process in ``dali_opencv``).
Invariant: the same samples reach the same rank in the same order as with the PyAV backend, and
every sample that is not delivered is skipped and named (key, shard, reason).
Why samples are read in Python and not by DALI's reader: docs/design/dali.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any

import numpy as np
import torch
import webdataset as wds

from signstream import SignstreamError
from signstream.loaders.base import BaseLoader, train_batches
from signstream.loaders.batch import Batch, group_batches
from signstream.loaders.dali_copy import Assembler, finish_on_device
from signstream.loaders.dali_opencv import OpenCVPost
from signstream.loaders.dali_pipeline import input_names
from signstream.loaders.dali_startup import default_batches_per_run, resolve_decoder_threads
from signstream.loaders.dali_stream import DaliStream
from signstream.loaders.nvdec import check_codecs, check_nvdec_sizes, nvdec_size_error
from signstream.loaders.pyav_backend import probe_size
from signstream.loaders.shards import SampleError, SampleReader, SampleRef, ShardSet, rank_range
from signstream.loaders.stages import (
    Planned,
    SkipReport,
    epoch_order,
    loader_batches,
    plan_from_meta,
    read_stages,
    take_range,
)
from signstream.loaders.stats import Report
from signstream.loaders.transform import SamplePlan, size_mismatch

POSTPROCESS = ("auto", "opencv", "dali")


def dali_install_hint() -> str:
    """The pip command that adds DALI: the extra for this torch's CUDA major, both when it is unknown."""
    major = (torch.version.cuda or "").split(".")[0]
    if major in ("12", "13"):
        return f"pip install 'signstream[dali-cuda{major}]'"
    return "pip install 'signstream[dali-cuda13]' (or 'signstream[dali-cuda12]' for a CUDA 12 driver)"


def require_dali() -> None:
    """Raise a one-line SignstreamError naming the extra to install when DALI does not import.

    DALI is optional (every module imports it lazily), so this is the one place its absence is told.
    """
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        hint = f"{dali_install_hint()}, or use backend='pyav'"
        raise SignstreamError(f"backend='dali' needs NVIDIA DALI (not installed): {hint}") from None


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

    def __init__(
        self,
        shardset: ShardSet,
        *,
        num_workers: int = 1,
        decoder_threads: int | None = None,
        bucket: int = 0,
        batches_per_run: int | None = None,
        postprocess: str = "auto",
        **common: Any,
    ):
        super().__init__(**common)
        require_dali()
        check_codecs(shardset, self.device)
        if postprocess not in POSTPROCESS:
            raise SignstreamError(f"postprocess must be one of {POSTPROCESS}, got {postprocess!r}")
        self.device_id = self._device_index()
        cuda = self.device_id is not None
        self.num_threads = resolve_decoder_threads(cuda, num_workers, decoder_threads)
        if batches_per_run is None:
            batches_per_run = default_batches_per_run(self.batch_size, cuda=cuda, threads=self.num_threads)
        if batches_per_run < 1:
            raise SignstreamError(f"batches_per_run must be >= 1, got {batches_per_run}")
        if cuda:
            if postprocess == "opencv":
                raise SignstreamError("postprocess='opencv' runs on the CPU; on CUDA use 'dali' (or 'auto')")
            check_nvdec_sizes(shardset, self.device_id)
        self.postprocess = postprocess if postprocess != "auto" else ("dali" if cuda else "opencv")
        self.shardset, self.bucket = shardset, bucket
        self.batches_per_run = batches_per_run
        self.names = input_names(self.postprocess, self.transform)
        self._post = OpenCVPost(self.transform, self.num_threads, self._pool) if self.postprocess == "opencv" else None
        self._stream = DaliStream(
            self.names,
            postprocess=self.postprocess,
            transform=self.transform,
            num_threads=self.num_threads,
            device_id=self.device_id,
            codecs=shardset.codecs,
            batch_size=self.batch_size,
            batches_per_run=batches_per_run,
            assemble=Assembler(self.transform, self.device_id, self._post),
        )

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
        return loader_batches(
            self.shardset.num_samples,
            train=self.train,
            rank=self.rank,
            world=self.world,
            batch_size=self.batch_size,
            workers=1,
        )

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "postprocess": self.postprocess,
            "batches_per_run": self.batches_per_run,
            "decoder_threads": self.num_threads,
        }

    # -- reading and planning (the stages every backend shares) -----------------
    def _groups(self, epoch: int, reader: SampleReader, skips: SkipReport) -> wds.DataPipeline:
        refs = epoch_order(self.shardset, epoch, self.seed, self.shuffle)
        r0, r1 = rank_range(len(refs), self.rank, self.world)
        skips.share = r1 - r0
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, self.rank, 0])
        return wds.DataPipeline(
            lambda: iter(refs),
            take_range(r0, r1),  # split by node (rank)
            # shuffle (and replay when training), read + plan
            read_stages(
                reader,
                lambda ref, pass_: self._read(reader, ref, epoch, pass_, skips),
                skips,
                train=self.train,
                shuffle=self.shuffle,
                rng=rng,
            ),
            lambda src: group_batches(
                src, self.batch_size, bucket=self.bucket, rng=rng, length=lambda p: p.plan.length
            ),
        )

    def _read(self, reader: SampleReader, ref: SampleRef, epoch: int, pass_: int, skips: SkipReport) -> Planned:
        """Read and plan one sample; :class:`SampleError` skips it."""
        data, meta, nbytes = reader.read(ref)
        skips.report.bytes_read += nbytes
        plan = plan_from_meta(
            meta, ref.key, data, self.transform, train=self.train, seed=self.seed, epoch=epoch, pass_=pass_
        )
        if self.postprocess == "dali":
            self._check_size(ref, data, plan)
        return Planned(ref, data, meta, plan)

    def _check_size(self, ref: SampleRef, data: bytes, plan: SamplePlan) -> None:
        """DALI crops before Python sees a frame: check the video's size against its plan (and NVDEC) first."""
        h, w = probe_size(data)
        why = size_mismatch(plan, h, w)
        if why:
            raise SampleError(why)
        if self.device_id is not None:
            limit = nvdec_size_error(
                next(iter(self.shardset.codecs)),
                h,
                w,
                f"{self.shardset.shard_of(ref)} (sample {ref.key})",
                self.device_id,
            )
            if limit:
                raise SignstreamError(limit)

    # -- the epoch ---------------------------------------------------------------
    def _epoch(self, epoch: int) -> Iterator[tuple[Batch | None, Report]]:
        skips = SkipReport(self.handler, self.shardset.shard_of, train=self.train, share=0, who=f"rank {self.rank}")
        clean = False
        with SampleReader(self.shardset) as reader:
            batches = self._stream.batches(iter(self._groups(epoch, reader, skips)), skips)
            if self.train:  # count delivered batches: a wholly corrupt group must not shorten the epoch
                batches = islice(batches, train_batches(self.shardset.num_samples, self.world, self.batch_size))
            try:
                for batch in batches:
                    yield batch, skips.take()
                clean = not self.train
            finally:
                if self._post is not None:  # no idle threads left behind between epochs
                    self._post.close()
                self._stream.finish(clean)  # reset at the end, else dropped (iterations still queued)
        yield None, skips.take()

    def _finalize(self, batch: Batch) -> Batch:
        return finish_on_device(batch, self.transform)

"""The loader stages every backend shares, written once: a backend only reads, plans and decodes.

One worker's epoch is one visible pipeline (:meth:`SampleStream.pipeline`): samples of the epoch -> split by rank
-> split by worker -> shuffle (replayed in training) -> read + plan -> batch (optionally length-bucketed) -> decode
into the batch buffer -> [training: exactly this worker's number of batches]. Key invariant: the epoch order
depends on (seed, epoch) only, so every rank cuts the same list; eval visits every sample once over all ranks,
training yields :func:`train_batches` batches on every rank, and every skip is named (key + where).
Why: docs/design/loaders.md
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

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
from signstream.loaders.shards import SampleError, SampleRef, ShardSet, rank_range
from signstream.loaders.stats import HANDLERS, Report, Skipped
from signstream.loaders.transform import SamplePlan, Transform, plan_sample, sample_rng

# A clip planned larger than this (uint8 bytes) is confirmed against its video before use.
TRUSTED_CLIP_BYTES = 256 << 20

__all__ = [
    "TRUSTED_CLIP_BYTES",
    "Planned",
    "SampleStream",
    "SkipReport",
    "epoch_order",
    "epoch_permutation",
    "StreamLoader",
    "loader_batches",
    "passes",
    "plan_from_meta",
    "read_stage",
    "read_stages",
    "shuffle_buffer",
    "take_range",
    "train_batches",
    "worker_batches",
]


@dataclass
class Planned:
    """A read and planned sample on its way to the decoder."""

    ref: Any  # a SampleRef for shards; whatever the backend's sample list holds otherwise
    data: Any
    meta: dict[str, Any]
    plan: SamplePlan
    pass_: int = 0  # which pass over the share it belongs to (set by the read stage)


# ------------------------------------------------------------------ epoch plan
def epoch_permutation(n: int, epoch: int, seed: int, shuffle: bool) -> list[int]:
    """``range(n)`` in the epoch's order: a permutation of (seed, epoch) when shuffling, identical on every rank."""
    if not shuffle:
        return list(range(n))
    return [int(i) for i in np.random.default_rng([seed & 0xFFFFFFFF, epoch]).permutation(n)]


def epoch_order(shardset: ShardSet, epoch: int, seed: int, shuffle: bool) -> list[SampleRef]:
    """The epoch's sample order, identical on every rank: shard order shuffled, samples in file order."""
    return [
        ref for i in epoch_permutation(len(shardset.shards), epoch, seed, shuffle) for ref in shardset.shards[i].samples
    ]


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


def worker_batches(num_samples: int, world: int, batch_size: int, worker: int, workers: int) -> int:
    """Training batches worker ``worker`` of ``workers`` yields (the rank's count, split like samples)."""
    start, stop = rank_range(train_batches(num_samples, world, batch_size), worker, workers)
    return stop - start


def loader_batches(num_samples: int, *, train: bool, rank: int, world: int, batch_size: int, workers: int) -> int:
    """Batches per epoch on ``rank`` (a loader's ``len``; eval: before any skips)."""
    if train:
        return train_batches(num_samples, world, batch_size)
    r0, r1 = rank_range(num_samples, rank, world)
    shares = [rank_range(r1 - r0, w, max(1, workers)) for w in range(max(1, workers))]
    return sum(-(-(b - a) // batch_size) for a, b in shares)


# ---------------------------------------------------------------- read + plan
def plan_from_meta(
    meta: dict[str, Any],
    key: str,
    data: bytes | np.ndarray,
    transform: Transform,
    *,
    train: bool,
    seed: int,
    epoch: int,
    pass_: int = 0,
) -> SamplePlan:
    """Plan a sample from its JSON (``num_frames``, ``height``, ``width``; probed if absent).

    The JSON passed the format's strict reader, so its numbers are in range; a
    plan whose clip would exceed :data:`TRUSTED_CLIP_BYTES` is checked against
    the video itself before any buffer is sized from it, so a crafted frame
    count or size cannot make the loader allocate gigabytes.
    """
    from signstream.loaders.pyav_backend import probe_video  # the one container prober

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
            raise SampleError(
                f"JSON says {n} frames of {h}x{w}, the video holds {real[0]} of {real[1]}x{real[2]} (HxW)"
            )
    return plan


class SkipReport:
    """Skip-and-report: every skipped sample is counted, named (key + where) and handled by the policy.

    Training replays a share forever: if it holds no good sample at all, the
    stream stops with one line after two full passes without one instead of spinning.
    """

    def __init__(self, handler: str, where: Callable[[Any], str], *, train: bool, share: int, who: str):
        self.policy = lookup(HANDLERS, handler, "handler")
        self.where, self.train, self.share, self.who = where, train, share, who
        self.report, self.streak = Report(), 0

    def skip(self, ref: Any, reason: str) -> None:
        """Record ``ref`` as skipped for ``reason`` and apply the bad-sample policy."""
        record = Skipped(ref.key, self.where(ref), reason)
        self.report.skipped.append(record)
        self.policy(record)
        self.streak += 1
        if self.train and self.streak > 2 * max(1, self.share):
            raise SignstreamError(
                f"no readable sample among {self.who}'s {self.share} samples "
                f"(last: {record.key} in {record.shard}: {reason})"
            )

    def delivered(self) -> None:
        """A sample was delivered: the share is not wholly bad."""
        self.streak = 0

    def take(self) -> Report:
        """The report so far (to send with the next batch); a fresh one starts."""
        report, self.report = self.report, Report()
        return report


def read_stage(read: Callable[[Any, int], Planned], skips: SkipReport) -> Callable[[Iterator], Iterator[Planned]]:
    """Stage: ``(ref, pass)`` -> :class:`Planned`; a sample whose read or plan fails is skipped and named."""

    def stage(src: Iterator[tuple[Any, int]]) -> Iterator[Planned]:
        for ref, pass_ in src:
            try:
                planned = read(ref, pass_)
            except SampleError as exc:
                skips.skip(ref, str(exc))
                continue
            planned.pass_ = pass_
            yield planned

    return stage


def shuffle_bytes() -> int:
    """Shuffle buffer of training over URLs, in compressed bytes (``SIGNSTREAM_SHUFFLE_MB``, default 64)."""
    return int(float(os.environ.get("SIGNSTREAM_SHUFFLE_MB", "64")) * (1 << 20))


def shuffle_buffer(rng: np.random.Generator, max_bytes: int) -> Callable[[Iterator[Planned]], Iterator[Planned]]:
    """Stage: samples mixed in a buffer of ``max_bytes`` compressed bytes (drawn at random once full).

    The buffer empties at the end of each pass, so one pass's samples all come out before the next's.
    """

    def size(p: Planned) -> int:
        return len(p.data) if isinstance(p.data, (bytes, bytearray, memoryview)) else 1

    def draw(buf: list[Planned]) -> Planned:
        i = int(rng.integers(len(buf)))
        buf[i], buf[-1] = buf[-1], buf[i]
        return buf.pop()

    def stage(src: Iterator[Planned]) -> Iterator[Planned]:
        buf: list[Planned] = []
        held, current = 0, None
        for p in src:
            if p.pass_ != current:
                while buf:
                    yield draw(buf)
                held, current = 0, p.pass_
            buf.append(p)
            held += size(p)
            while buf and held > max_bytes:
                out = draw(buf)
                held -= size(out)
                yield out
        while buf:
            yield draw(buf)

    return stage


def read_stages(
    reader: Any, read: Callable[[Any, int], Planned], skips: SkipReport, *, train: bool, shuffle: bool, rng
) -> list[Callable[[Iterator], Iterator]]:
    """Stages: shuffle (replayed in training) -> read + plan, for the backend's ``reader``.

    Local shards get a full permutation of the share. Shards behind URLs (``reader.streams``) are
    read in file order, each run of samples one streamed request (``reader.stream``); training mixes
    them in a :func:`shuffle_buffer` instead (shard order is already shuffled by :func:`epoch_order`).
    """
    if not getattr(reader, "streams", False):
        return [passes(train, shuffle, rng), read_stage(read, skips)]
    stages = [passes(train, False, rng), reader.stream, read_stage(read, skips)]
    return stages + ([shuffle_buffer(rng, shuffle_bytes())] if shuffle else [])


# ------------------------------------------------------------- one worker's epochs
class SampleStream(torch.utils.data.IterableDataset):
    """One worker's epochs: the shared stages around a backend's read, plan and decode.

    A backend subclasses it and defines :meth:`samples` (the epoch's sample
    list, identical on every rank), :meth:`where` (the shard or folder a skip
    names), :meth:`open` (a context giving the reader), :meth:`read` (bytes +
    plan of one sample) and :meth:`decode` (one planned clip into its batch
    slot). Items are ``(batch or None, report)``; a sample's ``ref`` has a ``key``.
    """

    def __init__(
        self,
        transform: Transform,
        *,
        num_samples: int,
        train: bool,
        shuffle: bool,
        seed: int,
        rank: int,
        world: int,
        batch_size: int,
        bucket: int = 0,
        handler: str = "warn",
    ):
        super().__init__()
        self.transform, self.num_samples = transform, num_samples
        self.train, self.shuffle, self.seed = train, shuffle, seed
        self.rank, self.world = rank, world
        self.batch_size, self.bucket, self.handler = batch_size, bucket, handler
        self.epoch = 0
        # Decode into pinned buffers (set by the loader for a GPU target without workers;
        # a worker process never touches CUDA, its batches are pinned by the main process).
        self.pin = False

    # -- what a backend defines ---------------------------------------------------
    def samples(self, epoch: int) -> list:
        """The epoch's samples in order, identical on every rank."""
        raise NotImplementedError

    def where(self, ref: Any) -> str:
        """Where ``ref`` lives (named with a skip)."""
        raise NotImplementedError

    def open(self) -> contextlib.AbstractContextManager:
        """A context giving the reader :meth:`read` receives (none by default)."""
        return contextlib.nullcontext()

    def read(self, reader: Any, ref: Any, epoch: int, pass_: int) -> Planned:
        """Read and plan one sample; raise :class:`SampleError` to skip it."""
        raise NotImplementedError

    def decode(self, p: Planned, out: np.ndarray) -> None:
        """Decode ``p``'s planned frames into ``out`` (uint8 ``[3, T, H, W]``); raise :class:`SampleError`."""
        raise NotImplementedError

    def count_bytes(self, nbytes: int) -> None:
        """Add bytes read to the report the next batch carries."""
        self._skips.report.bytes_read += nbytes

    # -- the shared stages --------------------------------------------------------
    def worker_batches(self, worker: int, workers: int) -> int | None:
        """Batches a worker yields in training (``None``: until its share ends)."""
        if not self.train:
            return None
        return worker_batches(self.num_samples, self.world, self.batch_size, worker, workers)

    def __iter__(self) -> Iterator[tuple[Batch | None, Report]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:
            one_opencv_thread()
        self._ring = getattr(self, "_ring", None) or (SharedRing(RING_SLOTS) if info is not None else None)
        # Persistent workers keep this object between epochs: each iteration is the next epoch.
        self._current, self.epoch = self.epoch, self.epoch + 1
        self._skips = SkipReport(self.handler, self.where, train=self.train, share=0, who="this worker")
        with self.open() as reader:
            for batch in self.pipeline(reader, worker, workers):
                yield batch, self._skips.take()
        yield None, self._skips.take()

    def pipeline(self, reader: Any, worker: int, workers: int) -> wds.DataPipeline:
        """The stages of one worker's epoch, in order."""
        epoch = self._current
        refs = self.samples(epoch)
        r0, r1 = rank_range(len(refs), self.rank, self.world)
        w0, w1 = rank_range(r1 - r0, worker, workers)
        self._skips.share = w1 - w0
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch, self.rank, worker])
        n_batches = self.worker_batches(worker, workers)
        return wds.DataPipeline(
            lambda: iter(refs),
            take_range(r0, r1),  # split by node (rank)
            take_range(w0, w1),  # split by worker
            # shuffle (and replay when training), read + plan
            read_stages(
                reader,
                lambda ref, pass_: self.read(reader, ref, epoch, pass_),
                self._skips,
                train=self.train,
                shuffle=self.shuffle,
                rng=rng,
            ),
            lambda src: group_batches(
                src, self.batch_size, bucket=self.bucket, rng=rng, length=lambda p: p.plan.length
            ),
            self._decode,  # decode + transform into the batch
            (lambda src: islice(src, n_batches)) if n_batches is not None else None,
        )

    def _decode(self, src: Iterator[list[Planned]]) -> Iterator[Batch]:
        """Decode each planned group straight into its batch buffer (no per-clip copies)."""
        for group in src:
            check_frame_sizes([p.plan.out_hw for p in group], [p.ref.key for p in group])
            shape = (
                len(group),
                3,
                self.transform.batch_frames(max(p.plan.length for p in group)),
                *group[0].plan.out_hw,
            )
            video = self._ring.get(shape) if self._ring else new_buffer(shape, pin=self.pin)
            slots = video.numpy()
            good: list[Planned] = []
            for p in group:
                try:  # a failed sample's slot is simply reused by the next one
                    self.decode(p, slots[len(good), :, : p.plan.length])
                except SampleError as exc:
                    self._skips.skip(p.ref, str(exc))
                    continue
                self._skips.delivered()
                good.append(p)
            if good:
                yield finish_batch(
                    video,
                    [p.plan.length for p in good],
                    [p.ref.key for p in good],
                    [p.meta for p in good],
                    self.transform,
                )


def _identity(item: Any) -> Any:
    return item


class StreamLoader(BaseLoader):
    """A loader running a :class:`SampleStream` in ``num_workers`` DataLoader worker processes.

    A backend's loader calls :meth:`attach` with its stream after ``BaseLoader.__init__``.
    """

    def attach(self, dataset: SampleStream, num_workers: int) -> None:
        """Serve ``dataset`` with at most ``num_workers`` workers (never more than this rank's samples)."""
        r0, r1 = rank_range(dataset.num_samples, self.rank, self.world)
        # an idle worker could not fill its train batches
        self.num_workers = max(0, min(num_workers, r1 - r0))
        self.dataset = dataset
        dataset.pin = self.num_workers == 0 and torch.device(self.device).type == "cuda"
        self._dataloader: torch.utils.data.DataLoader | None = None
        self._next_worker_epoch = -1

    def __len__(self) -> int:
        """Batches per epoch on this rank (eval: before any skips)."""
        return loader_batches(
            self.dataset.num_samples,
            train=self.train,
            rank=self.rank,
            world=self.world,
            batch_size=self.batch_size,
            workers=self.num_workers,
        )

    def _epoch(self, epoch: int) -> Iterator[tuple[Batch | None, Report]]:
        if self._dataloader is None or epoch != self._next_worker_epoch:
            # (Re)start the workers; they keep their shared-memory rings across
            # epochs and count epochs themselves, so only a jump (set_epoch) restarts them.
            self.dataset.epoch = epoch
            self._keep_mapped(self.num_workers)
            self._dataloader = torch.utils.data.DataLoader(
                self.dataset,
                batch_size=None,
                num_workers=self.num_workers,
                collate_fn=_identity,
                pin_memory=False,
                prefetch_factor=PREFETCH if self.num_workers else None,
                persistent_workers=self.num_workers > 0,
                timeout=WORKER_TIMEOUT_S if self.num_workers else 0,
            )
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

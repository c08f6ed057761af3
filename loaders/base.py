"""What every loader shares: epochs, ranks, equal train batches, stats, finalising.

A backend implements one method, ``_epoch(epoch)``, yielding ``(batch, report)`` pairs (batch ``None`` when only
a report is sent); :class:`BaseLoader` turns that into the user-facing iterator: it folds reports into
``loader.stats``, moves batches to the device, normalises them, and counts them. Key invariant: eval reads every
sample exactly once over all ranks; train yields exactly :func:`train_batches` batches on every rank, so no rank
waits forever in a collective. Why: docs/design/loaders.md
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

import torch

from signstream import SignstreamError, lookup
from signstream.loaders.batch import Batch, BufferPool, finalize
from signstream.loaders.cpu import available_cores
from signstream.loaders.stats import HANDLERS, LoaderStats, Report
from signstream.loaders.transform import Transform

MODES = ("eval", "train")
PREFETCH = 2  # batches a DataLoader worker may run ahead (torch's prefetch_factor)
RING_SLOTS = PREFETCH + 2  # SharedRing buffers per worker; see SharedRing for why this is safe


def process_rank_world(rank: int | None = None, world: int | None = None) -> tuple[int, int]:
    """This process's index and the process count, from Accelerate's state (0/1 alone).

    Explicit ``rank``/``world`` win (tests, custom launchers).
    """
    if rank is None or world is None:
        try:
            from accelerate import PartialState

            # cpu=True on a CUDA-less box: otherwise a torchrun-style launch
            # (`accelerate launch --multi_gpu`) is seen as one process, not MULTI_CPU
            # over gloo. Ignored when the state already exists (e.g. an Accelerator).
            state = PartialState(cpu=not torch.cuda.is_available())
            found = (state.process_index, state.num_processes)
        except ImportError:  # accelerate is a dependency, but the loaders work without it
            dist = torch.distributed
            found = (
                (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)
            )
        rank = found[0] if rank is None else rank
        world = found[1] if world is None else world
    if world < 1 or not 0 <= rank < world:
        raise SignstreamError(f"bad rank/world: rank {rank} of {world}")
    return int(rank), int(world)


def train_batches(num_samples: int, world: int, batch_size: int) -> int:
    """Batches every rank yields per training epoch (equal on all ranks)."""
    return max(1, (num_samples // world) // batch_size)


def default_workers() -> int:
    """Loader worker processes/threads when the user names none: the available cores, at most 8."""
    return max(1, min(8, available_cores()))


class BaseLoader:
    """Common front of every backend; iterate it for :class:`Batch` es.

    Attributes:
        stats: :class:`LoaderStats` over every epoch served so far.
        epoch: the epoch the next ``iter()`` serves (``set_epoch`` to change).
    """

    backend = "base"

    def __init__(
        self,
        *,
        transform: Transform,
        device: str,
        mode: str,
        batch_size: int,
        seed: int,
        shuffle: bool,
        rank: int,
        world: int,
        handler: str,
        allow_empty: bool = False,
    ):
        if mode not in MODES:
            raise SignstreamError(f"mode must be one of {MODES}, got {mode!r}")
        if batch_size < 1:
            raise SignstreamError(f"batch_size must be >= 1, got {batch_size}")
        target = torch.device(device)
        if target.type == "cuda" and not torch.cuda.is_available():
            raise SignstreamError("device='cuda' but no CUDA device is available; use device='cpu'")
        if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
            raise SignstreamError(f"device={device!r} but only {torch.cuda.device_count()} CUDA device(s)")
        lookup(HANDLERS, handler, "handler")
        self.transform = transform
        self.device = device
        self.mode = mode
        self.train = mode == "train"
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank, self.world = rank, world
        self.handler = handler
        self.allow_empty = allow_empty
        self.epoch = 0
        self.stats = LoaderStats()
        self._pool = BufferPool()
        # Worker batches arrive in SharedRing buffers; holding the last few keeps
        # their shared-memory mappings alive so torch reuses them (see SharedRing).
        self._received: deque[torch.Tensor] = deque(maxlen=1)

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch`` next (it seeds shuffling and augmentation)."""
        self.epoch = int(epoch)

    def _epoch(self, epoch: int) -> Iterator[tuple[Batch | None, Report]]:
        raise NotImplementedError

    def _keep_mapped(self, workers: int) -> None:
        """Keep the buffers of ``workers`` workers' rings mapped in this process."""
        self._received = deque(maxlen=max(1, workers * RING_SLOTS + 1))

    def _finalize(self, batch: Batch) -> Batch:
        if batch.video.is_shared():
            self._received.append(batch.video)
            if self.transform.output == "uint8" and torch.device(self.device).type == "cpu":
                # the ring buffer will be rewritten: hand the user a copy
                batch = Batch(batch.video.clone(), batch.lengths, batch.keys, batch.meta)
        return finalize(batch, self.transform, self.device, self._pool)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        samples_before, skipped_before = self.stats.samples, len(self.stats.skipped)
        for batch, report in self._epoch(epoch):
            self.stats.add_report(report)
            if batch is None:
                continue
            batch = self._finalize(batch)
            self.stats.add_batch(batch.lengths.tolist(), batch.padded_frames)
            yield batch
        if not self.allow_empty and self.stats.samples == samples_before:
            self._refuse_empty(epoch, self.stats.skipped[skipped_before:])

    def _refuse_empty(self, epoch: int, skipped: list) -> None:
        """An epoch that delivered nothing because every sample it read failed is an error, not an empty success."""
        if not skipped:
            return  # nothing to read here (e.g. more ranks than samples): not a failure
        first = "; ".join(f"{s.key} ({s.shard}: {s.reason})" for s in skipped[:3])
        more = f"; ... {len(skipped) - 3} more" if len(skipped) > 3 else ""
        raise SignstreamError(
            f"no readable sample in epoch {epoch} ({self.backend}, rank {self.rank} of {self.world}): "
            f"{len(skipped)} skipped; first: {first}{more}"
        )

    def describe(self) -> dict[str, Any]:
        """Settings of this loader (for logs and benchmark reports)."""
        return {
            "backend": self.backend,
            "device": str(self.device),
            "mode": self.mode,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "rank": self.rank,
            "world": self.world,
            "transform": self.transform.as_dict(),
        }

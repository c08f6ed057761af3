"""PNG-folder baseline: the original PHOENIX frame folders, one ``cv2.imread`` per frame.

This is how CSLR code bases load PHOENIX today — a map-style torch Dataset
that globs a video's folder and reads its PNGs — kept here as the benchmark
baseline and as a path for users without shards. It applies the same
:class:`~signstream.loaders.transform.Transform` plans and yields the same
:class:`~signstream.loaders.batch.Batch` as the shard backends, and it reads
only the frames the plan needs.

Corpus tables are read by :mod:`signstream.loaders.corpora` (the tables pack
reads: PHOENIX-2014 multisigner and SI5, PHOENIX-2014-T, CSV) and samples are
keyed by :func:`signstream.loaders.format.make_keys`, so a video has the same
key here as in its shard; a list of ``(name, frame_dir)`` pairs works for
anything else.
"""

from __future__ import annotations

import glob
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from signstream import SignstreamError, lookup
from signstream.loaders.base import PREFETCH, RING_SLOTS, BaseLoader, train_batches
from signstream.loaders.batch import Batch, Decoded, SharedRing, collate
from signstream.loaders.corpora import ADAPTERS, Row, csv_table
from signstream.loaders.cpu import WORKER_TIMEOUT_S, one_opencv_thread, worker_timeout_message
from signstream.loaders.format import make_keys
from signstream.loaders.shards import rank_range
from signstream.loaders.stats import HANDLERS, Report, Skipped
from signstream.loaders.transform import (
    Transform,
    crop_resize,
    emit_frame,
    plan_sample,
    sample_rng,
)


@dataclass(frozen=True)
class FrameItem:
    """One video as a frame folder: its frame files in temporal order and its metadata.

    ``problem`` says why the frames could not be listed (the item is then
    skipped and named when it is loaded, as a shard backend skips a bad sample).
    """

    name: str
    files: tuple[str, ...]
    folder: str
    meta: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None


# --------------------------------------------------------------------- layouts
def _row_items(rows: list[Row]) -> list[FrameItem]:
    """Frame items of corpus-table rows, keyed exactly as pack keys them (per split, table order)."""
    items = []
    for row, key in zip(rows, make_keys(row.name for row in rows)):
        if row.video:
            raise SignstreamError(f"{row.table}:{row.row}: backend='pngdir' reads frame folders, "
                                  f"not video files ({row.video}); pack the table and stream the shards")
        folder = str(Path(row.frames[0]).parent) if row.frames else row.table
        meta = {"name": row.name, "key": key, "split": row.split, "signer": row.signer,
                "gloss": row.gloss, "text": row.text}
        items.append(FrameItem(row.name, row.frames, folder, meta, row.problem))
    return items


def _pair_items(pairs: list | tuple) -> list[FrameItem]:
    """Frame items of ``(name, frame_dir_or_glob)`` pairs."""
    names = [str(n) for n, _ in pairs]
    items = []
    for (name, where), key in zip(zip(names, (d for _, d in pairs)), make_keys(names)):
        pattern = str(Path(where) / "*.png") if Path(where).is_dir() else str(where)
        files = tuple(sorted(glob.glob(pattern)))
        items.append(FrameItem(name, files, str(Path(pattern).parent), {"name": name, "key": key},
                               None if files else f"no frames match {pattern}"))
    return items


def corpus_items(source: Any, *, split: str | None = None, layout: str | None = None) -> list[FrameItem]:
    """Frame folders to load: a corpus root or table + split, or ``(name, frame_dir)`` pairs.

    Args:
        source: a PHOENIX-2014 (multisigner or SI5) or PHOENIX-2014-T root, a
            CSV/TSV table of frame folders (the tables ``signstream pack csv``
            reads), or a list of ``(name, frame_dir_or_glob)`` pairs.
        split: the split to load (needed with a PHOENIX root; with a table,
            ``None`` loads every row).
        layout: ``phoenix2014``, ``phoenix2014t`` or ``csv``; guessed when ``None``.
    """
    if isinstance(source, (list, tuple)):
        items = _pair_items(source)
    else:
        path = Path(source)
        if layout is None:
            layout = "csv" if path.is_file() else (
                "phoenix2014t" if any(path.glob("**/PHOENIX-2014-T.*.corpus.csv")) else "phoenix2014")
        if layout == "csv":
            rows = [r for r in csv_table(path) if split is None or r.split == split]
        else:
            if not path.is_dir():
                raise SignstreamError(f"corpus root is not a directory: {path}")
            if split is None:
                raise SignstreamError("backend='pngdir' with a corpus root needs split= (train, dev or test)")
            rows = lookup(ADAPTERS, layout, "corpus adapter")(path, splits=(split,))
        items = _row_items(rows)
    if not items:
        raise SignstreamError(f"empty split: no videos listed in {source}" + (f" for {split}" if split else ""))
    return items


# ---------------------------------------------------------------------- dataset
def png_size(path: str) -> tuple[int, int]:
    """``(height, width)`` from a PNG header (24 bytes), or by decoding other formats."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(h), int(w)
    img = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise OSError(f"unreadable frame {path}")
    return img.shape[0], img.shape[1]


class PngDirDataset(torch.utils.data.Dataset):
    """Map-style dataset: item ``(index, pass, epoch)`` -> ``(Decoded or None, Report)``.

    The epoch travels with the index (from the sampler, in the main process),
    so persistent worker processes need no other signal.
    """

    def __init__(self, items: list[FrameItem], transform: Transform, *, train: bool, seed: int, handler: str):
        self.items, self.transform, self.train = items, transform, train
        self.seed, self.handler = seed, handler

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: tuple[int, int, int]) -> tuple[Decoded | None, Report]:
        index, pass_, epoch = item
        it = self.items[index]
        report = Report()
        files, key = it.files, it.meta["key"]
        try:
            if it.problem or not files:
                raise OSError(it.problem or f"no frames listed for {it.name}")
            h, w = png_size(files[0])
            plan = plan_sample(len(files), h, w, self.transform, train=self.train,
                               rng=sample_rng(self.seed, epoch, key, pass_))
            unique, slots = plan.frame_slots()
            y0, x0, bh, bw = plan.box
            clip = np.empty((3, plan.length, *plan.out_hw), np.uint8)
            for j, i in enumerate(unique):
                img = cv2.imread(files[i], cv2.IMREAD_COLOR)
                if img is None:
                    raise OSError(f"unreadable frame {files[i]}")
                if img.shape[:2] != (h, w):
                    raise OSError(f"frame {files[i]} is {img.shape[1]}x{img.shape[0]}, not {w}x{h}")
                report.bytes_read += os.path.getsize(files[i])
                rgb = cv2.cvtColor(img[y0:y0 + bh, x0:x0 + bw], cv2.COLOR_BGR2RGB)
                emit_frame(clip, slots[j], crop_resize(rgb[None], (0, 0, bh, bw), plan.out_hw)[0], plan)
        except OSError as exc:
            record = Skipped(key, it.folder, str(exc))
            report.skipped.append(record)
            lookup(HANDLERS, self.handler, "handler")(record)
            return None, report
        meta = {**it.meta, "num_frames": len(files), "height": h, "width": w}
        return Decoded(key, clip, meta, str(Path(files[0]).parent)), report


class RankBatchSampler(torch.utils.data.Sampler):
    """Batches of ``(index, pass, epoch)`` for one rank: eval = its share once, train = equal counts."""

    def __init__(self, n: int, batch_size: int, *, rank: int, world: int, train: bool, shuffle: bool, seed: int):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.train, self.shuffle, self.seed, self.epoch = train, shuffle, seed, 0

    def __len__(self) -> int:
        if self.train:
            return train_batches(self.n, self.world, self.batch_size)
        r0, r1 = rank_range(self.n, self.rank, self.world)
        return -(-(r1 - r0) // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch])
        order = rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        r0, r1 = rank_range(self.n, self.rank, self.world)
        share = [int(i) for i in order[r0:r1]]
        if not self.train:
            items = [(i, 0) for i in share]
        else:
            need, items, pass_ = len(self) * self.batch_size, [], 0
            while len(items) < need:  # replay the share when it is shorter than the batches need
                items += [(i, pass_) for i in share]
                pass_ += 1
                if self.shuffle:
                    rng.shuffle(share)
            items = items[:need]
        for start in range(0, len(items), self.batch_size):
            yield [(i, p, self.epoch) for i, p in items[start:start + self.batch_size]]


class _Collate:
    """The DataLoader's collate_fn: merges reports, pads clips into a worker's SharedRing."""

    def __init__(self, transform: Transform):
        self.transform = transform
        self._ring: SharedRing | None = None

    def __call__(self, samples: list[tuple[Decoded | None, Report]]) -> tuple[Batch | None, Report]:
        if self._ring is None and torch.utils.data.get_worker_info() is not None:
            self._ring = SharedRing(RING_SLOTS)  # one per worker process (each has its own copy)
        report = Report()
        for _, r in samples:
            report.skipped.extend(r.skipped)
            report.bytes_read += r.bytes_read
        decoded = [d for d, _ in samples if d is not None]
        if not decoded:
            return None, report
        return collate(decoded, self.transform, self._ring.get if self._ring else None), report


def _worker_init(_: int) -> None:
    one_opencv_thread()


class PngDirLoader(BaseLoader):
    """The PNG-folder baseline behind ``make_loader(root, backend="pngdir", split=...)``."""

    backend = "pngdir"

    def __init__(self, items: list[FrameItem], *, num_workers: int, **common: Any):
        super().__init__(**common)
        self.items = items
        self.dataset = PngDirDataset(items, self.transform, train=self.train, seed=self.seed,
                                     handler=self.handler)
        self.sampler = RankBatchSampler(len(items), self.batch_size, rank=self.rank, world=self.world,
                                        train=self.train, shuffle=self.shuffle, seed=self.seed)
        self.num_workers = num_workers
        self._dataloader: torch.utils.data.DataLoader | None = None

    def __len__(self) -> int:
        return len(self.sampler)

    def _epoch(self, epoch: int) -> Iterator[tuple[Batch | None, Report]]:
        self.sampler.epoch = epoch
        if self._dataloader is None:  # persistent workers keep their SharedRing buffers
            self._keep_mapped(self.num_workers)
            self._dataloader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self.sampler, num_workers=self.num_workers,
                collate_fn=_Collate(self.transform), worker_init_fn=_worker_init if self.num_workers else None,
                prefetch_factor=PREFETCH if self.num_workers else None, persistent_workers=self.num_workers > 0,
                timeout=WORKER_TIMEOUT_S if self.num_workers else 0)
        try:
            yield from self._dataloader
        except RuntimeError as exc:
            if "timed out" not in str(exc):
                raise
            raise SignstreamError(worker_timeout_message(self.num_workers)) from None

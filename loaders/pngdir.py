"""PNG-folder baseline: the original PHOENIX frame folders, one ``cv2.imread`` per frame.

This is how CSLR code bases load PHOENIX today — a map-style torch Dataset
that globs a video's folder and reads its PNGs — kept here as the benchmark
baseline and as a path for users without shards. It applies the same
:class:`~signstream.loaders.transform.Transform` plans and yields the same
:class:`~signstream.loaders.batch.Batch` as the shard backends, and it reads
only the frames the plan needs.

Corpus tables are parsed here (the loaders depend on nothing else in the
project): :data:`LAYOUTS` maps ``phoenix2014`` and ``phoenix2014t`` to
functions returning :class:`FrameItem` s; a list of ``(name, frame_dir)``
pairs works for anything else.
"""

from __future__ import annotations

import csv
import glob
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from signstream import SignstreamError
from signstream.loaders.base import PREFETCH, RING_SLOTS, BaseLoader, train_batches
from signstream.loaders.batch import Batch, Decoded, SharedRing, collate
from signstream.loaders.shards import rank_range
from signstream.loaders.stats import Report, Skipped, get_handler
from signstream.loaders.transform import (
    Transform,
    crop_resize,
    emit_frame,
    plan_sample,
    sample_rng,
)

FRAMES_DIR = Path("features") / "fullFrame-210x260px"


@dataclass(frozen=True)
class FrameItem:
    """One video as a frame folder: a glob (or folder) and its metadata."""

    name: str
    frames: str
    meta: dict[str, Any] = field(default_factory=dict)
    fallback: str | None = None


def sanitize_key(name: str) -> str:
    """A dot-free key like the packer's (``[A-Za-z0-9_-]`` kept, the rest ``_``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:80] or "sample"


# --------------------------------------------------------------------- layouts
def _find_base(root: Path, candidates: tuple[str, ...], table: str) -> Path:
    for cand in candidates:
        base = root / cand if cand else root
        if (base / "annotations" / "manual" / table).is_file():
            return base
    raise SignstreamError(f"corpus table {table} not found under {root}")


def _read_rows(path: Path, needed: tuple[str, ...]) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="|", quoting=csv.QUOTE_NONE)
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise SignstreamError(f"{path}: missing column(s) {', '.join(missing)}")
        return list(reader)


def phoenix2014_items(root: Path, split: str) -> list[FrameItem]:
    """PHOENIX-2014 multisigner: ``annotations/manual/<split>.corpus.csv`` (id|folder|signer|annotation)."""
    base = _find_base(root, ("phoenix2014-release/phoenix-2014-multisigner", "phoenix-2014-multisigner", ""),
                      f"{split}.corpus.csv")
    rows = _read_rows(base / "annotations" / "manual" / f"{split}.corpus.csv", ("id", "folder", "annotation"))
    return [FrameItem(r["id"], str(base / FRAMES_DIR / split / r["folder"]),
                      {"name": r["id"], "key": sanitize_key(r["id"]), "split": split,
                       "signer": r.get("signer", ""), "gloss": r["annotation"], "text": ""})
            for r in rows]


def phoenix2014t_items(root: Path, split: str) -> list[FrameItem]:
    """PHOENIX-2014-T: ``PHOENIX-2014-T.<split>.corpus.csv``; frames are ``<name>/*.png`` on disk."""
    table = f"PHOENIX-2014-T.{split}.corpus.csv"
    base = _find_base(root, ("PHOENIX-2014-T-release-v3/PHOENIX-2014-T", "PHOENIX-2014-T", ""), table)
    rows = _read_rows(base / "annotations" / "manual" / table, ("name", "video", "orth"))
    frames = base / FRAMES_DIR / split
    # The table says <name>/1/*.png but the release has no 1/ level: try both.
    return [FrameItem(r["name"], str(frames / r["video"]),
                      {"name": r["name"], "key": sanitize_key(r["name"]), "split": split,
                       "signer": r.get("speaker", ""), "gloss": r["orth"], "text": r.get("translation", "")},
                      fallback=str(frames / r["name"] / "*.png"))
            for r in rows]


LAYOUTS: dict[str, Callable[[Path, str], list[FrameItem]]] = {
    "phoenix2014": phoenix2014_items,
    "phoenix2014t": phoenix2014t_items,
}


def get_layout(name: str) -> Callable[[Path, str], list[FrameItem]]:
    """Return the corpus-table reader for layout ``name``."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise SignstreamError(f"unknown corpus layout {name!r}; choose from {', '.join(LAYOUTS)}") from None


def corpus_items(source: Any, *, split: str | None = None, layout: str | None = None) -> list[FrameItem]:
    """Frame folders to load: a PHOENIX root + split, or ``(name, frame_dir)`` pairs."""
    if isinstance(source, (list, tuple)):
        items = [FrameItem(str(n), str(Path(d) / "*.png") if Path(d).is_dir() else str(d),
                           {"name": str(n), "key": sanitize_key(str(n))}) for n, d in source]
    else:
        root = Path(source)
        if not root.is_dir():
            raise SignstreamError(f"corpus root is not a directory: {root}")
        if split is None:
            raise SignstreamError("backend='pngdir' with a corpus root needs split= (train, dev or test)")
        if layout is None:
            layout = "phoenix2014t" if any(root.glob("**/PHOENIX-2014-T.*.corpus.csv")) else "phoenix2014"
        items = get_layout(layout)(root, split)
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
        files = sorted(glob.glob(it.frames)) or (sorted(glob.glob(it.fallback)) if it.fallback else [])
        try:
            if not files:
                raise OSError(f"no frames match {it.frames}")
            key = it.meta.get("key", sanitize_key(it.name))
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
            record = Skipped(it.meta.get("key", it.name), str(Path(it.frames).parent), str(exc))
            report.skipped.append(record)
            get_handler(self.handler)(record)
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
    cv2.setNumThreads(1)


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
                prefetch_factor=PREFETCH if self.num_workers else None, persistent_workers=self.num_workers > 0)
        yield from self._dataloader

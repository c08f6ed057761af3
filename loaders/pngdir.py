"""PNG-folder baseline: the original PHOENIX frame folders, one ``cv2.imread`` per planned frame.

How CSLR code bases load PHOENIX today, kept as the benchmark baseline and a path
for users without shards. Frame folders run through the shared stages of
:mod:`signstream.loaders.stages` (same Transform plans, same Batch, same
rank/epoch rules as the shard backends); corpus tables are read by
:mod:`signstream.loaders.corpora` and keyed by ``format.make_keys``, so a video
has the same key here as in its shard.
"""

from __future__ import annotations

import glob
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from signstream import SignstreamError
from signstream.loaders.corpora import Row, detect_layout, get_layout
from signstream.loaders.format import make_keys
from signstream.loaders.shards import SampleError
from signstream.loaders.stages import Planned, SampleStream, StreamLoader, epoch_permutation
from signstream.loaders.transform import Transform, crop_resize, emit_frame, plan_sample, sample_rng


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

    @property
    def key(self) -> str:
        """The sample key (as ``pack`` keys it)."""
        return self.meta["key"]


# --------------------------------------------------------------------- layouts
def _row_items(rows: list[Row]) -> list[FrameItem]:
    """Frame items of corpus-table rows, keyed exactly as pack keys them (per split, table order)."""
    items = []
    for row, key in zip(rows, make_keys(row.name for row in rows)):
        if row.video:
            raise SignstreamError(
                f"{row.table}:{row.row}: backend='pngdir' reads frame folders, "
                f"not video files ({row.video}); pack the table and stream the shards"
            )
        folder = str(Path(row.frames[0]).parent) if row.frames else row.table
        meta = {
            "name": row.name,
            "key": key,
            "split": row.split,
            "signer": row.signer,
            "gloss": row.gloss,
            "text": row.text,
        }
        items.append(FrameItem(row.name, row.frames, folder, meta, row.problem))
    return items


def _pair_items(pairs: list | tuple) -> list[FrameItem]:
    """Frame items of ``(name, frame_dir_or_glob)`` pairs."""
    names = [str(n) for n, _ in pairs]
    items = []
    for (name, where), key in zip(zip(names, (d for _, d in pairs)), make_keys(names)):
        pattern = str(Path(where) / "*.png") if Path(where).is_dir() else str(where)
        files = tuple(sorted(glob.glob(pattern)))
        items.append(
            FrameItem(
                name,
                files,
                str(Path(pattern).parent),
                {"name": name, "key": key},
                None if files else f"no frames match {pattern}",
            )
        )
    return items


def corpus_items(source: Any, *, split: str | None = None, layout: str | None = None) -> list[FrameItem]:
    """Frame folders to load: a corpus root or table + split, or ``(name, frame_dir)`` pairs.

    Args:
        source: a corpus root or table of any registered layout
            (:data:`~signstream.loaders.corpora.LAYOUTS`: PHOENIX-2014 multisigner
            or SI5 and PHOENIX-2014-T roots, CSV/TSV tables of frame folders, the
            tables ``signstream pack`` reads), or a list of ``(name, frame_dir_or_glob)`` pairs.
        split: the split to load (needed with a root; with a table, ``None`` loads every row).
        layout: a registered layout name; recognised by the layouts' ``detect`` when ``None``.
    """
    if isinstance(source, (list, tuple)):
        items = _pair_items(source)
    else:
        path = Path(source)
        if split is None and path.is_dir():  # a root (a folder) holds several splits
            raise SignstreamError("backend='pngdir' with a corpus root needs split= (train, dev or test)")
        lay = detect_layout(path) if layout is None else get_layout(layout)
        if lay.takes == "root" and not path.is_dir():
            raise SignstreamError(f"corpus root is not a directory: {path}")
        items = _row_items(lay.read(path, splits=(split,) if split else None))
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


class PngDirStream(SampleStream):
    """The shared stages over frame folders: a sample is a :class:`FrameItem`, decoding reads its PNGs."""

    def __init__(self, items: list[FrameItem], transform: Transform, **stream: Any):
        super().__init__(transform, num_samples=len(items), **stream)
        self.items = items

    def samples(self, epoch: int) -> list[FrameItem]:
        return [self.items[i] for i in epoch_permutation(len(self.items), epoch, self.seed, self.shuffle)]

    def where(self, ref: FrameItem) -> str:
        return ref.folder

    def read(self, reader: None, ref: FrameItem, epoch: int, pass_: int) -> Planned:
        if ref.problem or not ref.files:
            raise SampleError(ref.problem or f"no frames listed for {ref.name}")
        try:
            h, w = png_size(ref.files[0])
        except OSError as exc:
            raise SampleError(str(exc)) from None
        plan = plan_sample(
            len(ref.files), h, w, self.transform, train=self.train, rng=sample_rng(self.seed, epoch, ref.key, pass_)
        )
        return Planned(ref, ref.files, {**ref.meta, "num_frames": len(ref.files), "height": h, "width": w}, plan)

    def decode(self, p: Planned, out: np.ndarray) -> None:
        unique, slots = p.plan.frame_slots()
        y0, x0, bh, bw = p.plan.box
        h, w = p.meta["height"], p.meta["width"]
        for j, i in enumerate(unique):
            img = cv2.imread(p.data[i], cv2.IMREAD_COLOR)
            if img is None:
                raise SampleError(f"unreadable frame {p.data[i]}")
            if img.shape[:2] != (h, w):
                raise SampleError(f"frame {p.data[i]} is {img.shape[1]}x{img.shape[0]}, not {w}x{h}")
            self.count_bytes(os.path.getsize(p.data[i]))
            rgb = cv2.cvtColor(img[y0 : y0 + bh, x0 : x0 + bw], cv2.COLOR_BGR2RGB)
            emit_frame(out, slots[j], crop_resize(rgb[None], (0, 0, bh, bw), p.plan.out_hw)[0], p.plan)


class PngDirLoader(StreamLoader):
    """The PNG-folder baseline behind ``make_loader(root, backend="pngdir", split=...)``."""

    backend = "pngdir"

    def __init__(self, items: list[FrameItem], *, num_workers: int, bucket: int = 0, **common: Any):
        super().__init__(**common)
        self.items = items
        self.attach(
            PngDirStream(
                items,
                self.transform,
                train=self.train,
                shuffle=self.shuffle,
                seed=self.seed,
                rank=self.rank,
                world=self.world,
                batch_size=self.batch_size,
                bucket=bucket,
                handler=self.handler,
            ),
            num_workers,
        )

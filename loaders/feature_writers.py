"""Feature writers: per-video ``.npy``, SignJoey / SLRT pickles, feature shards.

Extraction writes each video once, atomically, to a per-video store named by shard key
(``<split>/<key>.npy`` + ``.json``); the other formats are merged from it by the main process.
Writers are plain functions in :data:`WRITERS`, called as ``writer(store, out, split, prefix=...)``;
read back by :mod:`signstream.loaders.feature_readers`. Why: docs/design/feature-files.md
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from signstream.loaders.feature_readers import INDEX_FILE
from signstream.loaders.fileio import atomic_write, write_json
from signstream.loaders.format import (
    index_path_for,
    is_key,
    sample_key,
    shard_name,
    write_index,
    write_tar,
)

# The split index has a dot inside its stem, so no ``<key>.json`` sidecar can ever be named like it
# (keys are dot-free); run-level files (summary.json, config.yaml) live one folder up.
FILE_RE = re.compile(r"[A-Za-z0-9_-]+\.(?:npy|json)")  # what a per-video store holds, besides the index


def file_key(key: str) -> str:
    """The file stem of a sample: its shard key, which pack makes unique and dot-free.

    A key from elsewhere is sanitised the way pack makes keys, so that no
    metadata can name a file outside the split folder.
    """
    return key if is_key(key) else sample_key(key)


def video_paths(store: Path, split: str, key: str) -> tuple[Path, Path]:
    """The ``.npy`` file and JSON sidecar of one video (named by its shard key) in a store."""
    base = store / split / file_key(key)
    return base.with_name(base.name + ".npy"), base.with_name(base.name + ".json")


def is_done(store: Path, split: str, key: str) -> bool:
    """True when both files of a video exist (both are written atomically, JSON last)."""
    npy, meta = video_paths(store, split, key)
    return npy.exists() and meta.exists()


def write_video(store: Path, split: str, key: str, meta: dict, features: np.ndarray, dtype: str = "float16") -> None:
    """Write one video's ``[T', D]`` features and its metadata, atomically, JSON last."""
    npy, sidecar = video_paths(store, split, key)
    with atomic_write(npy, "wb") as f:
        np.save(f, np.ascontiguousarray(features, dtype=dtype))
    write_json(
        sidecar,
        {
            **meta,
            "key": npy.name[:-4],
            "feature_frames": int(features.shape[0]),
            "feature_dim": int(features.shape[1]),
            "file": npy.name,
        },
    )


def store_entries(store: Path, split: str) -> list[tuple[Path, dict]]:
    """The sidecars of a split's per-video store and their metadata, in file order.

    Only sidecars this project wrote count (``<key>.json`` naming its
    ``<key>.npy``, which exists); other files in the folder are left alone.
    """
    entries = []
    folder = store / split
    for sidecar in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if not FILE_RE.fullmatch(sidecar.name):
            continue
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        stem = sidecar.name[:-5]
        if (
            isinstance(meta, dict)
            and meta.get("file") == f"{stem}.npy"
            and isinstance(meta.get("name"), str)
            and sidecar.with_name(f"{stem}.npy").is_file()
        ):
            entries.append((sidecar, {**meta, "key": stem}))
    return entries


def _order(meta: dict) -> tuple[str, str]:
    return meta["name"], meta["key"]


def read_store(store: Path, split: str) -> list[tuple[dict, np.ndarray]]:
    """All videos of a split in a per-video store, sorted by name (then key)."""
    items = [(meta, np.load(sidecar.with_name(meta["file"]))) for sidecar, meta in store_entries(store, split)]
    return sorted(items, key=lambda it: _order(it[0]))


def write_store_index(store: Path, split: str) -> int:
    """Write ``<store>/<split>/features.index.json`` listing the split's videos; returns the count."""
    metas = sorted((meta for _, meta in store_entries(store, split)), key=_order)
    write_json(store / split / INDEX_FILE, {"split": split, "videos": metas})
    return len(metas)


def unique_names(metas: list[dict]) -> list[str]:
    """Corpus names, with the shard key standing in for a name that occurs more than once.

    SignJoey merges entries that share a name (concatenating their features), so
    a merged file must never repeat one.
    """
    counts: dict[str, int] = {}
    for m in metas:
        counts[m["name"]] = counts.get(m["name"], 0) + 1
    return [m["name"] if counts[m["name"]] == 1 else m["key"] for m in metas]


class _DeterministicPickler(pickle.Pickler):
    """Pickles tensor storages without the memory address torch's default reduction embeds.

    The result loads with plain ``pickle.load`` (as SignJoey and SLRT read it),
    and the same features give the same bytes in every run.
    """

    def reducer_override(self, obj):
        import torch

        if isinstance(obj, torch.storage.TypedStorage):
            buf = io.BytesIO()
            torch.save(obj, buf)  # zip format: storage keys are counters, not addresses
            return torch.storage._load_from_bytes, (buf.getvalue(),)
        return NotImplemented


def npy_writer(store: Path, out: Path, split: str, *, prefix: str = "features") -> Path:
    """The per-video store itself is the ``npy`` output; index it (``prefix`` names nothing here)."""
    write_store_index(store, split)
    return store / split


def signjoey_writer(store: Path, out: Path, split: str, *, prefix: str = "features") -> Path:
    """Merge a split into one SignJoey gzip pickle ``<out>/<prefix>.<split>``."""
    import torch

    items = read_store(store, split)
    names = unique_names([m for m, _ in items])
    entries = [
        {
            "name": name,
            "signer": m.get("signer") or "",
            "gloss": m.get("gloss") or "",
            "text": m.get("text") or "",
            "sign": torch.from_numpy(np.asarray(f, dtype=np.float32)),
            "num_frames": int(m.get("num_frames") or f.shape[0]),
        }
        for name, (m, f) in zip(names, items)
    ]
    path = out / f"{prefix}.{split}"
    # filename="" and mtime=0: the gzip header would otherwise hold the temporary name and the time
    with atomic_write(path, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz:
        _DeterministicPickler(gz, protocol=4).dump(entries)
    return path


def shards_writer(store: Path, out: Path, split: str, *, prefix: str = "features", max_samples: int = 1000) -> Path:
    """Merge a split into zstd-compressed feature WebDataset shards (deterministic).

    The shards are named by split (``prefix`` names nothing here), ``max_samples`` videos each.
    """
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3)
    split_dir = out / "feature-shards" / split
    items = read_store(store, split)
    for number, start in enumerate(range(0, len(items), max_samples)):
        samples = []
        for meta, feats in items[start : start + max_samples]:
            buf = io.BytesIO()
            np.save(buf, feats)
            key = meta["key"]  # the file stem in the store: sanitised, never a path from the metadata
            samples.append(
                [
                    (f"{key}.npy.zst", cctx.compress(buf.getvalue())),
                    (f"{key}.json", json.dumps(meta, sort_keys=True).encode()),
                ]
            )
        tar = split_dir / shard_name(split, number)
        write_index(index_path_for(tar), write_tar(tar, samples))
    return split_dir


WRITERS: dict[str, Callable[..., Path]] = {
    "npy": npy_writer,
    "signjoey": signjoey_writer,
    "shards": shards_writer,
}

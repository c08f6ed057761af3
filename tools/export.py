"""Feature writers: per-video ``.npy``, SignJoey / SLRT pickles, feature shards.

Extraction writes every video's features once, atomically, as
``<dir>/<split>/<name>.npy`` (``[T', D]``) with a JSON sidecar of its metadata;
that per-video store is what makes extraction resumable and lets each rank
write only the videos it owns. The other formats are *merged* from it by the
main process after all ranks finish:

* ``signjoey``: ``<out>/<prefix>.<split>``, a gzip-compressed pickle holding a
  list of ``{"name", "signer", "gloss", "text", "sign": torch.Tensor[T', D],
  "num_frames"}`` sorted by name (SignJoey and SLRT read it as it is);
* ``shards``: ``<out>/feature-shards/<split>/<split>-NNNNNN.tar`` WebDataset shards
  with ``<key>.npy.zst`` (zstd-compressed ``.npy`` bytes) and ``<key>.json``.

Writers are plain functions in :data:`WRITERS`, chosen with :func:`get_writer`.
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

from signstream import SignstreamError
from signstream.loaders.fileio import atomic_write, write_json
from signstream.tools.shardio import write_index, write_tar

INDEX_FILE = "features.json"


def safe_name(name: str) -> str:
    """A file-system safe form of a corpus name (path separators replaced)."""
    return re.sub(r"[/\\\0]", "_", name)


def video_paths(store: Path, split: str, name: str) -> tuple[Path, Path]:
    """The ``.npy`` file and JSON sidecar of one video in a per-video store."""
    base = str(store / split / safe_name(name))  # names may hold dots: append, never with_suffix
    return Path(base + ".npy"), Path(base + ".json")


def is_done(store: Path, split: str, name: str) -> bool:
    """True when both files of a video exist (both are written atomically, JSON last)."""
    npy, meta = video_paths(store, split, name)
    return npy.exists() and meta.exists()


def write_video(store: Path, split: str, meta: dict, features: np.ndarray, dtype: str = "float16") -> None:
    """Write one video's ``[T', D]`` features and its metadata, atomically, JSON last."""
    npy, sidecar = video_paths(store, split, meta["name"])
    with atomic_write(npy, "wb") as f:
        np.save(f, np.ascontiguousarray(features, dtype=dtype))
    write_json(sidecar, {**meta, "feature_frames": int(features.shape[0]),
                         "feature_dim": int(features.shape[1]), "file": npy.name})


def read_store(store: Path, split: str) -> list[tuple[dict, np.ndarray]]:
    """All videos of a split in a per-video store, sorted by name."""
    items = []
    for sidecar in sorted((store / split).glob("*.json")):
        if sidecar.name == INDEX_FILE:
            continue
        meta = json.loads(sidecar.read_text())
        items.append((meta, np.load(sidecar.with_name(meta["file"]))))
    return sorted(items, key=lambda it: it[0]["name"])


def write_store_index(store: Path, split: str) -> int:
    """Write ``<store>/<split>/features.json`` listing the split's videos; returns the count."""
    metas = sorted((json.loads(p.read_text()) for p in (store / split).glob("*.json")
                    if p.name != INDEX_FILE), key=lambda m: m["name"])
    write_json(store / split / INDEX_FILE, {"split": split, "videos": metas})
    return len(metas)


def npy_writer(store: Path, out: Path, split: str, **_) -> Path:
    """The per-video store itself is the ``npy`` output; index it."""
    write_store_index(store, split)
    return store / split


def signjoey_writer(store: Path, out: Path, split: str, prefix: str = "features", **_) -> Path:
    """Merge a split into one SignJoey gzip pickle ``<out>/<prefix>.<split>``."""
    import torch

    entries = [{"name": m["name"], "signer": m.get("signer", ""), "gloss": m.get("gloss", ""),
                "text": m.get("text", ""), "sign": torch.from_numpy(np.asarray(f, dtype=np.float32)),
                "num_frames": int(m.get("num_frames", f.shape[0]))} for m, f in read_store(store, split)]
    path = out / f"{prefix}.{split}"
    with atomic_write(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        pickle.dump(entries, gz, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def shards_writer(store: Path, out: Path, split: str, max_samples: int = 1000, **_) -> Path:
    """Merge a split into zstd-compressed feature WebDataset shards (deterministic)."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=3)
    split_dir = out / "feature-shards" / split
    items = read_store(store, split)
    for number, start in enumerate(range(0, len(items), max_samples)):
        samples = []
        for meta, feats in items[start : start + max_samples]:
            buf = io.BytesIO()
            np.save(buf, feats)
            key = meta.get("key") or safe_name(meta["name"]).replace(".", "_")
            samples.append([(f"{key}.npy.zst", cctx.compress(buf.getvalue())),
                            (f"{key}.json", json.dumps(meta, sort_keys=True).encode())])
        tar = split_dir / f"{split}-{number:06d}.tar"
        write_index(tar.with_suffix(".idx"), write_tar(tar, samples))
    return split_dir


WRITERS: dict[str, Callable[..., Path]] = {
    "npy": npy_writer,
    "signjoey": signjoey_writer,
    "shards": shards_writer,
}


def get_writer(name: str) -> Callable[..., Path]:
    """Return the feature writer called ``name`` (``npy``, ``signjoey``, ``shards``)."""
    if name not in WRITERS:
        raise SignstreamError(f"unknown feature writer {name!r}; choose from {', '.join(WRITERS)}")
    return WRITERS[name]

"""Feature readers: load extracted features back for head training.

Reads every format the extraction recipe writes — the per-video ``.npy`` store
(``<dir>/<split>/features.json`` + ``<name>.npy``), SignJoey/SLRT gzip pickles
(``<dir>/<prefix>.<split>``) and zstd feature shards
(``<dir>/feature-shards/<split>/*.tar``) — into one list of
:class:`FeatureSample`. Readers are plain functions in :data:`READERS`;
:func:`load_split` picks one by name or detects the format.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from signstream import SignstreamError


@dataclass
class FeatureSample:
    """One video's features ``[T', D]`` and its labels."""

    name: str
    gloss: str
    features: np.ndarray
    signer: str = ""
    text: str = ""


def read_npy(root: Path, split: str) -> list[FeatureSample]:
    """The per-video ``.npy`` store indexed by ``<root>/<split>/features.json``."""
    index = root / split / "features.json"
    videos = json.loads(index.read_text())["videos"]
    out = []
    for m in videos:
        path = root / split / m["file"]
        if not path.exists():
            raise SignstreamError(f"{index} lists {m['file']}, which is missing")
        out.append(FeatureSample(m["name"], m.get("gloss", ""), np.load(path), m.get("signer", ""),
                                 m.get("text", "")))
    return out


def read_signjoey(root: Path, split: str) -> list[FeatureSample]:
    """A SignJoey gzip pickle ``<root>/<prefix>.<split>`` (exactly one must match)."""
    files = sorted(p for p in root.glob(f"*.{split}") if p.is_file())
    if len(files) != 1:
        raise SignstreamError(f"expected one SignJoey file *.{split} in {root}, found {len(files)}")
    with gzip.open(files[0], "rb") as f:
        entries = pickle.load(f)  # noqa: S301 - a file this project wrote or the user chose
    return [FeatureSample(e["name"], e.get("gloss", ""), np.asarray(e["sign"], dtype=np.float32),
                          e.get("signer", ""), e.get("text", "")) for e in entries]


def read_shards(root: Path, split: str) -> list[FeatureSample]:
    """zstd feature shards ``<root>/feature-shards/<split>/*.tar``."""
    import zstandard

    dctx = zstandard.ZstdDecompressor()
    out = []
    for tar_path in sorted((root / "feature-shards" / split).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members: dict[str, dict[str, bytes]] = {}
            for info in tar:
                key, _, ext = info.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(info).read()
        for parts in members.values():
            meta = json.loads(parts["json"])
            feats = np.load(io.BytesIO(dctx.decompress(parts["npy.zst"])))
            out.append(FeatureSample(meta["name"], meta.get("gloss", ""), feats, meta.get("signer", ""),
                                     meta.get("text", "")))
    return sorted(out, key=lambda s: s.name)


READERS: dict[str, Callable[[Path, str], list[FeatureSample]]] = {
    "npy": read_npy,
    "signjoey": read_signjoey,
    "shards": read_shards,
}


def detect_format(root: Path, split: str) -> str:
    """Which writer produced ``root`` for ``split`` (npy preferred, then shards, then SignJoey)."""
    if (root / split / "features.json").exists():
        return "npy"
    if list((root / "feature-shards" / split).glob("*.tar")):
        return "shards"
    if list(root.glob(f"*.{split}")):
        return "signjoey"
    raise SignstreamError(f"no features for split {split!r} in {root} "
                          "(expected <split>/features.json, feature-shards/<split>/ or <prefix>.<split>)")


def load_split(root: str | Path, split: str, fmt: str = "auto") -> list[FeatureSample]:
    """Load one split's features; ``fmt`` is ``auto`` or a key of :data:`READERS`."""
    root = Path(root)
    if not root.is_dir():
        raise SignstreamError(f"features directory not found: {root}")
    fmt = detect_format(root, split) if fmt == "auto" else fmt
    if fmt not in READERS:
        raise SignstreamError(f"unknown feature format {fmt!r}; choose from auto, {', '.join(READERS)}")
    samples = READERS[fmt](root, split)
    if not samples:
        raise SignstreamError(f"split {split!r} in {root} has no feature files")
    return samples

"""Shared fixtures of the loader tests: a tiny corpus, its shards, a damaged split.

The corpus and its VP9/H.264 shards come from the real path — ``signstream
synth`` then ``signstream pack`` — once both are importable, otherwise from
the hand-built writer in ``shardkit.py``. The damaged split always comes from
``shardkit`` (the packer refuses to write broken videos).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.loaders.shardkit import H, W, encode, moving_frames, write_phoenix_pngs, write_split


def _real_pipeline():
    """``(make_corpus, pack_corpus)`` once both exist, else ``None`` (hand-built shards)."""
    try:
        from signstream.tools.pack import pack_corpus
        from signstream.tools.synth import make_corpus
    except ImportError:
        return None
    return make_corpus, pack_corpus


@pytest.fixture(scope="session")
def tiny_videos() -> dict[str, np.ndarray]:
    """Seven short clips of 10-30 frames (keys v00..v06)."""
    lengths = [12, 25, 10, 30, 17, 21, 14]
    return {f"v{i:02d}": moving_frames(n, seed=i) for i, n in enumerate(lengths)}


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, tiny_videos) -> dict[str, Path]:
    """A PHOENIX-2014 frame-folder corpus and its dev split packed as VP9 and H.264 shards.

    Built with ``signstream synth`` + ``signstream pack`` when both are
    available (the real path); otherwise the same layout is written here.
    Returns ``{"root": corpus root, "vp9": dev split dir, "h264": dev split dir}``.
    """
    base = tmp_path_factory.mktemp("corpus")
    real = _real_pipeline()
    if real is not None:
        make_corpus, pack_corpus = real
        root = Path(
            make_corpus(base / "corpus", layout="phoenix2014", seed=0, train=2, dev=7, test=1, height=H, width=W)
        )
        for codec in ("vp9", "h264"):
            pack_corpus(
                "phoenix2014",
                base / codec,
                root=root,
                splits=["dev"],
                workers=1,
                progress=False,
                codec=codec,
                max_samples=3,
            )
        return {"root": root, "vp9": base / "vp9" / "dev", "h264": base / "h264" / "dev"}
    root = write_phoenix_pngs(base / "corpus", "dev", tiny_videos)
    return {
        "root": root,
        "vp9": write_split(base / "vp9", "dev", tiny_videos),
        "h264": write_split(base / "h264", "dev", tiny_videos, codec="h264"),
    }


@pytest.fixture(scope="session")
def vp9_split(corpus) -> Path:
    """The VP9 dev split (7 samples, 3 per shard)."""
    return corpus["vp9"]


@pytest.fixture(scope="session")
def h264_split(corpus) -> Path:
    """The H.264 dev split."""
    return corpus["h264"]


@pytest.fixture(scope="session")
def damaged_split(tmp_path_factory, tiny_videos) -> Path:
    """VP9 split with v02 truncated to a third and v04 garbled in the middle (JSON intact)."""
    trunc = encode(tiny_videos["v02"])
    good = bytearray(encode(tiny_videos["v04"]))
    for j in range(200, len(good) - 50):
        good[j] ^= 0x5A
    return write_split(
        tmp_path_factory.mktemp("damaged"),
        "dev",
        tiny_videos,
        damage={"v02": trunc[: len(trunc) // 3], "v04": bytes(good)},
    )

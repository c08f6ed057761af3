"""Shared fixtures: a tiny synthetic corpus and its packed shards (session-scoped).

Tiny frames (48×64) and few videos keep the suite fast on a 2-core CPU box;
the real layouts and the real packer are what run. NVDEC refuses VP9 below
128×128, so the GPU tests (and their CPU twins) read a second, even smaller
corpus at PHOENIX's real 210×260, built only when a test asks for it.
"""

from __future__ import annotations

import pytest
import torch

from tests.remote_fixtures import http_packed, s3_env, s3_packed  # noqa: F401 - shards behind servers

TINY = dict(height=48, width=64)
PHOENIX_SIZE = dict(height=210, width=260)  # NVDEC's VP9 minimum is 128x128


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if item.get_closest_marker("cuda"):  # the marker, not a keyword: a test id may say "cuda"
            item.add_marker(skip)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A PHOENIX-2014 layout corpus: 6 train, 3 dev, 3 test videos at 48×64."""
    from signstream.tools.synth import make_corpus

    out = tmp_path_factory.mktemp("synth")
    return make_corpus(out, layout="phoenix2014", seed=0, train=6, dev=3, test=3, vocab=8, **TINY)


@pytest.fixture(scope="session")
def packed(synth_root, tmp_path_factory):
    """``synth_root`` packed as VP9 with 4 videos per shard."""
    from signstream.tools.pack import pack_corpus

    out = tmp_path_factory.mktemp("packed")
    pack_corpus("phoenix2014", out, root=synth_root, workers=1, progress=False, max_samples=4)
    return out


@pytest.fixture(scope="session")
def phoenix_size_packed(tmp_path_factory):
    """A PHOENIX-2014 layout corpus at 210×260 packed as VP9, 2 videos per shard.

    4 train, 3 dev, 2 test videos of about 10-40 frames: what NVDEC accepts
    (the 48×64 corpus is below its VP9 minimum), small enough to build in a
    couple of seconds on the CPU.
    """
    from signstream.tools.pack import pack_corpus
    from signstream.tools.synth import make_corpus

    base = tmp_path_factory.mktemp("phoenix_size")
    root = make_corpus(
        base / "corpus",
        layout="phoenix2014",
        seed=0,
        train=4,
        dev=3,
        test=2,
        vocab=6,
        min_glosses=1,
        max_glosses=3,
        gloss_frames=6,
        transition_frames=2,
        workers=1,
        **PHOENIX_SIZE,
    )
    pack_corpus("phoenix2014", base / "packed", root=root, workers=1, progress=False, max_samples=2)
    return base / "packed"

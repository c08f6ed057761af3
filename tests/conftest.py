"""Shared fixtures: a tiny synthetic corpus and its packed shards (session-scoped).

Tiny frames (48×64) and few videos keep the suite fast on a 2-core CPU box;
the real layouts and the real packer are what run.
"""

from __future__ import annotations

import pytest
import torch

from tests.remote_fixtures import http_packed, s3_env, s3_packed  # noqa: F401 - shards behind servers

TINY = dict(height=48, width=64)


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

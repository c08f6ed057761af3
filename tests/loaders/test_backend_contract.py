"""The promises every registered loader backend keeps, run over the registry (and a toy backend).

The toy backend below is registered here in one small class on top of
``signstream.loaders.stages``: a new backend is one file and passes or fails
the same suite as the others.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from signstream.loaders import Transform, make_loader
from signstream.loaders.api import BACKENDS, RECIPE_BACKENDS, register_backend
from signstream.loaders.shards import SampleReader, ShardSet, resolve_shards
from signstream.loaders.stages import (
    Planned,
    SampleStream,
    StreamLoader,
    epoch_order,
    plan_from_meta,
)
from tests.loaders.shardkit import write_phoenix_pngs


# ----------------------------------------------------------------- a toy backend
class ToyStream(SampleStream):
    """Shards read by offset, decoded with PyAV; everything else comes from the shared stages."""

    def __init__(self, shardset: ShardSet, transform: Transform, **stream):
        super().__init__(transform, num_samples=shardset.num_samples, **stream)
        self.shardset = shardset

    def samples(self, epoch):
        return epoch_order(self.shardset, epoch, self.seed, self.shuffle)

    def where(self, ref):
        return self.shardset.shard_of(ref)

    def open(self):
        return SampleReader(self.shardset)

    def read(self, reader, ref, epoch, pass_):
        data, meta, nbytes = reader.read(ref)
        self.count_bytes(nbytes)
        return Planned(
            ref,
            data,
            meta,
            plan_from_meta(
                meta, ref.key, data, self.transform, train=self.train, seed=self.seed, epoch=epoch, pass_=pass_
            ),
        )

    def decode(self, p, out):
        from signstream.loaders.pyav_backend import decode_clip

        decode_clip(p.data, p.plan, out=out)


class ToyLoader(StreamLoader):
    backend = "toy"

    def __init__(self, shardset, *, num_workers, **common):
        super().__init__(**common)
        self.attach(
            ToyStream(
                shardset,
                self.transform,
                train=self.train,
                shuffle=self.shuffle,
                seed=self.seed,
                rank=self.rank,
                world=self.world,
                batch_size=self.batch_size,
                handler=self.handler,
            ),
            num_workers,
        )


def _build_toy(source, common, options):
    return ToyLoader(resolve_shards(source), num_workers=options.pop("num_workers"), **common)


@pytest.fixture(scope="module", autouse=True)
def toy_backend():
    register_backend("toy", _build_toy)
    yield
    BACKENDS.pop("toy", None)
    RECIPE_BACKENDS.pop("toy", None)


# ------------------------------------------------------------------ the cases
# Every registered backend that decodes on the CPU, with the options it is tested with.
OPTIONS = {
    "pyav": {"num_workers": 0},
    "dali": {"num_workers": 1, "postprocess": "opencv"},
    "pngdir": {"num_workers": 0, "split": "dev"},
    "toy": {"num_workers": 0},
}
NAMES = sorted({n for n, b in BACKENDS.items() if "cpu" in b.devices} | {"toy"})
T = Transform(size=32, max_frames=8, output="uint8")


@pytest.fixture(params=NAMES)
def backend(request):
    name = request.param
    if name == "dali" and importlib.util.find_spec("nvidia.dali") is None:
        pytest.skip("nvidia-dali is not installed")
    assert name in OPTIONS, f"backend {name!r} is registered but has no contract test options"
    return name


@pytest.fixture(scope="module")
def png_damaged(tmp_path_factory, tiny_videos) -> Path:
    """The tiny videos as frame folders, v02 with an unreadable first frame and v04 with no frames at all."""
    root = write_phoenix_pngs(tmp_path_factory.mktemp("pngdamaged"), "dev", tiny_videos)
    (next(root.glob("**/dev/v02/1")) / "v02.avi_pid0_fn000000-0.png").write_bytes(b"not a png")
    for f in next(root.glob("**/dev/v04/1")).glob("*.png"):
        f.unlink()
    return root


def source(name, corpus, damaged_split=None, png_damaged=None):
    """The clean (or damaged) tiny dev split for ``name``."""
    if name == "pngdir":
        return png_damaged if damaged_split is not None else corpus["root"]
    return damaged_split if damaged_split is not None else corpus["vp9"]


def load(name, src, **kw):
    kw = {**OPTIONS[name], "transform": T, "rank": 0, "world_size": 1, **kw}
    ld = make_loader(src, backend=name, **kw)
    return ld, list(ld)


def keys(batches):
    return [k for b in batches for k in b.keys]


# ------------------------------------------------------------------ the promises
@pytest.mark.parametrize("world", [2, 3])
def test_eval_reads_every_sample_exactly_once_across_ranks(backend, corpus, world):
    _, everything = load(backend, source(backend, corpus))
    assert len(set(keys(everything))) == len(keys(everything)) == 7
    seen = []
    for rank in range(world):
        ld, batches = load(backend, source(backend, corpus), batch_size=2, rank=rank, world_size=world)
        assert len(batches) == len(ld)
        seen += keys(batches)
    assert sorted(seen) == sorted(keys(everything))


def test_train_batch_counts_are_equal_across_ranks_despite_corrupt_samples(backend, corpus, damaged_split, png_damaged):
    src = source(backend, corpus, damaged_split, png_damaged)
    counts = []
    for rank in range(2):
        ld, batches = load(backend, src, batch_size=1, mode="train", handler="skip", rank=rank, world_size=2)
        assert not {"v02", "v04"} & set(keys(batches))
        counts.append((len(batches), len(ld)))
    assert counts == [(3, 3), (3, 3)]


def test_a_corrupt_sample_is_skipped_and_named(backend, corpus, damaged_split, png_damaged):
    ld, batches = load(backend, source(backend, corpus, damaged_split, png_damaged), batch_size=3, handler="skip")
    assert sorted(keys(batches)) == ["v00", "v01", "v03", "v05", "v06"]
    skipped = {s.key: s for s in ld.stats.skipped}
    assert set(skipped) == {"v02", "v04"} and all(s.reason for s in skipped.values())
    if backend == "pngdir":
        # a folder with an unreadable frame is named; one with no frames names the table listing it
        assert Path(skipped["v02"].shard).parent.name == "v02" and skipped["v04"].shard.endswith(".corpus.csv")
    else:
        assert (skipped["v02"].shard, skipped["v04"].shard) == ("dev-000000.tar", "dev-000001.tar")
    assert "2 skipped" in ld.stats.summary() and ld.stats.samples == 5


def test_same_tensors_as_the_reference_backend(backend, corpus):
    if backend == "pngdir":
        pytest.skip("pngdir reads the frames before encoding; test_pngdir.py compares it by PSNR")
    t = Transform(size=48, output="uint8")
    _, ref = load("pyav", corpus["vp9"], batch_size=3, transform=t)
    _, got = load(backend, corpus["vp9"], batch_size=3, transform=t)
    assert keys(got) == keys(ref)
    for a, b in zip(ref, got, strict=True):  # the DALI/PyAV parity tolerance (test_dali_backend.py)
        assert a.lengths.tolist() == b.lengths.tolist() and a.video.shape == b.video.shape
        diff = (a.video.float() - b.video.float()).abs().flatten()
        assert float(diff.mean()) < 0.6 and float(diff.max()) <= 24
        assert float(torch.quantile(diff, 0.99)) <= 2


def test_an_epoch_replays_the_same_order_after_an_early_stop(backend, corpus):
    kw = {"batch_size": 2, "mode": "train", "seed": 5}
    ld = make_loader(
        source(backend, corpus), backend=backend, transform=T, rank=0, world_size=1, **OPTIONS[backend], **kw
    )
    ld.set_epoch(3)
    first = next(iter(ld))  # stop after one batch
    ld.set_epoch(3)
    full = list(ld)
    again, _ = load(backend, source(backend, corpus), **kw)  # a fresh loader, epoch 0 first
    again.set_epoch(3)
    replay = list(again)
    assert full[0].keys == first.keys and torch.equal(full[0].video, first.video)
    assert [b.keys for b in replay] == [b.keys for b in full]
    assert all(np.array_equal(a.video, b.video) for a, b in zip(full, replay, strict=True))

"""Shards behind any HTTP server are streamed: one request per shard (or per run of needed samples),
the same samples and tensors as local disk, a dropped connection resumed or named, and training
over URLs shuffled in a buffer yet every sample once per epoch, replayable."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from signstream.benchmarks.servers import http_server, request_counts
from signstream.loaders import Transform, make_loader
from signstream.loaders import remote as remote_mod
from signstream.loaders.shards import resolve_shards
from tests.remote_fixtures import FAST_FAILURE

T = Transform(size=32, max_frames=8, output="uint8")


@pytest.fixture(autouse=True)
def fast_failure(monkeypatch):
    for name, value in FAST_FAILURE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(remote_mod, "_NO_RANGE", set())  # each test's servers are new hosts anyway


def load(src, backend="pyav", **kw):
    kw = {"num_workers": 0, "transform": T, "rank": 0, "world_size": 1, "batch_size": 2, **kw}
    if backend == "dali":
        kw.setdefault("postprocess", "opencv")
    ld = make_loader(src, backend=backend, **kw)
    return ld, list(ld)


def by_key(batches):
    return {k: v[:, : int(n)].clone() for b in batches for k, v, n in zip(b.keys, b.video, b.lengths)}


def keys(batches):
    return [k for b in batches for k in b.keys]


def tar_requests(base):
    return {name: n for name, n in request_counts(base).items() if name.endswith(".tar")}


@pytest.mark.parametrize("backend", ["pyav", "dali"])
def test_a_server_without_range_support_gives_the_same_samples_and_tensors_as_local(corpus, backend):
    if backend == "dali" and importlib.util.find_spec("nvidia.dali") is None:
        pytest.skip("nvidia-dali is not installed")
    split = corpus["vp9"]
    local_ld, local = load(split, backend, num_workers=1)
    with http_server(split.parent, ranges=False) as base:
        ld, served = load(f"{base}/{split.name}", backend, num_workers=1)
        tars = tar_requests(base)
    assert keys(served) == keys(local) and not ld.stats.skipped
    a, b = by_key(local), by_key(served)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert tars and all(n == 1 for n in tars.values())  # each shard streamed once, front to back


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_a_slow_server_is_not_asked_once_per_sample(corpus, mode):
    split = corpus["vp9"]
    samples = resolve_shards(split).num_samples
    with http_server(split.parent, delay=0.02) as base:
        ld, batches = load(f"{base}/{split.name}", mode=mode, batch_size=1, num_workers=1, seed=3)
        tars = tar_requests(base)
    assert len(keys(batches)) == (samples if mode == "eval" else len(ld)) and not ld.stats.skipped
    assert tars and max(tars.values()) <= 2, tars


def test_a_connection_dropped_once_mid_shard_resumes_where_it_stopped(packed, tmp_path):
    _, local = load(packed / "train")
    with http_server(packed, drop=("train-000000.tar",), drop_times=1) as base:
        ld, served = load(f"{base}/train")
    assert not ld.stats.skipped
    a, b = by_key(local), by_key(served)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_server_that_keeps_dropping_names_what_it_lost_and_never_yields_half_a_sample(packed):
    _, local = load(packed / "train")
    with http_server(packed, drop=("train-000000.tar",)) as base:
        ld, served = load(f"{base}/train")
    lost = {s.key for s in ld.stats.skipped}
    first = {r.key for r in resolve_shards(packed / "train").shards[0].samples}
    assert lost and lost <= first and all(s.shard == "train-000000.tar" for s in ld.stats.skipped)
    assert all("cannot fetch" in s.reason for s in ld.stats.skipped)
    a, b = by_key(local), by_key(served)
    assert set(b) == set(a) - lost and all(torch.equal(a[k], b[k]) for k in b)


def test_training_over_a_url_reads_every_sample_once_per_epoch_across_ranks_and_replays(packed):
    n = resolve_shards(packed / "train").num_samples
    with http_server(packed, delay=0.005) as base:
        src, runs = f"{base}/train", []
        for rank in range(2):
            ld, batches = load(src, mode="train", seed=7, rank=rank, world_size=2, batch_size=1, num_workers=1)
            runs.append(keys(batches))
            assert len(batches) == len(ld) == n // 2
        again = [load(src, mode="train", seed=7, rank=r, world_size=2, batch_size=1)[1] for r in range(2)]
        tars = tar_requests(base)
    seen = runs[0] + runs[1]
    assert len(seen) == len(set(seen)) == 2 * (n // 2)  # no sample twice in an epoch
    assert [keys(b) for b in again] == runs  # the same order with or without workers
    assert max(tars.values()) <= 8  # 4 loaders x (at most) 2 requests per shard


def test_training_over_a_url_shuffles_within_shards_deterministically(packed):
    with http_server(packed) as base:
        src = f"{base}/train"
        ld, first = load(src, mode="train", seed=1, batch_size=1)
        _, replay = load(src, mode="train", seed=1, batch_size=1)
        ld.set_epoch(5)
        other = list(ld)
    assert keys(first) == keys(replay)
    assert all(torch.equal(a.video, b.video) for a, b in zip(first, replay, strict=True))
    assert keys(other) != keys(first) and sorted(keys(other)) == sorted(keys(first))
    file_order = [r.key for r in resolve_shards(packed / "train").refs]
    assert keys(first) != file_order


# --------------------------------------------------- the backend contract, over a URL
def test_over_a_url_train_batch_counts_are_equal_across_ranks_despite_corrupt_samples(damaged_split):
    with http_server(damaged_split.parent) as base:
        counts = []
        for rank in range(2):
            ld, batches = load(
                f"{base}/{damaged_split.name}", batch_size=1, mode="train", handler="skip", rank=rank, world_size=2
            )
            assert not {"v02", "v04"} & set(keys(batches))
            counts.append((len(batches), len(ld)))
    assert counts == [(3, 3), (3, 3)]


def test_over_a_url_a_corrupt_sample_is_skipped_and_named(damaged_split):
    with http_server(damaged_split.parent) as base:
        ld, batches = load(f"{base}/{damaged_split.name}", batch_size=3, handler="skip", num_workers=1)
    assert sorted(keys(batches)) == ["v00", "v01", "v03", "v05", "v06"]
    skipped = {s.key: s for s in ld.stats.skipped}
    assert (skipped["v02"].shard, skipped["v04"].shard) == ("dev-000000.tar", "dev-000001.tar")


def test_over_a_url_eval_visits_every_sample_once_across_ranks(corpus):
    split = corpus["vp9"]
    with http_server(split.parent) as base:
        _, everything = load(f"{base}/{split.name}")
        seen = []
        for rank in range(3):
            ld, batches = load(f"{base}/{split.name}", rank=rank, world_size=3, num_workers=1)
            assert len(batches) == len(ld)
            seen += keys(batches)
    _, local = load(split)
    assert keys(everything) == keys(local) and sorted(seen) == sorted(keys(local))


def test_over_a_url_an_epoch_replays_the_same_order_after_an_early_stop(corpus):
    split = corpus["vp9"]
    with http_server(split.parent) as base:
        ld = make_loader(
            f"{base}/{split.name}", backend="pyav", transform=T, rank=0, world_size=1, num_workers=0,
            batch_size=2, mode="train", seed=5,
        )  # fmt: skip
        ld.set_epoch(3)
        first = next(iter(ld))
        ld.set_epoch(3)
        full = list(ld)
    assert full[0].keys == first.keys and torch.equal(full[0].video, first.video)

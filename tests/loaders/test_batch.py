"""Batch format: padding, normalisation, bucketing, stats."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from signstream import SignstreamError
from signstream.loaders.batch import (
    BufferPool,
    Decoded,
    collate,
    finalize,
    finish_batch,
    group_batches,
    normalize,
)
from signstream.loaders.stats import HANDLERS, LoaderStats, Report, Skipped
from signstream.loaders.transform import Transform


def clip(n, value=None, seed=0):
    """A decoded clip, channel-first [3, n, 4, 5]."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 256, (3, n, 4, 5), dtype=np.uint8)
    if value is not None:
        c[:] = value
    return c


def test_collate_pads_by_repeating_the_last_frame():
    a, b = clip(2, seed=1), clip(4, seed=2)
    batch = collate([Decoded("a", a, {}, "s"), Decoded("b", b, {}, "s")], Transform(output="uint8"))
    assert batch.video.shape == (2, 3, 4, 4, 5) and batch.video.dtype == torch.uint8
    assert batch.lengths.tolist() == [2, 4] and batch.keys == ["a", "b"]
    v = batch.video.numpy()
    assert np.array_equal(v[0, :, :2], a) and np.array_equal(v[1], b)
    assert np.array_equal(v[0, :, 2], v[0, :, 1]) and np.array_equal(v[0, :, 3], v[0, :, 1])
    assert batch.padded_frames == 2


def test_min_frames_and_multiple_set_the_batch_length():
    batch = collate([Decoded("a", clip(3), {}, "s")], Transform(min_frames=5, pad_multiple=4))
    assert batch.video.shape[2] == 8 and batch.lengths.tolist() == [3]


def test_zero_padding_is_zero_after_normalisation():
    t = Transform(pad="zeros", normalize="imagenet")
    batch = finalize(collate([Decoded("a", clip(2, 200), {}, "s"), Decoded("b", clip(3, 200), {}, "s")], t), t)
    assert batch.video.dtype == torch.float32
    assert torch.all(batch.video[0, :, 2:] == 0) and torch.all(batch.video[0, :, :2] != 0)


def test_normalisation_matches_the_formula():
    t = Transform(normalize="kinetics")
    video = torch.randint(0, 256, (2, 3, 2, 4, 4), dtype=torch.uint8)
    mean = torch.tensor([0.43216, 0.394666, 0.37645]).view(1, 3, 1, 1, 1)
    std = torch.tensor([0.22803, 0.22145, 0.216989]).view(1, 3, 1, 1, 1)
    assert torch.allclose(normalize(video, t), (video / 255.0 - mean) / std, atol=1e-5)


def test_clips_of_different_sizes_cannot_share_a_batch():
    with pytest.raises(SignstreamError, match="different frame sizes"):
        collate([Decoded("a", clip(2), {}, "s"), Decoded("b", np.zeros((3, 2, 6, 5), np.uint8), {}, "s")], Transform())


def test_finish_batch_trims_t_to_the_clips_that_remain():
    # a buffer sized for 3 clips of up to 6 frames; the 6-frame clip was corrupt
    video = torch.zeros((3, 3, 6, 4, 5), dtype=torch.uint8)
    video[0, :, :2], video[1, :, :3] = 10, 20
    batch = finish_batch(video, [2, 3], ["a", "c"], [{}, {}], Transform(output="uint8"))
    assert batch.video.shape == (2, 3, 3, 4, 5) and torch.all(batch.video[0, :, 2] == 10)


def test_buffer_pool_reuses_only_released_buffers():
    pool = BufferPool(keep=2)
    a = pool.get((2, 3))
    b = pool.get((2, 3))
    assert not np.shares_memory(a, b)
    del a
    c = pool.get((1, 3))
    assert not np.shares_memory(c, b) and len(pool._buffers) == 2


def test_plain_batching_keeps_order_and_a_short_tail():
    assert list(group_batches(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_bucketing_groups_similar_lengths_and_keeps_every_item():
    lengths = np.random.default_rng(0).integers(10, 300, 64).tolist()
    plain = list(group_batches(lengths, 4))
    bucketed = list(group_batches(lengths, 4, bucket=4, length=lambda x: x, rng=np.random.default_rng(1)))

    def padding(batches):
        return sum(max(b) * len(b) - sum(b) for b in batches)

    assert sorted(x for b in bucketed for x in b) == sorted(lengths)
    assert padding(bucketed) < 0.5 * padding(plain)


def test_stats_count_padding_and_skips():
    stats = LoaderStats()
    stats.add_batch([2, 4], padded_frames=2)
    stats.add_report(Report([Skipped("k1", "a.tar", "decode failed")], bytes_read=100))
    assert stats.samples == 2 and stats.frames == 6 and stats.padding_fraction == 0.25
    assert stats.as_dict()["skipped"] == [{"key": "k1", "shard": "a.tar", "reason": "decode failed"}]
    assert "k1 (a.tar: decode failed)" in stats.summary()


def test_raise_handler_names_the_sample():
    with pytest.raises(SignstreamError, match="k1 in a.tar: bad"):
        HANDLERS["raise"](Skipped("k1", "a.tar", "bad"))

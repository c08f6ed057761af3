"""PyAV backend: batches, determinism, rank splits, corrupt samples, memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from signstream import SignstreamError
from signstream.loaders import Transform, make_loader
from signstream.loaders.pyav_backend import decode_clip
from signstream.loaders.shards import resolve_shards
from signstream.loaders.transform import plan_sample, sample_rng
from tests.loaders.shardkit import encode, moving_frames, write_split

T32 = Transform(size=32)


def loader(split, **kw):
    kw.setdefault("transform", T32)
    kw.setdefault("num_workers", 0)
    return make_loader(split, backend="pyav", rank=kw.pop("rank", 0), world_size=kw.pop("world", 1), **kw)


def keys_of(batches):
    return [k for b in batches for k in b.keys]


def test_eval_yields_every_sample_in_order_with_true_lengths(vp9_split):
    refs = resolve_shards(vp9_split).refs
    ld = loader(vp9_split, batch_size=3)
    batches = list(ld)
    assert keys_of(batches) == [r.key for r in refs] and len(batches) == len(ld) == 3
    for b in batches:
        assert b.video.dtype == torch.float32 and b.video.shape[:2] == (len(b), 3)
        assert b.video.shape[3:] == (32, 32) and b.video.shape[2] == int(b.lengths.max())
        assert [m["num_frames"] for m in b.meta] == b.lengths.tolist()
    assert ld.stats.samples == 7 and ld.stats.frames == sum(m["num_frames"] for b in batches for m in b.meta)
    assert 0 < ld.stats.padding_fraction < 1 and ld.stats.bytes_read > 0


def test_uint8_output_is_raw_rgb(vp9_split):
    b = next(iter(loader(vp9_split, batch_size=2, transform=T32.replace(output="uint8"))))
    assert b.video.dtype == torch.uint8 and int(b.video.max()) > 100


def test_worker_processes_do_not_change_the_tensors(vp9_split):
    one = {k: v for b in loader(vp9_split, batch_size=2) for k, v in zip(b.keys, b.video)}
    ld = loader(vp9_split, batch_size=2, num_workers=2)
    two = {k: v for b in ld for k, v in zip(b.keys, b.video)}
    assert one.keys() == two.keys() and ld.stats.samples == 7
    for k in one:
        n = min(one[k].shape[1], two[k].shape[1])
        assert torch.equal(one[k][:, :n], two[k][:, :n])


def test_shuffle_is_deterministic_for_a_seed_and_changes_with_seed_and_epoch(vp9_split):
    def order(seed, epoch=0):
        ld = loader(vp9_split, batch_size=2, mode="train", seed=seed, transform=T32.replace(max_frames=4))
        ld.set_epoch(epoch)
        return keys_of(ld)

    assert order(1) == order(1)
    assert len({tuple(order(s)) for s in range(4)} | {tuple(order(1, e)) for e in range(4)}) > 2


def test_eval_ranks_see_every_sample_exactly_once(vp9_split):
    world = 3
    seen = [keys_of(loader(vp9_split, batch_size=2, rank=r, world=world, num_workers=2)) for r in range(world)]
    flat = [k for s in seen for k in s]
    assert sorted(flat) == sorted(r.key for r in resolve_shards(vp9_split).refs)
    assert len(flat) == len(set(flat))


def test_train_ranks_get_equal_batch_counts(vp9_split):
    counts = []
    for r in range(2):
        ld = loader(
            vp9_split, batch_size=2, mode="train", rank=r, world=2, num_workers=2, transform=T32.replace(max_frames=4)
        )
        counts.append(len(list(ld)))
        assert counts[-1] == len(ld) == (7 // 2) // 2
    assert counts[0] == counts[1]


def test_corrupt_samples_are_skipped_counted_and_named(damaged_split):
    ld = loader(damaged_split, batch_size=3, num_workers=2, handler="skip")
    keys = keys_of(ld)
    assert sorted(keys) == ["v00", "v01", "v03", "v05", "v06"]
    skipped = {s.key: s for s in ld.stats.skipped}
    assert set(skipped) == {"v02", "v04"}
    assert skipped["v02"].shard == "dev-000000.tar" and skipped["v04"].shard == "dev-000001.tar"
    assert "truncated" in skipped["v02"].reason and skipped["v04"].reason


def test_train_mode_keeps_equal_batches_despite_corrupt_samples(damaged_split):
    ld = loader(damaged_split, batch_size=2, mode="train", handler="skip", transform=T32.replace(max_frames=4))
    batches = list(ld)
    assert len(batches) == len(ld) == 3 and not {"v02", "v04"} & set(keys_of(batches))


def test_raise_handler_stops_on_the_first_bad_sample(damaged_split):
    with pytest.raises(SignstreamError, match="v02"):
        list(loader(damaged_split, batch_size=3, handler="raise"))


def test_max_frames_window_and_stride(vp9_split):
    t = T32.replace(max_frames=5, frame_stride=2)
    for b in loader(vp9_split, batch_size=4, transform=t):
        expected = [min(5, -(-m["num_frames"] // 2)) for m in b.meta]
        assert b.lengths.tolist() == expected


def test_bucketing_reduces_padding(vp9_split):
    plain = loader(vp9_split, batch_size=2)
    bucketed = loader(vp9_split, batch_size=2, bucket=4)
    list(plain), list(bucketed)
    assert bucketed.stats.samples == 7
    assert bucketed.stats.padding_fraction <= plain.stats.padding_fraction


def test_decoding_a_window_of_a_long_video_holds_only_that_window():
    frames = moving_frames(600, seed=3, h=64, w=64)
    data = encode(frames)
    t = Transform(size=64, max_frames=8, window="uniform")
    plan = plan_sample(600, 64, 64, t, train=False, rng=sample_rng(0, 0, "long"))
    tracemalloc.start()
    clip = decode_clip(data, plan)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert clip.shape == (3, 8, 64, 64)
    whole = 600 * 64 * 64 * 3
    assert peak < whole / 10, f"peak {peak} bytes vs {whole} for the whole decoded video"
    psnr = 10 * np.log10(255**2 / np.mean((clip.transpose(1, 2, 3, 0).astype(float) - frames[plan.indices]) ** 2))
    assert psnr > 28


def test_persistent_workers_follow_epochs_and_set_epoch(vp9_split):
    t = T32.replace(max_frames=6, train_scale=(0.5, 1.0))

    def epochs(workers, start=0, count=2):
        ld = loader(vp9_split, batch_size=2, mode="train", seed=9, transform=t, num_workers=workers)
        ld.set_epoch(start)
        return [{k: v for b in ld for k, v in zip(b.keys, b.video)} for _ in range(count)]

    inproc, workers = epochs(0, count=3), epochs(2, count=3)
    jumped = epochs(2, start=2, count=1)
    for e in range(3):
        shared = inproc[e].keys() & workers[e].keys()
        assert shared, e
        assert all(torch.equal(inproc[e][k], workers[e][k]) for k in shared), e
    assert all(torch.equal(jumped[0][k], workers[2][k]) for k in jumped[0].keys() & workers[2].keys())
    some = next(iter(inproc[0].keys() & inproc[1].keys()))
    assert not torch.equal(inproc[0][some], inproc[1][some])  # a new epoch draws new augmentation


def test_missing_frame_counts_are_probed_from_the_video(tmp_path, tiny_videos):
    split = write_split(tmp_path, "dev", dict(list(tiny_videos.items())[:3]), bare_meta=True)
    b = next(iter(loader(split, batch_size=3)))
    assert b.lengths.tolist() == [len(v) for v in list(tiny_videos.values())[:3]]


def test_reader_keeps_at_most_one_shard_open(tmp_path, tiny_videos):
    import os

    split = write_split(tmp_path, "dev", tiny_videos, per_shard=1)  # 7 shards
    ld = loader(split, batch_size=1)
    open_tars = []
    for _ in ld:
        fds = [
            os.readlink(f"/proc/self/fd/{fd}")
            for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")
        ]
        open_tars.append(sum(p.endswith(".tar") for p in fds))
    assert len(open_tars) == 7 and max(open_tars) <= 1

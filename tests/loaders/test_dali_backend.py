"""DALI backend (CPU pipelines here; the NVDEC twin runs where CUDA exists).

Stated tolerance between DALI-CPU and PyAV on the same VP9 shard (uint8 RGB,
0-255): both convert YUV 4:2:0 to RGB the same way (BT.601, bilinear chroma)
and resize with the same bilinear filters (antialiased when shrinking), so the
mean absolute difference is under 0.6 grey levels and 99 % of values differ by
at most 2 (measured on 48x64 clips: mean 0.29-0.50, 99th percentile 1-2); a few
pixels at sharp edges differ by up to 24 when resampling by a fractional
factor (PyAV resizes before converting to RGB, DALI after, and the two
resamplers round differently). Normalised float output carries the same
difference divided by 255 * std.
"""

from __future__ import annotations

import pytest
import torch

from signstream import SignstreamError
from signstream.loaders import Transform, make_loader
from signstream.loaders.shards import resolve_shards

pytest.importorskip("nvidia.dali")


def run(split, backend, **kw):
    kw.setdefault("transform", Transform(size=32))
    kw.setdefault("num_workers", 1)
    ld = make_loader(split, backend=backend, rank=kw.pop("rank", 0), world_size=kw.pop("world", 1), **kw)
    return ld, list(ld)


def keys_of(batches):
    return [k for b in batches for k in b.keys]


@pytest.mark.parametrize("transform", [
    Transform(size=(48, 64), resize=(48, 64), output="uint8"),  # no resampling: decode + colour only
    Transform(size=48, output="uint8"),                         # centre crop
    Transform(size=56, output="uint8"),                         # upsampling
    Transform(size=(24, 32), output="uint8"),                   # downsampling (antialiased)
])
def test_dali_cpu_and_pyav_give_the_same_tensors(vp9_split, transform):
    _, pyav = run(vp9_split, "pyav", batch_size=3, transform=transform, num_workers=0)
    _, dali = run(vp9_split, "dali", batch_size=3, transform=transform)
    assert keys_of(pyav) == keys_of(dali) == [r.key for r in resolve_shards(vp9_split).refs]
    for a, b in zip(pyav, dali, strict=True):
        assert a.lengths.tolist() == b.lengths.tolist() and a.video.shape == b.video.shape
        diff = (a.video.float() - b.video.float()).abs().flatten()
        assert float(diff.mean()) < 0.6 and float(diff.max()) <= 24
        assert float(torch.quantile(diff[:4_000_000], 0.99)) <= 2


def test_dali_float_output_is_normalised_like_pyav(vp9_split):
    t = Transform(size=32, normalize="kinetics", pad="zeros", min_frames=120, pad_multiple=8)
    _, pyav = run(vp9_split, "pyav", batch_size=4, transform=t, num_workers=0)
    _, dali = run(vp9_split, "dali", batch_size=4, transform=t)
    for a, b in zip(pyav, dali, strict=True):
        assert b.video.dtype == torch.float32 and b.video.shape[2] == 120
        diff = (a.video - b.video).abs() * 255 * 0.216989
        assert float(diff.mean()) < 0.6 and float(diff.max()) <= 24.5
        for i, n in enumerate(b.lengths.tolist()):
            assert torch.all(b.video[i, :, n:] == 0)


def test_dali_and_pyav_apply_the_same_training_augmentation(vp9_split):
    # Plans are drawn from (seed, epoch, key), so random crops/scales, temporal
    # rescaling, flips and colour jitter agree between backends.
    t = Transform(size=32, output="uint8", max_frames=12, hflip=True, colour_jitter=0.3, train_scale=(0.6, 1.0))
    kw = dict(batch_size=1, transform=t, mode="train", shuffle=False, seed=4)
    pyav = {b.keys[0]: b for b in run(vp9_split, "pyav", num_workers=0, **kw)[1]}
    dali = {b.keys[0]: b for b in run(vp9_split, "dali", **kw)[1]}
    assert len(pyav.keys() & dali.keys()) >= 5
    for key in pyav.keys() & dali.keys():
        a, b = pyav[key], dali[key]
        assert a.lengths.tolist() == b.lengths.tolist() and a.video.shape == b.video.shape
        diff = (a.video.float() - b.video.float()).abs().flatten()
        assert float(diff.mean()) < 1.5 and float(torch.quantile(diff, 0.99)) <= 6, key


def test_dali_plans_samples_without_frame_counts(tmp_path, tiny_videos):
    from tests.loaders.shardkit import write_split

    split = write_split(tmp_path, "dev", dict(list(tiny_videos.items())[:3]), bare_meta=True)
    (batch,) = run(split, "dali", batch_size=3)[1]
    assert batch.lengths.tolist() == [len(v) for v in list(tiny_videos.values())[:3]]


def test_dali_on_cpu_refuses_h264_with_a_clear_error(h264_split):
    with pytest.raises(SignstreamError) as info:
        make_loader(h264_split, backend="dali", device="cpu", rank=0, world_size=1)
    message = str(info.value)
    assert "h264" in message and "backend='pyav'" in message and "VP9" in message and "\n" not in message


def test_dali_skips_and_names_corrupt_samples_and_finishes_the_rest(damaged_split):
    ld, batches = run(damaged_split, "dali", batch_size=3, handler="skip")
    assert sorted(keys_of(batches)) == ["v00", "v01", "v03", "v05", "v06"]
    skipped = {s.key: s for s in ld.stats.skipped}
    assert set(skipped) == {"v02", "v04"}
    assert skipped["v02"].shard == "dev-000000.tar" and skipped["v04"].shard == "dev-000001.tar"
    assert all(s.reason.startswith("DALI: ") for s in skipped.values())


@pytest.mark.parametrize("shuffle", [False, True])
def test_dali_eval_ranks_see_every_sample_exactly_once(vp9_split, shuffle):
    world = 3
    seen = [keys_of(run(vp9_split, "dali", batch_size=2, rank=r, world=world, shuffle=shuffle)[1])
            for r in range(world)]
    flat = [k for s in seen for k in s]
    assert sorted(flat) == sorted(r.key for r in resolve_shards(vp9_split).refs)
    assert len(flat) == len(set(flat))


def test_dali_train_ranks_get_equal_batch_counts_every_epoch(vp9_split):
    t = Transform(size=32, max_frames=4)
    for r in range(2):
        ld = make_loader(vp9_split, backend="dali", mode="train", batch_size=2, transform=t, rank=r,
                         world_size=2, num_workers=1)
        assert [len(list(ld)) for _ in range(2)] == [len(ld)] * 2 == [1, 1]


def test_dali_shuffle_is_deterministic_for_a_seed(vp9_split):
    def order(seed):
        return keys_of(run(vp9_split, "dali", batch_size=2, mode="train", seed=seed,
                           transform=Transform(size=32, max_frames=4))[1])

    assert order(3) == order(3)
    assert len({tuple(order(s)) for s in range(4)}) > 1


@pytest.mark.cuda
def test_nvdec_matches_dali_cpu(vp9_split, h264_split):
    t = Transform(size=48, output="uint8")
    _, cpu = run(vp9_split, "dali", batch_size=3, transform=t)
    _, gpu = run(vp9_split, "dali", batch_size=3, transform=t, device="cuda")
    for a, b in zip(cpu, gpu, strict=True):
        assert b.video.is_cuda and a.keys == b.keys
        assert float((a.video.float() - b.video.cpu().float()).abs().mean()) < 1.0
    _, h264 = run(h264_split, "dali", batch_size=3, transform=t, device="cuda")
    assert len(keys_of(h264)) == len(resolve_shards(h264_split).refs)

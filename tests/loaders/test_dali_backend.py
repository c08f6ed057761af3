"""DALI backend (CPU pipelines here; the NVDEC twin runs where CUDA exists).

Stated tolerance between DALI-CPU and PyAV on the same VP9 shard (uint8 RGB, 0-255): mean
absolute difference under 0.6 grey levels, 99 % of values within 2, no value off by more
than 24 (a few sharp-edge pixels when resampling by a fractional factor). Normalised float
output carries the same difference divided by 255 * std. Why these bounds, and what was
measured: docs/design/dali.md.
"""

from __future__ import annotations

import pytest
import torch

from signstream import SignstreamError
from signstream.loaders import Batch, Transform, make_loader
from signstream.loaders.nvdec import NVDEC_LIMITS, check_nvdec_sizes, nvdec_size_error
from signstream.loaders.shards import resolve_shards

pytest.importorskip("nvidia.dali")


def run(split, backend, **kw):
    kw.setdefault("transform", Transform(size=32))
    kw.setdefault("num_workers", 1)
    ld = make_loader(split, backend=backend, rank=kw.pop("rank", 0), world_size=kw.pop("world", 1), **kw)
    return ld, list(ld)


def keys_of(batches):
    return [k for b in batches for k in b.keys]


@pytest.mark.parametrize(
    "transform",
    [
        Transform(size=(48, 64), resize=(48, 64), output="uint8"),  # no resampling: decode + colour only
        Transform(size=48, output="uint8"),  # centre crop
        Transform(size=56, output="uint8"),  # upsampling
        Transform(size=(24, 32), output="uint8"),  # downsampling (antialiased)
    ],
)
@pytest.mark.parametrize("postprocess", ["opencv", "dali"])
def test_dali_cpu_and_pyav_give_the_same_tensors(vp9_split, transform, postprocess):
    _, pyav = run(vp9_split, "pyav", batch_size=3, transform=transform, num_workers=0)
    _, dali = run(vp9_split, "dali", batch_size=3, transform=transform, postprocess=postprocess)
    assert keys_of(pyav) == keys_of(dali) == [r.key for r in resolve_shards(vp9_split).refs]
    for a, b in zip(pyav, dali, strict=True):
        assert a.lengths.tolist() == b.lengths.tolist() and a.video.shape == b.video.shape
        diff = (a.video.float() - b.video.float()).abs().flatten()
        assert float(diff.mean()) < 0.6 and float(diff.max()) <= 24
        assert float(torch.quantile(diff[:4_000_000], 0.99)) <= 2


@pytest.mark.parametrize("postprocess", ["opencv", "dali"])
@pytest.mark.parametrize("output", ["float", "float16"])
def test_dali_float_output_is_normalised_like_pyav(vp9_split, postprocess, output):
    t = Transform(size=32, normalize="kinetics", pad="zeros", min_frames=120, pad_multiple=8, output=output)
    _, pyav = run(vp9_split, "pyav", batch_size=4, transform=t, num_workers=0)
    _, dali = run(vp9_split, "dali", batch_size=4, transform=t, postprocess=postprocess)
    dtype = torch.float16 if output == "float16" else torch.float32
    for a, b in zip(pyav, dali, strict=True):
        assert a.video.dtype == b.video.dtype == dtype and b.video.shape[2] == 120
        a, b = Batch(a.video.float(), a.lengths, a.keys), Batch(b.video.float(), b.lengths, b.keys)
        diff = (a.video - b.video).abs() * 255 * 0.216989
        assert float(diff.mean()) < 0.6 and float(diff.max()) <= 24.5
        for i, n in enumerate(b.lengths.tolist()):
            assert torch.all(b.video[i, :, n:] == 0)


@pytest.mark.parametrize("postprocess", ["opencv", "dali"])
def test_dali_and_pyav_apply_the_same_training_augmentation(vp9_split, postprocess):
    # Plans are drawn from (seed, epoch, key), so random crops/scales, temporal
    # rescaling, flips and colour jitter agree between backends.
    t = Transform(size=32, output="uint8", max_frames=12, hflip=True, colour_jitter=0.3, train_scale=(0.6, 1.0))
    kw = dict(batch_size=1, transform=t, mode="train", shuffle=False, seed=4)
    pyav = {b.keys[0]: b for b in run(vp9_split, "pyav", num_workers=0, **kw)[1]}
    dali = {b.keys[0]: b for b in run(vp9_split, "dali", postprocess=postprocess, **kw)[1]}
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


@pytest.mark.parametrize("postprocess", ["opencv", "dali"])
def test_dali_train_mode_keeps_equal_batches_despite_corrupt_samples(damaged_split, postprocess):
    ld, batches = run(
        damaged_split,
        "dali",
        batch_size=2,
        mode="train",
        handler="skip",
        postprocess=postprocess,
        transform=Transform(size=32, max_frames=4),
    )
    assert len(batches) == len(ld) == 3 and not {"v02", "v04"} & set(keys_of(batches))
    assert {s.key for s in ld.stats.skipped} == {"v02", "v04"}


def test_dali_raise_handler_stops_on_the_first_bad_sample(damaged_split):
    with pytest.raises(SignstreamError, match="v02"):
        run(damaged_split, "dali", batch_size=3, handler="raise")


@pytest.mark.parametrize("shuffle", [False, True])
def test_dali_eval_ranks_see_every_sample_exactly_once(vp9_split, shuffle):
    world = 3
    seen = [
        keys_of(run(vp9_split, "dali", batch_size=2, rank=r, world=world, shuffle=shuffle)[1]) for r in range(world)
    ]
    flat = [k for s in seen for k in s]
    assert sorted(flat) == sorted(r.key for r in resolve_shards(vp9_split).refs)
    assert len(flat) == len(set(flat))


def test_dali_train_ranks_get_equal_batch_counts_every_epoch(vp9_split):
    t = Transform(size=32, max_frames=4)
    for r in range(2):
        ld = make_loader(
            vp9_split, backend="dali", mode="train", batch_size=2, transform=t, rank=r, world_size=2, num_workers=1
        )
        assert [len(list(ld)) for _ in range(2)] == [len(ld)] * 2 == [1, 1]


def test_dali_shuffle_is_deterministic_for_a_seed(vp9_split):
    def order(seed):
        return keys_of(
            run(vp9_split, "dali", batch_size=2, mode="train", seed=seed, transform=Transform(size=32, max_frames=4))[1]
        )

    assert order(3) == order(3)
    assert len({tuple(order(s)) for s in range(4)}) > 1


def test_one_dali_iteration_decoding_several_batches_gives_the_same_batches(vp9_split):
    t = Transform(size=32, output="uint8")
    _, one = run(vp9_split, "dali", batch_size=2, transform=t, batches_per_run=1)
    _, many = run(vp9_split, "dali", batch_size=2, transform=t, batches_per_run=3)
    assert [b.keys for b in one] == [b.keys for b in many] and len(one) == 4
    for a, b in zip(one, many, strict=True):
        assert torch.equal(a.video, b.video)


def test_dali_loader_serves_a_full_epoch_after_the_caller_stopped_early(vp9_split):
    ld = make_loader(
        vp9_split,
        backend="dali",
        batch_size=2,
        transform=Transform(size=32),
        rank=0,
        world_size=1,
        num_workers=1,
        batches_per_run=1,
    )
    next(iter(ld))  # leaves iterations queued in the pipeline
    assert sorted(keys_of(list(ld))) == sorted(r.key for r in resolve_shards(vp9_split).refs)


def test_nvdec_limits_name_the_limit_and_the_way_out():
    assert nvdec_size_error("vp9", 210, 260, "x.tar") is None
    message = nvdec_size_error("vp9", 48, 64, "dev-000000.tar (sample v00)")
    assert "128x128" in message and "--resize" in message and "device='cpu'" in message
    assert "backend='pyav'" in message and "\n" not in message
    assert nvdec_size_error("h264", 48, 64, "x") is None and nvdec_size_error("h264", 4100, 64, "x")
    assert set(NVDEC_LIMITS) >= {"h264", "hevc", "vp9", "av1"}


def test_shards_too_small_for_nvdec_are_refused_before_decoding(vp9_split):
    # The fixture's 48x64 videos are below NVDEC's VP9 minimum: the check the CUDA
    # loader runs at construction reads only the first sample of each shard.
    with pytest.raises(SignstreamError, match=r"48x64 vp9 frames are outside NVDEC's limits.*128x128"):
        check_nvdec_sizes(resolve_shards(vp9_split))


def test_dali_cuda_device_index_out_of_range_is_a_clear_error(vp9_split, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SignstreamError, match="cuda:3.*only 1 CUDA device"):
        make_loader(vp9_split, backend="dali", device="cuda:3", rank=0, world_size=1)


# ---------------------------------------------------------------- CUDA (NVDEC)
cuda = pytest.mark.cuda


@pytest.fixture(scope="module")
def phoenix_size_split(tmp_path_factory):
    """VP9 and H.264 splits at PHOENIX's 210x260 (NVDEC's VP9 minimum is 128x128)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from tests.loaders.shardkit import moving_frames, write_split

    videos = {f"p{i}": moving_frames(n, seed=i, h=210, w=260) for i, n in enumerate([20, 33, 16, 27])}
    base = tmp_path_factory.mktemp("phoenix_size")
    return {codec: write_split(base / codec, "dev", videos, codec=codec) for codec in ("vp9", "h264")}


@cuda
def test_nvdec_vp9_matches_pyav_at_phoenix_size(phoenix_size_split):
    t = Transform(size=224, output="uint8")
    _, pyav = run(phoenix_size_split["vp9"], "pyav", batch_size=2, transform=t, num_workers=0)
    _, gpu = run(phoenix_size_split["vp9"], "dali", batch_size=2, transform=t, device="cuda")
    for a, b in zip(pyav, gpu, strict=True):
        assert b.video.is_cuda and a.keys == b.keys and a.video.shape == b.video.shape
        diff = (a.video.float() - b.video.cpu().float()).abs().flatten()
        assert float(diff.mean()) < 1.0 and float(torch.quantile(diff[:4_000_000], 0.99)) <= 4


@cuda
def test_nvdec_decodes_h264(phoenix_size_split):
    t = Transform(size=224, output="uint8")
    _, pyav = run(phoenix_size_split["h264"], "pyav", batch_size=2, transform=t, num_workers=0)
    _, gpu = run(phoenix_size_split["h264"], "dali", batch_size=2, transform=t, device="cuda")
    assert keys_of(gpu) == keys_of(pyav) == [r.key for r in resolve_shards(phoenix_size_split["h264"]).refs]
    for a, b in zip(pyav, gpu, strict=True):
        assert float((a.video.float() - b.video.cpu().float()).abs().mean()) < 1.5


@cuda
def test_nvdec_float16_output_on_a_side_stream(phoenix_size_split):
    t16, t32 = Transform(size=112, output="float16"), Transform(size=112)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # outputs are copied on the current stream, no host sync
        _, half = run(phoenix_size_split["vp9"], "dali", batch_size=2, transform=t16, device="cuda")
        stream.synchronize()
    _, full = run(phoenix_size_split["vp9"], "dali", batch_size=2, transform=t32, device="cuda")
    for a, b in zip(half, full, strict=True):
        assert a.video.dtype == torch.float16 and b.video.dtype == torch.float32
        assert float((a.video.float() - b.video).abs().max()) < 0.02


@cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_nvdec_decodes_on_the_gpu_the_device_string_names(phoenix_size_split):
    ld, batches = run(phoenix_size_split["vp9"], "dali", batch_size=2, device="cuda:1", transform=Transform(size=64))
    assert ld.device_id == 1 and all(b.video.device == torch.device("cuda", 1) for b in batches)


@cuda
def test_nvdec_skips_and_names_corrupt_samples(tmp_path, phoenix_size_split):
    from tests.loaders.shardkit import encode, moving_frames, write_split

    videos = {f"c{i}": moving_frames(18, seed=i, h=210, w=260) for i in range(4)}
    cut = encode(videos["c1"])
    split = write_split(tmp_path, "dev", videos, damage={"c1": cut[: len(cut) // 3]})
    ld, batches = run(split, "dali", batch_size=2, handler="skip", device="cuda", transform=Transform(size=64))
    assert keys_of(batches) == ["c0", "c2", "c3"] and [s.key for s in ld.stats.skipped] == ["c1"]


def test_default_batches_per_run_aims_at_eight_clips_per_cpu_iteration(vp9_split):
    from signstream.loaders.dali_startup import default_batches_per_run

    assert [default_batches_per_run(b, cuda=False) for b in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    assert default_batches_per_run(2, cuda=True, threads=8) == 8  # CUDA: tests/loaders/test_dali_startup.py
    ld = make_loader(vp9_split, backend="dali", batch_size=2, transform=Transform(size=32), num_workers=1)
    assert ld.describe()["batches_per_run"] == 4

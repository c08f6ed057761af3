"""Transform, sampling plans and the numpy execution of plans."""

from __future__ import annotations

import numpy as np
import pytest

from signstream import SignstreamError
from signstream.loaders.transform import (
    NORMALIZATIONS,
    WINDOWS,
    Transform,
    apply_jitter,
    crop_resize,
    plan_sample,
    sample_rng,
    spatial_plan,
    temporal_indices,
)


def rng(seed=0, key="k"):
    return sample_rng(seed, 0, key)


def test_stride_keeps_every_kth_frame():
    idx = temporal_indices(10, Transform(frame_stride=3), train=False, rng=rng())
    assert idx.tolist() == [0, 3, 6, 9]


def test_centre_window_cuts_the_middle_of_long_clips():
    idx = temporal_indices(20, Transform(max_frames=6), train=False, rng=rng())
    assert idx.tolist() == list(range(7, 13))


def test_short_clip_is_not_cut_or_padded_by_sampling():
    assert temporal_indices(4, Transform(max_frames=6, min_frames=8), train=False, rng=rng()).tolist() == [0, 1, 2, 3]


def test_random_window_is_deterministic_per_seed_key_and_epoch():
    t = Transform(max_frames=5, temporal_rescale=None)
    a = temporal_indices(100, t, train=True, rng=sample_rng(1, 0, "x"))
    b = temporal_indices(100, t, train=True, rng=sample_rng(1, 0, "x"))
    starts = {
        int(temporal_indices(100, t, train=True, rng=sample_rng(s, e, "x"))[0]) for s in range(5) for e in range(3)
    }
    assert a.tolist() == b.tolist() and len(a) == 5
    assert np.all(np.diff(a) == 1)
    assert len(starts) > 3


def test_uniform_window_spans_the_whole_clip():
    idx = temporal_indices(100, Transform(max_frames=5, window="uniform"), train=False, rng=rng())
    assert idx.tolist() == [0, 25, 50, 74, 99]


def test_temporal_rescale_stays_within_its_bounds_and_keeps_order():
    t = Transform(temporal_rescale=(0.5, 1.5))
    lengths = []
    for seed in range(40):
        idx = temporal_indices(40, t, train=True, rng=sample_rng(seed, 0, "k"))
        assert np.all(np.diff(idx) >= 0) and idx[0] == 0 and idx[-1] == 39
        lengths.append(len(idx))
    assert 20 <= min(lengths) < 30 and 50 < max(lengths) <= 60


def test_eval_box_is_centre_crop_of_short_side_resize():
    # 210x260 -> short side 224 -> centre 224x224 == the central 210x210 source square
    # (starting at x=25, rounded to 24: boxes are even so they align with 4:2:0 chroma)
    box, out = spatial_plan(210, 260, Transform(size=224), train=False, rng=rng())
    assert out == (224, 224)
    assert box == (0, 24, 210, 210)


def test_exact_resize_then_crop_maps_back_to_source_pixels():
    box, out = spatial_plan(48, 64, Transform(size=(40, 56), resize=(48, 64)), train=False, rng=rng())
    assert box == (4, 4, 40, 56) and out == (40, 56)


def test_no_size_keeps_the_whole_frame():
    t = Transform(size=None, resize=None)
    assert spatial_plan(48, 64, t, train=False, rng=rng()) == ((0, 0, 48, 64), (48, 64))


def test_train_boxes_stay_inside_the_frame_are_even_and_vary():
    t = Transform(size=32, train_scale=(0.6, 1.0))
    boxes = set()
    for seed in range(30):
        (y, x, h, w), out = spatial_plan(48, 64, t, train=True, rng=sample_rng(seed, 0, "k"))
        assert out == (32, 32) and y >= 0 and x >= 0 and y + h <= 48 and x + w <= 64
        assert y % 2 == x % 2 == h % 2 == w % 2 == 0
        boxes.add((y, x, h, w))
    assert len(boxes) > 10


def test_hflip_and_jitter_are_off_by_default_and_in_eval():
    plans = [plan_sample(30, 48, 64, Transform(), train=True, rng=sample_rng(s, 0, "k")) for s in range(20)]
    assert not any(p.flip for p in plans) and all(p.jitter is None for p in plans)
    t = Transform(hflip=True, colour_jitter=0.3)
    assert not plan_sample(30, 48, 64, t, train=False, rng=rng()).flip
    flips = {plan_sample(30, 48, 64, t, train=True, rng=sample_rng(s, 0, "k")).flip for s in range(20)}
    assert flips == {True, False}


def test_unique_frames_decode_each_frame_once():
    plan = plan_sample(6, 8, 8, Transform(size=8, temporal_rescale=(1.5, 1.5)), train=True, rng=rng())
    unique, order = plan.unique_frames()
    assert len(plan.indices) == 9 and unique.tolist() == list(range(6))
    assert unique[order].tolist() == plan.indices.tolist()


def test_batch_frames_honours_min_frames_and_multiple():
    t = Transform(min_frames=8, pad_multiple=4)
    assert [t.batch_frames(n) for n in (1, 8, 9, 13)] == [8, 8, 12, 16]


def test_from_input_spec_reads_backbone_fields():
    spec = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "min_frames": 8, "pad_multiple": 8, "default_size": 160}
    t = Transform.from_input_spec(spec, max_frames=64)
    assert (t.min_frames, t.pad_multiple, t.size, t.max_frames) == (8, 8, 160, 64)
    mean, std = t.mean_std()
    assert np.allclose(mean, 127.5) and np.allclose(std, 127.5)


def test_from_input_spec_converts_value_range():
    t = Transform.from_input_spec({"mean": (0.0,) * 3, "std": (1.0,) * 3, "value_range": (-1, 1)})
    m, s = t.mean_std()
    ref_m, ref_s = Transform(normalize="minus_one_one").mean_std()
    assert np.allclose(m, ref_m) and np.allclose(s, ref_s)


def test_presets_and_strategies_are_registered():
    assert set(NORMALIZATIONS) >= {"imagenet", "kinetics", "minus_one_one"}
    assert NORMALIZATIONS["kinetics"][0] == (0.43216, 0.394666, 0.37645)
    assert set(WINDOWS) >= {"centre", "random"}


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(normalize="nope"),
        dict(window="nope"),
        dict(output="half"),
        dict(pad="edge"),
        dict(frame_stride=0),
        dict(min_frames=0),
        dict(train_scale=(1.2, 0.5)),
        dict(size=0),
    ],
)
def test_bad_settings_raise_one_line_errors(kwargs):
    with pytest.raises(SignstreamError) as info:
        Transform(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(normalize="nope"),
            "unknown normalisation 'nope'; choose from imagenet, kinetics, minus_one_one, zero_one",
        ),
        (dict(window="nope"), "unknown temporal window 'nope'; choose from centre, random, start, uniform"),
        (dict(train_window="nope"), "unknown temporal window 'nope'; choose from centre"),
    ],
)
def test_an_unknown_preset_or_window_names_the_value_and_the_choices(kwargs, message):
    with pytest.raises(SignstreamError, match=message):
        Transform(**kwargs)


def test_crop_resize_picks_the_box_and_resizes():
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    assert np.array_equal(crop_resize(frames, (4, 8, 10, 12), (10, 12)), frames[:, 4:14, 8:20])
    small = crop_resize(frames, (0, 0, 48, 64), (24, 32))
    assert small.shape == (2, 24, 32, 3) and small.dtype == np.uint8
    # antialiased 2x shrink of a flat image stays flat
    flat = np.full((1, 48, 64, 3), 77, np.uint8)
    assert np.all(crop_resize(flat, (0, 0, 48, 64), (24, 32)) == 77)


def test_jitter_with_unit_factors_is_identity():
    clip = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    assert np.array_equal(apply_jitter(clip, (1.0, 1.0, 1.0)), clip)
    darker = apply_jitter(clip, (0.5, 1.0, 1.0))
    assert darker.mean() < clip.mean()

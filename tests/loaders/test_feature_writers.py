"""Tests for the feature writers and readers: every format round-trips the same values."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from signstream import SignstreamError, lookup
from signstream.loaders.feature_readers import detect_format, load_split
from signstream.loaders.feature_writers import WRITERS, is_done, write_video


def _store(tmp_path, n=5, dim=6):
    rng = np.random.default_rng(0)
    store = tmp_path / "feats"
    for i in range(n):
        meta = {
            "name": f"vid.{i}",
            "key": f"vid_{i}",
            "signer": f"S{i % 2}",
            "gloss": "A B",
            "text": "a b",
            "num_frames": 10 + i,
        }
        write_video(store, "dev", meta["key"], meta, rng.normal(size=(3 + i, dim)).astype(np.float32), dtype="float32")
    return store


def test_signjoey_file_loads_with_plain_gzip_pickle_and_has_the_expected_entries(tmp_path):
    store = _store(tmp_path)
    path = WRITERS["signjoey"](store, store, "dev", prefix="demo")
    assert path.name == "demo.dev"
    with gzip.open(path, "rb") as f:
        entries = pickle.load(f)
    assert [e["name"] for e in entries] == sorted(e["name"] for e in entries)
    for i, e in enumerate(entries):
        assert set(e) == {"name", "signer", "gloss", "text", "sign", "num_frames"}
        assert isinstance(e["sign"], torch.Tensor) and e["sign"].dtype == torch.float32
        assert e["sign"].shape == (3 + i, 6) and e["num_frames"] == 10 + i
        assert isinstance(e["name"], str) and isinstance(e["gloss"], str)


@pytest.mark.parametrize("fmt", ["npy", "signjoey", "shards"])
def test_every_format_reads_back_the_same_features(tmp_path, fmt):
    store = _store(tmp_path)
    WRITERS["npy"](store, store, "dev")
    WRITERS[fmt](store, store, "dev")
    samples = load_split(store, "dev", fmt)
    reference = load_split(store, "dev", "npy") if fmt != "npy" else samples
    assert [s.name for s in samples] == [f"vid.{i}" for i in range(5)]
    for a, b in zip(samples, reference):
        np.testing.assert_array_equal(a.features, b.features)
        assert a.gloss == "A B" and a.signer == b.signer


def test_format_detection_and_missing_split_error(tmp_path):
    store = _store(tmp_path)
    WRITERS["shards"](store, store, "dev")
    assert detect_format(store, "dev") == "shards"
    WRITERS["npy"](store, store, "dev")
    assert detect_format(store, "dev") == "npy"
    with pytest.raises(SignstreamError, match="no features for split 'test'"):
        load_split(store, "test")


def test_feature_shards_are_deterministic(tmp_path):
    store = _store(tmp_path)
    a = WRITERS["shards"](store, tmp_path / "a", "dev")
    b = WRITERS["shards"](store, tmp_path / "b", "dev")
    assert [p.read_bytes() for p in sorted(a.iterdir())] == [p.read_bytes() for p in sorted(b.iterdir())]


def test_video_counts_as_done_only_when_both_files_exist(tmp_path):
    store = _store(tmp_path, n=1)
    assert is_done(store, "dev", "vid_0")
    (store / "dev" / "vid_0.json").unlink()
    assert not is_done(store, "dev", "vid_0")


def test_unknown_writer_is_a_clear_error():
    with pytest.raises(SignstreamError, match="unknown feature writer 'csv'; choose from npy, shards, signjoey"):
        lookup(WRITERS, "csv", "feature writer")


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_every_writer_takes_the_recipe_call_and_refuses_an_option_it_does_not_name(tmp_path, name):
    store = _store(tmp_path, n=2)
    out = tmp_path / "out"
    assert WRITERS[name](store, out, "dev", prefix="demo").exists()  # what extract_features passes
    with pytest.raises(TypeError, match="prefx"):
        WRITERS[name](store, out, "dev", prefx="demo")  # a misspelt option is not swallowed


def test_writer_options_are_their_own():
    store = Path("unused")
    with pytest.raises(TypeError, match="max_samples"):
        WRITERS["npy"](store, store, "dev", max_samples=3)
    with pytest.raises(TypeError, match="max_samples"):
        WRITERS["signjoey"](store, store, "dev", max_samples=3)


def test_feature_shards_hold_max_samples_videos_each(tmp_path):
    split_dir = WRITERS["shards"](_store(tmp_path), tmp_path / "out", "dev", max_samples=2)
    assert sorted(p.name for p in split_dir.glob("*.tar")) == ["dev-000000.tar", "dev-000001.tar", "dev-000002.tar"]

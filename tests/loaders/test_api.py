"""make_loader: backend dispatch, options, one-line errors."""

from __future__ import annotations

import pytest
import torch

from signstream import SignstreamError
from signstream.loaders import BACKENDS, Transform, make_loader


def test_backends_are_registered_by_name():
    assert set(BACKENDS) == {"pyav", "dali", "pngdir"}
    with pytest.raises(
        SignstreamError, match=r"unknown loader backend \(or auto\) 'ffcv'; choose from dali, pngdir, pyav"
    ):
        make_loader("x", backend="ffcv")


def test_auto_backend_is_pyav_on_cpu(vp9_split):
    ld = make_loader(vp9_split, batch_size=2, rank=0, world_size=1)
    assert ld.backend == "pyav" and ld.shuffle is False
    assert make_loader(vp9_split, mode="train", rank=0, world_size=1).shuffle is True


def test_rank_and_world_default_to_a_single_process(vp9_split):
    ld = make_loader(vp9_split, num_workers=0)
    assert (ld.rank, ld.world) == (0, 1)


@pytest.mark.parametrize("backend", ["pyav", "dali"])
def test_missing_split_is_a_one_line_error(tmp_path, backend):
    with pytest.raises(SignstreamError) as info:
        make_loader(tmp_path / "nope" / "dev-000000.tar", backend=backend, rank=0, world_size=1)
    assert "shard file not found" in str(info.value) and "\n" not in str(info.value)


def test_unknown_options_and_modes_are_rejected(vp9_split):
    with pytest.raises(SignstreamError, match="does not take option"):
        make_loader(vp9_split, backend="dali", decode_threads=2, rank=0, world_size=1)
    with pytest.raises(SignstreamError, match="mode"):
        make_loader(vp9_split, mode="test", rank=0, world_size=1)
    with pytest.raises(SignstreamError, match="batch_size"):
        make_loader(vp9_split, batch_size=0, rank=0, world_size=1)
    with pytest.raises(SignstreamError, match="unknown handler 'ignore'; choose from raise, skip, warn"):
        make_loader(vp9_split, handler="ignore", rank=0, world_size=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cuda_without_a_gpu_is_a_clear_error(vp9_split):
    with pytest.raises(SignstreamError, match="no CUDA device"):
        make_loader(vp9_split, backend="pyav", device="cuda", rank=0, world_size=1)


def test_loader_describes_itself(vp9_split):
    ld = make_loader(vp9_split, batch_size=2, transform=Transform(size=32), rank=0, world_size=1)
    info = ld.describe()
    assert info["backend"] == "pyav" and info["transform"]["size"] == 32

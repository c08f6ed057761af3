"""Steady-state batches on a GPU never make the host wait for the GPU.

On CUDA the proof is torch's sync debug mode set to ``"error"``: any torch call
that would synchronise the host with a stream (a blocking copy, ``.item()``,
``.tolist()`` of a device tensor) raises. The CPU twins run the same code with
the batches sent to torch's ``meta`` device, which has no data at all: any
host read of a "device" tensor fails there too, so the meta run catches the
same mistakes (lengths moved to the device and read back, constants rebuilt
per batch) without a GPU. What only a GPU has (pinned memory, streams) is
checked with spies.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from signstream.loaders import Batch, Transform, make_loader
from signstream.loaders import batch as batch_module
from signstream.loaders.batch import device_constants, finalize, to_device

META = torch.device("meta")


def _uint8_batch(lengths: list[int], t: int = 6) -> Batch:
    video = torch.randint(0, 256, (len(lengths), 3, t, 4, 5), dtype=torch.uint8)
    return Batch(
        video, torch.tensor(lengths, dtype=torch.int64), [f"k{i}" for i in range(len(lengths))], [{} for _ in lengths]
    )


# --------------------------------------------------------------- CPU twins
def test_normalisation_constants_are_built_once_per_device_and_dtype():
    device_constants.cache_clear()
    t = Transform(normalize="imagenet")
    for _ in range(4):
        finalize(_uint8_batch([3, 6]), t, META)
    assert device_constants.cache_info().misses == 1 and device_constants.cache_info().hits == 3
    mean, inv = (tuple(v.tolist()) for v in (t.mean_std()[0], 1.0 / t.mean_std()[1]))
    first = device_constants(mean, inv, META, torch.float32)
    assert device_constants(mean, inv, META, torch.float32)[0] is first[0]  # the same tensors, not rebuilt
    device_constants(mean, inv, META, torch.float16)
    assert device_constants.cache_info().misses == 2  # another dtype is another constant


def test_finalized_batches_keep_their_lengths_on_the_cpu():
    t = Transform(pad="zeros")
    source = _uint8_batch([2, 6])
    out = finalize(source, t, META)
    assert out.video.device == META and out.video.dtype == torch.float32
    assert out.lengths.device.type == "cpu" and out.lengths.tolist() == [2, 6]
    assert out.to(META).lengths.device.type == "cpu"


@pytest.mark.parametrize("output", ["float", "float16", "uint8"])
def test_a_loader_delivering_to_a_device_never_reads_a_device_tensor_on_the_host(vp9_split, output):
    # meta tensors cannot be read: a .tolist()/.item()/.cpu() of one in the loader path would raise
    device_constants.cache_clear()
    t = Transform(size=32, output=output, pad="zeros")
    loader = make_loader(
        vp9_split, backend="pyav", device="meta", batch_size=2, num_workers=0, rank=0, world_size=1, transform=t
    )
    cpu = list(
        make_loader(
            vp9_split, backend="pyav", device="cpu", batch_size=2, num_workers=0, rank=0, world_size=1, transform=t
        )
    )
    got = list(loader)
    assert len(got) == len(cpu) > 2
    for a, b in zip(cpu, got, strict=True):
        assert b.video.device == META and b.lengths.device.type == "cpu" and torch.equal(a.lengths, b.lengths)
    assert loader.stats.frames == sum(int(b.lengths.sum()) for b in cpu)
    assert device_constants.cache_info().misses == (0 if output == "uint8" else 1)


def test_dali_batches_keep_their_lengths_on_the_cpu(vp9_split):
    pytest.importorskip("nvidia.dali")
    loader = make_loader(
        vp9_split,
        backend="dali",
        batch_size=2,
        num_workers=1,
        rank=0,
        world_size=1,
        transform=Transform(size=32, pad="zeros"),
        postprocess="dali",
    )
    first = next(iter(loader))
    assert first.lengths.device.type == "cpu"
    # what the DALI loader does to a batch already on the device: zero the padding, nothing else
    on_device = Batch(first.video.to(META), first.lengths, first.keys, first.meta)
    out = loader._finalize(on_device)
    assert out.video.device == META and out.lengths is first.lengths


@contextlib.contextmanager
def _spy_gpu_copy(monkeypatch, pinned: bool):
    """Record pin_memory/to calls of CPU tensors, as if a GPU were there (the copy stays on the CPU)."""
    calls: list[tuple] = []
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self, *a: pinned)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a: calls.append(("pin",)) or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append(("to", a, k)) or self)
    yield calls


@pytest.mark.parametrize("pinned", [False, True])
def test_the_copy_to_the_gpu_is_non_blocking_from_pinned_memory(monkeypatch, pinned):
    video = torch.zeros(2, 3, 4, 4, 5, dtype=torch.uint8)
    with _spy_gpu_copy(monkeypatch, pinned) as calls:
        to_device(video, torch.device("cuda", 0))
    # an unpinned buffer (a worker's ring) is staged into pinned memory once; a pinned one is not copied again
    assert calls[:-1] == ([] if pinned else [("pin",)])
    assert calls[-1] == ("to", (torch.device("cuda", 0),), {"non_blocking": True})


def test_in_process_decoding_for_a_gpu_writes_into_pinned_buffers(vp9_split, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    args = dict(backend="pyav", batch_size=2, rank=0, world_size=1, transform=Transform(size=32))
    assert not make_loader(vp9_split, device="cuda", num_workers=2, **args).dataset.pin  # workers: pinned by us
    loader = make_loader(vp9_split, device="cuda", num_workers=0, **args)
    asked: list[bool] = []
    real_empty = torch.empty

    def empty(*shape, pin_memory=False, **kw):
        asked.append(pin_memory)
        return real_empty(*shape, **kw)  # no CUDA here to pin with

    monkeypatch.setattr(batch_module.torch, "empty", empty)
    batches = [b for b, _ in loader.dataset if b is not None]  # the decode stage alone, no device copy
    assert len(batches) > 2 and asked.count(True) == len(batches)


# -------------------------------------------------------------------- CUDA
@contextlib.contextmanager
def _sync_is_an_error():
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _steady_state(loader) -> list[Batch]:
    """Every batch of one epoch, all but the first under ``_sync_is_an_error``.

    The first batch is taken outside the mode: it pays what happens once per
    loader (CUDA context, the DALI pipeline's build and first prefetch, worker
    start-up, the first blocks of torch's device and pinned-memory caches, the
    normalisation constants' one copy); the promise is about every batch after it.
    """
    it = iter(loader)
    batches = [next(it)]
    with _sync_is_an_error():
        batches += list(it)
    torch.cuda.synchronize()
    return batches


def _check(batches: list[Batch], transform: Transform) -> None:
    assert len(batches) > 2
    for b in batches:
        assert b.video.is_cuda and b.lengths.device.type == "cpu"
        assert bool(torch.isfinite(b.video.float()).all())
        for i, n in enumerate(b.lengths.tolist()):
            if n < b.video.shape[2] and transform.pad == "zeros":
                assert not bool(b.video[i, :, n:].any())


@pytest.mark.cuda
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("output", ["float", "float16"])
def test_pyav_to_cuda_batches_make_no_host_sync(vp9_split, workers, output):
    t = Transform(size=32, output=output, pad="zeros")
    loader = make_loader(
        vp9_split, backend="pyav", device="cuda", batch_size=2, num_workers=workers, rank=0, world_size=1, transform=t
    )
    _check(_steady_state(loader), t)


@pytest.fixture(scope="module")
def phoenix_vp9(tmp_path_factory):
    """Six short VP9 clips at PHOENIX's 210x260 (NVDEC's VP9 minimum is 128x128)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from tests.loaders.shardkit import moving_frames, write_split

    videos = {f"s{i}": moving_frames(n, seed=i, h=210, w=260) for i, n in enumerate([14, 9, 16, 11, 12, 8])}
    return write_split(tmp_path_factory.mktemp("sync_vp9"), "dev", videos)


@pytest.mark.cuda
@pytest.mark.parametrize("output", ["float", "uint8"])
def test_dali_nvdec_batches_make_no_host_sync(phoenix_vp9, output):
    pytest.importorskip("nvidia.dali")
    t = Transform(size=112, output=output, pad="zeros")
    # one batch per DALI iteration: the steady state spans several iterations, not one
    loader = make_loader(
        phoenix_vp9,
        backend="dali",
        device="cuda",
        batch_size=2,
        num_workers=2,
        rank=0,
        world_size=1,
        transform=t,
        batches_per_run=1,
    )
    batches = _steady_state(loader)
    _check(batches, t)
    assert [k for b in batches for k in b.keys] == [f"s{i}" for i in range(6)]
    assert float(np.mean([float(b.video.float().abs().mean()) for b in batches])) > 0.1  # real pixels

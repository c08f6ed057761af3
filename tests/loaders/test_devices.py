"""Where the PyAV loader delivers its batches: ``device="cpu"``, ``"cuda"`` or ``"cuda:N"``.

Each test runs on the CPU here and, marked ``cuda``, on a GPU; the variants
differ only in the device string. DALI's own device tests (NVDEC on
``cuda:1``, its out-of-range check) are in ``test_dali_backend.py``.
"""

from __future__ import annotations

import pytest
import torch

from signstream import SignstreamError
from signstream.loaders import Transform, make_loader

TWO_GPUS = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="cuda:1 needs at least 2 CUDA devices")
DEVICES = [
    pytest.param("cpu"),
    pytest.param("cuda", marks=pytest.mark.cuda),
    pytest.param("cuda:1", marks=[pytest.mark.cuda, TWO_GPUS]),
]


def _resolved(device: str) -> torch.device:
    """The device a tensor sent to ``device`` ends on (``cuda`` is the current GPU)."""
    d = torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if d.type == "cuda" and d.index is None else d


def _batches(split, device, output="float"):
    loader = make_loader(
        split,
        backend="pyav",
        device=device,
        batch_size=2,
        num_workers=0,
        rank=0,
        world_size=1,
        transform=Transform(size=32, output=output),
    )
    return list(loader)


@pytest.mark.parametrize("device", DEVICES)
def test_pyav_batches_arrive_on_the_device_named_and_equal_the_cpu_ones(vp9_split, device):
    cpu = _batches(vp9_split, "cpu")
    got = _batches(vp9_split, device)
    assert len(got) == len(cpu) > 1
    for a, b in zip(cpu, got, strict=True):
        assert b.video.device == _resolved(device) and b.lengths.device.type == "cpu"
        assert b.keys == a.keys and b.video.dtype == a.video.dtype == torch.float32
        assert torch.equal(b.lengths.cpu(), a.lengths)
        # normalised on the device: (x - mean) / std in fp32, the same up to float rounding
        torch.testing.assert_close(b.video.cpu(), a.video, rtol=0, atol=1e-5)
        assert float(a.video.abs().max()) > 0.5  # real pixels, not an all-zero batch


@pytest.mark.parametrize("device", DEVICES)
def test_pyav_uint8_batches_on_the_device_are_the_decoded_bytes(vp9_split, device):
    cpu = _batches(vp9_split, "cpu", output="uint8")
    got = _batches(vp9_split, device, output="uint8")
    for a, b in zip(cpu, got, strict=True):
        assert b.video.device == _resolved(device) and b.video.dtype == torch.uint8
        assert torch.equal(b.video.cpu(), a.video)


def test_cuda_index_past_the_last_gpu_is_a_clear_error(vp9_split, monkeypatch):
    # Checked from the device count alone, before anything touches CUDA: runs without a GPU.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SignstreamError, match=r"device='cuda:3' but only 1 CUDA device") as info:
        make_loader(vp9_split, backend="pyav", device="cuda:3", num_workers=0, rank=0, world_size=1)
    assert "\n" not in str(info.value)


@pytest.mark.cuda
def test_cuda_index_past_the_last_real_gpu_is_a_clear_error(vp9_split):
    n = torch.cuda.device_count()
    with pytest.raises(SignstreamError, match=rf"device='cuda:{n}' but only {n} CUDA device"):
        make_loader(vp9_split, backend="pyav", device=f"cuda:{n}", num_workers=0, rank=0, world_size=1)

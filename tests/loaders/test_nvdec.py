"""NVDEC capabilities: the driver's answer parsed, the table as fallback, and (on a GPU) the real driver."""

from __future__ import annotations

import ctypes

import pytest
import torch

from signstream.loaders import nvdec
from signstream.loaders.nvdec import CODEC_IDS, NVDEC_LIMITS, DecodeCaps, query_caps


class FakeCuda:
    """The four driver calls the query makes, recording that the context is pushed and released."""

    def __init__(self, fail: str | None = None):
        self.fail, self.calls = fail, []

    def __getattr__(self, name):
        def call(*args):
            self.calls.append(name)
            return 100 if name == self.fail else 0  # 100: CUDA_ERROR_NO_DEVICE

        return call


class FakeCuvid:
    """cuvidGetDecoderCaps answering like a Hopper GPU: no AV1, H.264 up to 4096."""

    def __init__(self):
        self.asked = []

    def cuvidGetDecoderCaps(self, ref):
        caps = ctypes.cast(ref, ctypes.POINTER(DecodeCaps)).contents
        codec = {v: k for k, v in CODEC_IDS.items()}[caps.eCodecType]
        self.asked.append((codec, caps.eChromaFormat, caps.nBitDepthMinus8))
        if codec == "av1":
            caps.bIsSupported = 0
            return 0
        caps.bIsSupported = 1
        caps.nMinWidth, caps.nMinHeight = (48, 16) if codec in ("h264", "vp8") else (128, 128)
        caps.nMaxWidth = caps.nMaxHeight = 4096 if codec in ("h264", "vp8") else 8192
        caps.nMaxMBCount = caps.nMaxWidth * caps.nMaxHeight // 256
        return 0


def test_caps_structure_has_the_header_size_and_offsets():
    # 88 bytes; min/max fields where cuviddec.h puts them (SDK 8 to 13 alike)
    assert ctypes.sizeof(DecodeCaps) == 88
    assert DecodeCaps.nMaxWidth.offset == 28 and DecodeCaps.nMinWidth.offset == 40
    assert DecodeCaps.nMinHeight.offset == 42


def test_driver_answer_is_read_per_codec_for_8_bit_420_and_the_context_is_released():
    cuda, cuvid = FakeCuda(), FakeCuvid()
    caps = query_caps(0, libraries=(cuda, cuvid))
    assert set(caps) == set(CODEC_IDS)
    assert all(chroma == 1 and depth == 0 for _, chroma, depth in cuvid.asked)
    assert caps["vp9"].supported and caps["vp9"].limits() == ((128, 128), (8192, 8192))
    assert caps["h264"].min_hw == (16, 48) and caps["h264"].max_hw == (4096, 4096)
    assert not caps["av1"].supported
    assert cuda.calls[-2:] == ["cuCtxPopCurrent", "cuDevicePrimaryCtxRelease"]


def test_a_failing_driver_call_means_no_answer_not_an_exception():
    assert query_caps(0, libraries=(FakeCuda(fail="cuInit"), FakeCuvid())) is None
    cuda = FakeCuda(fail="cuDeviceGet")
    assert query_caps(3, libraries=(cuda, FakeCuvid())) is None


def test_limits_come_from_the_driver_when_it_answers_and_from_the_table_otherwise(monkeypatch):
    answer = query_caps(0, libraries=(FakeCuda(), FakeCuvid()))
    blackwell = dict(answer, h264=nvdec.Caps("h264", True, (16, 48), (8192, 8192), 262144))
    monkeypatch.setattr(nvdec, "decoder_caps", lambda device=0: blackwell if device == 0 else None)
    assert nvdec.nvdec_limits("h264", 0) == ((16, 48), (8192, 8192))  # this GPU's own limit
    assert nvdec.nvdec_limits("h264", 1) == NVDEC_LIMITS["h264"]  # driver cannot be asked
    assert nvdec.nvdec_limits("h264") == NVDEC_LIMITS["h264"]  # no device given
    assert nvdec.nvdec_limits("av1", 0) == NVDEC_LIMITS["av1"]  # unsupported: the table's size,
    message = nvdec.unsupported_codec_error("av1", 0, "shards/dev")  # and the codec is refused
    assert "GPU 0 cannot decode av1" in message and "--codec vp9" in message and "\n" not in message
    assert nvdec.unsupported_codec_error("vp9", 0, "x") is None
    assert nvdec.unsupported_codec_error("av1", 1, "x") is None  # no answer: DALI will say


def test_nvdec_sizes_follow_the_gpus_own_limits(monkeypatch):
    caps = query_caps(0, libraries=(FakeCuda(), FakeCuvid()))
    caps = dict(caps, vp9=nvdec.Caps("vp9", True, (64, 64), (8192, 8192), 262144))
    monkeypatch.setattr(nvdec, "decoder_caps", lambda device=0: caps)
    assert nvdec.nvdec_size_error("vp9", 96, 96, "x", device=0) is None  # this GPU decodes 96x96 VP9
    assert "128x128" in nvdec.nvdec_size_error("vp9", 96, 96, "x")  # the table would refuse it


def test_without_a_driver_the_report_says_so_in_one_line(monkeypatch):
    monkeypatch.setattr(nvdec, "query_caps", lambda device=0: None)
    text = nvdec.report(2)
    assert text.startswith("GPU 2:") and "\n" not in text


@pytest.mark.cuda
def test_driver_limits_contain_the_fallback_table_and_vp9_h264_decode():
    """On a GPU: the table never lets through a size the driver refuses, and pack's codecs decode."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    caps = query_caps(torch.cuda.current_device())
    assert caps is not None, "libcuda/libnvcuvid could not be asked on a CUDA machine"
    print(nvdec.report(torch.cuda.current_device()))
    assert caps["vp9"].supported and caps["h264"].supported
    for codec, ((min_h, min_w), (max_h, max_w)) in NVDEC_LIMITS.items():
        c = caps[codec]
        if c.supported:
            assert min_h >= c.min_hw[0] and min_w >= c.min_hw[1], (codec, c)
            assert max_h <= c.max_hw[0] and max_w <= c.max_hw[1], (codec, c)

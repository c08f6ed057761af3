"""DALI decoder start-up: a dead decoder is one line, a corrupt video a named skip; thread sizing.

The dead-decoder cases inject DALI's own failures on the CPU pipeline: every
``run`` decodes for real and then raises the error text DALI gives when the
decoder cannot work (so the loader's bookkeeping runs exactly as on a GPU).
"""

from __future__ import annotations

import av
import pytest
import torch

from signstream import SignstreamError
from signstream.loaders import Transform, dali_pipeline, dali_startup, dali_stream, make_loader
from signstream.loaders import dali_backend as db
from signstream.loaders.dali_startup import (
    CAUSES,
    cause_hint,
    dali_reason,
    dead_decoder_error,
    reference_clip,
    reference_codec,
)

pytest.importorskip("nvidia.dali")


def dali_error(reason: str) -> RuntimeError:
    """A RuntimeError worded as DALI 2.4's pipeline errors are."""
    return RuntimeError(
        "Critical error in pipeline:\nError in MIXED operator `nvidia.dali.fn.decoders.video`,\n"
        "which was used in the pipeline definition with the following traceback:\n\n"
        '  File "loaders/dali_backend.py", line 192, in decode\n\nencountered:\n\n'
        f"{reason}\nC++ context: [/opt/dali/dali/operators/video/frames_decoder_gpu.cc:40]\n"
        "Current pipeline object is no longer valid."
    )


NO_NVCUVID = (
    "Failed to load libnvcuvid.so, needed by the VideoReader operator. If you are running in a "
    "Docker container, please refer to https://github.com/NVIDIA/nvidia-docker/wiki/Usage"
)


class Dying:
    """A real pipeline whose runs fail with ``reason`` once ``good`` runs have succeeded."""

    def __init__(self, pipe, reason: str, counter: dict, good: int = 0):
        self.pipe, self.reason, self.counter, self.good = pipe, reason, counter, good

    def run(self, *args, **inputs):
        out = self.pipe.run(*args, **inputs)  # consume the feed as DALI would
        self.counter["runs"] += 1
        if self.counter["runs"] > self.good:
            raise dali_error(self.reason)
        return out

    def reset(self):
        self.pipe.reset()


@pytest.fixture
def builds(monkeypatch):
    """Count pipeline builds; ``builds["wrap"]`` (if set) wraps each built pipeline."""
    real = dali_stream.build_pipeline
    counter = {"builds": 0, "runs": 0, "wrap": None, "threads": []}

    def build(*args, **kw):
        counter["builds"] += 1
        counter["threads"].append(kw["num_threads"])
        pipe = real(*args, **kw)
        return counter["wrap"](pipe) if counter["wrap"] else pipe

    monkeypatch.setattr(dali_stream, "build_pipeline", build)
    return counter


def loader(split, **kw):
    kw.setdefault("transform", Transform(size=32))
    return make_loader(split, backend="dali", num_workers=1, rank=0, world_size=1, **kw)


# --------------------------------------------------------------- loud failure
def test_a_dead_decoder_is_one_line_on_the_first_iteration_not_a_skipped_split(vp9_split, builds):
    builds["wrap"] = lambda pipe: Dying(pipe, NO_NVCUVID, builds)
    ld = loader(vp9_split, batch_size=2, handler="warn")
    with pytest.raises(SignstreamError) as info:
        next(iter(ld))
    message = str(info.value)
    assert "\n" not in message and message.startswith("DALI's CPU video decoder fails, even for a reference clip")
    assert "libnvcuvid" in message and "NVIDIA_DRIVER_CAPABILITIES" in message and "backend='pyav'" in message
    assert builds["builds"] == 2  # the pipeline and one probe: no build per sample
    assert ld.stats.skipped == []  # nothing was blamed on the samples


def test_a_decoder_that_dies_mid_run_is_one_line_after_a_bounded_number_of_probe_builds(vp9_split, builds):
    oom = "CUDA error: out of memory (CUDA_ERROR_OUT_OF_MEMORY)"
    builds["wrap"] = lambda pipe: Dying(pipe, oom, builds, good=1)
    ld = loader(vp9_split, batch_size=1, batches_per_run=1, handler="skip")
    delivered = []
    with pytest.raises(SignstreamError, match="out of memory.*lower batch_size"):
        for batch in ld:
            delivered.extend(batch.keys)
    assert len(delivered) == 1  # the one iteration that worked
    # the pipeline, one probe per sample that failed alone, and the reference check; not one per sample
    assert builds["builds"] == 1 + dali_stream.PROBES_BEFORE_CHECK + 1


def test_a_corrupt_sample_among_good_ones_is_still_skipped_and_named(damaged_split, monkeypatch):
    checks = []
    real = dali_stream.reference_inputs
    monkeypatch.setattr(dali_stream, "reference_inputs", lambda *a: checks.append(a) or real(*a))
    ld = loader(damaged_split, batch_size=3, handler="skip")
    keys = [k for b in ld for k in b.keys]
    assert sorted(keys) == ["v00", "v01", "v03", "v05", "v06"]
    assert {s.key: s.shard for s in ld.stats.skipped} == {"v02": "dev-000000.tar", "v04": "dev-000001.tar"}
    assert len(checks) == 1  # the decoder was checked once (and decodes the reference clip on the CPU)


def test_a_pipeline_that_cannot_be_built_is_one_line_naming_the_cause(vp9_split, monkeypatch):
    def fail(*args, **kw):
        raise dali_error("CUDA driver version is insufficient for CUDA runtime version")

    monkeypatch.setattr(dali_stream, "build_pipeline", fail)
    with pytest.raises(SignstreamError) as info:
        list(loader(vp9_split, batch_size=2))
    message = str(info.value)
    assert "\n" not in message and "building DALI's pipeline" in message and "update the driver" in message


@pytest.mark.parametrize(
    ("reason", "hint"),
    [
        (NO_NVCUVID, "libnvcuvid.so.1 is missing"),
        ("dlopen libnvcuvid.so failed!. Please install NVIDIA GPU driver", "libnvcuvid.so.1 is missing"),
        ('Failed to create video decoder for "sample #0" (CUDA_ERROR_NOT_SUPPORTED)', "MIG slice"),
        ("Decoder hardware does not support this video codec and/or chroma format", "no usable NVDEC engine"),
        ("CUDA error: out of memory", "out of memory"),
        ("CUDA driver version is insufficient for CUDA runtime version", "update the driver"),
    ],
)
def test_known_causes_of_a_dead_decoder_name_the_way_out_in_one_line(reason, hint):
    message = dead_decoder_error([dali_error(reason)], 0, stage=", even for a reference clip")
    assert message.startswith("NVDEC decoding fails on GPU 0, even for a reference clip: DALI: ")
    assert hint in message and message.endswith("or use backend='pyav'") and "\n" not in message
    assert "C++ context" not in message and "no longer valid" not in message


def test_an_unknown_cause_still_names_dalis_reason_and_a_way_out():
    assert cause_hint("Something nobody has seen") is None
    message = dead_decoder_error([dali_error("Something nobody has seen")], 0, stage="")
    assert "DALI: Something nobody has seen" in message and "signstream.loaders.nvdec" in message
    assert len(CAUSES) == len({hint for _, hint in CAUSES})
    assert (
        dali_reason(dali_error("x" * 1000)).startswith("DALI: xxx") and len(dali_reason(dali_error("x" * 1000))) == 300
    )


@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_the_reference_clip_is_a_valid_video_at_nvdecs_smallest_size(codec):
    import io

    with av.open(io.BytesIO(reference_clip(codec))) as f:
        frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
        assert f.streams.video[0].codec_context.name == codec
    assert len(frames) == 4 and frames[0].shape == (128, 128, 3)
    assert reference_codec({"h264"}, cuda=True) == "h264"
    assert reference_codec({"h264"}, cuda=False) == reference_codec({"hevc"}, cuda=True) == "vp9"


# ------------------------------------------------------------ sized for a GPU
@pytest.mark.parametrize(("cores", "processes", "expected"), [(16, 1, 8), (4, 1, 4), (16, 8, 2), (1, 1, 1), (2, 4, 1)])
def test_cuda_decoder_threads_are_the_hosts_share_whatever_num_workers_says(cores, processes, expected):
    for workers in (0, 1, 12):
        assert dali_startup.resolve_decoder_threads(True, workers, cores=cores, processes=processes) == expected


def test_cpu_decoder_threads_follow_num_workers_and_an_override_wins_everywhere():
    assert [dali_startup.resolve_decoder_threads(False, w, cores=16) for w in (0, 1, 6)] == [1, 1, 6]
    assert (
        dali_startup.resolve_decoder_threads(True, 1, 3, cores=16)
        == dali_startup.resolve_decoder_threads(False, 1, 3)
        == 3
    )
    with pytest.raises(SignstreamError, match="decoder_threads must be >= 1, got 0"):
        dali_startup.resolve_decoder_threads(True, 1, 0)


@pytest.mark.parametrize("threads", [1, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 2, 3, 8, 32])
def test_a_cuda_iteration_holds_at_least_two_clips_per_decoder_thread(threads, batch_size):
    runs = dali_startup.default_batches_per_run(batch_size, cuda=True, threads=threads)
    assert runs * batch_size >= 2 * threads and (runs - 1) * batch_size < 2 * threads


@pytest.fixture
def fake_cuda(monkeypatch):
    """A one-GPU machine as far as the loader's constructor can tell (nothing decodes)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(db, "check_nvdec_sizes", lambda *a, **k: None)  # the fixture is below NVDEC's minimum
    monkeypatch.setattr(dali_startup, "available_cores", lambda: 16)
    for name in ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_cuda_loader_sizes_dali_for_the_host_not_for_num_workers(vp9_split, fake_cuda):
    ld = loader(vp9_split, device="cuda", batch_size=1)
    assert (ld.num_threads, ld.batches_per_run) == (8, 16)
    assert ld.describe()["decoder_threads"] == 8
    fake_cuda.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks on this host share its 16 cores
    assert loader(vp9_split, device="cuda", batch_size=2).num_threads == 4


def test_a_cuda_loader_honours_decoder_threads_and_batches_per_run(vp9_split, fake_cuda):
    ld = loader(vp9_split, device="cuda", batch_size=2, decoder_threads=3)
    assert (ld.num_threads, ld.batches_per_run) == (3, 3)
    assert loader(vp9_split, device="cuda", batch_size=2, decoder_threads=3, batches_per_run=1).batches_per_run == 1


def test_a_cpu_loader_builds_its_pipeline_with_the_decoder_threads_asked_for(vp9_split, builds):
    ld = loader(vp9_split, batch_size=2, decoder_threads=3)
    assert sum(len(b.keys) for b in ld) == 7 and builds["threads"] == [3]
    assert loader(vp9_split, batch_size=2, decoder_threads=None).num_threads == 1  # None: the default


# ---------------------------------------------------------------- CUDA (NVDEC)
cuda = pytest.mark.cuda


@cuda
@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_nvdec_decodes_the_reference_clip(codec):
    from signstream.loaders.dali_startup import REFERENCE_FRAMES, reference_inputs

    names = dali_pipeline.input_names("dali", Transform(size=64))
    pipe = dali_pipeline.build_pipeline(
        names,
        postprocess="dali",
        transform=Transform(size=64, output="uint8"),
        batch_size=1,
        num_threads=1,
        device_id=0,
    )
    inputs = reference_inputs(codec)
    (out,) = pipe.run(**{n: [inputs[n]] for n in names})
    assert tuple(out.as_cpu().as_array().shape) == (1, 3, REFERENCE_FRAMES, 128, 128)


@cuda
def test_a_cuda_loader_with_num_workers_1_decodes_every_sample_on_the_hosts_threads(phoenix_size_packed, builds):
    from signstream.loaders.cpu import available_cores, local_processes

    ld = loader(phoenix_size_packed / "train", device="cuda", batch_size=1, transform=Transform(size=112))
    keys = [k for b in ld for k in b.keys]
    assert ld.num_threads == min(8, available_cores() // local_processes()) and builds["threads"] == [ld.num_threads]
    assert ld.batches_per_run == 2 * ld.num_threads and len(keys) == 4 and not ld.stats.skipped


@cuda
def test_a_dead_nvdec_is_one_line_naming_the_gpu(phoenix_size_packed, builds):
    builds["wrap"] = lambda pipe: Dying(pipe, NO_NVCUVID, builds)
    with pytest.raises(SignstreamError) as info:
        next(iter(loader(phoenix_size_packed / "dev", device="cuda", batch_size=2)))
    assert str(info.value).startswith("NVDEC decoding fails on GPU 0, even for a reference clip: DALI: Failed to load")
    assert builds["builds"] == 2

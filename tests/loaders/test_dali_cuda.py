"""DALI at PHOENIX's real frame size (210×260 VP9) against PyAV, on the CPU and on NVDEC.

NVDEC refuses VP9 below 128×128, so these tests read ``phoenix_size_packed``
(``tests/conftest.py``), not the 48×64 corpus. Each runs the same code with
DALI's CPU decoder (both post-processing paths: ``dali`` is the CPU twin of the
CUDA graph) and, marked ``cuda``, with NVDEC; the reference is always PyAV on
the CPU.

Stated tolerance, in grey levels (0-255; normalised output is mapped back with
the Transform's mean and std): mean absolute difference under 1.0 and at most
1 % of values differing by more than 4. Measured on the CPU at this size: mean
0.08-0.44, 99th percentile 1-2, whether training augmentation (random crop and
scale, temporal rescale, flip, colour jitter) is on or off. VP9 decoding is
bit-exact in every conforming decoder, so NVDEC differs only in its YUV to RGB
conversion, which the wider bound leaves room for.

A corrupt but parseable video (a few bytes flipped in the middle of the
stream, tar and JSON intact) is handled as: every sample of the split is either
delivered at its planned length and shape, possibly with decoding artefacts
(VP9 carries no checksum, so a decoder cannot tell every damaged frame), or
skipped and named with its key, shard and reason; the others are delivered
unchanged; the epoch ends. Never a crash, a hang or a clip of another length.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import av
import pytest
import torch

from signstream.loaders import Batch, Transform, make_loader
from signstream.loaders.shards import resolve_shards

pytest.importorskip("nvidia.dali")

RUNS = [
    pytest.param("cpu", "dali", id="cpu-dali-ops"),
    pytest.param("cpu", "opencv", id="cpu-opencv"),
    pytest.param("cuda", "dali", marks=pytest.mark.cuda, id="cuda"),
]
TRAIN = dict(hflip=True, colour_jitter=0.3, train_scale=(0.6, 1.0))  # temporal_rescale: its default (0.5, 1.5)


def loader(split: Path, backend: str, device: str = "cpu", **kw):
    """A one-rank loader; PyAV decodes in-process."""
    if backend == "pyav":
        kw.setdefault("num_workers", 0)
    return make_loader(split, backend=backend, device=device, rank=0, world_size=1, **kw)


def grey_levels(batch: Batch, transform: Transform) -> torch.Tensor:
    """The batch in 0-255 units on the CPU (normalised output mapped back with the Transform's mean/std)."""
    video = batch.video.cpu().float()
    if transform.output == "uint8":
        return video
    mean, std = (torch.from_numpy(a).view(1, 3, 1, 1, 1) for a in transform.mean_std())
    return video * std + mean


def assert_like_pyav(ref: Batch, got: Batch, transform: Transform, device: str) -> None:
    """Same keys, lengths, shape and dtype as PyAV's batch; pixels within the stated tolerance."""
    assert got.video.device.type == torch.device(device).type and got.video.dtype == ref.video.dtype
    assert got.keys == ref.keys and got.lengths.tolist() == ref.lengths.tolist()
    assert got.video.shape == ref.video.shape
    diff = (grey_levels(ref, transform) - grey_levels(got, transform)).abs()
    assert float(diff.mean()) < 1.0 and float((diff > 4).float().mean()) <= 0.01, got.keys


def all_keys(split: Path) -> list[str]:
    return sorted(r.key for r in resolve_shards(split).refs)


@pytest.mark.parametrize(("device", "postprocess"), RUNS)
def test_dali_train_mode_matches_pyav_for_three_epochs_in_a_row(phoenix_size_packed, device, postprocess):
    # Crops, scales, temporal rescaling, flips and jitter are drawn from (seed, epoch, key): both
    # backends must agree in every epoch, and each epoch must draw new ones.
    split = phoenix_size_packed / "train"
    t = Transform(size=112, output="uint8", **TRAIN)
    kw = dict(mode="train", batch_size=2, transform=t, shuffle=True, seed=4)
    pyav, dali = loader(split, "pyav", **kw), loader(split, "dali", device, postprocess=postprocess, **kw)
    epochs, repeated = [], False
    for _ in range(3):
        ref, got = list(pyav), list(dali)
        assert len(got) == len(ref) == len(dali) == 2  # equal batch counts, every epoch
        assert sorted(k for b in got for k in b.keys) == all_keys(split)  # every sample, once
        for a, b in zip(ref, got, strict=True):
            assert_like_pyav(a, b, t, device)
        epochs.append([b.lengths.tolist() for b in got])
        repeated |= any(n > m["num_frames"] for b in got for n, m in zip(b.lengths.tolist(), b.meta))
    assert repeated, "no clip was stretched by temporal rescaling (repeated frames untested)"
    assert len({str(e) for e in epochs}) == 3, epochs
    assert not dali.stats.skipped


@pytest.mark.parametrize(("mode", "output"), [("eval", "float"), ("eval", "float16"), ("train", "float")])
@pytest.mark.parametrize(("device", "postprocess"), RUNS)
def test_dali_normalised_output_with_zero_padding_matches_pyav(phoenix_size_packed, device, postprocess, mode, output):
    split = phoenix_size_packed / "train"  # 4 videos: 2 full batches in both modes
    t = Transform(
        size=112,
        normalize="kinetics",
        output=output,
        pad="zeros",
        min_frames=48,
        pad_multiple=8,
        **(TRAIN if mode == "train" else {}),
    )
    kw = dict(mode=mode, batch_size=2, transform=t, shuffle=False, seed=1)
    ref = list(loader(split, "pyav", **kw))
    got = list(loader(split, "dali", device, postprocess=postprocess, **kw))
    assert len(got) == len(ref) == 2
    for a, b in zip(ref, got, strict=True):
        assert_like_pyav(a, b, t, device)
        assert b.video.shape[2] % 8 == 0 and b.video.shape[2] >= 48
        for i, n in enumerate(b.lengths.tolist()):
            assert n < b.video.shape[2]  # min_frames=48 pads every clip of this corpus
            assert not b.video[i, :, n:].any() and not a.video[i, :, n:].any()  # zero after normalisation
            assert b.video[i, :, :n].abs().amax(dim=(0, 2, 3)).min() > 0.5  # every real frame has pixels


# ---------------------------------------------------------------- a corrupt but parseable video
def middle_frame(video: bytes) -> tuple[int, int]:
    """Byte offset and size, inside the WebM file, of the payload of its middle frame."""
    with av.open(io.BytesIO(video)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    return packets[len(packets) // 2]


# Where bytes are flipped, relative to the middle frame's payload of ``size`` bytes, and what the
# CPU decoders (libavcodec, in PyAV and in DALI alike) make of it.
DAMAGE = {
    "one-byte-in-tile-data": (lambda size: [size // 4], "delivered"),  # decodes, with artefacts
    "four-bytes-in-tile-data": (lambda size: [size // 2 + 3 * j for j in range(4)], "skipped"),
    "block-header": (lambda size: [-3, -4], "skipped"),  # the container loses frames
}


def corrupt_copy(split: Path, out: Path, where: str) -> tuple[Path, str, str]:
    """A copy of ``split`` with bytes of its second video flipped mid-stream; ``(split, key, shard)``."""
    dst = out / split.name
    shutil.copytree(split, dst)
    shards = resolve_shards(dst)
    ref = shards.refs[1]
    tar = shards.shards[ref.shard].path
    offset, size = ref.video
    raw = bytearray(tar.read_bytes())
    pos, frame = middle_frame(bytes(raw[offset : offset + size]))
    for rel in DAMAGE[where][0](frame):
        raw[offset + pos + rel] ^= 0xFF
    tar.write_bytes(bytes(raw))  # tar headers, index and JSON untouched: it still parses
    return dst, ref.key, shards.shard_of(ref)


def clips(ld) -> dict[str, torch.Tensor]:
    """``key -> [3, length, H, W]`` on the CPU for one epoch of ``ld`` (padding dropped)."""
    out = {}
    for b in ld:
        assert b.video.shape[2] >= int(b.lengths.max())
        for i, (key, n) in enumerate(zip(b.keys, b.lengths.tolist(), strict=True)):
            out[key] = b.video[i, :, :n].cpu()
    return out


@pytest.mark.timeout(120)  # a decoder that hangs on the damage fails here, not at the suite's limit
@pytest.mark.parametrize("where", DAMAGE)
@pytest.mark.parametrize(
    ("backend", "device", "postprocess"),
    [
        pytest.param("pyav", "cpu", None, id="pyav"),
        pytest.param("dali", "cpu", "dali", id="cpu-dali-ops"),
        pytest.param("dali", "cpu", "opencv", id="cpu-opencv"),
        pytest.param("dali", "cuda", "dali", marks=pytest.mark.cuda, id="cuda"),
    ],
)
def test_a_video_with_flipped_bytes_is_skipped_and_named_or_delivered_whole(
    phoenix_size_packed, tmp_path, backend, device, postprocess, where
):
    clean_split = phoenix_size_packed / "dev"
    split, bad, shard = corrupt_copy(clean_split, tmp_path, where)
    kw = dict(batch_size=2, transform=Transform(size=64, output="uint8"), handler="skip")
    if postprocess:
        kw["postprocess"] = postprocess
    clean = clips(loader(clean_split, backend, device, **kw))
    ld = loader(split, backend, device, **kw)
    got = clips(ld)
    skipped = {s.key: s for s in ld.stats.skipped}
    assert set(skipped) <= {bad} and sorted(got.keys() | skipped.keys()) == all_keys(split)
    assert not got.keys() & skipped.keys()
    for key, clip in got.items():
        assert clip.shape == clean[key].shape, key  # planned length and size, damaged or not
        if key != bad:
            assert torch.equal(clip, clean[key]), key
    if bad in skipped:
        assert skipped[bad].shard == shard and skipped[bad].reason
    outcome = "skipped" if bad in skipped else "delivered"
    if device == "cpu":  # libavcodec's answer: proves both branches above are exercised
        assert outcome == DAMAGE[where][1], (where, outcome, skipped.get(bad))
        if outcome == "delivered":
            assert not torch.equal(got[bad], clean[bad])  # the flip really damaged the picture

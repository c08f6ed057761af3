"""Real-world video quirks in a ``signstream pack csv`` table.

Sources are written here with PyAV, tiny (32x48, 10 frames): an NTSC-rate
(30000/1001) MP4 once ended the whole pack with an ``AttributeError``; a
variable-frame-rate MP4; rotation metadata as phones write it; and sources
damaged inside or cut short. Each is either packed correctly (every frame, in
order, upright, its true rate in the JSON) or skipped and named in the
manifest and the summary, never packed wrong without a word.
"""

from __future__ import annotations

import io
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from signstream.loaders.format import iter_samples

pytestmark = pytest.mark.hostile

H, W, N = 32, 48, 10


def _frame(t: int) -> np.ndarray:
    """Frame ``t``: grey level rising with t, a white top-left quadrant to tell up from down."""
    img = np.full((H, W, 3), 20 + 20 * t, np.uint8)
    img[: H // 2, : W // 2] = 255
    return img


def _write(
    path: Path,
    *,
    codec: str = "libx264",
    rate=25,
    pts_ms: list[int] | None = None,
    rotation: int | None = None,
    hflip: bool = False,
    damage_packet: int | None = None,
) -> Path:
    """Write N frames; ``pts_ms`` times them irregularly, ``damage_packet`` replaces one packet by noise."""
    with av.open(str(path), "w", options={"movflags": "faststart"} if path.suffix == ".mp4" else {}) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        if rotation is not None:
            stream.set_display_rotation(rotation, hflip=hflip)
        if pts_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        packets = []
        for t in range(N):
            frame = av.VideoFrame.from_ndarray(_frame(t), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[t], Fraction(1, 1000)
            packets += stream.encode(frame)
        packets += stream.encode()
        for i, packet in enumerate(packets):
            if i == damage_packet:
                noise = np.random.default_rng(0).integers(0, 256, packet.size, dtype=np.uint8).tobytes()
                bad = av.Packet(noise)
                bad.pts, bad.dts, bad.time_base, bad.stream = packet.pts, packet.dts, packet.time_base, stream
                packet = bad
            out.mux(packet)
    return path


def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def _pack(tmp_path: Path, sources: dict[str, Path], run_cli) -> tuple[int, Path]:
    table = tmp_path / "table.csv"
    table.write_text("name,path,gloss,split\n" + "".join(f"{name},{p.name},A B,dev\n" for name, p in sources.items()))
    out = tmp_path / "out"
    return run_cli(["pack", "csv", "--table", str(table), "--out", str(out), "--workers", "1", "--quiet"]), out


def _packed(out: Path) -> dict[str, tuple[dict, list[np.ndarray], Fraction]]:
    """key -> (JSON, decoded RGB frames, container rate) of every packed sample."""
    found = {}
    for tar in sorted((out / "dev").glob("*.tar")):
        for key, members in iter_samples(tar):
            with av.open(io.BytesIO(members["webm"])) as c:
                frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
                rate = c.streams.video[0].average_rate
            found[key] = (json.loads(members["json"]), frames, rate)
    return found


def test_ntsc_and_variable_rate_mp4_pack_every_frame_in_order_with_their_true_rate(tmp_path, run_cli):
    sources = {
        "ntsc": _write(tmp_path / "ntsc.mp4", rate=Fraction(30000, 1001)),
        "vfr": _write(tmp_path / "vfr.mp4", pts_ms=[0, 40, 80, 200, 210, 400, 440, 540, 700, 900]),
        "pal": _write(tmp_path / "pal.mp4"),
    }
    with av.open(str(sources["vfr"])) as c:
        vfr_rate = c.streams.video[0].average_rate
    code, out = _pack(tmp_path, sources, run_cli)
    assert code == 0
    packed = _packed(out)
    assert sorted(packed) == ["ntsc", "pal", "vfr"]
    expected = {"ntsc": Fraction(30000, 1001), "vfr": vfr_rate, "pal": Fraction(25)}
    for key, (meta, frames, rate) in packed.items():
        assert meta["num_frames"] == len(frames) == N
        assert meta["fps"] == float(expected[key]) and rate == expected[key], key
        greys = [f[H // 2 :, W // 2 :].mean() for f in frames]  # the quadrant that carries the time
        assert all(b > a + 10 for a, b in zip(greys, greys[1:])), (key, greys)


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_applied_so_frames_are_packed_upright(tmp_path, run_cli, rotation):
    code, out = _pack(tmp_path, {"phone": _write(tmp_path / "phone.mp4", rotation=rotation)}, run_cli)
    assert code == 0
    meta, frames, _ = _packed(out)["phone"]
    # the display matrix turns the picture counter-clockwise by `rotation` degrees
    upright = np.rot90(_frame(0), rotation // 90).astype(np.float32)
    assert (meta["height"], meta["width"]) == upright.shape[:2] == frames[0].shape[:2]
    assert np.abs(frames[0] - upright).mean() < 8


def test_mirrored_or_odd_angle_video_is_skipped_and_named_not_packed_wrong(tmp_path, run_cli, capsys):
    sources = {
        "mirror": _write(tmp_path / "mirror.mp4", rotation=0, hflip=True),
        "tilted": _write(tmp_path / "tilted.mp4", rotation=45),
        "good": _write(tmp_path / "good.mp4"),
    }
    code, out = _pack(tmp_path, sources, run_cli)
    assert code == 0 and sorted(_packed(out)) == ["good"]
    skipped = {s["name"]: s for s in json.loads((out / "dev" / "manifest.json").read_text())["skipped"]}
    assert "mirrored" in skipped["mirror"]["reason"] and "45 degrees" in skipped["tilted"]["reason"]
    summary = capsys.readouterr().out
    assert "dev: 1 videos" in summary and "2 skipped" in summary


def test_damaged_or_cut_short_sources_are_skipped_named_and_counted(tmp_path, run_cli, capsys):
    sources = {
        "cut_mp4": _cut(_write(tmp_path / "cut.mp4", codec="mpeg4"), 0.7),
        "cut_webm": _cut(_write(tmp_path / "cut.webm", codec="libvpx-vp9"), 0.6),
        "noisy_h264": _write(tmp_path / "noisy.mp4", damage_packet=5),
        "noisy_mpeg4": _write(tmp_path / "noisy4.mp4", codec="mpeg4", damage_packet=5),
        "good": _write(tmp_path / "good.mp4"),
    }
    code, out = _pack(tmp_path, sources, run_cli)
    captured = capsys.readouterr()
    assert code == 0 and sorted(_packed(out)) == ["good"]
    skipped = {s["name"]: s for s in json.loads((out / "dev" / "manifest.json").read_text())["skipped"]}
    assert sorted(skipped) == ["cut_mp4", "cut_webm", "noisy_h264", "noisy_mpeg4"]
    for name, record in skipped.items():
        assert "damaged" in record["reason"] and sources[name].name in record["reason"], record
        assert f"({name}): " in captured.err
    assert "dev: 1 videos" in captured.out and "4 skipped" in captured.out

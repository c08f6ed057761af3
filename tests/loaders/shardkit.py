"""Helpers that write tiny shards and frame folders for the loader tests.

A small independent shard writer (PyAV + tarfile + a DALI v1.2 index) so the
tests can build exactly the damaged shards they need (a truncated or garbled
video); the shared fixtures in ``conftest.py`` use the real synth -> pack path.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import av
import cv2
import numpy as np

from signstream.loaders.format import (
    Manifest,
    PackLayout,
    ShardEntry,
    index_path_for,
    sha256_file,
    shard_name,
    write_manifest,
)

H, W = 48, 64


def moving_frames(num: int, seed: int, h: int = H, w: int = W) -> np.ndarray:
    """uint8 [T, H, W, 3]: a smooth gradient background with a moving square and mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 128 / (h + w) + 60], -1)
    colour = rng.uniform(40, 255, 3)
    out = []
    for t in range(num):
        f = base.copy()
        y0, x0 = (5 + 2 * t + seed) % (h - 12), (3 + 3 * t + 2 * seed) % (w - 12)
        f[y0 : y0 + 12, x0 : x0 + 12] = colour
        f += rng.normal(0, 3, f.shape)
        out.append(np.clip(f, 0, 255).astype(np.uint8))
    return np.stack(out)


ENCODERS = {
    "vp9": ("libvpx-vp9", "webm", "webm", {"crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8"}),
    "h264": ("libx264", "mp4", "mp4", {"crf": "18", "preset": "veryfast"}),
}


def encode(frames: np.ndarray, codec: str = "vp9") -> bytes:
    """Encode RGB frames in memory (yuv420p, 25 fps)."""
    encoder, container, _, options = ENCODERS[codec]
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(encoder, rate=25)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = options
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()


def write_tar(path: Path, samples: list[list[tuple[str, bytes]]]) -> str:
    """Write a tar; return its DALI v1.2 index text."""
    lines = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for members in samples:
            entries = []
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                header = info.tobuf(tar.format, tar.encoding, tar.errors)
                entries.append(f"{name.split('.', 1)[1]} {tar.offset + len(header)} {len(data)} {name}")
                tar.addfile(info, io.BytesIO(data))
            lines.append(" ".join(entries))
    return f"v1.2 {len(samples)}\n" + "\n".join(lines) + "\n"


def write_split(
    out: Path,
    split: str,
    videos: dict[str, np.ndarray],
    *,
    codec: str = "vp9",
    per_shard: int = 3,
    damage: dict[str, bytes] | None = None,
    bare_meta: bool = False,
) -> Path:
    """Write ``videos`` (key -> frames) as shards + indexes + manifest; return the split dir.

    ``damage`` replaces a key's encoded bytes (the JSON still describes the
    original video), to inject corrupt samples. ``bare_meta`` writes JSON with
    only ``key`` and ``name`` (as third-party shards might).
    """
    split_dir = out / split
    split_dir.mkdir(parents=True, exist_ok=True)
    ext = ENCODERS[codec][2]
    keys = list(videos)
    shards = []
    for number, start in enumerate(range(0, len(keys), per_shard)):
        samples, frames_in_shard = [], 0
        for key in keys[start : start + per_shard]:
            frames = videos[key]
            data = (damage or {}).get(key) or encode(frames, codec)
            meta = {
                "name": key,
                "key": key,
                "split": split,
                "signer": "S1",
                "gloss": "A B",
                "text": "",
                "num_frames": len(frames),
                "fps": 25.0,
                "height": frames.shape[1],
                "width": frames.shape[2],
                "codec": codec,
            }
            if bare_meta:
                meta = {"key": key, "name": key}
            samples.append([(f"{key}.{ext}", data), (f"{key}.json", json.dumps(meta).encode())])
            frames_in_shard += len(frames)
        tar = split_dir / shard_name(split, number)
        index_path_for(tar).write_text(write_tar(tar, samples))
        shards.append(
            ShardEntry(
                tar.name,
                index_path_for(tar).name,
                sha256_file(tar),
                len(samples),
                frames_in_shard,
                tar.stat().st_size,
                tuple(keys[start : start + per_shard]),
            )
        )
    write_manifest(PackLayout(out).manifest_path(split), Manifest.build(split, codec, ext, "", {}, shards))
    return split_dir


def write_phoenix_pngs(root: Path, split: str, videos: dict[str, np.ndarray]) -> Path:
    """Write ``videos`` as a PHOENIX-2014 frame-folder corpus (one split); return the root."""
    base = root / "phoenix2014-release" / "phoenix-2014-multisigner"
    rows = ["id|folder|signer|annotation"]
    for name, frames in videos.items():
        folder = base / "features" / "fullFrame-210x260px" / split / name / "1"
        folder.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            cv2.imwrite(str(folder / f"{name}.avi_pid0_fn{t:06d}-0.png"), frame[:, :, ::-1])
        rows.append(f"{name}|{name}/1/*.png|Signer01|A B")
    ann = base / "annotations" / "manual"
    ann.mkdir(parents=True, exist_ok=True)
    (ann / f"{split}.corpus.csv").write_text("\n".join(rows) + "\n")
    return root

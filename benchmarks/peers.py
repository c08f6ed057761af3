"""Peer rows of the loader benchmark: the loaders a user would write instead of signstream's.

Each peer turns the same VP9 videos into the same float32 ``[B, 3, T, 224, 224]`` batches as
signstream (every frame, short side to 224, centre crop, ImageNet normalisation) through a torch
``DataLoader``, and reports the mean absolute difference of its pixels from signstream's PyAV loader
on the same clips, in 0-255 grey levels. A peer whose package is missing is a skipped row with its
reason. Every peer runs in its own process: they bring their own FFmpeg and zlib builds.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

INSTALL_HINT = "pip install 'signstream[peers]'"
DIFF_VIDEOS = 8  # clips compared pixel by pixel with signstream's (the first of the split)
REFERENCE = "pyav vp9"  # the signstream row the peers' pixels and speed are compared with


# ------------------------------------------------------------------ per-clip decoders
def _v2(clips: torch.Tensor, size: int, resize: bool = True) -> torch.Tensor:
    """``[T, 3, H, W]`` uint8 -> contiguous ``[3, T, size, size]`` float with torchvision's v2 transforms."""
    from torchvision.transforms import v2

    from signstream.loaders.transform import NORMALIZATIONS

    mean, std = NORMALIZATIONS["imagenet"]
    if resize:
        clips = v2.CenterCrop(size)(v2.Resize(size, antialias=True)(clips))
    # Channels-first in memory while still uint8 (a quarter of the bytes to move); the float steps
    # are element-wise, so their outputs keep that layout and the final permute is free.
    clips = clips.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    return v2.Normalize(mean, std)(v2.ToDtype(torch.float32, scale=True)(clips)).permute(1, 0, 2, 3)


def _torchcodec(src: str | bytes, size: int) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder

    return _v2(VideoDecoder(src)[:], size)


def _torchcodec_resized(src: str | bytes, size: int) -> torch.Tensor:
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import CenterCrop, Resize

    meta = VideoDecoder(src, seek_mode="approximate").metadata  # its Resize takes an exact (h, w)
    scale = size / min(meta.height, meta.width)
    hw = (round(meta.height * scale), round(meta.width * scale))
    decoder = VideoDecoder(src, transforms=[Resize(hw), CenterCrop((size, size))])
    return _v2(decoder[:], size, resize=False)


def _decord(src: str | bytes, size: int) -> torch.Tensor:
    import decord

    reader = decord.VideoReader(src, ctx=decord.cpu(0), num_threads=1)
    frames = reader.get_batch(list(range(len(reader)))).asnumpy()
    return _v2(torch.from_numpy(frames).permute(0, 3, 1, 2), size)


def _spdl(src: str | bytes, size: int) -> torch.Tensor:
    import spdl.io

    # FFmpeg filter graph: short side to `size` (bilinear), centre crop, RGB
    short = f"w='if(gt(iw,ih),-1,{size})':h='if(gt(iw,ih),{size},-1)'"
    graph = f"scale={short}:flags=bilinear,crop=w={size}:h={size},format=pix_fmts=rgb24"
    frames = spdl.io.to_torch(spdl.io.load_video(src, filter_desc=graph))
    return _v2(frames.permute(0, 3, 1, 2), size, resize=False)


# name -> (modules it imports, what it reads, clip function)
PEERS: dict[str, tuple[tuple[str, ...], str, Callable[[str | bytes, int], torch.Tensor]]] = {
    "torchcodec → torchvision v2": (("torchcodec", "torchvision"), "files", _torchcodec),
    "torchcodec, decoder-side resize + crop": (("torchcodec", "torchvision"), "files", _torchcodec_resized),
    "decord → torchvision v2": (("decord", "torchvision"), "files", _decord),
    "SPDL filter graph": (("spdl.io", "torchvision"), "files", _spdl),
    "webdataset.WebDataset + torchcodec": (("webdataset", "torchcodec", "torchvision"), "shards", _torchcodec),
}


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot run here (a module not installed), without importing anything; else ``None``."""
    for module in PEERS[peer][0]:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module hidden as None
            found = False
        if not found:
            return f"peer {peer}: skipped, {module.split('.')[0]} not installed ({INSTALL_HINT})"
    return None


# ---------------------------------------------------------------------- datasets
def pad_collate(samples: list[tuple[str, torch.Tensor]]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Keys, ``[B, 3, T, H, W]`` with short clips padded by their last frame (as signstream pads), lengths."""
    keys = [k for k, _ in samples]
    lengths = torch.tensor([c.shape[1] for _, c in samples])
    longest = int(lengths.max())
    video = torch.stack([torch.cat([c, c[:, -1:].expand(-1, longest - c.shape[1], -1, -1)], 1) for _, c in samples])
    return keys, video, lengths


class FileClips(torch.utils.data.Dataset):
    """One video file per item, decoded whole by a peer's clip function."""

    def __init__(self, files: list[str], clip: Callable[[str | bytes, int], torch.Tensor], size: int):
        self.files, self.clip, self.size = files, clip, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor]:
        return Path(self.files[i]).stem, self.clip(self.files[i], self.size)


def _wds_clip(clip: Callable, size: int, sample: dict) -> tuple[str, torch.Tensor]:
    from signstream.loaders.format import VIDEO_EXTS

    ext = next(e for e in VIDEO_EXTS if e in sample)
    return sample["__key__"], clip(sample[ext], size)


def dataset(case: dict) -> torch.utils.data.Dataset:
    """The peer's dataset over the case's files or shards."""
    import functools

    _, reads, clip = PEERS[case["peer"]]
    if reads == "files":
        return FileClips(sorted(str(p) for p in Path(case["files"]).iterdir()), clip, case["size"])
    import webdataset as wds

    shards = sorted(str(p) for p in Path(case["source"]).glob("*.tar"))
    return wds.WebDataset(shards, shardshuffle=False, empty_check=False).map(
        functools.partial(_wds_clip, clip, case["size"])
    )


# ------------------------------------------------------------------------ a case
def pixel_diff(case: dict) -> dict[str, Any]:
    """Mean |peer - signstream| in grey levels over the reference clips (decoded here, one process)."""
    from signstream.loaders.transform import NORMALIZATIONS

    mean, std = (torch.tensor(v).view(3, 1, 1, 1) for v in NORMALIZATIONS["imagenet"])
    reference = torch.load(case["reference"])
    total, count, clips, frames_differ = 0.0, 0, 0, []
    for key, clip in dataset(case):
        if key not in reference:
            continue
        ours = reference[key].float()
        grey = (clip * std + mean) * 255
        if grey.shape != ours.shape:
            frames_differ.append(f"{key}: {tuple(grey.shape)} vs {tuple(ours.shape)}")
            continue
        total += float((grey - ours).abs().sum())
        count, clips = count + ours.numel(), clips + 1
    return {
        "mean_abs_diff_grey": total / count if count else None,
        "diff_clips": clips,
        "shape_mismatches": frames_differ,
    }


def peer_case(case: dict) -> dict[str, Any]:
    """Frames/s, CPU, memory and pixel difference of one peer (run in its own process)."""
    from signstream.benchmarks.loaders import _measure

    try:  # installed but unusable (torchcodec without FFmpeg's shared libraries, say)
        for module in PEERS[case["peer"]][0]:
            __import__(module)
        if "decoder-side" in case["peer"]:
            from torchcodec.transforms import CenterCrop, Resize  # noqa: F401
    except Exception as e:  # any failure to load is a reason to report, not to crash on
        return {"skip": f"peer {case['peer']}: skipped, {type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    ld = torch.utils.data.DataLoader(
        dataset(case),
        batch_size=case["batch_size"],
        num_workers=case["workers"],
        collate_fn=pad_collate,
        persistent_workers=case["workers"] > 0,  # workers stay up between epochs, as signstream's do
    )
    shapes = set()

    def epoch() -> int:
        frames = 0
        for _, video, lengths in ld:
            shapes.add((tuple(video.shape[-2:]), str(video.dtype), video.shape[1]))
            frames += int(lengths.sum())
        return frames

    fps, frames, seconds, cpu_ms, peak = _measure(epoch, case["repeats"])
    expected = ((case["size"], case["size"]), "torch.float32", 3)
    if shapes != {expected} or frames != case["frames"]:
        raise RuntimeError(f"{case['name']}: delivered {shapes} and {frames} frames, expected {expected}")
    return {
        "fps": fps,
        "frames": frames,
        "seconds": seconds,
        "cpu_ms_per_frame": cpu_ms,
        "peak_pss_mib": peak,
        "bytes_per_frame": case["input_bytes"] / max(1, frames),
        "versions": _versions(PEERS[case["peer"]][0]),
        **pixel_diff(case),
    }


def _versions(modules: tuple[str, ...]) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for module in modules:
        name = module.split(".")[0]
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = getattr(sys.modules.get(name), "__version__", "?")
    return found


def run_peer(case: dict) -> dict[str, Any]:
    """Run a peer case in a fresh Python process; a skip comes back as ``{"skip": reason}`` and no figures."""
    proc = subprocess.run(
        [sys.executable, "-m", "signstream.benchmarks.peers", json.dumps(case)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"peer case {case['name']} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "fps": 0.0, "peak_pss_mib": 0.0} if "skip" in result else result


# ------------------------------------------------------------------ the whole run
def prepare(inputs: dict, work: Path, transform: Any) -> dict[str, Any]:
    """Write the shards' videos out as plain files (what the file-reading peers read) and signstream's
    PyAV output for the first clips as uint8 grey levels (what every peer's pixels are compared with)."""
    from signstream.loaders import make_loader
    from signstream.loaders.shards import SampleReader, resolve_shards
    from signstream.loaders.transform import NORMALIZATIONS

    files = work / "peer-files"
    files.mkdir(parents=True, exist_ok=True)
    shardset = resolve_shards(inputs["vp9"])
    with SampleReader(shardset) as reader:
        for ref in shardset.refs:
            (files / f"{ref.key}.{ref.video_ext}").write_bytes(reader.read(ref)[0])
    mean, std = (torch.tensor(v).view(3, 1, 1, 1) for v in NORMALIZATIONS["imagenet"])
    ld = make_loader(
        inputs["vp9"],
        backend="pyav",
        mode="eval",
        batch_size=1,
        transform=transform,
        num_workers=0,
        rank=0,
        world_size=1,
    )
    reference = {}
    for batch in ld:
        clip = batch.video[0, :, : int(batch.lengths[0])]
        reference[batch.keys[0]] = ((clip * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
        if len(reference) == DIFF_VIDEOS:
            break
    torch.save(reference, work / "peer-reference.pt")
    return {
        "files": str(files),
        "reference": str(work / "peer-reference.pt"),
        "file_bytes": sum(p.stat().st_size for p in files.iterdir()),
        "shard_bytes": sum(s.path.stat().st_size for s in shardset.shards),
        "shards": len(shardset.shards),
    }


def plan_peers(inputs: dict, prepared: dict, common: dict, size: int) -> tuple[list[dict], list[str]]:
    """A case for each peer whose packages are installed, and the reasons of those skipped."""
    cases, skipped = [], []
    for peer, (_, reads, _) in PEERS.items():
        reason = missing(peer)
        if reason:
            skipped.append(reason)
            continue
        cases.append(
            {
                **common,
                "name": peer,
                "kind": "peer",
                "backend": "peer",
                "device": "cpu",
                "codec": "vp9",
                "peer": peer,
                "source": inputs["vp9"],
                "size": size,
                "frames": inputs["frames"],
                "input_bytes": prepared["file_bytes" if reads == "files" else "shard_bytes"],
                "shards": prepared["shards"],
                **{k: prepared[k] for k in ("files", "reference")},
            }
        )
    return cases, skipped


def peer_cases(inputs: dict, work: Path, transform: Any, common: dict, size: int) -> tuple[list[dict], list[str]]:
    """:func:`plan_peers` after :func:`prepare`, which is left out when no peer is installed."""
    reasons = [missing(peer) for peer in PEERS]
    if all(reasons):
        return [], reasons
    return plan_peers(inputs, prepare(inputs, work, transform), common, size)


def settle(rows: list[dict], skipped: list[str]) -> list[dict]:
    """Drop the peers that skipped at run time (their reasons go to ``skipped``) and add the peers'
    ratios to pngdir and to signstream's PyAV loader, measured in the same run."""
    kept = []
    for r in rows:
        if r["kind"] != "peer":
            kept.append(r)
        elif "skip" in r:
            skipped.append(r["skip"])
        else:
            kept.append(r)
    loaders = {r["name"]: r for r in kept if r["kind"] == "loader"}
    png, ours = loaders["pngdir"], loaders[REFERENCE]
    for r in kept:
        if r["kind"] == "peer":
            for temporary in ("files", "reference"):
                r.pop(temporary, None)
            r["vs_pngdir"] = r["fps"] / png["fps"]
            r["cpu_vs_pngdir"] = png["cpu_ms_per_frame"] / r["cpu_ms_per_frame"]
            r["vs_signstream"] = r["fps"] / ours["fps"]
    return kept


def markdown_lines(result: dict) -> list[str]:
    """signstream's CPU loaders and the peers, one table; empty when no peer ran."""
    peers = [r for r in result["rows"] if r["kind"] == "peer"]
    if not peers:
        return []
    ours = [r for r in result["rows"] if r["kind"] == "loader" and r["name"] in ("pngdir", REFERENCE, "dali-cpu vp9")]
    png, ref = (next(r for r in ours if r["name"] == name)["fps"] for name in ("pngdir", REFERENCE))
    lines = [
        "",
        f"signstream vs the loaders a user would write instead (same output, same run; pixels vs signstream "
        f"{REFERENCE} on the first {max(r.get('diff_clips', 0) for r in peers)} clips):",
        "",
        "| loader | frames/s | ÷ pngdir | ÷ signstream pyav | CPU ms/frame | mean abs Δ (grey levels 0-255) "
        "| peak PSS MiB | versions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ours + peers:
        diff = r.get("mean_abs_diff_grey", 0.0 if r["name"] == REFERENCE else None)
        versions = ", ".join(f"{k} {v}" for k, v in r.get("versions", {}).items()) or "signstream"
        lines.append(
            f"| {'signstream ' if r['kind'] == 'loader' else ''}{r['name']} | {r['fps']:.0f} "
            f"| {r['fps'] / png:.2f}× | {r['fps'] / ref:.2f}× | {r['cpu_ms_per_frame']:.3f} "
            f"| {'–' if diff is None else format(diff, '.2f')} | {r['peak_pss_mib']:.0f} | {versions} |"
        )
    wds = [r for r in peers if "WebDataset" in r["name"] and r["shards"] < r["workers"]]
    if wds:
        lines.append(
            f"- webdataset.WebDataset splits work by shard: with {wds[0]['shards']} shard(s) and "
            f"{wds[0]['workers']} workers, {wds[0]['workers'] - wds[0]['shards']} worker(s) had nothing to do."
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    """Internal: run one peer case given as JSON and print its result as JSON."""
    args = sys.argv[1:] if argv is None else argv
    print(json.dumps(peer_case(json.loads(args[0]))))


if __name__ == "__main__":
    main()

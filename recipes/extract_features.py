"""Extract backbone features from packed shards, on one or many processes.

    accelerate launch recipes/extract_features.py --config recipes/configs/extract-phoenix2014-i3d.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/extract_features.py --config ...
    signstream extract_features --config ... key=value ...

Each rank reads its own part of every split (exactly once across ranks), runs
the backbone in ``dense`` (one feature per temporal stride, chunked so memory
does not grow with video length) or ``window`` mode (one feature per clip), and
writes each video it owns as ``out/<split>/<name>.npy`` (``[T', D]``) with a
JSON sidecar, atomically. After every rank finishes, the main process merges
the requested writers: ``npy`` (an index), ``signjoey`` (``out/<prefix>.<split>``
gzip pickles) and ``shards`` (zstd feature shards). A rerun skips videos already
written, so a killed job resumes and ends with the same outputs.
A randomly initialised backbone (no ``weights``/``checkpoint``) gets its
BatchNorm statistics calibrated on ``calibrate_bn`` videos first, identically on
every rank. ``out/summary.json`` holds counts, skipped samples, frames/s and peak memory.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object

from signstream import SignstreamError
from signstream.loaders import Transform, make_loader
from signstream.loaders.fileio import write_json
from signstream.models import create_model
from signstream.models.ctc import load_backbone
from signstream.models.features import extract_features
from signstream.recipes.config import main_guard, parse_config, peak_memory, save_config
from signstream.recipes.threads import apply_thread_policy
from signstream.tools.export import get_writer, is_done, write_video

PRECISIONS = {"fp32": None, "no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ExtractConfig:
    """Extract per-video features from packed shards with a backbone."""

    shards: str = ""
    splits: list[str] = field(default_factory=lambda: ["train", "dev", "test"])
    backbone: str = "s3d"
    weights: str | None = None
    checkpoint: str | None = None
    stop_after: int | None = None
    image_size: int = 224
    batch_size: int = 1
    precision: str = "fp32"
    backend: str = "pyav"
    num_workers: int = 1
    mode: str = "dense"
    clip_len: int = 16
    stride: int | None = None
    chunk_len: int | None = None
    writers: list[str] = field(default_factory=lambda: ["npy", "signjoey"])
    prefix: str = "features"
    dtype: str = "float16"
    calibrate_bn: int = 8
    seed: int = 0
    threads: int | None = None  # torch threads per process; none: the policy in recipes/threads.py
    out: str = "runs/features"
    progress: bool = True


def build_backbone(cfg: ExtractConfig) -> torch.nn.Module:
    """The backbone from a finetune_ctc checkpoint, from weights, or seeded random init."""
    if cfg.checkpoint and cfg.weights:
        raise SignstreamError("set either checkpoint= (a finetune_ctc model) or weights=, not both")
    if cfg.checkpoint:
        return load_backbone(cfg.checkpoint)[0]
    torch.manual_seed(cfg.seed)  # identical random init on every rank
    kwargs = {"stop_after": cfg.stop_after} if cfg.stop_after is not None else {}
    return create_model(cfg.backbone, weights=cfg.weights, **kwargs)


def calibrate(model, cfg: ExtractConfig, shards: Path, device) -> None:
    """Precise-BN for a randomly initialised backbone (its eval features are ~1e-6 otherwise).

    Uses the first ``calibrate_bn`` videos of the first split, read by every
    rank in the same order (rank 0 of 1), so all ranks end with the same model.
    """
    from signstream.models.layers import calibrate_batchnorm

    transform = Transform.from_input_spec(model.input_spec, size=cfg.image_size, max_frames=64)
    loader = make_loader(shards / cfg.splits[0], backend="pyav", mode="eval", batch_size=1,
                         transform=transform, shuffle=False, num_workers=0, rank=0, world_size=1)
    clips = []
    for batch in loader:
        clips.append(batch.video[:, :, : int(batch.lengths[0])].to(device))
        if len(clips) >= cfg.calibrate_bn:
            break
    with torch.no_grad():
        calibrate_batchnorm(model, clips)


def check_config(cfg: ExtractConfig) -> Path:
    shards = Path(cfg.shards)
    if not cfg.shards or not shards.is_dir():
        raise SignstreamError(f"shards directory not found: {cfg.shards!r} (set shards=DIR, a pack output)")
    for split in cfg.splits:
        if not (shards / split / "manifest.json").exists():
            raise SignstreamError(f"no packed split {split!r} in {shards} (missing {shards / split / 'manifest.json'})")
    for name in cfg.writers:
        get_writer(name)
    if cfg.precision not in PRECISIONS:
        raise SignstreamError(f"precision must be one of {', '.join(PRECISIONS)}, got {cfg.precision!r}")
    return shards


def extract_split(accelerator, model, cfg, shards: Path, split: str, out: Path) -> dict:
    """Extract this rank's part of one split; returns the rank's counts."""
    spec = model.input_spec
    transform = Transform.from_input_spec(spec, size=cfg.image_size)
    loader = make_loader(shards / split, backend=cfg.backend, mode="eval", batch_size=cfg.batch_size,
                         transform=transform, shuffle=False, num_workers=cfg.num_workers,
                         device="cuda" if accelerator.device.type == "cuda" else "cpu")
    counts = {"videos": 0, "resumed": 0, "frames": 0, "features": 0}
    bar = _bar(accelerator, cfg, loader, split)
    for batch in loader:
        for i, meta in enumerate(batch.meta):
            if is_done(out, split, meta["name"]):
                counts["resumed"] += 1
                continue
            video = batch.video[i, :, : int(batch.lengths[i])]
            feats = extract_features(model, video, cfg.mode, clip_len=cfg.clip_len, stride=cfg.stride,
                                     chunk_len=cfg.chunk_len, autocast=PRECISIONS[cfg.precision])
            write_video(out, split, {k: meta.get(k) for k in ("name", "key", "signer", "gloss", "text",
                                                              "num_frames")}, feats.numpy(), cfg.dtype)
            counts["videos"] += 1
            counts["frames"] += int(batch.lengths[i])
            counts["features"] += int(feats.shape[0])
        if bar is not None:
            bar.update(len(batch.meta))
    if bar is not None:
        bar.close()
    counts["skipped"] = loader.stats.as_dict().get("skipped", [])
    return counts


def _bar(accelerator, cfg, loader, split):
    if not (cfg.progress and accelerator.is_main_process):
        return None
    from tqdm import tqdm

    return tqdm(desc=f"extract {split} (rank 0)", unit="video", dynamic_ncols=True)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(ExtractConfig, argv)
    apply_thread_policy(cfg.threads, workers=cfg.num_workers)
    shards = check_config(cfg)
    out = Path(cfg.out)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())  # MULTI_CPU (gloo) without CUDA
    model = build_backbone(cfg).to(accelerator.device).eval()
    if not (cfg.weights or cfg.checkpoint) and cfg.calibrate_bn > 0:
        calibrate(model, cfg, shards, accelerator.device)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        shutil.copyfile(shards / "glosses.txt", out / "glosses.txt")
    t0 = time.perf_counter()
    per_split = {}
    for split in cfg.splits:
        counts = extract_split(accelerator, model, cfg, shards, split, out)
        per_split[split] = merge_counts(gather_object([counts]))
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t0
    memory = gather_object([peak_memory()])
    if accelerator.is_main_process:
        outputs = {split: {w: str(get_writer(w)(out, out, split, prefix=cfg.prefix)) for w in cfg.writers}
                   for split in cfg.splits}
        frames = sum(c["frames"] for c in per_split.values())
        summary = {"splits": per_split, "outputs": outputs, "seconds": round(seconds, 2),
                   "frames_per_s": round(frames / seconds, 1) if seconds else None,
                   "processes": accelerator.num_processes, "backbone": cfg.backbone,
                   "feature_dim": model.num_features, "peak_memory_per_rank": memory}
        write_json(out / "summary.json", summary)
        accelerator.print(f"extracted {sum(c['videos'] for c in per_split.values())} videos "
                          f"({frames} frames, {summary['frames_per_s']} frames/s) -> {out}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


def merge_counts(ranks: list[dict]) -> dict:
    """Sum the per-rank counts of one split; concatenate skipped-sample records."""
    merged = {k: sum(r[k] for r in ranks) for k in ("videos", "resumed", "frames", "features")}
    merged["skipped"] = [s for r in ranks for s in r["skipped"]]
    return merged


if __name__ == "__main__":
    sys.exit(main_guard(main))

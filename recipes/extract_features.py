"""Extract backbone features from packed shards, on one or many processes.

    accelerate launch recipes/extract_features.py --config recipes/configs/extract-phoenix2014-i3d.yaml
    accelerate launch --multi_gpu --num_processes 2 recipes/extract_features.py --config ...
    signstream extract_features --config ... key=value ...

Each rank reads its own part of every split (exactly once across ranks), runs
the backbone in ``dense`` (one feature per temporal stride, chunked so memory
does not grow with video length) or ``window`` mode (one feature per clip), and
writes each video it owns as ``out/<split>/<key>.npy`` (``[T', D]``, named by
the unique shard key) with a JSON sidecar, atomically, on a writer thread a
few videos behind the forward; a sample without
metadata is skipped and named (key, shard, reason). After every rank finishes, the main process merges
the requested writers: ``npy`` (an index), ``signjoey`` (``out/<prefix>.<split>``
gzip pickles) and ``shards`` (zstd feature shards). A rerun leaves videos already
written out of what the loader reads (decided from the shard index before
anything is decoded; a backend that reads whole tars leaves out only fully
finished shards), so a killed job resumes and ends with the same outputs — but only
the same configuration: ``out/fingerprint.json`` records the backbone, the
hashes of the weight/checkpoint files and shard manifests, and the feature
options, and a different run into the same ``out`` is refused unless
``overwrite=true`` (which deletes what the earlier run wrote, nothing else).
A randomly initialised backbone (no ``weights``/``checkpoint``) gets its
BatchNorm statistics calibrated on ``calibrate_bn`` videos first, identically on
every rank. ``out/summary.json`` holds counts, skipped samples, frames/s and peak memory.
``device=auto|cpu|cuda|cuda:N`` picks where it computes (``auto``: CUDA when there is one).
"""

from __future__ import annotations

import dataclasses
import re
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from accelerate.utils import gather_object

from signstream import SignstreamError, lookup
from signstream.loaders import Transform, make_loader, remote
from signstream.loaders.api import RECIPE_BACKENDS, get_backend
from signstream.loaders.feature_readers import INDEX_FILE
from signstream.loaders.feature_writers import (
    FILE_RE,
    WRITERS,
    file_key,
    is_done,
    store_entries,
    write_video,
)
from signstream.loaders.fileio import BackgroundWriter, write_json
from signstream.loaders.format import GLOSSES, PackLayout
from signstream.loaders.shards import Shard, ShardSet, resolve_shards
from signstream.models import create_model
from signstream.models.ctc import load_backbone
from signstream.models.features import FeatureMode, extract_features
from signstream.recipes import guards, outputs, trackers
from signstream.recipes.config import (
    Choice,
    Device,
    FileStem,
    Fraction,
    ImageSize,
    NonNegativeInt,
    PositiveInt,
    Precision,
    Trackers,
    parse_config,
    peak_memory,
    save_config,
)
from signstream.recipes.runtime import accelerator_for, main_guard

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# Videos whose files may wait to be written while the next ones are computed: enough to hide
# an fsync behind a forward, few enough that features not yet on disk stay a few videos' worth.
PENDING_WRITES = 2


@dataclass
class ExtractConfig:
    """Extract per-video features from packed shards with a backbone."""

    shards: str = ""
    splits: list[FileStem] = field(default_factory=lambda: ["train", "dev", "test"])
    backbone: str = "s3d"
    weights: str | None = None
    checkpoint: str | None = None
    stop_after: PositiveInt | None = None
    image_size: ImageSize = 224
    batch_size: PositiveInt = 1
    precision: Precision = "fp32"
    device: Device = "auto"
    backend: typing.Annotated[str, Choice(RECIPE_BACKENDS, "loader backend")] = "pyav"
    num_workers: NonNegativeInt = 1
    # DALI's decoder threads; none: on CUDA this process's share of the host's cores (at most 8,
    # whatever num_workers says), on the CPU num_workers (loaders/dali_startup.py says why)
    decoder_threads: PositiveInt | None = None
    mode: FeatureMode = "dense"
    clip_len: PositiveInt = 16
    stride: PositiveInt | None = None
    chunk_len: PositiveInt | None = None
    writers: list[typing.Annotated[str, Choice(WRITERS, "feature writer")]] = field(
        default_factory=lambda: ["npy", "signjoey"]
    )
    prefix: FileStem = "features"
    dtype: Literal["float16", "float32"] = "float16"
    calibrate_bn: NonNegativeInt = 8
    # the largest share of a split's samples that may be skipped (damaged) before the run fails
    max_skipped_fraction: Fraction = guards.MAX_SKIPPED_FRACTION
    seed: int = 0
    threads: PositiveInt | None = None  # torch threads per process; none: the policy in recipes/threads.py
    out: str = "runs/features"
    progress: bool = True
    overwrite: bool = False
    log_with: Trackers = None  # experiment trackers (tensorboard, wandb...): each split's counts and frames/s
    project_name: str | None = None  # the trackers' project (run) name; none: the recipe's name
    logging_dir: str | None = None  # where file-based trackers (tensorboard...) write; none: <out>/trackers


def build_backbone(cfg: ExtractConfig) -> torch.nn.Module:
    """The backbone from a finetune_ctc checkpoint, from weights, or seeded random init.

    Raises:
        SignstreamError: the checkpoint or weight file holds NaN/inf (a diverged run's model):
            every feature would be NaN.
    """
    if cfg.checkpoint:
        model = load_backbone(cfg.checkpoint)[0]
    else:
        torch.manual_seed(cfg.seed)  # identical random init on every rank
        kwargs = {"stop_after": cfg.stop_after} if cfg.stop_after is not None else {}
        model = create_model(cfg.backbone, weights=cfg.weights, **kwargs)
    source = f"checkpoint={cfg.checkpoint}" if cfg.checkpoint else f"weights={cfg.weights}"
    guards.require_finite_model(
        model,
        source,
        "it comes from a diverged run and would give NaN features; use a checkpoint from before the run diverged",
    )
    return model


def calibrate(model, cfg: ExtractConfig, shards: Path, device) -> None:
    """Precise-BN for a randomly initialised backbone (its eval features are ~1e-6 otherwise).

    Uses the first ``calibrate_bn`` videos of the first split, read by every
    rank in the same order (rank 0 of 1), so all ranks end with the same model.
    """
    from signstream.models.layers import calibrate_batchnorm

    transform = Transform.from_input_spec(model.input_spec, size=cfg.image_size, max_frames=64)
    loader = make_loader(
        shards / cfg.splits[0],
        backend="pyav",
        mode="eval",
        batch_size=1,
        transform=transform,
        shuffle=False,
        num_workers=0,
        allow_empty=True,  # refused below by require_videos, naming the split
        rank=0,
        world_size=1,
    )
    clips = []
    for batch in loader:
        clips.append(batch.video[:, :, : int(batch.lengths[0])].to(device))
        if len(clips) >= cfg.calibrate_bn:
            break
    # BatchNorm statistics from no video would leave the random model's features meaningless
    guards.require_videos(cfg.splits[0], len(clips), loader.stats.skipped, "to calibrate BatchNorm on")
    with torch.no_grad():
        calibrate_batchnorm(model, clips)


def check_config(cfg: ExtractConfig) -> Path:
    shards = remote.location(cfg.shards)  # a directory, or an http(s):// / s3:// URL
    if not cfg.shards or not (remote.is_url(cfg.shards) or shards.is_dir()):
        raise SignstreamError(f"shards directory not found: {cfg.shards!r} (set shards=DIR, a pack output)")
    for split in cfg.splits:
        if not PackLayout(shards).manifest_path(split).exists():
            raise SignstreamError(
                f"no packed split {split!r} in {shards} (missing {PackLayout(shards).manifest_path(split)})"
            )
    if not cfg.splits:
        raise SignstreamError("splits is empty; name at least one packed split")
    if not PackLayout(shards).glosses_path.is_file():
        raise SignstreamError(f"{shards} is not a pack output (no {GLOSSES})")
    if cfg.checkpoint and cfg.weights:
        raise SignstreamError("set either checkpoint= (a finetune_ctc model) or weights=, not both")
    return shards


def run_fingerprint(cfg: ExtractConfig, shards: Path) -> dict:
    """Everything that determines the features: model, weights, options, shard manifests."""
    random_init = not (cfg.weights or cfg.checkpoint)
    model = {
        "backbone": None if cfg.checkpoint else cfg.backbone,
        "stop_after": None if cfg.checkpoint else cfg.stop_after,
        "weights": outputs.file_digest(cfg.weights),
        "checkpoint": outputs.file_digest(cfg.checkpoint),
    }
    if random_init:  # seeded init, then BatchNorm calibrated on the first split's first videos
        model.update(
            seed=cfg.seed,
            calibrate_bn=cfg.calibrate_bn,
            calibrated_on=outputs.file_digest(PackLayout(shards).manifest_path(cfg.splits[0]))
            if cfg.calibrate_bn
            else None,
        )
    options = {
        k: getattr(cfg, k) for k in ("image_size", "precision", "mode", "clip_len", "stride", "chunk_len", "dtype")
    }
    return {
        "model": model,
        "options": options,
        "shards": {s: outputs.file_digest(PackLayout(shards).manifest_path(s)) for s in cfg.splits},
    }


def compatible(old: dict, new: dict) -> bool:
    """Same model and options; every split extracted before came from the same shards."""
    return (
        old.get("model") == new["model"]
        and old.get("options") == new["options"]
        and all(old.get("shards", {}).get(s, d) == d for s, d in new["shards"].items())
    )


def owned_files(out: Path, record: dict):
    """The files an earlier extraction into ``out`` wrote (deleted on ``overwrite=true``)."""
    config = record.get("config") or {}
    splits = set(config.get("splits") or []) | set((record.get("fingerprint") or {}).get("shards", {}))
    prefix = str(config.get("prefix") or "features")
    for split in sorted(s for s in splits if isinstance(s, str) and re.fullmatch(r"[\w.-]+", s)):
        yield from _store_files(out / split)
        yield out / f"{prefix}.{split}"
        shard_dir = out / "feature-shards" / split
        if shard_dir.is_dir():
            yield from (
                p for p in shard_dir.iterdir() if re.fullmatch(rf"{re.escape(split)}-\d{{6}}\.(tar|idx)", p.name)
            )
    yield from (out / n for n in ("summary.json", "config.yaml", "glosses.txt"))


def _store_files(folder: Path):
    # a sidecar proves its pair is ours; an .npy without one (a kill between the two writes) is
    # left alone, and read by nothing
    for sidecar, meta in store_entries(folder.parent, folder.name):
        yield from (sidecar, sidecar.with_name(meta["file"]))
    yield folder / INDEX_FILE


def temp_dirs(out: Path, config: dict):
    """Where this recipe's atomic writes put their temporary files, and the names written there."""
    names = "|".join(re.escape(f"{config['prefix']}.{s}") for s in config["splits"])
    yield out, re.compile(rf"summary\.json|config\.yaml|glosses\.txt|fingerprint\.json|{names}")
    for split in config["splits"]:
        yield out / split, re.compile(rf"{FILE_RE.pattern}|{re.escape(INDEX_FILE)}")
        yield out / "feature-shards" / split, re.compile(rf"{re.escape(split)}-\d{{6}}\.(tar|idx)")


def unfinished(shardset: ShardSet, out: Path, split: str, whole_shards: bool) -> tuple[ShardSet, set[str]]:
    """The samples still to extract, and the file keys of those left out as finished.

    Decided from the index and the files in ``out`` alone, before anything is
    decoded. Only the first sample of each file key can be finished (a later
    one is a duplicate and stays, to be named as one). With ``whole_shards``
    (a backend that reads whole tars) a shard is left out only when all of
    it is finished; a kept shard is read whole, its finished videos skipped after decode.
    """
    kept, finished, claimed = [], set(), set()
    for shard in shardset.shards:
        todo, done = [], set()
        for ref in shard.samples:
            key = file_key(ref.key)
            if key not in claimed and is_done(out, split, key):
                done.add(key)
            else:
                todo.append(ref)
            claimed.add(key)
        if todo and whole_shards:
            todo, done = shard.samples, set()
        finished |= done
        if todo:
            number = len(kept)
            kept.append(Shard(shard.path, shard.index_path, [dataclasses.replace(ref, shard=number) for ref in todo]))
    return ShardSet(kept, shardset.origin, shardset.manifest), finished


def finite_features(feats: torch.Tensor, cfg: ExtractConfig, split: str, key: str, shard: str):
    """One video's features as the stored ``dtype``, refused when any value is NaN/inf.

    Raises:
        SignstreamError: naming the video, its split and shard, and the likely cause.
    """
    values = feats.float().numpy().astype(cfg.dtype)
    if np.isfinite(values).all():
        return values
    if not torch.isfinite(feats).all():
        cause = (
            f"precision={cfg.precision} overflowed; use precision=fp32"
            if cfg.precision != "fp32"
            else "the model's weights are finite, so its input or an activation overflowed"
        )
    else:
        cause = "the values overflow float16; use dtype=float32"
    raise SignstreamError(
        f"features of {key} in split {split!r} ({shard}) are not finite (NaN/inf), nothing was written for it: {cause}"
    )


def merge_counts(ranks: list[dict]) -> dict:
    """Sum the per-rank counts of one split; concatenate skipped-sample records."""
    merged = {k: sum(r[k] for r in ranks) for k in ("videos", "resumed", "frames", "features")}
    merged["skipped"] = [s for r in ranks for s in r["skipped"]]
    return merged


class Extraction:
    """One extraction run, its state on ``self``: setup, model, each split, summary."""

    name = "extract_features"

    def __init__(self, cfg: ExtractConfig):
        self.cfg, self.out = cfg, Path(cfg.out)

    def setup(self) -> None:
        """Refuse a bad config, make the Accelerator, take and claim ``out`` (nothing written yet)."""
        cfg = self.cfg
        self.shards = check_config(cfg)
        self.accelerator = accelerator_for(cfg, cfg.num_workers)  # auto: MULTI_CPU (gloo) without CUDA
        outputs.take_lock(self.out, self.accelerator)  # before anything reads out/: one run decides and writes
        self.fingerprint = run_fingerprint(cfg, self.shards)
        self.verdict = outputs.claim(
            self.out, self.name, self.fingerprint, overwrite=cfg.overwrite, compatible=compatible
        )

    def build(self) -> None:
        """The backbone in eval mode on this rank's device, BatchNorm calibrated when randomly initialised."""
        cfg, device = self.cfg, self.accelerator.device
        self.model = build_backbone(cfg).to(device).eval()
        if not (cfg.weights or cfg.checkpoint) and cfg.calibrate_bn > 0:
            calibrate(self.model, cfg, self.shards, device)

    def prepare_out(self) -> None:
        """The main process makes ``out`` this run's, once every rank has read it."""
        accelerator, out = self.accelerator, self.out
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            outputs.prepare(
                out, self.name, self.fingerprint, self.verdict, dataclasses.asdict(self.cfg), owned_files, temp_dirs
            )
            save_config(self.cfg, out / "config.yaml")
            remote.copy_file(PackLayout(self.shards).glosses_path, out / GLOSSES)
        accelerator.wait_for_everyone()

    def extract(self, split: str) -> dict:
        """Extract one split on every rank; returns its counts merged over the ranks."""
        # writes overlap the next video's forward; leaving the block waits for them, however it is left
        with BackgroundWriter(max_pending=PENDING_WRITES, name=f"extract-{split}") as writer:
            counts = self.extract_split(split, writer)
        merged = merge_counts(gather_object([counts]))
        # every rank holds the merged counts, so all stop together, before any writer merges an empty split
        guards.require_videos(
            split,
            merged["videos"] + merged["resumed"],
            merged["skipped"],
            max_skipped_fraction=self.cfg.max_skipped_fraction,
        )
        return merged

    def extract_split(self, split: str, writer: BackgroundWriter) -> dict:
        """Extract this rank's part of one split; returns the rank's counts.

        Each video's files are handed to ``writer`` once its features are known to be
        finite; the caller closes it, so they are all on disk before the split counts.
        """
        cfg, accelerator, out = self.cfg, self.accelerator, self.out
        device = "cuda" if accelerator.device.type == "cuda" else "cpu"
        backend = get_backend(cfg.backend, device)
        shardset = resolve_shards(self.shards / split)
        shard_of = {ref.key: shard.path.name for shard in shardset.shards for ref in shard.samples}
        # every rank reads the same finished set before any rank writes, so all split the same samples
        todo, finished = unfinished(shardset, out, split, whole_shards=backend.reads_whole_shards)
        accelerator.wait_for_everyone()
        counts = {
            "videos": 0,
            "resumed": len(finished) if accelerator.is_main_process else 0,
            "frames": 0,
            "features": 0,
        }
        if todo.num_samples == 0:
            return {**counts, "skipped": []}
        transform = Transform.from_input_spec(self.model.input_spec, size=cfg.image_size)
        loader = make_loader(
            todo,
            backend=backend.name,
            mode="eval",
            batch_size=cfg.batch_size,
            transform=transform,
            shuffle=False,
            num_workers=cfg.num_workers,
            device=device,
            decoder_threads=cfg.decoder_threads,
            allow_empty=True,  # the recipe refuses an empty split itself, over every rank at once
        )
        skipped, seen = [], set(finished)
        bar = self._progress(split)
        for batch in loader:
            for i, meta in enumerate(batch.meta):
                key, shard = file_key(batch.keys[i]), shard_of.get(batch.keys[i], "?")
                reason = (
                    "no metadata (the sample has no readable JSON with a name)"
                    if not meta.get("name")
                    else f"duplicate key {key!r} in this split"
                    if key in seen
                    else None
                )
                if reason:
                    skipped.append({"key": batch.keys[i], "shard": shard, "reason": reason})
                    print(f"warning: skipped {batch.keys[i]} ({shard}): {reason}", file=sys.stderr)
                    continue
                seen.add(key)
                if is_done(out, split, key):
                    counts["resumed"] += 1
                    continue
                video = batch.video[i, :, : int(batch.lengths[i])]
                feats = extract_features(
                    self.model,
                    video,
                    cfg.mode,
                    clip_len=cfg.clip_len,
                    stride=cfg.stride,
                    chunk_len=cfg.chunk_len,
                    autocast=PRECISIONS[cfg.precision],
                )
                values = finite_features(feats, cfg, split, batch.keys[i], shard)
                writer.submit(
                    str(out / split / f"{key}.npy"),
                    write_video,
                    out,
                    split,
                    key,
                    {k: meta.get(k) for k in ("name", "signer", "gloss", "text", "num_frames")},
                    values,
                    cfg.dtype,
                )
                counts["videos"] += 1
                counts["frames"] += int(batch.lengths[i])
                counts["features"] += int(feats.shape[0])
            if bar is not None:
                bar.update(len(batch.meta))
        if bar is not None:
            bar.close()
        counts["skipped"] = loader.stats.as_dict().get("skipped", []) + skipped
        return counts

    def _progress(self, split: str):
        if not (self.cfg.progress and self.accelerator.is_main_process):
            return None
        from tqdm import tqdm

        return tqdm(desc=f"extract {split} (rank 0)", unit="video", dynamic_ncols=True)

    def save(self, per_split: dict, seconds: float) -> None:
        """Merge the requested writers and write ``summary.json`` (main process; every rank gives its memory)."""
        cfg, accelerator, out = self.cfg, self.accelerator, self.out
        memory = gather_object([peak_memory()])
        if not accelerator.is_main_process:
            return
        merged = {
            split: {
                w: str(lookup(WRITERS, w, "feature writer")(out, out, split, prefix=cfg.prefix)) for w in cfg.writers
            }
            for split in cfg.splits
        }
        frames = sum(c["frames"] for c in per_split.values())
        summary = {
            "splits": per_split,
            "outputs": merged,
            "seconds": round(seconds, 2),
            "frames_per_s": round(frames / seconds, 1) if seconds else None,
            "processes": accelerator.num_processes,
            "backbone": cfg.backbone,
            "feature_dim": self.model.num_features,
            "peak_memory_per_rank": memory,
        }
        write_json(out / "summary.json", summary)
        accelerator.print(
            f"extracted {sum(c['videos'] for c in per_split.values())} videos "
            f"({frames} frames, {summary['frames_per_s']} frames/s) -> {out}"
        )

    def run(self) -> int:
        """Setup, model, every split in turn, then the summary; returns the exit code (0)."""
        self.setup()
        self.build()
        self.prepare_out()
        trackers.start(self.accelerator, self.cfg, self.name)
        try:
            self.extract_all()
        except BaseException:
            trackers.close(self.accelerator)
            raise
        self.accelerator.end_training()
        return 0

    def extract_all(self) -> None:
        """Every split in turn (each one's counts and frames/s to the trackers at its index), then the summary."""
        t0, per_split = time.perf_counter(), {}
        for index, split in enumerate(self.cfg.splits):
            t_split = time.perf_counter()
            counts = per_split[split] = self.extract(split)
            seconds = time.perf_counter() - t_split
            values = {k: counts[k] for k in ("videos", "resumed", "frames", "features")}
            values |= {
                "skipped": len(counts["skipped"]),
                "frames_per_s": counts["frames"] / seconds if seconds else None,
            }
            trackers.log(self.accelerator, {f"{split}/{k}": v for k, v in values.items()}, index)
        self.accelerator.wait_for_everyone()
        self.save(per_split, time.perf_counter() - t0)
        self.accelerator.wait_for_everyone()


@outputs.one_writer
def main(argv: list[str] | None = None) -> int:
    """Extract features as ``argv`` (``--config PRESET.yaml key=value ...``) says; returns the exit code."""
    return Extraction(parse_config(ExtractConfig, argv)).run()


if __name__ == "__main__":
    sys.exit(main_guard(main))

"""Fine-tune a video backbone end to end with CTC on gloss sequences.

    accelerate launch recipes/finetune_ctc.py --config recipes/configs/finetune_ctc-phoenix2014t-s3d.yaml
    signstream finetune_ctc --config ... key=value ...

Backbone (S3D, I3D or the 2D ResNet) + gloss classifier (``linear`` as in the
seed, or a sequence head) trained with CTC (blank 0) on packed shards. What the
seed toggled by commenting code in and out is config here: ``freeze=none``
(train everything), ``freeze=all`` (classifier only), ``freeze=K`` (first K
backbone blocks frozen). AdamW with linear warm-up and cosine decay, mixed
precision and gradient accumulation through Accelerate, gradient clipping, dev
WER after every epoch, the best epoch kept.

Outputs in ``out``: ``config.yaml``, ``glosses.txt``, ``checkpoints/epoch_NNN``
(``accelerator.save_state``: rerunning the same command resumes exactly — every
step seeds dropout from (seed, epoch, step, rank), so loader workers and
restarts draw nothing that matters — and only the same configuration resumes:
``fingerprint.json`` holds the config and the hashes of weights and shards;
another configuration into the same ``out`` is refused unless ``overwrite=true``),
``model.safetensors`` (last epoch) and ``best.safetensors`` (best dev WER) —
both accepted by ``extract_features`` as ``checkpoint=`` — and ``metrics.json``.
``device=auto|cpu|cuda|cuda:N`` picks where it computes (``auto``: CUDA when there is one).
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from signstream import SignstreamError
from signstream.loaders import Transform, make_loader, remote
from signstream.loaders.api import RECIPE_BACKENDS
from signstream.loaders.format import GLOSSES, PackLayout
from signstream.models import create_model
from signstream.models.ctc import VideoCTC, checkpoint_metadata, save_checkpoint
from signstream.models.head import HEADS
from signstream.models.vocab import Vocabulary
from signstream.recipes import checkpoints, guards, outputs, runner
from signstream.recipes.config import (
    Choice,
    Device,
    FileStem,
    Fraction,
    ImageSize,
    Matches,
    NonFinite,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Precision,
    Probability,
    Range,
    Trackers,
    parse_config,
)
from signstream.recipes.evaluation import decode_batch
from signstream.recipes.replicas import replica_report
from signstream.recipes.runtime import accelerate_precision, accelerator_for, main_guard
from signstream.recipes.schedules import warmup_cosine
from signstream.recipes.scoring import CLEANUPS
from signstream.recipes.trackers import TRACKER_KEYS


@dataclass
class FinetuneConfig:
    """Fine-tune a backbone + gloss classifier with CTC on packed shards."""

    shards: str = ""
    train_split: FileStem = "train"
    dev_split: FileStem = "dev"
    backbone: str = "s3d"
    weights: str | None = None
    stop_after: PositiveInt | None = None
    head: typing.Annotated[str, Choice(HEADS, "head")] = "linear"
    hidden: PositiveInt = 256
    dropout: Probability = 0.1
    freeze: typing.Annotated[
        str, Matches(r"none|all|\d+", "a valid freeze (freeze must be none, all or a number of blocks)")
    ] = "none"
    bn_momentum: typing.Annotated[float, Range(0, 1)] | None = 0.1
    grad_checkpointing: bool = False
    image_size: ImageSize = 112
    max_frames: PositiveInt = 64
    temporal_rescale: list[PositiveFloat] | None = field(default_factory=lambda: [0.5, 1.5])
    frame_stride: PositiveInt = 1
    batch_size: PositiveInt = 2
    grad_accum: PositiveInt = 1
    epochs: PositiveInt = 10
    lr: PositiveFloat = 1e-3
    backbone_lr: NonNegativeFloat = 1e-4
    weight_decay: NonNegativeFloat = 1e-4
    warmup_steps: NonNegativeInt = 100
    clip_grad: NonNegativeFloat = 1.0
    nonfinite: NonFinite = "stop"  # a NaN/inf loss or gradient: stop the run, or skip the step and count it
    # the largest share of a split's samples that may be skipped (damaged) before the run fails
    max_skipped_fraction: Fraction = guards.MAX_SKIPPED_FRACTION
    precision: Precision = "fp32"
    device: Device = "auto"
    backend: typing.Annotated[str, Choice(RECIPE_BACKENDS, "loader backend")] = "pyav"
    num_workers: NonNegativeInt = 1
    # DALI's decoder threads; none: on CUDA this process's share of the host's cores (at most 8,
    # whatever num_workers says), on the CPU num_workers (loaders/dali_startup.py says why)
    decoder_threads: PositiveInt | None = None
    decoder: Literal["greedy", "beam"] = "greedy"
    cleanup: typing.Annotated[str, Choice(CLEANUPS, "cleanup")] = "phoenix2014"
    max_steps_per_epoch: PositiveInt | None = None
    seed: int = 0
    threads: PositiveInt | None = None  # torch threads per process; none: the policy in recipes/threads.py
    out: str = "runs/finetune"
    resume: bool = True
    overwrite: bool = False
    log_with: Trackers = None  # experiment trackers (tensorboard, wandb, mlflow...), comma-separated; none: none
    project_name: str | None = None  # the trackers' project (run) name; none: the recipe's name
    logging_dir: str | None = None  # where file-based trackers (tensorboard...) write; none: <out>/trackers
    log_every: PositiveInt = 10  # train loss and learning rates go to the trackers every this many steps


# Config keys that do not change what a run computes: a rerun may change them and still resume.
# nonfinite changes nothing in a run that meets no NaN: a stopped run may resume with nonfinite=skip
NOT_FINGERPRINTED = (
    "out",
    "resume",
    "overwrite",
    "num_workers",
    "decoder_threads",
    "shards",
    "weights",
    "device",
    "nonfinite",
    "max_skipped_fraction",
    *TRACKER_KEYS,  # where a run is reported, not what it computes
)


def run_fingerprint(cfg: FinetuneConfig, shards: Path) -> dict:
    """The config (less what does not change the numbers), weight-file and shard hashes."""
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_FINGERPRINTED}
    config["precision"] = accelerate_precision(cfg.precision)  # as runs before fp32 was a spelling recorded it
    return {
        "config": config,
        "weights": outputs.file_digest(cfg.weights),
        "glosses": outputs.file_digest(PackLayout(shards).glosses_path),
        "shards": {
            s: outputs.file_digest(PackLayout(shards).manifest_path(s)) for s in (cfg.train_split, cfg.dev_split)
        },
    }


def owned_files(out: Path, record: dict):
    """The files an earlier fine-tuning run into ``out`` wrote (deleted on ``overwrite=true``)."""
    yield from checkpoints.checkpoint_dirs(out)
    yield from (
        out / n for n in ("config.yaml", "glosses.txt", "model.safetensors", "best.safetensors", "metrics.json")
    )


def temp_dirs(out: Path, config: dict):
    """Where this recipe's atomic writes put temporary files, and the names written there."""
    yield (
        out,
        re.compile(
            r"config\.yaml|glosses\.txt|model\.safetensors|best\.safetensors|metrics\.json"
            r"|fingerprint\.json"
        ),
    )


def backbone_options(cfg: FinetuneConfig) -> dict:
    """Architecture options of the backbone (saved in the checkpoint metadata)."""
    return {"stop_after": cfg.stop_after} if cfg.stop_after is not None else {}


def build_model(cfg: FinetuneConfig, num_classes: int) -> VideoCTC:
    """Backbone (seeded random init or ``weights``) + head, with ``freeze`` applied."""
    torch.manual_seed(cfg.seed)  # identical initialisation on every rank
    backbone = create_model(
        cfg.backbone, weights=cfg.weights, grad_checkpointing=cfg.grad_checkpointing, **backbone_options(cfg)
    )
    if cfg.freeze == "all":
        backbone.freeze(len(backbone.blocks()))
    elif cfg.freeze != "none":
        if not cfg.freeze.isdigit():
            raise SignstreamError(f"freeze must be none, all or a number of blocks, got {cfg.freeze!r}")
        backbone.freeze(int(cfg.freeze))
    if cfg.bn_momentum is not None:
        # torchvision's S3D uses momentum 0.001: a few hundred steps barely move the running
        # statistics, and eval-mode outputs (dev WER, extracted features) come out wrong.
        for m in backbone.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = cfg.bn_momentum
    return VideoCTC(backbone, num_classes, head=cfg.head, hidden=cfg.hidden, dropout=cfg.dropout)


def optimizer_for(model: VideoCTC, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    """AdamW with a smaller learning rate on the pretrained backbone than on the head."""
    groups = [{"params": [p for p in model.head.parameters() if p.requires_grad], "lr": cfg.lr}]
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    if backbone:
        groups.append({"params": backbone, "lr": cfg.backbone_lr})
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)


def targets(batch, vocab: Vocabulary) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated gloss ids and their lengths for a batch."""
    ids = [vocab.encode(m["gloss"]) for m in batch.meta]
    return torch.tensor([i for seq in ids for i in seq]), torch.tensor([len(s) for s in ids])


class FinetuneRecipe:
    """One fine-tuning run, its state on ``self``; :func:`signstream.recipes.runner.run` drives it."""

    name = "finetune_ctc"
    owned_files = staticmethod(owned_files)
    temp_dirs = staticmethod(temp_dirs)

    def __init__(self, cfg: FinetuneConfig):
        self.cfg, self.out = cfg, Path(cfg.out)
        self.shards = remote.location(cfg.shards)  # a directory or a URL
        self.guard, self.dev_split = guards.StepGuard(cfg.nonfinite), cfg.dev_split

    def setup(self) -> None:
        """Refuse a bad config before ``out`` is touched; threads; the Accelerator."""
        cfg = self.cfg
        if not PackLayout(self.shards).glosses_path.exists():
            raise SignstreamError(f"{self.shards} is not a pack output (no {GLOSSES}); set shards=DIR")
        if cfg.temporal_rescale and len(cfg.temporal_rescale) != 2:
            raise SignstreamError(f"temporal_rescale needs two values (min,max) or none, got {cfg.temporal_rescale}")
        self.accelerator = accelerator_for(
            cfg,
            cfg.num_workers,
            mixed_precision=accelerate_precision(cfg.precision),
            gradient_accumulation_steps=cfg.grad_accum,
        )  # auto: gloo without CUDA

    def load_data(self) -> None:
        """The gloss vocabulary of the packed shards."""
        with remote.local_copy(PackLayout(self.shards).glosses_path) as glosses:
            self.vocab = Vocabulary.from_file(glosses)

    def fingerprint(self) -> dict:
        return run_fingerprint(self.cfg, self.shards)

    def build(self) -> None:
        """Model, loaders (their transforms follow the backbone's input spec), optimizer, scheduler."""
        cfg, accelerator = self.cfg, self.accelerator
        model = build_model(cfg, len(self.vocab))
        spec, device = model.backbone.input_spec, "cuda" if accelerator.device.type == "cuda" else "cpu"
        # Train-time augmentation (random crop/scale, temporal rescale) follows mode="train".
        rescale = tuple(cfg.temporal_rescale) if cfg.temporal_rescale else None
        train_tf = Transform.from_input_spec(
            spec,
            size=cfg.image_size,
            max_frames=cfg.max_frames,
            frame_stride=cfg.frame_stride,
            temporal_rescale=rescale,
        )
        eval_tf = Transform.from_input_spec(spec, size=cfg.image_size, frame_stride=cfg.frame_stride)
        common = {
            "backend": cfg.backend,
            "device": device,
            "batch_size": cfg.batch_size,
            "num_workers": cfg.num_workers,
            "decoder_threads": cfg.decoder_threads,
            "allow_empty": True,  # the recipe refuses an empty split itself, over every process at once
        }
        self.train_loader = make_loader(
            self.shards / cfg.train_split, mode="train", transform=train_tf, shuffle=True, seed=cfg.seed, **common
        )
        self.eval_loaders = {
            cfg.dev_split: make_loader(
                self.shards / cfg.dev_split, mode="eval", transform=eval_tf, shuffle=False, **common
            )
        }
        self.steps_per_epoch = (
            len(self.train_loader)
            if cfg.max_steps_per_epoch is None
            else min(len(self.train_loader), cfg.max_steps_per_epoch)
        )
        optimizer = optimizer_for(model, cfg)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(cfg.epochs * math.ceil(self.steps_per_epoch / cfg.grad_accum), cfg.warmup_steps)
        )
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, optimizer, scheduler)
        self.meta = checkpoint_metadata(
            cfg.backbone,
            backbone_options(cfg),
            cfg.head,
            {"hidden": cfg.hidden, "dropout": cfg.dropout},
            len(self.vocab),
        )

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the train split; returns the epoch's loss, timing and skipped steps.

        The guard stops the run at a NaN/inf loss, gradient or weight (or, with
        ``nonfinite=skip``, leaves such a step out: no backward, no optimizer step).
        """
        cfg, accelerator, model, loader, guard = self.cfg, self.accelerator, self.model, self.train_loader, self.guard
        model.train()
        loader.set_epoch(epoch)
        total, count, frames, t0 = 0.0, 0, 0, time.perf_counter()
        seen, skipped_before, nonfinite_before = 0, len(loader.stats.skipped), guard.skipped
        for step, batch in enumerate(loader):
            if step >= self.steps_per_epoch:
                break
            seen += 1
            with accelerator.accumulate(model):
                loss = runner.train_step(
                    self, epoch, step, (batch.video.to(accelerator.device), batch.lengths), targets(batch, self.vocab)
                )
            if loss is None:
                continue
            total, count, frames = total + loss, count + 1, frames + int(batch.lengths.sum())
        skips = loader.stats.skipped[skipped_before:]
        # summed over the processes, so that every one of them stops, or none does
        seen_all, skipped_all = guards.split_counts(accelerator, seen, len(skips))
        guards.require_videos(
            cfg.train_split,
            seen_all,
            skips,
            "for training",
            max_skipped_fraction=cfg.max_skipped_fraction,
            skipped_count=skipped_all,
        )
        guard.end_epoch(epoch, count, guard.skipped - nonfinite_before)
        seconds = time.perf_counter() - t0
        return {
            "epoch": epoch,
            "train_loss": total / max(count, 1),
            "steps": count,
            "frames": frames,
            "frames_per_s": round(frames / seconds, 1) if seconds else None,
            "nonfinite_skipped": guard.skipped - nonfinite_before,
        }

    def evaluate(self, split: str) -> tuple[dict[str, str], dict[str, str]]:
        """Decode a split that every rank reads its own part of (exactly once); returns (refs, hyps) by name."""
        accelerator, model, loader = self.accelerator, self.model, self.eval_loaders[split]
        model.eval()
        pairs, skipped_before = [], len(loader.stats.skipped)
        with torch.no_grad():
            for batch in loader:
                log_probs, out_lengths = model(batch.video.to(accelerator.device), batch.lengths)
                hyps = decode_batch(log_probs, out_lengths, self.vocab, self.cfg.decoder)
                pairs += [(m["name"], m["gloss"], h) for m, h in zip(batch.meta, hyps)]
        pairs = accelerator.gather_for_metrics(pairs, use_gather_object=True)
        # gathered: every rank sees the same total, so all stop together (each naming its own skips)
        skips = loader.stats.skipped[skipped_before:]
        skipped_all = guards.split_counts(accelerator, 0, len(skips))[1]
        guards.require_videos(
            split,
            len(pairs),
            skips,
            "to score",
            max_skipped_fraction=self.cfg.max_skipped_fraction,
            skipped_count=skipped_all,
        )
        return {n: r for n, r, _ in pairs}, {n: h for n, _, h in pairs}

    def save_model(self, epoch: int, best: bool) -> None:
        """The last model, and the best one when this epoch is the best so far."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        save_checkpoint(unwrapped, self.out / "model.safetensors", {**self.meta, "epoch": str(epoch)})
        if best:
            save_checkpoint(unwrapped, self.out / "best.safetensors", {**self.meta, "epoch": str(epoch)})

    def finish(self, history: list[dict]) -> dict:
        """Best dev WER, loader counts and every rank's steps and weights digest."""
        # the replica digests are equal on all machines when data parallelism held
        return {
            "best_dev_wer": checkpoints.best_score(history),
            "loader": self.train_loader.stats.as_dict(),
            "replicas": replica_report(self.accelerator, self.model, sum(h["steps"] for h in history)),
        }


@outputs.one_writer
def main(argv: list[str] | None = None) -> int:
    """Fine-tune as ``argv`` (``--config PRESET.yaml key=value ...``) says; returns the exit code."""
    return runner.run(FinetuneRecipe(parse_config(FinetuneConfig, argv)))


if __name__ == "__main__":
    sys.exit(main_guard(main))

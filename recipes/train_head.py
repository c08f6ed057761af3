"""Train a CTC recognition head on extracted features and score it by WER.

    accelerate launch recipes/train_head.py --config recipes/configs/train_head-synthetic.yaml
    signstream train_head --config ... key=value ...

Features come from any writer of ``extract_features`` (per-video ``.npy``,
SignJoey pickle, feature shards). The head (temporal conv + BiLSTM, a
transformer, or linear) is trained with CTC (blank 0) on the train split; dev
WER is computed every epoch with the PHOENIX cleanup and the best epoch is kept.
Outputs in ``out``: ``config.yaml``, ``checkpoints/epoch_NNN`` (exact resume
via ``accelerator.save_state``), ``head_best.safetensors``, per split
hypotheses / references / CTM / STM, and ``metrics.json``. Only the same
configuration on the same features resumes: ``fingerprint.json`` holds the
config and a hash of the loaded features and vocabulary; another run into the
same ``out`` is refused unless ``overwrite=true``. SignJoey pickles are read
with a restricted unpickler (data and tensors only), never plain ``pickle``.
``device=auto|cpu|cuda|cuda:N`` picks where it computes (``auto``: CUDA when there is one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from signstream import SignstreamError
from signstream.loaders.feature_readers import FeatureSample, load_split
from signstream.loaders.fileio import save_safetensors_atomic
from signstream.models.head import HEADS, RecognitionHead
from signstream.models.vocab import Vocabulary
from signstream.recipes import checkpoints, guards, outputs, runner
from signstream.recipes.config import (
    Choice,
    Device,
    FileStem,
    NonFinite,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Precision,
    Probability,
    Trackers,
    parse_config,
)
from signstream.recipes.evaluation import decode_batch, score_split
from signstream.recipes.runtime import accelerate_precision, accelerator_for, main_guard
from signstream.recipes.schedules import warmup_cosine
from signstream.recipes.scoring import CLEANUPS
from signstream.recipes.trackers import TRACKER_KEYS


@dataclass
class TrainHeadConfig:
    """Train a CTC recognition head on extracted features."""

    features: str = ""
    format: Literal["auto", "npy", "signjoey", "shards"] = "auto"
    vocab: str = ""
    train_split: FileStem = "train"
    eval_splits: list[FileStem] = field(default_factory=lambda: ["dev", "test"])
    head: typing.Annotated[str, Choice(HEADS, "head")] = "conv_bilstm"
    hidden: PositiveInt = 256
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = 4
    dropout: Probability = 0.2
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 8
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 1e-4
    warmup_steps: NonNegativeInt = 50
    clip_grad: NonNegativeFloat = 1.0
    nonfinite: NonFinite = "stop"  # a NaN/inf loss or gradient: stop the run, or skip the step and count it
    decoder: Literal["greedy", "beam"] = "greedy"
    beam_width: PositiveInt = 5
    cleanup: typing.Annotated[str, Choice(CLEANUPS, "cleanup")] = "phoenix2014"
    precision: Precision = "fp32"
    device: Device = "auto"
    seed: int = 0
    threads: PositiveInt | None = None  # torch threads per process; none: the policy in recipes/threads.py
    out: str = "runs/head"
    resume: bool = True
    overwrite: bool = False
    log_with: Trackers = None  # experiment trackers (tensorboard, wandb, mlflow...), comma-separated; none: none
    project_name: str | None = None  # the trackers' project (run) name; none: the recipe's name
    logging_dir: str | None = None  # where file-based trackers (tensorboard...) write; none: <out>/trackers
    log_every: PositiveInt = 10  # train loss and learning rates go to the trackers every this many steps


# nonfinite changes nothing in a run that meets no NaN: a stopped run may resume with nonfinite=skip
# the tracker keys say where a run is reported, not what it computes
NOT_FINGERPRINTED = ("out", "resume", "overwrite", "features", "vocab", "device", "nonfinite", *TRACKER_KEYS)


def data_digest(datasets: dict[str, FeatureDataset], vocab_path: Path) -> str:
    """A hash of what training reads: every sample's name, labels and feature values, and the vocabulary."""
    h = hashlib.sha256(outputs.file_digest(vocab_path).encode())
    for split in sorted(datasets):
        for s in datasets[split].samples:
            h.update(
                json.dumps([split, s.name, s.gloss, s.signer, str(s.features.dtype), list(s.features.shape)]).encode()
            )
            h.update(memoryview(s.features.tobytes() if not s.features.flags.c_contiguous else s.features).cast("B"))
    return h.hexdigest()


def run_fingerprint(cfg: TrainHeadConfig, datasets: dict, vocab_path: Path) -> dict:
    config = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in NOT_FINGERPRINTED}
    config["precision"] = accelerate_precision(cfg.precision)  # as runs before fp32 was a spelling recorded it
    return {"config": config, "data": data_digest(datasets, vocab_path)}


def owned_files(out: Path, record: dict):
    """The files an earlier head-training run into ``out`` wrote (deleted on ``overwrite=true``)."""
    yield from checkpoints.checkpoint_dirs(out)
    config = record.get("config") or {}
    for split in config.get("eval_splits") or []:
        if isinstance(split, str) and re.fullmatch(r"[\w.-]+", split):
            yield from (out / f"{split}.{ext}" for ext in ("hyp.txt", "ref.txt", "ctm", "stm"))
    yield from (out / n for n in ("config.yaml", "glosses.txt", "head_best.safetensors", "metrics.json"))


def temp_dirs(out: Path, config: dict):
    """Where this recipe's atomic writes put temporary files, and the names written there."""
    splits = "|".join(re.escape(s) for s in config["eval_splits"]) or "(?!)"
    yield (
        out,
        re.compile(
            rf"config\.yaml|glosses\.txt|metrics\.json|fingerprint\.json|head_best\.safetensors"
            rf"|({splits})\.(hyp\.txt|ref\.txt|ctm|stm)"
        ),
    )


class FeatureDataset(torch.utils.data.Dataset):
    """Feature samples with their encoded gloss targets."""

    def __init__(self, samples: list[FeatureSample], vocab: Vocabulary):
        self.samples = samples
        self.targets = [vocab.encode(s.gloss) for s in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        return torch.from_numpy(s.features.astype("float32")), torch.tensor(self.targets[i]), i


def collate(items):
    """Pad features (zeros) and targets; keep true lengths and sample indices."""
    feats, targets, idx = zip(*items)
    lengths = torch.tensor([f.shape[0] for f in feats])
    x = torch.nn.utils.rnn.pad_sequence(list(feats), batch_first=True)
    y = torch.nn.utils.rnn.pad_sequence(list(targets), batch_first=True)
    return x, lengths, y, torch.tensor([t.numel() for t in targets]), torch.tensor(idx)


def build_model(cfg: TrainHeadConfig, dim: int, num_classes: int) -> RecognitionHead:
    """The recognition head for ``dim``-wide features (initialised from the global seed)."""
    return RecognitionHead(
        dim,
        num_classes,
        kind=cfg.head,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
    )


class HeadRecipe:
    """One head-training run, its state on ``self``; :func:`signstream.recipes.runner.run` drives it."""

    name = "train_head"
    owned_files = staticmethod(owned_files)
    temp_dirs = staticmethod(temp_dirs)

    def __init__(self, cfg: TrainHeadConfig):
        self.cfg, self.out, self.features = cfg, Path(cfg.out), Path(cfg.features)
        self.guard = guards.StepGuard(cfg.nonfinite)
        self.dev_split = cfg.eval_splits[0] if cfg.eval_splits else None

    def setup(self) -> None:
        """Refuse a bad config before ``out`` is touched; threads; the Accelerator."""
        cfg = self.cfg
        if not cfg.features:
            raise SignstreamError("set features=DIR (an extract_features output directory)")
        if cfg.train_split in cfg.eval_splits:
            raise SignstreamError(
                f"eval_splits names the train split {cfg.train_split!r}; a split is either "
                "trained on or evaluated, so remove it from eval_splits (e.g. eval_splits=dev,test)"
            )
        if not self.features.is_dir():
            raise SignstreamError(f"features directory not found: {self.features}")
        self.accelerator = accelerator_for(
            cfg,
            0,
            mixed_precision=accelerate_precision(cfg.precision),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
        )

    def load_data(self) -> None:
        """The vocabulary and every split's features, refused when widths differ or values are not finite."""
        cfg, features = self.cfg, self.features
        set_seed(cfg.seed)
        self.vocab_path = Path(cfg.vocab) if cfg.vocab else features / "glosses.txt"
        self.vocab = Vocabulary.from_file(self.vocab_path)
        self.datasets = {
            s: FeatureDataset(load_split(features, s, cfg.format), self.vocab)
            for s in [cfg.train_split, *cfg.eval_splits]
        }
        width = {s: d.samples[0].features.shape[1] for s, d in self.datasets.items()}
        if len(set(width.values())) > 1:  # the head is built for the train split's width
            raise SignstreamError(
                f"feature widths differ between splits in {features} "
                f"({', '.join(f'{s}: {w}' for s, w in width.items())}); extract every split "
                "with the same backbone"
            )
        guards.require_finite_splits(
            {s: d.samples for s, d in self.datasets.items()}, cfg.train_split, cfg.nonfinite, str(features)
        )

    def fingerprint(self) -> dict:
        return run_fingerprint(self.cfg, self.datasets, self.vocab_path)

    def build(self) -> None:
        """Head (from the global seed), loaders, optimizer, scheduler."""
        cfg, accelerator = self.cfg, self.accelerator
        train = self.datasets[cfg.train_split]
        model = build_model(cfg, train.samples[0].features.shape[1], len(self.vocab))
        train_loader = DataLoader(
            train,
            batch_size=cfg.batch_size,
            shuffle=True,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(cfg.seed),
        )
        eval_loaders = {
            s: DataLoader(d, batch_size=cfg.batch_size, collate_fn=collate)
            for s, d in self.datasets.items()
            if s != cfg.train_split
        }
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * math.ceil(len(train_loader) / accelerator.num_processes)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, cfg.warmup_steps))
        self.model, self.optimizer, self.train_loader, self.scheduler = accelerator.prepare(
            model, optimizer, train_loader, scheduler
        )
        self.eval_loaders = {s: accelerator.prepare(dl) for s, dl in eval_loaders.items()}
        self.steps_per_epoch = len(self.train_loader)

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the train split; returns the epoch's mean loss, feature frames/s and skipped steps.

        The guard stops the run at a NaN/inf loss, gradient or weight (or, with
        ``nonfinite=skip``, leaves such a step out: no backward, no optimizer step).
        """
        model, loader, guard = self.model, self.train_loader, self.guard
        model.train()
        loader.set_epoch(epoch)
        total, count, frames, skipped, t0 = 0.0, 0, 0, guard.skipped, time.perf_counter()
        for step, (x, lengths, y, ylen, _) in enumerate(loader):
            # no accumulation here: every step synchronises and steps the optimizer
            loss = runner.train_step(self, epoch, step, (x, lengths), (y, ylen))
            if loss is not None:
                total, count, frames = total + loss, count + 1, frames + int(lengths.sum())
        guard.end_epoch(epoch, count, guard.skipped - skipped)
        seconds = time.perf_counter() - t0
        return {
            "epoch": epoch,
            "train_loss": total / max(count, 1),
            "frames_per_s": round(frames / seconds, 1) if seconds else None,
            "nonfinite_skipped": guard.skipped - skipped,
        }

    def evaluate(self, split: str) -> tuple[dict[str, str], dict[str, str]]:
        """Decode a split that every rank reads its own part of; returns (refs, hyps) by name."""
        loader, cfg = self.eval_loaders[split], self.cfg
        self.model.eval()
        samples = loader.dataset.samples
        pairs = []
        with torch.no_grad():
            for x, lengths, _y, _yl, idx in loader:
                log_probs, out_lengths = self.model(x, lengths)
                hyps = decode_batch(log_probs, out_lengths, self.vocab, cfg.decoder, cfg.beam_width)
                pairs += [(samples[int(i)].name, h) for i, h in zip(idx, hyps)]
        pairs = self.accelerator.gather_for_metrics(pairs, use_gather_object=True)
        return {s.name: s.gloss for s in samples}, dict(pairs)

    def save_model(self, epoch: int, best: bool) -> None:
        """The best head's weights, when this epoch is the best so far."""
        if best:
            state = {k: v.contiguous() for k, v in self.accelerator.unwrap_model(self.model).state_dict().items()}
            save_safetensors_atomic(self.out / "head_best.safetensors", state, metadata={"epoch": str(epoch)})

    def finish(self, history: list[dict]) -> dict:
        """Reload the best head, score every eval split and write its files."""
        accelerator, best = self.accelerator, self.out / "head_best.safetensors"
        accelerator.wait_for_everyone()
        if best.exists():
            accelerator.unwrap_model(self.model).load_state_dict(load_file(str(best)))
        metrics = {"vocab_size": len(self.vocab) - 2}
        for split in self.eval_loaders:
            refs, hyps = self.evaluate(split)
            if accelerator.is_main_process:
                signers = {s.name: s.signer for s in self.datasets[split].samples}
                score = score_split(self.out, split, refs, hyps, self.cfg.cleanup, signers)
                metrics[f"{split}_wer"] = score["wer"]
                metrics[f"{split}_score"] = score
        return metrics


@outputs.one_writer
def main(argv: list[str] | None = None) -> int:
    """Train a head as ``argv`` (``--config PRESET.yaml key=value ...``) says; returns the exit code."""
    return runner.run(HeadRecipe(parse_config(TrainHeadConfig, argv)))


if __name__ == "__main__":
    sys.exit(main_guard(main))

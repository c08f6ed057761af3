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
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from signstream import SignstreamError
from signstream.loaders.feature_readers import FeatureSample, load_split
from signstream.loaders.fileio import write_json
from signstream.models.head import HEADS, RecognitionHead, ctc_loss
from signstream.models.vocab import Vocabulary
from signstream.recipes import checkpoints, guards, outputs
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
    accelerate_precision,
    main_guard,
    make_accelerator,
    parse_config,
    peak_memory,
    save_config,
)
from signstream.recipes.evaluation import decode_batch, score_split
from signstream.recipes.schedules import warmup_cosine
from signstream.recipes.scoring import CLEANUPS, wer_score
from signstream.recipes.threads import apply_thread_policy


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


# nonfinite changes nothing in a run that meets no NaN: a stopped run may resume with nonfinite=skip
NOT_FINGERPRINTED = ("out", "resume", "overwrite", "features", "vocab", "device", "nonfinite")


def data_digest(datasets: dict[str, FeatureDataset], vocab_path: Path) -> str:
    """A hash of what training reads: every sample's name, labels and feature values, and the vocabulary."""
    h = hashlib.sha256(outputs.file_digest(vocab_path).encode())
    for split in sorted(datasets):
        for s in datasets[split].samples:
            h.update(json.dumps([split, s.name, s.gloss, s.signer, str(s.features.dtype),
                                 list(s.features.shape)]).encode())
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
    yield out, re.compile(rf"config\.yaml|glosses\.txt|metrics\.json|fingerprint\.json"
                          rf"|({splits})\.(hyp\.txt|ref\.txt|ctm|stm)")


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
    return RecognitionHead(dim, num_classes, kind=cfg.head, hidden=cfg.hidden, dropout=cfg.dropout,
                           num_layers=cfg.num_layers, num_heads=cfg.num_heads)


@outputs.one_writer
def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainHeadConfig, argv)
    apply_thread_policy(cfg.threads, workers=0)
    if not cfg.features:
        raise SignstreamError("set features=DIR (an extract_features output directory)")
    if cfg.train_split in cfg.eval_splits:
        raise SignstreamError(f"eval_splits names the train split {cfg.train_split!r}; a split is either "
                              "trained on or evaluated, so remove it from eval_splits (e.g. eval_splits=dev,test)")
    out, features = Path(cfg.out), Path(cfg.features)
    if not features.is_dir():
        raise SignstreamError(f"features directory not found: {features}")
    accelerator = make_accelerator(cfg.device, mixed_precision=accelerate_precision(cfg.precision),
                                   dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    outputs.take_lock(out, accelerator)  # before anything reads out/: one run decides and writes at a time
    set_seed(cfg.seed)
    vocab_path = Path(cfg.vocab) if cfg.vocab else features / "glosses.txt"
    vocab = Vocabulary.from_file(vocab_path)
    datasets = {s: FeatureDataset(load_split(features, s, cfg.format), vocab)
                for s in [cfg.train_split, *cfg.eval_splits]}
    width = {s: d.samples[0].features.shape[1] for s, d in datasets.items()}
    if len(set(width.values())) > 1:  # the head is built for the train split's width
        raise SignstreamError(f"feature widths differ between splits in {features} "
                              f"({', '.join(f'{s}: {w}' for s, w in width.items())}); extract every split "
                              "with the same backbone")
    guards.require_finite_splits({s: d.samples for s, d in datasets.items()}, cfg.train_split, cfg.nonfinite,
                                 str(features))
    fingerprint = run_fingerprint(cfg, datasets, vocab_path)
    verdict = outputs.claim(out, "train_head", fingerprint, overwrite=cfg.overwrite)
    if verdict == "resume" and not cfg.resume:
        verdict = "restart"  # resume=false: this configuration's earlier checkpoints go, none is picked up later
    train = datasets[cfg.train_split]
    model = build_model(cfg, train.samples[0].features.shape[1], len(vocab))
    train_loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate,
                              generator=torch.Generator().manual_seed(cfg.seed))
    eval_loaders = {s: DataLoader(d, batch_size=cfg.batch_size, collate_fn=collate)
                    for s, d in datasets.items() if s != cfg.train_split}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train_loader) / accelerator.num_processes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, cfg.warmup_steps))
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    eval_loaders = {s: accelerator.prepare(dl) for s, dl in eval_loaders.items()}
    accelerator.wait_for_everyone()  # every rank has read out/ before the main process changes it
    if accelerator.is_main_process:
        outputs.prepare(out, "train_head", fingerprint, verdict, dataclasses.asdict(cfg), owned_files, temp_dirs)
        save_config(cfg, out / "config.yaml")
        vocab.save(out / "glosses.txt")
    accelerator.wait_for_everyone()
    start, history = checkpoints.resume(accelerator, out, cfg.resume)
    dev = cfg.eval_splits[0] if cfg.eval_splits else None
    t0, guard = time.perf_counter(), guards.StepGuard(cfg.nonfinite)
    for epoch in range(start, cfg.epochs):
        record = train_epoch(accelerator, model, optimizer, scheduler, train_loader, cfg, epoch, guard)
        if dev:
            record["dev_wer"] = wer_score(*evaluate(accelerator, model, eval_loaders[dev], vocab, cfg),
                                          cfg.cleanup)["wer"]
        history.append(record)
        accelerator.print(json.dumps(record))
        checkpoints.save_epoch(accelerator, out, epoch, history, model_files(accelerator, model, out, epoch))
    metrics = final_scores(accelerator, model, out, eval_loaders, datasets, vocab, cfg, history)
    metrics.update(train_seconds=round(time.perf_counter() - t0, 2), **peak_memory(),
                   nonfinite_skipped_steps=sum(h.get("nonfinite_skipped", 0) for h in history))
    if accelerator.is_main_process:
        write_json(out / "metrics.json", metrics)
        accelerator.print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
    accelerator.end_training()
    return 0


def train_epoch(accelerator, model, optimizer, scheduler, loader, cfg, epoch, guard: guards.StepGuard) -> dict:
    """One pass over the train split; returns the epoch's mean loss and its skipped steps.

    ``guard`` stops the run at a NaN/inf loss, gradient or weight (or, with
    ``nonfinite=skip``, leaves such a step out: no backward, no optimizer step).
    """
    model.train()
    loader.set_epoch(epoch)
    total, count, skipped = 0.0, 0, guard.skipped
    for step, (x, lengths, y, ylen, _) in enumerate(loader):
        # dropout masks from (seed, epoch, step, rank) alone: a resumed run draws what an uninterrupted one does
        torch.manual_seed(outputs.step_seed(cfg.seed, epoch, step, accelerator.process_index))
        buffers = guard.keep_buffers(model)
        log_probs, out_lengths = model(x, lengths)
        loss = ctc_loss(log_probs, y, out_lengths, ylen)
        if not guard.loss_ok(accelerator, loss, epoch, step, buffers):
            continue
        accelerator.backward(loss)
        if cfg.clip_grad:
            accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        if not guard.grads_ok(accelerator, model, epoch, step):
            optimizer.zero_grad()
            continue
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        guard.check_weights(model, epoch, step)
        total, count = total + loss.item(), count + 1
    guard.end_epoch(epoch, count, guard.skipped - skipped)
    return {"epoch": epoch, "train_loss": total / max(count, 1), "nonfinite_skipped": guard.skipped - skipped}


def evaluate(accelerator, model, loader, vocab, cfg) -> tuple[dict[str, str], dict[str, str]]:
    """Decode a split that every rank reads its own part of; returns (refs, hyps) by name."""
    model.eval()
    samples = loader.dataset.samples
    pairs = []
    with torch.no_grad():
        for x, lengths, _y, _yl, idx in loader:
            log_probs, out_lengths = model(x, lengths)
            hyps = decode_batch(log_probs, out_lengths, vocab, cfg.decoder, cfg.beam_width)
            pairs += [(samples[int(i)].name, h) for i, h in zip(idx, hyps)]
    pairs = accelerator.gather_for_metrics(pairs, use_gather_object=True)
    return {s.name: s.gloss for s in samples}, dict(pairs)


def model_files(accelerator, model, out: Path, epoch: int):
    """What :func:`checkpoints.save_epoch` writes beside the state: the best head's weights."""
    def save(best: bool) -> None:
        if best:
            state = {k: v.contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
            save_file(state, str(out / "head_best.safetensors"), metadata={"epoch": str(epoch)})
    return save


def final_scores(accelerator, model, out, eval_loaders, datasets, vocab, cfg, history) -> dict:
    """Reload the best head, score every eval split and write the files."""
    best = out / "head_best.safetensors"
    accelerator.wait_for_everyone()
    if best.exists():
        accelerator.unwrap_model(model).load_state_dict(load_file(str(best)))
    metrics = {"history": history, "vocab_size": len(vocab) - 2}
    for split, loader in eval_loaders.items():
        refs, hyps = evaluate(accelerator, model, loader, vocab, cfg)
        if accelerator.is_main_process:
            signers = {s.name: s.signer for s in datasets[split].samples}
            score = score_split(out, split, refs, hyps, cfg.cleanup, signers)
            metrics[f"{split}_wer"] = score["wer"]
            metrics[f"{split}_score"] = score
    return metrics


if __name__ == "__main__":
    sys.exit(main_guard(main))

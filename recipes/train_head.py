"""Train a CTC recognition head on extracted features and score it by WER.

    accelerate launch recipes/train_head.py --config recipes/configs/train_head-synthetic.yaml
    signstream train_head --config ... key=value ...

Features come from any writer of ``extract_features`` (per-video ``.npy``,
SignJoey pickle, feature shards). The head (temporal conv + BiLSTM, a
transformer, or linear) is trained with CTC (blank 0) on the train split; dev
WER is computed every epoch with the PHOENIX cleanup and the best epoch is kept.
Outputs in ``out``: ``config.yaml``, ``checkpoints/epoch_NNN`` (exact resume
via ``accelerator.save_state``), ``head_best.safetensors``, per split
hypotheses / references / CTM / STM, and ``metrics.json``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from signstream import SignstreamError
from signstream.loaders.feature_readers import FeatureSample, load_split
from signstream.loaders.fileio import write_json
from signstream.models.head import RecognitionHead, ctc_loss
from signstream.models.vocab import Vocabulary
from signstream.recipes.config import main_guard, parse_config, peak_memory, save_config
from signstream.recipes.evaluation import decode_batch, score_split
from signstream.recipes.schedules import warmup_cosine
from signstream.recipes.threads import apply_thread_policy


@dataclass
class TrainHeadConfig:
    """Train a CTC recognition head on extracted features."""

    features: str = ""
    format: str = "auto"
    vocab: str = ""
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["dev", "test"])
    head: str = "conv_bilstm"
    hidden: int = 256
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.2
    epochs: int = 30
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    clip_grad: float = 1.0
    decoder: str = "greedy"
    beam_width: int = 5
    cleanup: str = "phoenix2014"
    precision: str = "no"
    seed: int = 0
    threads: int | None = None  # torch threads per process; none: the policy in recipes/threads.py
    out: str = "runs/head"
    resume: bool = True


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


def evaluate(accelerator, model, loader, dataset, vocab, cfg) -> tuple[dict, dict]:
    """Greedy/beam decode a split on every rank; gather {name: hypothesis}."""
    model.eval()
    pairs = []
    with torch.no_grad():
        for x, lengths, _y, _yl, idx in loader:
            log_probs, out_lengths = model(x, lengths)
            hyps = decode_batch(log_probs, out_lengths, vocab, cfg.decoder, cfg.beam_width)
            pairs += [(dataset.samples[int(i)].name, h) for i, h in zip(idx, hyps)]
    pairs = accelerator.gather_for_metrics(pairs, use_gather_object=True)
    refs = {s.name: s.gloss for s in dataset.samples}
    return refs, dict(pairs)


def latest_checkpoint(ckpt_dir: Path) -> tuple[Path | None, int]:
    """The newest complete ``epoch_NNN`` checkpoint and its epoch (-1 if none)."""
    done = sorted(p for p in ckpt_dir.glob("epoch_*") if (p / "DONE").exists())
    return (done[-1], int(done[-1].name.split("_")[1])) if done else (None, -1)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(TrainHeadConfig, argv)
    apply_thread_policy(cfg.threads, workers=0)
    if not cfg.features:
        raise SignstreamError("set features=DIR (an extract_features output directory)")
    out, features = Path(cfg.out), Path(cfg.features)
    if not features.is_dir():
        raise SignstreamError(f"features directory not found: {features}")
    accelerator = Accelerator(mixed_precision=cfg.precision, cpu=not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    set_seed(cfg.seed)
    vocab_path = Path(cfg.vocab) if cfg.vocab else features / "glosses.txt"
    vocab = Vocabulary.from_file(vocab_path)
    datasets = {s: FeatureDataset(load_split(features, s, cfg.format), vocab)
                for s in [cfg.train_split, *cfg.eval_splits]}
    train = datasets[cfg.train_split]
    dim = train.samples[0].features.shape[1]
    model = RecognitionHead(dim, len(vocab), kind=cfg.head, hidden=cfg.hidden, dropout=cfg.dropout,
                            num_layers=cfg.num_layers, num_heads=cfg.num_heads)
    train_loader = DataLoader(train, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate,
                              generator=torch.Generator().manual_seed(cfg.seed))
    eval_loaders = {s: DataLoader(d, batch_size=cfg.batch_size, collate_fn=collate)
                    for s, d in datasets.items() if s != cfg.train_split}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(train_loader) / accelerator.num_processes)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, cfg.warmup_steps))
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    eval_loaders = {s: accelerator.prepare(dl) for s, dl in eval_loaders.items()}
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        vocab.save(out / "glosses.txt")
    ckpt, start = latest_checkpoint(out / "checkpoints") if cfg.resume else (None, -1)
    history = []
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        history = json.loads((ckpt / "history.json").read_text())
        accelerator.print(f"resumed from {ckpt}")
    dev = cfg.eval_splits[0] if cfg.eval_splits else None
    t0 = time.perf_counter()
    for epoch in range(start + 1, cfg.epochs):
        model.train()
        train_loader.set_epoch(epoch)
        total, count = 0.0, 0
        for x, lengths, y, ylen, _ in train_loader:
            log_probs, out_lengths = model(x, lengths)
            loss = ctc_loss(log_probs, y, out_lengths, ylen)
            accelerator.backward(loss)
            if cfg.clip_grad:
                accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            total, count = total + loss.item(), count + 1
        record = {"epoch": epoch, "train_loss": total / max(count, 1)}
        if dev:
            refs, hyps = evaluate(accelerator, model, eval_loaders[dev], datasets[dev], vocab, cfg)
            from signstream.tools.wer import wer_score

            record["dev_wer"] = wer_score(refs, hyps, cfg.cleanup)["wer"]
        history.append(record)
        accelerator.print(json.dumps(record))
        save_epoch(accelerator, model, out, epoch, history)
    metrics = final_scores(accelerator, model, out, eval_loaders, datasets, vocab, cfg, history)
    metrics.update(train_seconds=round(time.perf_counter() - t0, 2), **peak_memory())
    if accelerator.is_main_process:
        write_json(out / "metrics.json", metrics)
        accelerator.print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
    accelerator.end_training()
    return 0


def save_epoch(accelerator, model, out: Path, epoch: int, history: list[dict]) -> None:
    """Save the exact-resume state and, when dev WER improved, the best head weights."""
    ckpt = out / "checkpoints" / f"epoch_{epoch:03d}"
    accelerator.save_state(str(ckpt))
    if accelerator.is_main_process:
        write_json(ckpt / "history.json", history)
        scores = [h.get("dev_wer", h["train_loss"]) for h in history]  # lower is better
        if scores[-1] <= min(scores):
            state = {k: v.contiguous() for k, v in accelerator.unwrap_model(model).state_dict().items()}
            save_file(state, str(out / "head_best.safetensors"), metadata={"epoch": str(epoch)})
        (ckpt / "DONE").write_text("complete\n")  # marker written last: the checkpoint is whole
    accelerator.wait_for_everyone()


def final_scores(accelerator, model, out, eval_loaders, datasets, vocab, cfg, history) -> dict:
    """Reload the best head, score every eval split and write the files."""
    best = out / "head_best.safetensors"
    accelerator.wait_for_everyone()
    if best.exists():
        accelerator.unwrap_model(model).load_state_dict(load_file(str(best)))
    metrics = {"history": history, "vocab_size": len(vocab) - 2}
    for split, loader in eval_loaders.items():
        refs, hyps = evaluate(accelerator, model, loader, datasets[split], vocab, cfg)
        if accelerator.is_main_process:
            signers = {s.name: s.signer for s in datasets[split].samples}
            score = score_split(out, split, refs, hyps, cfg.cleanup, signers)
            metrics[f"{split}_wer"] = score["wer"]
            metrics[f"{split}_score"] = score
    return metrics


if __name__ == "__main__":
    sys.exit(main_guard(main))

"""Exact-resume checkpoints shared by the training recipes.

Every epoch leaves ``out/checkpoints/epoch_NNN`` (``accelerator.save_state``:
model, optimiser, scheduler, RNG and sampler state) plus ``history.json`` (the
per-epoch records so far) and, written last, a ``DONE`` marker. :func:`resume`
picks the newest checkpoint that has its marker, so a job killed while saving
resumes from the epoch before. :func:`save_epoch` also lets the recipe write
its model files, telling it whether this epoch is the best so far: the lowest
dev WER (with no dev split there is nothing to choose by, and the latest epoch
counts as the best); an epoch whose loss or WER is NaN/inf is never the best.

We keep our own ``epoch_NNN`` naming rather than Accelerate's
``ProjectConfiguration(automatic_checkpoint_naming=True)``: that one numbers
folders by save count (``checkpoint_N``) and ``load_state()`` takes the highest
number with no completeness marker, so a kill during a save would resume from
a half-written folder, and the epoch would not be readable from the name.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from signstream.loaders.fileio import atomic_write, fsync_tree, write_json

CHECKPOINTS = "checkpoints"
NAME_RE = re.compile(r"epoch_\d{3,}")
DONE = "DONE"


def checkpoint_dirs(out: Path) -> Iterator[Path]:
    """Every ``epoch_NNN`` folder under ``out/checkpoints`` (complete or not), for clean restarts."""
    folder = out / CHECKPOINTS
    if folder.is_dir():
        yield from (p for p in folder.iterdir() if NAME_RE.fullmatch(p.name))


def latest(out: Path) -> Path | None:
    """The newest complete checkpoint (one with its ``DONE`` marker), or ``None``."""
    done = sorted((p for p in checkpoint_dirs(out) if (p / DONE).exists()), key=lambda p: int(p.name.split("_")[1]))
    return done[-1] if done else None


def resume(accelerator, out: Path, enabled: bool = True) -> tuple[int, list[dict]]:
    """Load the newest complete checkpoint; returns (first epoch to run, history so far).

    Args:
        accelerator: the run's ``Accelerator``, after ``prepare``.
        out: the recipe's output folder.
        enabled: ``False`` (``resume=false``) starts at epoch 0 whatever is there.
    """
    ckpt = latest(out) if enabled else None
    if ckpt is None:
        return 0, []
    accelerator.load_state(str(ckpt))
    accelerator.print(f"resumed from {ckpt}")
    return int(ckpt.name.split("_")[1]) + 1, json.loads((ckpt / "history.json").read_text())


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _sane(record: dict) -> bool:
    # An epoch whose training loss was NaN/inf (a history from a run that went on
    # after diverging) left a broken model: its WER, often a "good" 100 % of blanks, never counts.
    return record.get("train_loss") is None or _finite(record["train_loss"])


def is_best(history: list[dict]) -> bool:
    """Whether the last epoch has the lowest dev WER so far (ties go to the later epoch).

    Only epochs with a finite training loss and a finite dev WER compete; a
    diverged epoch is never the best.
    """
    if not _sane(history[-1]):
        return False
    scores = [h["dev_wer"] for h in history if _sane(h) and _finite(h.get("dev_wer"))]
    if history[-1].get("dev_wer") is None:
        return not scores  # no dev split: the latest epoch is the one to keep
    return _finite(history[-1]["dev_wer"]) and history[-1]["dev_wer"] <= min(scores)


def best_score(history: list[dict]) -> float | None:
    """The lowest dev WER among the epochs that may be the best (see :func:`is_best`), or ``None``."""
    return min((h["dev_wer"] for h in history if _sane(h) and _finite(h.get("dev_wer"))), default=None)


def save_epoch(accelerator, out: Path, epoch: int, history: list[dict], save_models: Callable[[bool], None]) -> None:
    """Save the exact-resume state of ``epoch``, then the recipe's model files (main process).

    Args:
        save_models: ``save_models(best)`` writes the recipe's model files;
            ``best`` says whether this epoch is the best so far (:func:`is_best`).
    """
    ckpt = out / CHECKPOINTS / f"epoch_{epoch:03d}"
    accelerator.save_state(str(ckpt))
    if accelerator.is_main_process:
        save_models(is_best(history))
        write_json(ckpt / "history.json", history)
        fsync_tree(ckpt)  # the state files reach the disk before the marker that vouches for them
        with atomic_write(ckpt / DONE, "w") as f:  # written last, and fsynced: the checkpoint is whole
            f.write("complete\n")
    accelerator.wait_for_everyone()

"""The one skeleton of the training recipes: claim the output, prepare, resume, train, report.

A training recipe is a plain class holding its state on ``self`` that matches
:class:`TrainingRecipe` (a ``Protocol``: no base class); :func:`run` drives it.
Every rank takes the same steps in the same order, and only the main process
changes ``out``, after every rank has read it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import torch

from signstream.loaders.fileio import write_json
from signstream.models.head import ctc_loss
from signstream.recipes import checkpoints, guards, outputs, trackers
from signstream.recipes.config import peak_memory, save_config
from signstream.recipes.scoring import wer_score


class TrainingRecipe(Protocol):
    """What :func:`run` needs of a training recipe, in the order it calls for it.

    Attributes:
        name: the recipe's name, recorded in ``fingerprint.json``.
        cfg: the parsed config (``out``, ``resume``, ``overwrite``, ``epochs``, ``cleanup`` and the
            tracker keys ``log_with``, ``project_name``, ``log_every`` are read here).
        accelerator: set by :meth:`setup`.
        vocab: the gloss vocabulary, set by :meth:`load_data` (saved as ``glosses.txt``).
        model, optimizer, scheduler: set, prepared, by :meth:`build`.
        steps_per_epoch: batches per epoch on this rank, set by :meth:`build` (numbers the logged steps).
        guard: the run's :class:`~signstream.recipes.guards.StepGuard`.
        dev_split: the split scored after every epoch, or ``None``.
    """

    name: str
    cfg: Any
    accelerator: Any
    vocab: Any
    model: Any
    optimizer: Any
    scheduler: Any
    steps_per_epoch: int
    guard: guards.StepGuard
    dev_split: str | None

    def setup(self) -> None:
        """Refuse a bad config (nothing written yet), apply the thread policy, make the Accelerator."""

    def load_data(self) -> None:
        """Read what training reads (vocabulary, features) and refuse unusable inputs."""

    def fingerprint(self) -> dict:
        """Everything that determines the outputs (see :func:`signstream.recipes.outputs.claim`)."""

    def owned_files(self, out: Path, record: dict) -> Iterable[Path]:
        """The files an earlier run of this recipe wrote into ``out``."""

    def temp_dirs(self, out: Path, config: dict) -> Iterable:
        """Where this recipe's atomic writes put temporary files, and the names written there."""

    def build(self) -> None:
        """Model, loaders, optimizer and scheduler, passed through ``accelerator.prepare``."""

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the train split; returns the epoch's record."""

    def evaluate(self, split: str) -> tuple[dict[str, str], dict[str, str]]:
        """Decode ``split``; returns (references, hypotheses) by name."""

    def save_model(self, epoch: int, best: bool) -> None:
        """Write the model files of ``epoch`` (main process), ``best`` when it is the best so far."""

    def finish(self, history: list[dict]) -> dict:
        """The recipe's own final metrics (every rank takes part)."""


def train_step(recipe: TrainingRecipe, epoch: int, step: int, inputs: tuple, targets: tuple) -> float | None:
    """One guarded optimisation step on ``recipe.model(*inputs)`` with CTC against ``(targets, lengths)``.

    Under gradient accumulation the caller wraps it in ``accelerator.accumulate``;
    clipping, the gradient check and the weight check then run on synchronising steps only.
    The loss and learning rates go to the trackers at global step ``epoch * steps_per_epoch + step``.

    Returns:
        The step's loss, or ``None`` when the guard left the step out (``nonfinite=skip``).
    """
    cfg, accelerator, model, guard = recipe.cfg, recipe.accelerator, recipe.model, recipe.guard
    # dropout masks from (seed, epoch, step, rank) alone: a resumed run draws what an uninterrupted one does
    torch.manual_seed(outputs.step_seed(cfg.seed, epoch, step, accelerator.process_index))
    buffers = guard.keep_buffers(model)
    log_probs, out_lengths = model(*inputs)
    loss = ctc_loss(log_probs, targets[0], out_lengths, targets[1])
    if not guard.loss_ok(accelerator, loss, epoch, step, buffers):
        return None
    accelerator.backward(loss)
    if accelerator.sync_gradients and cfg.clip_grad:
        accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
    if accelerator.sync_gradients and not guard.grads_ok(accelerator, model, epoch, step):
        recipe.optimizer.zero_grad()
        return None
    recipe.optimizer.step()
    recipe.scheduler.step()
    recipe.optimizer.zero_grad()
    if accelerator.sync_gradients:
        guard.check_weights(model, epoch, step)
    value = loss.item()
    trackers.log_step(accelerator, cfg, recipe.scheduler, value, epoch * recipe.steps_per_epoch + step)
    return value


def run(recipe: TrainingRecipe) -> int:
    """Run ``recipe`` from its parsed config to ``metrics.json``; returns the exit code (0)."""
    recipe.setup()
    accelerator, cfg, out = recipe.accelerator, recipe.cfg, Path(recipe.cfg.out)
    outputs.take_lock(out, accelerator)  # before anything reads out/: one run decides and writes at a time
    recipe.load_data()
    fingerprint = recipe.fingerprint()
    verdict = outputs.claim(out, recipe.name, fingerprint, overwrite=cfg.overwrite)
    if verdict == "resume" and not cfg.resume:
        verdict = "restart"  # resume=false: this configuration's earlier checkpoints go, none is picked up later
    recipe.build()
    accelerator.wait_for_everyone()  # every rank has read out/ before the main process changes it
    if accelerator.is_main_process:
        outputs.prepare(
            out, recipe.name, fingerprint, verdict, dataclasses.asdict(cfg), recipe.owned_files, recipe.temp_dirs
        )
        save_config(cfg, out / "config.yaml")
        recipe.vocab.save(out / "glosses.txt")
    accelerator.wait_for_everyone()
    start, history = checkpoints.resume(accelerator, out, cfg.resume)
    trackers.start(accelerator, cfg, recipe.name, first_step=start * recipe.steps_per_epoch)
    try:
        train(recipe, start, history)
    except BaseException:
        trackers.close(accelerator)
        raise
    accelerator.end_training()
    return 0


def train(recipe: TrainingRecipe, start: int, history: list[dict]) -> dict:
    """Epochs ``start`` to ``cfg.epochs - 1`` after ``history``, then ``metrics.json``; returns the metrics."""
    accelerator, cfg, out, steps = recipe.accelerator, recipe.cfg, Path(recipe.cfg.out), recipe.steps_per_epoch
    t0 = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        record = recipe.train_epoch(epoch)
        if recipe.dev_split:
            record["dev_wer"] = wer_score(*recipe.evaluate(recipe.dev_split), cfg.cleanup)["wer"]
        history.append(record)
        accelerator.print(json.dumps(record))
        # at the epoch's last step: a run resuming after this epoch hides nothing of it
        trackers.log_epoch(accelerator, record, (epoch + 1) * steps - 1)
        checkpoints.save_epoch(accelerator, out, epoch, history, functools.partial(recipe.save_model, epoch))
    metrics = {
        "history": history,
        **recipe.finish(history),
        "train_seconds": round(time.perf_counter() - t0, 2),
        "nonfinite_skipped_steps": sum(h.get("nonfinite_skipped", 0) for h in history),
        **peak_memory(),
    }
    if accelerator.is_main_process:
        write_json(out / "metrics.json", metrics)
        accelerator.print(json.dumps({k: v for k, v in metrics.items() if k != "history"}))
    trackers.log(
        accelerator, {f"final/{k}": v for k, v in metrics.items() if k.endswith("_wer")}, cfg.epochs * steps - 1
    )
    return metrics

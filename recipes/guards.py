"""Refusals the recipes share: a split that yields no video, numbers that are not finite.

A run that did no work, or whose loss, gradients, weights or features went
NaN/inf, must not end as a success: each case here is one
:class:`signstream.SignstreamError` line naming where it happened (split, key,
epoch, step) and what to do. :class:`StepGuard` watches a training loop and
implements the ``nonfinite`` config choice: ``stop`` (the default) ends the run
at the first non-finite loss or gradient, ``skip`` leaves such steps out (no
backward, no optimizer step) and counts them. Weights that are no longer finite
always end the run: no later step can repair them, so no checkpoint of them
may become "best".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from signstream import SignstreamError
from signstream.recipes.config import NonFinite

FIRST_REASONS = 3  # skipped samples named in a zero-video refusal
# The default share of a split that may be skipped: a corpus with a few damaged files (PHOENIX has
# one in thousands) passes; a decoder or server that cannot deliver (all skipped) never does.
MAX_SKIPPED_FRACTION = 0.2


def _record(skip: Any) -> dict:
    return skip if isinstance(skip, dict) else dataclasses.asdict(skip)


def describe_skips(skipped: list, limit: int = FIRST_REASONS) -> str:
    """``N skipped; first: key (shard: reason); ...`` for the loader's skip records (dicts or ``Skipped``)."""
    if not skipped:
        return "no skipped sample recorded in this process (another process read the split's samples)"
    first = [_record(s) for s in skipped[:limit]]
    named = "; ".join(f"{r.get('key')} ({r.get('shard')}: {r.get('reason')})" for r in first)
    more = f"; ... {len(skipped) - limit} more" if len(skipped) > limit else ""
    return f"{len(skipped)} skipped; first: {named}{more}"


def require_videos(
    split: str,
    delivered: int,
    skipped: list,
    what: str = "",
    max_skipped_fraction: float = 1.0,
    skipped_count: int | None = None,
) -> None:
    """Refuse a split that yielded no video, or whose skipped share is above ``max_skipped_fraction``.

    Args:
        split: the split's name (or location) for the message.
        delivered: videos the split yielded (processed, or already done by an earlier run).
        skipped: the loader's skip records (``loader.stats.skipped`` or their dicts).
        what: what the videos were for (``"for training"``), in the message.
        max_skipped_fraction: the largest share of skipped samples accepted (the recipes' config key).
        skipped_count: skipped samples over every process, when ``skipped`` holds this process's only.

    Raises:
        SignstreamError: ``delivered`` is 0, or too many samples were skipped, naming the first reasons.
    """
    advice = "check the shards (signstream verify --decode) or the server they are read from"
    if not delivered:
        raise SignstreamError(
            f"split {split!r} yielded no video{' ' + what if what else ''}: {describe_skips(skipped)}; {advice}"
        )
    n_skipped = len(skipped) if skipped_count is None else skipped_count
    fraction = n_skipped / (delivered + n_skipped)
    if fraction > max_skipped_fraction:
        raise SignstreamError(
            f"split {split!r}: {n_skipped} of {delivered + n_skipped} samples skipped "
            f"({fraction:.0%}), more than max_skipped_fraction={max_skipped_fraction:g} "
            f"(a decoder that cannot start skips them all): {describe_skips(skipped)}; "
            f"{advice}, or raise max_skipped_fraction to accept it"
        )


def split_counts(accelerator, delivered: int, skipped: int) -> tuple[int, int]:
    """(delivered, skipped) summed over every process (one all-reduce when there are several)."""
    if accelerator.num_processes == 1:
        return delivered, skipped
    counts = accelerator.reduce(torch.tensor([delivered, skipped], device=accelerator.device), "sum")
    return int(counts[0]), int(counts[1])


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite (one device sync)."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors if t is not None and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN/inf, or ``None``."""
    for name, t in named:
        if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all()):
            return name
    return None


def require_finite_model(model: torch.nn.Module, source: str, advice: str) -> None:
    """Refuse a model with a non-finite parameter or buffer, naming the tensor and ``source``."""
    bad = first_nonfinite([*model.named_parameters(), *model.named_buffers()])
    if bad is not None:
        raise SignstreamError(f"{source} holds non-finite weights (NaN/inf in {bad!r}); {advice}")


def require_finite_features(samples: Iterable, split: str, where: str, skippable: bool = False) -> None:
    """Refuse a loaded feature split holding a NaN/inf value, naming the first such sample.

    Args:
        skippable: say that ``nonfinite=skip`` would train past it (true for the train split).
    """
    for s in samples:
        if not np.isfinite(s.features).all():
            raise SignstreamError(
                f"features of {s.name!r} in split {split!r} of {where} are not finite (NaN/inf); "
                "re-extract them (were they made with a diverged checkpoint?) or remove the entry"
                + (", or set nonfinite=skip to leave out the training steps it spoils" if skippable else "")
            )


def require_finite_splits(splits: dict[str, list], train_split: str, policy: NonFinite, where: str) -> None:
    """Refuse feature splits holding NaN/inf: an eval split always (it would skew the WER), the
    train split under ``stop`` (under ``skip`` the steps it spoils are left out instead)."""
    for split, samples in splits.items():
        if split != train_split or policy == "stop":
            require_finite_features(samples, split, where, skippable=split == train_split)


@dataclasses.dataclass
class StepGuard:
    """Watches one training run's losses, gradients and weights, step by step.

    Attributes:
        policy: ``stop`` or ``skip`` (the recipe's ``nonfinite`` config key).
        skipped: steps left out so far under ``skip``.
        last_finite: the last finite loss seen, and its (epoch, step).
    """

    policy: NonFinite = "stop"
    skipped: int = 0
    last_finite: tuple[float, int, int] | None = None

    def _last(self, epoch: int | None = None, step: int | None = None) -> str:
        if self.last_finite is None:
            return "no finite loss yet in this run"
        loss, at_epoch, at_step = self.last_finite
        if (at_epoch, at_step) == (epoch, step):
            return f"the step's loss was {loss:.6g}"
        return f"last finite loss {loss:.6g} at epoch {at_epoch}, step {at_step}"

    def _refuse(self, what: str, epoch: int, step: int, skippable: bool = True) -> SignstreamError:
        advice = "lower lr, keep warmup_steps and clip_grad > 0, check the inputs for NaN/inf"
        return SignstreamError(
            f"training stopped: {what} at epoch {epoch}, step {step} "
            f"({self._last(epoch, step)}); {advice}"
            + (", or set nonfinite=skip to leave such steps out" if skippable else "")
        )

    def keep_buffers(self, model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Under ``skip``, copies of the model's float buffers, taken before a forward pass.

        A training-mode forward pass updates BatchNorm's running statistics; on a
        step that turns out spoiled they would keep its NaN. The buffers are small
        (two vectors per BatchNorm layer), so the copy is cheap.
        """
        if self.policy != "skip":
            return []
        return [(b, b.detach().clone()) for b in model.buffers() if b.is_floating_point()]

    def loss_ok(
        self,
        accelerator,
        loss: torch.Tensor,
        epoch: int,
        step: int,
        buffers: list[tuple[torch.Tensor, torch.Tensor]] = (),
    ) -> bool:
        """True to train on this step; False to leave it out (``skip``). Raises under ``stop``.

        Every process decides together (one all-reduce when there are several),
        so all of them skip the same steps and none waits in a backward the others left out.
        A skipped step's forward pass is undone in ``buffers`` (from :meth:`keep_buffers`).
        """
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0], device=accelerator.device)
        if accelerator.num_processes > 1:
            bad = accelerator.reduce(bad, "sum")
        if not bad.item():
            self.last_finite = (float(loss.detach()), epoch, step)
            return True
        if self.policy == "skip":
            with torch.no_grad():
                for buffer, kept in buffers:
                    buffer.copy_(kept)
            self.skipped += 1
            return False
        here = float(loss.detach())
        raise self._refuse(
            f"the loss is {here}" if not math.isfinite(here) else "the loss is NaN/inf on another process", epoch, step
        )

    def grads_ok(self, accelerator, model: torch.nn.Module, epoch: int, step: int) -> bool:
        """After backward (gradients synchronised): False to leave the step out (``skip``). Raises under ``stop``.

        With fp16 loss scaling an inf gradient is routine: the scaler skips that
        step itself and lowers its scale, so gradients are left to it there.
        """
        if accelerator.scaler is not None or all_finite(p.grad for p in model.parameters()):
            return True
        if self.policy == "skip":
            self.skipped += 1
            return False
        raise self._refuse("a gradient is NaN/inf", epoch, step)

    def check_weights(self, model: torch.nn.Module, epoch: int, step: int) -> None:
        """After an optimizer step: weights (or BatchNorm statistics) no longer finite end the run, whatever
        the policy."""
        if not all_finite([*model.parameters(), *model.buffers()]):
            bad = first_nonfinite([*model.named_parameters(), *model.named_buffers()])
            raise self._refuse(f"the weights became non-finite (NaN/inf in {bad!r})", epoch, step, skippable=False)

    def end_epoch(self, epoch: int, trained: int, skipped: int) -> None:
        """Refuse an epoch whose every step was left out: it trained nothing."""
        if skipped and not trained:
            raise SignstreamError(
                f"training stopped: all {skipped} steps of epoch {epoch} had a NaN/inf loss or "
                f"gradient and were skipped ({self._last()}); lower lr, or check the inputs "
                "for NaN/inf"
            )

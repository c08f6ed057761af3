"""Experiment trackers of the recipes (``log_with=tensorboard,wandb,...``), through Accelerate's own.

A tracker name is checked when the config is parsed, with Accelerate's availability
test, so an unknown name or a missing package is one line before anything is read or
written. Training logs at global steps ``epoch * steps_per_epoch + step``: a resumed
run continues the numbering of the run it resumes, and TensorBoard hides what an
interrupted run logged past the checkpoint. None of these keys changes what a run computes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path
from typing import Any

from signstream import SignstreamError
from signstream.loaders.remote import redact

# Accelerate's tracker name -> (its availability test in accelerate.utils, the package to install)
TRACKERS = {
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "wandb": ("is_wandb_available", "wandb"),
    "mlflow": ("is_mlflow_available", "mlflow"),
    "comet_ml": ("is_comet_ml_available", "comet-ml"),
    "aim": ("is_aim_available", "aim"),
    "clearml": ("is_clearml_available", "clearml"),
    "dvclive": ("is_dvclive_available", "dvclive"),
    "swanlab": ("is_swanlab_available", "swanlab"),
    "trackio": ("is_trackio_available", "trackio"),
}

# The config keys of the trackers: none of them is part of a run's fingerprint.
TRACKER_KEYS = ("log_with", "project_name", "logging_dir", "log_every")

# An epoch record's keys and the tags they are logged under.
EPOCH_TAGS = {
    "train_loss": "train/epoch_loss",
    "dev_wer": "dev/wer",
    "frames_per_s": "loader/frames_per_s",
    "nonfinite_skipped": "train/nonfinite_skipped",
    "epoch": "epoch",
}


@dataclasses.dataclass(frozen=True)
class Available:
    """A config check: a tracker Accelerate knows, whose package is installed."""

    def check(self, name: str, value: Any) -> None:
        if value not in TRACKERS:
            raise SignstreamError(
                f"config key {name!r}: unknown tracker {value!r} (known: {', '.join(TRACKERS)}, or none)"
            )
        test, package = TRACKERS[value]
        import accelerate.utils  # only here: parsing a config without trackers never imports torch

        if not getattr(accelerate.utils, test)():
            raise SignstreamError(
                f"config key {name!r}: tracker {value!r} needs the {package} package (pip install {package})"
            )


def logging_dir(cfg: Any) -> str:
    """Where file-based trackers write: ``cfg.logging_dir``, else ``<out>/trackers``."""
    return cfg.logging_dir or str(Path(cfg.out) / "trackers")


def accelerator_options(cfg: Any) -> dict:
    """The Accelerator's tracker arguments for ``cfg``; none when it logs to no tracker."""
    if not getattr(cfg, "log_with", None):
        return {}
    return {"log_with": list(cfg.log_with), "project_dir": logging_dir(cfg)}


def flat_config(cfg: Any) -> dict:
    """The config as trackers take it: scalars only (lists comma-joined, ``none``), URL secrets hidden."""
    flat = {}
    for key, value in redact(dataclasses.asdict(cfg)).items():
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        flat[key] = "none" if value is None else value
    return flat


def start(accelerator, cfg: Any, name: str, first_step: int = 0) -> None:
    """Start ``cfg.log_with``'s trackers (main process), with the flat config, under ``cfg.project_name``.

    Args:
        name: the recipe's name, the project name when ``cfg.project_name`` is unset.
        first_step: the first step this run logs; TensorBoard hides earlier runs' events from there on.
    """
    if not getattr(cfg, "log_with", None):
        return
    init_kwargs = {"tensorboard": {"purge_step": first_step}} if "tensorboard" in cfg.log_with else {}
    accelerator.init_trackers(cfg.project_name or name, config=flat_config(cfg), init_kwargs=init_kwargs)


def log(accelerator, values: dict, step: int) -> None:
    """Log the numbers among ``values`` at ``step`` (main process; nothing without trackers)."""
    numbers = {
        k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }
    if numbers and accelerator.trackers:
        accelerator.log(numbers, step=step)


def log_step(accelerator, cfg: Any, scheduler, loss: float, step: int) -> None:
    """Every ``cfg.log_every`` global steps: the step's loss and every parameter group's learning rate."""
    if not accelerator.trackers or step % cfg.log_every:
        return
    rates = scheduler.get_last_lr()
    log(
        accelerator, {"train/loss": loss, **{"train/lr" + (f"_{i}" if i else ""): r for i, r in enumerate(rates)}}, step
    )


def log_epoch(accelerator, record: dict, step: int) -> None:
    """An epoch's record (loss, dev WER, loader frames/s...) at the global step of its last batch."""
    log(accelerator, {tag: record.get(key) for key, tag in EPOCH_TAGS.items()}, step)


def close(accelerator) -> None:
    """Flush and close the trackers after a failure, leaving the process group to the way out.

    ``end_training`` would also tear the process group down, which may wait on peers
    that are still in a collective; a tracker that fails to close must not hide the error.
    """
    for tracker in accelerator.trackers:
        with contextlib.suppress(Exception):
            tracker.finish()
    accelerator.trackers.clear()

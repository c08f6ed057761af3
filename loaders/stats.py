"""``loader.stats``: what a loader delivered and what it had to skip.

Counts are kept in the main process. Worker processes cannot write to it, so
the backends send their skipped-sample records and byte counts along the data
stream (see :class:`Report`) and the main process folds them in here; nothing
a worker saw is lost, even a skip after its last batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from signstream import SignstreamError
from signstream.loaders.remote import redact

log = logging.getLogger("signstream.loaders")


@dataclass
class Skipped:
    """A sample a loader could not deliver: its key, where it lives, and why.

    ``shard`` and ``reason`` may quote a shard URL: its secrets are replaced here,
    once, so no log line, summary or error built from a record can show them.
    """

    key: str
    shard: str
    reason: str

    def __post_init__(self) -> None:
        self.shard, self.reason = redact(str(self.shard)), redact(str(self.reason))


@dataclass
class Report:
    """What a backend sends with (or instead of) a batch: skips and bytes read."""

    skipped: list[Skipped] = field(default_factory=list)
    bytes_read: int = 0


@dataclass
class LoaderStats:
    """Running totals over every epoch a loader has served.

    Attributes:
        batches: batches yielded.
        samples: samples yielded.
        frames: real frames yielded (sum of ``Batch.lengths``).
        padded_frames: frames of padding in the yielded video tensors.
        bytes_read: compressed bytes read from shards (or PNG bytes).
        skipped: every sample that was skipped, with key, shard and reason.
    """

    batches: int = 0
    samples: int = 0
    frames: int = 0
    padded_frames: int = 0
    bytes_read: int = 0
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def padding_fraction(self) -> float:
        """Share of the yielded video frames that are padding (0 when nothing yet)."""
        total = self.frames + self.padded_frames
        return self.padded_frames / total if total else 0.0

    def add_batch(self, lengths: list[int], padded_frames: int) -> None:
        """Count one yielded batch."""
        self.batches += 1
        self.samples += len(lengths)
        self.frames += int(sum(lengths))
        self.padded_frames += int(padded_frames)

    def add_report(self, report: Report) -> None:
        """Fold in a backend's report (skips, bytes)."""
        self.skipped.extend(report.skipped)
        self.bytes_read += report.bytes_read

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON summaries."""
        out = asdict(self)
        out["padding_fraction"] = self.padding_fraction
        return out

    def summary(self) -> str:
        """One line for logs."""
        line = (
            f"{self.samples} samples, {self.frames} frames in {self.batches} batches, "
            f"padding {self.padding_fraction:.1%}, {self.bytes_read / 1e6:.1f} MB read, "
            f"{len(self.skipped)} skipped"
        )
        if self.skipped:
            line += ": " + "; ".join(f"{s.key} ({s.shard}: {s.reason})" for s in self.skipped[:5])
            if len(self.skipped) > 5:
                line += f"; ... {len(self.skipped) - 5} more"
        return line


# ---------------------------------------------------------- error policies
def _warn(record: Skipped) -> None:
    log.warning("skipping sample %s in %s: %s", record.key, record.shard, record.reason)


def _quiet(record: Skipped) -> None:
    pass


def _reraise(record: Skipped) -> None:
    raise SignstreamError(f"bad sample {record.key} in {record.shard}: {record.reason}")


# The bad-sample policies, by the name a loader's ``handler=`` takes: ``warn`` (skip,
# count and log; for long jobs), ``skip`` (skip and count silently) or ``raise``
# (stop with a SignstreamError; for tests and for checking new shards). Every
# policy that skips still records the sample in ``loader.stats.skipped``.
HANDLERS: dict[str, Callable[[Skipped], None]] = {"warn": _warn, "skip": _quiet, "raise": _reraise}

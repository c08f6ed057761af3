"""What a pack output directory holds, and which of its files the packer owns.

The packer deletes or replaces only what it can show it wrote: shard and index
names recorded in a split's ``manifest.json`` or ``.pack-state.json`` (and only
names of its own ``<split>-NNNNNN.tar|idx`` form), those two files and
``pack-stats.json``, and its own leftover temporary files. Anything else in the
output directory is left alone, and a stranger with a shard name stops the run
before anything is touched. A :class:`Slot` names one writer's files: a whole split, or
one part of it (``--part``: its own shard names, record and state under ``.parts/``).
Records, verdicts and removal are :mod:`signstream.loaders.outputs`'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from signstream import SignstreamError
from signstream.loaders import outputs
from signstream.loaders.format import MANIFEST, read_manifest, shard_name

STATE_FILE = ".pack-state.json"
STATS_FILE = "pack-stats.json"
PARTS_DIR = ".parts"  # part records, part states and part locks: one folder per part
_HINT = "move it away or choose another --out (pack removes only files it can prove it wrote)"


@dataclass(frozen=True)
class Slot:
    """The files one writer of a split owns: the whole split (``count`` 0), or part ``index`` (1-based) of ``count``."""

    out: Path
    split: str
    index: int = 0
    count: int = 0

    @property
    def tag(self) -> str:
        """``p002of003`` for part 2 of 3; empty for the whole split."""
        return f"p{self.index:03d}of{self.count:03d}" if self.count else ""

    @property
    def split_dir(self) -> Path:
        return self.out / self.split

    @property
    def part_dir(self) -> Path:
        """The part's folder under ``.parts`` (its lock, record and state)."""
        return self.out / PARTS_DIR / self.tag

    @property
    def record(self) -> Path:
        """The finished record: the split's manifest, or the part's own manifest under ``.parts``."""
        return self.part_dir / f"{self.split}.json" if self.count else self.split_dir / MANIFEST

    @property
    def state(self) -> Path:
        return self.part_dir / f"{self.split}.state.json" if self.count else self.split_dir / STATE_FILE

    def shard(self, number: int) -> str:
        """Shard ``number``'s file name: ``<split>-NNNNNN.tar``, or ``<split>-pIIIofNNN-NNNNNN.tar`` for a part."""
        return f"{self.split}-{self.tag}-{number:06d}.tar" if self.count else shard_name(self.split, number)

    def is_shard(self, name: str) -> bool:
        """Whether ``name`` has this writer's shard or index form (a part's form only for that part)."""
        infix = re.escape(f"{self.tag}-") if self.count else ""
        return re.fullmatch(rf"{re.escape(self.split)}-{infix}\d{{6}}\.(?:tar|idx)", name) is not None

    def owned_here(self, name: str) -> bool:
        """Names in the split folder this writer may remove as its own (temporary files included)."""
        if self.count:
            return self.is_shard(name)
        return self.is_shard(name) or name in (MANIFEST, STATS_FILE, STATE_FILE)


def load_state(
    split_dir: Path, split: str, fp: str, overwrite: bool, apply: bool = True, slot: Slot | None = None
) -> dict | None:
    """Return the resume state, ``None`` if the split (or the ``slot``'s part of it) is already complete.

    Only files recorded in the slot's manifest or state (and the packer's own
    temporary files) are ever removed. Raises :class:`SignstreamError` before
    anything is touched when the directory holds another run's output (without
    ``overwrite``) or a file with a shard name that pack did not record. With
    ``apply=False`` only these checks run (nothing is removed; returns ``None``),
    so every split can be checked before any is written.
    """
    slot = slot or Slot(split_dir.parent, split)
    if not split_dir.is_dir():
        if not apply:
            return None
        split_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_record(slot.record, "manifest")
    state = read_record(slot.state, "state")
    fresh = {"fingerprint": fp, "next_row": 0, "shards": [], "skipped": [], "png_bytes": 0, "writing": []}
    # --overwrite repacks even an identical split: the verdict is asked only without it
    done = outputs.RESTART if overwrite else outputs.judge(manifest, fp, overwrite=False).action
    if done == outputs.RESUME:
        if apply:  # a kill between writing the manifest and removing the state leaves it behind
            (split_dir / STATE_FILE).unlink(missing_ok=True)
        return None
    if done == outputs.REFUSE:
        raise SignstreamError(
            f"{split_dir} holds shards packed from other rows or options; pass --overwrite to replace them"
        )
    unfinished = outputs.judge(state, fp, overwrite=overwrite).action
    if unfinished == outputs.REFUSE:
        raise SignstreamError(
            f"{split_dir} holds an unfinished pack of other rows or options; rerun "
            "with the same options to resume it, or pass --overwrite to start over"
        )
    tracked = _recorded_names(slot, manifest) | _recorded_names(slot, state)
    strangers = outputs.strangers(split_dir, slot.is_shard, tracked)
    if strangers:
        more = f" (and {len(strangers) - 1} more)" if len(strangers) > 1 else ""
        raise SignstreamError(
            f"{split_dir / strangers[0]}{more} was not written by pack (not in its "
            "manifest or state); move it away or choose another --out"
        )
    if not apply:
        return None
    if manifest is None and unfinished == outputs.RESUME and _shards_intact(split_dir, state):
        writing = _recorded_names(slot, {"writing": state.get("writing", [])})
        outputs.remove_owned(split_dir, [split_dir / name for name in sorted(writing)])
        state["writing"] = []
        return state
    records = [slot.record, slot.state] if slot.count else [split_dir / n for n in (MANIFEST, STATS_FILE, STATE_FILE)]
    outputs.remove_owned(split_dir, [*(split_dir / n for n in sorted(tracked)), *records])
    if slot.count:
        slot.part_dir.mkdir(parents=True, exist_ok=True)  # its records were just removed: the state goes there
    return fresh


def read_record(path: Path, what: str) -> dict | None:
    """Read the packer's manifest or state; ``None`` when absent, an error when not the packer's."""
    if not path.exists():
        return None
    if what == "manifest":  # the format's strict reader: any field wrong, or a newer version, is not ours
        try:
            return read_manifest(path).to_dict()
        except SignstreamError as exc:
            raise SignstreamError(
                f"{exc} (not a signstream pack manifest this version can replace); move it away or choose another --out"
            ) from None
    return outputs.read_record(
        path, f"signstream pack {what}", _HINT, lambda record: isinstance(record.get("shards"), list)
    )


def is_any_shard_name(split: str, name: str) -> bool:
    """Whether ``name`` is a shard or index name pack chooses for ``split``, a part's included."""
    return re.fullmatch(rf"{re.escape(split)}-(?:p\d{{3}}of\d{{3}}-)?\d{{6}}\.(?:tar|idx)", name) is not None


def _recorded_names(slot: Slot, record: dict | None) -> set[str]:
    """Shard and index names a manifest or state records (only names pack itself would choose).

    A whole split's manifest may list part shards (written by a merge); a part's records list only its own.
    """
    if not record:
        return set()
    names = [s.get(k) for s in record.get("shards", []) if isinstance(s, dict) for k in ("file", "index")]
    names += record.get("writing", []) or []
    ours = slot.is_shard if slot.count else (lambda n: is_any_shard_name(slot.split, n))
    return {n for n in names if isinstance(n, str) and ours(n)}


def _shards_intact(split_dir: Path, state: dict) -> bool:
    try:
        return all(
            outputs.file_digest(split_dir / s["file"]) == s["sha256"] and (split_dir / s["index"]).exists()
            for s in state["shards"]
        )
    except (KeyError, TypeError):
        return False


def owned_in_split(split: str):
    """Names in a split folder that a whole-split pack owns (for the temporary-file rule)."""
    return Slot(Path(), split).owned_here

"""What a pack output directory holds, and which of its files the packer owns.

The packer deletes or replaces only what it can show it wrote: shard and index
names recorded in a split's ``manifest.json`` or ``.pack-state.json`` (and only
names of its own ``<split>-NNNNNN.tar|idx`` form), those two files and
``pack-stats.json``, and its own leftover temporary files. Anything else in the
output directory is left alone, and a stranger with a shard name stops the run
before anything is touched. Records, verdicts, removal and the temporary-file
rule are :mod:`signstream.loaders.outputs`'s, shared with the recipes.
"""

from __future__ import annotations

import re
from pathlib import Path

from signstream import SignstreamError
from signstream.loaders import outputs
from signstream.loaders.format import MANIFEST, read_manifest

STATE_FILE = ".pack-state.json"
STATS_FILE = "pack-stats.json"
_HINT = "move it away or choose another --out (pack removes only files it can prove it wrote)"


def load_state(split_dir: Path, split: str, fp: str, overwrite: bool, apply: bool = True) -> dict | None:
    """Return the resume state, ``None`` if the split is already complete.

    Only files recorded in the split's manifest or state (and the packer's own
    temporary files) are ever removed. Raises :class:`SignstreamError` before
    anything is touched when the directory holds another run's output (without
    ``overwrite``) or a file with a shard name that pack did not record. With
    ``apply=False`` only these checks run (nothing is removed; returns ``None``),
    so every split can be checked before any is written.
    """
    if not split_dir.is_dir():
        if not apply:
            return None
        split_dir.mkdir(parents=True, exist_ok=True)
    manifest = read_record(split_dir / MANIFEST, "manifest")
    state = read_record(split_dir / STATE_FILE, "state")
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
    tracked = _recorded_names(split, manifest) | _recorded_names(split, state)
    strangers = outputs.strangers(split_dir, lambda name: _is_shard_name(split, name), tracked)
    if strangers:
        more = f" (and {len(strangers) - 1} more)" if len(strangers) > 1 else ""
        raise SignstreamError(
            f"{split_dir / strangers[0]}{more} was not written by pack (not in its "
            "manifest or state); move it away or choose another --out"
        )
    if not apply:
        return None
    if manifest is None and unfinished == outputs.RESUME and _shards_intact(split_dir, state):
        writing = _recorded_names(split, {"writing": state.get("writing", [])})
        outputs.remove_owned(split_dir, [split_dir / name for name in sorted(writing)])
        state["writing"] = []
        return state
    outputs.remove_owned(split_dir, [split_dir / n for n in [*sorted(tracked), MANIFEST, STATS_FILE, STATE_FILE]])
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


def _is_shard_name(split: str, name: str) -> bool:
    return re.fullmatch(rf"{re.escape(split)}-\d{{6}}\.(?:tar|idx)", name) is not None


def _recorded_names(split: str, record: dict | None) -> set[str]:
    """Shard and index names a manifest or state records (only names pack itself would choose)."""
    if not record:
        return set()
    names = [s.get(k) for s in record.get("shards", []) if isinstance(s, dict) for k in ("file", "index")]
    names += record.get("writing", []) or []
    return {n for n in names if isinstance(n, str) and _is_shard_name(split, n)}


def _shards_intact(split_dir: Path, state: dict) -> bool:
    try:
        return all(
            outputs.file_digest(split_dir / s["file"]) == s["sha256"] and (split_dir / s["index"]).exists()
            for s in state["shards"]
        )
    except (KeyError, TypeError):
        return False


def owned_in_split(split: str):
    return lambda name: _is_shard_name(split, name) or name in (MANIFEST, STATS_FILE, STATE_FILE)

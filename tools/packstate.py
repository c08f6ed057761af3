"""What a pack output directory holds, and which of its files the packer owns.

The packer deletes or replaces only what it can show it wrote: shard and index
names recorded in a split's ``manifest.json`` or ``.pack-state.json`` (and only
names of its own ``<split>-NNNNNN.tar|idx`` form), those two files and
``pack-stats.json``, and its own leftover temporary files. Anything else in the
output directory is left alone, and a stranger with a shard name stops the run
before anything is touched.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from signstream import SignstreamError
from signstream.loaders.format import FORMAT, MANIFEST, sha256_file

STATE_FILE = ".pack-state.json"
STATS_FILE = "pack-stats.json"


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
    fresh = {"fingerprint": fp, "next_row": 0, "shards": [], "skipped": [], "png_bytes": 0,
             "writing": []}
    if manifest is not None and not overwrite:
        if manifest.get("fingerprint") == fp:
            if apply:  # a kill between writing the manifest and removing the state leaves it behind
                (split_dir / STATE_FILE).unlink(missing_ok=True)
            return None
        raise SignstreamError(f"{split_dir} holds shards packed from other rows or options; "
                              "pass --overwrite to replace them")
    if state is not None and not overwrite and state.get("fingerprint") != fp:
        raise SignstreamError(f"{split_dir} holds an unfinished pack of other rows or options; rerun "
                              "with the same options to resume it, or pass --overwrite to start over")
    tracked = _recorded_names(split, manifest) | _recorded_names(split, state)
    strangers = sorted(p.name for p in split_dir.iterdir() if _is_shard_name(split, p.name)
                       and p.name not in tracked)
    if strangers:
        more = f" (and {len(strangers) - 1} more)" if len(strangers) > 1 else ""
        raise SignstreamError(f"{split_dir / strangers[0]}{more} was not written by pack (not in its "
                              "manifest or state); move it away or choose another --out")
    if not apply:
        return None
    if manifest is None and state is not None and not overwrite and _shards_intact(split_dir, state):
        for name in _recorded_names(split, {"writing": state.get("writing", [])}):
            (split_dir / name).unlink(missing_ok=True)
        state["writing"] = []
        return state
    for name in sorted(tracked) + [MANIFEST, STATS_FILE, STATE_FILE]:
        (split_dir / name).unlink(missing_ok=True)
    return fresh


def read_record(path: Path, what: str) -> dict | None:
    """Read the packer's manifest or state; ``None`` when absent, an error when not the packer's."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, OSError) as exc:
        raise SignstreamError(f"{path}: unreadable pack {what} ({exc}); move it away or choose another "
                              "--out (pack removes only files it can prove it wrote)") from None
    ours = isinstance(record, dict) and isinstance(record.get("shards"), list) and (
        what == "state" or record.get("format") == FORMAT)
    if not ours:
        raise SignstreamError(f"{path} is not a signstream pack {what}; move it away or choose another "
                              "--out")
    return record


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
        return all((split_dir / s["file"]).exists() and sha256_file(split_dir / s["file"]) == s["sha256"]
                   and (split_dir / s["index"]).exists() for s in state["shards"])
    except (KeyError, TypeError):
        return False


def remove_stale_temps(directory: Path, owned) -> list[str]:
    """Remove the packer's own leftover temporary files in ``directory``.

    A temporary file is ``.<name>.tmp`` or ``.<name>.<random>.tmp`` (see
    :func:`signstream.loaders.fileio.atomic_write`) where ``owned(name)`` is
    true; any other file, whatever it is called, is left alone.
    """
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        name = p.name
        if not (name.startswith(".") and name.endswith(".tmp") and p.is_file()):
            continue
        inner = name[1:-4]
        stem, _, suffix = inner.rpartition(".")
        if owned(inner) or (stem and re.fullmatch(r"[A-Za-z0-9_]+", suffix) and owned(stem)):
            p.unlink(missing_ok=True)
            removed.append(name)
    return removed


def owned_in_split(split: str):
    return lambda name: _is_shard_name(split, name) or name in (MANIFEST, STATS_FILE, STATE_FILE)

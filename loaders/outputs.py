"""Who owns an output: the owner record, the resume verdict, owned files, stray temporary files.

A run that writes an output keeps a JSON *record* there with the fingerprint of
everything that determines its files. The next run compares fingerprints
(:func:`judge`): fresh, resume, restart (the user said overwrite) or refuse,
naming the first difference. Only files a record shows the project wrote, and
the temporary files of its own atomic writes (one name rule, :func:`temp_targets`),
are ever deleted. Files are saved with :mod:`signstream.loaders.fileio`'s atomic save.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from signstream import SignstreamError
from signstream.loaders import remote
from signstream.loaders.fileio import (  # noqa: F401 - the saves, re-exported: ownership and saving together
    atomic_save,
    atomic_write,
    save_safetensors_atomic,
    torch_save_atomic,
    write_json,
)
from signstream.loaders.format import sha256_file

FRESH, RESUME, RESTART, REFUSE = "fresh", "resume", "restart", "refuse"
_TAG = re.compile(r"[A-Za-z0-9_]+")  # the random part tempfile adds, or a fixed word such as "partial"

Owned = Callable[[str], bool] | re.Pattern


def file_digest(path: str | os.PathLike | None) -> str | None:
    """SHA-256 of a file's bytes (``None`` for no file, ``"missing"`` for a path that is not a file).

    A URL (shards in a bucket or on a web server) is read whole: only small
    files such as manifests are fingerprinted that way. A missing file is left
    for the code that opens it to report, with its own hint.

    Raises:
        SignstreamError: the file exists but cannot be read.
    """
    if not path:
        return None
    if remote.is_url(path):
        try:
            return hashlib.sha256(remote.location(str(path)).read_bytes()).hexdigest()
        except FileNotFoundError:
            return "missing"
    if not Path(path).is_file():
        return "missing"
    try:
        return sha256_file(path)
    except OSError as exc:
        raise SignstreamError(f"cannot read {path}: {exc.strerror or exc}") from None


def read_record(path: Path, what: str, hint: str, valid: Callable[[dict], bool] = lambda r: True) -> dict | None:
    """An owner record (a JSON object), ``None`` when there is none.

    Args:
        path: the record file.
        what: what it is, for messages (``"signstream pack manifest"``).
        hint: what the user can do about a record that is not ours.
        valid: whether a parsed object is one of ours.

    Raises:
        SignstreamError: one line naming ``path`` when it is unreadable or not ours.
    """
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, OSError) as exc:
        raise SignstreamError(f"{path}: unreadable {what} ({exc}); {hint}") from None
    if not isinstance(record, dict) or not valid(record):
        raise SignstreamError(f"{path} is not a {what}; {hint}")
    return record


def write_record(path: Path, record: dict) -> None:
    """Write an owner record atomically (deterministic JSON)."""
    write_json(path, record)


@dataclass(frozen=True)
class Verdict:
    """What a run may do with an output that may hold an earlier run's files.

    Attributes:
        action: :data:`FRESH` (no record), :data:`RESUME` (same fingerprint),
            :data:`RESTART` (another one, and the user said overwrite) or
            :data:`REFUSE` (another one, or none recorded).
        difference: the first differing key, `` (key: old then, new now)``; empty when unknown.
    """

    action: str
    difference: str = ""


def judge(
    record: dict | None, fingerprint: Any, *, overwrite: bool, same: Callable[[Any, Any], bool] | None = None
) -> Verdict:
    """Compare an output's record with this run's ``fingerprint``; reads nothing.

    Args:
        record: the owner record (its ``"fingerprint"``; ``None`` there for an
            unmarked earlier run), or ``None`` when the output has none.
        overwrite: whether the user allowed replacing another run's files.
        same: ``same(recorded, now)`` when resuming allows more than equality.
    """
    if record is None:
        return Verdict(FRESH)
    old = record.get("fingerprint")
    if old is not None and (same or (lambda a, b: a == b))(old, fingerprint):
        return Verdict(RESUME)
    if overwrite:
        return Verdict(RESTART)
    return Verdict(REFUSE, first_difference(old, fingerprint) if old is not None else "")


def first_difference(old: Any, new: Any, prefix: str = "") -> str:
    """`` (key: old then, new now)`` for the first differing (nested) key in sorted order, else ``""``."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return "" if old == new else f" ({prefix.rstrip('.') or 'fingerprint'}: {_short(old)} then, {_short(new)} now)"
    for key in sorted(set(old) | set(new), key=str):
        found = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
        if found:
            return found
    return ""


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:21] + "..."


def strangers(folder: Path, looks_ours: Callable[[str], bool], recorded: set[str]) -> list[str]:
    """Names in ``folder`` that look like ours but no record lists: another writer's files, sorted."""
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if looks_ours(n) and n not in recorded)


def remove_owned(root: Path, paths: Iterable[Path]) -> list[Path]:
    """Delete the files and folders a record shows we wrote, then folders under ``root`` left empty.

    Args:
        root: the output; never removed itself.
        paths: what the earlier run wrote (absent ones are skipped).

    Returns:
        The paths deleted.
    """
    removed, parents = [], set()
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path)
        parents.update(p for p in path.parents if root in p.parents)
    prune_empty(parents)
    return removed


def prune_empty(folders: Iterable[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are empty."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def temp_targets(name: str) -> tuple[str, ...]:
    """The file names a temporary file called ``name`` may be writing; ``()`` when it is no temp name.

    The one rule for every writer: ``.<target>.tmp`` (:func:`~signstream.loaders.fileio.tmp_name`)
    or ``.<target>.<tag>.tmp`` (:func:`~signstream.loaders.fileio.atomic_write`'s random tag,
    or a fixed word), ``<tag>`` made of letters, digits and ``_``. Both readings are
    returned, so a target whose own name ends in such a word is still found.
    """
    if not (name.startswith(".") and name.endswith(".tmp")) or len(name) <= 5:
        return ()
    inner = name[1:-4]
    stem, _, tag = inner.rpartition(".")
    return (inner, stem) if stem and _TAG.fullmatch(tag) else (inner,)


def is_temp_of(name: str, owned: Owned) -> bool:
    """Whether ``name`` is a temporary file of a write to a name ``owned`` accepts (a predicate or a regex)."""
    accept = owned.fullmatch if isinstance(owned, re.Pattern) else owned
    return any(accept(target) for target in temp_targets(name))


def remove_stray_temps(folder: Path, owned: Owned) -> list[Path]:
    """Delete the temporary files interrupted atomic writes left in ``folder`` (not recursive).

    Only files whose name :func:`is_temp_of` a name ``owned`` accepts go; any
    other file, whatever it is called, is left alone.

    Returns:
        The paths deleted.
    """
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for path in entries:  # a file may vanish between the listing and here: nothing to do then
        if is_temp_of(path.name, owned) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed

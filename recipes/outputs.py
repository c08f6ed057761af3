"""Who owns a recipe's output folder: fingerprints, resume checks, clean restarts, the one-writer lock.

A folder is resumable only by the configuration that wrote it: :func:`claim`
compares this run's fingerprint with ``out/fingerprint.json`` (fresh, resume,
restart on ``overwrite=true``, else one line naming the first difference) and
only reads, so every rank reaches the same verdict; :func:`prepare` (main
process) then deletes only files the record shows a recipe wrote. The rules are
:mod:`signstream.loaders.outputs`'s, shared with ``signstream pack``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from signstream import SignstreamError
from signstream.loaders import outputs, ownership, remote
from signstream.loaders.outputs import file_digest  # noqa: F401 - the recipes' fingerprints use it from here

FINGERPRINT_FILE = "fingerprint.json"
CONFIG_FILE = "config.yaml"
_HINT = "move it away or choose another out"

OwnedFn = Callable[[Path, dict], Iterable[Path]]


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """A seed for one optimisation step: dropout masks depend on (seed, epoch, step, rank) only.

    Seeding every step makes a resumed run draw exactly the masks of an
    uninterrupted one, whatever else used the global generator in between
    (DataLoader workers starting, an evaluation pass, a restarted process).
    """
    digest = hashlib.sha256(f"{seed}/{epoch}/{step}/{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def read_record(out: Path) -> dict | None:
    """The previous run's record: its fingerprint file, or its bare config for an unmarked run."""
    record = outputs.read_record(out / FINGERPRINT_FILE, "signstream run record", _HINT, lambda r: "fingerprint" in r)
    if record is not None:
        return record
    config = out / CONFIG_FILE
    if config.is_file():
        try:
            previous = yaml.safe_load(config.read_text())
        except (OSError, yaml.YAMLError):
            previous = None
        return {"fingerprint": None, "config": previous if isinstance(previous, dict) else None}
    return None


def take_lock(out: Path, accelerator) -> ownership.OutputLock | None:
    """Make this run the one writer of ``out``: the main process takes its lock, the other ranks wait.

    Call it before :func:`claim`, so that no second run can read the folder
    (and pass the ownership check) while this one is deciding what to do.

    Returns:
        The lock on the main process, ``None`` on the others.

    Raises:
        SignstreamError: on every rank, with the main process's one line, when
            another run holds ``out`` (or it cannot be created).
    """
    lock, problem = None, None
    if accelerator.is_main_process:
        if out.exists() and not out.is_dir():
            problem = f"out={out} is a file, not a directory"
        else:
            try:
                lock = ownership.OutputLock(out, key="out").acquire()
            except SignstreamError as exc:
                problem = str(exc)
    if accelerator.num_processes > 1:  # every rank stops with the same line, none waits on a peer
        from accelerate.utils import broadcast_object_list

        problem = broadcast_object_list([problem], from_process=0)[0]
    if problem:
        raise SignstreamError(problem)
    return lock


def one_writer(main: Callable[..., int]) -> Callable[..., int]:
    """Wrap a recipe's ``main``: the output lock it took is released however it ends.

    ``atexit`` would release it too, but only when the process ends; a caller
    that runs recipes one after another in one process needs it back at once.
    """

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> int:
        before = {id(lock) for lock in ownership.held()}
        try:
            return main(*args, **kwargs)
        finally:
            for lock in ownership.held():
                if id(lock) not in before:
                    lock.release()

    return run


def claim(
    out: Path,
    recipe: str,
    fingerprint: dict,
    *,
    overwrite: bool,
    compatible: Callable[[dict, dict], bool] | None = None,
) -> str:
    """Decide what to do with ``out``; reads only. Returns ``fresh``, ``resume`` or ``restart``.

    Raises:
        SignstreamError: ``out`` holds another configuration's outputs and
            ``overwrite`` is false (or ``out`` is a file).
    """
    if out.exists() and not out.is_dir():
        raise SignstreamError(f"out={out} is a file, not a directory")
    record = read_record(out) if out.is_dir() else None
    equal = compatible or (lambda a, b: a == b)
    verdict = outputs.judge(
        record,
        fingerprint,
        overwrite=overwrite,
        same=lambda old, now: record.get("recipe") == recipe and equal(old, now),
    )
    if verdict.action != outputs.REFUSE:
        return verdict.action
    what = "another configuration" if record["fingerprint"] is not None else "a run without a fingerprint"
    raise SignstreamError(
        f"{out} holds outputs of {what}{verdict.difference}; set overwrite=true to start over or choose another out"
    )


TempDirsFn = Callable[[Path, dict], Iterable[tuple[Path, re.Pattern]]]


def prepare(
    out: Path, recipe: str, fingerprint: dict, verdict: str, config: dict, owned: OwnedFn, temp_dirs: TempDirsFn
) -> None:
    """Main process only: delete the previous run's files on ``restart``, stray temps, write the record.

    Args:
        owned: ``owned(out, previous_record)`` lists the files and folders the
            previous run wrote, from its record (``config``, ``fingerprint``);
            only those are deleted on restart, and folders left empty.
        temp_dirs: ``temp_dirs(out, config)``: ``(folder, names)`` pairs, the
            folders atomic writes go to and the file names written there.
    """
    out.mkdir(parents=True, exist_ok=True)
    if verdict == "restart":
        previous = read_record(out) or {}
        if not isinstance(previous.get("config"), dict):
            raise SignstreamError(f"cannot tell which files in {out} an earlier run wrote; choose another out")
        outputs.remove_owned(out, [*owned(out, previous), out / FINGERPRINT_FILE])
    for folder, names in temp_dirs(out, config):
        outputs.remove_stray_temps(folder, names)
    # the config may name shards by a URL with a password or a signed query: never on disk. The
    # fingerprint holds hashes of what was read, never a URL, so resuming compares like with like.
    record = {"recipe": recipe, "fingerprint": fingerprint, "config": remote.redact(config)}
    if verdict != "resume":
        outputs.write_record(out / FINGERPRINT_FILE, record)
    else:  # keep the first run's record but remember what this run added (e.g. more splits)
        outputs.write_record(
            out / FINGERPRINT_FILE, {**record, "fingerprint": _merge(read_record(out)["fingerprint"], fingerprint)}
        )


def _merge(old: dict, new: dict) -> dict:
    merged = dict(old)
    for key, value in new.items():
        merged[key] = _merge(old[key], value) if isinstance(old.get(key), dict) and isinstance(value, dict) else value
    return merged

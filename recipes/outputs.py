"""Who owns a recipe's output folder: fingerprints, resume checks, clean restarts.

A recipe's output folder is resumable only by the configuration that wrote
it. When a run starts, the recipe computes a *fingerprint*: everything that
determines its outputs (backbone, hashes of the weight and checkpoint files,
the options that change the numbers, hashes of the shard manifests or of the
input features). :func:`claim` compares it with ``out/fingerprint.json``:

* no record and none of our files: a fresh run;
* a compatible record: the run resumes what is there;
* anything else: a one-line :class:`SignstreamError`, unless the user said
  ``overwrite=true``, in which case the files the previous run wrote (as the
  recipe lists them from the previous config) are deleted and the run starts
  over. Files the project did not write are never touched.

:func:`remove_stray_temps` deletes the temporary files a killed atomic write
left behind (``.<name>.<random>.tmp`` and ``.<name>.tmp``, only for names the
recipe writes). Every check here only *reads* the folder, so all processes
reach the same verdict before the main process writes anything.

One run writes a folder at a time: :func:`take_lock` (main process only, before
:func:`claim` reads anything) creates the folder's ``.signstream.lock``; a
second run stops with one line naming the first, on every rank. Recipes whose
``main`` is wrapped in :func:`one_writer` release it however ``main`` ends.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml

from signstream import SignstreamError
from signstream.loaders import ownership, remote
from signstream.loaders.fileio import write_json

FINGERPRINT_FILE = "fingerprint.json"
CONFIG_FILE = "config.yaml"
_TEMP = re.compile(r"^\.(?P<name>.+?)(?:\.[a-z0-9_]{8})?\.tmp$")  # atomic_write / tmp_name patterns

OwnedFn = Callable[[Path, dict], Iterable[Path]]


def file_digest(path: str | os.PathLike | None) -> str | None:
    """SHA-256 of a file's bytes (``None`` for no file, ``"missing"`` for a path that is not a file).

    A missing file is left for the code that opens it to report, with its own hint.
    """
    if not path:
        return None
    if remote.is_url(path):  # shards in a bucket or on a web server: manifests are small
        try:
            return hashlib.sha256(remote.location(str(path)).read_bytes()).hexdigest()
        except FileNotFoundError:
            return "missing"
    if not Path(path).is_file():
        return "missing"
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise SignstreamError(f"cannot read {path}: {exc.strerror or exc}") from None
    return h.hexdigest()


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
    path = out / FINGERPRINT_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            record = None
        if not isinstance(record, dict) or "fingerprint" not in record:
            raise SignstreamError(f"{path} is damaged; set overwrite=true to start over or choose another out")
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


def claim(out: Path, recipe: str, fingerprint: dict, *, overwrite: bool,
          compatible: Callable[[dict, dict], bool] | None = None) -> str:
    """Decide what to do with ``out``; reads only. Returns ``fresh``, ``resume`` or ``restart``.

    Raises:
        SignstreamError: ``out`` holds another configuration's outputs and
            ``overwrite`` is false (or ``out`` is a file).
    """
    if out.exists() and not out.is_dir():
        raise SignstreamError(f"out={out} is a file, not a directory")
    record = read_record(out) if out.is_dir() else None
    if record is None:
        return "fresh"
    same = (record.get("recipe") == recipe and record["fingerprint"] is not None
            and (compatible or (lambda a, b: a == b))(record["fingerprint"], fingerprint))
    if same:
        return "resume"
    if overwrite:
        return "restart"
    what = ("another configuration" if record["fingerprint"] is not None
            else "a run without a fingerprint")
    diff = _first_difference(record["fingerprint"] or {}, fingerprint) if record["fingerprint"] else ""
    raise SignstreamError(f"{out} holds outputs of {what}{diff}; set overwrite=true to start over "
                          "or choose another out")


def _first_difference(old: dict, new: dict, prefix: str = "") -> str:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f" ({prefix}{key}: {_short(a)} then, {_short(b)} now)"
    return ""


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 24 else text[:21] + "..."


TempDirsFn = Callable[[Path, dict], Iterable[tuple[Path, re.Pattern]]]


def prepare(out: Path, recipe: str, fingerprint: dict, verdict: str, config: dict,
            owned: OwnedFn, temp_dirs: TempDirsFn) -> None:
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
            raise SignstreamError(f"cannot tell which files in {out} an earlier run wrote; "
                                  "choose another out")
        parents = set()
        for path in owned(out, previous):
            if path.exists() or path.is_symlink():
                _remove(path)
                parents.update(p for p in path.parents if out in p.parents)
        (out / FINGERPRINT_FILE).unlink(missing_ok=True)
        prune_empty(parents)
    for folder, names in temp_dirs(out, config):
        remove_stray_temps(folder, names)
    # the config may name shards by a URL with a password or a signed query: never on disk. The
    # fingerprint holds hashes of what was read, never a URL, so resuming compares like with like.
    record = {"recipe": recipe, "fingerprint": fingerprint, "config": remote.redact(config)}
    if verdict != "resume":
        write_json(out / FINGERPRINT_FILE, record)
    else:  # keep the first run's record but remember what this run added (e.g. more splits)
        write_json(out / FINGERPRINT_FILE, {**record, "fingerprint": _merge(
            read_record(out)["fingerprint"], fingerprint)})


def _merge(old: dict, new: dict) -> dict:
    merged = dict(old)
    for key, value in new.items():
        merged[key] = _merge(old[key], value) if isinstance(old.get(key), dict) and isinstance(value, dict) else value
    return merged


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_stray_temps(folder: Path, names: re.Pattern) -> list[Path]:
    """Delete temporary files of interrupted atomic writes in ``folder`` (not recursive).

    Only names of the form ``.<name>.<8 chars>.tmp`` / ``.<name>.tmp`` go, and
    only where ``<name>`` (the file being written) fully matches ``names``.
    """
    removed = []
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for path in entries:  # a file may vanish between the listing and here: nothing to do then
        m = _TEMP.match(path.name)
        if m and path.is_file() and names.fullmatch(m.group("name")):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def prune_empty(folders: Iterable[Path]) -> None:
    """Remove folders (deepest first) that are empty after a restart."""
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
